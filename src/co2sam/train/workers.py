"""DataLoader workers that never outlive the training process.

torch's workers notice a dead parent only while idle; a worker blocked handing a batch
to a parent killed with SIGKILL (an out-of-memory kill, ``kill -9``, a scheduler's hard
stop) lives on, holding its memory. :class:`WorkerGuard` is the loader's
``worker_init_fn`` and ties each worker's life to the process that started it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class WorkerGuard:
    """``worker_init_fn``: a worker dies with its parent and ignores SIGINT / SIGTERM.

    - Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills the worker the
      moment its parent exits, however it exits; elsewhere a daemon thread polls
      ``os.getppid()`` every ``poll_s`` seconds.
    - SIGINT and SIGTERM are ignored in workers: Ctrl-C reaches the whole foreground
      process group and SLURM signals every process of a job step, but only the training
      process should act (save at the step boundary, then shut its workers down); a
      worker killed by them would crash the loader instead.

    Build it in the training process (it records that process's pid) and create the
    loader's iterator from the main thread: Linux sends the death signal when the
    *thread* that started the worker ends.
    """

    def __init__(self, poll_s: float = 1.0) -> None:
        self.parent_pid = os.getpid()
        self.poll_s = poll_s

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not _set_death_signal(signal.SIGKILL):
            threading.Thread(target=self._watch, args=(os.getppid(),), daemon=True).start()
        if not _alive(self.parent_pid):  # the parent died before the guard was in place
            os._exit(1)

    def _watch(self, parent: int) -> None:
        while os.getppid() == parent:
            time.sleep(self.poll_s)
        os._exit(1)


def _set_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
