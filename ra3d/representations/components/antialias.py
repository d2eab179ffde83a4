"""Differentiable silhouette antialiasing for rasterised meshes (any backend, CPU or CUDA).

A z-buffer decides coverage by testing pixel centres, so the coverage of a pixel is a step
function of the vertex positions: no gradient tells a mesh to grow or shrink its silhouette. The
fine stage needs exactly that gradient (the asset term compares silhouettes, Eq. 11). This module
applies the idea of nvdiffrast's ``antialias`` (Laine et al. 2020) in plain PyTorch:

For every pair of 4-neighbour pixels ``(f, g)`` where ``f`` is covered and ``g`` is empty, the
segment between their centres leaves the mesh's projection somewhere; with pixel spacing 1 the
covered share of the box between the two centres is the fraction ``α`` of the segment before that
exit, so

* if ``α > ½`` the empty pixel ``g`` gets ``δ = α - ½`` of ``f``'s value;
* if ``α < ½`` the covered pixel ``f`` keeps only ``1 - (½ - α)`` of its value (blended with g's).

**Where the exit is.** Coverage can only change where the segment crosses a projected triangle
edge, so the *last* crossing of any edge before ``g`` (whose centre is empty) is the exit, whatever
the triangles' sizes. nvdiffrast instead tests the edges of the triangle seen at ``f``, which is
the same thing while triangles span several pixels; a DMTet at a grid finer than the pixels (the
CPU demo, or grid 128 seen small) has sub-pixel triangles, whose edges at ``f`` are mostly interior
edges: their α says little about the outline and their gradients move the mesh's inside (this
module did that until the fine demo's silhouettes would not converge). The crossings are found by
scanline: every projected edge is intersected with the pixel-centre lines it spans (rows for
horizontal pairs, columns for vertical ones), and each crossing lands in exactly one pair's
segment (in both neighbouring pairs' when it is on a pixel centre); per pair the crossing nearest
``g`` is kept. The work is ``O(total projected edge length in pixels)``, with no pair × edge
search. ``α`` is then recomputed from that edge's projected end points, so its gradient reaches
the two vertices of the true silhouette edge.

A pair only counts along the axis the exit edge is most perpendicular to (a vertical-ish edge is
resolved by horizontal pairs), so a straight edge is not counted twice; for an axis-aligned edge
this is the exact box-filtered coverage. The blended images are continuous in the vertex positions
and their gradients match finite differences as long as no pixel changes triangle and no crossing
changes pair. Only foreground/background boundaries are treated (occlusion edges inside the
silhouette are not). Edges with a vertex behind the camera (``w <= 0``) are ignored.
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


def _crossings(
    scan: Tensor, along: Tensor, valid: Tensor, n_lines: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where the projected edges cross the pixel-centre lines ``scan = k + ½``.

    ``scan, along [B, E, 2]`` are the end points' coordinates across and along the lines (rows:
    ``scan = y``, ``along = x``), ``valid [B, E]`` masks usable edges. Returns, per crossing, the
    view ``b``, the edge ``e``, the line ``k`` and the position ``t`` along it (detached); a
    crossing at ``t`` lies in the segment of the pair ``(⌊t - ½⌋, ⌊t - ½⌋ + 1)``. Lines are taken
    half-open (``lo <= k + ½ < hi``) so a vertex on a line is crossed once."""
    scan, along = scan.detach(), along.detach()
    lo, hi = scan.min(dim=-1).values, scan.max(dim=-1).values  # [B, E]
    first = torch.ceil(lo - 0.5).clamp(min=0)
    last = (torch.ceil(hi - 0.5) - 1).clamp(max=n_lines - 1)
    count = torch.where(valid, (last - first + 1).clamp(min=0), torch.zeros_like(first)).long()
    count = count.reshape(-1)
    flat = torch.repeat_interleave(torch.arange(count.numel(), device=scan.device), count)
    offsets = torch.cumsum(count, 0) - count
    k = first.reshape(-1)[flat].long() + (torch.arange(flat.numel(), device=scan.device)
                                          - offsets[flat])  # fmt: skip
    b, e = flat // scan.shape[1], flat % scan.shape[1]
    u0, u1 = scan[b, e, 0], scan[b, e, 1]
    t0, t1 = along[b, e, 0], along[b, e, 1]
    t = t0 + (k + 0.5 - u0) / (u1 - u0) * (t1 - t0)
    return b, e, k, t


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
    if faces.shape[0] == 0:
        return out
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # [E, 2]
    sx, sy = _screen(clip, h, w)  # [B, V] each
    ex, ey = sx[:, edges], sy[:, edges]  # [B, E, 2]
    valid = (clip[..., 3] > 0)[:, edges].all(dim=-1)  # [B, E]
    for axis in (2, 1):  # horizontal pairs (along rows), then vertical pairs (along columns)
        if triangle_id.shape[axis] < 2:
            continue
        n = triangle_id.shape[axis] - 1
        first = covered.narrow(axis, 0, n)
        second = covered.narrow(axis, 1, n)
        bi, yi, xi = torch.nonzero(first ^ second, as_tuple=True)  # pair (p, p + e_axis)
        if bi.numel() == 0:
            continue
        # In line coordinates: horizontal pairs lie on rows (scan = y) and run along x.
        scan, along = (ey, ex) if axis == 2 else (ex, ey)
        n_lines, n_along = (h, w) if axis == 2 else (w, h)
        line, cell = (yi, xi) if axis == 2 else (xi, yi)  # pair = cells (cell, cell + 1) on line
        cb, ce, ck, ct = _crossings(scan, along, valid, n_lines)
        # A crossing in the segment of pair (c, c + 1); one exactly on a pixel centre ends the
        # previous pair's segment too.
        cc = torch.floor(ct - 0.5).long()
        on_centre = torch.ceil(ct - 0.5).long() - 1 != cc
        cb, ce, ck, ct = (torch.cat([v, v[on_centre]]) for v in (cb, ce, ck, ct))
        cc = torch.cat([cc, cc[on_centre] - 1])
        inside = (cc >= 0) & (cc < n_along - 1)
        cb, ce, ck, ct, cc = cb[inside], ce[inside], ck[inside], ct[inside], cc[inside]
        if ct.numel() == 0:  # e.g. every edge has a vertex behind the camera
            continue
        n_keys = b * n_lines * (n_along - 1)
        key = (cb * n_lines + ck) * (n_along - 1) + cc  # [X]
        pair_key = (bi * n_lines + line) * (n_along - 1) + cell  # [P]
        p_first = first[bi, yi, xi]  # True: the first (lower-index) pixel is the covered one
        # The exit nearest g: the largest t when g is the second pixel, the smallest otherwise.
        t_max = ct.new_full((n_keys,), -torch.inf).scatter_reduce(0, key, ct, "amax")
        t_min = ct.new_full((n_keys,), torch.inf).scatter_reduce(0, key, ct, "amin")
        index = torch.arange(ct.numel(), device=ct.device)
        at_max = torch.full((n_keys,), -1, dtype=torch.int64, device=ct.device)
        at_max = at_max.scatter_reduce(0, key, torch.where(ct == t_max[key], index, -1), "amax")
        at_min = torch.full((n_keys,), -1, dtype=torch.int64, device=ct.device)
        at_min = at_min.scatter_reduce(0, key, torch.where(ct == t_min[key], index, -1), "amax")
        chosen = torch.where(p_first, at_max[pair_key], at_min[pair_key])  # [P], -1: none
        has_edge = chosen >= 0
        chosen = chosen.clamp(min=0)
        eb, ee = cb[chosen], ce[chosen]
        u0, u1 = scan[eb, ee, 0], scan[eb, ee, 1]  # differentiable end points
        t0, t1 = along[eb, ee, 0], along[eb, ee, 1]
        level = line.to(scan.dtype) + 0.5
        t_exit = t0 + (level - u0) / torch.where(has_edge, u1 - u0, 1.0) * (t1 - t0)
        f_centre = torch.where(p_first, cell, cell + 1).to(scan.dtype) + 0.5
        alpha = torch.where(p_first, t_exit - f_centre, f_centre - t_exit)  # [P]
        # Horizontal pairs resolve edges steeper than 45°, vertical pairs the others.
        du, dt = (u1 - u0).detach().abs(), (t1 - t0).detach().abs()
        dominant = du >= dt if axis == 2 else du > dt
        keep = has_edge & dominant
        if not keep.any():
            continue
        step_y, step_x = (0, 1) if axis == 2 else (1, 0)
        fy = torch.where(p_first, yi, yi + step_y)
        fx = torch.where(p_first, xi, xi + step_x)
        gy = torch.where(p_first, yi + step_y, yi)
        gx = torch.where(p_first, xi + step_x, xi)
        delta = alpha[keep].clamp(0.0, 1.0) - 0.5  # [K]
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
