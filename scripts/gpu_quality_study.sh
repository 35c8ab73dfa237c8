#!/usr/bin/env bash
# Issue 13's quality study on one GPU inside one time budget: every arm of the quality-budget
# recipe and the RED-CNN baseline, three training seeds each, trained side by side (the demo-size
# networks leave an H200 mostly idle: one process per run), then scored on the TEST split through
# the evaluation's protocol (scripts/seed_spread.py), then, with the time left, the full-size
# benchmark (scripts/gpu_benchmark.sh). Settings are chosen on the validation rows that training
# logs (EnhancementValidator), reported on the test rows. The validation split of data/demo_qa is
# data/demo's validation volume plus a QA cylinder, so validation rows compare only arms on the same
# dataset; the test split is the same files in both, so the test rows compare every arm.
#
#   bash scripts/gpu_quality_study.sh OUT_DIR [extra config files appended to every recipe]
#
# First makes sure data/demo and data/demo_qa exist (`ctv2v demo-data`, run as `python -m bundle`;
# it returns at once for a complete dataset); the time it takes counts against TOTAL_SECONDS.
# Arms (each the recipe configs/train.yaml + demo.yaml + quality.yaml plus):
#   quality        nothing (the recipe as it is: data/demo_qa, 30 VAE-stage epochs x 32 = 960 iterations)
#   demo_only      --dataset_dir data/demo --vae_epochs 40 (the previous recipe: no QA cylinders,
#                  40 x 24 = the same 960 iterations)
#   l1             --fidelity_loss#l1 1 --fidelity_loss#mse 0 (the loss attribution, on the QA data)
#   no_class_bias  --fidelity_loss#class_bias 0
#   long           --vae_epochs $LONG_VAE_EPOCHS (40: 40 x 32 = 1280 iterations on the QA data)
#   anchor         --dataset_dir data/demo --vae_epochs 16 --fidelity_loss#l1 1 --fidelity_loss#mse 0
#                  --fidelity_loss#class_bias 0 (the earlier quality recipe)
#   redcnn         configs/redcnn.yaml + demo.yaml, --dataset_dir $REDCNN_DATASET --redcnn_epochs
#                  $REDCNN_EPOCHS (data/demo_qa and 30: 30 x 32 = 960 iterations)
#   redcnn_demo    configs/redcnn.yaml + demo.yaml, --dataset_dir data/demo --redcnn_epochs 40
#                  (40 x 24 = 960 iterations on the demo data)
# A run that TRAIN_SECONDS cuts short writes no model file; its arm's test row leaves it out.
# Environment: PYTHON (default python3), SEEDS ("0 1 2"), ARMS (all of the above), TOTAL_SECONDS
# (560: the whole script), TRAIN_SECONDS (330), EVAL_SECONDS (150), LONG_VAE_EPOCHS (40),
# REDCNN_DATASET (data/demo_qa), REDCNN_EPOCHS (30), STEPS (DDIM steps of the test rows, 20),
# BENCHMARK (1: run gpu_benchmark.sh's stages that fit).
# Writes OUT_DIR/summary.md (validation and test tables), OUT_DIR/logs/*.log, OUT_DIR/eval_*/.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
START=$(date +%s)
OUT=${1:?usage: gpu_quality_study.sh OUT_DIR [extra config files]}
shift
EXTRA=("$@")
PYTHON=${PYTHON:-python3}
SEEDS=${SEEDS:-0 1 2}
ARMS=${ARMS:-quality demo_only l1 no_class_bias long anchor redcnn redcnn_demo}
TOTAL_SECONDS=${TOTAL_SECONDS:-560}
TRAIN_SECONDS=${TRAIN_SECONDS:-330}
EVAL_SECONDS=${EVAL_SECONDS:-150}
LONG_VAE_EPOCHS=${LONG_VAE_EPOCHS:-40}
REDCNN_DATASET=${REDCNN_DATASET:-data/demo_qa}
REDCNN_EPOCHS=${REDCNN_EPOCHS:-30}
STEPS=${STEPS:-20}
mkdir -p "$OUT/logs"

# the datasets, before the one-thread limit below: all the machine's CPUs, one slice per thread.
# bundle/__main__.py is the ctv2v command: works through PYTHONPATH, without installing the package
echo "== datasets: data/demo, data/demo_qa" >&2
"$PYTHON" -m bundle demo-data data/demo --workers "$(nproc)" >"$OUT/logs/data_demo.log" 2>&1 \
    || { echo "demo-data data/demo failed: $OUT/logs/data_demo.log" >&2; exit 1; }
"$PYTHON" -m bundle demo-data data/demo_qa --qa-volumes 3 --workers "$(nproc)" >"$OUT/logs/data_demo_qa.log" 2>&1 \
    || { echo "demo-data data/demo_qa failed: $OUT/logs/data_demo_qa.log" >&2; exit 1; }
echo "== datasets ready after $(( $(date +%s) - START )) s" >&2

# one CPU thread per process: two dozen runs share the machine's cores
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1

config_list() {  # config_list FILE...: "['a','b',...]" for monai.bundle
    local list="" f
    for f in "$@"; do list+="${list:+,}'$f'"; done
    echo "[$list]"
}

is_redcnn() { [[ $1 == redcnn || $1 == redcnn_demo ]]; }

