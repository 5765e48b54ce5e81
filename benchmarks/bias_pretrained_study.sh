#!/usr/bin/env bash
# The pretrained bias studies on the guidance-as-data engine (docs/bias_study.md, steps 4 and 5),
# one seed per call:
#   benchmarks/bias_pretrained_study.sh SEED [bias|garments]     (seeds 0, 1, 2 as parallel processes)
#   benchmarks/bias_pretrained_study.sh gather [bias|garments]   (then: the 3-seed tables, from the cache)
# then one table per world: python benchmarks/combine_bias_studies.py $OUT-pre-masks $OUT-pre-boxes ...
# bias: the bias world made harder to read by shape than by context (object_size, bias_p), chosen
# from the plain classifiers alone (step 4). garments: garments-bias at its defaults (step 5).
# Every guided mode, l_e included, runs from the first step over the same 4 epochs.
# RUNS=core (default) trains the columns of docs/bias_study.md step 6; RUNS=full adds masks on 5%
# (bias), the boxes' upweight baseline and GrabCut swaps with context-only images.
# Resumable: finished runs are cached in each output directory. The runs of every seed are then
# gathered (cached, nothing trained) by the same command with --first-seed 0 --seeds 3.
set -eu
SEED=$1
WORLD=${2:-bias}
GAINET=${GAINET:-gainet}
OUT=${OUT:-runs/bias18}
RUNS=${RUNS:-core}
LITE0="model=efficientnet-lite0,pretrained=imagenet,lr=0.001"
if [ "$SEED" = gather ]; then
    COMMON=(--first-seed 0 --seeds 3 --epochs 4 --no-gain --threads 1 --no-progress)
else
    COMMON=(--first-seed "$SEED" --seeds 1 --epochs 4 --no-gain --threads 1 --no-progress)
fi
if [ "$WORLD" = bias ]; then
    COMMON+=(--dataset-options '{object_size: [0.07, 0.1], bias_p: 0.99}')
    PREFIX=$OUT-pre
    MASKS=(--supervised-count 1% --guidance context-swap upweight)
    [ "$RUNS" = full ] && MASKS=(--supervised-count 1% 5% --guidance context-swap upweight)
    GRABCUT=(context-swap)
    [ "$RUNS" = full ] && GRABCUT=(context-swap context-swap,context-only)
else
    COMMON+=(--dataset garments-bias)
    PREFIX=$OUT-garments
    MASKS=(--supervised-count 1% --guidance context-swap)
    GRABCUT=(context-swap)
fi
export OMP_NUM_THREADS=1
"$GAINET" bias-study "${COMMON[@]}" --supervision masks "${MASKS[@]}" --options "$LITE0" --output-dir "$PREFIX-masks"
# The box studies share the reference and cam runs (the cache ignores the supervision kind of
# unsupervised runs): copy them instead of training them again.
for study in boxes grabcut; do
    for seed in $([ "$SEED" = gather ] && echo 0 1 2 || echo "$SEED"); do
        mkdir -p "$PREFIX-$study/runs/seed$seed"
        for run in reference cam; do
            [ -e "$PREFIX-$study/runs/seed$seed/$run" ] || cp -r "$PREFIX-masks/runs/seed$seed/$run" "$PREFIX-$study/runs/seed$seed/$run"
        done
    done
done
BOXES=(context-swap l_e)
[ "$RUNS" = full ] && BOXES=(context-swap l_e upweight)
"$GAINET" bias-study "${COMMON[@]}" --supervised-count 5% --guidance "${BOXES[@]}" --options "$LITE0" \
    --output-dir "$PREFIX-boxes"
"$GAINET" bias-study "${COMMON[@]}" --supervised-count 5% --guidance "${GRABCUT[@]}" \
    --options "$LITE0,swap_mask=grabcut" --output-dir "$PREFIX-grabcut"
