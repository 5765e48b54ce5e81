#!/usr/bin/env bash
# Issue 34: BatchNorm of the counterfactual rows (`counterfactual_batchnorm` own / shared) on step 6's
# two worlds (docs/bias_study.md), context-swap with boxes on 5% and GrabCut, one seed per call:
#   benchmarks/engine_ab_step6.sh SEED bias|garments own|shared      (resumable; 2 at a time)
#   benchmarks/engine_ab_step6.sh gather bias|garments own|shared    (the 3-seed table, from the cache)
# Same world, budget and settings as benchmarks/bias_pretrained_study.sh's GrabCut column; the
# reference and cam runs do not meet the rows, so they are not trained again here (step 6's).
set -eu
SEED=$1; WORLD=$2; BN=$3
GAINET=${GAINET:-gainet}
OUT=${OUT:-runs/issue34/step6}
if [ "$SEED" = gather ]; then SEEDS=(--first-seed 0 --seeds 3); else SEEDS=(--first-seed "$SEED" --seeds 1); fi
COMMON=("${SEEDS[@]}" --epochs 4 --no-gain --no-reference --no-cam --threads 1 --no-progress
        --supervised-count 5% --guidance context-swap
        --options "model=efficientnet-lite0,pretrained=imagenet,lr=0.001,swap_mask=grabcut,counterfactual_batchnorm=$BN")
if [ "$WORLD" = bias ]; then
    COMMON+=(--dataset-options '{object_size: [0.07, 0.1], bias_p: 0.99}')
else
    COMMON+=(--dataset garments-bias)
fi
export OMP_NUM_THREADS=1
"$GAINET" bias-study "${COMMON[@]}" --output-dir "$OUT-$WORLD-$BN"
