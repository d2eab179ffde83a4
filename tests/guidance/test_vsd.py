"""VSD guidance (Eq. 2) with a LoRA + camera score model on one shared UNet, named adapters,
delta distillation (Eq. 13) and batched particles (ParVI). Every check is against a computation
that does not go through the code under test (diffusers' own adapter / class-label paths, a
closed-form denoiser, separately computed gradients)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors import safe_open
from torch import Tensor, nn

from ra3d.cameras import Cameras, make_cameras, view_prompt
from ra3d.errors import ConfigError
from ra3d.guidance.lora import (
    AdapterManager,
    CameraConditioner,
    CameraEmbedding,
    drop_camera_condition,
    lora_config,
)
from ra3d.guidance.prior import DiffusionPrior
from ra3d.guidance.tiny import SD_SCHEDULER_CONFIG
from ra3d.guidance.vsd import VIEW_ADAPTER, VSD_ADAPTER, VSDGuidance

PROMPT = "a wooden chair"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: OpenMP threads only add contention on a shared CI machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _cameras(azimuths: list[float], size: int = 64) -> Cameras:
    n = len(azimuths)
    return make_cameras(
        torch.full((n,), 15.0),
        torch.tensor(azimuths),
        torch.full((n,), 1.5),
        torch.full((n,), 45.0),
        size,
        size,
    )


def _guidance(path: Path, **kwargs: object) -> VSDGuidance:
    """A fresh prior each time: VSD adds its adapter to the UNet it is given."""
    prior = DiffusionPrior(str(path), device="cpu")
    kwargs.setdefault("seed", 0)
    return VSDGuidance(prior, **kwargs)


def _perturb_score_model(guidance: VSDGuidance, seed: int = 1) -> None:
    """Move ζ and the camera embedding off their zero init, so ε_(φ,ζ) ≠ ε_φ."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guidance.lora_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _independent_eps(
    prior: DiffusionPrior, z_t: Tensor, t: Tensor, text: Tensor, class_labels: Tensor | None = None
) -> Tensor:
    return prior.unet(z_t, t, encoder_hidden_states=text, class_labels=class_labels).sample.float()


# ------------------------------------------------------------------------------ Eq. 2 gradient
def _float64_branch(
    prior: DiffusionPrior,
    adapters: list[str],
    z_t: Tensor,
    t: Tensor,
    text: Tensor,
    camera_embedding: nn.Module | None = None,
    camera: Tensor | None = None,
) -> tuple[Tensor, float]:
    """One UNet branch recomputed independently of the guidance: a float64 copy of the UNet with
    ``adapters`` selected through diffusers' own API and the camera fed through diffusers'
    class-label path. Returns the float64 output and the float32 rounding error of the same call
    (max |float32 − float64|), which sets the test tolerance."""
    import copy

    unet32 = copy.deepcopy(prior.unet)
    if adapters:
        unet32.enable_adapters()
        unet32.set_adapters(adapters)
    else:
        unet32.disable_adapters()
    if camera_embedding is not None:
        unet32.class_embedding = copy.deepcopy(camera_embedding)
    unet64 = copy.deepcopy(unet32).double()
    with torch.no_grad():
        out32 = unet32(z_t.float(), t, encoder_hidden_states=text.float(), class_labels=camera)
        out64 = unet64(
            z_t.double(),
            t,
            encoder_hidden_states=text.double(),
            class_labels=None if camera is None else camera.double(),
        )
    return out64.sample, float((out32.sample.double() - out64.sample).abs().max())


