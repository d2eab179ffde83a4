"""``ra3d fit|validate|test|predict``: the LightningCLI subcommands.

YAML configs name classes with ``class_path``/``init_args``, so new representations, guidances
or retrievers plug in by naming their class. ``--prompt`` is a shortcut for ``--model.prompt`` and
``--init_from`` for ``--model.init_from``. Before LightningCLI loads anything heavy, the paths and
the parsed config are checked (:mod:`ra3d.training.preflight`); a fit takes its run folder's lock,
keeps the folder's ``metrics.csv`` history across resumes and never overwrites an earlier
``config.yaml`` (:mod:`ra3d.training.run_folder`, :mod:`ra3d.training.metrics_history`).

:func:`run` is the Python entry point (``ra3d chain`` runs each stage through it); it owns a
:class:`RunState` per call, so nothing is left behind between calls.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ra3d.errors import CheckpointError, ConfigError, Interrupted, Ra3dError
from ra3d.training import metrics_history, preflight, run_folder
from ra3d.training.callbacks import DivergenceGuard, FinalCheckpoint, GracefulStop
from ra3d.training.checks import check_prompt
from ra3d.training.data import RandomCameraDataModule
from ra3d.training.progress import StepProgressBar
from ra3d.training.system import Ra3dSystem

logger = logging.getLogger(__name__)

SUBCOMMANDS = ("fit", "validate", "test", "predict")
SHORTCUTS = {"--prompt": "--model.prompt", "--init_from": "--model.init_from"}


def rewrite_shortcuts(argv: list[str]) -> list[str]:
    """``--prompt X`` → ``--model.prompt X``, ``--init_from P`` → ``--model.init_from P`` (also
    with ``=``)."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out.append(SHORTCUTS[name] + eq + value if name in SHORTCUTS else arg)
    return out


def _option_values(argv: list[str], name: str) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
    return values


