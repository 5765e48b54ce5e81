"""Numpy drawing primitives for the procedural worlds.

All images are float32 (H, W, 3) in [0, 1]; all masks are bool (H, W). Coordinates are in
pixels with (0, 0) at the top-left pixel centre.
"""

from __future__ import annotations

import colorsys

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")


def hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    """RGB float32 (3,) in [0, 1] from HSV (hue wraps around 1)."""
    return np.asarray(colorsys.hsv_to_rgb(hue % 1.0, float(np.clip(saturation, 0, 1)), float(np.clip(value, 0, 1))), dtype=np.float32)


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinate arrays, float32 (size, size) each."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    """bool mask of a filled ellipse with semi-axes (rx, ry) rotated by ``angle`` radians."""
    dy, dx = yy - cy, xx - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / rx
    v = (-dx * sin + dy * cos) / ry
    return u * u + v * v <= 1.0


def shape_mask(name: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    """bool mask of one of ``SHAPES`` centred at (cy, cx) with half-extent ``radius``."""
    dy, dx = yy - cy, xx - cx
    ady, adx = np.abs(dy), np.abs(dx)
    if name == "circle":
        return dy * dy + dx * dx <= radius * radius
    if name == "square":
        side = radius * 0.85  # same area order as the circle
        return (ady <= side) & (adx <= side)
    if name == "triangle":
        # Upward isosceles triangle: apex at the top, base at the bottom.
        top, bottom = cy - radius, cy + radius
        half_width = radius * (yy - top) / (bottom - top)
        return (yy >= top) & (yy <= bottom) & (adx <= half_width)
    if name == "cross":
        arm = radius * 0.35
        return ((ady <= arm) & (adx <= radius)) | ((adx <= arm) & (ady <= radius))
    if name == "diamond":
        return ady + adx <= radius * 1.15
    if name == "ring":
        dist2 = dy * dy + dx * dx
        return (dist2 <= radius * radius) & (dist2 >= (0.55 * radius) ** 2)
    raise ValueError(f"unknown shape {name!r}; valid: {', '.join(SHAPES)}")


def stripes(yy: np.ndarray, xx: np.ndarray, angle: float, period: float, phase: float) -> np.ndarray:
    """float32 (H, W) in [0, 1]: a sinusoidal grating whose bars run along ``angle`` (radians)."""
    proj = -xx * np.sin(angle) + yy * np.cos(angle)
    return (0.5 + 0.5 * np.sin(2 * np.pi * proj / period + phase)).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """float32 (size, size) in about [-1, 1]: uniform noise on a ``cells`` grid, upsampled bilinearly."""
    coarse = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)
    pos = np.linspace(0, cells, size, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    t = pos - i0
    rows = coarse[i0] * (1 - t)[:, None] + coarse[i0 + 1] * t[:, None]
    return rows[:, i0] * (1 - t)[None, :] + rows[:, i0 + 1] * t[None, :]


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight XYXY box (x1, y1 exclusive) of a non-empty bool mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from float in [0, 1] (clipped)."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def clutter_background(rng: np.random.Generator, grid_yx: tuple[np.ndarray, np.ndarray], clutter: tuple[int, int]) -> np.ndarray:
    """float32 (S, S, 3): grey level U(0.3, 0.7) with smooth noise and a small colour tint, plus
    ``clutter`` = (lo, hi) rectangles and thin lines of random low-saturation colours: a background
    that carries no class information."""
    yy, xx = grid_yx
    size = yy.shape[0]
    grey = rng.uniform(0.3, 0.7) + 0.12 * smooth_noise(rng, size, 6)
    image = np.repeat(grey[:, :, None], 3, axis=2) + rng.normal(0.0, 0.04, size=3).astype(np.float32)
    for _ in range(rng.integers(clutter[0], clutter[1] + 1)):
        color = hsv(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.9))
        if rng.uniform() < 0.5:  # rectangle
            h, w = rng.uniform(0.05, 0.3, size=2) * size
            y0, x0 = rng.uniform(0, size - h), rng.uniform(0, size - w)
            region = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        else:  # line, 1-2 px thick
            angle, offset = rng.uniform(0, np.pi), rng.uniform(0, size)
            dist = np.abs((xx - size / 2) * np.sin(angle) - (yy - size / 2) * np.cos(angle) - (offset - size / 2))
            region = dist <= rng.uniform(0.5, 1.2)
        image[region] = color
    return image
