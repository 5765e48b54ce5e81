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
from gainet.shortcuts.diagnose import SPLITS, CounterfactualSplits
from gainet.training.checkpoint import write_text_atomic

SPLIT_TITLES = {"original": "original", "mixed_same": "mixed-same (object on a context of its class)",
                "mixed_rand": "mixed-rand (object on another class's context)",
                "context_only": "context only (object removed and filled)"}
OUTPUT_FILES = ("diagnosis.json", "diagnosis.md", "index.html")


def _number(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def markdown(result: dict[str, Any], title: str = "Background test") -> str:
    """The diagnosis as a markdown table plus the verdict line."""
    metric = result["metric"]
    lines = [f"# {title}", "", f"Model: `{result.get('model', '?')}`; split `{result.get('split', '?')}`, "
             f"{result['images']['original']} images with {result['source']}"
             f"{' (GrabCut inside the boxes)' if result.get('swap_mask') == 'grabcut' else ''}.", "",
             f"| split | {metric} | images |", "|---|---:|---:|"]
    for name in ("original", "mixed_same", "mixed_rand"):
        lines.append(f"| {SPLIT_TITLES[name]} | {_number(result[name])} | {result['images'][name]} |")
    lines.append(f"| background gap (mixed-same - mixed-rand) | {_number(result['gap'])} | |")
    chance = result.get("chance")
    chance_text = f" (chance {chance:.2f})" if isinstance(chance, float) and math.isfinite(chance) else ""
    lines.append(f"| context only: share named as the context's class{chance_text} | {_number(result['context_rate'])} "
                 f"| {result['images']['context_only']} |")
    lines.append(f"| context only: mean confidence in that class | {_number(result['context_confidence'])} | |")
    lines += ["", f"**Verdict:** {result['verdict']}", ""]
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
    for name in SPLITS:
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
            position = int((splits.rows[name] == row).nonzero()[0, 0])
            file = Path("examples") / f"{row:04d}_{name}.png"
            save_png(_picture(splits.images[name][position], mean, std), output / file)
            partner = int(splits.partners[name][position])
            entry["splits"][name] = {"file": file.as_posix(), "answer": _answer(scores[name][position], classes, multi_label),
                                     "context_of": [classes[k] for k in (labels[partner] > 0.5).nonzero().flatten().tolist()]}
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
    table = "".join(
        f"<tr><td>{e(SPLIT_TITLES[name])}</td><td>{_number(result[name])}</td><td>{result['images'][name]}</td></tr>"
        for name in ("original", "mixed_same", "mixed_rand"))
    table += f"<tr class='gap'><td>background gap (mixed-same &minus; mixed-rand)</td><td>{_number(result['gap'])}</td><td></td></tr>"
    table += (f"<tr><td>context only: share named as the context's class</td><td>{_number(result['context_rate'])}</td>"
              f"<td>{result['images']['context_only']}</td></tr>"
              f"<tr><td>context only: mean confidence in that class</td><td>{_number(result['context_confidence'])}</td><td></td></tr>")
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
(Xiao et al. 2020): each object on a context of its own class, on another class's context, and the context alone.</p>
<p class="verdict">{e(result['verdict'])}</p>
<table><tr><th>split</th><th>{e(metric)}</th><th>images</th></tr>{table}</table>
<h2>Examples: the model's answers (class, probability)</h2>
<table><tr><th>labels</th>{heads}</tr>{body}</table>
</body></html>
"""
