"""Attention maps drawn over images, PNG files and titled PNG grids.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly (no ``pyplot``),
so nothing is registered in pyplot's global figure list, no display is needed, and every figure is
freed when the function returns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def denormalise(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``(x - mean) / std`` channel-wise and clamp to [0, 1].

    Args:
        image: ``(3, H, W)`` or ``(B, 3, H, W)`` normalised image(s).
        mean, std: per-channel values used for normalisation (e.g. ImageNet's).

    Returns:
        Same shape, float, in [0, 1].
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=image.device).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=image.device).reshape(-1, 1, 1)
    channels = image.shape[-3]
    if mean_t.shape[0] != channels or std_t.shape[0] != channels:
        raise ValueError(f"mean/std need {channels} values, got {mean_t.shape[0]} and {std_t.shape[0]}")
    return (image.float() * std_t + mean_t).clamp(0.0, 1.0)


def _to_tensor(array: ArrayLike) -> Tensor:
    return torch.as_tensor(np.asarray(array)) if isinstance(array, np.ndarray) else array.detach().cpu()


def overlay(image: ArrayLike, attention: ArrayLike, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped attention map over an image.

    Args:
        image: ``(3, H, W)`` float in [0, 1] (de-normalised; see :func:`denormalise`), or a
            ``(H, W, 3)`` uint8 array. Values outside [0, 1] are clipped.
        attention: ``(h, w)`` in [0, 1] (clipped); resized bilinearly to ``(H, W)`` if needed.
        alpha: weight of the attention colours, in [0, 1] (0 = image only, 1 = heat map only).
        colormap: any matplotlib colormap name.

    Returns:
        ``(H, W, 3)`` uint8 RGB array.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    picture = _to_tensor(image)
    if picture.dtype == torch.uint8 and picture.dim() == 3 and picture.shape[-1] == 3:
        picture = picture.permute(2, 0, 1).float() / 255.0
    if picture.dim() != 3 or picture.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W) float or (H, W, 3) uint8, got {tuple(picture.shape)}")
    heat = _to_tensor(attention).float()
    if heat.dim() != 2:
        raise ValueError(f"attention must be (H, W), got {tuple(heat.shape)}")
    height, width = picture.shape[1:]
    if heat.shape != (height, width):
        heat = F.interpolate(heat[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    heat = torch.nan_to_num(heat, nan=0.0).clamp(0.0, 1.0).numpy()
    colours = colormaps[colormap](heat)[..., :3]  # (H, W, 3) float in [0, 1]
    base = picture.float().clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    blended = (1.0 - alpha) * base + alpha * colours
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an ``(H, W, 3)`` or ``(H, W)`` uint8 array as a PNG (parent folders created); returns the path."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"expected (H, W[, 3|4]) uint8, got {array.shape} {array.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path


def overlay_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_titles: Sequence[str] | None,
    col_titles: Sequence[str] | None,
    path: str | os.PathLike,
    cell_size: float = 2.0,
    dpi: int = 100,
) -> Path:
    """Write one PNG grid of images with optional row titles (left) and column titles (top).

    Args:
        rows: ``rows[i][j]`` an ``(H, W, 3)`` uint8 (or ``(H, W)`` grey) image; rows may differ in
            length, missing cells stay blank.
        row_titles: one title per row, or ``None``.
        col_titles: one title per column (longest row), or ``None``.
        path: output PNG (parent folders created).
        cell_size: size of a cell in inches.
        dpi: resolution of the PNG.

    Returns:
        The path written.
    """
    num_rows = len(rows)
    num_cols = max((len(row) for row in rows), default=0)
    if num_rows == 0 or num_cols == 0:
        raise ValueError("overlay_grid needs at least one image")
    if row_titles is not None and len(row_titles) != num_rows:
        raise ValueError(f"{len(row_titles)} row titles for {num_rows} rows")
    if col_titles is not None and len(col_titles) != num_cols:
        raise ValueError(f"{len(col_titles)} column titles for {num_cols} columns")
    figure = Figure(figsize=(cell_size * num_cols, cell_size * num_rows), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(num_rows, num_cols, squeeze=False)
    for i in range(num_rows):
        for j in range(num_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(rows[i]):
                picture = np.asarray(rows[i][j])
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
            if i == 0 and col_titles is not None:
                ax.set_title(str(col_titles[j]), fontsize=9)
            if j == 0 and row_titles is not None:
                ax.set_ylabel(str(row_titles[i]), fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    figure.clear()
    return path
