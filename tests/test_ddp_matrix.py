"""Issue 30: under DDP every rank runs the same collectives, whatever its share of the data.

One ``torchrun --nproc_per_node 2`` launch (gloo, 127.0.0.1, 30 s per collective instead of the
trainer's 600) of ``benchmarks/ddp_matrix.py --subset ci`` runs 44 combinations inside the same
two workers: the issue's two reproductions, every method x every guidance mode at small-cnn's
``features.11`` (autograd Grad-CAM weights, whose backward meets the distributed BatchNorm's
all_reduce), every method once at the head layer ``features``, with the supervision spreads
(rank 0 without a supervised image, one on each rank, all supervised) and single/multi-label
data in rotation (in the multi-label rows rank 0's images carry 2 labels where rank 1's carry 1),
and 3 combinations where rank 0's images carry no label at all.
Each combination is a real Trainer doing one DDP step on a hand-picked batch per rank; it passes
when both ranks finish, the loss is finite, the step moved the weights and the two ranks' weights
and buffers are bit-identical. The full matrix (466 combinations) is the benchmark script itself
(docs/distributed.md). About 35 s on 2 shared cores.

Before the fix the two reproductions failed as in the issue (each run alone with ``--only``): the
first with a gloo timeout (the Grad-CAM backward ran on the rank holding the supervised image
only), the second with "Batching rule not implemented for c10d::allreduce_" (vmapped Grad-CAM
over the all_reduce). The CI subset runs the second first: on the unfixed code it ends the launch
in seconds, and the first is then "not reached", failing too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ddp_matrix.py"


def _matrix_module():
    spec = importlib.util.spec_from_file_location("ddp_matrix", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    matrix = _matrix_module()
    folder = tmp_path_factory.mktemp("ddp-matrix")
    status, tail = matrix.launch("ci", timeout=30.0, results=folder, launch_timeout=300.0)
    return matrix, matrix.read_results(folder), status, tail


def _assert_passed(results: dict, combo: tuple, tail: str) -> None:
    records = results.get(combo, [])
    errors = [r.get("error") for r in records if not r["ok"]]
    assert len(records) == 2 and not errors, f"{combo}: {errors or 'not reached'}\n{tail[-2000:]}"
    assert records[0]["rank_difference"] == 0.0, f"{combo}: ranks differ by {records[0]['rank_difference']}"
    assert all(r["moved"] > 0 for r in records), f"{combo}: the step did not move the weights"
    assert all(r["loss"] is not None and r["loss"] == r["loss"] for r in records), f"{combo}: loss not finite"


def test_issue30_cam_l_e_with_a_rank_without_supervised_image_does_not_deadlock(ci_run) -> None:
    """cam --guidance l_e, boxes, features.11, single-label: rank 0 holds no supervised image."""
    matrix, results, _, tail = ci_run
    combo = matrix.REPRODUCTIONS[0]
    assert combo == ("cam", "l_e", "features.11", "one-rank-none", "single")
    _assert_passed(results, combo, tail)
    assert [r["supervised"] for r in results[combo]] == [0, 1]


def test_issue30_multi_label_gradcam_at_an_autograd_layer_runs_under_ddp(ci_run) -> None:
    """gain on the parts world at features.11: the Grad-CAM weights' backward makes collectives."""
    matrix, results, _, tail = ci_run
    combo = matrix.REPRODUCTIONS[1]
    assert combo == ("gain", "none", "features.11", "one-rank-none", "multi")
    _assert_passed(results, combo, tail)
    assert [r["label_slots"] for r in results[combo]] == [2, 1]  # the ranks need different slot counts


def test_every_method_and_guidance_mode_runs_the_same_collectives_on_every_rank(ci_run) -> None:
    matrix, results, status, tail = ci_run
    combos = matrix.ci_subset()
    assert {c[0] for c in combos} == set(matrix.METHODS) and {c[1] for c in combos} == set(matrix.GUIDANCE)
    assert {(c[3], c[4]) for c in combos if c[2] == "features.11"} == {
        (s, l) for s in matrix.SPREADS for l in ("multi", "single")} | {("one-rank-none", "unlabelled")}
    for combo in combos:
        _assert_passed(results, combo, tail)
    assert status == 0, tail
