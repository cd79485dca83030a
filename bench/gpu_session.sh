#!/usr/bin/env bash
# Every part of bench/gpu_check.py in one call on a lent GPU machine, each under a time limit, so a part
# that runs long cannot take the others' time (GPU time comes in minutes):
#   bash bench/gpu_session.sh OUT_DIR [PART2_STEPS] [TOTAL_SECONDS]
# Installs wheels from .whl/ first when that folder exists (the GPU image has neither DeepSpeed nor zarr),
# synthesises part 3's gigapixel-config image on the CPU while part 1 runs (4096^2: the H200 machine's CPU
# took 28 s for it and 138 s for 8192^2, which left part 3 no time for its run; GIGA_SIZE=8192 to
# choose; GIGA_TILE=N repeats the synth image N x N times, chunk by chunk, for a larger image in seconds:
# GIGA_TILE=4 makes 16384^2 from 4096^2), then runs part 3 and gives part 2 what is
# left of TOTAL_SECONDS (default 560; part 1 gets at most 150 s, part 3 240 s or PART3_SECONDS). Each part's
# table and log land in OUT_DIR.
# GPU_QUICK=1 runs the CPU-sized versions (--quick, a 512^2 synth image): a check of this script anywhere.
# GPU_PARTS chooses the parts, run in this order (default "1 3 2"): 1, 3, 2 (what is left), "profile"
# (bench/profile_step.py at the paper's setting, 6x256 on 512^2 with 2^18-point steps: host against device
# time per step kind; 120 s kept for it), "triton" (the hash encoding's Triton kernels: tests/test_triton.py's
# quick tests on the GPU, then bench/encoding.py; 360 s at most). Where part 3's table exists already, its
# minutes can go elsewhere.
set -u -o pipefail
out=${1:?usage: bash bench/gpu_session.sh OUT_DIR [PART2_STEPS] [TOTAL_SECONDS]}
steps=${2:-5000}
deadline=$((SECONDS + ${3:-560}))
quick=${GPU_QUICK:+--quick}
parts=" ${GPU_PARTS:-1 3 2} "
for word in $parts; do
    case $word in 1|2|3|profile|triton) ;; *) echo "GPU_PARTS: unknown part '$word' (1, 2, 3, profile or triton)"; exit 2;; esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch, deepspeed, zarr; print(torch.__version__, deepspeed.__version__, zarr.__version__)" \
    2>&1 | tee -a "$out/gpu.txt"
giga=/tmp/gpu-session-giga.zarr
src=/tmp/gpu-session-giga-src.zarr
rm -rf "$giga" "$src"
size=${GIGA_SIZE:-4096}
[ -n "$quick" ] && size=512
tile=${GIGA_TILE:-1}
if [[ $parts == *" 3 "* ]]; then
    (timeout 200 python3 -m dist_int synth gigapixel "$src" --size "$size" >"$out/synth.log" 2>&1 &&
     if [ "$tile" -gt 1 ]; then
         timeout 120 python3 -c "import sys; sys.path.insert(0, 'bench'); from scale import tiled_image; \
from pathlib import Path; tiled_image(Path('$src'), Path('$giga'), $tile)" >>"$out/synth.log" 2>&1
     else mv "$src" "$giga"; fi) &
    synth=$!
fi
failed=""
if [[ $parts == *" triton "* ]]; then
    if [ -n "$quick" ]; then enc=(--tables 10 --batch 10 --steps 2 --warmup 1 --paths torch,triton); export TRITON_INTERPRET=1
    else enc=(--tables 15,19,22,24 --batch 18 --steps 20); fi
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_triton.py -m "not slow" 2>&1 \
        | tee "$out/log_triton_tests.txt" | tail -3 || failed+=" triton-tests"
    timeout 240 python3 bench/encoding.py "${enc[@]}" --out "$out/encoding.md" 2>&1 | tee "$out/log_encoding.txt" \
        || failed+=" encoding"
fi
if [[ $parts == *" 1 "* ]]; then
    timeout 150 python3 bench/gpu_check.py --part 1 $quick --out "$out/part1.md" 2>&1 | tee "$out/log1.txt" \
        || failed+=" part1"
fi
if [[ $parts == *" 3 "* ]]; then
    giga_args=(--giga-store "$giga")
    if ! wait "$synth"; then  # part 3 still measures throughput, without the gigapixel run
        echo "synth failed: $(tail -3 "$out/synth.log")"
        giga_args=(--no-gigapixel)
        failed+=" synth"
    fi
    timeout "${PART3_SECONDS:-240}" python3 bench/gpu_check.py --part 3 $quick "${giga_args[@]}" --out "$out/part3.md" 2>&1 \
        | tee "$out/log3.txt" || failed+=" part3"
fi
if [[ $parts == *" 2 "* ]]; then
    left=$((deadline - SECONDS))
    [[ $parts == *" profile "* ]] && left=$((left - 120))  # kept for the profile, which runs last
    if [ "$left" -gt 30 ]; then
        echo "part 2: $left s left"
        timeout "$left" python3 bench/gpu_check.py --part 2 $quick --steps "$steps" --out "$out/part2.md" \
            2>&1 | tee "$out/log2.txt" || failed+=" part2"
    else
        echo "part 2 skipped: $left s left"
        failed+=" part2"
    fi
fi
if [[ $parts == *" profile "* ]]; then
    if [ -n "$quick" ]; then prof=(--hidden 16 --layers 2 --points 1024 --steps 5 --size 128)
    else prof=(--hidden 256 --layers 6 --points 262144 --steps 30 --size 512); fi
    limit=$((deadline - SECONDS)); [ "$limit" -gt 120 ] && limit=120
    if [ "$limit" -ge 30 ]; then
        timeout "$limit" python3 bench/profile_step.py "${prof[@]}" --out "$out/profile_step.md" 2>&1 \
            | tee "$out/log_profile.txt" || failed+=" profile"
    else
        echo "profile skipped: $limit s left"
        failed+=" profile"
    fi
fi
rm -rf "$giga" "$src"
echo "done in $SECONDS s${failed:+; failed or cut off:$failed}"
[ -z "$failed" ]