def test_latent_gradient_equals_vsd_velocity(tiny_prior_path: Path) -> None:
    """∂loss_vsd/∂z = w(t)(ε_φ(e(c, ψ)) − ε_(φ,ζ)(c, ψ)) / B: the prior term with the view prompt,
    the score model with the *plain* prompt c (Eq. 2; threestudio's ProlificDreamer)."""
    s = 7.5
    g = _guidance(tiny_prior_path, guidance_scale=s, guidance_scale_lora=1.0)
    _perturb_score_model(g)
    prior = g.prior
    cams = _cameras([0.0, 180.0])  # a front and a back view: different view prompts
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 16, 16, generator=gen).requires_grad_(True)
    noise = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([250, 700])

    out = g.forward_latents(z, cams, PROMPT, t=t, noise=noise)
    out.terms["loss_vsd"].backward()
    assert out.diagnostics["delta_applied"] == 0.0
    got = z.grad * 2  # ∂loss/∂z = grad / B

    # Independent, in float64: scheduler's ᾱ, text from the encoder, adapters switched by
    # diffusers' own API, the camera through diffusers' class-label path.
    abar = prior.scheduler.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z.detach().double() + (1 - abar).sqrt() * noise.double()
    view_cond = prior.encode_text([view_prompt(PROMPT, "front"), view_prompt(PROMPT, "back")])
    plain = prior.encode_text([PROMPT, PROMPT])
    uncond = prior.encode_text(["", ""])
    e_u, d_u = _float64_branch(prior, [], z_t, t, uncond)
    e_c, d_c = _float64_branch(prior, [], z_t, t, view_cond)
    e_l, d_l = _float64_branch(
        prior, [VSD_ADAPTER], z_t, t, plain, g.camera_embedding, cams.c2w.reshape(2, 16)
    )
    w = 1 - abar
    expected = w * (e_u + s * (e_c - e_u) - e_l)
    assert expected.abs().max() > 1e-2  # the two models really differ
    # Tolerance from the computation: the guidance runs these UNet calls in float32 (batched,
    # so in another summation order than the single calls measured above). Its error is the
    # propagated float32 error of each branch — (1 − s)·δ_u + s·δ_c for the guided prior plus δ_l
    # for the score model — times w(t); a factor 4 covers the batch-dependent algorithms
    # (one element of 2048 once landed 1.1e-5 off a fixed 1e-5 atol).
    bound = float(w.max()) * (abs(1 - s) * d_u + s * d_c + d_l)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=4 * bound)
    # ... and the view prompt in the score model (the old behaviour) is far outside it.
    e_l_view, _ = _float64_branch(
        prior, [VSD_ADAPTER], z_t, t, view_cond, g.camera_embedding, cams.c2w.reshape(2, 16)
    )
    old = w * (e_u + s * (e_c - e_u) - e_l_view)
    assert float((got.double() - old).abs().max()) > 100 * bound


