"""Stop signals: SIGTERM (what a scheduler sends before killing) and SIGUSR1 (what
`srun --signal=USR1@T` sends T seconds before the time limit).

The handler only records the request; the training loop agrees on it across ranks at
the next step boundary, saves a checkpoint and exits cleanly.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignal:
    def __init__(self):
        self.requested = False
        self.name = ""
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = True
        self.name = signal.Signals(signum).name

    def __enter__(self):
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
