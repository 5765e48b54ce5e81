#!/usr/bin/env python
"""Every method x guidance mode x attention layer x supervision spread, one DDP step each, on 2
gloo processes (issue 30): does every rank run the same collectives whatever its data?

One ``torchrun --nproc_per_node 2`` launch of this file runs all the combinations inside the same
two workers (one process group, ``--timeout`` seconds per collective, far below the trainer's
default of 600), so a combination costs a Trainer and a step, not a launch. For each combination
each worker builds a real :class:`gainet.training.trainer.Trainer` (DDP, distributed BatchNorm,
guidance collate, the per-step global-batch all_reduce) on a tiny generated world and runs
``Trainer.train_epoch`` over ONE hand-picked batch per rank (the loader is replaced), so which
rank holds which supervised image, and how many labels its images carry, is set here and not left
to the sampler:

- supervision spread (``--spreads``): ``one-rank-none`` (rank 0 holds no supervised image, rank 1
  one), ``one-each`` (one of the two images of each rank), ``all`` (every image);
- labels: ``multi`` (the parts world; rank 0 holds a 2-label image, rank 1 only 1-label images, so
  the ranks need different numbers of Grad-CAM label slots), ``single`` (the bias world) and
  ``unlabelled`` (the parts world with rank 0's images stripped of their labels: rank 0 has no
  (image, label) pair, hence no map and an empty erased batch; spread ``one-rank-none`` only);
- attention layer: ``features`` (small-cnn's head layer, closed-form Grad-CAM weights) and
  ``features.11`` (a stage-2 ReLU followed by conv + BatchNorm: autograd weights, whose backward
  meets the distributed BatchNorm's all_reduce);
- methods cam, gain, gain-ext, gain-adv, gain-adv-ext; guidance none, l_e, context-swap,
  context-only, actdiff, rrr, upweight (spreads only where some image's masks are read).

A combination passes when both ranks finish the step (no collective times out or fails: a
mismatch of collectives between the ranks shows as a gloo timeout or a size error), the loss is
finite, the step moved the weights, and every parameter and buffer of the two ranks is
bit-identical afterwards (DDP averages the gradients, the BatchNorm statistics are global). The
first failing combination ends the run: a collective that timed out leaves the process group
unusable. (``TORCH_DISTRIBUTED_DEBUG=DETAIL``, which would also compare every collective's type
and shapes across ranks, is not usable here: in torch 2.14.1 building DDP after any
``dist.new_group`` under DETAIL crashes with SIGSEGV in ``_ddp_init_helper``, and the trainer's
distributed BatchNorm has a group of its own.)

    python benchmarks/ddp_matrix.py                     # the full matrix (466 combinations)
    python benchmarks/ddp_matrix.py --subset ci         # the subset tests/test_ddp_matrix.py runs
    python benchmarks/ddp_matrix.py --json runs/ddp-matrix.json
    python benchmarks/ddp_matrix.py --only cam,l_e,features.11,one-rank-none,single  # one combination

Prints one line per combination (seconds of the slower rank, supervised images and label slots per
rank, largest parameter difference between the ranks) and a summary; exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

METHODS = ("cam", "gain", "gain-ext", "gain-adv", "gain-adv-ext")
GUIDANCE = ("none", "l_e", "context-swap", "context-only", "actdiff", "rrr", "upweight")
LAYERS = ("features", "features.11")  # small-cnn: head layer (closed form), autograd-weights layer
SPREADS = ("one-rank-none", "one-each", "all")
LABELS = ("multi", "single", "unlabelled")
DATASETS = {"multi": "parts", "single": "bias", "unlabelled": "parts"}
# The two reproductions of issue 30 (its CLI runs, as combinations): the first deadlocked (the
# Grad-CAM backward ran on the rank with the supervised image only), the second failed on both
# ranks ("Batching rule not implemented for c10d::allreduce_").
REPRODUCTIONS = (
    ("cam", "l_e", "features.11", "one-rank-none", "single"),
    ("gain", "none", "features.11", "one-rank-none", "multi"),
)
# Run order of the CI subset: the vmap failure first (on the unfixed code both ranks raised at
# once, ending the run in seconds; the deadlock needed the full collective timeout).


def uses_masks(method: str, guidance: str) -> bool:
    return method in ("gain-ext", "gain-adv-ext") or guidance != "none"


def full_matrix() -> list[tuple[str, str, str, str, str]]:
    """Every (method, guidance, layer, spread, labels); one spread where no mask is read or rank 0
    has no label."""
    combos = []
    for method, guidance, layer, labels in itertools.product(METHODS, GUIDANCE, LAYERS, LABELS):
        for spread in (SPREADS if uses_masks(method, guidance) and labels != "unlabelled" else SPREADS[:1]):
            combos.append((method, guidance, layer, spread, labels))
    return combos


def ci_subset() -> list[tuple[str, str, str, str, str]]:
    """The reproductions first, then every (method, guidance) pair once at the autograd-weights
    layer, spreads and label kinds in rotation (each of the 6 (spread, labels) pairs appears), then
    every method once at the head layer with masks read, then 3 with a rank without labels."""
    combos = [REPRODUCTIONS[1], REPRODUCTIONS[0]]
    for i, (method, guidance) in enumerate(itertools.product(METHODS, GUIDANCE)):
        spread = SPREADS[i % 3] if uses_masks(method, guidance) else SPREADS[0]
        combos.append((method, guidance, "features.11", spread, LABELS[(i // 3) % 2]))
    for i, method in enumerate(METHODS):
        combos.append((method, GUIDANCE[1 + i % 6], "features", SPREADS[i % 3], LABELS[i % 2]))
    combos += [("gain", "none", "features.11", "one-rank-none", "unlabelled"),
               ("gain-adv-ext", "rrr", "features.11", "one-rank-none", "unlabelled"),
               ("gain-ext", "context-swap", "features", "one-rank-none", "unlabelled")]
    seen: set = set()
    return [c for c in combos if not (c in seen or seen.add(c))]


# ---------------------------------------------------------------------------------------- worker
def _pick_images(dataset, multi_label: bool, world_size: int) -> list[list[int]]:
    """Two images per rank; multi-label: rank 0 holds a 2-label image, the others 1-label ones."""
    counts = [int(dataset[i]["labels"].sum()) for i in range(len(dataset))]
    single = [i for i, n in enumerate(counts) if n == 1]
    if not multi_label:
        return [single[2 * r:2 * r + 2] for r in range(world_size)]
    double = [i for i, n in enumerate(counts) if n >= 2]
    if not double or len(single) < 2 * world_size:
        raise RuntimeError("the parts world drew no 2-label image: raise train_images")
    return [[double[0], single[0]]] + [single[2 * r - 1:2 * r + 1] for r in range(1, world_size)]


def _supervised_images(picks: list[list[int]], spread: str) -> list[int]:
    if spread == "all":
        return [i for rank in picks for i in rank]
    if spread == "one-each":
        return [rank[0] for rank in picks]
    return [i for rank in picks[1:] for i in rank[:1]]  # rank 0 none, every other rank one


def run_combination(combo, timeout: float, workdir: Path) -> dict:
    """One Trainer, one DDP step on the hand-picked batch; returns this rank's record."""
    import torch
    import torch.distributed as dist

    import gainet.training.trainer as trainer_module
    from gainet.training.config import TrainConfig

    method, guidance, layer, spread, labels = combo
    rank, world_size = dist.get_rank(), dist.get_world_size()
    config = TrainConfig(
        dataset=DATASETS[labels], image_size=32, train_images=24, val_images=4, model="small-cnn", model_width=4,
        epochs=1, warmup_epochs=0, batch_size=2 * world_size, lr=1e-2, method=method,
        guidance="" if guidance == "none" else guidance, supervision="boxes", supervised_count=1,
        attention_layer=layer, threads=1, progress=False, tensorboard=False, dist_timeout=timeout,
        output_dir=str(workdir / "-".join(combo)),
    )
    trainer = trainer_module.Trainer(config)
    try:
        picks = _pick_images(trainer.train_set, trainer.multi_label, world_size)
        if hasattr(trainer.train_set, "supervised"):
            trainer.train_set.supervised = frozenset(_supervised_images(picks, spread))
        samples = [trainer.train_set[i] for i in picks[rank]]
        if labels == "unlabelled" and rank == 0:
            samples = [{**sample, "labels": sample["labels"] * 0} for sample in samples]
        batch = (trainer.collate or torch.utils.data.default_collate)(samples)
        before = torch.cat([p.detach().double().flatten() for p in trainer.gain.parameters()])
        original_loader = trainer_module.epoch_loader
        trainer_module.epoch_loader = lambda *args, **kwargs: [batch]
        started = time.perf_counter()
        try:
            means = trainer.train_epoch(0)
        finally:
            trainer_module.epoch_loader = original_loader
        seconds = time.perf_counter() - started
        state = trainer.gain.state_dict()
        flat = torch.cat([v.detach().double().flatten() for v in state.values()])
        gathered = [torch.empty_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        after = torch.cat([p.detach().double().flatten() for p in trainer.gain.parameters()])
        return {
            "combo": list(combo), "ok": True, "seconds": seconds,
            "supervised": int(batch["supervised"].sum()) if "supervised" in batch else 0,
            "label_slots": int((batch["labels"] > 0).sum(dim=1).max()),  # labels of its most-labelled image
            "rank_difference": max(float((g - gathered[0]).abs().max()) for g in gathered),
            "moved": float((after - before).abs().max()),
            "loss": means.get("train/loss"),
        }
    finally:
        trainer.close()  # its distributed BatchNorm's gloo group stays until the end (a few sockets)


def worker(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    rank = dist.get_rank()
    combos = combinations(args.subset)
    out = Path(args.results) / f"rank{rank}.jsonl"
    status = 0
    with tempfile.TemporaryDirectory() as workdir, open(out, "w") as file:
        for combo in combos:
            try:
                record = run_combination(combo, args.timeout, Path(workdir))
            except Exception as error:  # recorded, then the run ends (the group may be broken)
                record = {"combo": list(combo), "ok": False, "error": f"{type(error).__name__}: {error}"[:2000],
                          "traceback": traceback.format_exc()[-4000:]}
                status = 1
            file.write(json.dumps(record) + "\n")
            file.flush()
            if status:
                break
    if status == 0:
        dist.destroy_process_group()
    return status


# -------------------------------------------------------------------------------------- launcher
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def combinations(subset: str) -> list[tuple[str, str, str, str, str]]:
    """``"full"``, ``"ci"``, or ``method,guidance,layer,spread,labels[;...]`` (named combinations)."""
    if subset == "full":
        return full_matrix()
    if subset == "ci":
        return ci_subset()
    combos = [tuple(part.split(",")) for part in subset.split(";")]
    allowed = (METHODS, GUIDANCE, LAYERS, SPREADS, LABELS)
    for combo in combos:
        if len(combo) != 5 or any(value not in values for value, values in zip(combo, allowed)):
            raise SystemExit(f"--only {','.join(combo)}: expected method,guidance,layer,spread,labels from "
                             f"{' / '.join('|'.join(v) for v in allowed)}")
    return combos


def launch(subset: str, timeout: float, results: Path, launch_timeout: float) -> tuple[int, str]:
    """Run the matrix on 2 gloo processes on 127.0.0.1; returns (exit status, output tail)."""
    results.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, "--worker",
               "--subset", subset, "--timeout", str(timeout), "--results", str(results)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=launch_timeout)
        return done.returncode, (done.stdout + done.stderr)[-6000:]
    except subprocess.TimeoutExpired as error:
        return 124, f"launch ran past {launch_timeout} s: {str(error.stdout or '')[-3000:]}"


def read_results(results: Path) -> dict[tuple, list[dict]]:
    """``{combo: [record of rank 0, record of rank 1]}`` of the combinations both ranks reached."""
    per_rank = []
    for path in sorted(results.glob("rank*.jsonl")):
        per_rank.append({tuple(r["combo"]): r for r in map(json.loads, path.read_text().splitlines())})
    if not per_rank:
        return {}
    return {combo: [ranks[combo] for ranks in per_rank if combo in ranks] for combo in per_rank[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", default="full", help="full or ci")
    parser.add_argument("--only", action="append", default=[],
                        help="run only this combination, method,guidance,layer,spread,labels (repeatable)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a collective may wait (dist timeout)")
    parser.add_argument("--launch-timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, help="write every combination's records here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.only:
        args.subset = ";".join(args.only)
    combos = combinations(args.subset)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        status, tail = launch(args.subset, args.timeout, Path(folder), args.launch_timeout)
        wall = time.perf_counter() - started
        results = read_results(Path(folder))
    failed = 0
    print(f"{'method':<13} {'guidance':<13} {'layer':<12} {'spread':<14} {'labels':<7} {'s':>5} "
          f"{'sup/rank':>9} {'slots/rank':>10} {'rank diff':>9}  result")
    for combo in combos:
        records = results.get(combo, [])
        good = len(records) == 2 and all(r["ok"] for r in records)
        good = good and records[0]["rank_difference"] == 0.0 and records[0]["moved"] > 0
        good = good and all(r["loss"] is not None and r["loss"] == r["loss"] for r in records)
        failed += not good
        if len(records) == 2 and all(r["ok"] for r in records):
            print(f"{combo[0]:<13} {combo[1]:<13} {combo[2]:<12} {combo[3]:<14} {combo[4]:<7} "
                  f"{max(r['seconds'] for r in records):5.2f} "
                  f"{'/'.join(str(r['supervised']) for r in records):>9} "
                  f"{'/'.join(str(r['label_slots']) for r in records):>10} "
                  f"{records[0]['rank_difference']:9.2g}  {'ok' if good else 'FAILED'}")
        else:
            error = next((r.get("error") for r in records if not r["ok"]), "not reached")
            print(f"{combo[0]:<13} {combo[1]:<13} {combo[2]:<12} {combo[3]:<14} {combo[4]:<7}  FAILED: {error}")
    print(f"{len(combos) - failed} of {len(combos)} combinations passed; launch exit status {status}, "
          f"{wall:.1f} s wall for the whole launch")
    if status and failed:
        print(tail)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r for records in results.values() for r in records], indent=1))
    return int(bool(failed or status))


if __name__ == "__main__":
    sys.exit(main())
