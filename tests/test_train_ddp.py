"""DDP on CPU with two gloo processes: the same adapter on both, exact resume after kill -9.

Both processes are started at once, as torchrun or a cluster launcher would (Fabric
sees LOCAL_RANK and joins them), so their imports overlap.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import torch
from ddp_support import run_two_ranks

SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    import torch

    from co2sam.config import load_config
    from co2sam.prompts import oracle_boxes
    from co2sam.train.loop import fit

    data_root, out_dir = sys.argv[1], sys.argv[2]
    config = load_config(None, [
        "model.sam=tiny", "data.dataset=synthetic", f"data.root={data_root}",
        "data.train_split=train", "data.num_workers=0", "prompts.source=oracle",
        f"train.out_dir={out_dir}/run", "train.accelerator=cpu", "train.devices=2",
        "train.batch_size=1", "train.max_steps=10", "train.val_every=0",
        "optim.warmup_steps=0", "optim.lr=1e-2",
        f"train.template_cache_gib={1 if os.environ['LOCAL_RANK'] == '0' else 0}",
    ])

    def boxes_fn(sample):  # one image without boxes: its process joins with a zero loss
        boxes = oracle_boxes(sample)
        return boxes.select([]) if sample.id == "syn_00001" else boxes

    result = fit(config, boxes_fn=boxes_fn, progress=False)
    rank = torch.distributed.get_rank()
    lora = {n: p.detach().clone() for n, p in result.segmenter.named_parameters() if "lora_" in n}
    saved = {"lora": lora, "step": result.step, "skipped": result.skipped_images,
             "hit_rate": result.template_cache_hit_rate}
    torch.save(saved, f"{out_dir}/rank{rank}.pt")
    """
)


def _launch(script_text, tmp_path, *args):
    """Run ``script_text`` as ranks 0 and 1 of one job; returns [(returncode, output)]."""
    script = tmp_path / "script.py"
    script.write_text(script_text)
    return run_two_ranks(script, args, tmp_path, check=False)


