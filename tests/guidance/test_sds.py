"""SDS guidance: gradients against independent UNet calls, CFG, w(t), annealing, delta (Eq. 13)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from ra3d.cameras import Cameras, make_cameras, view_direction, view_prompt
from ra3d.errors import ConfigError
from ra3d.guidance.prior import DiffusionPrior
from ra3d.guidance.sds import (
    SDSGuidance,
    TimestepRange,
    classifier_free_guidance,
    clean_grad,
    guided_noise_prediction,
    sample_noise,
)

PROMPT = "a wooden chair"


@pytest.fixture(scope="module")
def prior(tiny_prior_path: Path) -> DiffusionPrior:
    return DiffusionPrior(str(tiny_prior_path), device="cpu")


@pytest.fixture(scope="module")
def cameras() -> Cameras:
    # front, back, side: different view prompts within one batch.
    az = torch.tensor([0.0, 180.0, 90.0])
    el = torch.tensor([10.0, 20.0, 0.0])
    return make_cameras(el, az, torch.full((3,), 1.5), torch.full((3,), 40.0), 32, 32)


def _cond_uncond(prior: DiffusionPrior, cams: Cameras, negative: str = "") -> tuple[Tensor, Tensor]:
    """Text embeddings computed without PromptEmbeddings: view word → prompt → text encoder."""
    words = [
        view_direction(a, e)
        for a, e in zip(cams.azimuth.tolist(), cams.elevation.tolist(), strict=True)
    ]
    prior.clear_text_cache()
    cond = prior.encode_text([view_prompt(PROMPT, w) for w in words])
    uncond = prior.encode_text([negative] * len(cams))
    return cond, uncond


def _branches(
    prior: DiffusionPrior, latents: Tensor, noise: Tensor, t: Tensor, cond: Tensor, uncond: Tensor
) -> tuple[Tensor, Tensor]:
    """(ε_uncond, ε_cond) by two separate UNet calls on z_t built from the scheduler's ᾱ."""
    abar = prior.scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    z_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    with torch.no_grad():
        eps_u = prior.unet(z_t, t, encoder_hidden_states=uncond).sample
        eps_c = prior.unet(z_t, t, encoder_hidden_states=cond).sample
    return eps_u, eps_c


def _close(actual: Tensor, expected: Tensor, scale: float | None = None) -> bool:
    """Equal up to the float32 noise of batched vs separate UNet calls, relative to ``scale``
    (default: the largest entry of ``expected``)."""
    scale = expected.abs().max().item() if scale is None else scale
    return torch.allclose(actual, expected, rtol=1e-4, atol=2e-5 * scale)


@dataclass
class Case:
    """Fixed latents, ε and t, and the CFG branches computed by separate UNet calls."""

    latents: Tensor  # [3, 4, 16, 16]
    noise: Tensor
    t: Tensor  # [3]
    cond: Tensor
    uncond: Tensor
    eps_cond: Tensor
    eps_uncond: Tensor

    def residual(self, scale: float) -> Tensor:
        """ε̂ − ε with ε̂ = ε_u + s (ε_c − ε_u)."""
        return self.eps_uncond + scale * (self.eps_cond - self.eps_uncond) - self.noise


def _make_case(prior: DiffusionPrior, cams: Cameras, seed: int, negative: str = "") -> Case:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(3, 4, 16, 16, generator=g)
    noise = torch.randn(3, 4, 16, 16, generator=g)
    t = torch.tensor([25, 480, 960])
    cond, uncond = _cond_uncond(prior, cams, negative)
    eps_u, eps_c = _branches(prior, latents, noise, t, cond, uncond)
    return Case(latents, noise, t, cond, uncond, eps_c, eps_u)


@pytest.fixture(scope="module")
def case(prior: DiffusionPrior, cameras: Cameras) -> Case:
    return _make_case(prior, cameras, seed=0, negative="low quality")


def _weight(prior: DiffusionPrior, weighting: str, t: Tensor) -> Tensor:
    abar = prior.scheduler.alphas_cumprod[t].float()
    w = {"sds": 1 - abar, "uniform": torch.ones_like(abar), "fantasia3d": abar.sqrt() * (1 - abar)}
    return w[weighting].view(-1, 1, 1, 1)


