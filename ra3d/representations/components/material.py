"""The texture field shared by the coarse NeRF and the fine DMTet: albedo as a function of position.

ProlificDreamer's stages (threestudio) keep one colour model across the NeRF→DMTet hand-over: a
multiresolution hash-grid encoding of the point's coordinates in the bounding cube ``[-r, r]^3``
followed by a small "feature" MLP whose three outputs go through a sigmoid ("no-material": the
albedo is the colour, no lighting). threestudio copies ``encoding`` and ``feature_network``
verbatim from the NeRF into the tetrahedral geometry; here both representations compose the same
:class:`TextureField`, so that copy is one ``load_state_dict`` (:meth:`TextureField.copy_from`).

In the NeRF the encoding is shared with the density MLP (one hash grid feeds both heads, as in
threestudio's implicit volume); the DMTet owns its field outright.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ra3d.representations.components.background import make_mlp

#: ProlificDreamer's hash grid (threestudio prolificdreamer.yaml): 16 levels x 2 features,
#: 2^19 entries per level, resolutions 16 .. 4096.
DEFAULT_ENCODING: dict[str, Any] = {
    "n_levels": 16,
    "n_features_per_level": 2,
    "log2_hashmap_size": 19,
    "base_resolution": 16,
    "per_level_scale": 1.447269237440378,
}


def build_encoding(encoding: Mapping[str, Any] | nn.Module | None, backend: str) -> nn.Module:
    """The position encoding: an injected module, or a ``HashGridEncoding`` from kwargs
    (``None``: :data:`DEFAULT_ENCODING`)."""
    if isinstance(encoding, nn.Module):
        module = encoding
    elif encoding is None or isinstance(encoding, Mapping):
        kwargs = {**DEFAULT_ENCODING, **dict(encoding or {})}
        kwargs.setdefault("backend", backend)
        kwargs.setdefault("n_input_dims", 3)
        from ra3d.representations.components.hashgrid import HashGridEncoding

        try:
            module = HashGridEncoding(**kwargs)
        except TypeError as err:
            raise ValueError(f"bad encoding arguments {kwargs}: {err}") from err
    else:
        raise ValueError(
            "encoding must be a dict of HashGridEncoding arguments, an nn.Module with "
            f"n_output_dims, or None; got {type(encoding).__name__}"
        )
    n_out = getattr(module, "n_output_dims", None)
    if not isinstance(n_out, int) or n_out < 1:
        raise ValueError(
            f"the encoding {type(module).__name__} must expose a positive int n_output_dims, "
            f"got {n_out!r}"
        )
    return module


class TextureField(nn.Module):
    """Albedo ``sigmoid(MLP(enc((x + r) / 2r)))`` ``[N, 3]`` at world points ``x [N, 3]``.

    Args:
        radius: the field covers the cube ``[-radius, radius]^3`` (points outside are clamped to
            its faces). A DMTet initialised from a NeRF keeps the NeRF's radius here even when its
            tetrahedral grid is tighter, so copied weights address the same positions.
        encoding: ``HashGridEncoding`` kwargs, ``None`` (ProlificDreamer's grid) or a built module
            with ``n_output_dims`` and ``forward([N, 3] in [0, 1]) -> [N, n_output_dims]``.
        hidden_dim, n_hidden_layers: shape of the feature MLP.
        backend: hash-grid backend when ``encoding`` is built here.
    """

    def __init__(
        self,
        radius: float = 1.0,
        encoding: Mapping[str, Any] | nn.Module | None = None,
        hidden_dim: int = 64,
        n_hidden_layers: int = 1,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not radius > 0:
            raise ValueError(f"texture field radius must be > 0, got {radius}")
        self.radius = float(radius)
        self.encoding = build_encoding(encoding, backend)
        self.feature_network = make_mlp(
            int(self.encoding.n_output_dims), 3, hidden_dim, n_hidden_layers
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.feature_network[0].weight.dtype

    def encode(self, points: Tensor) -> Tensor:
        """``[N, 3]`` world points -> ``[N, E]`` encoding of their ``[0, 1]^3`` cube coordinates."""
        x01 = ((points + self.radius) / (2.0 * self.radius)).clamp(0.0, 1.0)
        return self.encoding(x01).to(self.dtype)

    def features(self, encoded: Tensor) -> Tensor:
        """Albedo logits ``[N, 3]`` from an encoding ``[N, E]`` (the NeRF shares its encoding)."""
        return self.feature_network(encoded)

    @staticmethod
    def albedo(features: Tensor) -> Tensor:
        """``[N, 3]`` albedo in (0, 1) from the logits of :meth:`features`."""
        return torch.sigmoid(features)

    def forward(self, points: Tensor) -> Tensor:
        """Albedo ``[N, 3]`` in (0, 1) at world ``points [N, 3]``."""
        return self.albedo(self.features(self.encode(points.to(self.dtype))))

    def copy_from(self, other: TextureField) -> None:
        """Load ``other``'s encoding and feature MLP (threestudio's ``copy_net``); both fields must
        have the same shapes and the same radius, or positions would be addressed differently."""
        if abs(other.radius - self.radius) > 1e-9:
            raise ValueError(
                f"cannot copy a texture field of radius {other.radius} into one of radius "
                f"{self.radius}; build the target with the source's radius"
            )
        try:
            self.load_state_dict(other.state_dict())
        except RuntimeError as err:
            raise ValueError(
                "the texture fields differ in shape (encoding or feature MLP); build the target "
                f"with the source's encoding and hidden sizes: {err}"
            ) from err
