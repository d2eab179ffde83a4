"""CLIP for the evaluation metrics (the relative view metric of Fig. 9 and the CLIP score)."""

from __future__ import annotations

from typing import Any


def load_clip(
    model: str, pretrained: str | None, device: str, required: bool = False
) -> tuple[Any, str | None]:
    """``(embedder, None)``, or ``(None, why)`` when the weights are not available here.

    Only one case disables the CLIP metrics instead of stopping: the default CLIP
    (``required=False``) whose weights are neither on this machine nor downloadable here. A CLIP
    the user asked for (``required=True``: a model or weights named on the command line) that
    cannot be loaded, weights on disk that open_clip cannot load, and a model name, tag or file
    that does not exist all raise a :class:`~ra3d.errors.Ra3dError` (exit 2, one line).
    """
    from ra3d.retrieval.embed import ClipLoadError, EmbedderUnavailableError, make_embedder

    try:
        return make_embedder(
            "clip", clip_model=model, clip_pretrained=pretrained, device=device
        ), None
    except ClipLoadError:
        raise
    except EmbedderUnavailableError as err:
        if required:
            raise
        cause = err.__cause__
        problem = (
            "its weights are not on this machine and cannot be downloaded here"
            if cause is None
            else f"open_clip could not fetch it ({type(cause).__name__})"
        )
        return None, (
            f"CLIP {model}/{pretrained}: {problem}. Fix: `ra3d weights download --clip "
            f"{model}:{pretrained}` on a machine with internet (then copy its Hugging Face cache "
            "here), or pass local weights with --clip-pretrained "
            "/path/to/open_clip_model.safetensors or --clip-model local-dir:FOLDER"
        )