# ------------------------------------------------------------------------------ the gradient
def test_latent_gradient_is_weighted_residual(
    prior: DiffusionPrior, cameras: Cameras, case: Case
) -> None:
    """autograd's ∂loss/∂latents = w(t)(ε̂ − ε) / B for every weighting (negative prompt as the
    unconditional branch)."""
    b = 3
    for weighting in ("sds", "uniform", "fantasia3d"):
        guidance = SDSGuidance(
            prior, guidance_scale=7.5, weighting=weighting, negative_prompt="low quality"
        )
        leaf = case.latents.clone().requires_grad_(True)
        out = guidance.forward_latents(leaf, cameras, PROMPT, t=case.t, noise=case.noise)
        out.loss.backward()
        expected = _weight(prior, weighting, case.t) * case.residual(7.5)
        # Documented convention: ∂loss/∂latents = w(t)(ε̂ − ε) / B.
        assert _close(leaf.grad, expected / b), weighting
        # loss = ½‖grad‖² / B, its closed form.
        assert torch.allclose(out.loss, 0.5 * expected.square().sum() / b, rtol=1e-4)
        assert torch.equal(out.terms["loss_sds"], out.loss)
        assert out.diagnostics["t"] == pytest.approx(case.t.float().mean().item())
        assert out.diagnostics["grad_norm"] == pytest.approx(expected.norm().item(), rel=1e-4)


def test_grad_clip(prior: DiffusionPrior, cameras: Cameras, case: Case) -> None:
    clipped = SDSGuidance(prior, guidance_scale=7.5, grad_clip=0.05, negative_prompt="low quality")
    leaf = case.latents.clone().requires_grad_(True)
    clipped.forward_latents(leaf, cameras, PROMPT, t=case.t, noise=case.noise).loss.backward()
    raw = _weight(prior, "sds", case.t) * case.residual(7.5)
    assert (raw.abs() > 0.05).float().mean() > 0.1  # the clip is active
    assert _close(leaf.grad, raw.clamp(-0.05, 0.05) / 3, scale=raw.abs().max().item() / 3)
    dirty = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5, -3.0])
    assert torch.equal(clean_grad(dirty, 1.0), torch.tensor([0.0, 0.0, 0.0, 0.5, -1.0]))


def test_classifier_free_guidance(prior: DiffusionPrior, case: Case) -> None:
    """One batched call on [uncond; cond] gives ε_u + s(ε_c − ε_u): s=0 is the unconditional
    branch, s=1 the conditional one (so the halves are not swapped)."""
    z_t = prior.add_noise(case.latents, case.noise, case.t)
    with torch.no_grad():
        for scale, expected in ((0.0, case.eps_uncond), (1.0, case.eps_cond)):
            got = guided_noise_prediction(prior, z_t, case.t, case.cond, case.uncond, scale)
            assert _close(got, expected), scale
    u, c = torch.randn(2, 5), torch.randn(2, 5)
    assert torch.allclose(classifier_free_guidance(u, c, 7.5), u + 7.5 * (c - u))


def test_rgb_gradient_follows_chain_rule(prior: DiffusionPrior, cameras: Cameras) -> None:
    """End to end from 32 px renders: resize to 64 px, encode, SDS. Draw order is documented:
    t first, then ε, from the given generator."""
    guidance = SDSGuidance(prior, guidance_scale=10.0)
    torch.manual_seed(3)
    rgb = torch.rand(3, 32, 32, 3, requires_grad=True)
    out = guidance(rgb, cameras, PROMPT, generator=torch.Generator().manual_seed(7))
    out.loss.backward()

    rgb2 = rgb.detach().clone().requires_grad_(True)
    up = torch.nn.functional.interpolate(rgb2.permute(0, 3, 1, 2), size=(64, 64), mode="bilinear")
    latents = prior.vae.encode(up * 2 - 1).latent_dist.mean * prior.vae.config.scaling_factor
    g = torch.Generator().manual_seed(7)
    t = torch.randint(guidance.min_step, guidance.max_step + 1, (3,), generator=g)
    noise = torch.randn(latents.shape, generator=g)
    cond, uncond = _cond_uncond(prior, cameras)
    eps_u, eps_c = _branches(prior, latents.detach(), noise, t, cond, uncond)
    expected = _weight(prior, "sds", t) * (eps_u + 10.0 * (eps_c - eps_u) - noise)
    (expected_rgb_grad,) = torch.autograd.grad(latents, rgb2, grad_outputs=expected / 3)
    assert out.diagnostics["t"] == pytest.approx(t.float().mean().item())
    assert _close(rgb.grad, expected_rgb_grad)


