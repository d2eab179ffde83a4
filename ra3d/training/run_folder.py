"""A run folder belongs to one run at a time, and a resume keeps what the first run wrote.

* :class:`RunLock`: ``<run>/ra3d.lock`` holds the PID and host of the run writing the folder. A
  second run into the same folder (an explicit ``version``, or two resumes of one run) is refused
  while that process lives; a lock left by a killed run (its PID is gone) is taken over.
* :func:`config_filename`: the ``config.yaml`` of an earlier run is never overwritten; a resume
  writes ``config.resume-N.yaml`` beside it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from ra3d.errors import RunFolderBusy
from ra3d.training.metrics_history import HISTORY, METRICS

logger = logging.getLogger(__name__)

LOCK_NAME = "ra3d.lock"


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" not in status  # a killed child not yet reaped is gone for our purposes


class RunLock:
    """``<run_dir>/ra3d.lock`` (JSON: pid, host, start time, command line)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.held = False

    def owner(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _is_stale(self, owner: dict | None) -> bool:
        if owner is None:
            return True  # unreadable: a run killed while writing its lock
        if owner.get("host") != socket.gethostname():
            return False  # cannot check another machine's processes
        pid = int(owner.get("pid", -1))
        return pid == os.getpid() or pid <= 0 or not _pid_alive(pid)

    def acquire(self, command: str = "") -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if not self._is_stale(owner):
                    assert owner is not None
                    raise RunFolderBusy(
                        f"{self.run_dir} is in use by another run (PID {owner.get('pid')} on "
                        f"{owner.get('host')}, started {owner.get('started')}). Wait for it to "
                        "finish, or write this run elsewhere (another "
                        "--trainer.logger.init_args.version). If that process is gone, delete "
                        f"{self.path}."
                    ) from None
                logger.warning(
                    "%s was left by a run that is no longer running (PID %s); taking it over",
                    self.path,
                    (owner or {}).get("pid", "?"),
                )
                self.path.unlink(missing_ok=True)
                continue
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": command,
            }
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.held = True
            return self
        raise RunFolderBusy(f"could not take the lock {self.path}; delete it if no run is active")

    def release(self) -> None:
        if self.held:
            owner = self.owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


def config_filename(run_dir: str | Path, resuming: bool) -> str:
    """``config.yaml`` for a new run; ``config.resume-N.yaml`` (first free N) for a resume into a
    folder that already has one, so the first run's configuration is never overwritten."""
    run_dir = Path(run_dir)
    if not resuming or not (run_dir / "config.yaml").exists():
        return "config.yaml"
    n = 1
    while (run_dir / f"config.resume-{n}.yaml").exists():
        n += 1
    return f"config.resume-{n}.yaml"


def holds_a_run(run_dir: str | Path) -> str | None:
    """What in ``run_dir`` shows that a run already trained there (None if nothing)."""
    run_dir = Path(run_dir)
    for rel in ("checkpoints/last.ckpt", METRICS, HISTORY):
        if (run_dir / rel).is_file():
            return rel
    return None


def resume_run_dir(ckpt_path: str | Path | None) -> Path | None:
    """``<run>`` for ``<run>/checkpoints/<file>.ckpt``, else None."""
    if not ckpt_path:
        return None
    p = Path(ckpt_path).resolve()
    return p.parent.parent if p.parent.name == "checkpoints" else None
