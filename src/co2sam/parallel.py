"""Several processes for the per-image stages: Fabric's launcher, shards and collectives.

``co2sam boxes``, ``evaluate``, ``pseudo-labels``, ``predict`` and training's per-epoch
validation split their images over the processes of a run: process ``r`` of ``W``
takes items ``r, r + W, r + 2W, ...`` of the split (:meth:`Processes.shard`), so every
image is handled exactly once and the split of a resumed run is the same. Processes are
started the way ``co2sam train`` starts them (Lightning Fabric, DDP): ``--devices N``
starts N local processes; on several machines the same command runs on every node with
``--num-nodes M`` and Lightning's variables (``MASTER_ADDR``, ``MASTER_PORT``,
``NODE_RANK``), or under SLURM / torchrun. On CPUs the processes talk over gloo.

The processes Fabric starts on this machine die with the command that started them
(even on ``kill -9``) and leave Ctrl-C to it (:func:`co2sam.lifetime.tie_to_launcher`),
which stops them at once when it is interrupted (:func:`co2sam.lifetime.stop_launched`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

Item = TypeVar("Item")

LAUNCHER_ENV = "CO2SAM_LAUNCHER_PID"
"""Set (to its pid) by a command while Fabric starts its other processes: a process that
finds its parent's pid there was started by that command and ties its life to it."""


@dataclass
class Processes:
    """This process's place in a run: rank, number of processes, device.

    A single process (the default) needs no process group; every collective is then the
    identity, so library code calls them unconditionally.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fabric: Any = None
    """The Lightning Fabric that launched the processes (None for one process)."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes shared files and prints the summary."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[Item]) -> list[Item]:
        """This process's share of ``items``: every ``world_size``-th, from ``rank``."""
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.distributed:
            torch.distributed.barrier()

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, by rank (any picklable object; our own processes)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place, and return it."""
        if self.distributed:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (all processes must call this)."""
        return any(self.gather(bool(flag)))


def from_fabric(fabric: Any) -> Processes:
    """The :class:`Processes` of an already launched Fabric (training's validation)."""
    return Processes(
        rank=fabric.global_rank, world_size=fabric.world_size, device=fabric.device, fabric=fabric
    )


def accelerator_of(device: str) -> str:
    """Fabric accelerator for a ``--device`` value: auto, cpu, cuda (``cuda:N`` refused)."""
    if device in ("auto", "cpu", "cuda", "gpu", "mps"):
        return "cuda" if device == "gpu" else device
    raise ValueError(
        f"--device {device} names one device; with --devices N the processes take devices "
        "0..N-1 (choose them with CUDA_VISIBLE_DEVICES), so give --device auto, cpu or cuda"
    )


def launch_processes(
    devices: int = 1,
    num_nodes: int = 1,
    *,
    device: str = "auto",
    say: Callable[[str], None] | None = None,
) -> Processes:
    """Start (or join) ``devices x num_nodes`` processes with Lightning Fabric (DDP).

    On one machine Fabric re-runs the command once per extra device; under torchrun,
    SLURM or with Lightning's variables set, each started process joins the group. One
    device on one node starts nothing (``device`` is then resolved by the caller).
    A process started here dies with this one (:func:`co2sam.lifetime.tie_to_launcher`).
    say: prints a line; with several nodes, what the first process of each node waits for.
    """
    if devices < 1 or num_nodes < 1:
        raise ValueError(f"--devices and --num-nodes must be >= 1, got {devices}, {num_nodes}")
    if devices * num_nodes == 1:
        return Processes(device=torch.device("cpu"))
    from lightning.fabric import Fabric

    launcher = os.environ.pop(LAUNCHER_ENV, None)
    if launcher is not None and launcher == str(os.getppid()):
        from co2sam.lifetime import tie_to_launcher

        tie_to_launcher(int(launcher))
    fabric = Fabric(
        accelerator=accelerator_of(device),
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp",
        precision="32-true",
    )
    if num_nodes > 1 and say is not None and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        say(waiting_line(fabric, devices, num_nodes))
    os.environ[LAUNCHER_ENV] = str(os.getpid())  # inherited by the processes Fabric starts
    try:
        fabric.launch()
    finally:
        os.environ.pop(LAUNCHER_ENV, None)
    from co2sam.lifetime import track_launched

    # what Fabric started here (none on the other processes, or under torchrun / SLURM)
    track_launched(getattr(getattr(fabric.strategy, "launcher", None), "procs", None) or ())
    return from_fabric(fabric)


def waiting_line(fabric: Any, devices: int, num_nodes: int) -> str:
    """What the first process of a node says before it waits for the other nodes."""
    environment = getattr(fabric.strategy, "cluster_environment", None)
    node = environment.node_rank() if environment is not None else 0
    address = f"{environment.main_address}:{environment.main_port}" if environment else "?"
    line = (
        f"node {node} of {num_nodes} (NODE_RANK={node}): waiting for all "
        f"{devices * num_nodes} processes ({devices} per node) at {address}"
    )
    if not ({"MASTER_ADDR", "MASTER_PORT"} <= set(os.environ)) and "SLURM_JOB_ID" not in os.environ:
        line += (
            "; MASTER_ADDR and MASTER_PORT are not both set: set them (the first node's "
            "address and a free port) and NODE_RANK on every node, and run the same command"
        )
    else:
        line += "; start the same command on every node (NODE_RANK 0.." + f"{num_nodes - 1})"
    return line
