#!/usr/bin/env bash
# Issue 13's study with a pretrained backbone (docs/bias_study.md, step 4), one seed per call:
#   benchmarks/bias_pretrained_study.sh SEED        (seeds 0, 1, 2 as parallel processes)
# then one table: python benchmarks/combine_bias_studies.py runs/bias-pre-masks runs/bias-pre-boxes
#   runs/bias-pre-grabcut --label ...
# The bias world made harder to read by shape than by context (object_size, bias_p), chosen from
# the plain classifiers alone. Resumable: finished runs are cached in each output directory.
set -eu
SEED=$1
GAINET=${GAINET:-gainet}
COMMON=(--first-seed "$SEED" --seeds 1 --epochs 4 --no-gain --threads 1 --no-progress
        --dataset-options '{object_size: [0.07, 0.1], bias_p: 0.99}')
LITE0="model=efficientnet-lite0,pretrained=imagenet,lr=0.001"
export OMP_NUM_THREADS=1
"$GAINET" bias-study "${COMMON[@]}" --supervised-count 1% 5% --supervision masks --guidance context-swap upweight \
    --options "$LITE0" --output-dir runs/bias-pre-masks
# The box studies share the reference and cam runs (the cache ignores the supervision kind of
# unsupervised runs): copy them instead of training them again.
for study in bias-pre-boxes bias-pre-grabcut; do
    mkdir -p "runs/$study/runs/seed$SEED"
    for run in reference cam; do
        [ -e "runs/$study/runs/seed$SEED/$run" ] || cp -r "runs/bias-pre-masks/runs/seed$SEED/$run" "runs/$study/runs/seed$SEED/$run"
    done
done
"$GAINET" bias-study "${COMMON[@]}" --supervised-count 5% --guidance context-swap l_e --options "$LITE0" \
    --output-dir runs/bias-pre-boxes
"$GAINET" bias-study "${COMMON[@]}" --supervised-count 5% --guidance context-swap --options "$LITE0,swap_mask=grabcut" \
    --output-dir runs/bias-pre-grabcut
