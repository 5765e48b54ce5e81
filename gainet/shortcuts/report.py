"""``diagnosis.json``, ``diagnosis.md`` and ``index.html`` (with example images) of a diagnosis."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from gainet.evaluation.overlays import denormalise, save_png
from gainet.shortcuts.diagnose import OBJECT_SPLITS, SPLITS, CounterfactualSplits
from gainet.training.checkpoint import write_text_atomic

SPLIT_TITLES = {"original": "original", "only_fg": "only-FG (object on a neutral fill)",
                "mixed_same": "mixed-same (object on a context of its class)",
                "mixed_rand": "mixed-rand (object on another class's context)",
                "context_only": "context only (object removed and filled)"}
OUTPUT_FILES = ("diagnosis.json", "diagnosis.md", "index.html")
OBJECT_ROWS = OBJECT_SPLITS


def _number(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def _cell(result: dict[str, Any], name: str) -> str:
    """``0.934 [0.905, 0.960]``: a number with its 95% interval, when there is one."""
    low, high = (result.get("intervals") or {}).get(name, (None, None))
    if low is None or not math.isfinite(low):
        return _number(result.get(name))
    return f"{_number(result.get(name))} [{low:.3f}, {high:.3f}]"


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, value with its interval, images) rows of the headline table (markdown and HTML)."""
    images = result["images"]
    rows = [(SPLIT_TITLES[name], _cell(result, name), str(images.get(name, ""))) for name in OBJECT_ROWS
            if name in result]
    rows.append(("background gap (mixed-same - mixed-rand)", _cell(result, "gap"), ""))
    if "paste_cost" in result:
        rows.append(("cost of pasting itself (original - mixed-same)", _cell(result, "paste_cost"), ""))
    chance = result.get("chance")
    if isinstance(chance, float) and math.isfinite(chance):
        rows.append((f"chance: the {result['metric']} of these answers on other images' labels", _number(chance), ""))
    context_chance = result.get("context_chance")
    chance_text = (f" (chance {context_chance:.3f})" if isinstance(context_chance, float) and math.isfinite(context_chance)
                   else "")
    rows.append((f"context only: share named as the context's class{chance_text}", _cell(result, "context_rate"),
                 str(images.get("context_only", ""))))
    rows.append(("context only: mean confidence in that class", _number(result.get("context_confidence")), ""))
    return rows


def contexts_line(result: dict[str, Any]) -> str:
    """Where the contexts came from and whether they carry their class (the model-free probe)."""
    contexts = result.get("contexts") or {}
    probe = contexts.get("probe") or {}
    line = f"Contexts from {contexts.get('split', '?')} ({contexts.get('images', '?')} images)"
    if probe:
        line += (f"; a colour probe names their class at {_number(probe.get('score'))} (chance "
                 f"{_number(probe.get('chance'))}): {'they carry it' if probe.get('low', 0) > probe.get('chance', 1) else 'they do not carry it'}")
    return line + "."


CLASS_COLUMNS = (("class", "class"), ("objects", "objects"), ("original", "original: named"),
                 ("mixed_rand", "on other contexts: named"), ("taken_by_context", "on other contexts: named as the context"),
                 ("context_pull", "its context pulls other objects"), ("context_named_own", "its context alone: named as it"),
                 ("context_named_most", "its context alone: named most as"))


