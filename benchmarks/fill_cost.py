#!/usr/bin/env python
"""The context fill, vectorised (this engine) against the per-image onion-peel loop it replaced.

Times ``fill_from_context`` on ``--images`` images of ``--size`` px with a ``--box``-px square
hole each (at random positions), interleaved with the previous implementation loaded from a file
(``--old``, e.g. ``git show 12b9430:gainet/core/counterfactual.py > old.py``); medians of
``--rounds``. The old one looped over images in Python, ring by ring, syncing per ring.

    git show 12b9430:gainet/core/counterfactual.py > /tmp/old_counterfactual.py
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/fill_cost.py --old /tmp/old_counterfactual.py
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import torch

from gainet.core.counterfactual import fill_from_context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the previous gainet/core/counterfactual.py")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--box", type=int, nargs="+", default=[30, 100], help="hole side per --size")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("old_counterfactual", args.old)
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_counterfactual"] = old  # dataclasses look their module up there
    spec.loader.exec_module(old)
    generator = torch.Generator().manual_seed(0)
    print(f"| size | hole | images | old ms | new ms | old / new |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, box in zip(args.size, args.box):
        images = torch.randn(args.images, 3, size, size, generator=generator)
        holes = torch.zeros(args.images, size, size)
        for n in range(args.images):
            top, left = torch.randint(0, size - box + 1, (2,), generator=generator).tolist()
            holes[n, top:top + box, left:left + box] = 1.0
        times = {"old": [], "new": []}
        for r in range(args.rounds + 1):
            for name, fill in (("old", old.fill_from_context), ("new", fill_from_context)):
                started = time.perf_counter()
                fill(images, holes, generator=torch.Generator().manual_seed(r))
                if r:
                    times[name].append(time.perf_counter() - started)
        o, n = (1000 * statistics.median(times[k]) for k in ("old", "new"))
        print(f"| {size} | {box} | {args.images} | {o:.0f} | {n:.0f} | {o / n:.1f} |")


if __name__ == "__main__":
    main()
