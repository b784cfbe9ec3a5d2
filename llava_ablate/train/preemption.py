"""Turn a scheduler's "you are about to be stopped" signal into a clean checkpoint.

Slurm sends SIGUSR1 (with `--signal=USR1@<seconds>`) before the time limit, and SIGTERM to every
process of the job on a preemption or `scontrol requeue` (then SIGKILL after its KillWait). The
handler only sets a flag; at the next optimizer step every rank agrees to stop, checkpoints and
returns, so the job can be requeued and resume from that checkpoint. DataLoader workers ignore
these signals (`ignore_stop_signals`): killed first, they would take the main process down with
"DataLoader worker ... killed by signal" before it could checkpoint.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)

# USR2 too: submitit's default preemption signal, should a user override ours (USR1).
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: the stop signals are the main process's business."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopFlag:
    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
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
