#!/bin/bash
# Issue 34: one run of the 10-class garments-bias world (docs/bias_study.md, "Issue 34").
#
#   benchmarks/engine_gap_garments10.sh SRC KIND SEED OUT
#
# SRC: a gainet checkout to run (PYTHONPATH), e.g. a worktree of the engine before the change:
#   git worktree add /tmp/old-engine 64c7d6b && benchmarks/engine_gap_garments10.sh /tmp/old-engine guid 0 runs/issue34/old-guid-s0
# KIND: guid (context-swap, boxes on 5%, share 0.25, GrabCut), cam (plain), ref (cam on train_unbiased).
# Trains (resumable: rerun the same line) and scores last.pt with SRC's own `gainet evaluate` on
# test_biased and test_decorrelated (OUT/eval/metrics.json). One thread: the numbers in the doc
# were measured one job at a time on a shared 2-core CPU.
set -euo pipefail
src=$(realpath "$1"); kind=$2; seed=$3; out=$(realpath -m "$4")
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
case $kind in
  guid) args=(--method cam --guidance context-swap --supervision boxes --supervised-fraction 0.05
              --supervised-share 0.25 --swap-mask grabcut);;
  cam) args=(--method cam);;
  ref) args=(--method cam --train-split train_unbiased);;
  *) echo "engine_gap_garments10.sh: KIND must be guid, cam or ref, got '$kind'" >&2; exit 2;;
esac
world=(--dataset garments-bias --image-size 96 --train-images 1200
       --dataset-options '{garment_classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}'
       --model efficientnet-lite0 --pretrained imagenet --epochs 5 --lr 0.001
       --eval-every 5 --no-tensorboard --no-progress --threads 1)
resume=(); [ -f "$out/last.pt" ] && resume=(--resume auto)
cd /tmp  # so that PYTHONPATH, not the current folder, decides which gainet runs
if [ ! -f "$out/final.json" ]; then
  OMP_NUM_THREADS=1 PYTHONPATH=$src "$python" -c "import sys; from gainet.cli import main; sys.exit(main())" \
    train "${world[@]}" "${args[@]}" --seed "$seed" --output-dir "$out" "${resume[@]}"
fi
OMP_NUM_THREADS=1 PYTHONPATH=$src "$python" -c "import sys; from gainet.cli import main; sys.exit(main())" \
  evaluate --checkpoint "$out/last.pt" --splits test_biased test_decorrelated --output-dir "$out/eval" --no-progress