def test_generator_reproducibility(prior: DiffusionPrior, cameras: Cameras, case: Case) -> None:
    guidance = SDSGuidance(prior, min_step_percent=0.3, max_step_percent=0.31)
    seeded = SDSGuidance(prior, min_step_percent=0.3, max_step_percent=0.31, seed=11)
    grads = []
    for g, seed in ((guidance, 11), (guidance, 12), (seeded, None)):
        leaf = case.latents.clone().requires_grad_(True)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        out = g.forward_latents(leaf, cameras, PROMPT, generator=gen)
        out.loss.backward()
        grads.append(leaf.grad)
        assert 300 <= out.diagnostics["t"] <= 310
    assert not torch.allclose(grads[0], grads[1])
    # The private generator seeded with 11 draws what an explicit seed-11 generator draws.
    assert torch.equal(grads[0], grads[2])


# ------------------------------------------------------------------------------ time steps
def test_max_step_annealing() -> None:
    steps = TimestepRange(1000, 0.02, [5000, 0.98, 0.5, 5001])
    assert (steps.min_step, steps.max_step) == (20, 980)
    for step, expected in ((4999, 980), (5000, 980), (5001, 500), (20000, 500)):
        steps.update(step)
        assert steps.max_step == expected, step
    linear = TimestepRange(1000, 0.02, [100, 0.98, 0.5, 300])
    for step, expected in ((0, 980), (100, 980), (200, 740), (250, 620), (300, 500), (400, 500)):
        linear.update(step)
        assert linear.max_step == expected, step
    full = TimestepRange(1000, 0.0, 1.0)
    assert (full.min_step, full.max_step) == (0, 999)


def test_guidance_update_step_restricts_t(prior: DiffusionPrior) -> None:
    guidance = SDSGuidance(prior, min_step_percent=0.02, max_step_percent=[10, 0.98, 0.1, 20])
    g = torch.Generator().manual_seed(0)
    t0 = guidance.timesteps.sample(2000, generator=g)
    assert t0.min() >= 20 and t0.max() <= 980 and t0.max() > 900
    guidance.update_step(epoch=0, global_step=25, max_steps=100)
    assert (guidance.min_step, guidance.max_step) == (20, 100)
    t1 = guidance.timesteps.sample(2000, generator=g)
    assert t1.min() == 20 and t1.max() == 100
    assert t1.dtype == torch.int64
    # Uniform over the 81 integers: mean ≈ 60.
    assert abs(t1.float().mean().item() - 60.0) < 2.0


def test_noise_from_generator_is_device_independent() -> None:
    like = torch.zeros(2, 4, 8, 8)
    a = sample_noise(like, torch.Generator().manual_seed(3))
    b = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------ delta (Eq. 13)
def test_delta_with_identical_reference_is_zero(
    prior: DiffusionPrior, cameras: Cameras, case: Case
) -> None:
    guidance = SDSGuidance(prior, guidance_scale=20.0)
    leaf = case.latents.clone().requires_grad_(True)
    out = guidance.forward_latents(
        leaf, cameras, PROMPT, case.latents.clone(), t=case.t, noise=case.noise
    )
    out.loss.backward()
    assert leaf.grad.abs().max() < 1e-6
    assert out.loss.item() < 1e-9


