"""No process outlives the command that started it: loader workers of ``evaluate`` and
the extra processes of a sharded run, after ``kill -9`` or Ctrl-C of the command."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from process_support import descendants, running, wait_gone

from co2sam.data.synthetic import make_synthetic_dataset
from co2sam.parallel import LAUNCHER_ENV

LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not LINUX, reason="reads process trees from /proc")

# `co2sam`, slowed down and telling the test when each process has started its work.
SLOW_CLI = textwrap.dedent(
    """
    import os
    import time

    from co2sam.cli import app
    from co2sam.inference import sam as sam_inference
    from co2sam.prompts import build

    real_predict = sam_inference.SamPredictor.predict

    def predict(self, *args, **kwargs):
        result = real_predict(self, *args, **kwargs)
        print("WORKING", os.getpid(), flush=True)
        time.sleep(0.5)
        return result

    real_oracle = build._oracle_detector

    def oracle(dataset):
        detect = real_oracle(dataset)
        # 2 s an image: a shard lasts longer than the test waits; CO2SAM_TEST_FAST_RANK:
        # that process works at full speed (done with its shard before the others)
        fast = os.environ.get("LOCAL_RANK", "0") == os.environ.get("CO2SAM_TEST_FAST_RANK")

        def slow(samples):
            print("WORKING", os.getpid(), flush=True)
            if not fast:
                time.sleep(2)
            return detect(samples)

        return slow

    sam_inference.SamPredictor.predict = predict
    build._oracle_detector = oracle
    app(prog_name="co2sam")
    """
)


def _kill_all(process, pids):
    """Test clean-up: the command and whatever it left (when the test failed)."""
    for pid in [process.pid, *pids]:
        if running(pid):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()


def _start(tmp_path, args, *, new_session=False, **more_env):
    script = tmp_path / "slow_co2sam.py"
    script.write_text(SLOW_CLI)
    env = {k: v for k, v in os.environ.items() if k != LAUNCHER_ENV}
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=dict(env, OMP_NUM_THREADS="1", **more_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )


def _wait_for(process, ready):
    """Read the command's output until ``ready(output, descendants)`` holds."""
    output = ""
    for line in process.stdout:
        output += line
        found = descendants(process.pid)
        if ready(output, found):
            return output, found
    raise AssertionError(f"the command ended first:\n{output[-3000:]}")


def _data(tmp_path, image_size=64):
    root = tmp_path / "data"
    make_synthetic_dataset(
        root, num_images=12, num_classes=2, image_size=image_size, seed=0, splits={"val": 12}
    )
    return ["--data-root", str(root), "--set", "data.dataset=synthetic", "--split", "val"]


def _evaluate(tmp_path, data, workers, *more):
    return ["evaluate", *data, "--sam", "tiny", "--boxes", "oracle", "--device", "cpu",
            "--batch-size", "1", "--set", f"data.num_workers={workers}",
            "--out", str(tmp_path / "eval"), *more]  # fmt: skip


