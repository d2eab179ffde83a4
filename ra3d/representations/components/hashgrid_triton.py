"""Triton kernels for the multiresolution hash encoding (``HashGridEncoding(backend="triton")``).

Why: the pure-PyTorch backend materialises ``[n, L]`` temporaries per corner and scatters the table
gradient with ``index_add_``; on an H100 that is ~4 M points/s forward+backward, which makes a
512-px NeRF step take seconds. tiny-cuda-nn is faster but is not installable everywhere; Triton
ships with PyTorch. These kernels evaluate *exactly the function of the torch backend* (same level
scales, 0.5 offset, dense/hashed rows including tiny-cuda-nn's boundary wrap, same flat ``params``
layout; see :mod:`ra3d.representations.components.hashgrid`), fused into one pass per (block of points, level).

Kernels (grid ``(ceil(N / BLOCK), L)``: axis 0 blocks of points, axis 1 the level, so programs that
run together read the same level's table rows):

* forward: per point and level, the lattice position ``x_d * scale_l + 0.5`` (float multiply, then
  add, no fused multiply-add, like the eager torch ops), the ``2^D`` corner rows (dense:
  ``sum_d v_d * res^d`` wrapped once by the level size; hashed: ``XOR_d v_d * prime_d`` masked by
  ``size - 1``, int64 arithmetic whose low 32 bits equal tiny-cuda-nn's uint32 products), the
  d-linear weights ``prod_d (frac_d | 1 - frac_d)`` multiplied in axis order, and the weighted sum
  of the ``F`` features, accumulated corner by corner in the torch backend's corner order.
* backward: the table gradient ``d params[row] += w_c * grad_out`` by atomic adds, and the input
  gradient ``d x_d = scale_l * sum_c <feat_c, grad_out> * dw_c / dfrac_d`` (``dw_c / dfrac_d`` is
  ``+-prod_{k != d} w_k``), atomically summed over levels into ``[N, D]``.

Second derivatives (``create_graph=True``, e.g. a loss on analytic normals) are not implemented in
Triton: when the backward runs with grad mode enabled, :class:`TritonHashGridFunction` computes it
with the torch backend's differentiable backward instead, so double backward stays correct.

Importing this module imports ``triton``; :mod:`ra3d.representations.components.hashgrid` imports it lazily.
Under ``TRITON_INTERPRET=1`` (set before this module is imported) Triton runs the kernels with
numpy on CPU tensors, which is how the kernels are tested without a GPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import triton
import triton.language as tl
from torch import Tensor

logger = logging.getLogger(__name__)

# Points per program. One program handles BLOCK points of one level.
_BLOCK = 128
_NUM_WARPS = 4


class LevelSpec(Protocol):
    """What the kernels need to know about one level (``hashgrid._Level`` satisfies it)."""

    scale: float
    resolution: int
    size: int
    offset: int
    dense: bool


class DifferentiableBackward(Protocol):
    """The torch backend's backward (``hashgrid._TorchHashGrid``), used for double backward."""

    def backward(
        self, x: Tensor, params: Tensor, grad_out: Tensor, need_x: bool, need_params: bool
    ) -> tuple[Tensor | None, Tensor | None]: ...


