"""Shared by the DDP tests: one script run as ranks 0 and 1 of a gloo job on this machine.

Both processes are started at once, the way torchrun or a cluster launcher starts them
(Fabric sees LOCAL_RANK and joins them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def run_two_ranks(
    script: Path,
    args: Sequence[object],
    cwd: Path,
    *,
    timeout: float = 180,
    check: bool = True,
    tail: int = 3000,
) -> list[tuple[int, str]]:
    """``python script *args`` as ranks 0 and 1; returns (returncode, output) per rank.

    check: a rank that fails fails the test at once with the end of its output (``tail``
    characters). Whatever still runs when this returns or fails is killed.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = []
    for rank in (0, 1):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK="0")
        env.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE="2", OMP_NUM_THREADS="1")
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), *map(str, args)],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout)
            if check:
                assert process.returncode == 0, output[-tail:]
            results.append((process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return results
