"""Images a person looks at: validation grids, turntable GIFs (written atomically)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


def to_uint8(rgb: Tensor) -> np.ndarray:
    """``[H, W, 3]`` float in [0, 1] → uint8 array."""
    return (rgb.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def write_image_atomic(image: np.ndarray, path: Path) -> None:
    """Write a PNG so that a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp.name, path)


def write_gif_atomic(frames: list[np.ndarray], path: Path, fps: int = 10) -> None:
    """Write an endlessly looping GIF turntable atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".gif", delete=False) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps),
            loop=0,
        )  # fmt: skip
    os.replace(tmp.name, path)


def tile_grid(views: list[list[np.ndarray]]) -> np.ndarray:
    """``views[v][r]`` tiles ``[H, W, 3]`` → one image with a row per ``r`` and a column per ``v``."""
    columns = [np.concatenate(rows, axis=0) for rows in views]  # each [R*H, W, 3]
    return np.concatenate(columns, axis=1)


def side_by_side(tiles: list[np.ndarray]) -> np.ndarray:
    """Tiles ``[H, W, 3]`` side by side (one turntable frame)."""
    return np.concatenate(tiles, axis=1)
