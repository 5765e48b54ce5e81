#!/usr/bin/env python
"""Cost of one GAIN training step relative to one plain classifier step.

For each model it times one full training step (median over rounds that interleave the
configurations in a rotating order, after warm-up)

    zero_grad -> forward -> loss -> backward -> optimizer step

of ``GAIN(model)(images, labels).loss`` (L_self = L_cl + alpha L_am, one erased image per
(image, label) pair) and of the plain classifier (the same GAIN wrapper with ``mine=False``, so the
loss is ``classification_loss`` only), on the same batch of random images with random multi-hot
labels whose mean number of labels per image is exactly ``--mean-labels``. Each GAIN variant of
``am_gradient`` ("all", "attention") x ``erased_batchnorm`` ("batch", "running") is measured, and so
is the plain classifier on B + n*B images (as many images as a GAIN step runs: the measured floor).

Floor: a GAIN step pushes B clean images and n*B erased images (n = mean labels per image) through
the network, forward and backward, where the plain step pushes B; so its cost cannot be much below
``1 + n`` plain steps. Target printed beside each ratio: time ratio <= 1.1 x floor.

Peak memory:
  * cpu: each configuration runs in its own freshly forked process (forked before the parent does any
    tensor work). After ``--memory-warmup`` steps, freed heap memory is handed back to the OS
    (``malloc_trim``), the kernel's resident-set high-water mark is reset (``/proc/self/clear_refs``)
    and one more step runs; reported: VmHWM - VmRSS before that step, i.e. the peak *extra resident
    memory* (activations and temporaries; weights, the previous step's gradients, optimizer state
    and the batch are in the baseline) of the process during one step. Where the reset is unavailable, the fallback is the
    ru_maxrss increase over the first step of the fresh process. RSS counts every resident page of
    the process (allocator slack included), not only tensor bytes.
  * cuda: ``torch.cuda.max_memory_allocated() - memory_allocated()`` over one step after warm-up,
    i.e. peak extra bytes held by tensors (allocator cache excluded).

Run ``python benchmarks/step_cost.py --help``. The defaults take about 85 s of CPU time (about 1.5 min of
wall time on an otherwise idle 2-core CPU; longer when the cores are shared).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from gainet.core import GAIN
from gainet.models import build_classifier


@dataclass(frozen=True)
class Config:
    name: str
    mine: bool
    am_gradient: str = "all"
    erased_batchnorm: str = "batch"
    # Plain step on B + n*B images: the measured floor (same image count as a GAIN step).
    big_batch: bool = False


CONFIGS = [
    Config("plain (L_cl only)", mine=False),
    Config("plain on B+nB images (floor)", mine=False, big_batch=True),
    Config("GAIN am=all       bn=batch", True, "all", "batch"),
    Config("GAIN am=all       bn=running", True, "all", "running"),
    Config("GAIN am=attention bn=batch", True, "attention", "batch"),
    Config("GAIN am=attention bn=running", True, "attention", "running"),
]


def parse_models(text: str) -> list[tuple[str, int]]:
    """``"resnet18:112,small-cnn:64"`` -> ``[("resnet18", 112), ("small-cnn", 64)]``."""
    models = []
    for item in text.split(","):
        name, _, size = item.strip().rpartition(":")
        if not name or not size.isdigit():
            raise argparse.ArgumentTypeError(f"model must be NAME:PIXELS, got {item!r}")
        models.append((name, int(size)))
    return models


def multi_hot_labels(batch: int, classes: int, mean: float, generator: torch.Generator) -> torch.Tensor:
    """Random multi-hot ``(batch, classes)`` labels, every image with >= 1 label, and exactly
    ``round(mean * batch)`` labels in total (so the mean is exact when ``mean * batch`` is an integer)."""
    total = round(mean * batch)
    if not batch <= total <= batch * classes:
        raise ValueError(f"mean labels {mean} impossible for batch {batch} and {classes} classes")
    per_image = torch.full((batch,), total // batch, dtype=torch.long)
    extra = torch.randperm(batch, generator=generator)[: total - int(per_image.sum())]
    per_image[extra] += 1
    labels = torch.zeros(batch, classes)
    for row, count in enumerate(per_image.tolist()):
        labels[row, torch.randperm(classes, generator=generator)[:count]] = 1.0
    return labels


def make_batch(
    args: argparse.Namespace, size: int, device: torch.device, big: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark batch; ``big``: B + round(n*B) images, as many as a GAIN step runs."""
    generator = torch.Generator().manual_seed(args.seed)
    batch = args.batch + round(args.mean_labels * args.batch) if big else args.batch
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = multi_hot_labels(batch, args.classes, args.mean_labels, generator)
    return images.to(device), labels.to(device)


