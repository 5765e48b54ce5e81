#!/usr/bin/env bash
# Issue 19's measurement on the pretrained bias world (docs/shortcuts.md), one seed per call:
#   benchmarks/shortcut_fix_bias_world.sh SEED      (seeds 0, 1, 2; resumable, run from the repo root)
# 1. gainet bias-study: the unbiased reference and the biased cam (pretrained EfficientNet-Lite0,
#    4 epochs, the world of docs/bias_study.md step 4);
# 2. benchmarks/outside_model.py: the same biased images as an ImageFolder, fine-tuned by a plain
#    torch script (no gainet import), saved as a state dict;
# 3. benchmarks/shortcut_fix.py: diagnose, fix (dfr on 1/2/5%, guidance on 1/2/5%), evaluate.
# The 3-seed table then comes from the cache: the step-3 command with --seeds 0 1 2.
set -eu
SEED=$1
GAINET=${GAINET:-gainet}
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs}
OPTS='{"object_size": [0.07, 0.1], "bias_p": 0.99}'
export OMP_NUM_THREADS=1
"$GAINET" bias-study --first-seed "$SEED" --seeds 1 --epochs 4 --no-gain --threads 1 --no-progress \
    --dataset-options "$OPTS" --supervised-count 0 \
    --options "model=efficientnet-lite0,pretrained=imagenet,lr=0.001" --output-dir "$OUT/bias19-pre"
# the export is shared by the seeds: written once, then marked done
[ -f "$OUT/outside/bias/done" ] || {
    "$PYTHON" benchmarks/outside_model.py export --dataset bias --dataset-options "$OPTS" --out "$OUT/outside/bias"
    touch "$OUT/outside/bias/done"; }
[ -f "$OUT/outside/bias-lite0-seed$SEED.pt" ] || "$PYTHON" benchmarks/outside_model.py train \
    --images "$OUT/outside/bias" --seed "$SEED" --weights "$OUT/outside/bias-lite0-seed$SEED.pt"
"$PYTHON" benchmarks/shortcut_fix.py --study "$OUT/bias19-pre" --out "$OUT/fix19-bias" --seeds "$SEED" \
    --counts 1% 2% 5% --guidance-counts 1% 2% 5% --dataset bias --dataset-options "$OPTS" \
    --outside "outside=efficientnet-lite0:$OUT/outside/bias-lite0-seed{seed}.pt"
