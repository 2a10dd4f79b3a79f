"""Processes that never outlive the process that started them.

- DataLoader workers: torch's workers notice a dead parent only while idle; a worker
  blocked handing a batch to a parent killed with SIGKILL (an out-of-memory kill,
  ``kill -9``, a scheduler's hard stop) lives on, holding its memory.
  :class:`WorkerGuard` is the loader's ``worker_init_fn`` of every long command
  (``train``, ``distill``, ``evaluate``, ``pseudo-labels``) and ties each worker's life
  to the process that started it.
- The extra processes of a sharded run (``--devices N``): Lightning Fabric starts them
  as plain subprocesses of the command, which would go on with their whole shard after
  the command is killed. :func:`tie_to_launcher` makes each one die with it
  (:func:`co2sam.parallel.launch_processes` calls it).

Both ignore SIGINT: Ctrl-C reaches the whole foreground process group, but only the
command's own process should act on it (stop, say how to resume); the others end with it.
They must not wait for its exit, though: tearing down torch takes the command a second
or so, in which another process would go on with its shard and, at its next collective,
meet the connection the command has already closed (a rank traceback). So the command
stops the processes it started the moment it is interrupted (:func:`stop_launched`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_exit_hook_registered = False

_launched: list[Any] = []
"""The ``subprocess.Popen`` of every process this one started for a sharded run."""


class WorkerGuard:
    """``worker_init_fn``: a worker dies with its parent and ignores SIGINT / SIGTERM.

    - Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills the worker the
      moment its parent exits, however it exits; elsewhere a daemon thread polls
      ``os.getppid()`` every ``poll_s`` seconds.
    - SIGINT and SIGTERM are ignored in workers: Ctrl-C reaches the whole foreground
      process group and SLURM signals every process of a job step, but only the command's
      process should act (training saves at the step boundary; then it shuts its workers
      down); a worker killed by them would crash the loader instead.

    Build it in the process that iterates the loader (it records that process's pid) and
    create the loader's iterator from the main thread: Linux sends the death signal when
    the *thread* that started the worker ends.
    """

    def __init__(self, poll_s: float = 1.0) -> None:
        self.parent_pid = os.getpid()
        self.poll_s = poll_s
        _kill_workers_at_exit()

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not _set_death_signal(signal.SIGKILL):
            _watch_parent(os.getppid(), self.poll_s)
        if not _alive(self.parent_pid):  # the parent died before the guard was in place
            os._exit(1)


def _kill_workers_at_exit() -> None:
    """At this process's exit, SIGKILL the loader workers still alive (registered once).

    A command that ends with an exception raised while its loader iterates leaves the
    iterator to the garbage collector, after the exit handlers: multiprocessing's handler
    then sends the daemonic workers SIGTERM, which they ignore, and waits for them
    forever. This handler, registered after multiprocessing's, runs before it and kills
    them as their death signal would.
    """
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    _exit_hook_registered = True
    atexit.register(_kill_daemonic_children)


def _kill_daemonic_children() -> None:
    import multiprocessing

    for child in multiprocessing.active_children():
        if child.daemon:
            with contextlib.suppress(Exception):
                child.kill()
                child.join(timeout=5)


def tie_to_launcher(launcher_pid: int, poll_s: float = 1.0) -> None:
    """Make this process die (SIGKILL) with ``launcher_pid``, its parent, and ignore SIGINT.

    Linux: ``prctl(PR_SET_PDEATHSIG)``; elsewhere a daemon thread polls ``os.getppid()``.
    Exits at once when the launcher is already gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _set_death_signal(signal.SIGKILL):
        _watch_parent(launcher_pid, poll_s)
    if os.getppid() != launcher_pid:  # the launcher died before the death signal was set
        os._exit(1)


def track_launched(processes: Iterable[Any]) -> None:
    """Remember the processes this one started (``subprocess.Popen``), for
    :func:`stop_launched`."""
    _launched.extend(processes)


def stop_launched(timeout_s: float = 10.0) -> None:
    """Kill (SIGKILL, as their death signal would) the processes this one started and reap
    them: called when the command is interrupted, before its own slow exit. Their finished
    work is kept, as on any kill (the per-image logs drop a line cut short)."""
    while _launched:
        process = _launched.pop()
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # reaped with us, then
            process.wait(timeout=timeout_s)


def _watch_parent(parent: int, poll_s: float) -> None:
    """Where there is no death signal: a daemon thread that exits the process once its
    parent is no longer ``parent``."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


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
