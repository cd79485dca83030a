"""`dist-int train --nproc-per-node N ...`: torchrun run in this process, with a failure reported as the
failing worker's own `error:` line and exit code 2, not torchrun's ChildFailedError traceback
(docs/usage.md, "Launching").

The workers are `python -m dist_int train ...` (torchrun's --module), so an installed package needs no
checkout; --standalone picks a free local rendezvous port, so two jobs on one machine do not collide. A
worker that fails prints its one line itself (engine/agree.py makes the first failing rank print it before
any rank leaves); this process only keeps torchrun's own logging and traceback off the screen.
"""

from __future__ import annotations

import logging
import os
import sys

USER_ERROR = 2     # a worker's exit code for an error it printed (cli.py, _fail)
OUTCOMES = (3, 75)  # a worker's exit codes for a run that diverged or was stopped (engine/trainer.py)
# As slurm/train.sbatch runs torchrun: the stop signals the trainers checkpoint on are passed on to them,
# and they get this long to agree on a step and save before torchrun kills them.
SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
SHUTDOWN_S = 120


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m dist_int train argv` on `nproc` local ranks; the job's exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "OMP_NUM_THREADS" not in os.environ:  # torchrun would set 1: each rank gets its share of the CPUs
        threads = max(1, len(os.sched_getaffinity(0)) // nproc)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        print(f"{nproc} ranks on this machine, {threads} CPU thread(s) each (set OMP_NUM_THREADS to choose)",
              flush=True)
    # parse_known_args: a torch without one of these options runs without it
    args, _ = get_args_parser().parse_known_args([
        "--standalone", f"--nproc-per-node={nproc}", f"--signals-to-handle={SIGNALS}",
        f"--shutdown-timeout={SHUTDOWN_S}", "--module", "dist_int", "train", *argv])
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.run").setLevel(logging.CRITICAL)
    try:
        run(args)
        return 0
    except ChildFailedError as e:
        codes = {f.local_rank: f.exitcode for f in e.failures.values()}
        if USER_ERROR in codes.values():
            return USER_ERROR  # the failing worker's error line is on the screen already
        for outcome in OUTCOMES:  # diverged, or stopped with a checkpoint: the workers said so
            if outcome in codes.values():
                return outcome
        # Else a worker crashed or was killed; the workers torchrun stopped after it show SIGTERM (-15).
        first = min(codes, key=lambda r: (codes[r] == -15, r))
        code = codes[first]
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        print(f"error: rank {first} {how} (its output is above); the other ranks were stopped",
              file=sys.stderr, flush=True)
        return USER_ERROR
    except SignalException:
        # torchrun passed the signal on; the trainers checkpointed (their own line says so) and exited 75
        return OUTCOMES[1]