@pytest.mark.parametrize("guidance_scale_lora", [1.0, 2.0])
def test_score_model_sees_the_plain_prompt_and_the_prior_the_view_prompt(
    tiny_prior_path: Path, guidance_scale_lora: float
) -> None:
    """Spy on every UNet call of a VSD step (with delta distillation, so the reference batch is
    covered too): calls with ζ active (the score model's prediction, both halves of its camera
    CFG, and its training loss) get the plain prompt c, calls without ζ (the prior term) get
    e(c, ψ) for each camera. The older code gave ζ e(c, ψ), and its CFG's unconditional half the
    negative prompt (a text ζ never trains on; threestudio keeps c): both fail here."""
    g = _guidance(tiny_prior_path, guidance_scale_lora=guidance_scale_lora, camera_dropout=0.0)
    prior = g.prior
    cams = _cameras([0.0, 100.0, 180.0])  # front, side, back
    plain = prior.encode_text([PROMPT])[0]
    negative = prior.encode_text([""])[0]
    assert not torch.equal(plain, negative)
    views = prior.encode_text([view_prompt(PROMPT, d) for d in ("front", "side", "back")])
    calls: list[tuple[tuple[str, ...], Tensor]] = []
    cameras_seen: list[Tensor] = []

    def spy(module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append((g.adapters.active, kwargs["encoder_hidden_states"].detach().clone()))

    def camera_spy(module: nn.Module, args: tuple) -> None:
        cameras_seen.append(args[0].detach().clone())

    handles = [prior.unet.register_forward_pre_hook(spy, with_kwargs=True),
               g.camera_embedding.register_forward_pre_hook(camera_spy)]  # fmt: skip
    try:
        z = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        ref = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
        g.forward_latents(z.requires_grad_(True), cams, PROMPT, ref)
    finally:
        for handle in handles:
            handle.remove()
    score_calls = [text for active, text in calls if VSD_ADAPTER in active]
    prior_calls = [text for active, text in calls if VSD_ADAPTER not in active]
    # prior: one CFG call on [uncond; cond] for [z; ref]; score model: its prediction (one call,
    # or [uncond; cond] with CFG) and its training loss
    assert len(prior_calls) == 1 and len(score_calls) == 2
    (prior_text,) = prior_calls
    torch.testing.assert_close(prior_text[6:9], views, rtol=0, atol=0)  # cond for z
    torch.testing.assert_close(prior_text[9:], views, rtol=0, atol=0)  # cond for ref
    assert torch.equal(prior_text[:6], negative.expand(6, -1, -1))
    prediction, training = score_calls
    camera = cams.c2w.reshape(3, 16)
    both = torch.cat([camera, camera])  # [z; ref]
    prediction_camera, training_camera = cameras_seen
    if guidance_scale_lora == 1.0:
        assert torch.equal(prediction, plain.expand(6, -1, -1))
        assert torch.equal(prediction_camera, both)
    else:  # [uncond (c, zero camera) for z and ref; cond (c, ψ) for z and ref]
        assert torch.equal(prediction, plain.expand(12, -1, -1))
        assert torch.equal(prediction_camera, torch.cat([torch.zeros_like(both), both]))
    assert torch.equal(training, plain.expand(3, -1, -1))
    assert torch.equal(training_camera, camera)  # camera_dropout=0


def test_lora_loss_is_the_diffusion_loss_for_epsilon_and_v(tiny_prior_path: Path) -> None:
    g = _guidance(tiny_prior_path, camera_dropout=0.0)
    _perturb_score_model(g)
    prior = g.prior
    cams = _cameras([30.0, 120.0])
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(2, 4, 16, 16, generator=gen)
    noise = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([0, 999])
    cond = prior.encode_text([view_prompt(PROMPT, "front"), view_prompt(PROMPT, "side")])
    camera = cams.c2w.reshape(2, 16)
    abar = prior.scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z + (1 - abar).sqrt() * noise
    prior.unet.enable_adapters()
    prior.unet.set_adapter(VSD_ADAPTER)
    prior.unet.class_embedding = g.camera_embedding
    try:
        with torch.no_grad():
            raw = _independent_eps(prior, z_t, t, cond, camera)
    finally:
        prior.unet.class_embedding = None
    for prediction_type, target in (
        ("epsilon", noise),
        ("v_prediction", abar.sqrt() * noise - (1 - abar).sqrt() * z),
    ):
        prior.prediction_type = prediction_type
        got = g.lora_loss(z, cond, camera, t=t, noise=noise)
        torch.testing.assert_close(got, ((raw - target) ** 2).mean(), rtol=1e-5, atol=1e-6)


def test_score_model_guidance_uses_zero_camera_for_the_unconditional_branch(
    tiny_prior_path: Path,
) -> None:
    g = _guidance(tiny_prior_path, guidance_scale_lora=2.0)
    _perturb_score_model(g)
    prior = g.prior
    cams = _cameras([0.0, 60.0])
    z_t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([50, 500])
    cond = prior.encode_text(["p", "q"])
    with torch.no_grad():
        got = g.score_model_noise(z_t, t, cond, g.camera_condition(cams))
        prior.unet.enable_adapters()
        prior.unet.set_adapter(VSD_ADAPTER)
        prior.unet.class_embedding = g.camera_embedding
        try:
            e_c = _independent_eps(prior, z_t, t, cond, cams.c2w.reshape(2, 16))
            # threestudio's unconditional branch: the same (plain) prompt, a zero camera
            e_u = _independent_eps(prior, z_t, t, cond, torch.zeros(2, 16))
        finally:
            prior.unet.class_embedding = None
    torch.testing.assert_close(got, e_u + 2.0 * (e_c - e_u), rtol=1e-4, atol=1e-5)


def test_score_model_at_initialisation_is_the_conditional_prior_for_any_camera(
    tiny_prior_path: Path,
) -> None:
    """ζ's B and the camera embedding's output layer start at zero (a deviation from threestudio,
    whose camera embedding is default-initialised): before any training, ε_(φ,ζ)(x_t, t, c, ψ)
    is the frozen prior's ε_φ(x_t, t, c) bit for bit, whatever ψ. With threestudio's default init
    of the embedding it is not."""
    g = _guidance(tiny_prior_path)
    prior = g.prior
    gen = torch.Generator().manual_seed(7)
    z_t = torch.randn(4, 4, 16, 16, generator=gen)
    t = torch.tensor([20, 300, 600, 980])
    cond = prior.encode_text([PROMPT] * 4)
    cameras = [
        g.camera_condition(_cameras([0.0, 90.0, 180.0, 270.0])),
        10.0 * torch.randn(4, 16, generator=gen),  # any vector, not only camera matrices
    ]
    with torch.no_grad():
        frozen = prior.predict_noise(z_t, t, cond)  # the base UNet, no adapter selected
        for camera in cameras:
            assert torch.equal(g.score_model_noise(z_t, t, cond, camera), frozen)
        g.camera_embedding.linear_2.reset_parameters()  # threestudio: PyTorch's default init
        moved = g.score_model_noise(z_t, t, cond, cameras[1])
    assert float((moved - frozen).abs().max()) > 1e-3


# ------------------------------------------------------------------------------ gradient routing
def test_gradients_split_between_particle_and_score_model(tiny_prior_path: Path) -> None:
    g = _guidance(tiny_prior_path, view_adapter_path=None)
    _perturb_score_model(g)
    particle = nn.Parameter(torch.randn(2, 16, 16, 3) * 0.5)
    rgb = torch.sigmoid(particle).repeat_interleave(4, 1).repeat_interleave(4, 2)  # 64 px
    cams = _cameras([0.0, 90.0])
    out = g(rgb, cams, PROMPT)
    lora = g.lora_parameters()
    base = [p for n, p in g.prior.named_parameters() if "lora_" not in n]
    assert base and not any(p.requires_grad for p in base)
    assert all(p.requires_grad for p in lora)
    # the two terms really are in the loss
    torch.testing.assert_close(out.loss, out.terms["loss_vsd"] + out.terms["loss_lora"])

    from_vsd = torch.autograd.grad(
        out.terms["loss_vsd"], [particle, *lora], retain_graph=True, allow_unused=True
    )
    assert from_vsd[0] is not None and from_vsd[0].abs().sum() > 0
    assert all(gr is None for gr in from_vsd[1:]), "the distillation term must not train ζ"

    from_lora = torch.autograd.grad(
        out.terms["loss_lora"], [particle, *lora], retain_graph=True, allow_unused=True
    )
    assert from_lora[0] is None, "the score-model loss must not reach the particle"
    assert all(gr is not None and gr.abs().sum() > 0 for gr in from_lora[1:])

    out.loss.backward()
    torch.testing.assert_close(particle.grad, from_vsd[0])
    for p, gr in zip(lora, from_lora[1:], strict=True):
        torch.testing.assert_close(p.grad, gr)
    assert all(p.grad is None for p in base)
    # the optimizer group the system uses holds exactly ζ + camera embedding at lora_lr
    (group,) = g.trainable_parameter_groups()
    assert group["lr"] == 1e-4 and group["name"] == "vsd_lora"
    assert {id(p) for p in group["params"]} == {id(p) for p in lora}


# ------------------------------------------------------------------------------ delta (Eq. 13)
def test_delta_distillation(tiny_prior_path: Path) -> None:
    g = _guidance(tiny_prior_path, delta_every=2)
    _perturb_score_model(g)
    cams = _cameras([0.0, 200.0])
    gen = torch.Generator().manual_seed(7)
    z0 = torch.randn(2, 4, 16, 16, generator=gen)
    ref = torch.randn(2, 4, 16, 16, generator=gen)
    noise = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([400, 900])

    def latent_grad(latents: Tensor, reference: Tensor | None) -> tuple[Tensor, float]:
        z = latents.clone().requires_grad_(True)
        out = g.forward_latents(z, cams, PROMPT, reference, t=t, noise=noise)
        out.terms["loss_vsd"].backward()
        return z.grad, out.diagnostics["delta_applied"]

    # reference = the particle's own render: exactly no guidance
    own, applied = latent_grad(z0, z0.clone())
    assert applied == 1.0
    assert torch.equal(own, torch.zeros_like(own))

    # another reference: the difference of two separately computed VSD gradients
    delta, _ = latent_grad(z0, ref)
    plain, applied_plain = latent_grad(z0, None)
    at_ref, _ = latent_grad(ref, None)
    assert applied_plain == 0.0
    assert plain.abs().max() > 1e-4 and at_ref.abs().max() > 1e-4
    # One batched UNet call [x; ref] vs two separate calls: equal up to float32 summation order
    # (batch-size-dependent BLAS/conv algorithms), so the tolerance scales with the gradient.
    scale = float((plain - at_ref).abs().max())
    torch.testing.assert_close(delta, plain - at_ref, rtol=1e-4, atol=1e-4 * scale)

    # delta_every=2: skipped on odd steps
    g.update_step(0, 1, 10)
    skipped, applied_skip = latent_grad(z0, ref)
    assert applied_skip == 0.0
    torch.testing.assert_close(skipped, plain)


# ------------------------------------------------------------------------------ camera dropout
def test_camera_dropout_rate_and_seed() -> None:
    n, p = 20000, 0.1
    condition = torch.randn(n, 16) + 3.0  # no zero entries
    dropped = drop_camera_condition(condition, p, torch.Generator().manual_seed(11))
    zero_rows = (dropped == 0).all(dim=1)
    kept_rows = (dropped == condition).all(dim=1)
    assert bool((zero_rows | kept_rows).all()), "rows are either zeroed whole or untouched"
    # independent: the same seeded uniform draw thresholded at p
    expected = torch.rand(n, generator=torch.Generator().manual_seed(11)) < p
    assert torch.equal(zero_rows, expected)
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(zero_rows.float().mean().item() - p) < 4 * sd
    again = drop_camera_condition(condition, p, torch.Generator().manual_seed(11))
    assert torch.equal(again, dropped)
    assert torch.equal(drop_camera_condition(condition, 0.0), condition)
    assert torch.equal(drop_camera_condition(condition, 1.0), torch.zeros_like(condition))
    with pytest.raises(ValueError, match="camera_dropout"):
        drop_camera_condition(condition, 1.5)


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_score_model_training_sees_dropped_cameras(tiny_prior_path: Path, dropout: float) -> None:
    g = _guidance(tiny_prior_path, camera_dropout=dropout, lora_n_timestamp_samples=2)
    seen: list[Tensor] = []
    handle = g.camera_embedding.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    cams = _cameras([10.0, 100.0])
    g.lora_loss(torch.randn(2, 4, 16, 16), g.prior.encode_text(["a", "b"]), cams.c2w.reshape(2, 16))
    handle.remove()
    (camera,) = seen
    expected = torch.zeros(4, 16) if dropout == 1.0 else cams.c2w.reshape(2, 16).repeat(2, 1)
    assert torch.equal(camera, expected)


# ------------------------------------------------------------------------------ hook vs class labels
def test_camera_hook_equals_class_label_path_and_is_scoped(tiny_prior_path: Path) -> None:
    prior = DiffusionPrior(str(tiny_prior_path), device="cpu")
    unet = prior.unet
    emb = CameraEmbedding(16, 128)
    nn.init.normal_(emb.linear_2.weight, std=0.2)
    conditioner = CameraConditioner(unet, emb)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([5, 600])
    text = prior.encode_text(["x", "y"])
    camera = _cameras([0.0, 45.0]).c2w.reshape(2, 16)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=text).sample
        with conditioner.condition(camera):
            hooked = unet(x, t, encoder_hidden_states=text).sample
        after = unet(x, t, encoder_hidden_states=text).sample
        unet.class_embedding = emb
        try:
            labelled = unet(x, t, encoder_hidden_states=text, class_labels=camera).sample
        finally:
            unet.class_embedding = None
    assert torch.equal(after, plain)
    assert not torch.allclose(hooked, plain)
    torch.testing.assert_close(hooked, labelled, rtol=0, atol=0)
    conditioner.remove()


