"""Drawing a scene: backgrounds, shape polygons, object geometry, whole images and one object's crop."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .scene import BACKGROUND_COLORS, COLORS, Background, Obj, Scene


def _background(bg: Background, size: int) -> Image.Image:
    if bg.kind == "plain":
        return Image.new("RGB", (size, size), BACKGROUND_COLORS[bg.colors[0]])
    first = np.array(BACKGROUND_COLORS[bg.colors[0]], dtype=np.float32)
    if bg.kind == "gradient":
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)
        t = t[:, None, None] if bg.vertical else t[None, :, None]
        second = np.array(BACKGROUND_COLORS[bg.colors[1]], dtype=np.float32)
        pixels = first + t * (second - first) + np.zeros((size, size, 1), np.float32)
    else:
        # Brightness grain of 2 px: per-pixel color noise costs 5x more to store and encode as PNG.
        grain = np.random.default_rng(bg.seed).integers(-14, 15, size=((size + 1) // 2, (size + 1) // 2, 1))
        pixels = first + grain.repeat(2, axis=0).repeat(2, axis=1)[:size, :size]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def object_geometry(obj: Obj, size: int) -> tuple[float, float, float]:
    """Center and radius in pixels; the object always stays inside its cell (crops rely on it)."""
    cell = size / 3
    radius = cell * (0.22 if obj.size == "small" else 0.40)
    room = cell / 2 - radius - cell * 0.05
    cx = (obj.col + 0.5) * cell + obj.dx * room
    cy = (obj.row + 0.5) * cell + obj.dy * room
    return cx, cy, radius


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(radii, start_deg):
        angles = np.deg2rad(start_deg + np.arange(len(radii)) * 360 / len(radii))
        return [(cx + rad * np.cos(a), cy + rad * np.sin(a)) for rad, a in zip(radii, angles)]

    if shape == "square":
        return ring([r * 1.15] * 4, 45)  # corner radius r*1.15 gives a side of about 1.6r
    if shape == "triangle":
        return ring([r * 1.1] * 3, -90)
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "star":
        return ring([r * 1.1, r * 0.45] * 5, -90)
    if shape == "cross":
        a, b = 0.33 * r, r
        offsets = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a),
                   (-b, -a), (-a, -a)]
        return [(cx + x, cy + y) for x, y in offsets]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = 112) -> Image.Image:
    """Draw the scene as a ``size`` x ``size`` RGB image (112 px = 16 tokens for the tiny Qwen2-VL)."""
    if size < 24:
        raise ValueError(f"size must be at least 24 pixels, got {size}")
    image = _background(scene.background, size)
    draw = ImageDraw.Draw(image)
    line = max(2, round(size / 40))
    for obj in scene.objects:
        cx, cy, r = object_geometry(obj, size)
        color = COLORS[obj.color]
        style = {"fill": color} if scene.style == "flat" else {"outline": color, "width": line}
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], **style)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, r), **style)
    return image


def render_crop(scene: Scene, index: int, size: int) -> Image.Image:
    """The grid cell of one object, cut from the rendered scene and scaled back to ``size`` (grounding)."""
    obj = scene.objects[index]
    cell = size / 3
    box = tuple(round(v) for v in (obj.col * cell, obj.row * cell, (obj.col + 1) * cell, (obj.row + 1) * cell))
    return render(scene, size).crop(box).resize((size, size), Image.BICUBIC)
