"""Entry point: `torchrun --nproc_per_node=N launch/train.py --config configs/X.toml key=value ...`.

Also runs as a single process (`python launch/train.py ...`) or under plain `srun`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dist_int.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:], prog="launch/train.py"))
