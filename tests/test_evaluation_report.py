"""Overlays, PNG grids, Markdown tables and the HTML report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gainet.evaluation import denormalise, markdown_table, overlay, overlay_grid, save_png, write_html_report


def test_denormalise_by_hand():
    image = torch.tensor([[[0.0, 1.0]], [[-1.0, 2.0]], [[10.0, -10.0]]])  # (3, 1, 2)
    out = denormalise(image, mean=[0.5, 0.25, 0.5], std=[0.25, 0.5, 0.1])
    expected = torch.tensor([[[0.5, 0.75]], [[0.0, 1.0]], [[1.0, 0.0]]])  # clamped to [0, 1]
    assert torch.allclose(out, expected)
    batch = denormalise(image[None].repeat(2, 1, 1, 1), mean=[0.5, 0.25, 0.5], std=[0.25, 0.5, 0.1])
    assert batch.shape == (2, 3, 1, 2) and torch.allclose(batch[1], expected)


def test_overlay_shape_dtype_range_and_blend():
    image = torch.rand(3, 8, 6)
    heat = torch.rand(4, 3)  # smaller than the image: resized
    out = overlay(image, heat, alpha=0.4)
    assert out.shape == (8, 6, 3) and out.dtype == np.uint8
    assert out.min() >= 0 and out.max() <= 255
    # alpha = 0: the image itself; alpha = 1 on a black image with attention 1: jet's top colour,
    # dark red (0.5, 0, 0)
    plain = overlay(image, heat, alpha=0.0)
    assert np.array_equal(plain, np.rint(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    red = overlay(torch.zeros(3, 2, 2), torch.ones(2, 2), alpha=1.0, colormap="jet")
    assert red[0, 0].tolist() == [128, 0, 0]
    # out-of-range attention is clipped, not wrapped
    assert np.array_equal(overlay(torch.zeros(3, 2, 2), torch.full((2, 2), 7.0), alpha=1.0), red)
    with pytest.raises(ValueError):
        overlay(image, heat, alpha=1.5)


def test_save_png_round_trip(tmp_path):
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    path = save_png(array, tmp_path / "sub" / "x.png")
    with Image.open(path) as loaded:
        assert loaded.format == "PNG"
        assert np.array_equal(np.asarray(loaded.convert("RGB")), array)


def test_overlay_grid_writes_a_readable_png(tmp_path):
    cell = overlay(torch.rand(3, 16, 16), torch.rand(16, 16))
    rows = [[cell, cell, cell], [cell, cell]]  # ragged: the missing cell stays blank
    path = overlay_grid(rows, ["image a", "image <b>"], ["input", "Grad-CAM", "GAIN"], tmp_path / "grid.png")
    assert path.exists()
    with Image.open(path) as loaded:
        assert loaded.format == "PNG"
        width, height = loaded.size
    assert width > height > 0  # 3 columns x 2 rows of square cells
    with pytest.raises(ValueError):
        overlay_grid(rows, ["only one title"], None, tmp_path / "bad.png")


def test_markdown_table_exact_text():
    rows = [{"model": "GAIN", "mIoU": 0.55312, "maps": 3}, {"model": "a|b", "mIoU": float("nan")}]
    text = markdown_table(rows, ["model", "mIoU", "maps"], floatfmt=".2f")
    assert text.splitlines() == [
        "| model | mIoU | maps |",
        "|---|---:|---:|",
        "| GAIN | 0.55 | 3 |",
        "| a\\|b | nan |  |",
    ]


def test_html_report_has_table_image_paragraph_and_escapes(tmp_path):
    rows = [{"method": "<script>alert(1)</script>", "mIoU": 0.5}, {"method": "GAIN & co", "mIoU": 0.625}]
    image = tmp_path / "figures" / "grid.png"
    save_png(np.zeros((2, 2, 3), dtype=np.uint8), image)
    path = write_html_report(
        tmp_path / "report.html",
        "Results <v1>",
        [
            ("Segmentation", [markdown_table(rows, ["method", "mIoU"]), "Best threshold 0.4 < 0.5.\n\nSecond paragraph."]),
            {"title": "Figures", "items": [{"image": image, "caption": "maps & masks"}]},
            {"title": "Direct table", "items": {"table": [{"a|b": 1.0}], "columns": ["a|b"]}},
        ],
    )
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text
    assert "<title>Results &lt;v1&gt;</title>" in text
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<th>method</th><th>mIoU</th>" in text
    assert '<td class="num">0.625</td>' in text and "<td>GAIN &amp; co</td>" in text
    assert "<p>Best threshold 0.4 &lt; 0.5.</p>" in text and "<p>Second paragraph.</p>" in text
    assert '<img src="figures/grid.png"' in text and "<figcaption>maps &amp; masks</figcaption>" in text
    assert "<th>a|b</th>" in text and '<td class="num">1.000</td>' in text  # escaped pipe round-trips
    assert text.count("<table>") == 2
