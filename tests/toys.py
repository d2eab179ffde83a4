"""Small components for system/CLI tests (importable as ``tests.toys`` from YAML)."""

from __future__ import annotations

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