def _check_config_file(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--config {path} is a directory; pass a YAML file, e.g. {p}/*.yaml")
    if not p.is_file():
        raise ConfigError(
            f"config file not found: {path}. The shipped configs are in the repository's "
            "configs/ folder (e.g. configs/demo.yaml)."
        )
    try:
        head = p.read_bytes()[:65536]
        head.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file {path} is not a text (YAML) file; pass a YAML config such as "
            "configs/demo.yaml"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    if b"\x00" in head:
        raise ConfigError(f"config file {path} is binary, not YAML; pass e.g. configs/demo.yaml")


def check_arguments(argv: list[str], records: dict[str, Any]) -> None:
    """Fail early, with the fix, on what LightningCLI would report deep inside (or only after
    loading the prior): config files, a blank prompt, checkpoint paths."""
    for path in _option_values(argv, "--config") + _option_values(argv, "-c"):
        _check_config_file(path)
    for prompt in _option_values(argv, "--model.prompt"):
        check_prompt(prompt)
    for path in _option_values(argv, "--ckpt_path"):
        if path in preflight.LIGHTNING_CKPT_ALIASES:
            continue  # preflight.check_checkpoint names the supported form
        if Path(path).is_dir():
            raise CheckpointError(
                f"--ckpt_path {path} is a directory; pass the checkpoint file, e.g. "
                f"{Path(path) / 'checkpoints' / 'last.ckpt'}"
            )
        if not Path(path).is_file():
            raise CheckpointError(
                f"checkpoint not found: {path}. Pass the .ckpt file of an earlier run, e.g. "
                "outputs/<run>/version_0/checkpoints/last.ckpt"
            )
        preflight.read_checked_checkpoint(path, records)  # before LightningCLI reads it


@dataclass
class RunState:
    """What one ``ra3d fit|validate|test|predict`` call owns: its run folder, the clean-ups to run
    when it returns (lock, metrics merge), the checkpoint records it has read, and the callback
    that saves its checkpoint (for the message after a stop)."""

    run_dir: Path | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)
    final_checkpoint: FinalCheckpoint | None = None

    def cleanup(self) -> None:
        while self.cleanups:
            try:
                self.cleanups.pop()()
            except OSError as err:  # never hide the run's own outcome behind a cleanup error
                logger.warning("cleanup failed: %s", err)

    def describe_stop(self, err: Interrupted) -> Interrupted:
        """Fill in which checkpoint the stopped run saved, or the last one it had saved."""
        final = self.final_checkpoint
        if err.saved is None and final is not None:
            err.saved = final.saved_on_stop
        if err.saved is None and final is not None and self.run_dir is not None:
            path = self.run_dir / "checkpoints" / final.filename
            if path.is_file():
                err.kept = str(path)
        return err


def check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".ra3d-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"cannot write the {what} {folder} ({reason}); choose a writable folder with "
            "--trainer.logger.init_args.save_dir (or --trainer.default_root_dir)"
        ) from None


class RunConfig(SaveConfigCallback):
    """Lightning's config saver that never overwrites an earlier run's ``config.yaml``: a resume
    (``ckpt_path`` set) writes ``config.resume-N.yaml`` beside it."""

    def setup(self, trainer, pl_module, stage) -> None:  # noqa: ANN001
        if trainer.log_dir is not None and stage == "fit":
            resuming = self.config.get("ckpt_path") is not None
            self.config_filename = run_folder.config_filename(trainer.log_dir, resuming)
        super().setup(trainer, pl_module, stage)


class Ra3dCLI(LightningCLI):
    """LightningCLI with ra3d's checks, callbacks and run-folder rules (module docstring)."""

    def __init__(self, *args: Any, run_state: RunState, **kwargs: Any) -> None:
        self.run_state = run_state  # LightningCLI parses and runs inside its constructor
        super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        cfg = self.config[sub]
        preflight.check_config(cfg.as_dict(), sub, self.run_state.records)
        if sub == "fit":
            self._resume_into_own_folder(cfg)

    def _resume_into_own_folder(self, cfg) -> None:  # noqa: ANN001
        """``--ckpt_path <save_dir>/<name>/version_N/checkpoints/last.ckpt`` continues in
        ``version_N`` (unless a version is given), so a run keeps one folder and history."""
        run_dir = run_folder.resume_run_dir(cfg.get("ckpt_path"))
        logger_cfg = cfg.trainer.get("logger")
        init = getattr(logger_cfg, "init_args", None)  # a Namespace, or None without a logger
        if run_dir is None or init is None or init.get("version") is not None:
            return
        save_dir, name = init.get("save_dir"), init.get("name")
        if save_dir is None:
            return
        base = Path(save_dir) / name if name else Path(save_dir)
        if base.resolve() == run_dir.parent:
            init.version = run_dir.name

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Ra3dError:
            raise
        except ValueError as err:  # ra3d's constructors say what is wrong in their message
            raise ConfigError(f"invalid configuration: {err}") from err

    def instantiate_trainer(self, **kwargs: Any):  # noqa: ANN201
        trainer_cfg = self.config_init[self.subcommand].get("trainer", {})
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if self.subcommand == "fit":
            for cls in (FinalCheckpoint, DivergenceGuard, GracefulStop):
                if not any(isinstance(c, cls) for c in callbacks):
                    callbacks.append(cls())
        if trainer_cfg.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(StepProgressBar())
        return super().instantiate_trainer(**kwargs, callbacks=callbacks)

    def _run_dir(self) -> Path:
        trainer = self.trainer
        log_dir = trainer.log_dir if trainer.logger is not None else None
        return Path(log_dir or trainer.default_root_dir)

    def before_fit(self) -> None:
        state = self.run_state
        run_dir = self._run_dir()
        check_writable(run_dir, "run folder")
        lock = run_folder.RunLock(run_dir).acquire(" ".join(sys.argv))
        state.cleanups.append(lock.release)
        state.run_dir = run_dir
        state.final_checkpoint = next(
            (c for c in self.trainer.callbacks if isinstance(c, FinalCheckpoint)), None
        )
        ckpt = self.config_init["fit"].get("ckpt_path")
        own = ckpt is not None and run_folder.resume_run_dir(ckpt) == run_dir.resolve()
        if not own:
            held = run_folder.holds_a_run(run_dir)
            if held:
                raise ConfigError(
                    f"the run folder {run_dir} already holds a run ({held}); resume it with "
                    f"--ckpt_path {run_dir / 'checkpoints' / 'last.ckpt'}, or start a new run "
                    "in a new folder (leave --trainer.logger.init_args.version unset)"
                )
            return
        record = preflight.read_checked_checkpoint(ckpt, state.records)
        metrics_history.set_aside_metrics(run_dir, record.global_step)
        state.cleanups.append(lambda: metrics_history.merge_metrics(run_dir))

    def _before_eval(self) -> None:
        check_writable(self._run_dir(), "output folder")

    before_validate = before_test = before_predict = _before_eval


# Known, harmless Lightning/torch notices that would bury ra3d's own log lines: the frozen prior is
# in eval mode on purpose, ra3d's own checkpoints are what --ckpt_path loads, and ra3d itself keeps
# earlier metrics.csv rows (ra3d.training.metrics_history) that the CSV logger's notice says it
# deletes.
_QUIET_WARNINGS = (
    r".*module\(s\) in eval mode.*",
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*does not have many workers.*",
    r".*Experiment logs directory .* exists and is not empty.*",
    r".*Checkpoint directory .* exists and is not empty.*",
)
_QUIET_LOGGERS = (
    "lightning.pytorch.trainer.connectors.checkpoint_connector",  # "weights_only not set"
    "lightning.pytorch.trainer.connectors.logger_connector.logger_connector",  # ads
)


class _DropInfo(logging.Filter):
    """Lets only warnings and errors of a Lightning logger through (added and removed around a
    run; Lightning's loggers themselves are not changed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    drop = _DropInfo()
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for log in loggers:
            log.addFilter(drop)
        try:
            yield
        finally:
            for log in loggers:
                log.removeFilter(drop)


def run(argv: list[str]) -> int:
    """``ra3d fit|validate|test|predict ARGS`` (``argv`` starts with the subcommand); returns the
    exit code, raises :class:`~ra3d.errors.Ra3dError` / :class:`~ra3d.errors.Interrupted`."""
    if not argv or argv[0] not in SUBCOMMANDS:
        raise ConfigError(f"expected one of {', '.join(SUBCOMMANDS)}, got {argv[:1]}")
    rest = rewrite_shortcuts(argv[1:])
    state = RunState()
    saved_argv = sys.argv
    try:
        check_arguments(rest, state.records)
        sys.argv = ["ra3d", argv[0], *rest]  # LightningCLI reads sys.argv; passing args too warns
        with _quiet_lightning():
            Ra3dCLI(
                Ra3dSystem,
                RandomCameraDataModule,
                seed_everything_default=0,
                save_config_callback=RunConfig,
                save_config_kwargs={"overwrite": True},
                trainer_defaults={"default_root_dir": "outputs"},
                run_state=state,
            )
    except MisconfigurationException as err:
        raise ConfigError(f"invalid trainer setting: {err}") from err
    except Interrupted as err:
        raise state.describe_stop(err) from None
    except SIGTERMException:  # Lightning's own SIGTERM stop (during validation)
        raise state.describe_stop(Interrupted(signal.SIGTERM)) from None
    finally:
        sys.argv = saved_argv
        state.cleanup()
    return 0


main_lightning = run  # the command table's entry point

__all__ = ["RunState", "check_arguments", "rewrite_shortcuts", "run"]