def build_gain(model: torch.nn.Module, config: Config, size: int, device: torch.device) -> GAIN:
    gain = GAIN(model, am_gradient=config.am_gradient, erased_batchnorm=config.erased_batchnorm, probe_size=size)
    return gain.to(device).train()


def make_step(gain: GAIN, images: torch.Tensor, labels: torch.Tensor, config: Config, lr: float):
    optimizer = torch.optim.SGD(gain.parameters(), lr=lr, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = gain(images, labels, mine=config.mine).loss
        loss.backward()
        optimizer.step()

    return step


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- memory (CPU)
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _maxrss_kib() -> float:
    import resource  # POSIX only; reached only where os.fork exists

    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 1024 if sys.platform == "darwin" else value  # bytes on macOS, KiB on Linux


def _cpu_peak_in_child(args: argparse.Namespace, name: str, size: int, config: Config) -> dict:
    """Runs in a fresh forked process: build everything, then measure one step's peak extra RSS."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    model = build_classifier(name, args.classes)
    gain = build_gain(model, config, size, device)
    images, labels = make_batch(args, size, device, config.big_batch)
    step = make_step(gain, images, labels, config, args.lr)
    if _status_kib("VmHWM") is not None and _reset_high_water_mark():
        for _ in range(args.memory_warmup):
            step()
        gc.collect()
        _malloc_trim()
        before = _status_kib("VmRSS")
        _reset_high_water_mark()
        step()
        peak = _status_kib("VmHWM")
        return {"peak_mib": (peak - before) / 1024, "method": "VmHWM-reset"}
    gc.collect()
    before = _maxrss_kib()
    step()
    return {"peak_mib": (_maxrss_kib() - before) / 1024, "method": "ru_maxrss-first-step"}


def cpu_peak_memory(args: argparse.Namespace, name: str, size: int, config: Config) -> dict:
    if not hasattr(os, "fork"):
        return {"peak_mib": float("nan"), "method": "unavailable (no fork)"}
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            result = _cpu_peak_in_child(args, name, size, config)
        except BaseException as error:  # report, never raise out of a forked child
            result = {"peak_mib": float("nan"), "method": f"error: {error!r}"}
        os.write(write_end, json.dumps(result).encode())
        os.close(write_end)
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"peak_mib": NaN, "method": "child died"}')


def cuda_peak_memory(step, device: torch.device) -> dict:
    synchronise(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    synchronise(device)
    return {"peak_mib": (torch.cuda.max_memory_allocated(device) - before) / 2**20, "method": "cuda-max-allocated"}


# ----------------------------------------------------------------------------- timing
def time_model(args: argparse.Namespace, name: str, size: int, device: torch.device) -> dict[str, dict]:
    """Median step time of every configuration; rounds interleave the configurations (in a rotating
    order) so that load from other processes and allocator state hit them alike."""
    torch.manual_seed(args.seed)
    base = build_classifier(name, args.classes)
    steps = {}
    for config in CONFIGS:
        gain = build_gain(copy.deepcopy(base), config, size, device)
        images, labels = make_batch(args, size, device, config.big_batch)
        steps[config.name] = make_step(gain, images, labels, config, args.lr)
    results = {config.name: {"times": []} for config in CONFIGS}
    for round_index in range(args.warmup + args.repeats):
        shift = round_index % len(CONFIGS)  # rotate the order: no configuration always follows the same one
        for config in CONFIGS[shift:] + CONFIGS[:shift]:
            synchronise(device)
            start = time.perf_counter()
            steps[config.name]()
            synchronise(device)
            elapsed = time.perf_counter() - start
            if round_index >= args.warmup:
                results[config.name]["times"].append(elapsed)
    if device.type == "cuda":
        for config in CONFIGS:
            results[config.name].update(cuda_peak_memory(steps[config.name], device))
    plain_times = results[CONFIGS[0].name]["times"]
    big_times = results[CONFIGS[1].name]["times"]
    for result in results.values():
        result["median_s"] = statistics.median(result["times"])
        # Ratios paired within a round (same moment, same background load), then the median.
        result["ratio"] = statistics.median(t / p for t, p in zip(result["times"], plain_times))
        result["big_ratio"] = statistics.median(t / b for t, b in zip(result["times"], big_times))
    return results


# ----------------------------------------------------------------------------- report
def print_table(rows: list[dict], floor: float, target_factor: float) -> None:
    header = (
        f"{'model':<10} {'px':>4} {'configuration':<30} {'time ms':>9} {'x plain':>8} "
        f"{'floor':>6} {'target':>7} {'time':>5} {'x B+nB':>7} {'peak MiB':>9} {'x plain':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        is_gain = row["mine"]
        shows_floor = is_gain or row["big_batch"]
        target = f"<={target_factor * floor:.2f}" if is_gain else ""
        verdict = ("PASS" if row["time_ratio"] <= target_factor * floor else "MISS") if is_gain else ""
        versus_big = f"{row['big_ratio']:.2f}" if is_gain else ""
        print(
            f"{row['model']:<10} {row['px']:>4} {row['config']:<30} {row['median_s'] * 1e3:>9.1f} "
            f"{row['time_ratio']:>8.2f} {f'{floor:.2f}' if shows_floor else '':>6} {target:>7} {verdict:>5} "
            f"{versus_big:>7} {row['peak_mib']:>9.1f} {row['mem_ratio']:>8.2f}"
        )
    print(
        "\ncolumns: 'x plain' = this row / plain step (time: median over rounds of the ratio within each round; then "
        "peak memory); floor = 1 + n; target and "
        "PASS/MISS: time ratio <= target;\n"
        "'x B+nB' = GAIN step time / time of a plain step on B + n*B images (the same number of images "
        "a GAIN step runs)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time and peak memory of one GAIN training step divided by one plain classifier step.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--models", type=parse_models, default=parse_models("resnet18:112,small-cnn:64"),
                        help="comma-separated NAME:PIXELS (gainet.models.build_classifier names)")
    parser.add_argument("--batch", type=int, default=16, help="images per batch B")
    parser.add_argument("--classes", type=int, default=20, help="number of classes C")
    parser.add_argument("--mean-labels", type=float, default=1.5,
                        help="mean labels per image n (exact when n * batch is an integer)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported")
    parser.add_argument("--memory-warmup", type=int, default=1, help="steps before the measured step (CPU memory)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (momentum 0.9)")
    parser.add_argument("--target-factor", type=float, default=1.1, help="target: time ratio <= factor x floor")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    total_labels = round(args.mean_labels * args.batch)
    mean_labels = total_labels / args.batch
    floor = 1.0 + mean_labels

    # CPU memory first: children are forked while this process has done no tensor work yet.
    memory: dict[tuple[str, str], dict] = {}
    if device.type == "cpu" and not args.no_memory:
        for name, size in args.models:
            for config in CONFIGS:
                memory[(name, config.name)] = cpu_peak_memory(args, name, size, config)
    torch.set_num_threads(args.threads)

    rows = []
    started = time.perf_counter()
    for name, size in args.models:
        timed = time_model(args, name, size, device)
        plain = timed[CONFIGS[0].name]
        for config in CONFIGS:
            result = timed[config.name]
            peak = result.get("peak_mib", memory.get((name, config.name), {}).get("peak_mib", float("nan")))
            plain_peak = plain.get("peak_mib", memory.get((name, CONFIGS[0].name), {}).get("peak_mib", float("nan")))
            rows.append({
                "model": name, "px": size, "config": config.name, "mine": config.mine,
                "big_batch": config.big_batch, "median_s": result["median_s"],
                "time_ratio": result["ratio"], "big_ratio": result["big_ratio"],
                "peak_mib": peak, "mem_ratio": peak / plain_peak if plain_peak else float("nan"),
            })

    methods = sorted({m["method"] for m in memory.values()} | ({"cuda-max-allocated"} if device.type == "cuda" else set()))
    print(f"GAIN training step / plain classifier step  (device {args.device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads() if device.type == 'cpu' else '-'})")
    print(f"batch B={args.batch}, C={args.classes} classes, mean labels per image n={mean_labels:.3f} "
          f"-> {total_labels} erased images per GAIN step; SGD(momentum 0.9)")
    if abs(mean_labels - args.mean_labels) > 1e-9:
        print(f"note: --mean-labels {args.mean_labels} x batch {args.batch} is not an integer; "
              f"the exact mean used is {mean_labels:.4f}")
    print(f"time: median of {args.repeats} interleaved rounds (rotating order) after {args.warmup} warm-up round(s); "
          f"step = zero_grad + forward + loss + backward + optimizer.step")
    print(f"floor = 1 + n = {floor:.2f} (B clean + n*B erased images forward and backward); "
          f"target: time ratio <= {args.target_factor} x floor = {args.target_factor * floor:.2f}")
    if args.no_memory and device.type == "cpu":
        print("peak memory: not measured (--no-memory)")
    else:
        explain = {
            "VmHWM-reset": "peak extra resident memory (VmHWM - VmRSS) of one step after warm-up, fresh forked "
                           "process per configuration, malloc_trim before the step",
            "ru_maxrss-first-step": "ru_maxrss increase over the first step of a fresh forked process",
            "cuda-max-allocated": "torch.cuda.max_memory_allocated - memory_allocated over one step "
                                  "(tensor bytes, allocator cache excluded)",
        }
        for method in methods:
            print(f"peak memory [{method}]: {explain.get(method, method)}")
    print()
    print_table(rows, floor, args.target_factor)
    print(f"\n(timing phase {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
