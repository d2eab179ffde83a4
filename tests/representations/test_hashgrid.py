"""Tests for the Instant-NGP hash encoding (ra3d.representations.components.hashgrid).

Every check compares against something computed independently: a dense trilinear lookup through
``torch.nn.functional.grid_sample``, a naive per-point Python implementation of the documented
formulas, hand-computed hash indices and wrap-around rows, finite differences (gradcheck), and,
where a GPU with tinycudann exists, tinycudann itself.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ra3d.representations.components import hashgrid as hg
from ra3d.representations.components.hashgrid import (
    TCNN_INSTALL_HINT,
    TRITON_REQUIREMENT,
    HashGridEncoding,
    hashgrid_level_resolutions,
    tcnn_available,
)

# The test's own copy of Instant-NGP's hash primes (not imported from the module under test).
PRIMES = (1, 2654435761, 805459861)

# levels: scale 3 (dense 4^3 = 64 rows), 7 and 15 (hashed into 64 rows)
TINY = dict(n_levels=3, base_resolution=4, per_level_scale=2.0, log2_hashmap_size=6)
# levels: scale 2 (dense, 27 vertices in 32 rows), 5 and 11 (hashed into 32 rows); for gradchecks
SMALL = dict(n_levels=3, base_resolution=3, per_level_scale=2.0, log2_hashmap_size=5)
# levels: scales 3, 5, 8, 12.5 (dense: 4, 6, 9, 14 vertices per axis), 19.25 (hashed)
DENSE = dict(n_levels=5, base_resolution=4, per_level_scale=1.5, log2_hashmap_size=12)


def make(config: dict, dtype: torch.dtype = torch.float64, amplitude: float = 1.0, seed: int = 0):
    """An encoder on CPU with parameters large enough for differences to show."""
    torch.manual_seed(seed)
    enc = HashGridEncoding(**config, backend="torch", dtype=dtype)
    with torch.no_grad():
        enc.params.uniform_(-amplitude, amplitude)
    return enc


def naive_encode(enc: HashGridEncoding, point: list[float]) -> list[float]:
    """Per-point, per-level, per-corner Python re-implementation of the documented formulas."""
    n_features = enc.n_features_per_level
    rows = enc.params.detach().double().view(-1, n_features).tolist()
    dims = len(point)
    table_size = 2**enc.log2_hashmap_size
    out: list[float] = []
    offset = 0
    for level in range(enc.n_levels):
        scale = enc.level_scales[level]  # float32-rounded, as tinycudann computes it
        assert scale == pytest.approx(
            enc.base_resolution * enc.per_level_scale**level - 1, rel=1e-6
        )
        res = math.ceil(scale) + 1
        size = min(math.ceil(res**dims / 8) * 8, table_size)
        dense = res**dims <= size
        pos = [min(max(c, 0.0), 1.0) * scale + 0.5 for c in point]
        low = [math.floor(p) for p in pos]
        frac = [p - lo for p, lo in zip(pos, low, strict=True)]
        acc = [0.0] * n_features
        for corner in itertools.product((0, 1), repeat=dims):
            vertex = [lo + c for lo, c in zip(low, corner, strict=True)]
            if dense:
                index = sum(v * res**d for d, v in enumerate(vertex)) % size
            else:
                h = 0
                for d, v in enumerate(vertex):
                    h ^= (v * PRIMES[d]) & 0xFFFFFFFF
                index = h % size
            weight = math.prod(f if c else 1 - f for f, c in zip(frac, corner, strict=True))
            for k in range(n_features):
                acc[k] += weight * rows[offset + index][k]
        out.extend(acc)
        offset += size
    return out


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------


def test_level_resolutions_follow_instant_ngp_formula() -> None:
    # hand-computed: ceil(16 * 1.447^l - 1) + 1
    assert hashgrid_level_resolutions(16, 16, 1.447)[:6] == [16, 24, 34, 49, 71, 102]
    assert hashgrid_level_resolutions(16, 16, 1.447)[-1] == 4085
    expected = [math.ceil(16 * 1.447**level - 1) + 1 for level in range(16)]
    assert hashgrid_level_resolutions() == expected
    assert hashgrid_level_resolutions(4, 16, 2.0) == [16, 32, 64, 128]


def test_default_layout_dense_then_hashed() -> None:
    enc = HashGridEncoding()
    res = enc.level_resolutions
    table = 2**19
    assert enc.level_is_dense == [r**3 <= table for r in res]
    assert enc.level_is_dense[:5] == [True] * 5 and not any(enc.level_is_dense[5:])
    assert enc.level_sizes == [min(math.ceil(r**3 / 8) * 8, table) for r in res]
    assert enc.level_offsets == [sum(enc.level_sizes[:i]) for i in range(16)]
    assert enc.n_params == 12_599_920 == enc.params.numel() == sum(enc.level_sizes) * 2
    assert enc.n_output_dims == 32
    assert list(enc.state_dict()) == ["params"]
    assert enc.tcnn_config() == {
        "otype": "HashGrid",
        "n_levels": 16,
        "n_features_per_level": 2,
        "log2_hashmap_size": 19,
        "base_resolution": 16,
        "per_level_scale": 1.447,
        "interpolation": "Linear",
    }


def test_init_is_uniform_1e4_and_shapes_dtypes() -> None:
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=8)
    p = enc.params.detach()
    assert p.dtype == torch.float32 and p.abs().max() <= 1e-4
    assert abs(p.mean().item()) < 1e-6
    assert p.std().item() == pytest.approx(1e-4 / math.sqrt(3), rel=0.01)  # U(-a, a): a/sqrt(3)
    assert enc.backend == "torch"  # auto on CPU
    assert enc(torch.rand(5, 3)).shape == (5, 16)
    assert enc(torch.rand(5, 3)).dtype == torch.float32
    assert enc(torch.rand(2, 4, 3)).shape == (2, 4, 16)
    assert enc(torch.rand(0, 3)).shape == (0, 16)
    enc64 = HashGridEncoding(**TINY, dtype=torch.float64)
    assert enc64(torch.rand(3, 3)).dtype == torch.float64
    assert enc64.dtype == torch.float64
    enc2d = HashGridEncoding(n_input_dims=2, n_levels=4, n_features_per_level=4)
    assert enc2d(torch.rand(6, 2)).shape == (6, 16)


# ----------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------


def test_dense_levels_equal_grid_sample_trilinear_lookup() -> None:
    enc = make(DENSE)
    assert enc.level_is_dense == [True, True, True, True, False]
    n_features = enc.n_features_per_level
    rows = enc.params.detach().view(-1, n_features)
    torch.manual_seed(1)
    for level in range(4):
        res, scale = enc.level_resolutions[level], enc.level_scales[level]
        # Stay off the upper boundary slab where tinycudann's layout wraps (tested separately).
        x_max = (res - 1.5) / scale
        x = torch.rand(300, 3, dtype=torch.float64) * x_max
        ours = enc(x)[:, level * n_features : (level + 1) * n_features]

        offset = enc.level_offsets[level]
        block = rows[offset : offset + res**3]  # vertex (i, j, k) at i + j*res + k*res^2
        volume = block.reshape(res, res, res, n_features).permute(3, 0, 1, 2)[None]  # [1,F,z,y,x]
        lattice = x * scale + 0.5  # in [0.5, res - 1]
        grid = (lattice / (res - 1) * 2 - 1).view(1, -1, 1, 1, 3)  # (x, y, z) -> (W, H, D)
        ref = F.grid_sample(volume, grid, mode="bilinear", align_corners=True)
        ref = ref.view(n_features, -1).t()
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_dense_level_wraps_at_upper_boundary_like_tinycudann() -> None:
    enc = make(TINY)
    rows = enc.params.detach().view(-1, 2)
    # Level 0: scale 3, 4 vertices per axis, 64 rows. x = 1 sits at lattice 3.5, so it blends the
    # vertices 3 and 4 on each axis; row (i + 4j + 16k) mod 64, by hand:
    # (3,3,3)=63 (4,3,3)=0 (3,4,3)=3 (4,4,3)=4 (3,3,4)=15 (4,3,4)=16 (3,4,4)=19 (4,4,4)=20
    expected = rows[[63, 0, 3, 4, 15, 16, 19, 20]].mean(0)
    out = enc(torch.ones(1, 3, dtype=torch.float64))[0, :2]
    torch.testing.assert_close(out, expected)


def test_hashed_vertex_index_matches_hand_computed_hash() -> None:
    # Two hashed levels of 2^19 rows (128^3 and 256^3 vertices exceed the table).
    enc = HashGridEncoding(
        n_levels=2, base_resolution=128, per_level_scale=2.0, backend="torch", dtype=torch.float64
    )
    assert enc.level_is_dense == [False, False] and enc.level_sizes == [2**19, 2**19]
    with torch.no_grad():  # row r stores (r, -r): the output at a vertex spells its row
        r = torch.arange(enc.n_params // 2, dtype=torch.float64)
        enc.params.copy_(torch.stack([r, -r], 1).view(-1))

    def row_at(vertex: tuple[int, int, int], level: int) -> int:
        x = (torch.tensor(vertex, dtype=torch.float64) - 0.5) / enc.level_scales[level]
        out = enc(x[None])[0, 2 * level : 2 * level + 2]
        assert out[0].item() == pytest.approx(-out[1].item())
        return round(out[0].item()) - enc.level_offsets[level]

    # (3*1 ^ 5*2654435761 ^ 7*805459861) mod 2^32 = 1191511397; mod 2^19 = 329061 (computed by
    # hand with Python ints and cross-checked with numpy uint32 arithmetic).
    assert row_at((3, 5, 7), 0) == 329061
    rng = np.random.default_rng(0)
    for level in (0, 1):
        for _ in range(10):
            vertex = tuple(int(v) for v in rng.integers(1, enc.level_resolutions[level] - 1, 3))
            h = (vertex[0] * PRIMES[0]) ^ (vertex[1] * PRIMES[1]) ^ (vertex[2] * PRIMES[2])
            assert row_at(vertex, level) == (h % 2**32) % 2**19
    # deterministic: a fresh module with the same parameters gives identical outputs
    x = torch.rand(50, 3, dtype=torch.float64)
    twin = copy.deepcopy(enc)
    assert torch.equal(enc(x), twin(x))


@pytest.mark.parametrize("config", [TINY, DENSE])
def test_matches_naive_reference_on_all_levels(config: dict) -> None:
    enc = make(config)
    torch.manual_seed(2)
    x = torch.rand(12, 3, dtype=torch.float64)
    x[0] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)  # faces of the cube included
    ours = enc(x)
    ref = torch.tensor([naive_encode(enc, p) for p in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_float32_matches_float64() -> None:
    enc64 = make(DENSE)
    enc32 = HashGridEncoding(**DENSE, backend="torch")
    with torch.no_grad():
        enc32.params.copy_(enc64.params)
    x = torch.rand(200, 3, dtype=torch.float64)
    torch.testing.assert_close(enc32(x.float()).double(), enc64(x), rtol=0, atol=2e-5)


def test_inputs_outside_unit_cube_are_clamped() -> None:
    enc = make(TINY)
    x = torch.tensor([[-0.5, 0.3, 1.7], [2.0, -3.0, 0.25]], dtype=torch.float64, requires_grad=True)
    out = enc(x)
    torch.testing.assert_close(out, enc(x.detach().clamp(0, 1)))
    out.sum().backward()
    assert x.grad is not None
    assert (x.grad[0, [0, 2]] == 0).all() and (x.grad[1, [0, 1]] == 0).all()
    assert x.grad[0, 1] != 0 and x.grad[1, 2] != 0


def test_nan_input_gives_nan_without_indexing_out_of_bounds() -> None:
    enc = make(TINY)
    out = enc(torch.tensor([[float("nan"), 0.5, 0.5]], dtype=torch.float64))
    assert out.isnan().any()


def test_chunking_does_not_change_values_or_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = make(TINY)
    x = torch.rand(37, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(37, enc.n_output_dims, dtype=torch.float64)

    def run() -> tuple[torch.Tensor, ...]:
        enc.zero_grad(set_to_none=True)
        x.grad = None
        out = enc(x)
        (out * weights).sum().backward()
        return out.detach(), x.grad.clone(), enc.params.grad.clone()

    whole = run()
    monkeypatch.setattr(hg, "_CHUNK_ELEMENTS", 7)  # 2 points per chunk
    chunked = run()
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------


def _as_function(enc: HashGridEncoding):
    return lambda x, params: functional_call(enc, {"params": params}, (x,))


@pytest.mark.parametrize("n_features", [1, 2])
def test_gradcheck_params_and_inputs(n_features: int) -> None:
    enc = make({**SMALL, "n_features_per_level": n_features})
    assert enc.level_is_dense == [True, False, False]
    torch.manual_seed(3)
    x = (0.05 + 0.9 * torch.rand(6, 3, dtype=torch.float64)).requires_grad_()
    params = enc.params.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(_as_function(enc), (x, params), eps=1e-6, atol=1e-6)


def test_gradgradcheck_double_backward() -> None:
    enc = make({**SMALL, "n_levels": 2, "n_features_per_level": 1})
    assert enc.level_is_dense == [True, False]
    torch.manual_seed(4)
    x = (0.05 + 0.9 * torch.rand(3, 3, dtype=torch.float64)).requires_grad_()
    params = enc.params.detach().clone().requires_grad_()
    assert torch.autograd.gradgradcheck(_as_function(enc), (x, params), eps=1e-6, atol=1e-5)


def test_gradcheck_1d_and_2d_inputs() -> None:
    for dims in (1, 2):
        enc = make({**SMALL, "n_input_dims": dims})
        x = (0.05 + 0.9 * torch.rand(5, dims, dtype=torch.float64)).requires_grad_()
        params = enc.params.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(_as_function(enc), (x, params), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Arguments and backends
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_input_dims": 0}, "n_input_dims"),
        ({"n_input_dims": 8}, "n_input_dims"),
        ({"n_input_dims": 3.0}, "n_input_dims must be an int"),
        ({"n_levels": 0}, "n_levels"),
        ({"n_features_per_level": -1}, "n_features_per_level"),
        ({"log2_hashmap_size": 0}, "log2_hashmap_size"),
        ({"log2_hashmap_size": 31}, "log2_hashmap_size"),
        ({"base_resolution": 1}, "base_resolution"),
        ({"per_level_scale": 0.5}, "per_level_scale"),
        ({"per_level_scale": float("nan")}, "per_level_scale"),
        ({"backend": "cuda"}, "unknown backend"),
        ({"dtype": torch.float16}, "dtype"),
        ({"backend": "tcnn", "dtype": torch.float64}, "float32"),
        ({"backend": "tcnn", "n_features_per_level": 3}, "n_features_per_level"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HashGridEncoding(**kwargs)


def test_bad_inputs_raise_value_error() -> None:
    enc = HashGridEncoding(**TINY)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        enc(torch.rand(4, 2))
    with pytest.raises(ValueError, match="floating-point"):
        enc(torch.zeros(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="move the module"):
        enc(torch.rand(4, 3, device="meta"))


@pytest.fixture
def no_tinycudann(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "tinycudann", None)  # makes `import tinycudann` fail
    hg._tcnn_import_result.cache_clear()
    yield
    hg._tcnn_import_result.cache_clear()


def test_tcnn_backend_without_tinycudann_names_the_install_command(no_tinycudann: None) -> None:
    assert not hg.tcnn_available()
    with pytest.raises(ImportError) as info:
        HashGridEncoding(backend="tcnn")
    assert TCNN_INSTALL_HINT in str(info.value)
    assert TCNN_INSTALL_HINT == (
        "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"
    )
    assert HashGridEncoding(**TINY).backend == "torch"  # auto falls back


def test_tcnn_backend_refuses_cpu_tensors_and_auto_stays_torch_on_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = types.ModuleType("tinycudann")  # importable stand-in: the device guard fires first
    monkeypatch.setitem(sys.modules, "tinycudann", fake)
    hg._tcnn_import_result.cache_clear()
    try:
        assert hg.tcnn_available()
        enc = HashGridEncoding(**TINY, backend="tcnn")
        assert enc.backend == "tcnn"
        with pytest.raises(ValueError, match="CUDA only"):
            enc(torch.rand(4, 3))
        assert HashGridEncoding(**TINY).backend == "torch"  # auto: parameters are on CPU
    finally:
        hg._tcnn_import_result.cache_clear()


def test_auto_logs_its_choice(caplog: pytest.LogCaptureFixture) -> None:
    enc = HashGridEncoding(**TINY)
    with caplog.at_level("INFO", logger="ra3d.representations.components.hashgrid"):
        enc(torch.rand(3, 3))
    assert any("torch backend on cpu" in r.getMessage() for r in caplog.records)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_cuda
def test_torch_backend_on_cuda_matches_cpu() -> None:
    enc = make({"n_levels": 8}, dtype=torch.float32)
    x = torch.rand(4096, 3)
    ref = enc(x)
    enc_cuda = copy.deepcopy(enc).cuda()
    enc_cuda.requested_backend = "torch"
    torch.testing.assert_close(enc_cuda(x.cuda()).cpu(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(
    not (torch.cuda.is_available() and hg.tcnn_available()), reason="needs CUDA and tinycudann"
)
def test_tcnn_and_torch_backends_agree() -> None:
    torch.manual_seed(0)
    enc_tcnn = HashGridEncoding(backend="tcnn").cuda()
    with torch.no_grad():
        enc_tcnn.params.uniform_(-1, 1)
    enc_torch = HashGridEncoding(backend="torch").cuda()
    enc_torch.load_state_dict(enc_tcnn.state_dict())
    auto = HashGridEncoding().cuda()
    assert enc_tcnn.backend == "tcnn" and auto.backend == "tcnn"

    x = torch.rand(20000, 3, device="cuda")
    weights = torch.randn(20000, 32, device="cuda")
    results = []
    for enc in (enc_tcnn, enc_torch):
        xi = x.clone().requires_grad_()
        out = enc(xi)
        (out * weights).sum().backward()
        results.append((out.detach(), enc.params.grad.clone(), xi.grad.clone()))
    (out_t, gp_t, gx_t), (out_p, gp_p, gx_p) = results
    assert out_t.dtype == torch.float32
    # Float32 rounding of the level scales (and tcnn's fused multiply-add) moves lattice positions
    # by up to ~5e-4 cells at the finest level; the encoding is continuous, so values and table
    # gradients agree to that order everywhere.
    diff = (out_t - out_p).abs()
    assert diff.max() < 5e-3 and diff.mean() < 2e-4
    assert (gp_t - gp_p).norm() <= 5e-3 * gp_p.norm()
    # Input gradients jump across cell boundaries, so a few points sitting within rounding of a
    # boundary may legitimately differ; all others must agree.
    rel = (gx_t - gx_p).norm(dim=1) / gx_p.norm(dim=1)
    assert (rel < 1e-2).float().mean() > 0.99


# ----------------------------------------------------------------------------------------------
# Triton backend
# ----------------------------------------------------------------------------------------------
# With CUDA and triton these tests run the compiled kernels against the torch backend. Without a
# GPU they can run the same kernels in Triton's numpy interpreter (slow, needs triton; opt-in):
#     RA3D_TEST_TRITON_INTERPRET=1 python -m pytest -q tests/test_hashgrid.py -k triton
# Triton decides between compiled and interpreted kernels when hashgrid_triton is imported, so
# the switch is set here, at collection, before anything imports it (ra3d imports it lazily).
TRITON_INTERPRET_OPT_IN = os.environ.get("RA3D_TEST_TRITON_INTERPRET") == "1"
if TRITON_INTERPRET_OPT_IN:
    os.environ["TRITON_INTERPRET"] = "1"

needs_triton_runtime = pytest.mark.skipif(
    not (torch.cuda.is_available() or TRITON_INTERPRET_OPT_IN),
    reason="needs CUDA + triton (or RA3D_TEST_TRITON_INTERPRET=1 for Triton's CPU interpreter)",
)

# 16 levels as in the NeRF config, with a small table so that most levels are hashed.
MANY_LEVELS = dict(n_levels=16, base_resolution=16, per_level_scale=1.447, log2_hashmap_size=14)
TRITON_CONFIGS = {
    "tiny": TINY,  # dense level with integer scale (boundary wrap) + 2 hashed levels
    "dense": DENSE,  # 4 dense levels (fractional scales) + 1 hashed
    "f1": {**SMALL, "n_features_per_level": 1},
    "f3": {**TINY, "n_features_per_level": 3},  # F not a power of two: padded feature lanes
    "2d_f4": {**SMALL, "n_input_dims": 2, "n_features_per_level": 4},
    "1d": {**SMALL, "n_input_dims": 1},
    "many_levels": MANY_LEVELS,
}


@pytest.fixture
def triton_device() -> str:
    """ "cuda" (compiled kernels) or "cpu" (interpreter, when opted in); skips otherwise."""
    if not hg.triton_available():
        pytest.skip(f"triton not importable: {hg._triton_import_result()[1]}")
    from ra3d.representations.components import hashgrid_triton

    if hashgrid_triton.interpreter_active():
        return "cpu"
    if TRITON_INTERPRET_OPT_IN:
        pytest.fail("RA3D_TEST_TRITON_INTERPRET=1 but hashgrid_triton was imported uninterpreted")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return "cuda"


def triton_pair(
    config: dict, device: str, dtype: torch.dtype, seed: int = 0
) -> tuple[HashGridEncoding, HashGridEncoding]:
    """(torch backend, triton backend) encoders on ``device`` with identical parameters."""
    ref = make(config, dtype=dtype, seed=seed).to(device)
    tri = HashGridEncoding(**config, backend="triton", dtype=dtype).to(device)
    tri.load_state_dict(ref.state_dict())
    assert ref.backend == "torch" and tri.backend == "triton"
    return ref, tri


def boundary_points(enc: HashGridEncoding, n_random: int, dtype: torch.dtype, seed: int = 0):
    """Random points plus the hard cases: every cube corner (0/1 coordinates), coordinates just
    below 1, points in the dense levels' wrap slab near the upper faces, and points exactly on
    lattice planes of every level (``x * scale + 0.5`` integral: frac = 0)."""
    dims = enc.n_input_dims
    gen = torch.Generator().manual_seed(seed)
    parts = [torch.rand(n_random, dims, generator=gen, dtype=dtype)]
    parts.append(torch.tensor(list(itertools.product((0.0, 1.0), repeat=dims)), dtype=dtype))
    near_one = torch.tensor([1 - 2**-24, 1 - 2**-20, 1 - 1e-3], dtype=dtype)
    parts.append(near_one[torch.randint(0, 3, (12, dims), generator=gen)])
    parts.append(0.9 + 0.1 * torch.rand(16, dims, generator=gen, dtype=dtype))  # wrap slabs
    for scale in enc.level_scales:
        k = torch.randint(1, max(2, int(scale)), (2, dims), generator=gen).to(dtype)
        parts.append(((k - 0.5) / torch.tensor(scale, dtype=dtype)).clamp(0, 1))
    return torch.cat(parts)


def _tolerances(dtype: torch.dtype) -> dict:
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


@needs_triton_runtime
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(TRITON_CONFIGS))
def test_triton_forward_matches_torch_backend(
    triton_device: str, name: str, dtype: torch.dtype
) -> None:
    ref, tri = triton_pair(TRITON_CONFIGS[name], triton_device, dtype)
    x = boundary_points(ref, 200, dtype).to(triton_device)
    out = tri(x)
    assert out.shape == (x.shape[0], ref.n_output_dims) and out.dtype == dtype
    torch.testing.assert_close(out, ref(x), **_tolerances(dtype))


@needs_triton_runtime
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(TRITON_CONFIGS))
def test_triton_gradients_match_torch_backend(
    triton_device: str, name: str, dtype: torch.dtype
) -> None:
    ref, tri = triton_pair(TRITON_CONFIGS[name], triton_device, dtype)
    x = boundary_points(ref, 200, dtype).to(triton_device)
    torch.manual_seed(7)
    weights = torch.randn(x.shape[0], ref.n_output_dims, dtype=dtype).to(triton_device)
    grads = []
    for enc in (ref, tri):
        xi = x.clone().requires_grad_()
        (enc(xi) * weights).sum().backward()
        grads.append((enc.params.grad, xi.grad))
    (gp_ref, gx_ref), (gp_tri, gx_tri) = grads
    # Atomic adds reorder the sums of the table gradient (and of the input gradient over levels).
    if dtype == torch.float64:
        torch.testing.assert_close(gp_tri, gp_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(gx_tri, gx_ref, rtol=1e-9, atol=1e-9)
    else:
        torch.testing.assert_close(gp_tri, gp_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gx_tri, gx_ref, rtol=1e-4, atol=1e-4 * gx_ref.abs().max().item())
    assert gp_ref.abs().max() > 0 and gx_ref.abs().max() > 0  # the comparison is not vacuous


@needs_triton_runtime
@pytest.mark.cuda
def test_triton_partial_gradients(triton_device: str) -> None:
    """Only the table or only the inputs need gradients: each kernel variant alone."""
    ref, tri = triton_pair(TINY, triton_device, torch.float64)
    x = boundary_points(ref, 100, torch.float64, seed=1).to(triton_device)
    weights = torch.randn(x.shape[0], ref.n_output_dims, dtype=torch.float64).to(x.device)
    for enc in (ref, tri):
        enc.params.grad = None
        (enc(x) * weights).sum().backward()  # x does not require grad
    torch.testing.assert_close(tri.params.grad, ref.params.grad, rtol=1e-10, atol=1e-10)
    input_grads = []
    for enc in (ref, tri):
        enc.params.requires_grad_(False)
        xi = x.clone().requires_grad_()
        (enc(xi) * weights).sum().backward()
        input_grads.append(xi.grad)
    torch.testing.assert_close(input_grads[1], input_grads[0], rtol=1e-9, atol=1e-9)


@needs_triton_runtime
@pytest.mark.cuda
def test_triton_gradcheck_against_finite_differences(triton_device: str) -> None:
    enc = make({**SMALL, "n_features_per_level": 2}).to(triton_device)
    tri = HashGridEncoding(**SMALL, backend="triton", dtype=torch.float64).to(triton_device)
    tri.load_state_dict(enc.state_dict())
    torch.manual_seed(3)
    x = (0.05 + 0.9 * torch.rand(6, 3, dtype=torch.float64)).to(triton_device).requires_grad_()
    params = tri.params.detach().clone().requires_grad_()
    fast = triton_device == "cpu"  # the interpreter is slow: random projections of the Jacobian
    assert torch.autograd.gradcheck(
        _as_function(tri), (x, params), eps=1e-6, atol=1e-6, fast_mode=fast
    )


@needs_triton_runtime
@pytest.mark.cuda
def test_triton_double_backward_uses_torch_backward(
    triton_device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create_graph=True (analytic normals) runs the torch backend's differentiable backward;
    a plain backward runs the Triton kernel. Second derivatives equal the torch backend's."""
    from ra3d.representations.components import hashgrid_triton

    calls = []
    original = hashgrid_triton.TritonHashGrid.backward

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(hashgrid_triton.TritonHashGrid, "backward", spy)
    ref, tri = triton_pair(SMALL, triton_device, torch.float64)
    torch.manual_seed(5)
    x = (0.05 + 0.9 * torch.rand(40, 3, dtype=torch.float64)).to(triton_device)
    weights = torch.randn(40, ref.n_output_dims, dtype=torch.float64).to(x.device)
    probe = torch.randn(40, 3, dtype=torch.float64).to(x.device)
    results = []
    for enc in (ref, tri):
        xi = x.clone().requires_grad_()
        (normal,) = torch.autograd.grad((enc(xi) * weights).sum(), xi, create_graph=True)
        ((normal * probe).sum() + normal.square().sum()).backward()
        results.append((normal.detach(), enc.params.grad, xi.grad))
    assert calls == []  # both the create_graph backward and the second-order pass avoided Triton
    for a, b in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    xi = x.clone().requires_grad_()
    (tri(xi) * weights).sum().backward()
    assert calls == [1]


