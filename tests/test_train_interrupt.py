"""SIGTERM to a real `co2sam train` process; Ctrl-C and SLURM's SIGUSR1 sent to this one.

The checkpoint written on the way out must hold every step that ran, and resuming it
must give the weights of a run that was never stopped.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_support import CLI_WITH_STEP_LINES, small_train_data
from typer.testing import CliRunner

from co2sam.cli import app
from co2sam.train.checkpoint import load_checkpoint
from co2sam.train.interrupt import StopSignals, TrainingInterrupted

TOTAL_STEPS = 10


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return small_train_data(tmp_path_factory)


def _train_args(data_root, run):
    args = ["train", "--data-root", str(data_root), "--sam", "tiny", "--boxes", "oracle"]
    args += ["--out", str(run), "--accelerator", "cpu", "--epochs", "50", "--no-progress"]
    for setting in (
        "data.dataset=synthetic",
        "data.train_split=train",
        "data.num_workers=0",
        "train.batch_size=1",
        "train.val_every=0",
        "train.template_cache_gib=0",
        "optim.warmup_steps=0",
        "optim.lr=1e-2",
    ):
        args += ["--set", setting]
    return args


def _adapter(run):
    return load_file(run / "last" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    args = [*_train_args(data_root, run), "--max-steps", str(TOTAL_STEPS)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return _adapter(run)


def _start_training(tmp_path, args, **env):
    script = tmp_path / "co2sam_with_steps.py"
    script.write_text(CLI_WITH_STEP_LINES)
    environment = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="1000", **env)
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until_steps(process, count: int) -> str:
    output = ""
    for line in process.stdout:
        output += line
        if output.count("STEP") >= count:
            break
    return output


def _assert_resumes_to_the_uninterrupted_weights(run, uninterrupted):
    resumed = CliRunner().invoke(
        app, ["train", "--resume", str(run), "--max-steps", str(TOTAL_STEPS), "--no-progress"]
    )
    assert resumed.exit_code == 0, resumed.output
    found = _adapter(run)
    assert found.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(found[key], value), key


def test_sigterm_to_a_training_process_saves_every_step_and_exits_143(
    data_root, tmp_path, uninterrupted
):
    run = tmp_path / "run"
    process = _start_training(tmp_path, _train_args(data_root, run))
    try:
        output = _read_until_steps(process, 2)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    output += rest
    assert process.returncode == 143, output[-3000:]
    steps_done = output.count("STEP")
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == steps_done < TOTAL_STEPS  # nothing lost
    text = " ".join(output.split())
    assert f"SIGTERM: stopped at step {steps_done}" in text
    assert f"Resume with: co2sam train --resume {run}" in text
    for line in _readme_stop_lines():  # review: README showed one line, not what is printed
        assert re.search(line, output, re.MULTILINE), (line, output[-2000:])
    _assert_resumes_to_the_uninterrupted_weights(run, uninterrupted)


def _readme_stop_lines() -> list[str]:
    """README's sample stop message as patterns: any numbers, any run folder."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Preemption, Ctrl-C and `kill -9`", 1)[1]
    sample = section.split("```\n", 2)[1]
    lines = []
    for line in sample.strip().splitlines():
        pattern = re.escape(line).replace("runs/voc", ".+")
        lines.append("^" + re.sub(r"\d+", r"\\d+", pattern) + "$")
    assert len(lines) == 2, sample
    return lines


def test_a_signal_during_validation_says_the_run_stops_at_its_next_batch(
    data_root, tmp_path, monkeypatch, capfd
):
    """Review: the handler said "at the end of this step" during a validation too."""
    import co2sam.evaluate

    real_evaluate = co2sam.evaluate.evaluate_model

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(co2sam.evaluate, "evaluate_model", signalled)
    run = tmp_path / "run"
    args = [*_train_args(data_root, run), "--set", "train.val_every=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    said = capfd.readouterr().err
    assert "SIGINT: stopping this validation at its next batch and saving a checkpoint" in said
    assert "at the end of this step" not in said
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch"], state["history"]) == (3, 1, [])


@pytest.mark.parametrize(
    ("signum", "exit_code", "slurm"),
    [(signal.SIGINT, 130, False), (signal.SIGUSR1, 138, True)],
    ids=["Ctrl-C", "SLURM-requeue"],
)
def test_ctrl_c_and_slurm_requeue_signal_in_this_process(
    data_root, tmp_path, monkeypatch, uninterrupted, signum, exit_code, slurm
):
    """The same through CliRunner here, with the signal sent to this process in step 3."""
    from co2sam.train import loop

    if slurm:  # a fake scontrol that records how it was called
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        scontrol = bin_dir / "scontrol"
        scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.txt"}\n')
        scontrol.chmod(0o755)
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    real_step, calls = loop.training_step, []

    def signalled_in_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "training_step", signalled_in_step_3)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, _train_args(data_root, run))
    monkeypatch.setattr(loop, "training_step", real_step)
    assert result.exit_code == exit_code, result.output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3 == len(calls)
    text = " ".join(result.output.split())
    assert f"{signal.Signals(signum).name}: stopped at step 3" in text
    if slurm:
        assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "4242"]
        assert "SLURM job 4242 requeued" in text
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _assert_resumes_to_the_uninterrupted_weights(run, uninterrupted)


def test_stop_signals_set_flags_and_a_second_ctrl_c_aborts():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals((signal.SIGINT, signal.SIGTERM)) as signals:
        assert signals.flags == [0.0, 0.0] and signals.agreed([0.0, 0.0]) is None
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.flags == [1.0, 0.0]
        assert signals.agreed([0.0, 2.0]) == signal.SIGTERM  # another process got SIGTERM
        with pytest.raises(KeyboardInterrupt):  # the handler from before is back
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_interruption_exit_codes_and_message(tmp_path):
    stopped = TrainingInterrupted(
        signal.SIGTERM, step=12, epoch=3, run_dir=tmp_path, checkpoint=tmp_path / "last.pt"
    )
    assert stopped.exit_code == 143
    assert str(stopped).startswith("SIGTERM: stopped at step 12 (3 epoch(s) done)")
    assert f"co2sam train --resume {tmp_path}" in str(stopped)
    sigint = TrainingInterrupted(
        signal.SIGINT, step=1, epoch=0, run_dir=tmp_path, checkpoint=tmp_path / "last.pt"
    )
    assert sigint.exit_code == 130