def test_kill_9_of_evaluate_leaves_no_loader_worker(tmp_path):
    # 200-pixel images: a batch no longer fits a pipe's buffer, so an unguarded worker
    # blocks handing it to the dead command (what kept two workers alive in the issue).
    data = _data(tmp_path, image_size=200)
    process = _start(tmp_path, _evaluate(tmp_path, data, 2))
    workers = []
    try:
        _, workers = _wait_for(process, lambda out, found: "WORKING" in out and len(found) == 2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert not wait_gone(workers), "evaluate's loader workers outlived kill -9"
    finally:
        _kill_all(process, workers)


def test_kill_9_of_a_sharded_boxes_launcher_stops_the_other_process(tmp_path):
    data = _data(tmp_path)
    args = ["boxes", "--oracle", *data, "--devices", "2", "--set", "prompts.device=cpu",
            "--out", str(tmp_path / "val.jsonl")]  # fmt: skip
    process = _start(tmp_path, args)
    others = []
    try:
        # both processes detecting: the second one has its own WORKING line
        output, others = _wait_for(
            process, lambda out, found: len(set(out.split("WORKING")[1:])) >= 2 and found
        )
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert len(others) == 1, output[-3000:]
        # (the pipe stays open: a write to a closed one would end the process anyway)
        assert not wait_gone(others), "the second process went on with its shard after kill -9"
    finally:
        _kill_all(process, others)


def test_ctrl_c_of_a_sharded_evaluation_stops_every_process_with_130(tmp_path):
    data = _data(tmp_path)
    process = _start(tmp_path, _evaluate(tmp_path, data, 1, "--devices", "2"), new_session=True)
    others = []
    try:
        # 2 processes, each with its loader worker
        _, others = _wait_for(
            process, lambda out, found: out.count("WORKING") >= 2 and len(found) == 3
        )
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole process group
        output = process.stdout.read()
        process.wait(timeout=60)
        assert process.returncode == 130, output[-3000:]
        said = " ".join(output.split())
        assert "run the same `co2sam evaluate` command again to continue" in said
        assert not wait_gone(others), "a process or loader worker outlived Ctrl-C"
    finally:
        _kill_all(process, others)


@pytest.mark.parametrize("to_group", [True, False], ids=["group", "main-process"])
def test_ctrl_c_of_sharded_boxes_stops_every_process_at_once(tmp_path, to_group):
    # The second process is done with its shard and waits for the first one: it must be
    # stopped with the command, not left to meet the command's closed connection (the
    # ~40-line "[rank1]: ... gloo ... Connection closed by peer" of the issue).
    data = _data(tmp_path)
    cache = tmp_path / "val.jsonl"
    args = ["boxes", "--oracle", *data, "--devices", "2", "--set", "prompts.device=cpu",
            "--out", str(cache)]  # fmt: skip
    process = _start(tmp_path, args, new_session=True, CO2SAM_TEST_FAST_RANK="1")
    others = []
    try:
        # the second process wrote its whole shard (6 images) and waits at the barrier
        part = tmp_path / "val.part-1.jsonl"
        output, others = _wait_for(
            process,
            lambda out, found: found and part.is_file() and len(part.read_text().splitlines()) > 6,
        )
        if to_group:
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        output += process.stdout.read()
        process.wait(timeout=60)
        assert process.returncode == 130, output[-3000:]
        said = " ".join(output.split())
        assert "run the same `co2sam boxes` command again to continue" in said
        assert "Traceback" not in output and "[rank1]" not in output, output[-3000:]
        assert not wait_gone(others), "the second process outlived Ctrl-C"
    finally:
        _kill_all(process, others)
    # a rerun continues: what both processes finished is kept, the rest is detected
    from typer.testing import CliRunner

    from co2sam.cli import app

    result = CliRunner().invoke(app, ["boxes", "--oracle", *data, "--out", str(cache)])
    assert result.exit_code == 0, result.output
    lines = cache.read_text().splitlines()
    assert len(lines) == 1 + 12  # the settings line, then one line per image


UNCAUGHT = textwrap.dedent(
    """
    import torch
    from torch.utils.data import DataLoader, Dataset

    from co2sam.lifetime import WorkerGuard

    class Failing(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, index):
            if index == 5:
                raise ValueError("image 5 is bad")
            return torch.zeros(4)

    loader = DataLoader(Failing(), batch_size=1, num_workers=2, worker_init_fn=WorkerGuard())
    for batch in loader:  # the error reaches the main process and is not caught
        pass
    """
)


def test_an_uncaught_error_from_a_loader_worker_ends_the_process(tmp_path):
    # Workers ignore SIGTERM; multiprocessing's exit handler terminates them with it
    # and then waits: without WorkerGuard's exit hook the process never ends.
    script = tmp_path / "uncaught.py"
    script.write_text(UNCAUGHT)
    try:
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung at exit waiting for its loader workers")
    assert done.returncode == 1 and "image 5 is bad" in done.stderr
