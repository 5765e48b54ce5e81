#!/usr/bin/env bash
# Issue 29's calibration, the outside models: a torchvision ResNet-18 trained from scratch by a plain
# torch script (benchmarks/outside_model.py, no gainet import) on each world's biased training split
# ("biased") and on its unbiased one ("reference"), 3 seeds, saved as state dicts under
# $OUT/<world>/seed<s>/outside-<kind>.pt; `verdict_calibration.py diagnose` then diagnoses them beside
# the gainet-trained models. Resumable (finished files are kept). Run from the repo root.
set -eu
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/verdict}
export OMP_NUM_THREADS=1
for WORLD in ${WORLDS:-bias garments-bias}; do
    if [ "$WORLD" = bias ]; then OPTS='{"object_size": [0.07, 0.1], "bias_p": 0.99}'; else OPTS='{}'; fi
    for SPLIT in train train_unbiased; do
        [ -f "$OUT/export/$WORLD-$SPLIT/done" ] || {
            "$PYTHON" benchmarks/outside_model.py export --dataset "$WORLD" --split "$SPLIT" --dataset-options "$OPTS" \
                --out "$OUT/export/$WORLD-$SPLIT"
            touch "$OUT/export/$WORLD-$SPLIT/done"; }
    done
    for SEED in 0 1 2; do
        for KIND in biased reference; do
            SPLIT=train; [ "$KIND" = reference ] && SPLIT=train_unbiased
            WEIGHTS="$OUT/$WORLD/seed$SEED/outside-$KIND.pt"
            [ -f "$WEIGHTS" ] || "$PYTHON" benchmarks/outside_model.py train --arch resnet18 --images \
                "$OUT/export/$WORLD-$SPLIT" --seed "$SEED" --weights "$WEIGHTS"
        done
    done
done
