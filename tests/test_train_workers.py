"""kill -9 of a training process with 2 loader workers: no worker survives, resume is exact."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from co2sam.cli import app
from co2sam.train.workers import WorkerGuard

LINUX = sys.platform.startswith("linux")

# `co2sam train`, telling the test when each training step is done.
CLI_WITH_STEP_LINES = textwrap.dedent(
    """
    from co2sam.cli import app
    from co2sam.train import loop

    real_step = loop.training_step

    def step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        print("STEP", flush=True)
        return result

    loop.training_step = step
    app(prog_name="co2sam")
    """
)
TOTAL_STEPS = 12


class WorkerState(torch.utils.data.Dataset):
    """Reports, from inside a loader worker, its SIGINT handler and death signal."""

    def __len__(self):
        return 1

    def __getitem__(self, index):
        import ctypes

        death_signal = ctypes.c_int(-1)
        if LINUX:
            ctypes.CDLL(None).prctl(2, ctypes.byref(death_signal), 0, 0, 0)  # PR_GET_PDEATHSIG
        ignored = [signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)]
        return {"death_signal": death_signal.value, "ignored": ignored, "parent": os.getppid()}


def test_guarded_workers_die_with_their_parent_and_leave_signals_to_it():
    loader = DataLoader(WorkerState(), batch_size=None, num_workers=1, worker_init_fn=WorkerGuard())
    (report,) = list(loader)
    assert report["parent"] == os.getpid()
    assert report["ignored"] == [True, True]
    if LINUX:
        assert report["death_signal"] == signal.SIGKILL


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def _running(pid: int) -> bool:
    """A zombie (killed, not yet reaped by init) counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state.split()[1]


@pytest.mark.skipif(not LINUX, reason="reads worker pids from /proc")
def test_kill_9_leaves_no_worker_and_resumes_to_the_same_adapter(tmp_path):
    from co2sam.data.synthetic import make_synthetic_dataset

    data_root = tmp_path / "data"
    # 200-pixel images: a batch no longer fits a pipe's buffer, so an unguarded worker
    # can block handing it to a dead parent (what kept two workers alive in the issue).
    make_synthetic_dataset(
        data_root, num_images=3, num_classes=2, image_size=200, seed=0, splits={"train": 3}
    )
    run = tmp_path / "run"
    args = ["train", "--data-root", str(data_root), "--sam", "tiny", "--boxes", "oracle"]
    args += ["--accelerator", "cpu", "--epochs", "50", "--no-progress"]
    for setting in (
        "data.dataset=synthetic",
        "data.train_split=train",
        "train.batch_size=1",
        "train.val_every=0",
        "train.checkpoint_every=2",
        "train.template_cache_gib=0",
        "optim.warmup_steps=0",
        "optim.lr=1e-2",
    ):
        args += ["--set", setting]
    script = tmp_path / "co2sam_with_steps.py"
    script.write_text(CLI_WITH_STEP_LINES)
    process = subprocess.Popen(
        [sys.executable, str(script), *args, "--out", str(run), "--set", "data.num_workers=2"],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers, output = [], ""
    try:
        for line in process.stdout:  # into epoch 2 (3 steps per epoch), workers running
            output += line
            if output.count("STEP") >= 7 and len(workers := _children(process.pid)) == 2:
                break
        assert len(workers) == 2, output[-3000:]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
    # Within torch's own 5 s idle check, which a worker blocked on a full pipe never runs.
    deadline = time.monotonic() + 4
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _running(pid)], "loader workers outlived kill -9"

    runner = CliRunner()
    resumed = runner.invoke(
        app, ["train", "--resume", str(run), "--max-steps", str(TOTAL_STEPS), "--no-progress"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from" in resumed.output
    full = tmp_path / "full"
    plain = [
        *args,
        "--out",
        str(full),
        "--max-steps",
        str(TOTAL_STEPS),
        "--set",
        "data.num_workers=0",
    ]
    result = runner.invoke(app, plain)
    assert result.exit_code == 0, result.output
    expected = load_file(full / "last" / "adapter_model.safetensors")
    found = load_file(run / "last" / "adapter_model.safetensors")
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(found[key], value), key
