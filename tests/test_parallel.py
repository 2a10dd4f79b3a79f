"""Sharded per-image commands: 2 gloo processes write what 1 process writes.

``boxes``, ``evaluate``, ``pseudo-labels`` and ``predict`` run first in this process
(one process), then in two processes started the way torchrun or a cluster launcher
starts them (Fabric sees LOCAL_RANK and joins them). The evaluation of the two processes
resumes a copy of the one-process folder cut short as by a kill.
"""

import json
import shutil
import textwrap

import pytest
import torch
from ddp_support import run_two_ranks
from typer.testing import CliRunner

from co2sam.cli import app
from co2sam.data.synthetic import make_synthetic_dataset
from co2sam.parallel import Processes, accelerator_of
from co2sam.sam import attach_lora, load_sam, save_adapter

runner = CliRunner()

SCRIPT = textwrap.dedent(
    """
    import sys

    from co2sam.cli import app

    commands = [line.split("\\t") for line in open(sys.argv[1]).read().splitlines()]
    for args in commands:
        code = app(args, standalone_mode=False)
        assert code in (0, None), (args[0], code)
    """
)


def _commands(root, work, adapter, images, out, devices=1):
    classes = ",".join((root / "VOC2012" / "classes.txt").read_text().split("\n")[1:]).strip(",")
    data = ["--data-root", str(root), "--set", "data.dataset=synthetic",
            "--set", "data.num_workers=0", "--devices", str(devices)]  # fmt: skip
    model = ["--sam", "tiny", "--adapter", str(adapter), "--boxes", str(work / "one.jsonl"),
             "--device", "cpu"]  # fmt: skip
    return [
        ["boxes", "--oracle", "--split", "val", *data, "--set", "prompts.device=cpu",
         "--out", str(out / "val.jsonl")],
        # evaluate resumes: one image per batch, so the batches match one process's
        ["evaluate", "--split", "val", *data, *model, "--batch-size", "1",
         "--out", str(out / "eval")],
        # fresh: processes take whole batches, the batches of one process
        ["pseudo-labels", "--split", "val", *data, *model, "--batch-size", "2",
         "--out", str(out / "pl")],
        ["predict", str(images), "--classes", classes, "--adapter", str(adapter),
         "--boxes", str(work / "one.jsonl"), "--device", "cpu", "--devices", str(devices),
         "--out", str(out / "pred")],
    ]  # fmt: skip


def _pngs(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.png"))}


def test_two_processes_write_what_one_process_writes(tmp_path):
    root = tmp_path / "data"
    make_synthetic_dataset(root, num_images=7, num_classes=2, image_size=40, seed=4,
                           splits={"val": 7})  # fmt: skip
    torch.manual_seed(0)
    adapter = attach_lora(load_sam("tiny"))
    for name, parameter in adapter.named_parameters():
        if "lora_B" in name:  # a LoRA that changes the masks
            torch.nn.init.normal_(parameter, std=0.5)
    adapter = save_adapter(adapter, tmp_path / "adapter", base="tiny")
    images = tmp_path / "images"
    shutil.copytree(root / "VOC2012" / "JPEGImages", images)
    one, two = tmp_path / "one", tmp_path / "two"
    for args in _commands(root, tmp_path, adapter, images, one):  # one process, in here
        if args[0] == "boxes":
            args[args.index("--out") + 1] = str(tmp_path / "one.jsonl")
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output)

    # The 2-process evaluation resumes the 1-process folder, cut as by a kill: 2 images
    # logged (one line half-written), the PNGs of the others gone.
    shutil.copytree(one / "eval", two / "eval")
    log = two / "eval" / ".co2sam" / "done-0.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    kept = [json.loads(line)["id"] for line in lines[:2]]
    log.write_bytes(b"".join(lines[:2]) + lines[2][:25])
    for mode in ("label-guided", "open"):
        for png in (two / "eval" / mode / "predictions").glob("*.png"):
            if png.stem not in kept:
                png.unlink()
    (two / "eval" / "report.json").unlink()

    commands = tmp_path / "commands.tsv"
    commands.write_text("\n".join("\t".join(args) for args in
                                  _commands(root, tmp_path, adapter, images, two, 2)))  # fmt: skip
    script = tmp_path / "sharded.py"
    script.write_text(SCRIPT)
    run_two_ranks(script, [commands], tmp_path, timeout=240, tail=4000)

    assert (two / "val.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    first, second = (json.loads((run / "eval" / "report.json").read_text()) for run in (one, two))
    for mode in ("label-guided", "open"):
        assert first["results"][mode] == second["results"][mode]
        assert first["results"][mode]["num_images"] == 7
        folder = f"eval/{mode}/predictions"
        assert _pngs(one / folder) == _pngs(two / folder) and len(_pngs(two / folder)) == 7
    ids = []
    for done in sorted((two / "eval" / ".co2sam").glob("done-*.jsonl")):
        ids += [json.loads(line)["id"] for line in done.read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 7  # each image once

    assert _pngs(one / "pl/SegmentationClass") == _pngs(two / "pl/SegmentationClass")
    split_list = "pl/ImageSets/Segmentation/val.txt"
    assert (one / split_list).read_text() == (two / split_list).read_text()
    assert _pngs(one / "pred/labels") == _pngs(two / "pred/labels")
    assert len(_pngs(two / "pred/labels")) == 7


def test_processes_shard_and_refuse_one_named_device():
    processes = Processes(rank=1, world_size=3)
    assert processes.shard(list(range(8))) == [1, 4, 7]
    assert Processes().gather("x") == ["x"] and not Processes().distributed
    assert accelerator_of("auto") == "auto" and accelerator_of("gpu") == "cuda"
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        accelerator_of("cuda:1")


def test_zero_devices_or_nodes_are_refused(tmp_path):
    for option in ("--devices", "--num-nodes"):
        result = runner.invoke(app, ["evaluate", "--sam", "tiny", "--data-root", str(tmp_path),
                                     "--boxes", "oracle", option, "0"])  # fmt: skip
        assert result.exit_code == 2
        assert "must be >= 1" in " ".join(result.output.split())


def test_several_nodes_say_what_they_wait_for(monkeypatch):
    from lightning.fabric import Fabric
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from co2sam.parallel import launch_processes

    class Stop(Exception):
        pass

    def launch(self, *args, **kwargs):  # where the rendezvous would wait for node 1
        raise Stop

    monkeypatch.setattr(Fabric, "launch", launch)
    # Fabric records this process's rank in a global (node 1: rank 2); keep it for the others
    monkeypatch.setattr(rank_zero_only, "rank", getattr(rank_zero_only, "rank", 0))
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    said = []
    with pytest.raises(Stop):
        launch_processes(1, 2, device="cpu", say=said.append)
    assert said[0].startswith("node 0 of 2 (NODE_RANK=0): waiting for all 2 processes")
    assert "at 127.0.0.1:" in said[0] and "MASTER_ADDR and MASTER_PORT are not both set" in said[0]
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("NODE_RANK", "1")
    with pytest.raises(Stop):
        launch_processes(2, 2, device="cpu", say=said.append)
    assert said[1].startswith("node 1 of 2 (NODE_RANK=1): waiting for all 4 processes")
    assert "at 10.0.0.1:29500; start the same command on every node" in said[1]
    assert rank_zero_only.rank == 2  # set by Fabric; monkeypatch restores it after the test
