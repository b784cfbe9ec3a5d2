"""Turn a scheduler's "you are about to be stopped" signal into a clean checkpoint.

Slurm sends SIGUSR1 (with `--signal=USR1@<seconds>`) or SIGTERM before a preemption or the time
limit; the handler only sets a flag, and the training loop checkpoints at the next optimizer
step and returns, so the job can be requeued and resume from that checkpoint.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)


class StopFlag:
    # USR2 too: submitit's default preemption signal, should a user override ours (USR1).
    def __init__(self, signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)):
        self.signal: int | None = None
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            log.warning("received %s: will checkpoint and stop", signal.Signals(signum).name)
        self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