def test_delta_equals_difference_of_two_gradients(
    prior: DiffusionPrior, cameras: Cameras, case: Case
) -> None:
    """Eq. 13: v(x) − v(x_ref) with the same t and ε, each computed by its own UNet calls."""
    guidance = SDSGuidance(prior, guidance_scale=7.5, negative_prompt="low quality")
    reference = torch.randn(case.latents.shape, generator=torch.Generator().manual_seed(70))
    leaf = case.latents.clone().requires_grad_(True)
    guidance.forward_latents(
        leaf, cameras, PROMPT, reference, t=case.t, noise=case.noise
    ).loss.backward()

    w = _weight(prior, "sds", case.t)
    own = w * case.residual(7.5)
    ref_u, ref_c = _branches(prior, reference, case.noise, case.t, case.cond, case.uncond)
    ref = w * (ref_u + 7.5 * (ref_c - ref_u) - case.noise)
    assert _close(leaf.grad, (own - ref) / 3, scale=own.abs().max().item() / 3)


def test_delta_from_renders(prior: DiffusionPrior, cameras: Cameras) -> None:
    """forward(rgb, reference_rgb=rgb) gives zero gradient; a different render does not."""
    guidance = SDSGuidance(prior, guidance_scale=20.0)
    rgb = torch.rand(3, 32, 32, 3, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    guidance(
        rgb, cameras, PROMPT, reference_rgb=rgb.detach().clone(), generator=gen
    ).loss.backward()
    assert rgb.grad.abs().max() < 1e-7
    rgb.grad = None
    other = torch.rand(3, 32, 32, 3)
    gen = torch.Generator().manual_seed(1)
    guidance(rgb, cameras, PROMPT, reference_rgb=other, generator=gen).loss.backward()
    assert rgb.grad.abs().max() > 1e-6


# ------------------------------------------------------------------------------ input errors
def test_bad_inputs(prior: DiffusionPrior, cameras: Cameras) -> None:
    guidance = SDSGuidance(prior)
    with pytest.raises(ValueError, match=r"rgb \[B, H, W, 3\]"):
        guidance(torch.rand(3, 3, 32, 32), cameras, PROMPT)
    with pytest.raises(ValueError, match="3 cameras for a batch of 2"):
        guidance(torch.rand(2, 32, 32, 3), cameras, PROMPT)
    with pytest.raises(ValueError, match="reference_rgb"):
        guidance(torch.rand(3, 32, 32, 3), cameras, PROMPT, reference_rgb=torch.rand(3, 16, 16, 3))
    with pytest.raises(ConfigError, match="weighting"):
        SDSGuidance(prior, weighting="linear")
    with pytest.raises(ConfigError, match="min_step"):
        SDSGuidance(prior, min_step_percent=0.9, max_step_percent=0.5)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        SDSGuidance(prior, max_step_percent=1.5)
    with pytest.raises(ConfigError, match="start_step"):
        SDSGuidance(prior, max_step_percent=[0.98, 0.5])
    with pytest.raises(ConfigError, match="DiffusionPrior"):
        SDSGuidance(42)  # type: ignore[arg-type]


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("guidance_scale", NAN),
        ("guidance_scale", INF),
        ("front_threshold", NAN),
        ("overhead_threshold", -INF),
        ("grad_clip", NAN),
        ("grad_clip", [0, 1.0, INF, 10]),
        ("min_step_percent", NAN),
        ("max_step_percent", [0, 0.98, NAN, 100]),
    ],
)
def test_non_finite_settings_are_refused(prior: DiffusionPrior, key: str, value: object) -> None:
    """NaN/inf would poison every step silently; the error names the setting."""
    with pytest.raises(ConfigError, match=key):
        SDSGuidance(prior, **{key: value})


def test_loss_term_names_match_the_terms(prior: DiffusionPrior, cameras: Cameras) -> None:
    guidance = SDSGuidance(prior, seed=0)
    out = guidance(torch.rand(3, 32, 32, 3), cameras, PROMPT)
    assert guidance.loss_term_names == ("sds",)
    assert set(out.terms) == {f"loss_{n}" for n in guidance.loss_term_names}
    assert torch.equal(out.loss, sum(out.terms.values()))