# ------------------------------------------------------------------------------ adapters
def test_adapter_save_load_roundtrip_bit_exact(tiny_prior_path: Path, tmp_path: Path) -> None:
    g1 = _guidance(tiny_prior_path, guidance_scale=7.5)
    _perturb_score_model(g1, seed=4)
    path = g1.save_adapter(tmp_path / "zeta.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["rank"] == "4" and any(k.startswith("camera_embedding.") for k in keys)

    gen = torch.Generator().manual_seed(9)
    z_t = torch.randn(2, 4, 16, 16, generator=gen)
    t = torch.tensor([100, 800])
    cams = _cameras([0.0, 270.0])
    cond = g1.prompt_embeddings(PROMPT).get(cams)[0]
    camera = g1.camera_condition(cams)
    with torch.no_grad():
        score1 = g1.score_model_noise(z_t, t, cond, camera)
        with g1.adapters.use([VSD_ADAPTER]):  # base + these weights, no camera: what ω will be
            as_view1 = g1.prior.predict_noise(z_t, t, cond)
        base1 = g1.prior.predict_noise(z_t, t, cond)

    # the same weights reloaded as ζ on a fresh prior
    g2 = _guidance(tiny_prior_path)
    g2.load_adapter(path, VSD_ADAPTER, trainable=True)
    with torch.no_grad():
        score2 = g2.score_model_noise(z_t, t, cond, camera)
    assert torch.equal(score1, score2)
    assert all(p.requires_grad for p in g2.lora_parameters())

    # ... and as the frozen view adapter ω next to a fresh ζ on one UNet
    g3 = _guidance(tiny_prior_path, view_adapter_path=str(path))
    assert set(g3.adapters.names) == {VSD_ADAPTER, VIEW_ADAPTER}
    assert g3.prior_adapters == [VIEW_ADAPTER]
    with torch.no_grad():
        with g3.adapters.use(g3.prior_adapters):
            as_view3 = g3.prior.predict_noise(z_t, t, cond)
        score3 = g3.score_model_noise(z_t, t, cond, camera)  # fresh ζ (B = 0)
        base3 = g3.prior.predict_noise(z_t, t, cond)  # outside any selection: the base UNet
    assert torch.equal(as_view3, as_view1)
    assert torch.equal(base3, base1)
    # the score model is base + ω + ζ: with ζ and the camera embedding at zero it *is* the
    # adapted prior's conditional prediction
    assert torch.equal(score3, as_view1)
    omega = g3.adapters.parameters(VIEW_ADAPTER)
    assert omega and not any(p.requires_grad for p in omega)
    assert all(p.requires_grad for p in g3.lora_parameters())
    trainable = {id(p) for grp in g3.trainable_parameter_groups() for p in grp["params"]}
    assert not trainable & {id(p) for p in omega}


def test_adapter_errors(tiny_prior_path: Path, tmp_path: Path) -> None:
    g = _guidance(tiny_prior_path)
    with pytest.raises(FileNotFoundError, match="adapter file not found"):
        g.load_adapter(tmp_path / "missing.safetensors", "other", trainable=False)
    with pytest.raises(ValueError, match="safetensors"):
        g.save_adapter(tmp_path / "zeta.pt")
    with pytest.raises(ValueError, match="already exists"):
        g.adapters.add(VSD_ADAPTER, lora_config(4), trainable=True)
    rank8 = _guidance(tiny_prior_path, lora_rank=8)
    path = rank8.save_adapter(tmp_path / "r8.safetensors")
    with pytest.raises(ValueError, match="shape"):
        g.load_adapter(path, VSD_ADAPTER, trainable=True)
    with pytest.raises(ConfigError, match="camera_condition_type"):
        _guidance(tiny_prior_path, camera_condition_type="intrinsics")
    with pytest.raises(ConfigError, match="delta_every"):
        _guidance(tiny_prior_path, delta_every=0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lora_lr", float("nan")),
        ("lora_lr", float("inf")),
        ("guidance_scale_lora", float("nan")),
        ("guidance_scale", float("inf")),
        ("lora_alpha", float("nan")),
        ("camera_dropout", float("nan")),
    ],
)
def test_non_finite_settings_are_refused(tiny_prior_path: Path, key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key):
        _guidance(tiny_prior_path, **{key: value})


