"""Multiresolution hash encoding (Instant-NGP, Müller et al. 2022), the NeRF backbone's input
encoding (paper §5: "Instant-NGP is used for our NeRF backbone").

Three backends compute the *same function of the same parameters*:

* ``"torch"``: pure PyTorch, runs anywhere (CPU included), vectorised over points and levels,
  with a custom autograd function whose backward recomputes corner indices instead of storing
  ``[N, L, 2^d, F]`` intermediates, and whose backward is itself differentiable (double backward
  works, e.g. for losses on analytic normals).
* ``"tcnn"``: ``tinycudann.Encoding`` with the equivalent ``HashGrid`` config (CUDA only).
* ``"triton"``: fused Triton kernels (:mod:`ra3d.representations.components.hashgrid_triton`; CUDA only,
  imported lazily). Forward and first-order backward (table and input gradients) run in Triton;
  a backward that must itself be differentiable (``create_graph=True``, e.g. losses on analytic
  normals) is computed by the torch backend's backward instead, so double backward stays exact.
  ``"auto"`` picks it on CUDA when tiny-cuda-nn is unavailable (checked against the torch backend
  on an H100: 267 vs 3.3 M points/s forward+backward, see BENCHMARKS.md).

Because the torch backend reproduces tiny-cuda-nn's conventions exactly (level scales, the 0.5
offset, dense/hashed decision, hash function and parameter layout), both backends read the same flat
``params`` vector: a checkpoint trained with tcnn on a GPU evaluates the same function (up to float
rounding) with the torch backend on a CPU, and ``backend="auto"`` can switch when the module moves between devices.

Conventions (tiny-cuda-nn's, i.e. "Instant-NGP's exact formula", not the paper's
``floor(N_min * b^l)``):

* Level ``l`` has ``scale_l = base_resolution * 2^(l * log2(per_level_scale)) - 1`` (float32
  arithmetic) and ``resolution_l = ceil(scale_l) + 1`` grid vertices per axis
  (:func:`hashgrid_level_resolutions`). A point ``x`` in [0, 1]^d sits at lattice coordinate
  ``x * scale_l + 0.5``; the 0.5 offset staggers the levels (Instant-NGP, Appendix A).
* Level ``l`` owns ``size_l = min(next_multiple(resolution_l^d, 8), 2^log2_hashmap_size)`` table
  rows of ``n_features_per_level`` values. If ``resolution_l^d <= size_l`` the level is *dense*:
  vertex ``(i, j, k)`` uses row ``(i + j*res + k*res^2) mod size_l`` (x fastest). Otherwise it is
  *hashed*: row ``(i*1 XOR j*2654435761 XOR k*805459861) mod 2^32 mod size_l``.
* Dense levels are collision-free except for one boundary quirk inherited from tiny-cuda-nn: when
  ``scale_l`` is an integer or has a fractional part above 0.5, points with ``x * scale_l + 0.5 >
  resolution_l - 1`` along an axis interpolate towards a vertex at index ``resolution_l`` on that
  axis, which wraps into the next row of the dense layout. This only touches a thin slab at the
  upper faces of the unit cube (``x > (resolution_l - 1.5) / scale_l``).
* Corner features are combined by d-linear interpolation; the output is level-major:
  ``y[:, l * F + f]``.
* Inputs are clamped to [0, 1] before encoding (tiny-cuda-nn does not clamp, and would index out of
  the lattice); the gradient w.r.t. an input coordinate outside [0, 1] is therefore zero.
* Parameters are initialised U(-1e-4, 1e-4) from torch's RNG, as Instant-NGP does.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

TCNN_INSTALL_HINT = (
    "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"
)

# Instant-NGP's spatial-hash primes; 1 for the first axis keeps nearby x in nearby rows (cache).
HASH_PRIMES: tuple[int, ...] = (
    1,
    2654435761,
    805459861,
    3674653429,
    2097192037,
    1434869437,
    2165219737,
)
_BACKENDS = ("auto", "torch", "tcnn", "triton")
TRITON_REQUIREMENT = (
    "backend='triton' needs the `triton` package (bundled with PyTorch's CUDA wheels on Linux; "
    "otherwise `pip install triton`) and a CUDA GPU"
)
_DTYPES = (torch.float32, torch.float64)
# tiny-cuda-nn's HashGrid is compiled for these feature counts.
_TCNN_FEATURES_PER_LEVEL = (1, 2, 4, 8)
# The torch backend processes points in chunks of about this many (point, level) pairs, so its
# temporaries stay at a few tens of MB however large the batch (e.g. 64x64 rays x 64 samples).
_CHUNK_ELEMENTS = 2**19
# Scalar dtypes as wide as one table row (F features), for whole-row gathers.
_ROW_DTYPES: dict[int, torch.dtype] = {
    2: torch.int16,
    4: torch.int32,
    8: torch.int64,
    16: torch.complex128,
}
_MAX_PARAMS_PER_LEVEL = (2**32 - 1) // 2  # tiny-cuda-nn's cap before rounding (uint32 maths)


# --------------------------------------------------------------------------------------------
# Level layout (shared by both backends)
# --------------------------------------------------------------------------------------------


def _level_scale(level: int, base_resolution: int, per_level_scale: float) -> float:
    """``base * 2^(level * log2(s)) - 1`` in float32, the way tiny-cuda-nn evaluates it, so the
    integer resolutions (and thus the parameter layout) agree with the tcnn backend."""
    log2_scale = np.log2(np.float32(per_level_scale))
    value = np.exp2(np.float32(level) * log2_scale) * np.float32(base_resolution) - np.float32(1)
    return float(np.float32(value))


def hashgrid_level_resolutions(
    n_levels: int = 16, base_resolution: int = 16, per_level_scale: float = 1.447
) -> list[int]:
    """Grid vertices per axis of every level: ``ceil(base * s^l - 1) + 1`` (tiny-cuda-nn's formula;
    level 0 has exactly ``base_resolution`` vertices). With the defaults: 16, 24, 34, 49, 71, ..."""
    _check_int("n_levels", n_levels, minimum=1)
    _check_int("base_resolution", base_resolution, minimum=2)
    _check_scale(per_level_scale)
    return [
        int(math.ceil(_level_scale(level, base_resolution, per_level_scale))) + 1
        for level in range(n_levels)
    ]


@dataclass(frozen=True)
class _Level:
    """One level of the grid: lattice scale, vertices per axis, table rows, first row, dense?"""

    scale: float
    resolution: int
    size: int
    offset: int
    dense: bool


def _grid_layout(
    n_input_dims: int,
    n_levels: int,
    log2_hashmap_size: int,
    base_resolution: int,
    per_level_scale: float,
) -> list[_Level]:
    levels: list[_Level] = []
    offset = 0
    for level in range(n_levels):
        scale = _level_scale(level, base_resolution, per_level_scale)
        resolution = int(math.ceil(scale)) + 1
        n_vertices = resolution**n_input_dims
        size = min(n_vertices, _MAX_PARAMS_PER_LEVEL)
        size = -(-size // 8) * 8  # aligned rows, as tiny-cuda-nn allocates them
        size = min(size, 2**log2_hashmap_size)
        levels.append(_Level(scale, resolution, size, offset, dense=n_vertices <= size))
        offset += size
    return levels


# --------------------------------------------------------------------------------------------
# Torch backend
# --------------------------------------------------------------------------------------------


@dataclass
class _GroupTensors:
    """Per-level constants of a run of consecutive levels that share dense/hashed indexing,
    materialised on one device/dtype. ``Lg`` = levels in the run."""

    start: int
    stop: int
    dense: bool
    scale: Tensor  # [Lg] compute dtype
    offset: Tensor  # [Lg] int64, first table row of each level
    size: Tensor  # [Lg] int64, table rows of each level (dense modulo)
    strides: list[Tensor]  # D x [Lg] int64: res^d (dense row strides)
    hash_mask: int  # size - 1 for hashed levels (their size is always a power of two)


class _TorchHashGrid:
    """The pure-PyTorch encoder: forward and (differentiable) backward, chunked over points."""

    def __init__(self, levels: list[_Level], n_input_dims: int, n_features: int) -> None:
        self.levels = levels
        self.n_input_dims = n_input_dims
        self.n_features = n_features
        runs: list[tuple[int, int, bool]] = []
        for index, level in enumerate(levels):
            if runs and runs[-1][2] == level.dense:
                runs[-1] = (runs[-1][0], index + 1, level.dense)
            else:
                runs.append((index, index + 1, level.dense))
        self.runs = runs
        self._cache: dict[tuple[torch.device, torch.dtype], list[_GroupTensors]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def groups(self, device: torch.device, dtype: torch.dtype) -> list[_GroupTensors]:
        key = (device, dtype)
        if key not in self._cache:
            groups = []
            for start, stop, dense in self.runs:
                levels = self.levels[start:stop]

                def ints(values: list[int]) -> Tensor:
                    return torch.tensor(values, dtype=torch.int64, device=device)

                groups.append(
                    _GroupTensors(
                        start=start,
                        stop=stop,
                        dense=dense,
                        scale=torch.tensor([lv.scale for lv in levels], dtype=dtype, device=device),
                        offset=ints([lv.offset for lv in levels]),
                        size=ints([lv.size for lv in levels]),
                        strides=[
                            ints([lv.resolution**d for lv in levels])
                            for d in range(self.n_input_dims)
                        ],
                        hash_mask=levels[0].size - 1,
                    )
                )
            self._cache[key] = groups
        return self._cache[key]

    def chunk_size(self) -> int:
        return max(1, _CHUNK_ELEMENTS // len(self.levels))

    # -- geometry of one chunk and one run of levels ------------------------------------------

    def _geometry(
        self, x: Tensor, group: _GroupTensors
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor | int]]:
        """Per axis d: ``frac_d, 1 - frac_d`` ([n, Lg], interpolation weights towards the upper
        and lower vertex), the row term of the lower vertex ``base_d`` ([n, Lg] int64) and the
        increment ``step_d`` that moves it to the upper vertex."""
        fracs: list[Tensor] = []
        one_minus: list[Tensor] = []
        bases: list[Tensor] = []
        steps: list[Tensor | int] = []
        for d in range(self.n_input_dims):
            pos = x[:, d : d + 1] * group.scale + 0.5  # [n, Lg] lattice coordinate
            lower = torch.floor(pos)
            frac = pos - lower
            lower_index = lower.to(torch.int64)
            fracs.append(frac)
            one_minus.append(1.0 - frac)
            if group.dense:
                bases.append(lower_index * group.strides[d])
                steps.append(group.strides[d])
            else:
                bases.append(lower_index * HASH_PRIMES[d])
                steps.append(HASH_PRIMES[d])
        return fracs, one_minus, bases, steps

    def _corner_rows(
        self, bases: list[Tensor], steps: list[Tensor | int], bits: list[int], group: _GroupTensors
    ) -> Tensor:
        """Table rows ``[n, Lg]`` (level offsets included) of the corner selected by ``bits``."""
        rows: Tensor | None = None
        for d, bit in enumerate(bits):
            term = bases[d] + steps[d] if bit else bases[d]
            if rows is None:
                rows = term
            elif group.dense:
                rows = rows + term
            else:
                rows = torch.bitwise_xor(rows, term)
        assert rows is not None
        if group.dense:
            # Only the boundary vertices described in the module docstring ever wrap.
            rows = torch.remainder(rows, group.size)
        else:
            # size is 2^k <= 2^32, so "mod 2^32 mod size" is a mask (also for negative garbage
            # indices produced by NaN inputs: the result stays inside the table).
            rows = torch.bitwise_and(rows, group.hash_mask)
        return rows + group.offset

    def _gather(self, table: Tensor, rows: Tensor) -> Tensor:
        """``table[rows]``: ``[P, F]`` x ``[n, Lg]`` -> ``[n, Lg, F]``.

        Outside autograd, a row of F features is reinterpreted as one wider scalar (e.g. two
        float32 as one int64) so the gather moves whole rows: about 2x faster on CPU.
        """
        flat_rows = rows.reshape(-1)
        row_bytes = table.shape[1] * table.element_size()
        row_dtype = _ROW_DTYPES.get(row_bytes)
        aligned = (table.storage_offset() * table.element_size()) % row_bytes == 0
        if row_dtype is None or not aligned or torch.is_grad_enabled():
            feats = table.index_select(0, flat_rows)
        else:
            feats = table.view(row_dtype).view(-1).index_select(0, flat_rows).view(table.dtype)
        return feats.view(*rows.shape, table.shape[1])

    @staticmethod
    def _product(factors: list[Tensor]) -> Tensor:
        result = factors[0]
        for factor in factors[1:]:
            result = result * factor
        return result

    def _corners(self) -> list[list[int]]:
        return [
            [(c >> d) & 1 for d in range(self.n_input_dims)] for c in range(2**self.n_input_dims)
        ]

    # -- forward ----------------------------------------------------------------------------------

    def encode(self, x: Tensor, params: Tensor) -> Tensor:
        """``x: [N, D]`` in [0, 1] (already clamped), ``params: [P * F]`` -> ``[N, L, F]``."""
        n_points = x.shape[0]
        n_features = self.n_features
        table = params.view(-1, n_features)  # [P, F] rows
        out = torch.zeros(
            n_points, len(self.levels), n_features, dtype=params.dtype, device=x.device
        )
        groups = self.groups(x.device, params.dtype)
        corners = self._corners()
        step = self.chunk_size()
        for begin in range(0, n_points, step):
            xc = x[begin : begin + step]
            n = xc.shape[0]
            for group in groups:
                fracs, one_minus, bases, steps = self._geometry(xc, group)
                acc = out[begin : begin + n, group.start : group.stop]  # [n, Lg, F] view
                for bits in corners:
                    rows = self._corner_rows(bases, steps, bits, group)
                    weight = self._product(
                        [fracs[d] if b else one_minus[d] for d, b in enumerate(bits)]
                    )
                    acc.addcmul_(self._gather(table, rows), weight.unsqueeze(-1))
        return out

    # -- backward ---------------------------------------------------------------------------------

    def _frac_gradient(
        self,
        corner_dots: list[Tensor],
        fracs: list[Tensor],
        one_minus: list[Tensor],
        corners: list[list[int]],
    ) -> list[Tensor]:
        """``d<out, g>/d frac_d`` ([n, Lg] per axis) from the per-corner ``<feats_c, g>``.

        The d-linear weight is ``prod_k w_k``, so its derivative along axis d is the difference of
        the two corners that differ only in bit d, weighted by the other axes' factors.
        """
        n_dims = self.n_input_dims
        result: list[Tensor] = []
        for d in range(n_dims):
            total: Tensor | None = None
            for c, bits in enumerate(corners):
                if bits[d]:
                    continue
                term = corner_dots[c | (1 << d)] - corner_dots[c]
                for k in range(n_dims):
                    if k != d:
                        term = term * (fracs[k] if bits[k] else one_minus[k])
                total = term if total is None else total + term
            assert total is not None
            result.append(total)
        return result

    def backward(
        self, x: Tensor, params: Tensor, grad_out: Tensor, need_x: bool, need_params: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        """Gradients of ``<grad_out, encode(x, params)>`` w.r.t. ``x: [N, D]`` and ``params``.

        Written with differentiable torch ops on ``x``/``params``/``grad_out``, so when autograd
        records it (``create_graph=True``) second derivatives come out right.
        """
        n_features = self.n_features
        table = params.view(-1, n_features)
        grad_table = torch.zeros_like(params) if need_params else None  # [P * F]
        feature_ids = torch.arange(n_features, device=x.device)
        grad_x_chunks: list[Tensor] = []
        groups = self.groups(x.device, params.dtype)
        corners = self._corners()
        step = self.chunk_size()
        for begin in range(0, x.shape[0], step):
            xc = x[begin : begin + step]
            n = xc.shape[0]
            grad_xc: Tensor | None = None
            for group in groups:
                g = grad_out[begin : begin + n, group.start : group.stop]  # [n, Lg, F]
                fracs, one_minus, bases, steps = self._geometry(xc, group)
                corner_dots: list[Tensor] = []  # per corner <feats_c, g>, [n, Lg]
                for bits in corners:
                    rows = self._corner_rows(bases, steps, bits, group)
                    if grad_table is not None:
                        weight = self._product(
                            [fracs[d] if b else one_minus[d] for d, b in enumerate(bits)]
                        )
                        contribution = weight.unsqueeze(-1) * g  # [n, Lg, F]
                        # Scatter scalars into the flat table (faster on CPU than row scatter).
                        flat_index = rows.unsqueeze(-1) * n_features + feature_ids  # [n, Lg, F]
                        grad_table.index_add_(0, flat_index.reshape(-1), contribution.reshape(-1))
                    if need_x:
                        corner_dots.append((self._gather(table, rows) * g).sum(-1))
                if need_x:
                    grad_group = self._frac_gradient(corner_dots, fracs, one_minus, corners)
                    # frac_d = x_d * scale_l + 0.5 - floor(.), so d frac_d / d x_d = scale_l.
                    grad_group = torch.stack(
                        [(gf * group.scale).sum(1) for gf in grad_group], dim=-1
                    )  # [n, D]
                    grad_xc = grad_group if grad_xc is None else grad_xc + grad_group
            if need_x:
                assert grad_xc is not None
                grad_x_chunks.append(grad_xc)
        grad_x = None
        if need_x:
            grad_x = torch.cat(grad_x_chunks, 0) if grad_x_chunks else torch.zeros_like(x)
        return grad_x, grad_table


class _HashGridFunction(torch.autograd.Function):
    """Autograd wrapper: saves only the inputs; the backward recomputes indices and weights."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, params: Tensor, impl: _TorchHashGrid) -> Tensor:
        ctx.save_for_backward(x, params)
        ctx.impl = impl
        return impl.encode(x, params)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, params = ctx.saved_tensors
        grad_x, grad_params = ctx.impl.backward(
            x,
            params,
            grad_out,
            need_x=ctx.needs_input_grad[0],
            need_params=ctx.needs_input_grad[1],
        )
        return grad_x, grad_params, None


