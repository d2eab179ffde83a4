"""The ``ra3d`` command.

``ra3d fit|validate|test|predict`` are LightningCLI subcommands (YAML with ``class_path`` /
``init_args``, so new representations or guidances plug in by naming their class). ``ra3d
retrieve`` and ``ra3d db`` are the retrieval tools. ``--prompt`` is a shortcut for
``--model.prompt``.

Exit codes (see :mod:`ra3d.errors`): 0 success, 1 a bug (traceback), 2 bad input, 3 training
diverged, 4 run folder in use, 130 Ctrl-C, 143 SIGTERM — the last two after saving a checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ra3d.errors import CheckpointError, ConfigError, Interrupted, Ra3dError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
USAGE = """usage: ra3d <command> [options]

commands:
  fit        train (ra3d fit --config configs/coarse_nerf.yaml --prompt "a teddy bear")
  validate   render validation orbits of a checkpoint
  test       render a full turntable of a checkpoint
  predict    same as test, for scripting
  retrieve   search the 3D asset database (ra3d retrieve "a teddy bear" -k 3)
  db         inspect or import asset databases (ra3d db info, ra3d db import ...)
  adapt      lightweight adaptation of the prior on asset renders, Eq. 12 (ra3d adapt --prompt ...)
  export     textured mesh export of a checkpoint (ra3d export CKPT --format glb obj)
  evaluate   relative CLIP view metric, asset fidelity, plots (ra3d evaluate RUN_DIR [RUN_DIR ...])
  chain      the whole workflow: coarse NeRF -> fine DMTet -> texture -> GLB (ra3d chain --prompt ...)

run `ra3d <command> --help` for the options of a command.

exit codes: 0 done, 2 bad input, 3 training diverged, 4 run folder in use,
            130 stopped by Ctrl-C, 143 stopped by SIGTERM (both save a checkpoint first)