def test_loss_terms_are_unweighted_parts_of_the_loss(tiny_prior_path: Path) -> None:
    g = _guidance(tiny_prior_path)
    out = g.forward_latents(torch.randn(2, 4, 16, 16), _cameras([0.0, 90.0]), PROMPT)
    assert g.loss_term_names == ("vsd", "lora")
    assert set(out.terms) == {f"loss_{n}" for n in g.loss_term_names}
    torch.testing.assert_close(out.loss, out.terms["loss_vsd"] + out.terms["loss_lora"])


def test_adapter_switch_keeps_declared_trainability(tiny_prior_path: Path) -> None:
    prior = DiffusionPrior(str(tiny_prior_path), device="cpu")
    manager = prior.adapters
    assert prior.adapters is manager and isinstance(manager, AdapterManager)
    manager.add("a", lora_config(2), trainable=True)
    manager.add("b", lora_config(2), trainable=False)
    for names in (["b"], ["a"], ["a", "b"], []):
        with manager.use(names):
            assert manager.active == tuple(names)
            assert all(p.requires_grad for p in manager.parameters("a"))
            assert not any(p.requires_grad for p in manager.parameters("b"))
    assert manager.active == ()
    # the prior owns the manager: nothing of ra3d's is stashed on the diffusers UNet
    assert not any(isinstance(v, AdapterManager) for v in vars(prior.unet).values())


