"""Small components for system/CLI tests (importable as ``tests.toys`` from YAML)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ra3d.cameras import Cameras
from ra3d.guidance.base import Guidance, GuidanceOutput
from ra3d.representations.base import RenderOutput, Representation


class ColorField(Representation):
    """A view-dependent colour field: rgb = sigmoid(A · ray_direction + b). Has randomness in
    ``render`` during training (pixel jitter) so exact-resume tests are meaningful."""

    def __init__(self, jitter: float = 0.1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 3) * 0.1)
        self.encoding_bias = nn.Parameter(torch.randn(3) * 0.1)
        self.jitter = jitter

    def render(self, cameras: Cameras) -> RenderOutput:
        _, dirs = cameras.rays()  # [B, H, W, 3]
        if self.training:
            dirs = dirs + self.jitter * torch.randn_like(dirs)
        rgb = torch.sigmoid(dirs @ self.weight.T + self.encoding_bias)
        ones = torch.ones_like(rgb[..., :1])
        return RenderOutput(rgb=rgb, opacity=ones, depth=ones)

    def regularizers(self, output: RenderOutput) -> dict[str, Tensor]:
        return {"sparsity": output.rgb.mean()}

    @property
    def regularizer_names(self) -> tuple[str, ...]:
        return ("sparsity",)


class NoisyTargetGuidance(Guidance):
    """Pulls renders towards a grey target plus fresh noise each call; holds a frozen 'prior'
    weight (like a diffusion UNet) and a trainable adapter."""

    def __init__(self, target: float = 0.3) -> None:
        super().__init__()
        self.target = target
        self.prior_weight = nn.Parameter(torch.randn(64), requires_grad=False)
        self.register_buffer("prior_buffer", torch.arange(4.0))
        self.adapter = nn.Parameter(torch.zeros(1))

    def trainable_parameter_groups(self) -> list[dict]:
        return [{"params": [self.adapter], "lr": 1e-2, "name": "adapter"}]

    def forward(self, rgb, cameras, prompt, reference_rgb=None) -> GuidanceOutput:
        noisy_target = self.target + 0.05 * torch.randn_like(rgb) + self.adapter
        loss = ((rgb - noisy_target.detach()) ** 2).mean() + (self.adapter - 0.1).pow(2).sum()
        return GuidanceOutput(loss=loss, terms={"loss_toy": loss})

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        return ("toy",)


class FreeImage(Representation):
    """A representation that *is* its image: ``rgb_foreground = colour``, ``opacity = alpha``,
    the same at every camera (for closed-form tests of render-space losses)."""

    def __init__(self, height: int = 4, width: int = 4, colour: float | None = None) -> None:
        super().__init__()
        init = (
            torch.rand(height, width, 3)
            if colour is None
            else torch.full((height, width, 3), colour)
        )
        self.colour = nn.Parameter(init)
        self.alpha = nn.Parameter(torch.ones(height, width, 1) * 0.5)

    def render(self, cameras: Cameras) -> RenderOutput:
        b, size = len(cameras), (cameras.height, cameras.width)
        colour, alpha = self.colour, self.alpha
        if size != tuple(colour.shape[:2]):  # nearest-neighbour resize to the camera's size
            colour = F.interpolate(colour.permute(2, 0, 1)[None], size=size)[0].permute(1, 2, 0)
            alpha = F.interpolate(alpha.permute(2, 0, 1)[None], size=size)[0].permute(1, 2, 0)
        fg = colour.expand(b, *colour.shape)
        alpha = alpha.expand(b, *alpha.shape)
        background = torch.ones_like(fg)
        rgb = fg + (1.0 - alpha) * background
        return RenderOutput(rgb=rgb, opacity=alpha, depth=torch.zeros_like(alpha),
                            extras={"rgb_foreground": fg, "background": background})  # fmt: skip


class FourierEncoding(nn.Module):
    """A tiny learnable random-Fourier-feature encoding standing in for the hash grid (smooth,
    twice differentiable): ``sin(x @ P)`` with ``P [3, n_output_dims]`` seeded."""

    def __init__(self, n_output_dims: int = 6, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(3.0 * torch.randn(3, n_output_dims, generator=g))
        self.n_output_dims = n_output_dims

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x @ self.proj.to(x.dtype))


# ---------------------------------------------------------------------- a NeRF checkpoint
NERF_ARGS = {
    "radius": 1.0,
    "n_samples_per_ray": 16,
    "hidden_dim": 16,
    "normal_type": "none",
    "use_occupancy_grid": False,
    "encoding": {"n_levels": 4, "log2_hashmap_size": 10, "base_resolution": 8, "backend": "torch"},
}


def write_nerf_checkpoint(run: Path) -> Path:
    """Write into ``run`` a 2-particle NeRF checkpoint as ra3d fit writes it (state dict + ra3d
    record), with one CC-BY retrieved asset, built directly (no training); returns ``run``."""
    from ra3d.representations.nerf import InstantNGPNeRF
    from ra3d.training.checkpoint import RunRecord

    (run / "checkpoints").mkdir()
    torch.manual_seed(0)
    state = {}
    for i in range(2):
        for key, value in InstantNGPNeRF(**NERF_ARGS).state_dict().items():
            state[f"particles.{i}.{key}"] = value
    asset = {
        "uid": "abc123", "caption": "a brown teddy bear", "score": 0.9, "mesh_path": "/nowhere.glb",
        "source": "objaverse", "license": "CC-BY-4.0", "attribution": "Jane Doe",
    }  # fmt: skip
    record = RunRecord(
        prompt="a teddy bear",
        n_particles=2,
        representation={
            "class_path": "ra3d.representations.nerf.InstantNGPNeRF",
            "init_args": NERF_ARGS,
        },
        retrieval={"assets": [asset], "assignment": [0, 0]},
    )
    torch.save({"state_dict": state, "ra3d": record.to_dict()}, run / "checkpoints" / "last.ckpt")
    return run


def max_density(run: Path) -> float:
    """The highest density of particle 0 of a run on a 24³ grid inside its sphere."""
    from ra3d.training.checkpoint import load_run

    nerf = load_run(run).particles[0]
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 24)] * 3, indexing="ij"), -1).reshape(
        -1, 3
    )
    with torch.no_grad():
        return float(nerf.density(grid[grid.norm(dim=-1) <= 1]).max())
