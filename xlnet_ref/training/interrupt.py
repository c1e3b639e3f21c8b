"""Stop training cleanly on Ctrl-C (SIGINT) or SIGTERM: finish the step, checkpoint, say how to resume.

Inside ``with StopRequests() as stop:``, once the loop has set ``stop.armed``, the first SIGINT or
SIGTERM only sets ``stop.signal``; the training loop looks at it after every step, writes a checkpoint and raises
:class:`TrainingInterrupted`. A second signal raises KeyboardInterrupt at once (for a stuck step), and so does
a signal before the loop started (loading data, building the model: nothing to save yet).
Handlers are installed only in the main thread (Python allows no other) and put back on exit.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after a complete step; ``checkpoint`` is where it was saved (or None)."""

    def __init__(self, message: str, *, step: int, checkpoint, signum: int):
        super().__init__(message)
        self.step, self.checkpoint, self.signum = step, checkpoint, signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopRequests:
    """Context manager: catch SIGINT/SIGTERM as a request to stop after the current step."""

    def __init__(self):
        self.signal: int | None = None
        self.armed = False  # set by the loop once a step can be finished and saved; before: stop at once
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if not self.armed:
            raise KeyboardInterrupt(f"{name} before the first training step: nothing was trained or saved")
        if self.signal is not None:
            raise KeyboardInterrupt(f"second {name}: stopped in the middle of a step, without a checkpoint")
        self.signal = signum

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""