def test_fast_adapter_switch_matches_peft_public_api(tiny_prior_path: Path) -> None:
    """The manager's attribute-only switch computes what peft's own set_adapter computes."""
    prior = DiffusionPrior(str(tiny_prior_path), device="cpu")
    manager = prior.adapters
    manager.add("a", lora_config(2), trainable=True)
    manager.add("b", lora_config(2), trainable=False)
    torch.manual_seed(0)
    for p in manager.parameters("a") + manager.parameters("b"):
        p.data.normal_(0.0, 0.3)  # make both adapters change the output
    x = torch.randn(1, prior.latent_channels, 16, 16)
    t = torch.tensor([500])
    text = torch.randn(1, 77, prior.text_encoder.config.hidden_size)
    outputs = {}
    with torch.no_grad():
        for names in (["a"], ["b"], [], ["a", "b"], ["b"]):
            with manager.use(names):
                outputs[tuple(names)] = prior.unet(x, t, text).sample
        for names, fast in outputs.items():
            if names:
                prior.unet.set_adapters(list(names))
                prior.unet.enable_adapters()
            else:
                prior.unet.disable_adapters()
            torch.testing.assert_close(prior.unet(x, t, text).sample, fast, rtol=0, atol=0)
    assert not torch.equal(outputs[("a",)], outputs[("b",)])
    assert not torch.equal(outputs[("a",)], outputs[()])


