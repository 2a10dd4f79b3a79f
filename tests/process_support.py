"""Shared by the tests that kill commands: the process tree as Linux's /proc shows it."""

from __future__ import annotations

import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Children, their children, ..., depth first."""
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def running(pid: int) -> bool:
    """A zombie (killed, not yet reaped by init) counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state.split()[1]


def wait_gone(pids: list[int], seconds: float = 4.0) -> list[int]:
    """The pids still running after up to ``seconds`` (torch's own idle check is 5 s)."""
    deadline = time.monotonic() + seconds
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if running(pid)]