# --------------------------------------------------------------------------------------------
# tinycudann backend helpers
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tcnn_import_result() -> tuple[ModuleType | None, str | None]:
    """Import tinycudann once; its import raises (not only ImportError) without a usable GPU."""
    try:
        import tinycudann  # type: ignore[import-not-found]
    except Exception as error:  # noqa: BLE001 - any failure means "not usable here"
        return None, f"{type(error).__name__}: {error}"
    return tinycudann, None


def _import_tcnn() -> ModuleType:
    module, error = _tcnn_import_result()
    if module is None:
        raise ImportError(
            f"HashGridEncoding(backend='tcnn') needs tiny-cuda-nn's PyTorch bindings, which could "
            f"not be imported ({error}). Install them on a machine with CUDA and a CUDA toolkit: "
            f"`{TCNN_INSTALL_HINT}`; or use backend='torch' (or 'auto', which falls back to it)."
        )
    return module


def tcnn_available() -> bool:
    """Whether ``tinycudann`` imports in this process (it never does without CUDA)."""
    return _tcnn_import_result()[0] is not None


# --------------------------------------------------------------------------------------------
# Triton backend helpers
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _triton_import_result() -> tuple[ModuleType | None, str | None]:
    """Import the Triton kernels module (and thus ``triton``) once, on first use only, so that
    importing ra3d never needs triton."""
    try:
        module = importlib.import_module("ra3d.representations.components.hashgrid_triton")
    except Exception as error:  # noqa: BLE001 - any failure means "not usable here"
        return None, f"{type(error).__name__}: {error}"
    return module, None


