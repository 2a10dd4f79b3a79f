"""kill -9 of a training process with 2 loader workers: no worker survives, resume is exact."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from process_support import children, wait_gone
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from train_support import CLI_WITH_STEP_LINES
from typer.testing import CliRunner

from co2sam.cli import app
from co2sam.lifetime import WorkerGuard

LINUX = sys.platform.startswith("linux")

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
            if output.count("STEP") >= 7 and len(workers := children(process.pid)) == 2:
                break
        assert len(workers) == 2, output[-3000:]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
    # Within torch's own 5 s idle check, which a worker blocked on a full pipe never runs.
    assert not wait_gone(workers, 4), "loader workers outlived kill -9"

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
