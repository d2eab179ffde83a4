"""SIGINT and SIGTERM: stop at the end of the current step, save, exit 130 / 143.

``timeout``, ``docker stop``, systemd and SLURM preemption send SIGTERM (and SIGKILL a grace period
later); Ctrl-C sends SIGINT. During training the first signal is only *recorded*
(:meth:`StopRequests.handle`): :class:`ra3d.callbacks.GracefulStop` raises
:class:`~ra3d.errors.Interrupted` at the end of the step, so the checkpoint written by
:class:`ra3d.callbacks.FinalCheckpoint` holds a whole step (never a half-applied optimizer update)
and a resume continues exactly. A second signal, or one outside training (loading the prior,
rendering a test turntable), stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from ra3d.errors import Interrupted

log = logging.getLogger("ra3d.signals")

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """The process's stop requests. ``graceful`` is True while training steps are running."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.graceful = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Route SIGINT and SIGTERM here (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self.pending, self.graceful = None, False
        for signum in HANDLED:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self.handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        self.pending, self.graceful = None, False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.graceful and self.pending is None:
            self.pending = signum
            log.warning(
                "received %s: finishing this step, then saving a checkpoint "
                "(send it again to stop at once without saving)",
                signal.Signals(signum).name,
            )
            return
        raise Interrupted(signum)

    def raise_if_pending(self) -> None:
        """Called between steps: turn a recorded signal into :class:`Interrupted`."""
        if self.pending is not None:
            signum, self.pending, self.graceful = self.pending, None, False
            raise Interrupted(signum, at_step_boundary=True)


STOP = StopRequests()
