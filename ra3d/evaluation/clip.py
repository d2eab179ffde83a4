"""CLIP for the evaluation metrics (the relative view metric of Fig. 9 and the CLIP score)."""

from __future__ import annotations

from typing import Any


def load_clip(model: str, pretrained: str | None, device: str) -> tuple[Any, str | None]:
    """``(embedder, None)``, or ``(None, why)`` when the weights are not available here.

    Unavailable weights (offline, not cached) only disable the CLIP metrics; a model name, tag
    or file that does not exist raises (the user mistyped something).
    """
    from ra3d.retrieval.embed import EmbedderUnavailableError, make_embedder

    try:
        return make_embedder(
            "clip", clip_model=model, clip_pretrained=pretrained, device=device
        ), None
    except EmbedderUnavailableError as err:
        cause = err.__cause__
        problem = (
            "its weights are not on this machine and cannot be downloaded here"
            if cause is None
            else f"open_clip could not load it ({type(cause).__name__}: {cause})"
        )
        return None, (
            f"CLIP {model}/{pretrained}: {problem}. Fix: pass local weights with "
            "--clip-pretrained /path/to/open_clip_model.safetensors or --clip-model local-dir:FOLDER"
        )
