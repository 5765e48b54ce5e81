"""``gainet fix --way auto``'s choice (gainet.shortcuts.select): the held-out counterfactual rows,
the group-balanced score against an independent count, the ranking, and the bootstrap."""

from __future__ import annotations

import math

import torch

from gainet.shortcuts.diagnose import load_annotated
from gainet.shortcuts.select import SelectionSet, choose, hold_out, ranking_key, stability
from tests.test_shortcuts import ColourFeatures, ColourModel, ColourWorld


def _sets(seed: int = 0, n: int = 24) -> tuple[SelectionSet, object]:
    data = load_annotated(ColourWorld(n=n, seed=seed), progress=False, min_images=8)
    _, held_rows = hold_out(data, seed=seed)
    held = data.subset(held_rows)
    return SelectionSet.build(held, multi_label=False, seed=seed), held


def _rows(selection: SelectionSet):
    return selection.images(slice(0, len(selection)))


def test_hold_out_keeps_every_class_on_both_sides() -> None:
    data = load_annotated(ColourWorld(n=24), progress=False, min_images=8)
    fit_rows, held_rows = hold_out(data, seed=3)
    assert set(fit_rows.tolist()).isdisjoint(held_rows.tolist())
    assert sorted(fit_rows.tolist() + held_rows.tolist()) == list(range(24))
    first = data.labels.argmax(1)
    assert set(first[held_rows].tolist()) == {0, 1, 2} == set(first[fit_rows].tolist())
    assert held_rows.numel() == 6  # a quarter of 8 images per class, rounded: 2 each


def test_every_held_out_object_goes_on_held_out_contexts_of_every_class_and_keeps_its_label() -> None:
    selection, held = _sets()
    images, objects = _rows(selection), ~selection.alone
    features = ColourFeatures()(images[objects])
    context_class, object_class = features[:, :3].argmax(1), features[:, 3:].argmax(1)
    assert torch.equal(object_class, selection.labels[objects].argmax(1))
    assert torch.equal(selection.groups[objects], object_class * 3 + context_class)
    # contexts come from the held-out images only: 2 per class; an object never on its own context
    # while its class has another, so 2 rows on each other class's contexts and 1 on its own class's
    assert set(selection.contexts.tolist()) <= set(range(len(held)))
    assert not bool((selection.objects == selection.contexts).any())
    assert int(objects.sum()) == 6 * (2 + 2 + 1) and int(selection.alone.sum()) == len(held)
    alone_context = ColourFeatures()(images[selection.alone])[:, :3].argmax(1)
    assert torch.equal(selection.groups[selection.alone], 9 + alone_context)
    # pasted batch by batch: any window gives the same rows
    assert torch.equal(torch.cat([selection.images(slice(a, a + 7)) for a in range(0, len(selection), 7)]), images)


def test_an_object_goes_on_its_own_context_only_when_its_class_has_no_other() -> None:
    selection, held = _sets(n=12)  # 4 images per class: one of each held out
    assert len(held) == 3
    own = selection.objects == selection.contexts
    assert torch.equal(own, selection.groups[~selection.alone] % 4 == 0)  # exactly the aligned groups 0, 4, 8


def _independent_scores(selection: SelectionSet, answers: torch.Tensor) -> dict[str, float]:
    """Group accuracies by a float64 loop over a dict, from the top-1 answers (a context alone's
    group at most 1 - 1/3: chance for 3 classes)."""
    hits: dict[int, list[float]] = {}
    for row in range(answers.numel()):
        own = int(selection.labels[row].argmax())
        ok = answers[row] != own if selection.alone[row] else answers[row] == own
        hits.setdefault(int(selection.groups[row]), []).append(float(ok))
    accuracy = {g: sum(v) / len(v) for g, v in hits.items()}
    objects = [a for g, a in accuracy.items() if g < 9]
    alone_groups = [a for g, a in accuracy.items() if g >= 9]
    alone_mean = min(sum(alone_groups) / len(alone_groups), 2 / 3)
    alone = [float(answers[r] == selection.labels[r].argmax()) for r in range(answers.numel()) if selection.alone[r]]
    return {"balanced": (sum(objects) + len(alone_groups) * alone_mean) / len(accuracy), "worst_group": min(objects),
            "mean_group": sum(objects) / len(objects), "context_rate": sum(alone) / len(alone)}


def test_scores_match_an_independent_count_for_random_answers() -> None:
    selection, _ = _sets(seed=1)
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(len(selection), 3, generator=generator)
    scores = selection.score(lambda x: logits[: x.shape[0]] if x.shape[0] == logits.shape[0] else None,
                             batch_size=10_000)
    expected = _independent_scores(selection, logits.argmax(1))
    for key, value in expected.items():
        assert math.isclose(scores[key], value, abs_tol=1e-9), key


def test_the_object_reader_is_chosen_over_the_context_reader_under_both_rules() -> None:
    selection, _ = _sets()
    reader, context = ColourModel("object"), ColourModel("context")
    candidates = [{"name": name, **{"scores": (s := selection.score(m))}, "right": s.pop("right")}
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


def test_a_model_that_names_any_class_but_the_contexts_gains_nothing_over_chance() -> None:
    selection, _ = _sets()
    reader = ColourModel("object")
    against = ColourModel("object")
    with torch.no_grad():  # also reads the context, against its class
        against.fc.weight[:, :3] = -2.0 * torch.eye(3)
    plain, contrary = selection.score(reader), selection.score(against)
    assert contrary["context_rate"] == 0.0 and plain["context_rate"] > 0.0
    # the plain reader answers class 0 for every context alone (no object: equal logits), so it is
    # right on 2 of 3 contexts' groups: chance, the same as always avoiding the context's class
    assert math.isclose(contrary["balanced"], plain["balanced"], abs_tol=1e-12)


def test_bootstrap_matches_a_loop_over_the_same_draws() -> None:
    selection, held = _sets()
    generator = torch.Generator().manual_seed(9)
    right = torch.rand(len(selection), generator=generator) > 0.4
    counts = selection.resample_counts(5, seed=4)
    first = held.labels.argmax(1)
    for k in range(3):  # within each class: as many draws as held-out images of the class
        assert torch.all(counts[:, first == k].sum(1) == int((first == k).sum()))
    draws = selection.bootstrap([right], resamples=5, seed=4)[:, 0]
    for b in range(5):
        hits: dict[int, list[float]] = {}
        for row in range(len(selection)):
            if row < selection.objects.numel():
                w = float(counts[b, selection.objects[row]] * counts[b, selection.contexts[row]])
            else:
                w = float(counts[b, selection.alone_images[row - selection.objects.numel()]])
            g = int(selection.groups[row])
            h = hits.setdefault(g, [0.0, 0.0])
            h[0] += w * float(right[row])
            h[1] += w
        objects = [a / n for g, (a, n) in hits.items() if n > 0 and g < 9]
        alone = [a / n for g, (a, n) in hits.items() if n > 0 and g >= 9]
        expected = (sum(objects) + len(alone) * min(sum(alone) / len(alone), 2 / 3)) / (len(objects) + len(alone))
        assert math.isclose(float(draws[b]), expected, abs_tol=1e-12)