def test_adapters_stay_float32_on_a_half_precision_unet(tiny_prior_path: Path) -> None:
    half = DiffusionPrior(str(tiny_prior_path), device="cpu", dtype="bfloat16")
    gh = VSDGuidance(half, seed=0)
    assert half.dtype == torch.bfloat16
    assert {p.dtype for p in gh.lora_parameters()} == {torch.float32}
    z = torch.randn(1, 4, 16, 16, requires_grad=True)
    out = gh.forward_latents(z, _cameras([0.0]), PROMPT)
    out.loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in gh.lora_parameters())


# ------------------------------------------------------------------------------ particles
class _ToyTimeEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(1, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class _PointMassUNet(nn.Module):
    """Closed-form ε of a data distribution concentrated at ``target``, plus a residual
    ``(α_t/σ_t) · to_out(to_q(time_embedding))`` that is exactly zero in the base model
    (``to_out`` is zero) and that LoRA + the camera embedding can shape: the score of a particle
    at x is ε* + (α_t/σ_t)(target − x), which the residual can represent."""

    def __init__(self, target: Tensor, alphas_cumprod: Tensor, dim: int = 32) -> None:
        super().__init__()
        self.register_buffer("target", target)
        self.register_buffer("abar", alphas_cumprod.clone())
        self.time_embedding = _ToyTimeEmbedding(dim)
        self.attn = nn.Module()
        self.attn.to_q = nn.Linear(dim, target.numel(), bias=False)
        self.attn.to_out = nn.ModuleList([nn.Linear(target.numel(), target.numel(), bias=False)])
        nn.init.zeros_(self.attn.to_out[0].weight)

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, **_: object):
        abar = self.abar[timestep.long()].view(-1, 1, 1, 1)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        eps_star = (sample - alpha * self.target) / sigma
        temb = self.time_embedding(torch.ones(sample.shape[0], 1))
        residual = self.attn.to_out[0](self.attn.to_q(temb)).view_as(sample)
        return SimpleNamespace(sample=eps_star + alpha / sigma * residual)


