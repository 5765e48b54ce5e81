#!/usr/bin/env bash
# GPU checks to run when a device is lent (no GPU was lent to the sessions that wrote them).
# Each step prints what it measured; the script goes on after a failing step and exits 1 at the
# end if any failed. About 2-4 minutes on one GPU (most of it process start-up).
#
#   bash benchmarks/gpu_check.sh            # from the repository root, the project's venv active
#
# 1. rrr's second-order loss through synchronised BatchNorm on CUDA, 2 processes (issue 30):
#    gainet's DistributedBatchNorm (what the trainer now uses on GPUs when a loss is second
#    order: rrr, weights_grad) must match one float64 process; torch's nn.SyncBatchNorm is
#    expected to fail (no derivative of batch_norm_backward_elemt). gloo lets both ranks share
#    one GPU; with 2+ GPUs the same check runs on NCCL too.
# 2. With 2+ GPUs: `gainet train` under torchrun/NCCL with --guidance rrr,l_e at small-cnn's
#    features.11 (autograd Grad-CAM weights), boxes on 1 of 48 images, 30 s collective timeout:
#    must finish (the DistributedBatchNorm on its own NCCL group, Grad-CAM looped over slots).
# 3. One process on the GPU: gain-ext with --guidance rrr under fp16 and bf16 AMP (rrr's input
#    gradients under autocast), 1 epoch.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)" OMP_NUM_THREADS=1
PYTHON=${PYTHON:-python}
failed=0
step() { echo "== $1"; shift; if ! "$@"; then echo "-- FAILED: $*"; failed=1; fi; }

GPUS=$($PYTHON -c "import torch; print(torch.cuda.device_count())")
echo "GPUs: $GPUS ($($PYTHON -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"))"
[ "$GPUS" -ge 1 ] || { echo "no GPU: nothing to check"; exit 1; }
RUNS=$(mktemp -d)
TINY=(--dataset parts --image-size 32 --train-images 48 --val-images 16 --model small-cnn --model-width 8
      --epochs 2 --warmup-epochs 1 --batch-size 16 --no-progress --no-tensorboard
      --attention-layer features.11 --supervision boxes --dist-timeout 30)

step "1. rrr through synchronised BatchNorm on CUDA, 2 processes sharing GPU 0 (gloo)" \
    $PYTHON -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/ddp_second_order.py \
    --device cuda --backend gloo
if [ "$GPUS" -ge 2 ]; then
    step "1b. the same on 2 GPUs (NCCL)" \
        $PYTHON -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/ddp_second_order.py \
        --device cuda --backend nccl
    step "2. gainet train, 2 GPUs, NCCL, cam + rrr,l_e at features.11, 1 supervised image" \
        timeout 600 $PYTHON -m torch.distributed.run --standalone --nproc_per_node 2 -m gainet.cli train \
        "${TINY[@]}" --device auto --method cam --guidance rrr,l_e --supervised-count 1 --output-dir "$RUNS/ddp-rrr"
    step "2b. gainet train, 2 GPUs, NCCL, gain-ext (multi-label, mining + L_e) at features.11 (issue 30's vmap failure)" \
        timeout 600 $PYTHON -m torch.distributed.run --standalone --nproc_per_node 2 -m gainet.cli train \
        "${TINY[@]}" --device auto --method gain-ext --supervised-count 1 --output-dir "$RUNS/ddp-gain"
else
    echo "== 2. skipped: one GPU (NCCL needs a GPU per process)"
fi
for amp in fp16 bf16; do
    step "3. one process, gain-ext + rrr under $amp AMP" \
        timeout 600 $PYTHON -m gainet.cli train "${TINY[@]}" --device cuda --amp "$amp" --method gain-ext \
        --guidance rrr --supervised-count 4 --output-dir "$RUNS/amp-$amp"
done
rm -rf "$RUNS"
echo "gpu_check: $([ $failed = 0 ] && echo 'all steps passed' || echo 'some step FAILED')"
exit $failed