def _import_triton_backend() -> ModuleType:
    module, error = _triton_import_result()
    if module is None:
        raise ImportError(
            f"HashGridEncoding: {TRITON_REQUIREMENT}; importing it failed ({error}). Use "
            "backend='torch' (or 'auto') where triton is unavailable."
        )
    return module


def triton_available() -> bool:
    """Whether the Triton backend's kernels import here (``triton`` installed). Running them still
    needs CUDA tensors (or ``TRITON_INTERPRET=1``, Triton's CPU interpreter, for testing)."""
    return _triton_import_result()[0] is not None


def _triton_runs_on(device: torch.device) -> bool:
    """Triton kernels take CUDA tensors, or CPU tensors under Triton's interpreter."""
    if device.type == "cuda":
        return True
    module = _triton_import_result()[0]
    return device.type == "cpu" and module is not None and module.interpreter_active()


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"HashGridEncoding: {name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"HashGridEncoding: {name} must be {bound}, got {value}")


def _check_scale(per_level_scale: Any) -> None:
    if (
        isinstance(per_level_scale, bool)
        or not isinstance(per_level_scale, (int, float, np.floating, np.integer))
        or not math.isfinite(float(per_level_scale))
        or float(per_level_scale) < 1.0
    ):
        raise ValueError(
            "HashGridEncoding: per_level_scale must be a finite number >= 1 (each level at least as "
            f"fine as the previous one; Instant-NGP uses ~1.26-2), got {per_level_scale!r}"
        )


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


