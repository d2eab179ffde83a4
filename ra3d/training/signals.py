"""SIGINT and SIGTERM: stop at the end of the current step, save, exit 130 / 143.

``timeout``, ``docker stop``, systemd and SLURM preemption send SIGTERM (and SIGKILL a grace period
later); Ctrl-C sends SIGINT. During training the first signal is only *recorded*
(:meth:`StopRequests.handle`): :class:`ra3d.training.callbacks.GracefulStop` raises
:class:`~ra3d.errors.Interrupted` at the end of the step, so the checkpoint written by
:class:`ra3d.training.callbacks.FinalCheckpoint` holds a whole step (never a half-applied optimizer update)
and a resume continues exactly. A second signal, or one outside training (loading the prior,
rendering a test turntable), stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ra3d.errors import Interrupted

logger = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """The process's stop requests. ``graceful`` is True while training steps are running.

    Signal handlers belong to the process, so there is one instance (:data:`STOP`). It is
    installed once per command (:meth:`installed`); a nested installation — a command run from
    inside another — changes nothing, and the outermost one restores the handlers that were in
    place before it (by default Python's own), so nothing stays routed here after ``ra3d``
    returns.
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self.graceful = False
        self._previous: dict[int, object] = {}
        self._depth = 0

    @contextmanager
    def installed(self) -> Iterator[StopRequests]:
        """Route SIGINT and SIGTERM here for the ``with`` block (main thread only; elsewhere a
        no-op), then restore the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        if self._depth == 0:
            self.pending, self.graceful = None, False
            self._previous = {signum: signal.getsignal(signum) for signum in HANDLED}
            for signum in HANDLED:
                signal.signal(signum, self.handle)
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                for signum, handler in self._previous.items():
                    signal.signal(signum, handler)  # type: ignore[arg-type]
                self._previous = {}
                self.pending, self.graceful = None, False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.graceful and self.pending is None:
            self.pending = signum
            logger.warning(
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