class _ToyPrior(DiffusionPrior):
    """A DiffusionPrior whose UNet is the point-mass denoiser (text is ignored)."""

    def __init__(self, target: Tensor) -> None:
        nn.Module.__init__(self)
        self.scheduler = DDPMScheduler(**SD_SCHEDULER_CONFIG)
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.float().clone())
        self.unet = _PointMassUNet(target, self.alphas_cumprod)
        self.unet.requires_grad_(False)
        self.num_train_timesteps = 1000
        self.prediction_type = "epsilon"
        self.weights_dtype = torch.float32
        self.latent_channels = target.shape[0]
        self._text_cache: dict[str, Tensor] = {}

    def encode_text(self, prompts: list[str]) -> Tensor:
        return torch.zeros(len(prompts), 1, 4)


def test_two_particles_get_own_gradients_and_both_approach_the_target() -> None:
    torch.manual_seed(0)
    target = torch.randn(4, 4, 4)
    g = VSDGuidance(_ToyPrior(target), lora_lr=1e-2, seed=0)
    particles = [nn.Parameter(target[None] + torch.randn(1, 4, 4, 4)) for _ in range(2)]
    cams = _cameras([0.0, 90.0], size=16)  # each particle its own camera
    optimizer = torch.optim.Adam(
        [{"params": [p], "lr": 2e-2} for p in particles] + g.trainable_parameter_groups()
    )
    start = [float((p.detach() - target).norm()) for p in particles]
    differed = False
    for _ in range(150):
        out = g.forward_latents(torch.cat(list(particles)), cams, "toy")
        optimizer.zero_grad()
        out.loss.backward()
        g0, g1 = particles[0].grad, particles[1].grad
        differed |= bool(g0.abs().sum() > 0 and not torch.allclose(g0, g1))
        optimizer.step()
    end = [float((p.detach() - target).norm()) for p in particles]
    assert differed
    assert len(optimizer.state) == 2 + len(g.lora_parameters())  # each particle its own moments
    for s, e in zip(start, end, strict=True):
        assert e < 0.6 * s, (start, end)

    # the batched gradient of each particle is its own single-particle VSD gradient
    t, noise = torch.tensor([300, 600]), torch.randn(2, 4, 4, 4)
    batch = torch.cat([p.detach() for p in particles]).requires_grad_(True)
    g.forward_latents(batch, cams, "toy", t=t, noise=noise).terms["loss_vsd"].backward()
    for i in range(2):
        single = particles[i].detach().clone().requires_grad_(True)
        g.forward_latents(single, cams[i], "toy", t=t[i : i + 1], noise=noise[i : i + 1]).terms[
            "loss_vsd"
        ].backward()
        torch.testing.assert_close(batch.grad[i : i + 1] * 2, single.grad, rtol=1e-5, atol=1e-7)


def test_draws_depend_on_the_step_not_on_history() -> None:
    """Resume exactness: after ``update_step(k)`` the private generator yields the same t, ε,
    t', ε' and camera dropout whether or not steps 0..k-1 ran in this process."""
    target = torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(1))
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    cams = _cameras([0.0, 90.0], size=16)
    straight = VSDGuidance(_ToyPrior(target), seed=5, camera_dropout=0.5)
    for step in range(3):
        straight.update_step(0, step, 10)
        a = straight.forward_latents(z, cams, "toy")
    jumped = VSDGuidance(_ToyPrior(target), seed=5, camera_dropout=0.5)
    jumped.update_step(0, 2, 10)
    b = jumped.forward_latents(z, cams, "toy")
    assert a.diagnostics["t"] == b.diagnostics["t"]
    for name in ("loss_vsd", "loss_lora"):
        assert torch.equal(a.terms[name], b.terms[name])
    jumped.update_step(0, 3, 10)
    c = jumped.forward_latents(z, cams, "toy")
    assert not torch.equal(c.terms["loss_lora"], b.terms["loss_lora"])
