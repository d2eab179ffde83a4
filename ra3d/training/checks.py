"""The checks every way into a run shares: the prompt, the particle count, and that a resumed or
inherited checkpoint belongs to the same prompt and particle count.

The command line (before anything heavy loads), the preflight of a parsed config, the system's
constructor and the stage hand-over all call these, so each rule and its message exist once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ra3d.errors import CheckpointError, ConfigError

EMPTY_PROMPT = (
    'the prompt is empty: pass one with --prompt "a teddy bear" (or set model.prompt in the config)'
)


def check_prompt(prompt: Any, inherited: bool = False) -> str:
    """The stripped prompt; a :class:`ConfigError` when it is missing or blank, unless the run
    inherits its prompt from an earlier stage (``inherited``; then ``""`` may come back)."""
    if isinstance(prompt, str) and prompt.strip():
        return prompt.strip()
    if inherited and (prompt is None or isinstance(prompt, str)):
        return ""
    raise ConfigError(EMPTY_PROMPT)


def check_n_particles(n: Any) -> int:
    """``n_particles`` as an int >= 1, else a :class:`ConfigError`."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"model.n_particles must be an integer >= 1, got {n!r}")
    return n


def check_same_particles(source: str | Path, recorded: int, wanted: int) -> None:
    """A checkpoint of ``recorded`` particles can only continue as a run of as many."""
    if recorded != wanted:
        raise CheckpointError(
            f"{source} has {recorded} particle(s) but this config asks for {wanted}; set "
            f"model.n_particles {recorded}"
        )


def check_same_prompt(
    source: str | Path, recorded: str, prompt: str | None, later_stage: bool
) -> None:
    """A resume continues its own prompt; a later stage (``init_from``) keeps the earlier one's.
    ``prompt`` None or blank means "not given" and always passes."""
    if prompt is None or not prompt.strip() or prompt.strip() == recorded:
        return
    if later_stage:
        raise ConfigError(
            f"{source} was trained for {recorded!r}, not {prompt.strip()!r}; a later stage keeps "
            "the earlier stage's prompt (leave --prompt out)"
        )
    raise CheckpointError(
        f"{source} was trained for the prompt {recorded!r}, not {prompt.strip()!r}: a resume "
        "continues the same run. Start a new run (without --ckpt_path) for a new prompt"
    )


__all__ = [
    "EMPTY_PROMPT",
    "check_n_particles",
    "check_prompt",
    "check_same_particles",
    "check_same_prompt",
]
