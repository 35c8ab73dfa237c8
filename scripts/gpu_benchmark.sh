#!/usr/bin/env bash
# The full-size benchmark on one CUDA device, in under 8 minutes: `ctv2v benchmark` in three stages,
# each under its own `timeout`, merged into one JSON (default docs/benchmarks_gpu.json).
#
#   bash scripts/gpu_benchmark.sh [OUT.json] [ctv2v benchmark options...]
#
# Stages (randomly initialised full-size networks: timings do not depend on the weights):
#   training   the recipe's training iterations (VAE stage, phase 1 with and without cached
#              latents, phase 2) in fp32, bf16 and fp16, 3 timed iterations each       (<= 130 s)
#   inference  one 8x128x128 slab and one 32x256x256 volume at 50 DDIM steps in fp32, bf16 and
#              fp16, and variants on the 32x256x256 volume against its fp32 output      (<= 190 s)
#   volume     one 300x512x512 volume in bf16 at 10 steps, 32 U-Net windows per call: 50 steps
#              take encode + decode + 50 x the row's "U-Net s/step"                      (<= 150 s)
# A stage stopped by its timeout keeps the rows it measured (the JSON is written row by row) and
# the merged file says it is incomplete; the script then exits 1.
#
# Options after OUT.json are appended to EVERY stage's command line, after the script's own, and
# argparse keeps the last value of a repeated option, lists included (`--lengths 8` replaces the
# stage's lengths; an empty `--variant` clears its variants). So, on a CPU at test size:
#   bash scripts/gpu_benchmark.sh /tmp/b.json --device cpu --size tests/tiny.yaml --precision fp32 \
#       --lengths 8 --in-plane 64 --steps 2 --iterations 1
# GPU_BENCHMARK_STAGES picks stages (default "training inference volume"); PYTHON the interpreter
# (default .venv/bin/python when present, else python3). Installs nothing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=docs/benchmarks_gpu.json
if [[ $# -gt 0 && $1 != -* ]]; then
    OUT=$1
    shift
fi
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
STAGES=${GPU_BENCHMARK_STAGES:-training inference volume}
PARTS=$(mktemp -d)
trap 'rm -rf "$PARTS"' EXIT

COMMON=(--size full --device cuda --precision fp32 bf16 fp16)
failed=0

stage() {  # stage NAME SECONDS OPTIONS...: one ctv2v benchmark run under `timeout`
    local name=$1 limit=$2
    shift 2
    [[ " $STAGES " == *" $name "* ]] || return 0
    echo "== $name (at most ${limit} s)" >&2
    local status=0
    timeout --kill-after=15 "$limit" "$PYTHON" -m bundle benchmark "${COMMON[@]}" "$@" ${EXTRA[@]+"${EXTRA[@]}"} \
        --json "$PARTS/$name.json" || status=$?
    if [[ $status -ne 0 ]]; then
        echo "== $name: exit $status$([[ $status -eq 124 || $status -eq 137 ]] && echo ' (timeout)')" >&2
        failed=1
    fi
}

EXTRA=("$@")
stage training 130 --sections training --iterations 3
stage inference 190 --sections inference --lengths 8x128x128 32x256x256 --steps 50 \
    --variant channels_last_3d window_batch_size=16 window_batch_size=64 strength=0.5 no_diffusion
stage volume 150 --sections inference --precision bf16 --lengths 300x512x512 --steps 10 \
    --setting window_batch_size=32

parts=()
for name in $STAGES; do parts+=("$PARTS/$name.json"); done
"$PYTHON" -c 'import sys; from bundle.benchmark.merge import merge_results; merge_results(sys.argv[2:], sys.argv[1])' \
    "$OUT" "${parts[@]}"
echo "written: $OUT" >&2
exit "$failed"