def test_ddp_two_processes_end_with_the_same_adapter(tmp_path):
    """Only rank 0 keeps a template cache, so the processes run different numbers of
    T-teacher forwards (no gradient, no collective): they must still agree step by step."""
    from co2sam.data.synthetic import make_synthetic_dataset

    data_root = tmp_path / "data"
    make_synthetic_dataset(
        data_root, num_images=5, num_classes=2, image_size=48, seed=0, splits={"train": 4, "val": 1}
    )
    for code, output in _launch(SCRIPT, tmp_path, data_root, tmp_path):
        assert code == 0, output[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 10  # 2 images per process, 5 epochs
    assert ranks[0]["skipped"] + ranks[1]["skipped"] == 5  # one image without boxes
    assert ranks[0]["hit_rate"] > 0 and ranks[1]["hit_rate"] is None
    first, second = ranks[0]["lora"], ranks[1]["lora"]
    assert first.keys() == second.keys() and first
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(first[n].abs().sum() > 0 for n in first if "lora_B" in n)  # it trained


# 6 images, 2 processes, batch 1, 3 epochs: 3 steps per epoch, 9 in all; checkpoints
# every 2 steps and at epoch ends. Phase "cut": the uninterrupted run, then the same run
# killed with SIGKILL (both processes) inside step 9 of epoch 2: last.pt holds step 8,
# mid-epoch. Phase "resume": (a) resume that with 2 loader workers; (b) restart a copy
# from epoch-001.pt, SIGTERM to rank 1 alone in its 2nd step; (c) resume (b) with the
# template cache on.
RESUME_SCRIPT = textwrap.dedent(
    """
    import os
    import signal
    import sys

    import torch

    from co2sam.config import load_config
    from co2sam.train import loop
    from co2sam.train.loop import TrainingInterrupted, fit

    data_root, out, phase = sys.argv[1], sys.argv[2], sys.argv[3]
    rank = int(os.environ["RANK"])

    def config(run, workers=0, cache=0):
        return load_config(None, [
            "model.sam=tiny", "data.dataset=synthetic", f"data.root={data_root}",
            "data.train_split=train", f"data.num_workers={workers}", "prompts.source=oracle",
            f"train.out_dir={out}/{run}", "train.accelerator=cpu", "train.devices=2",
            "train.batch_size=1", "train.epochs=3", "train.checkpoint_every=2",
            "train.val_every=0", "optim.warmup_steps=0", "optim.lr=1e-2",
            f"train.template_cache_gib={cache}",
        ])

    real_step, calls, plan = loop.training_step, [], {}

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == plan.get("at") and rank in plan["ranks"]:
            os.kill(os.getpid(), plan["signal"])
        return real_step(*args, **kwargs)

    loop.training_step = step

    def lora(result):
        return {n: p.detach().clone() for n, p in result.segmenter.named_parameters()
                if "lora_" in n}

    if phase == "cut":
        torch.save(lora(fit(config("full"), progress=False)), f"{out}/full-rank{rank}.pt")
        calls.clear()
        plan.update(at=9, ranks=(0, 1), signal=signal.SIGKILL)
        fit(config("cut", workers=2), progress=False)
    else:
        saved = {"a": lora(fit(config("cut", workers=2), resume=True, progress=False))}
        calls.clear()
        plan.update(at=2, ranks=(1,), signal=signal.SIGTERM)
        try:
            fit(config("cut_b"), resume=f"{out}/cut_b/checkpoints/epoch-001.pt", progress=False)
        except TrainingInterrupted as stopped:
            saved.update(b_step=stopped.step, b_signal=stopped.signum)
        plan.clear()
        saved["c"] = lora(fit(config("cut_b", cache=1), resume=True, progress=False))
        torch.save(saved, f"{out}/resumed-rank{rank}.pt")
    """
)


def test_ddp_kill_9_and_signals_resume_to_the_uninterrupted_adapter(tmp_path):
    from co2sam.data.synthetic import make_synthetic_dataset
    from co2sam.train.checkpoint import load_checkpoint

    data_root = tmp_path / "data"
    make_synthetic_dataset(
        data_root, num_images=6, num_classes=2, image_size=48, seed=0, splits={"train": 6}
    )
    for code, output in _launch(RESUME_SCRIPT, tmp_path, data_root, tmp_path, "cut"):
        assert code == -signal.SIGKILL, output[-3000:]
    state = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    # 2 of epoch 3's batches on each of the 2 processes: 4 images of its order used
    assert (state["step"], state["epoch"], state["seen_in_epoch"]) == (8, 2, 4)
    shutil.copytree(tmp_path / "cut", tmp_path / "cut_b")

    for code, output in _launch(RESUME_SCRIPT, tmp_path, data_root, tmp_path, "resume"):
        assert code == 0, output[-3000:]
    full = torch.load(tmp_path / "full-rank0.pt", weights_only=True)
    assert any(full[n].abs().sum() > 0 for n in full if "lora_B" in n)  # it trained
    for rank in (0, 1):
        resumed = torch.load(tmp_path / f"resumed-rank{rank}.pt", weights_only=True)
        assert resumed["a"].keys() == full.keys()
        for name in full:
            assert torch.equal(resumed["a"][name], full[name]), (rank, name)  # bit for bit
            torch.testing.assert_close(resumed["c"][name], full[name], rtol=1e-5, atol=1e-6)
        # epoch-001.pt holds step 3; rank 1's signal came in step 5: both stopped after it
        assert (resumed["b_step"], resumed["b_signal"]) == (5, signal.SIGTERM), rank


# `co2sam train`, printing the images of every step with the process's rank.
CLI_WITH_IMAGE_LINES = textwrap.dedent(
    """
    import os

    import torch

    from co2sam.cli import app
    from co2sam.train import loop

    real_step = loop.training_step

    def step(model, batch, *args):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        line = f"IMAGES {rank} {' '.join(batch.image_ids)}\\n"
        os.write(1, line.encode())  # one write: the two processes share the pipe
        return real_step(model, batch, *args)

    loop.training_step = step
    app(prog_name="co2sam")
    """
)


def test_a_run_resumed_on_two_processes_trains_each_remaining_image_once(tmp_path):
    """Review: `--resume RUN --devices 2` after 10 of 32 images ended the epoch after 12
    more; the "trained" line came once per process."""
    from co2sam.data.synthetic import make_synthetic_dataset

    data_root = tmp_path / "data"
    make_synthetic_dataset(
        data_root, num_images=7, num_classes=2, image_size=48, seed=0, splits={"train": 7}
    )
    script = tmp_path / "co2sam_with_images.py"
    script.write_text(CLI_WITH_IMAGE_LINES)
    run = tmp_path / "run"

    def co2sam(*args):
        env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="1000")
        for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        done = subprocess.run(
            [sys.executable, str(script), "train", *args], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        return done.returncode, done.stdout + done.stderr

    from typer.testing import CliRunner

    from co2sam.cli import app
    from co2sam.train import loop

    before = []
    real_step = loop.training_step

    def recording(model, batch, *args):
        before.extend(("0", image) for image in batch.image_ids)
        return real_step(model, batch, *args)

    loop.training_step = recording
    try:
        first = CliRunner().invoke(app, [
            "train", "--data-root", str(data_root), "--sam", "tiny", "--boxes", "oracle",
            "--out", str(run), "--accelerator", "cpu", "--epochs", "1", "--max-steps", "3",
            "--no-progress", "--set", "data.dataset=synthetic", "--set", "data.train_split=train",
            "--set", "data.num_workers=0", "--set", "train.val_every=0",
            "--set", "train.batch_size=1", "--set", "train.template_cache_gib=0",
        ])  # fmt: skip
    finally:
        loop.training_step = real_step
    assert first.exit_code == 0, first.output
    code, resumed = co2sam("--resume", str(run), "--devices", "2", "--max-steps", "100")
    assert code == 0, resumed[-3000:]

    def images(output):
        lines = [line.split()[1:] for line in output.splitlines() if line.startswith("IMAGES")]
        return [(rank, image) for rank, *ids in lines for image in ids]

    after = images(resumed)
    assert len(before) == 3 and {rank for rank, _ in after} == {"0", "1"}
    every = [image for _, image in before + after]
    assert sorted(every) == sorted(f"syn_{i:05d}" for i in range(7))  # each image once
    assert resumed.count("resuming from") == 1 and resumed.count("trained step 5") == 1
    assert "train.devices 1 -> 2" in resumed
