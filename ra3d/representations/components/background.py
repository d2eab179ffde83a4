"""Backgrounds for volume renders: a neural environment map and a solid colour.

A NeRF trained by score distillation needs a background the diffusion prior can "explain" apart
from the object; otherwise density leaks into the empty space to paint it. ProlificDreamer's coarse
stage (threestudio) uses a small MLP of the view direction — a learnable environment map at
infinity — and, during training, replaces it by a random solid colour half of the time so the
object cannot rely on any fixed background (:func:`augment_background`, applied by the NeRF and
the DMTet in training mode).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class FrequencyEncoding(nn.Module):
    """``x -> [x, sin(2^k π x), cos(2^k π x)]_{k < L}``: a small positional encoding so the tiny
    environment MLP can express more than a linear function of the direction."""

    def __init__(self, n_input_dims: int = 3, n_frequencies: int = 4) -> None:
        super().__init__()
        if n_frequencies < 0:
            raise ValueError(f"n_frequencies must be >= 0, got {n_frequencies}")
        self.n_frequencies = n_frequencies
        self.n_output_dims = n_input_dims * (1 + 2 * n_frequencies)

    def forward(self, x: Tensor) -> Tensor:  # [..., D] -> [..., D (1 + 2L)]
        if self.n_frequencies == 0:
            return x
        freqs = math.pi * 2.0 ** torch.arange(self.n_frequencies, device=x.device, dtype=x.dtype)
        xf = (x[..., None, :] * freqs[:, None]).flatten(-2)  # [..., L * D]
        return torch.cat([x, torch.sin(xf), torch.cos(xf)], dim=-1)


def make_mlp(n_in: int, n_out: int, hidden_dim: int, n_hidden_layers: int) -> nn.Sequential:
    """``n_hidden_layers`` ReLU layers of ``hidden_dim`` then a linear output (threestudio's
    "VanillaMLP" shape; ``n_hidden_layers = 0`` gives a single linear map)."""
    if hidden_dim < 1:
        raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
    if n_hidden_layers < 0:
        raise ValueError(f"n_hidden_layers must be >= 0, got {n_hidden_layers}")
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU(inplace=False)]
        width = hidden_dim
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class NeuralEnvironmentMap(nn.Module):
    """Background colour as a function of the unit view direction only: ``sigmoid(MLP(enc(d)))``.

    Defaults follow threestudio's neural-environment-map background (16 neurons, 2 hidden
    layers, sigmoid colour), with a 4-frequency encoding of the direction in place of its
    spherical-harmonics encoding.
    """

    def __init__(self, n_frequencies: int = 4, hidden_dim: int = 16, n_hidden_layers: int = 2):
        super().__init__()
        self.encoding = FrequencyEncoding(3, n_frequencies)
        self.network = make_mlp(self.encoding.n_output_dims, 3, hidden_dim, n_hidden_layers)

    def forward(self, dirs: Tensor) -> Tensor:  # [..., 3] unit directions -> [..., 3] in (0, 1)
        dtype = self.network[0].weight.dtype
        return torch.sigmoid(self.network(self.encoding(dirs.to(dtype))))


class SolidBackground(nn.Module):
    """A constant colour, e.g. white, so renders compare cleanly against a mesh asset's renders."""

    color: Tensor

    def __init__(self, color: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.register_buffer("color", validate_color(color, "background_color"))

    def forward(self, dirs: Tensor) -> Tensor:  # [..., 3] -> [..., 3]
        return self.color.to(dirs.dtype).expand(*dirs.shape[:-1], 3)


def validate_color(color: Sequence[float], name: str) -> Tensor:
    """``[3]`` float tensor of an RGB colour in [0, 1], or a clear error."""
    try:
        values = [float(c) for c in color]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be three numbers in [0, 1], got {color!r}") from err
    if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
        raise ValueError(f"{name} must be three numbers in [0, 1], got {color!r}")
    return torch.tensor(values, dtype=torch.float32)


BACKGROUNDS: tuple[str, ...] = ("neural_env", "solid")


def make_background(kind: str, color: Sequence[float] = (1.0, 1.0, 1.0)) -> nn.Module:
    """``"neural_env"`` -> :class:`NeuralEnvironmentMap`; ``"solid"`` -> :class:`SolidBackground`."""
    if kind == "neural_env":
        return NeuralEnvironmentMap()
    if kind == "solid":
        return SolidBackground(color)
    raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")


def augment_background(bg: Tensor, probability: float) -> Tensor:
    """threestudio's random-background augmentation: each of the ``B`` images of ``bg [B, H, W, 3]``
    is replaced, with ``probability``, by one random solid colour (uniform in [0, 1]^3).

    Draws ``rand(B)`` then ``rand(B, 3)`` from the global generator on ``bg``'s device (this order
    is part of exact resume: changing it changes every later random number).
    """
    b = bg.shape[0]
    pick = torch.rand(b, device=bg.device) < probability  # [B]
    colors = torch.rand(b, 3, device=bg.device, dtype=bg.dtype)
    return torch.where(pick[:, None, None, None], colors[:, None, None, :], bg)
