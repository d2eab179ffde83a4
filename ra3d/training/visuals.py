"""Images a person looks at: validation grids and turntable frames, as uint8 arrays.

They are written by :func:`ra3d.io.write_image_atomic` and :func:`ra3d.io.write_gif_atomic`
(ra3d's one atomic-write rule), not here.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


def to_uint8(rgb: Tensor) -> np.ndarray:
    """``[H, W, 3]`` float in [0, 1] → uint8 array."""
    return (rgb.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def tile_grid(views: list[list[np.ndarray]]) -> np.ndarray:
    """``views[v][r]`` tiles ``[H, W, 3]`` → one image with a row per ``r`` and a column per ``v``."""
    columns = [np.concatenate(rows, axis=0) for rows in views]  # each [R*H, W, 3]
    return np.concatenate(columns, axis=1)


def side_by_side(tiles: list[np.ndarray]) -> np.ndarray:
    """Tiles ``[H, W, 3]`` side by side (one turntable frame)."""
    return np.concatenate(tiles, axis=1)