def interpreter_active() -> bool:
    """Whether the kernels of this module run in Triton's CPU interpreter (``TRITON_INTERPRET=1``
    was set when the module was imported): then they take CPU tensors."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - every Triton 3.x has it
        return False
    return isinstance(_hashgrid_forward_kernel, InterpretedFunction)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _axis_position(x_ptr, points, point_mask, scale, d: tl.constexpr, D: tl.constexpr):
    """Lower lattice vertex (int64) and fractional position along axis ``d`` of ``BLOCK`` points.

    ``pos = x * scale + 0.5`` (two roundings, as the torch backend's eager ops), ``lower =
    floor(pos)``, ``frac = pos - lower``. NaN inputs give NaN ``frac`` and vertex 0 (a valid row),
    so a NaN point yields NaN outputs without reading outside the table.
    """
    xd = tl.load(x_ptr + points * D + d, mask=point_mask, other=0.0)
    pos = xd * scale + 0.5
    lower = tl.floor(pos)
    frac = pos - lower
    lower = tl.where(lower == lower, lower, 0.0)
    return lower.to(tl.int64), frac


@triton.jit
def _corner_row_and_weight(
    x_ptr,
    prime_ptr,
    points,
    point_mask,
    scale,
    resolution,
    size,
    dense,
    C: tl.constexpr,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Table row (relative to the level's first row, int64) and d-linear weight of corner ``C``
    (bit ``d`` of ``C`` set = upper vertex along axis ``d``) for ``BLOCK`` points."""
    weight = tl.full([BLOCK], 1.0, dtype=x_ptr.dtype.element_ty)
    key_dense = tl.zeros([BLOCK], dtype=tl.int64)
    key_hash = tl.zeros([BLOCK], dtype=tl.int64)
    stride = resolution * 0 + 1  # int64 scalar: res^d
    for d in tl.static_range(D):
        vertex, frac = _axis_position(x_ptr, points, point_mask, scale, d, D)
        if (C >> d) & 1:
            vertex = vertex + 1
            weight = weight * frac
        else:
            weight = weight * (1.0 - frac)
        key_dense = key_dense + vertex * stride
        # (v * prime) in int64 has the same low 32 bits as tiny-cuda-nn's uint32 product, and the
        # mask below keeps at most 30 of them, so no explicit "& 0xFFFFFFFF" is needed.
        key_hash = key_hash ^ (vertex * tl.load(prime_ptr + d))
        stride = stride * resolution
    # Dense: vertices lie in [0, res]^D, so the key is below 2 * res^D <= 2 * size and one
    # subtraction is the torch backend's `remainder(key, size)` (the boundary wrap). The clamp is
    # a no-op for such keys; it only guarantees in-bounds reads.
    row_dense = tl.where(key_dense >= size, key_dense - size, key_dense)
    row_dense = tl.minimum(tl.maximum(row_dense, 0), size - 1)
    # Hashed levels have a power-of-two size, so "mod 2^32 mod size" is a mask.
    row_hash = key_hash & (size - 1)
    row = tl.where(dense, row_dense, row_hash)
    return row, weight


@triton.jit
def _corner_weight_partials(
    x_ptr,
    points,
    point_mask,
    scale,
    dims,
    C: tl.constexpr,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``[BLOCK, D_PAD]``: column ``d`` = ``d w_C / d frac_d = (+-1) * prod_{k != d} w_k`` (plus
    if corner ``C`` takes the upper vertex along ``d``). Columns ``>= D`` are padding."""
    partials = tl.full([BLOCK, D_PAD], 1.0, dtype=x_ptr.dtype.element_ty)
    for k in tl.static_range(D):
        _, frac = _axis_position(x_ptr, points, point_mask, scale, k, D)
        if (C >> k) & 1:
            factor = frac
            sign = 1.0
        else:
            factor = 1.0 - frac
            sign = -1.0
        partials = partials * tl.where(dims[None, :] == k, sign, factor[:, None])
    return partials


@triton.jit
def _hashgrid_forward_kernel(
    x_ptr,  # [N, D] in [0, 1], params dtype, contiguous
    params_ptr,  # [P * F]
    out_ptr,  # [N, L * F]
    scale_ptr,  # [L] params dtype
    offset_ptr,  # [L] int64, first row of each level
    size_ptr,  # [L] int64, rows of each level
    resolution_ptr,  # [L] int64, vertices per axis
    dense_ptr,  # [L] int32, 1 = dense indexing
    prime_ptr,  # [D] int64, hash primes
    n_points,
    N_LEVELS: tl.constexpr,
    D: tl.constexpr,
    N_CORNERS: tl.constexpr,
    F: tl.constexpr,
    F_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    level = tl.program_id(1)
    points = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] int64
    point_mask = points < n_points
    features = tl.arange(0, F_PAD)
    mask = point_mask[:, None] & (features < F)[None, :]  # [BLOCK, F_PAD]

    scale = tl.load(scale_ptr + level)
    first_row = tl.load(offset_ptr + level)
    size = tl.load(size_ptr + level)
    resolution = tl.load(resolution_ptr + level)
    dense = tl.load(dense_ptr + level) != 0

    acc = tl.zeros([BLOCK, F_PAD], dtype=params_ptr.dtype.element_ty)
    for c in tl.static_range(N_CORNERS):
        row, weight = _corner_row_and_weight(
            x_ptr, prime_ptr, points, point_mask, scale, resolution, size, dense, c, D, BLOCK
        )
        index = (first_row + row)[:, None] * F + features[None, :]
        feats = tl.load(params_ptr + index, mask=mask, other=0.0)
        acc = acc + feats * weight[:, None]
    out_index = points[:, None] * (N_LEVELS * F) + level * F + features[None, :]
    tl.store(out_ptr + out_index, acc, mask=mask)


@triton.jit
def _hashgrid_backward_kernel(
    x_ptr,  # [N, D]
    params_ptr,  # [P * F]
    grad_out_ptr,  # [N, L * F], contiguous
    grad_params_ptr,  # [P * F], zero-initialised (unused unless NEED_PARAMS)
    grad_x_ptr,  # [N, D], zero-initialised (unused unless NEED_X)
    scale_ptr,
    offset_ptr,
    size_ptr,
    resolution_ptr,
    dense_ptr,
    prime_ptr,
    n_points,
    N_LEVELS: tl.constexpr,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    N_CORNERS: tl.constexpr,
    F: tl.constexpr,
    F_PAD: tl.constexpr,
    NEED_PARAMS: tl.constexpr,
    NEED_X: tl.constexpr,
    BLOCK: tl.constexpr,
):
    level = tl.program_id(1)
    points = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    point_mask = points < n_points
    features = tl.arange(0, F_PAD)
    mask = point_mask[:, None] & (features < F)[None, :]
    dims = tl.arange(0, D_PAD)

    scale = tl.load(scale_ptr + level)
    first_row = tl.load(offset_ptr + level)
    size = tl.load(size_ptr + level)
    resolution = tl.load(resolution_ptr + level)
    dense = tl.load(dense_ptr + level) != 0

    g_index = points[:, None] * (N_LEVELS * F) + level * F + features[None, :]
    g = tl.load(grad_out_ptr + g_index, mask=mask, other=0.0)  # [BLOCK, F_PAD]
    grad_frac = tl.zeros([BLOCK, D_PAD], dtype=x_ptr.dtype.element_ty)
    for c in tl.static_range(N_CORNERS):
        row, weight = _corner_row_and_weight(
            x_ptr, prime_ptr, points, point_mask, scale, resolution, size, dense, c, D, BLOCK
        )
        index = (first_row + row)[:, None] * F + features[None, :]
        if NEED_PARAMS:
            tl.atomic_add(grad_params_ptr + index, weight[:, None] * g, mask=mask, sem="relaxed")
        if NEED_X:
            feats = tl.load(params_ptr + index, mask=mask, other=0.0)
            dot = tl.sum(feats * g, axis=1)  # [BLOCK] <feat_c, grad_out>
            partials = _corner_weight_partials(
                x_ptr, points, point_mask, scale, dims, c, D, D_PAD, BLOCK
            )
            grad_frac = grad_frac + dot[:, None] * partials
    if NEED_X:
        # frac_d = x_d * scale - const on the cell, so d frac_d / d x_d = scale.
        x_mask = point_mask[:, None] & (dims < D)[None, :]
        x_index = points[:, None] * D + dims[None, :]
        tl.atomic_add(grad_x_ptr + x_index, grad_frac * scale, mask=x_mask, sem="relaxed")


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


@dataclass
class _LevelTensors:
    """Per-level constants on one device: the kernels' lookup tables."""

    scale: Tensor  # [L] params dtype
    offset: Tensor  # [L] int64
    size: Tensor  # [L] int64
    resolution: Tensor  # [L] int64
    dense: Tensor  # [L] int32
    primes: Tensor  # [D] int64


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


class TritonHashGrid:
    """Launches the kernels for one grid layout (levels, ``D``, ``F``); stateless apart from a
    per-(device, dtype) cache of the small level tables."""

    def __init__(
        self,
        levels: Sequence[LevelSpec],
        n_input_dims: int,
        n_features: int,
        primes: Sequence[int],
    ) -> None:
        if len(primes) < n_input_dims:
            raise ValueError(f"need {n_input_dims} hash primes, got {len(primes)}")
        self.levels = list(levels)
        self.n_input_dims = int(n_input_dims)
        self.n_features = int(n_features)
        self.primes = [int(p) for p in primes[:n_input_dims]]
        self._cache: dict[tuple[torch.device, torch.dtype], _LevelTensors] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def _tensors(self, device: torch.device, dtype: torch.dtype) -> _LevelTensors:
        key = (device, dtype)
        if key not in self._cache:

            def ints(values: list[int], int_dtype: torch.dtype = torch.int64) -> Tensor:
                return torch.tensor(values, dtype=int_dtype, device=device)

            self._cache[key] = _LevelTensors(
                scale=torch.tensor([lv.scale for lv in self.levels], dtype=dtype, device=device),
                offset=ints([lv.offset for lv in self.levels]),
                size=ints([lv.size for lv in self.levels]),
                resolution=ints([lv.resolution for lv in self.levels]),
                dense=ints([int(lv.dense) for lv in self.levels], torch.int32),
                primes=ints(self.primes),
            )
        return self._cache[key]

    def _check(self, x: Tensor, params: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.n_input_dims:
            raise ValueError(f"expected points [N, {self.n_input_dims}], got {tuple(x.shape)}")
        if x.dtype != params.dtype or x.device != params.device:
            raise ValueError(
                f"points ({x.dtype}, {x.device}) and params ({params.dtype}, {params.device}) "
                "must share dtype and device"
            )
        if x.device.type != "cuda" and not interpreter_active():
            raise ValueError(
                f"the Triton hash-grid kernels run on CUDA tensors, got {x.device} (CPU tensors "
                "work only under TRITON_INTERPRET=1, Triton's slow testing interpreter)"
            )

    def _grid(self, n_points: int) -> tuple[int, int]:
        return (triton.cdiv(n_points, _BLOCK), len(self.levels))

    @staticmethod
    @contextlib.contextmanager
    def _on_device(device: torch.device) -> Iterator[None]:
        """Triton launches on the current CUDA device; make it the tensors' device."""
        if device.type == "cuda":
            with torch.cuda.device(device):
                yield
        else:
            yield

    def forward(self, x: Tensor, params: Tensor) -> Tensor:
        """``x: [N, D]`` in [0, 1], ``params: [P * F]`` -> ``[N, L, F]`` (params dtype)."""
        self._check(x, params)
        n_points, n_levels, n_features = x.shape[0], len(self.levels), self.n_features
        out = torch.empty(n_points, n_levels, n_features, dtype=params.dtype, device=x.device)
        if n_points == 0:
            return out
        t = self._tensors(x.device, params.dtype)
        with self._on_device(x.device):
            self._launch_forward(x, params, out, t)
        return out

    def _launch_forward(self, x: Tensor, params: Tensor, out: Tensor, t: _LevelTensors) -> None:
        n_points, n_levels, n_features = x.shape[0], len(self.levels), self.n_features
        _hashgrid_forward_kernel[self._grid(n_points)](
            x.contiguous(),
            params.contiguous(),
            out,
            t.scale,
            t.offset,
            t.size,
            t.resolution,
            t.dense,
            t.primes,
            n_points,
            N_LEVELS=n_levels,
            D=self.n_input_dims,
            N_CORNERS=2**self.n_input_dims,
            F=n_features,
            F_PAD=_next_power_of_two(n_features),
            BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )

    def backward(
        self, x: Tensor, params: Tensor, grad_out: Tensor, need_x: bool, need_params: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        """Gradients of ``<grad_out, forward(x, params)>`` (``grad_out: [N, L, F]``) w.r.t.
        ``x: [N, D]`` and ``params: [P * F]``; not differentiable themselves."""
        self._check(x, params)
        n_points, n_levels = x.shape[0], len(self.levels)
        # Contiguous buffers whatever the inputs' strides: the kernels index them densely.
        grad_x = torch.zeros(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        grad_params = (
            torch.zeros(params.shape, dtype=params.dtype, device=params.device)
            if need_params
            else None
        )
        if n_points == 0 or not (need_x or need_params):
            return grad_x, grad_params
        t = self._tensors(x.device, params.dtype)
        grad_out = grad_out.to(params.dtype).contiguous()
        if grad_out.shape != (n_points, n_levels, self.n_features):
            raise ValueError(
                f"grad_out must be [{n_points}, {n_levels}, {self.n_features}], got "
                f"{tuple(grad_out.shape)}"
            )
        # Unused outputs still need a valid pointer argument; the kernel never touches them.
        dummy = grad_out
        with self._on_device(x.device):
            self._launch_backward(
                x,
                params,
                grad_out,
                grad_params if grad_params is not None else dummy,
                grad_x if grad_x is not None else dummy,
                t,
                need_x=need_x,
                need_params=need_params,
            )
        return grad_x, grad_params

    def _launch_backward(
        self,
        x: Tensor,
        params: Tensor,
        grad_out: Tensor,
        grad_params: Tensor,
        grad_x: Tensor,
        t: _LevelTensors,
        need_x: bool,
        need_params: bool,
    ) -> None:
        n_points, n_levels = x.shape[0], len(self.levels)
        _hashgrid_backward_kernel[self._grid(n_points)](
            x.contiguous(),
            params.contiguous(),
            grad_out,
            grad_params,
            grad_x,
            t.scale,
            t.offset,
            t.size,
            t.resolution,
            t.dense,
            t.primes,
            n_points,
            N_LEVELS=n_levels,
            D=self.n_input_dims,
            D_PAD=_next_power_of_two(self.n_input_dims),
            N_CORNERS=2**self.n_input_dims,
            F=self.n_features,
            F_PAD=_next_power_of_two(self.n_features),
            NEED_PARAMS=bool(need_params),
            NEED_X=bool(need_x),
            BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,
        )


class TritonHashGridFunction(torch.autograd.Function):
    """Autograd wrapper: Triton forward and first-order backward; saves only the inputs.

    When the backward itself must be differentiable (it runs with grad mode enabled, i.e.
    ``create_graph=True``), it delegates to the torch backend's differentiable backward, which
    computes the same gradients from the same saved inputs.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        params: Tensor,
        grid: TritonHashGrid,
        fallback: DifferentiableBackward,
    ) -> Tensor:
        ctx.save_for_backward(x, params)
        ctx.grid = grid
        ctx.fallback = fallback
        return grid.forward(x, params)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, params = ctx.saved_tensors
        need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():
            logger.debug("hash grid: differentiable backward requested, using the torch backend's")
            grad_x, grad_params = ctx.fallback.backward(x, params, grad_out, need_x, need_params)
        else:
            grad_x, grad_params = ctx.grid.backward(x, params, grad_out, need_x, need_params)
        return grad_x, grad_params, None, None


__all__ = ["TritonHashGrid", "TritonHashGridFunction", "interpreter_active"]
