"""``gainet fix --way auto``'s choice (gainet.shortcuts.select): the held-out counterfactual rows,
the group-balanced score against an independent count, the ranking, and the bootstrap."""

from __future__ import annotations

import math

import torch

from gainet.shortcuts.diagnose import load_annotated
from gainet.shortcuts.select import SelectionSet, choose, hold_out, ranking_key, stability
from tests.test_shortcuts import ColourFeatures, ColourModel, ColourWorld


def _sets(seed: int = 0) -> tuple[SelectionSet, object, object]:
    data = load_annotated(ColourWorld(n=24, seed=seed), progress=False, min_images=8)
    fit_rows, held_rows = hold_out(data, seed=seed)
    fit, held = data.subset(fit_rows), data.subset(held_rows)
    return SelectionSet.build(held, fit, contexts_per_class=3, seed=seed), fit, held


def test_hold_out_keeps_every_class_on_both_sides() -> None:
    data = load_annotated(ColourWorld(n=24), progress=False, min_images=8)
    fit_rows, held_rows = hold_out(data, seed=3)
    assert set(fit_rows.tolist()).isdisjoint(held_rows.tolist())
    assert sorted(fit_rows.tolist() + held_rows.tolist()) == list(range(24))
    first = data.labels.argmax(1)
    assert set(first[held_rows].tolist()) == {0, 1, 2} == set(first[fit_rows].tolist())
    assert held_rows.numel() == 6  # a quarter of 8 images per class, rounded: 2 each


def test_every_held_out_object_goes_on_every_class_of_context_and_keeps_its_label() -> None:
    selection, _, held = _sets()
    objects = ~selection.alone
    features = ColourFeatures()(selection.images[objects])
    context_class, object_class = features[:, :3].argmax(1), features[:, 3:].argmax(1)
    assert torch.equal(object_class, selection.labels[objects].argmax(1))
    assert torch.equal(selection.groups[objects], object_class * 3 + context_class)
    # 6 held-out objects x 3 contexts of each of 3 classes; every held-out context alone
    assert int(objects.sum()) == 6 * 9 and int(selection.alone.sum()) == len(held)
    alone_context = ColourFeatures()(selection.images[selection.alone])[:, :3].argmax(1)
    assert torch.equal(selection.groups[selection.alone], 9 + alone_context)
    assert torch.equal(torch.bincount(selection.sources, minlength=6), torch.full((6,), 10))


def _independent_scores(selection: SelectionSet, answers: torch.Tensor) -> dict[str, float]:
    """Group accuracies by a float64 loop over a dict, from the top-1 answers."""
    hits: dict[int, list[float]] = {}
    for row in range(answers.numel()):
        own = int(selection.labels[row].argmax())
        ok = answers[row] != own if selection.alone[row] else answers[row] == own
        hits.setdefault(int(selection.groups[row]), []).append(float(ok))
    accuracy = {g: sum(v) / len(v) for g, v in hits.items()}
    objects = [a for g, a in accuracy.items() if g < 9]
    alone = [float(answers[r] == selection.labels[r].argmax()) for r in range(answers.numel()) if selection.alone[r]]
    return {"balanced": sum(accuracy.values()) / len(accuracy), "worst_group": min(objects),
            "mean_group": sum(objects) / len(objects), "context_rate": sum(alone) / len(alone)}


def test_scores_match_an_independent_count_for_random_answers() -> None:
    selection, _, _ = _sets(seed=1)
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(selection.images.shape[0], 3, generator=generator)
    scores = selection.score(lambda x: logits[: x.shape[0]] if x.shape[0] == logits.shape[0] else None,
                             multi_label=False, batch_size=10_000)
    expected = _independent_scores(selection, logits.argmax(1))
    for key, value in expected.items():
        assert math.isclose(scores[key], value, abs_tol=1e-9), key


def test_the_object_reader_is_chosen_over_the_context_reader_under_both_rules() -> None:
    selection, _, _ = _sets()
    reader, context = ColourModel("object"), ColourModel("context")
    candidates = [{"name": name, **{"scores": (s := selection.score(m, multi_label=False))}, "right": s.pop("right")}
                  for name, m in (("context", context), ("object", reader))]
    by_name = {c["name"]: c["scores"] for c in candidates}
    # the context reader: right only where the context agrees (3 of 9 object groups), contexts alone all named
    assert by_name["context"]["context_rate"] == 1.0 and by_name["object"]["context_rate"] < 1.0
    assert math.isclose(by_name["context"]["mean_group"], 1 / 3) and by_name["object"]["worst_group"] == 1.0
    assert choose(candidates)["name"] == "object" and choose(candidates, "worst-group")["name"] == "object"
    draws = selection.bootstrap([c["right"] for c in candidates], resamples=50)
    assert draws.shape == (50, 2) and stability(draws, 1) == 1.0 and stability(draws, 0) == 0.0


def test_balanced_rule_counts_the_contexts_alone_and_breaks_worst_group_ties() -> None:
    same = {"balanced": 0.8, "worst_group": 0.0, "mean_group": 0.9, "context_rate": 0.1}
    lower = {"balanced": 0.7, "worst_group": 0.5, "mean_group": 0.9, "context_rate": 0.9}
    assert ranking_key(same) > ranking_key(lower)  # balanced first
    assert ranking_key(same, "worst-group") < ranking_key(lower, "worst-group")  # DFR's rule: worst group first
    assert choose([{"scores": lower, "name": "a"}, {"scores": dict(lower), "name": "b"}])["name"] == "a"  # tie: cheaper


def test_bootstrap_resamples_images_not_rows() -> None:
    selection, _, _ = _sets()
    right = torch.zeros(selection.images.shape[0], dtype=torch.bool)
    right[selection.sources == 0] = True  # one held-out image all right, the rest all wrong
    draws = selection.bootstrap([right], resamples=400, seed=2)[:, 0]
    # a group's accuracy in a resample is 1 where the image drawn for it is image 0, else 0, so the
    # balanced score is 0 on resamples that skip image 0 (about (5/6)^6 = 33% of them)
    skipped = float((draws == 0).double().mean())
    assert 0.22 < skipped < 0.45 and float(draws.max()) <= 1.0
