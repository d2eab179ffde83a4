"""DiffusionPrior, the tiny offline Stable Diffusion builder and view-dependent prompt embeddings."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ra3d.cameras import make_cameras, view_direction, view_prompt
from ra3d.errors import ConfigError, OfflineModelError
from ra3d.guidance.prior import DEFAULT_MODEL, DiffusionPrior
from ra3d.guidance.prompts import PromptEmbeddings
from ra3d.guidance.tiny import build_tiny_stable_diffusion


@pytest.fixture(scope="module")
def prior(tiny_prior_path: Path) -> DiffusionPrior:
    return DiffusionPrior(str(tiny_prior_path), device="cpu")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------ tiny builder
def test_tiny_folder_has_diffusers_layout(tiny_prior_path: Path) -> None:
    index = json.loads((tiny_prior_path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    expected = {
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    for name, classes in expected.items():
        assert index[name] == classes
        assert (tiny_prior_path / name).is_dir()
    # The same tokenizer files Stable Diffusion ships.
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tiny_prior_path / "tokenizer" / f).is_file()


def test_loaded_weights_equal_saved_weights(prior: DiffusionPrior, tiny_prior_path: Path) -> None:
    for sub, module, fname in (
        ("unet", prior.unet, "diffusion_pytorch_model.safetensors"),
        ("vae", prior.vae, "diffusion_pytorch_model.safetensors"),
        ("text_encoder", prior.text_encoder, "model.safetensors"),
    ):
        saved = load_file(str(tiny_prior_path / sub / fname))
        loaded = module.state_dict()
        assert saved, sub
        for key, value in saved.items():
            assert key in loaded, f"{sub}: {key} not loaded"
            assert torch.equal(loaded[key], value), f"{sub}: {key} differs"
        # Every parameter of the module came from the file (nothing left randomly initialised).
        missing = {k for k, _ in module.named_parameters()} - set(saved)
        assert not missing, f"{sub}: parameters not in the file: {sorted(missing)[:3]}"


def test_prior_attributes(prior: DiffusionPrior) -> None:
    from diffusers import DDPMScheduler

    assert isinstance(prior.scheduler, DDPMScheduler)
    assert prior.image_size == prior.unet.config.sample_size * 4 == 64
    assert prior.latent_channels == 4
    assert prior.prediction_type == "epsilon"
    assert prior.num_train_timesteps == 1000
    # SD's "scaled_linear" betas: linspace in sqrt space from 0.00085 to 0.012.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1.0 - betas, dim=0).float()
    assert torch.allclose(prior.alphas_cumprod, expected, rtol=1e-5, atol=1e-7)
    assert "alphas_cumprod" in dict(prior.named_buffers())
    assert all(not p.requires_grad for p in prior.parameters())
    assert not prior.unet.training and not prior.vae.training and not prior.text_encoder.training


def test_tokenizer_matches_open_clip(prior: DiffusionPrior) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    for text in ("a DSLR photo of a teddy bear, back view", "an angry cat eating 3 pizzas!"):
        ids = prior.tokenizer(text).input_ids
        assert ids == [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]
    assert prior.tokenizer.model_max_length == 77


def test_builder_is_seeded(tmp_path: Path, tiny_prior_path: Path) -> None:
    from ra3d.guidance.tiny import build_tiny_stable_diffusion

    other = build_tiny_stable_diffusion(tmp_path / "sd32", seed=1, image_size=32)
    p32 = DiffusionPrior(str(other), device="cpu")
    assert p32.image_size == 32
    a = load_file(str(tiny_prior_path / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(other / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not torch.equal(a["conv_in.weight"], b["conv_in.weight"])
    with pytest.raises(ValueError, match="multiple of 8"):
        build_tiny_stable_diffusion(tmp_path / "bad", image_size=30)


# ------------------------------------------------------------------------------ images, noise
def test_encode_decode(prior: DiffusionPrior) -> None:
    torch.manual_seed(0)
    rgb = torch.rand(2, 64, 64, 3, requires_grad=True)
    latents = prior.encode_images(rgb)
    assert latents.shape == (2, 4, 16, 16) and latents.dtype == torch.float32
    # Independent computation: VAE posterior mean of 2x-1, times the scaling factor.
    with torch.no_grad():
        mean = prior.vae.encode(rgb.detach().permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
    assert torch.allclose(latents.detach(), mean * prior.vae.config.scaling_factor, atol=1e-6)
    # Differentiable: the autograd directional derivative matches a central finite difference.
    direction = torch.randn_like(rgb)
    weights = torch.randn_like(latents)
    (grad,) = torch.autograd.grad((latents * weights).sum(), rgb)
    h = 1e-2
    with torch.no_grad():
        plus = (prior.encode_images(rgb + h * direction) * weights).sum()
        minus = (prior.encode_images(rgb - h * direction) * weights).sum()
    fd = (plus - minus) / (2 * h)
    assert torch.allclose((grad * direction).sum(), fd, rtol=2e-2, atol=1e-4)

    images = prior.decode_latents(latents.detach())
    assert images.shape == (2, 64, 64, 3)
    assert images.min() >= 0.0 and images.max() <= 1.0
    with torch.no_grad():
        raw = prior.vae.decode(latents.detach() / prior.vae.config.scaling_factor).sample
    expected = (raw * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.allclose(images, expected, atol=1e-6)


def test_encode_rejects_channels_first(prior: DiffusionPrior) -> None:
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        prior.encode_images(torch.rand(1, 3, 64, 64))


def test_resize_to_native(prior: DiffusionPrior) -> None:
    rgb = torch.rand(1, 32, 32, 3)
    out = prior.resize_to_native(rgb)
    assert out.shape == (1, 64, 64, 3)
    # Bilinear ×2 up-sampling with half-pixel centres: pixel 1 of the output sits at 0.75 of
    # input pixel 0 and 0.25 of pixel 1 (rows and columns alike).
    expected = 0.75 * (0.75 * rgb[0, 0, 0] + 0.25 * rgb[0, 0, 1]) + 0.25 * (
        0.75 * rgb[0, 1, 0] + 0.25 * rgb[0, 1, 1]
    )
    assert torch.allclose(out[0, 1, 1], expected, atol=1e-6)
    native = torch.rand(1, 64, 64, 3)
    assert prior.resize_to_native(native) is native


def test_add_noise_matches_scheduler(prior: DiffusionPrior) -> None:
    z = torch.randn(3, 4, 16, 16)
    eps = torch.randn_like(z)
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(
        prior.add_noise(z, eps, t), prior.scheduler.add_noise(z, eps, t), atol=1e-6
    )


def test_predict_noise_is_the_unet_output(prior: DiffusionPrior) -> None:
    z = torch.randn(2, 4, 16, 16)
    t = torch.tensor([20, 700])
    emb = prior.encode_text(["a cat", "a dog"])
    with torch.no_grad():
        expected = prior.unet(z, t, encoder_hidden_states=emb).sample
        got = prior.predict_noise(z, t, emb)
    assert torch.allclose(got, expected, atol=1e-6)
    with pytest.raises(ValueError, match="t \\[B\\]"):
        prior.predict_noise(z, torch.tensor([1]), emb)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_to_epsilon_recovers_noise(prior: DiffusionPrior, prediction_type: str) -> None:
    """Closed forms: v = α ε − σ z0, and x0-prediction z0; both must map back to ε."""
    z0 = torch.randn(3, 4, 8, 8)
    eps = torch.randn_like(z0)
    t = torch.tensor([1, 400, 990])
    abar = prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
    output = abar.sqrt() * eps - (1 - abar).sqrt() * z0 if prediction_type == "v_prediction" else z0
    old = prior.prediction_type
    try:
        prior.prediction_type = prediction_type
        assert torch.allclose(prior.to_epsilon(output, z_t, t), eps, atol=1e-4)
    finally:
        prior.prediction_type = old


def test_v_prediction_checkpoint_is_converted(tiny_prior_path: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_prior_path, tmp_path / "sd_v")
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config["_class_name"] = "DDIMScheduler"  # SD 2.1 (768) ships a DDIM config; DDPM must load it
    config_path.write_text(json.dumps(config))
    p = DiffusionPrior(str(folder), device="cpu")
    assert p.prediction_type == "v_prediction"
    z = torch.randn(2, 4, 16, 16)
    t = torch.tensor([100, 800])
    emb = p.encode_text(["a", "b"])
    with torch.no_grad():
        v = p.unet(z, t, encoder_hidden_states=emb).sample
        eps = p.predict_noise(z, t, emb)
    abar = p.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(eps, (1 - abar).sqrt() * z + abar.sqrt() * v, atol=1e-5)


def _half_precision_matches_float32(reference: DiffusionPrior, half: DiffusionPrior) -> None:
    """Same weights in lower precision: same predictions up to rounding, float32 outputs."""
    assert half.dtype == half.weights_dtype and half.unet.dtype == half.weights_dtype
    emb = half.encode_text(["a cat", "a dog"])
    assert emb.dtype == half.weights_dtype
    torch.manual_seed(0)
    z = torch.randn(2, 4, 16, 16)
    t = torch.tensor([30, 600])
    rgb = torch.rand(1, 32, 32, 3)  # small: low-precision convolutions are slow on CPU
    with torch.no_grad():
        expected_eps = reference.predict_noise(z, t, reference.encode_text(["a cat", "a dog"]))
        expected_z = reference.encode_images(rgb)
        eps = half.predict_noise(z.to(half.device), t.to(half.device), emb).cpu()
    leaf = rgb.to(half.device).requires_grad_(True)
    latents = half.encode_images(leaf)
    latents.sum().backward()
    assert eps.dtype == latents.dtype == torch.float32
    assert torch.allclose(eps, expected_eps, atol=0.05 * expected_eps.abs().max().item())
    assert torch.allclose(
        latents.detach().cpu(), expected_z, atol=0.05 * expected_z.abs().max().item()
    )
    assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU default device")
def test_bfloat16_on_cpu(prior: DiffusionPrior, tiny_prior_path: Path) -> None:
    half = DiffusionPrior(str(tiny_prior_path), dtype="bfloat16")  # device=None -> CPU here
    assert half.device.type == "cpu"
    _half_precision_matches_float32(prior, half)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_float16_on_cuda(prior: DiffusionPrior, tiny_prior_path: Path) -> None:
    half = DiffusionPrior(str(tiny_prior_path), dtype="float16")  # device=None -> CUDA
    assert half.device.type == "cuda"
    _half_precision_matches_float32(prior, half)


# ------------------------------------------------------------------------------ text
def test_text_cache_does_not_recompute(prior: DiffusionPrior) -> None:
    prior.clear_text_cache()
    batches: list[int] = []
    handle = prior.text_encoder.register_forward_hook(
        lambda module, args, output: batches.append(args[0].shape[0])
    )
    try:
        first = prior.encode_text(["a red chair", "a blue chair"])
        assert batches == [2]
        again = prior.encode_text(["a blue chair", "a red chair", "a red chair"])
        assert batches == [2], "cached prompts were re-encoded"
        assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
        assert torch.equal(again[2], first[0])
        prior.encode_text(["a red chair", "a green chair"])
        assert batches == [2, 1], "only the new prompt should be encoded"
    finally:
        handle.remove()
    # Independent computation with the tokenizer and text encoder.
    ids = prior.tokenizer(
        ["a blue chair"], padding="max_length", max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        expected = prior.text_encoder(ids.input_ids)[0]
    assert first.shape == (2, 77, 32) and first.dtype == prior.weights_dtype
    assert torch.allclose(first[1], expected[0], atol=1e-6)
    assert not first.requires_grad
    with pytest.raises(TypeError, match="list"):
        prior.encode_text("a chair")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ loading errors
def test_offline_hub_id_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("DiffusionPrior touched the network while offline")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(OfflineModelError) as info:
        DiffusionPrior(DEFAULT_MODEL)
    message = str(info.value)
    assert f"{DEFAULT_MODEL!r} are not available offline" in message
    assert f"`ra3d weights download --prior {DEFAULT_MODEL}`" in message  # fetch it elsewhere,
    assert "/path/to/sd" in message  # or a local folder ...
    assert "ra3d fit --config configs/demo.yaml" in message  # ... or the offline demo
    assert isinstance(info.value, FileNotFoundError)
    # local_files_only=True means offline even without the environment variable.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(OfflineModelError, match="not available offline"):
        DiffusionPrior(DEFAULT_MODEL, local_files_only=True)


def test_offline_hub_id_found_in_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_prior_path: Path
) -> None:
    """Offline, a hub id already in the Hugging Face cache loads from its snapshot."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-sd"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _copy(tiny_prior_path, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    p = DiffusionPrior("someone/tiny-sd", device="cpu")
    saved = load_file(str(tiny_prior_path / "unet" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(p.unet.state_dict()["conv_in.weight"], saved["conv_in.weight"])


@pytest.mark.parametrize(
    "remove, missing",
    [
        ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"),
        ("text_encoder/config.json", "text_encoder/config.json"),
        ("tokenizer/merges.txt", "tokenizer/merges.txt"),
        ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
    ],
)
def test_incomplete_local_folder_names_missing_file(
    tiny_prior_path: Path, tmp_path: Path, remove: str, missing: str
) -> None:
    folder = _copy(tiny_prior_path, tmp_path / "sd")
    (folder / remove).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing .*{missing}"):
        DiffusionPrior(str(folder), device="cpu")


def test_bad_arguments(tiny_prior_path: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a folder"):
        DiffusionPrior(str(tmp_path / "does" / "not" / "exist"))
    with pytest.raises(ConfigError, match="unknown dtype"):
        DiffusionPrior(str(tiny_prior_path), dtype="float8")


# ------------------------------------------------------------------------------ prompts
def test_prompt_embeddings_follow_view_direction(prior: DiffusionPrior) -> None:
    azimuth = torch.tensor([0.0, 30.0, 90.0, -100.0, 180.0, -150.0, 10.0])
    elevation = torch.tensor([10.0, 0.0, 20.0, 5.0, 0.0, 30.0, 75.0])
    n = len(azimuth)
    cams = make_cameras(elevation, azimuth, torch.full((n,), 2.0), torch.full((n,), 40.0), 8, 8)
    prompts = PromptEmbeddings(prior, "a teddy bear", negative_prompt="blurry")
    cond, uncond = prompts.get(cams)
    assert cond.shape == uncond.shape == (n, 77, 32)
    words = [
        view_direction(a, e) for a, e in zip(azimuth.tolist(), elevation.tolist(), strict=True)
    ]
    assert set(words) == {"front", "side", "back", "overhead"}
    prior.clear_text_cache()  # the expectation below is computed afresh, not read from the cache
    for i, word in enumerate(words):
        expected = prior.encode_text([view_prompt("a teddy bear", word)])[0]
        assert torch.allclose(cond[i], expected, atol=1e-6), (i, word)
        assert torch.allclose(uncond[i], prior.encode_text(["blurry"])[0], atol=1e-6)
    # The four views are embedded differently (otherwise the test above proves nothing).
    assert not torch.allclose(cond[0], cond[2]) and not torch.allclose(cond[2], cond[4])

    plain = PromptEmbeddings(prior, "a teddy bear", use_view_dependent=False)
    cond_plain, _ = plain.get(cams)
    expected_plain = prior.encode_text(["a teddy bear"])[0]
    assert all(torch.allclose(c, expected_plain, atol=1e-6) for c in cond_plain)


def test_prompt_embeddings_thresholds(prior: DiffusionPrior) -> None:
    cams = make_cameras(
        torch.tensor([0.0, 50.0]),
        torch.tensor([40.0, 0.0]),
        torch.ones(2),
        torch.full((2,), 40.0),
        8,
        8,
    )
    narrow = PromptEmbeddings(prior, "a cat", front_threshold=30.0, overhead_threshold=45.0)
    assert narrow.directions(cams) == ["side", "overhead"]
    assert narrow.prompts(cams) == ["a cat, side view", "a cat, overhead view"]
    with pytest.raises(ConfigError, match="overlap"):
        PromptEmbeddings(prior, "a cat", front_threshold=100.0, back_threshold=100.0)
    with pytest.raises(ConfigError, match="non-empty"):
        PromptEmbeddings(prior, "  ")


def test_building_the_tiny_model_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_stable_diffusion(tmp_path / "m", seed=5)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------ training target
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_training_target_closed_forms(prior: DiffusionPrior, prediction_type: str) -> None:
    """ε, v = √ᾱ ε − √(1 − ᾱ) z0 (Salimans & Ho) or z0, with ᾱ from the scheduler; and the
    target is consistent with to_epsilon: converting the target back gives ε."""
    z0 = torch.randn(3, 4, 8, 8)
    eps = torch.randn_like(z0)
    t = torch.tensor([3, 420, 987])
    abar = prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = {
        "epsilon": eps,
        "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * z0,
        "sample": z0,
    }[prediction_type]
    old = prior.prediction_type
    try:
        prior.prediction_type = prediction_type
        target = prior.training_target(z0, eps, t)
        torch.testing.assert_close(target, expected, rtol=1e-6, atol=1e-6)
        z_t = prior.add_noise(z0, eps, t)
        torch.testing.assert_close(prior.to_epsilon(target, z_t, t), eps, rtol=1e-3, atol=1e-3)
    finally:
        prior.prediction_type = old


def test_prior_owns_one_adapter_manager(prior: DiffusionPrior) -> None:
    from ra3d.guidance.lora import AdapterManager

    manager = prior.adapters
    assert isinstance(manager, AdapterManager) and prior.adapters is manager
    assert manager.unet is prior.unet
    assert not any(isinstance(v, AdapterManager) for v in vars(prior.unet).values())


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ra3d.guidance.prior import ra3d_cache_dir

    monkeypatch.setenv("RA3D_CACHE_DIR", str(tmp_path / "c"))
    assert ra3d_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RA3D_CACHE_DIR")
    assert ra3d_cache_dir() == Path.home() / ".cache" / "ra3d"
