"""Render-space fidelity of a particle to its assigned asset: silhouette IoU and foreground PSNR.

Both compare two :class:`~ra3d.representations.base.RenderOutput` taken at the *same* cameras, so
they measure what Eq. 11 pulls together (``g(θ, ψ)`` against ``g(θ_ret, ψ)``). They are logged at
validation (``val/asset_iou``, ``val/asset_psnr``) and reported by ``ra3d evaluate``.

* **Silhouette IoU**: opacities thresholded at 0.5, Jaccard index of the two masks
  (torchmetrics' ``binary_jaccard_index``), per image.
* **Foreground PSNR**: the premultiplied foreground colours (``rgb_foreground``, i.e. colour ×
  opacity, background removed) compared over the pixels covered by *either* silhouette, with a
  data range of 1 (torchmetrics' ``peak_signal_noise_ratio``). Comparing premultiplied colour keeps
  the particle's background (random or neural) out of the score, as in the asset term itself.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_jaccard_index
from torchmetrics.functional.image import peak_signal_noise_ratio

from ra3d.representations.base import RenderOutput

SILHOUETTE_THRESHOLD = 0.5
#: PSNR reported when the two foregrounds are identical (or both empty): a finite cap keeps
#: averages and CSV files readable.
PSNR_CAP_DB = 100.0


def foreground_rgb(output: RenderOutput) -> Tensor:
    """``[B, H, W, 3]`` colour × opacity without the background.

    Uses ``extras["rgb_foreground"]`` when the representation provides it (NeRF, mesh assets,
    DMTet), else removes a known ``extras["background"]``; a representation with neither is
    assumed to have been rendered on black.
    """
    if "rgb_foreground" in output.extras:
        return output.extras["rgb_foreground"]
    if "background" in output.extras:
        return output.rgb - (1.0 - output.opacity) * output.extras["background"]
    return output.rgb


def silhouette_iou(
    opacity_a: Tensor, opacity_b: Tensor, threshold: float = SILHOUETTE_THRESHOLD
) -> Tensor:
    """Per-image IoU ``[B]`` of the masks ``opacity > threshold`` of two ``[B, H, W, 1]`` opacity
    maps. Two empty masks count as a perfect match (IoU 1)."""
    if opacity_a.shape != opacity_b.shape:
        raise ValueError(
            f"opacity maps must have one shape, got {tuple(opacity_a.shape)} and "
            f"{tuple(opacity_b.shape)}"
        )
    ious = []
    for a, b in zip(opacity_a.detach().float(), opacity_b.detach().float(), strict=True):
        mask_a, mask_b = a > threshold, b > threshold
        if not bool((mask_a | mask_b).any()):
            ious.append(torch.tensor(1.0))
            continue
        ious.append(
            binary_jaccard_index(mask_a.flatten().long(), mask_b.flatten().long(), threshold=0.5)
        )
    return torch.stack(ious).cpu()


def foreground_psnr(output: RenderOutput, reference: RenderOutput) -> Tensor:
    """Per-image PSNR ``[B]`` in dB between the premultiplied foregrounds of two renders, over the
    union of their silhouettes (see the module docstring); capped at :data:`PSNR_CAP_DB`."""
    fg_a = foreground_rgb(output).detach().float().clamp(0, 1)
    fg_b = foreground_rgb(reference).detach().float().clamp(0, 1).to(fg_a.device)
    if fg_a.shape != fg_b.shape:
        raise ValueError(
            f"renders must have one shape, got {tuple(fg_a.shape)} and {tuple(fg_b.shape)}"
        )
    union = (output.opacity.detach() > SILHOUETTE_THRESHOLD) | (
        reference.opacity.detach().to(fg_a.device) > SILHOUETTE_THRESHOLD
    )  # [B, H, W, 1]
    values = []
    for a, b, m in zip(fg_a, fg_b, union[..., 0], strict=True):
        if not bool(m.any()) or torch.equal(a[m], b[m]):
            values.append(torch.tensor(PSNR_CAP_DB))
            continue
        psnr = peak_signal_noise_ratio(a[m], b[m], data_range=1.0)
        values.append(psnr.clamp(max=PSNR_CAP_DB).cpu())
    return torch.stack(values)


__all__ = ["foreground_psnr", "foreground_rgb", "silhouette_iou"]
