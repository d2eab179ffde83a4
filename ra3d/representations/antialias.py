"""Differentiable silhouette antialiasing for rasterised meshes (any backend, CPU or CUDA).

A z-buffer decides coverage by testing pixel centres, so the coverage of a pixel is a step
function of the vertex positions: no gradient tells a mesh to grow or shrink its silhouette. The
fine stage needs exactly that gradient (the asset term compares silhouettes, Eq. 11). This module
applies the idea of nvdiffrast's ``antialias`` (Laine et al. 2020) in plain PyTorch:

For every pair of 4-neighbour pixels ``(f, g)`` where ``f`` is covered by triangle ``t`` and ``g``
is empty, the screen-space edge of ``t`` that the segment ``f → g`` leaves through is found from
``t``'s edge functions ``E_i`` (linear in the pixel position, differentiable in the projected
vertices): the segment leaves at the fraction ``α = E_i(f) / (E_i(f) - E_i(g))``. With pixel
spacing 1 the covered share of the box between the two centres is ``α``, so

* if ``α > ½`` the empty pixel ``g`` gets ``δ = α - ½`` of ``f``'s value;
* if ``α < ½`` the covered pixel ``f`` keeps only ``1 - (½ - α)`` of its value (blended with g's).

A pair only counts along the axis the edge is most perpendicular to (a vertical-ish edge is
resolved by horizontal pairs), so a straight edge is not counted twice; for an axis-aligned edge
this is the exact box-filtered coverage. The blended images are continuous in the vertex positions
and their gradients match finite differences as long as no pixel changes triangle. Only
foreground/background boundaries are treated (occlusion edges inside the silhouette are not), and
when the segment leaves ``t`` through an edge shared with a triangle that does not reach ``g``'s
centre either, ``α`` is taken from ``t``'s edge — an underestimate by at most one pixel share.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _screen(clip: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pixel-space x (columns) and y (rows, down) of clip vertices ``[..., 4]`` (as the
    rasteriser: pixel centre ``(u + ½, v + ½)``)."""
    w = clip[..., 3]
    safe_w = torch.where(w > 0, w, torch.ones_like(w))
    x = (clip[..., 0] / safe_w + 1.0) * (0.5 * width)
    y = (1.0 - clip[..., 1] / safe_w) * (0.5 * height)
    return x, y


def silhouette_antialias(
    images: list[Tensor], clip: Tensor, faces: Tensor, triangle_id: Tensor
) -> list[Tensor]:
    """Blend ``images`` (each ``[B, H, W, C]``, zero where empty: opacity, premultiplied colour)
    across silhouette edges; returns new tensors (differentiable w.r.t. ``clip [B, V, 4]`` and
    the images). ``triangle_id [B, H, W]`` comes from the rasteriser (``-1`` = empty)."""
    b, h, w = triangle_id.shape
    faces = faces.to(device=clip.device, dtype=torch.int64)
    covered = triangle_id >= 0
    out = [img.clone() for img in images]
    for axis in (2, 1):  # horizontal pairs (columns), then vertical pairs (rows)
        if triangle_id.shape[axis] < 2:
            continue
        n = triangle_id.shape[axis] - 1
        first = covered.narrow(axis, 0, n)
        second = covered.narrow(axis, 1, n)
        bi, yi, xi = torch.nonzero(first ^ second, as_tuple=True)  # pair (p, p + e_axis)
        if bi.numel() == 0:
            continue
        step_y, step_x = (0, 1) if axis == 2 else (1, 0)
        p_first = first[bi, yi, xi]  # True: the first pixel is the covered one
        fy = torch.where(p_first, yi, yi + step_y)
        fx = torch.where(p_first, xi, xi + step_x)
        gy = torch.where(p_first, yi + step_y, yi)
        gx = torch.where(p_first, xi + step_x, xi)
        tri = triangle_id[bi, fy, fx]  # [P]
        corners = clip[bi[:, None], faces[tri]]  # [P, 3, 4]
        sx, sy = _screen(corners, h, w)  # [P, 3] each
        x1, x2 = sx.roll(-1, dims=1), sx.roll(-2, dims=1)
        y1, y2 = sy.roll(-1, dims=1), sy.roll(-2, dims=1)
        ea, eb, ec = y1 - y2, x2 - x1, x1 * y2 - x2 * y1  # edge i opposite corner i
        sign = torch.sign(ec.sum(dim=1, keepdim=True)).detach()  # orient: inside => E >= 0
        ea, eb, ec = ea * sign, eb * sign, ec * sign
        pf_x, pf_y = fx.to(clip.dtype)[:, None] + 0.5, fy.to(clip.dtype)[:, None] + 0.5
        pg_x, pg_y = gx.to(clip.dtype)[:, None] + 0.5, gy.to(clip.dtype)[:, None] + 0.5
        e_f = ea * pf_x + eb * pf_y + ec  # [P, 3] >= 0 (f is inside t)
        e_g = ea * pg_x + eb * pg_y + ec
        leaving = (e_g < 0).detach()
        alpha = torch.where(leaving, e_f / torch.where(leaving, e_f - e_g, 1.0), 2.0)
        alpha_min, edge = alpha.min(dim=1)  # the edge the segment leaves through
        has_edge = leaving.any(dim=1)
        normal_a = ea.gather(1, edge[:, None])[:, 0].detach().abs()
        normal_b = eb.gather(1, edge[:, None])[:, 0].detach().abs()
        dominant = normal_a >= normal_b if axis == 2 else normal_b > normal_a
        keep = has_edge & dominant
        if not keep.any():
            continue
        delta = alpha_min[keep].clamp(0.0, 1.0) - 0.5  # [K]
        bk, fyk, fxk, gyk, gxk = bi[keep], fy[keep], fx[keep], gy[keep], gx[keep]
        for k, img in enumerate(images):
            v_f, v_g = img[bk, fyk, fxk], img[bk, gyk, gxk]  # [K, C]
            grow = delta.clamp(min=0.0)[:, None]  # g takes this share of f
            shrink = (-delta).clamp(min=0.0)[:, None]  # f gives up this share to g
            flat = out[k].reshape(-1, img.shape[-1])
            idx_g = (bk * h + gyk) * w + gxk
            idx_f = (bk * h + fyk) * w + fxk
            flat = flat.index_add(0, idx_g, grow * (v_f - v_g))
            flat = flat.index_add(0, idx_f, shrink * (v_g - v_f))
            out[k] = flat.reshape(img.shape)
    return out