"""


def _rewrite_shortcuts(argv: list[str]) -> list[str]:
    """``--prompt X`` → ``--model.prompt X``, ``--init_from P`` → ``--model.init_from P`` (also ``=``)."""
    out = []
    for arg in argv:
        if arg == "--prompt":
            out.append("--model.prompt")
        elif arg.startswith("--prompt="):
            out.append("--model.prompt=" + arg.split("=", 1)[1])
        elif arg == "--init_from":
            out.append("--model.init_from")
        elif arg.startswith("--init_from="):
            out.append("--model.init_from=" + arg.split("=", 1)[1])
        else:
            out.append(arg)
    return out


def _option_values(argv: list[str], name: str) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
    return values


def _check_paths(argv: list[str]) -> None:
    """Fail early, with the fix, on paths that LightningCLI would report deep inside."""
    for path in _option_values(argv, "--config") + _option_values(argv, "-c"):
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
            raise ConfigError(
                f"config file {path} is binary, not YAML; pass e.g. configs/demo.yaml"
            )
    for prompt in _option_values(argv, "--model.prompt"):
        if not prompt.strip():
            raise ConfigError('the prompt is empty: pass one with --prompt "a teddy bear"')
    for path in _option_values(argv, "--ckpt_path"):
        if path in ("last", "best", "hpc", "registry"):
            continue
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
        from ra3d.preflight import read_checked_checkpoint

        read_checked_checkpoint(path)  # before LightningCLI reads its hyper-parameters


@dataclass
class _RunState:
    """What the running subcommand owns, for cleanup and the exit message (one per process)."""

    run_dir: Path | None = None
    resuming: bool = False
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    final_checkpoint: Any = None

    def cleanup(self) -> None:
        while self.cleanups:
            try:
                self.cleanups.pop()()
            except OSError as err:  # never hide the run's own outcome behind a cleanup error
                logging.getLogger("ra3d.cli").warning("cleanup failed: %s", err)


_RUN = _RunState()


def _check_writable(folder: Path, what: str) -> None:
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


def _cli_class() -> type:
    """Build the LightningCLI subclass (Lightning is imported only for Lightning subcommands)."""
    from lightning.pytorch.callbacks import ProgressBar
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    from ra3d import preflight, runlock
    from ra3d.callbacks import DivergenceGuard, FinalCheckpoint, GracefulStop
    from ra3d.progress import StepProgressBar

    class RunConfig(SaveConfigCallback):
        """Lightning's config saver that never overwrites an earlier run's ``config.yaml``."""

        def setup(self, trainer, pl_module, stage) -> None:  # noqa: ANN001
            if trainer.log_dir is not None and stage == "fit":
                self.config_filename = runlock.config_filename(trainer.log_dir, _RUN.resuming)
            super().setup(trainer, pl_module, stage)

    class Ra3dCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            sub = self.subcommand
            cfg = self.config[sub]
            preflight.check_config(cfg.as_dict(), sub)
            if sub == "fit":
                self._resume_into_own_folder(cfg)

        def _resume_into_own_folder(self, cfg) -> None:  # noqa: ANN001
            """``--ckpt_path <save_dir>/<name>/version_N/checkpoints/last.ckpt`` continues in
            ``version_N`` (unless a version is given), so a run keeps one folder and history."""
            run_dir = preflight.resume_run_dir(cfg.get("ckpt_path"))
            logger = cfg.trainer.get("logger")
            init = getattr(logger, "init_args", None)
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
            run_dir = self._run_dir()
            _check_writable(run_dir, "run folder")
            lock = runlock.RunLock(run_dir).acquire(" ".join(sys.argv))
            _RUN.cleanups.append(lock.release)
            _RUN.run_dir = run_dir
            _RUN.final_checkpoint = next(
                (c for c in self.trainer.callbacks if isinstance(c, FinalCheckpoint)), None
            )
            ckpt = self.config_init["fit"].get("ckpt_path")
            _RUN.resuming = ckpt is not None
            own = ckpt is not None and preflight.resume_run_dir(ckpt) == run_dir.resolve()
            if not own:
                held = runlock.holds_a_run(run_dir)
                if held:
                    raise ConfigError(
                        f"the run folder {run_dir} already holds a run ({held}); resume it with "
                        f"--ckpt_path {run_dir / 'checkpoints' / 'last.ckpt'}, or start a new run "
                        "in a new folder (leave --trainer.logger.init_args.version unset)"
                    )
                return
            record = preflight.read_checked_checkpoint(ckpt)
            runlock.set_aside_metrics(run_dir, record.global_step)
            _RUN.cleanups.append(lambda: runlock.merge_metrics(run_dir))

        def _before_eval(self) -> None:
            _check_writable(self._run_dir(), "output folder")

        before_validate = before_test = before_predict = _before_eval

    return Ra3dCLI, RunConfig


# Known, harmless Lightning/torch notices that would bury ra3d's own log lines: the frozen prior is
# in eval mode on purpose, ra3d's own checkpoints are what --ckpt_path loads, and ra3d itself keeps
# earlier metrics.csv rows (ra3d.runlock) that the CSV logger's notice says it deletes.
_QUIET_WARNINGS = (
    r".*module\(s\) in eval mode.*",
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*does not have many workers.*",
    r".*Experiment logs directory .* exists and is not empty.*",
    r".*Checkpoint directory .* exists and is not empty.*",
)


def run_lightning(argv: list[str]) -> int:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from ra3d.data import RandomCameraDataModule
    from ra3d.system import RA3DSystem

    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in (
        "lightning.pytorch.trainer.connectors.checkpoint_connector",  # "weights_only not set"
        "lightning.pytorch.trainer.connectors.logger_connector.logger_connector",  # ads
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    cli_class, run_config = _cli_class()
    saved_argv = sys.argv
    sys.argv = ["ra3d", *argv]  # LightningCLI reads sys.argv; passing args too only warns
    try:
        cli_class(
            RA3DSystem,
            RandomCameraDataModule,
            seed_everything_default=0,
            save_config_callback=run_config,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"default_root_dir": "outputs"},
        )
    except MisconfigurationException as err:
        raise ConfigError(f"invalid trainer setting: {err}") from err
    finally:
        sys.argv = saved_argv
    return 0


def _interrupted_message(err: Interrupted) -> str:
    how = "Ctrl-C" if err.signum == signal.SIGINT else err.signal_name
    saved = err.saved
    final = _RUN.final_checkpoint
    if saved is None and final is not None:
        saved = getattr(final, "saved_on_stop", None)
    if saved is None and final is not None and _RUN.run_dir is not None:
        path = _RUN.run_dir / "checkpoints" / final.filename
        if path.is_file():
            return f"stopped by {how}; the last saved checkpoint is {path}"
    if saved is None:
        return f"stopped by {how}"
    return f"stopped by {how}; saved {saved}. Resume with: ra3d fit --config <run>/config.yaml --ckpt_path {saved}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (it may be swapped, e.g. by tests)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - logging assigns it in __init__
        pass


def _configure_logging() -> None:
    """ra3d's own log lines on stderr; Lightning keeps its own handlers."""
    logger = logging.getLogger("ra3d")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[ra3d] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(os.environ.get("RA3D_LOG_LEVEL", "INFO"))
    logger.propagate = False


def _dispatch(command: str, rest: list[str]) -> int:
    if command == "retrieve":
        from ra3d.retrieval.retrieve_cli import main_retrieve

        return main_retrieve(rest)
    if command == "db":
        from ra3d.retrieval.db_cli import main_db

        return main_db(rest)
    if command == "adapt":
        from ra3d.guidance.adapt_cli import main_adapt

        return main_adapt(rest)
    if command == "export":
        from ra3d.export_cli import main_export

        return main_export(rest)
    if command == "chain":
        from ra3d.chain import main_chain

        return main_chain(rest)
    if command == "evaluate":
        from ra3d.evaluation_cli import main_evaluate

        return main_evaluate(rest)
    if command in LIGHTNING_SUBCOMMANDS:
        rest = _rewrite_shortcuts(rest)
        _check_paths(rest)
        return run_lightning([command, *rest])
    print(f"ra3d: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    from ra3d.signals import STOP

    STOP.install()
    global _RUN
    _RUN = _RunState()
    try:
        return _dispatch(argv[0], argv[1:])
    except Ra3dError as err:
        print(f"ra3d: error: {err}", file=sys.stderr)
        return err.exit_code
    except Interrupted as err:
        print(f"ra3d: {_interrupted_message(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("ra3d: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        # Lightning's own SIGTERM stop (a SystemExit subclass) during validation
        if type(exc).__name__ == "SIGTERMException":
            err = Interrupted(signal.SIGTERM)
            print(f"ra3d: {_interrupted_message(err)}", file=sys.stderr)
            return err.exit_code
        raise
    finally:
        _RUN.cleanup()
        STOP.uninstall()


if __name__ == "__main__":
    sys.exit(main())
