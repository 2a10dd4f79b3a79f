"""Stop a run cleanly on SIGTERM / SIGINT (and SLURM's requeue signal) at a step boundary.

A signal handler only sets a flag, then puts the previous handler back, so a second
Ctrl-C aborts at once. The loop reads the flags at the next step boundary through the
all-reduce that already decides whether any process has boxes (no extra collective),
so under DDP every process stops at the same step even when only one got the signal.
It then writes ``checkpoints/last.pt`` and raises :class:`TrainingInterrupted`;
``co2sam train`` prints how to resume and exits with 128 + the signal number (SIGTERM
143, SIGINT 130): SLURM, Kubernetes and shells read that as "killed by the signal".

Under SLURM (``SLURM_JOB_ID`` set) SIGUSR1 is caught too: it is what Lightning's
auto-requeue pattern has SLURM send before the time limit (``#SBATCH --signal=USR1@300``;
``SLURMEnvironment.requeue_signal``). The run checkpoints, rank 0 asks SLURM to put the
job back in the queue (``scontrol requeue``), and the requeued job resumes when its
script runs ``co2sam train --resume`` (README, "Long runs").
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from co2sam.train.checkpoint import last_checkpoint_path

REQUEUE_SIGNAL = getattr(signal, "SIGUSR1", None)  # None on Windows
"""What ``#SBATCH --signal=USR1@<seconds>`` sends; Lightning's default requeue signal."""


class StopRequested(Exception):
    """Raised inside the loop at the step boundary where all processes agreed to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


class TrainingInterrupted(Exception):
    """A signal stopped the run after its state was saved; ``exit_code`` = 128 + signal.

    checkpoint: the ``last.pt`` just written. requeued: the SLURM job id put back in the
    queue, or None. rank: the process that raised it (every process raises it).
    """

    def __init__(
        self,
        signum: int,
        *,
        step: int,
        epoch: int,
        run_dir: Path,
        checkpoint: Path,
        requeued: str | None = None,
        rank: int = 0,
    ) -> None:
        self.signum, self.rank = int(signum), rank
        self.step, self.epoch, self.run_dir = step, epoch, Path(run_dir)
        self.checkpoint, self.requeued = Path(checkpoint), requeued
        name = signal.Signals(signum).name
        message = (
            f"{name}: stopped at step {step} ({epoch} epoch(s) done) and saved {checkpoint}. "
            f"Resume with: co2sam train --resume {run_dir}"
        )
        if requeued is not None:
            message += f" (SLURM job {requeued} requeued: it resumes by itself)"
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGINT and SIGTERM, plus SIGUSR1 inside a SLURM job."""
    signals = [signal.SIGINT, signal.SIGTERM]
    if REQUEUE_SIGNAL is not None and slurm_job_id() is not None:
        signals.append(REQUEUE_SIGNAL)
    return tuple(signals)


STOP_POINTS = {
    "step": "saving a checkpoint at the end of this step",
    "validation": "stopping this validation at its next batch and saving a checkpoint "
    "(the resumed run validates again)",
    "whole validation": "saving a checkpoint when this validation ends",
}
"""What the handler says a signal will do, by what the run is doing when it arrives."""


class StopSignals:
    """Context manager: catch ``signals`` (main thread only) and remember which arrived.

    ``flags`` (one 0/1 per signal, in order) goes into the step's all-reduce;
    :meth:`agreed` turns the reduced sums into the signal to stop for, or None.
    ``phase`` (a key of :data:`STOP_POINTS`, set with :meth:`during`) is what the run
    does now: the handler's line says where it will stop. Outside the main thread
    Python cannot install handlers: nothing is caught then.
    """

    def __init__(self, signals: tuple[signal.Signals, ...]) -> None:
        self.signals = signals
        self.flags = [0.0] * len(signals)
        self.phase = "step"
        self._previous: dict[signal.Signals, object] = {}

    @contextmanager
    def during(self, phase: str) -> Iterator[None]:
        """Within the block the run is in ``phase`` (a key of :data:`STOP_POINTS`)."""
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        index = self.signals.index(signal.Signals(signum))
        self.flags[index] = 1.0
        # The next one behaves as before this run (a second Ctrl-C aborts now).
        signal.signal(signum, self._previous.get(signal.Signals(signum), signal.SIG_DFL))  # type: ignore[arg-type]
        name = signal.Signals(signum).name
        # os.write: print() could re-enter a stream the progress bar is writing to.
        os.write(2, f"\n{name}: {STOP_POINTS[self.phase]}\n".encode())

    def agreed(self, counts: list[float]) -> int | None:
        """The first signal any process received (``counts`` = flags summed over processes)."""
        for signum, count in zip(self.signals, counts, strict=True):
            if count > 0:
                return int(signum)
        return None


def slurm_job_id() -> str | None:
    """This SLURM job's id (``<array job>_<task>`` for array jobs), or None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job(job_id: str) -> bool:
    """``scontrol requeue JOB``; True if SLURM accepted it (the job must allow requeue)."""
    if not re.fullmatch(r"[0-9_]+", job_id):
        return False
    try:
        result = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        os.write(2, b"scontrol not found: the job was not requeued\n")
        return False
    if result.returncode != 0:
        os.write(2, f"scontrol requeue {job_id} failed: {result.stderr.strip()}\n".encode())
    return result.returncode == 0


@contextmanager
def stop_with_checkpoint(
    signals: StopSignals,
    fabric: Any,
    state: dict[str, Any],
    run_dir: Path,
    save: Callable[[], None],
    error: type[TrainingInterrupted] = TrainingInterrupted,
) -> Iterator[None]:
    """Catch ``signals`` around a Fabric loop; the :class:`StopRequested` it raises at the
    step boundary where all processes agreed to stop writes ``last.pt`` (``save``), then
    becomes ``error`` (after the SLURM requeue, see :func:`interrupted`)."""
    try:
        with signals:
            yield
    except StopRequested as request:
        save()
        raise interrupted(fabric, request.signum, state, run_dir, error) from None


def interrupted(
    fabric: Any,
    signum: int,
    state: dict[str, Any],
    run_dir: Path,
    error: type[TrainingInterrupted] = TrainingInterrupted,
) -> TrainingInterrupted:
    """After the stop checkpoint: requeue the SLURM job if asked (rank 0), then report."""
    requeued = None
    if signum == REQUEUE_SIGNAL and fabric.global_rank == 0:
        job = slurm_job_id()
        requeued = job if job is not None and requeue_slurm_job(job) else None
    fabric.barrier()
    return error(
        signum,
        step=state["step"],
        epoch=state["epoch"],
        run_dir=run_dir,
        checkpoint=last_checkpoint_path(run_dir),
        requeued=requeued,
        rank=fabric.global_rank,
    )
