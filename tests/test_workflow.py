"""The whole command-line workflow on generated data: boxes -> train -> evaluate ->
pseudo-labels -> predict, each command reading what the previous one wrote."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from co2sam.cli import app
from co2sam.data.synthetic import make_synthetic_dataset

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_commands_chain_on_generated_data(tmp_path):
    data = tmp_path / "data"
    make_synthetic_dataset(data, num_images=8, num_classes=3, image_size=64, seed=3)
    for split in ("train", "val"):
        invoke("boxes", "--data-root", str(data), "--split", split, "--oracle")
    run = tmp_path / "run"
    trained = invoke(
        "train", "--data-root", str(data), "--sam", "tiny", "--out", str(run),
        "--set", "data.train_split=train", "--set", "data.num_workers=0",
        "--max-steps", "2", "--no-progress",
    )  # fmt: skip
    assert (run / "last" / "adapter_model.safetensors").is_file()
    assert (run / "checkpoints" / "last.pt").is_file()
    assert "last/ (epoch 0, not validated)" in " ".join(trained.split())

    out = tmp_path / "eval"
    invoke("evaluate", "--data-root", str(data), "--adapter", str(run / "last"),
           "--split", "val", "--out", str(out))  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"label-guided", "open"}
    assert report["checkpoint"]["checkpoint"] == "last" and report["checkpoint"]["step"] == 2
    for mode, result in report["results"].items():
        assert result["mode"] == mode and 0.0 <= result["miou"] <= 1.0

    labels = tmp_path / "pseudo"
    invoke("pseudo-labels", "--data-root", str(data), "--adapter", str(run / "last"),
           "--split", "train", "--out", str(labels))  # fmt: skip
    ids = (data / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    written = sorted(p.stem for p in (labels / "SegmentationClass").glob("*.png"))
    assert written == sorted(ids)
    with (
        Image.open(labels / "SegmentationClass" / f"{ids[0]}.png") as first,
        Image.open(data / "VOC2012" / "JPEGImages" / f"{ids[0]}.jpg") as source,
    ):
        assert first.mode == "P" and first.size == source.size
        assert np.array(first).max() <= 3

    predictions = tmp_path / "pred"
    invoke("predict", str(data / "VOC2012" / "JPEGImages" / f"{ids[0]}.jpg"),
           "--classes", "red ellipse,green rectangle,blue triangle",
           "--adapter", str(run / "last"),
           "--boxes", str(data / "co2sam_boxes" / "train.jsonl"),
           "--out", str(predictions))  # fmt: skip
    assert (predictions / "labels" / f"{ids[0]}.jpg.png").is_file()
    assert (predictions / "overlays" / f"{ids[0]}.jpg.png").is_file()