RECIPE=(configs/train.yaml configs/demo.yaml configs/quality.yaml)
train_arm() {  # train_arm ARM SEED: one background training run
    local arm=$1 seed=$2 dir="$OUT/$1_s$2" args=()
    case $arm in
        quality) ;;
        demo_only) args=(--dataset_dir data/demo --vae_epochs 40) ;;
        l1) args=(--fidelity_loss#l1 1 --fidelity_loss#mse 0) ;;
        no_class_bias) args=(--fidelity_loss#class_bias 0) ;;
        long) args=(--vae_epochs "$LONG_VAE_EPOCHS") ;;
        anchor)
            args=(--dataset_dir data/demo --vae_epochs 16
                  --fidelity_loss#l1 1 --fidelity_loss#mse 0 --fidelity_loss#class_bias 0 --fidelity_loss#gradient 1) ;;
        redcnn|redcnn_demo)
            if [[ $arm == redcnn ]]; then
                args=(--dataset_dir "$REDCNN_DATASET" --redcnn_epochs "$REDCNN_EPOCHS")
            else
                args=(--dataset_dir data/demo --redcnn_epochs 40)
            fi
            timeout --kill-after=10 "$TRAIN_SECONDS" "$PYTHON" -m monai.bundle run training \
                --config_file "$(config_list configs/redcnn.yaml configs/demo.yaml ${EXTRA[@]+"${EXTRA[@]}"})" \
                --seed "$seed" --output_dir "$dir" --redcnn_path "$dir/redcnn.pt" --num_workers 0 "${args[@]}" \
                >"$OUT/logs/${arm}_s$seed.log" 2>&1 &
            return ;;
        *) echo "unknown arm $arm" >&2; return 1 ;;
    esac
    timeout --kill-after=10 "$TRAIN_SECONDS" "$PYTHON" -m monai.bundle run training \
        --config_file "$(config_list "${RECIPE[@]}" ${EXTRA[@]+"${EXTRA[@]}"})" \
        --seed "$seed" --output_dir "$dir" --model_path "$dir/model.pt" ${args[@]+"${args[@]}"} \
        >"$OUT/logs/${arm}_s$seed.log" 2>&1 &
}

echo "== training: arms [$ARMS], seeds [$SEEDS], at most $TRAIN_SECONDS s" >&2
for arm in $ARMS; do for seed in $SEEDS; do train_arm "$arm" "$seed"; done; done
wait
echo "== training done after $(( $(date +%s) - START )) s" >&2

echo "== test split: seed_spread per arm, at most $EVAL_SECONDS s" >&2
for arm in $ARMS; do
    files=()
    for seed in $SEEDS; do
        f="$OUT/${arm}_s$seed/model.pt"
        is_redcnn "$arm" && f="$OUT/${arm}_s$seed/redcnn.pt"
        [[ -f $f ]] && files+=("$f")
    done
    if [[ ${#files[@]} -eq 0 ]]; then echo "   $arm: no finished run" >&2; continue; fi
    flag=--model
    is_redcnn "$arm" && flag=--redcnn
    timeout --kill-after=10 "$EVAL_SECONDS" "$PYTHON" scripts/seed_spread.py "$flag" "${files[@]}" --steps "$STEPS" \
        --output "$OUT/eval_$arm" --config configs/demo.yaml ${EXTRA[@]+"${EXTRA[@]}"} >"$OUT/logs/eval_$arm.log" 2>&1 &
done
wait
echo "== evaluation done after $(( $(date +%s) - START )) s" >&2

{
    echo "# GPU quality study ($(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
    echo
    echo "## Validation (training's validator, the run's validation split (data/demo_qa: + a QA cylinder), key window vs full dose)"
    echo
    for log in "$OUT"/logs/*_s*.log; do
        echo "### $(basename "$log" .log)"
        grep -E "validation at epoch|written to|(VAEStage|LatentDiffusionTrainer|RedCNNTrainer) - INFO - Engine run finished|Error|error:" "$log" | sed 's/^/    /' | tail -12
        echo
    done
    echo "## Test split (scripts/seed_spread.py, $STEPS DDIM steps)"
    for arm in $ARMS; do
        [[ -f $OUT/eval_$arm/seed_spread.md ]] && { echo; echo "### $arm"; cat "$OUT/eval_$arm/seed_spread.md"; }
    done
} >"$OUT/summary.md" 2>&1
echo "== summary: $OUT/summary.md" >&2

if [[ ${BENCHMARK:-1} == 1 ]]; then
    left=$(( TOTAL_SECONDS - ($(date +%s) - START) ))
    stages=""
    # the stages' own limits (gpu_benchmark.sh) plus start-up: the ones that still fit
    (( left > 150 )) && { stages+=" training"; left=$(( left - 150 )); }
    (( left > 170 )) && { stages+=" volume"; left=$(( left - 170 )); }
    (( left > 210 )) && { stages+=" inference"; }
    if [[ -n $stages ]]; then
        echo "== benchmark stages:$stages" >&2
        GPU_BENCHMARK_STAGES="$stages" PYTHON="$PYTHON" bash scripts/gpu_benchmark.sh "$OUT/benchmark.json" \
            >"$OUT/logs/benchmark.log" 2>&1 || echo "benchmark: exit $?" >&2
    else
        echo "== no time left for the benchmark" >&2
    fi
fi
echo "== done after $(( $(date +%s) - START )) s" >&2