def _class_value(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key == "context_named_most":
        return f"{value} ({_number(row.get('context_named_most_share'))})" if value is not None else "n/a"
    return str(value) if isinstance(value, (int, str)) else _number(value)


def markdown(result: dict[str, Any], title: str = "Background test") -> str:
    """The diagnosis as markdown: the headline table with intervals, the verdict, the per-class table."""
    metric = result["metric"]
    lines = [f"# {title}", "", f"Model: `{result.get('model', '?')}`; split `{result.get('split', '?')}`, "
             f"{result['images']['original']} images with {result['source']}"
             f"{' (GrabCut inside the boxes)' if result.get('swap_mask') == 'grabcut' else ''}. "
             f"{contexts_line(result)}", "",
             f"| split | {metric} [95% interval] | images |", "|---|---:|---:|"]
    lines += [f"| {what} | {value} | {images} |" for what, value, images in summary_rows(result)]
    lines += ["", f"**Verdict:** {result['verdict']}", ""]
    table = result.get("per_class") or []
    if table:
        lines += ["## Which context leaks into which class", "",
                  "| " + " | ".join(label for _, label in CLASS_COLUMNS) + " |",
                  "|" + "---|" * len(CLASS_COLUMNS)]
        lines += ["| " + " | ".join(_class_value(row, key) for key, _ in CLASS_COLUMNS) + " |" for row in table]
        first = result.get("annotate_first") or []
        if first:
            lines += ["", f"Contexts that pull answers hardest (annotate these classes' photos first): {', '.join(first)}."]
        lines.append("")
    return "\n".join(lines)


def _picture(image: Tensor, mean: Sequence[float], std: Sequence[float], side: int = 160) -> np.ndarray:
    """``(3, H, W)`` normalised -> ``(S, S, 3)`` uint8, enlarged with nearest neighbour to about ``side``."""
    picture = denormalise(image, mean, std)
    factor = max(1, side // max(picture.shape[-2:]))
    picture = picture.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    return np.rint(picture.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def example_rows(splits: CounterfactualSplits, count: int) -> list[int]:
    """Up to ``count`` annotated rows present in every split, spread over the rows."""
    common = set(splits.rows["original"].tolist())
    for name in OBJECT_SPLITS:
        common &= set(splits.rows[name].tolist())
    ordered = sorted(common)
    if len(ordered) <= count:
        return ordered
    step = len(ordered) / count
    return [ordered[int(i * step)] for i in range(count)]


def _answer(scores: Tensor, classes: Sequence[str], multi_label: bool) -> str:
    p = torch.sigmoid(scores) if multi_label else torch.softmax(scores, dim=0)
    top = int(p.argmax())
    return f"{classes[top]} ({float(p[top]):.2f})"


def write_report(output_dir: str | Path, result: dict[str, Any], splits: CounterfactualSplits,
                 scores: dict[str, Tensor], labels: Tensor, *, mean: Sequence[float], std: Sequence[float],
                 examples: int = 4, title: str = "Background test") -> dict[str, Path]:
    """Write ``diagnosis.json``, ``diagnosis.md``, ``index.html`` and ``examples/*.png``.

    Args:
        result, splits, scores: from :func:`gainet.shortcuts.diagnose.diagnose`.
        labels: ``(N, C)`` the annotated images' labels. mean, std: the images' normalisation.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    classes, multi_label = result["classes"], result["multi_label"]
    rows = example_rows(splits, examples)
    shown: list[dict[str, Any]] = []
    for row in rows:
        entry = {"row": row, "labels": [classes[k] for k in (labels[row] > 0.5).nonzero().flatten().tolist()],
                 "splits": {}}
        for name in SPLITS:
            if name == "context_only":  # the context its first mixed-same image stood on, alone
                same = int((splits.rows["mixed_same"] == row).nonzero()[0, 0])
                match = (splits.rows["context_only"] == splits.partners["mixed_same"][same]).nonzero()
                position = int(match[0, 0])
            else:
                position = int((splits.rows[name] == row).nonzero()[0, 0])
            file = Path("examples") / f"{row:04d}_{name}.png"
            save_png(_picture(splits.images(name, [position])[0], mean, std), output / file)
            partner = int(splits.rows[name][position] if name == "context_only" else splits.partners[name][position])
            context_labels = splits.context_data.labels[partner] if partner >= 0 else torch.zeros(0)
            entry["splits"][name] = {"file": file.as_posix(), "answer": _answer(scores[name][position], classes, multi_label),
                                     "context_of": [classes[k] for k in (context_labels > 0.5).nonzero().flatten().tolist()]}
        shown.append(entry)
    record = {**result, "examples": shown}
    write_text_atomic(output / "diagnosis.json", json.dumps(record, indent=2, default=_json_default, allow_nan=False)
                      if _finite(record) else json.dumps(_nan_to_none(record), indent=2, default=_json_default))
    write_text_atomic(output / "diagnosis.md", markdown(result, title))
    write_text_atomic(output / "index.html", _html(result, shown, title))
    return {name: output / name for name in OUTPUT_FILES}


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _html(result: dict[str, Any], shown: list[dict[str, Any]], title: str) -> str:
    e = html.escape
    metric = result["metric"]
    table = "".join(f"<tr{' class=gap' if what.startswith('background gap') else ''}><td>{e(what)}</td><td>{e(value)}</td>"
                    f"<td>{e(images)}</td></tr>" for what, value, images in summary_rows(result))
    per_class = result.get("per_class") or []
    leaks = ""
    if per_class:
        head = "".join(f"<th>{e(label)}</th>" for _, label in CLASS_COLUMNS)
        body_rows = "".join("<tr>" + "".join(f"<td>{e(_class_value(row, key))}</td>" for key, _ in CLASS_COLUMNS) + "</tr>"
                            for row in per_class)
        first = result.get("annotate_first") or []
        advice = (f"<p>Contexts that pull answers hardest (annotate these classes' photos first): {e(', '.join(first))}.</p>"
                  if first else "")
        leaks = f"<h2>Which context leaks into which class</h2><table><tr>{head}</tr>{body_rows}</table>{advice}"
    heads = "".join(f"<th>{e(SPLIT_TITLES[name])}</th>" for name in SPLITS)
    body = ""
    for entry in shown:
        cells = ""
        for name in SPLITS:
            item = entry["splits"][name]
            context = ", ".join(item["context_of"])
            caption = (f"context of: {e(context)}<br>" if name in ("mixed_same", "mixed_rand", "context_only") else "")
            cells += (f"<td><img src='{e(item['file'])}' alt='{e(name)}'><br>{caption}"
                      f"model: <b>{e(item['answer'])}</b></td>")
        body += f"<tr><th>{e(', '.join(entry['labels']))}</th>{cells}</tr>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 6px 10px; text-align: left; vertical-align: top; }}
td:nth-child(2) {{ text-align: right; }}
tr.gap td {{ font-weight: bold; }}
.verdict {{ font-size: 1.15em; padding: 0.6em; background: #f3f3f3; border-left: 4px solid #c33; }}
img {{ image-rendering: pixelated; width: 160px; height: 160px; }}
</style></head><body>
<h1>{e(title)}</h1>
<p>Model <code>{e(str(result.get('model', '?')))}</code> on split <code>{e(str(result.get('split', '?')))}</code>:
{result['images']['original']} images with {e(result['source'])}. The counterfactual test of "Noise or Signal"
(Xiao et al. 2020): each object on a neutral fill, on a context of its own class, on another class's context, and the
context alone.</p>
<p>{e(contexts_line(result))}</p>
<p class="verdict">{e(result['verdict'])}</p>
<table><tr><th>split</th><th>{e(metric)} [95% interval]</th><th>images</th></tr>{table}</table>
{leaks}
<h2>Examples: the model's answers (class, probability)</h2>
<table><tr><th>labels</th>{heads}</tr>{body}</table>
</body></html>
"""
