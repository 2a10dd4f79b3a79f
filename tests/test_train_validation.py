"""Per-epoch validation: on every process (sharded, summed), never on training images."""

import textwrap

import numpy as np
import pytest
import torch
from ddp_support import run_two_ranks
from PIL import Image
from typer.testing import CliRunner

from co2sam.cli import app
from co2sam.config import DataConfig
from co2sam.data import DatasetError, build_dataset
from co2sam.train.validation import check_validation_split

runner = CliRunner()


def _folder_data(root, *, val_list=None, train_list=None):
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("background\nsquare\n")
    lines = []
    for index in range(4):
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[4 + index : 20 + index, 6:22] = 200
        Image.fromarray(pixels).save(root / "images" / f"im{index}.png")
        lines.append(f"im{index}.png,square")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    if val_list is not None:
        (root / "val.txt").write_text("\n".join(val_list) + "\n")
    if train_list is not None:
        (root / "train.txt").write_text("\n".join(train_list) + "\n")
    return root


def test_folder_data_without_a_val_list_is_refused(tmp_path):
    root = _folder_data(tmp_path / "data")
    config = DataConfig(dataset="folder", root=str(root))
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    with pytest.raises(DatasetError, match="no val.txt") as raised:
        check_validation_split(train, val)
    assert "data.val_split" in str(raised.value) and "train.val_every=0" in str(raised.value)

    listed = _folder_data(tmp_path / "listed", val_list=["im3"])  # val listed, train = all
    config = DataConfig(dataset="folder", root=str(listed))
    with pytest.raises(DatasetError, match="neither train.txt nor train_aug.txt") as raised:
        check_validation_split(  # the default train_aug, which falls back to train.txt
            build_dataset(config, config.train_split), build_dataset(config, "val")
        )
    assert "data.train_split=NAME" in str(raised.value)
    assert f"names to {listed}/train.txt" in str(raised.value)
    (listed / "train.txt").write_text("im0\nim1\nim2\nim3\n")
    config = DataConfig(dataset="folder", root=str(listed))
    with pytest.raises(DatasetError, match="also a training image"):
        check_validation_split(build_dataset(config, "train"), build_dataset(config, "val"))
    split = _folder_data(tmp_path / "split", val_list=["im3"], train_list=["im0", "im1", "im2"])
    config = DataConfig(dataset="folder", root=str(split))
    check_validation_split(build_dataset(config, "train"), build_dataset(config, "val"))


def test_folder_data_trains_on_its_train_list_by_default(tmp_path):
    root = _folder_data(tmp_path / "data", val_list=["im3"], train_list=["im0", "im1", "im2"])
    assert DataConfig(dataset="folder", root=str(root)).train_split == "train"
    assert DataConfig(dataset="voc", root=str(root)).train_split == "train_aug"
    (root / "train_aug.txt").write_text("im0\n")  # a folder that has its own train_aug
    assert DataConfig(dataset="folder", root=str(root)).train_split == "train_aug"
    (root / "train_aug.txt").unlink()
    (root / "masks").mkdir()
    for index in range(4):  # for oracle boxes
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + index : 20 + index, 6:22] = 1
        Image.fromarray(mask).save(root / "masks" / f"im{index}.png")
    # README's "Custom data" recipe: train.txt and val.txt, no --set data.train_split
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data-root", str(root), "--set",
                                 "data.dataset=folder", "--sam", "tiny", "--boxes", "oracle",
                                 "--set", "data.num_workers=0", "--epochs", "1",
                                 "--no-progress", "--out", str(run)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "step 3, epoch 1" in result.output  # the 3 images of train.txt
    assert (run / "best").is_dir()  # chosen on val.txt's image


def test_train_on_folder_data_says_so_and_trains_without_validation_when_asked(tmp_path):
    import json

    root = _folder_data(tmp_path / "data")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([
        {"image_id": f"im{i}", "category_id": 1, "bbox": [6, 4 + i, 16, 16], "score": 0.9}
        for i in range(4)
    ]))  # fmt: skip
    common = ["--data-root", str(root), "--set", "data.dataset=folder"]
    imported = runner.invoke(app, ["import-boxes", "--coco-results", str(dets), "--split",
                                   "train", *common])  # fmt: skip
    assert imported.exit_code == 0, imported.output
    args = ["train", *common, "--sam", "tiny", "--set", "data.train_split=train",
            "--set", "data.num_workers=0", "--max-steps", "1", "--no-progress"]  # fmt: skip
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "no val.txt" in " ".join(result.output.split())
    assert not (tmp_path / "run" / "checkpoints").exists()
    result = runner.invoke(
        app, [*args, "--out", str(tmp_path / "run"), "--set", "train.val_every=0"]
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / "best").exists() and (tmp_path / "run" / "last").is_dir()


SCRIPT = textwrap.dedent(
    """
    import sys

    import torch

    from co2sam.config import load_config
    from co2sam.data import build_dataset
    from co2sam.evaluate import evaluate_model
    from co2sam.prompts import oracle_boxes
    from co2sam.train.loop import fit

    data_root, out_dir = sys.argv[1], sys.argv[2]
    config = load_config(None, [
        "model.sam=tiny", "data.dataset=synthetic", f"data.root={data_root}",
        "data.train_split=train", "data.num_workers=0", "prompts.source=oracle",
        f"train.out_dir={out_dir}/run", "train.accelerator=cpu", "train.devices=2",
        "train.epochs=1", "train.val_every=1", "eval.batch_size=2", "optim.warmup_steps=0",
        "optim.lr=1e-2", "train.template_cache_gib=0",
    ])
    result = fit(config, progress=False)
    rank = torch.distributed.get_rank()
    history = [record["metrics"] for record in result.history]
    if rank == 0:  # the whole val split in one process, with the final weights
        val = build_dataset(config.data, "val")
        whole = evaluate_model(result.segmenter, val, oracle_boxes, progress=False)
        history.append(whole)
    torch.save({"history": history, "best": result.best}, f"{out_dir}/rank{rank}.pt")
    """
)


def test_validation_is_sharded_over_processes_and_summed(tmp_path):
    from co2sam.data.synthetic import make_synthetic_dataset

    data_root = tmp_path / "data"
    make_synthetic_dataset(data_root, num_images=9, num_classes=2, image_size=40, seed=2,
                           splits={"train": 4, "val": 5})  # fmt: skip
    script = tmp_path / "validate_ddp.py"
    script.write_text(SCRIPT)
    run_two_ranks(script, [data_root, tmp_path], tmp_path)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert first["best"] == second["best"] and first["best"] is not None
    assert first["history"][:1] == second["history"]  # both ranks saw the same numbers
    last, whole = first["history"]
    for mode in ("label-guided", "open"):
        assert last[mode]["num_images"] == whole[mode]["num_images"] == 5
        assert last[mode]["confusion_matrix"] == whole[mode]["confusion_matrix"]
