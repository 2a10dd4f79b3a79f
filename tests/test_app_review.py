import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from co2sam.app.review import SORTS, ReviewError, ReviewFolder, image_iou
from co2sam.cli import app
from co2sam.data.synthetic import make_synthetic_dataset
from co2sam.records import Boxes

COMMON = ["--set", "data.dataset=synthetic", "--set", "data.num_workers=0", "--sam", "tiny",
          "--device", "cpu"]  # fmt: skip


def invoke(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A pseudo-label folder and an evaluation folder, written by the commands."""
    base = tmp_path_factory.mktemp("review")
    data = base / "data"
    make_synthetic_dataset(
        data, num_images=6, num_classes=2, image_size=48, seed=1, splits={"train": 4, "val": 2}
    )
    invoke("pseudo-labels", *COMMON, "--data-root", str(data), "--split", "train",
           "--boxes", "oracle", "--out", str(base / "pseudo"))  # fmt: skip
    invoke("evaluate", *COMMON, "--data-root", str(data), "--split", "val",
           "--boxes", "oracle", "--mode", "both", "--out", str(base / "eval"))  # fmt: skip
    return base


@pytest.fixture
def pseudo(folders, tmp_path):
    copy = tmp_path / "pseudo"
    shutil.copytree(folders / "pseudo", copy)
    return copy


def test_a_pseudo_label_folder_lists_its_images_in_split_order(folders):
    folder = ReviewFolder(folders / "pseudo")
    assert folder.kind == "pseudo-labels" and folder.modes == ["label-guided"]
    assert folder.split == "train" and folder.dataset is not None
    assert folder.ids("label-guided") == folder.dataset.ids
    assert folder.class_names[0] == "background" and len(folder.class_names) == 3
    assert "split train" in folder.describe() and "label-guided" in folder.describe()


def test_logged_ious_equal_the_ones_computed_from_the_masks(pseudo):
    logged = ReviewFolder(pseudo).ious("label-guided")
    assert len(logged) == 4 and all(value is not None for value in logged.values())
    shutil.rmtree(pseudo / ".co2sam")  # no logs: computed from label PNG and mask
    computed = ReviewFolder(pseudo).ious("label-guided")
    assert computed == pytest.approx(logged)


def test_sorting_by_iou_puts_the_worst_first(pseudo):
    folder = ReviewFolder(pseudo)
    changed = folder.ids("label-guided")[2]
    assert folder.ious("label-guided")[changed] < 1  # tiny random SAM: far from perfect
    truth = folder.dataset.read_mask(changed)
    perfect = np.where(truth == 255, 0, truth).astype(np.uint8)
    Image.fromarray(perfect).save(pseudo / "SegmentationClass" / f"{changed}.png")
    shutil.rmtree(pseudo / ".co2sam")  # the logs describe the old labels
    folder = ReviewFolder(pseudo)
    assert folder.default_sort("label-guided") == SORTS[0]
    order = folder.order("label-guided", SORTS[0])
    ious = folder.ious("label-guided")
    assert ious[changed] == pytest.approx(1.0) and order[-1] == changed
    assert [ious[i] for i in order] == sorted(ious.values())
    assert folder.order("label-guided", SORTS[2]) == sorted(order)


def test_an_evaluation_folder_has_both_modes(folders):
    folder = ReviewFolder(folders / "eval")
    assert folder.kind == "evaluation" and folder.modes == ["label-guided", "open"]
    for mode in folder.modes:
        assert len(folder.ids(mode)) == 2
        assert all(v is not None for v in folder.ious(mode).values())
    views = folder.views("open", folder.ids("open")[0])
    assert views.image.shape == (48, 48, 3) and views.label.shape == views.truth.shape == (48, 48)
    assert views.note == ""


def test_views_and_flags_take_only_the_folders_ids(pseudo):
    folder = ReviewFolder(pseudo)
    for bad in ("../../../etc/passwd", "/etc/passwd", "nope"):
        with pytest.raises(ReviewError, match="is not an image of"):
            folder.views("label-guided", bad)
        with pytest.raises(ReviewError, match="is not an image of"):
            folder.flag("label-guided", bad)
    with pytest.raises(ReviewError, match="no 'open' labels"):
        folder.ids("open")


def test_flag_appends_once_and_unflag_removes(pseudo):
    folder = ReviewFolder(pseudo)
    first, second = folder.ids("label-guided")[:2]
    (pseudo / "flagged.txt").write_text("# bad pseudo-labels")  # no final newline
    assert folder.flag("label-guided", first) and not folder.flag("label-guided", first)
    assert folder.flag("label-guided", second)
    assert (pseudo / "flagged.txt").read_text() == f"# bad pseudo-labels\n{first}\n{second}\n"
    assert folder.flagged() == [first, second]
    assert folder.unflag("label-guided", first) and not folder.unflag("label-guided", first)
    assert (pseudo / "flagged.txt").read_text() == f"# bad pseudo-labels\n{second}\n"


def test_images_outside_the_dataset_root_are_not_read(pseudo, monkeypatch):
    folder = ReviewFolder(pseudo)
    image_id = folder.ids("label-guided")[0]
    monkeypatch.setattr(folder.dataset, "image_path", lambda _: pseudo.parent / "outside.png")
    views = folder.views("label-guided", image_id)
    assert views.image is None and "refused" in views.note and "not inside" in views.note


def test_a_moved_dataset_is_found_with_data_root(folders, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(folders / "data", moved)
    pseudo = tmp_path / "pseudo"
    shutil.copytree(folders / "pseudo", pseudo)
    run = json.loads((pseudo / ".co2sam/run.json").read_text())
    run["data_root"] = str(tmp_path / "gone")
    (pseudo / ".co2sam/run.json").write_text(json.dumps(run))
    lost = ReviewFolder(pseudo)
    assert lost.dataset is None and "--data-root" in lost.data_note
    image_id = lost.ids("label-guided")[0]
    assert lost.views("label-guided", image_id).image is None
    found = ReviewFolder(pseudo, data_root=moved)
    assert found.views("label-guided", image_id).image.shape == (48, 48, 3)


def test_confidence_from_confidence_maps_or_the_box_cache(pseudo, tmp_path):
    folder = ReviewFolder(pseudo)
    ids = folder.ids("label-guided")
    maps = pseudo / "Confidence"  # pseudo-labels writes real ones: replaced by known values
    maps.mkdir(exist_ok=True)
    for value, image_id in zip((200, 50, 255, 100), ids, strict=True):
        Image.fromarray(np.full((48, 48), value, np.uint8)).save(maps / f"{image_id}.png")
    folder = ReviewFolder(pseudo)
    assert folder.order("label-guided", SORTS[1]) == [ids[1], ids[3], ids[0], ids[2]]
    assert folder.confidences("label-guided")[ids[1]] == pytest.approx(50 / 255)

    from co2sam.prompts.cache import write_box_cache

    shutil.rmtree(maps)
    cache = write_box_cache(
        tmp_path / "boxes.jsonl",
        {"class_names": list(folder.class_names)},
        {i: Boxes([[1, 1, 9, 9], [2, 2, 8, 8]], [1, 1], [s, s / 2]) for i, s in
         zip(ids, (0.9, 0.2, 0.6, 0.4), strict=True)},
    )  # fmt: skip
    run = json.loads((pseudo / ".co2sam/run.json").read_text())
    (pseudo / ".co2sam/run.json").write_text(json.dumps({**run, "box_cache": str(cache)}))
    folder = ReviewFolder(pseudo)
    assert folder.confidences("label-guided")[ids[0]] == pytest.approx(0.675)
    assert folder.order("label-guided", SORTS[1]) == [ids[1], ids[3], ids[2], ids[0]]


def test_a_folder_without_labels_is_refused(tmp_path):
    with pytest.raises(ReviewError, match="co2sam pseudo-labels"):
        ReviewFolder(tmp_path)


def test_image_iou_is_the_mean_over_ground_truth_classes():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8)
    label = np.array([[0, 0, 1, 2], [0, 1, 1, 1]], np.uint8)
    # background: 3 / 4; class 1: 2 / 4 (the 255 pixel is ignored); class 2 is not in truth
    assert image_iou(label, truth, 3) == pytest.approx((3 / 4 + 2 / 4) / 2)