class HashGridEncoding(nn.Module):
    """Instant-NGP multiresolution hash encoding ``[N, d]`` in [0, 1] -> ``[N, L * F]``.

    Args:
        n_input_dims: dimensionality ``d`` of the inputs (1..7 for the torch backend; tinycudann
            builds usually support 2 and 3).
        n_levels: number of resolution levels ``L``.
        n_features_per_level: features ``F`` stored per vertex (tinycudann: 1, 2, 4 or 8).
        log2_hashmap_size: log2 of the table rows per level ``T`` (1..30).
        base_resolution: vertices per axis of the coarsest level (>= 2).
        per_level_scale: growth factor ``b`` of the resolution between levels (>= 1).
        backend: ``"torch"`` (pure PyTorch), ``"tcnn"`` (tinycudann; needs CUDA, float32),
            ``"triton"`` (fused Triton kernels; needs CUDA and ``triton``; float32 or float64;
            double backward falls back to the torch backend's backward), or
            ``"auto"``: on a CUDA device, tcnn when the dtype is float32 and tinycudann imports,
            else triton when it imports, else torch; torch on the CPU. The
            choice is made at every forward from the parameters' current device (so build on
            CPU, ``.cuda()`` later, and it switches); :attr:`backend` reports it and the logger
            ``ra3d.representations.components.hashgrid`` logs each change. All backends share the same
            parameters and layout.
        dtype: parameter dtype, float32 or float64 (float64 for gradcheck; torch and triton
            backends only).
            The output has the parameters' dtype (tcnn: float32).

    The layout and exact formulas are documented in the module docstring.
    """

    def __init__(
        self,
        n_input_dims: int = 3,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447,
        backend: str = "auto",  # "auto" | "torch" | "tcnn" | "triton"
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        _check_int("n_input_dims", n_input_dims, minimum=1, maximum=len(HASH_PRIMES))
        _check_int("n_levels", n_levels, minimum=1)
        _check_int("n_features_per_level", n_features_per_level, minimum=1)
        _check_int("log2_hashmap_size", log2_hashmap_size, minimum=1, maximum=30)
        _check_int("base_resolution", base_resolution, minimum=2)
        _check_scale(per_level_scale)
        if backend not in _BACKENDS:
            raise ValueError(
                f"HashGridEncoding: unknown backend {backend!r}; choose one of {_BACKENDS} "
                "('auto' picks tinycudann on CUDA when it is installed, else pure torch)"
            )
        if dtype not in _DTYPES:
            raise ValueError(
                f"HashGridEncoding: dtype must be torch.float32 or torch.float64, got {dtype}"
            )
        if backend == "tcnn":
            if dtype != torch.float32:
                raise ValueError(
                    "HashGridEncoding: backend='tcnn' runs in float32 only; use dtype=torch.float32 "
                    "or backend='torch'"
                )
            if n_features_per_level not in _TCNN_FEATURES_PER_LEVEL:
                raise ValueError(
                    "HashGridEncoding: tinycudann supports n_features_per_level in "
                    f"{_TCNN_FEATURES_PER_LEVEL}, got {n_features_per_level}; use backend='torch'"
                )
            _import_tcnn()
        if backend == "triton":
            _import_triton_backend()
            if not (torch.cuda.is_available() or _triton_runs_on(torch.device("cpu"))):
                raise ValueError(
                    f"HashGridEncoding: {TRITON_REQUIREMENT}, but torch.cuda.is_available() is "
                    "False here; use backend='torch' (or 'auto') on this machine"
                )

        self.n_input_dims = int(n_input_dims)
        self.n_levels = int(n_levels)
        self.n_features_per_level = int(n_features_per_level)
        self.log2_hashmap_size = int(log2_hashmap_size)
        self.base_resolution = int(base_resolution)
        self.per_level_scale = float(per_level_scale)
        self.n_output_dims = self.n_levels * self.n_features_per_level
        self.requested_backend = backend

        self._levels = _grid_layout(
            self.n_input_dims,
            self.n_levels,
            self.log2_hashmap_size,
            self.base_resolution,
            self.per_level_scale,
        )
        n_rows = self._levels[-1].offset + self._levels[-1].size
        self.n_params = n_rows * self.n_features_per_level
        # Flat [rows * F] vector, rows of F features, levels one after another: tinycudann's layout.
        self.params = nn.Parameter(torch.empty(self.n_params, dtype=dtype).uniform_(-1e-4, 1e-4))

        self._impl = _TorchHashGrid(self._levels, self.n_input_dims, self.n_features_per_level)
        # The tcnn module is built lazily on its CUDA device and deliberately not registered as a
        # submodule: it reads *our* `params`, so state_dict/.to()/optimisers see one parameter.
        object.__setattr__(self, "_tcnn_module", None)
        self._tcnn_device: torch.device | None = None
        self._tcnn_failure: str | None = None
        self._logged_choice: tuple[str, str] | None = None
        # Triton kernel launcher, built on the first triton forward (it caches only the small
        # per-level tables per device); dropped when pickling.
        self._triton_impl: Any = None

    # -- introspection ------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.params.dtype

    @property
    def level_resolutions(self) -> list[int]:
        """Vertices per axis of each level."""
        return [level.resolution for level in self._levels]

    @property
    def level_scales(self) -> list[float]:
        """Lattice scale of each level (``x * scale + 0.5`` is the lattice coordinate)."""
        return [level.scale for level in self._levels]

    @property
    def level_sizes(self) -> list[int]:
        """Table rows owned by each level."""
        return [level.size for level in self._levels]

    @property
    def level_offsets(self) -> list[int]:
        """First table row of each level (row ``r`` is ``params[r * F : (r + 1) * F]``)."""
        return [level.offset for level in self._levels]

    @property
    def level_is_dense(self) -> list[bool]:
        """Whether each level is indexed densely (True) or through the spatial hash."""
        return [level.dense for level in self._levels]

    def tcnn_config(self) -> dict[str, Any]:
        """The equivalent ``tinycudann`` encoding config."""
        return {
            "otype": "HashGrid",
            "n_levels": self.n_levels,
            "n_features_per_level": self.n_features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
            "interpolation": "Linear",
        }

    @property
    def backend(self) -> str:
        """The backend a forward would use now ("torch", "tcnn" or "triton")."""
        return self._choose_backend()

    def _choose_backend(self) -> str:
        device = self.params.device
        reason = ""
        if self.requested_backend == "torch":
            choice = "torch"
        elif self.requested_backend == "tcnn":
            choice = "tcnn"
        elif self.requested_backend == "triton":
            choice = "triton"
        elif device.type != "cuda":
            choice, reason = "torch", "parameters are not on CUDA"
        else:
            tcnn_problem = self._tcnn_problem()
            if tcnn_problem is None:
                choice = "tcnn"
            elif triton_available():
                choice, reason = "triton", tcnn_problem
            else:
                choice, reason = "torch", f"{tcnn_problem}; triton unavailable"
        key = (choice, str(device))
        if key != self._logged_choice:
            self._logged_choice = key
            logger.info(
                "HashGridEncoding: %s backend on %s (requested %r)%s",
                choice,
                device,
                self.requested_backend,
                f": {reason}" if reason else "",
            )
        return choice

    def _tcnn_problem(self) -> str | None:
        """Why tinycudann cannot run this encoding on CUDA, or ``None`` when it can."""
        if self.params.dtype != torch.float32:
            return f"tinycudann needs float32, parameters are {self.params.dtype}"
        if self.n_features_per_level not in _TCNN_FEATURES_PER_LEVEL:
            return "tinycudann does not support this n_features_per_level"
        if self._tcnn_failure is not None:
            return self._tcnn_failure
        if not tcnn_available():
            return f"tinycudann unavailable ({_tcnn_import_result()[1]})"
        return None

    def extra_repr(self) -> str:
        return (
            f"n_input_dims={self.n_input_dims}, n_levels={self.n_levels}, "
            f"n_features_per_level={self.n_features_per_level}, "
            f"log2_hashmap_size={self.log2_hashmap_size}, base_resolution={self.base_resolution}, "
            f"per_level_scale={self.per_level_scale}, backend={self.requested_backend!r}, "
            f"n_params={self.n_params}"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tcnn_module"] = None  # native handles do not pickle; rebuilt on demand
        state["_tcnn_device"] = None
        state["_triton_impl"] = None  # rebuilt on demand (unpickling must not need triton)
        return state

    # -- forward ------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """``x: [..., n_input_dims]`` (clamped to [0, 1]) -> ``[..., n_output_dims]``."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(
                f"HashGridEncoding expects a floating-point tensor [N, {self.n_input_dims}], got "
                f"{type(x).__name__}{'' if not isinstance(x, Tensor) else ' of ' + str(x.dtype)}"
            )
        if x.ndim < 1 or x.shape[-1] != self.n_input_dims:
            raise ValueError(
                f"HashGridEncoding expects inputs [N, {self.n_input_dims}], got {tuple(x.shape)}"
            )
        if x.device != self.params.device:
            raise ValueError(
                f"HashGridEncoding: inputs are on {x.device} but the parameters on "
                f"{self.params.device}; move the module with .to({str(x.device)!r})"
            )
        leading = x.shape[:-1]
        points = x.reshape(-1, self.n_input_dims).to(self.params.dtype).clamp(0.0, 1.0)
        encoded = None
        # torch.func.functional_call swaps in plain tensors, which tinycudann cannot adopt.
        functional = not isinstance(self.params, nn.Parameter)
        choice = self._choose_backend()
        if choice == "tcnn" and points.shape[0] > 0 and not functional:
            encoded = self._forward_tcnn(points)
        elif choice == "triton":
            encoded = self._forward_triton(points)
        if encoded is None:
            encoded = _HashGridFunction.apply(points, self.params, self._impl)
        return encoded.reshape(*leading, self.n_output_dims)

    def _forward_tcnn(self, points: Tensor) -> Tensor | None:
        """tinycudann forward; ``None`` when backend='auto' finds tinycudann unable to build this
        config (logged once, torch is used from then on)."""
        device = self.params.device
        if device.type != "cuda":
            raise ValueError(
                f"HashGridEncoding(backend='tcnn') runs on CUDA only, but the module is on {device}: "
                "call .cuda() on it (and its inputs), or use backend='torch' / 'auto'"
            )
        module = self._tcnn_module
        if module is None or self._tcnn_device != device:
            module = self._build_tcnn(device)
            if module is None:
                return None
        if module.params is not self.params:
            module.params = self.params
        return module(points.contiguous()).float()

    def _forward_triton(self, points: Tensor) -> Tensor:
        """Triton forward ``[N, L, F]``; the backward uses Triton too, except when it must be
        differentiable (then the torch backend's backward, see the module docstring)."""
        device = self.params.device
        if not _triton_runs_on(device):
            raise ValueError(
                f"HashGridEncoding(backend='triton') runs on CUDA only, but the module is on "
                f"{device}: call .cuda() on it (and its inputs), or use backend='torch' / 'auto'"
            )
        module = _import_triton_backend()
        if self._triton_impl is None:
            self._triton_impl = module.TritonHashGrid(
                self._levels, self.n_input_dims, self.n_features_per_level, HASH_PRIMES
            )
        return module.TritonHashGridFunction.apply(
            points.contiguous(), self.params, self._triton_impl, self._impl
        )

    def _build_tcnn(self, device: torch.device) -> nn.Module | None:
        tcnn = _import_tcnn()
        try:
            with torch.cuda.device(device):
                module = tcnn.Encoding(
                    n_input_dims=self.n_input_dims,
                    encoding_config=self.tcnn_config(),
                    dtype=torch.float32,
                )
            if module.params.numel() != self.n_params:
                raise RuntimeError(
                    f"it holds {module.params.numel()} parameters but ra3d's tcnn-compatible "
                    f"layout has {self.n_params} (a tinycudann version with another grid layout)"
                )
        except (RuntimeError, TypeError) as error:  # TypeError: bindings without `dtype`
            message = f"tinycudann cannot run HashGrid config {self.tcnn_config()}: {error}"
            if self.requested_backend == "auto":
                self._tcnn_failure = message
                logger.warning("HashGridEncoding: %s; falling back to the torch backend", message)
                return None
            raise ValueError(f"{message}. Use backend='torch' for this configuration") from error
        module.params = self.params  # share our parameter: one layout, one optimiser state
        object.__setattr__(self, "_tcnn_module", module)
        self._tcnn_device = device
        return module


__all__ = [
    "HASH_PRIMES",
    "TCNN_INSTALL_HINT",
    "TRITON_REQUIREMENT",
    "HashGridEncoding",
    "hashgrid_level_resolutions",
    "tcnn_available",
    "triton_available",
]