@needs_triton_runtime
@pytest.mark.cuda
def test_triton_hashed_row_matches_hand_computed_hash(triton_device: str) -> None:
    enc = HashGridEncoding(
        n_levels=2, base_resolution=128, per_level_scale=2.0, backend="triton", dtype=torch.float64
    ).to(triton_device)
    assert enc.level_is_dense == [False, False]
    with torch.no_grad():  # row r stores (r, -r)
        r = torch.arange(enc.n_params // 2, dtype=torch.float64, device=triton_device)
        enc.params.copy_(torch.stack([r, -r], 1).view(-1))

    def row_at(vertex: tuple[int, int, int], level: int) -> int:
        x = (torch.tensor(vertex, dtype=torch.float64) - 0.5) / enc.level_scales[level]
        out = enc(x[None].to(triton_device))[0, 2 * level : 2 * level + 2].cpu()
        assert out[0].item() == pytest.approx(-out[1].item())
        return round(out[0].item()) - enc.level_offsets[level]

    assert row_at((3, 5, 7), 0) == 329061  # hand-computed, see the torch-backend test
    # prime products beyond 2^32 (coordinates > 1) exercise the uint32 wrap-around
    vertex = (250, 251, 249)
    h = (vertex[0] * PRIMES[0]) ^ (vertex[1] * PRIMES[1]) ^ (vertex[2] * PRIMES[2])
    assert row_at(vertex, 1) == (h % 2**32) % 2**19


@needs_triton_runtime
@pytest.mark.cuda
def test_triton_nan_input_gives_nan_and_leaves_other_points_alone(triton_device: str) -> None:
    ref, tri = triton_pair(TINY, triton_device, torch.float32)
    x = torch.rand(5, 3).to(triton_device)
    x[2, 1] = float("nan")
    out = tri(x)
    assert out[2].isnan().all()
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(out[keep], ref(x)[keep], rtol=1e-5, atol=1e-5)


@needs_triton_runtime
@pytest.mark.cuda
def test_triton_backend_module_behaviour(
    triton_device: str, caplog: pytest.LogCaptureFixture
) -> None:
    ref, tri = triton_pair(TINY, triton_device, torch.float32)
    tri._logged_choice = None  # triton_pair already asked for .backend, which logged
    with caplog.at_level("INFO", logger="ra3d.representations.components.hashgrid"):
        x = torch.rand(2, 4, 3).to(triton_device)
        out = tri(x)
    message = f"triton backend on {triton_device}"
    assert any(message in r.getMessage() for r in caplog.records)
    assert out.shape == (2, 4, ref.n_output_dims)
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    assert tri(torch.rand(0, 3).to(triton_device)).shape == (0, ref.n_output_dims)
    twin = copy.deepcopy(tri)  # the kernel launcher is dropped and rebuilt
    assert twin._triton_impl is None and twin.backend == "triton"
    torch.testing.assert_close(twin(x), out, rtol=0, atol=0)
    launcher = tri._triton_impl  # direct misuse of the launcher names the problem
    params = tri.params.detach()
    with pytest.raises(ValueError, match="share dtype"):
        launcher.forward(x.reshape(-1, 3).double(), params)
    with pytest.raises(ValueError, match=r"points \[N, 3\]"):
        launcher.forward(x.reshape(-1, 3)[:, :2], params)
    with pytest.raises(ValueError, match="grad_out must be"):
        launcher.backward(x.reshape(-1, 3), params, torch.zeros_like(out), True, True)
    if triton_device == "cuda":  # "auto" on CUDA: tcnn when it is installed, else triton
        assert HashGridEncoding(**TINY).cuda().backend == ("tcnn" if tcnn_available() else "triton")


# -- without triton / without CUDA (CPU-runnable, no triton needed) ---------------------------


def test_triton_backend_without_triton_names_the_requirement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    monkeypatch.setitem(sys.modules, "ra3d.representations.components.hashgrid_triton", None)
    hg._triton_import_result.cache_clear()
    try:
        assert not hg.triton_available()
        with pytest.raises(ImportError) as info:
            HashGridEncoding(**TINY, backend="triton")
        assert TRITON_REQUIREMENT in str(info.value) and "backend='torch'" in str(info.value)
        assert "`triton` package" in TRITON_REQUIREMENT and "CUDA GPU" in TRITON_REQUIREMENT
        assert HashGridEncoding(**TINY).backend == "torch"  # auto is unaffected
    finally:
        hg._triton_import_result.cache_clear()


def test_triton_backend_without_cuda_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(interpreter_active=lambda: False)  # importable, not interpreting
    monkeypatch.setattr(hg, "_triton_import_result", lambda: (fake, None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"CUDA GPU.*torch\.cuda\.is_available\(\) is False"):
        HashGridEncoding(**TINY, backend="triton")
    # Built where CUDA exists but left on the CPU: the forward names the fix.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    enc = HashGridEncoding(**TINY, backend="triton")
    assert enc.backend == "triton"
    with pytest.raises(ValueError, match=r"runs on CUDA only.*\.cuda\(\)"):
        enc(torch.rand(4, 3))


def test_importing_and_using_ra3d_hashgrid_does_not_import_triton_backend() -> None:
    code = (
        "import sys, torch\n"
        "from ra3d.representations.components.hashgrid import HashGridEncoding\n"
        "HashGridEncoding(n_levels=2, log2_hashmap_size=8)(torch.rand(3, 3))\n"
        "assert 'ra3d.representations.components.hashgrid_triton' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
