import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from co2sam.cli import app
from co2sam.data.image_io import DatasetError, read_image_with_report, read_label_png
from co2sam.data.synthetic import make_synthetic_dataset

runner = CliRunner()


def _exif_rotated(path, array):
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(path, exif=exif)


@pytest.fixture()
def broken_voc(tmp_path):
    voc = make_synthetic_dataset(
        tmp_path, num_images=12, num_classes=3, image_size=32, seed=0, splits={"train": 12}
    )
    ids = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    images, masks = voc / "JPEGImages", voc / "SegmentationClass"
    (images / f"{ids[0]}.jpg").unlink()  # missing image
    (images / f"{ids[1]}.jpg").write_bytes(b"not a jpeg at all")  # unreadable
    bad_values = np.array(Image.open(masks / f"{ids[2]}.png"))
    bad_values[0, 0] = 7
    Image.fromarray(bad_values).save(masks / f"{ids[2]}.png")  # values outside 0..3
    Image.open(masks / f"{ids[3]}.png").resize((20, 32)).save(masks / f"{ids[3]}.png")
    empty = Image.fromarray(np.zeros((32, 32), np.uint8))
    empty.save(masks / f"{ids[4]}.png")  # empty label set
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(images / f"{ids[5]}.jpg")  # gray
    (images / f"{ids[6]}.jpg").unlink()
    Image.fromarray(np.full((32, 32, 4), 90, np.uint8)).save(images / f"{ids[6]}.png")  # RGBA
    Image.new("CMYK", (32, 32), (10, 20, 30, 0)).save(images / f"{ids[7]}.jpg")
    (images / f"{ids[8]}.jpg").unlink()
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(images / f"{ids[8]}.png")
    _exif_rotated(images / f"{ids[9]}.jpg", np.zeros((32, 32, 3), np.uint8))
    (masks / f"{ids[10]}.png").unlink()  # missing mask
    rgb_mask = np.zeros((32, 32, 3), np.uint8)
    Image.fromarray(rgb_mask).save(masks / f"{ids[11]}.png")  # colour mask
    return tmp_path, ids


def test_check_data_reports_each_planted_problem(broken_voc):
    root, ids = broken_voc
    result = runner.invoke(app, ["check-data", "--dataset", "voc", "--data-root", str(root)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()

    def row(image_id: str, *words: str) -> None:
        hits = [line for line in lines if image_id in line]
        assert hits, f"{image_id} not reported"
        text = " ".join(hits).lower()
        for word in words:
            assert word in text, (image_id, word, hits)

    row(ids[0], "error", "missing image")
    row(ids[1], "error", "unreadable image")
    row(ids[2], "error", "outside")
    row(ids[3], "error", "20x32")
    row(ids[4], "warning", "empty label set")
    row(ids[5], "converted", "grayscale")
    row(ids[6], "converted", "rgba")
    row(ids[7], "converted", "cmyk")
    row(ids[8], "converted", "16")
    row(ids[9], "converted", "exif")
    row(ids[10], "error", "missing mask")
    row(ids[11], "error", "colour (rgb) mask")
    assert "train_aug" in result.output  # every split scanned by default


def test_check_data_clean_dataset_passes(tmp_path):
    make_synthetic_dataset(tmp_path, num_images=4, image_size=32, seed=0)
    result = runner.invoke(app, ["check-data", "--data-root", str(tmp_path), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "no problems" in result.output


def test_check_data_wrong_layout_is_an_error(tmp_path):
    result = runner.invoke(app, ["check-data", "--data-root", str(tmp_path)])
    assert result.exit_code == 2 and "VOC2012" in result.output


def test_loaders_convert_to_rgb(tmp_path):
    cases = {
        "gray.png": Image.fromarray(np.full((5, 7), 100, np.uint8)),
        "rgba.png": Image.fromarray(np.full((5, 7, 4), 100, np.uint8)),
        "cmyk.jpg": Image.new("CMYK", (7, 5), (0, 0, 0, 0)),
        "deep.png": Image.fromarray(np.full((5, 7), 65535, np.uint16)),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        array, report = read_image_with_report(tmp_path / name)
        assert array.shape == (5, 7, 3) and array.dtype == np.uint8, name
        assert report.conversions, name
    deep, _ = read_image_with_report(tmp_path / "deep.png")
    assert deep.min() == 255
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, 0] = 255
    _exif_rotated(tmp_path / "rot.jpg", pixels)
    rotated, report = read_image_with_report(tmp_path / "rot.jpg")
    assert rotated.shape == (6, 4, 3) and "EXIF" in report.conversions[0][0]
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DatasetError, match="bad.jpg"):
        read_image_with_report(tmp_path / "bad.jpg")
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "colour_mask.png")
    with pytest.raises(DatasetError, match="class indices"):
        read_label_png(tmp_path / "colour_mask.png")


def test_check_data_folder_dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "ok.jpg")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "none.jpg")
    (tmp_path / "labels.csv").write_text("ok.jpg,cat\nnone.jpg,\ngone.jpg,cat\n")
    result = runner.invoke(app, ["check-data", "--dataset", "folder", "--data-root", str(tmp_path)])
    assert result.exit_code == 1
    assert "gone.jpg" in result.output and "none.jpg" in result.output
    assert "ok.jpg" not in result.output


def test_check_data_on_a_folder_checks_its_split_lists(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / f"{name}.jpg")
    (tmp_path / "labels.csv").write_text("a.jpg,cat\nb.jpg,cat\nc.jpg,cat\n")
    (tmp_path / "train.txt").write_text("a.jpg\nb.jpg\n")
    (tmp_path / "val.txt").write_text("c.jpg\n")
    args = ["check-data", "--dataset", "folder", "--data-root", str(tmp_path)]
    result = runner.invoke(app, args, terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "all: 3 images, train: 2 images, val: 1 images" in " ".join(result.output.split())
    (tmp_path / "val.txt").write_text("c.jpg\nd.jpg\n")  # d has no row in labels.csv
    result = runner.invoke(app, args, terminal_width=250)
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "bad split list" in text and "val.txt: d has no entry in" in text


def test_check_data_reports_repeated_images_and_case_only_class_names(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.txt").write_text("background\ncat\nDog\ndog\n")
    for name in ("a", "b"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / f"{name}.jpg")
    (tmp_path / "labels.csv").write_text("image,labels\na.jpg,cat\nb.jpg,CAT\na.jpg,dog\n")
    result = runner.invoke(
        app, ["check-data", "--dataset", "folder", "--data-root", str(tmp_path)], terminal_width=250
    )
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "image 'a.jpg' listed again at line 4 (first at line 2)" in text
    assert "'Dog' and 'dog' differ only in case" in text
    assert "label 'CAT' at line 3 matches class 'cat' only ignoring case" in text


def test_labels_json_repeated_keys_are_found(tmp_path):
    from co2sam.data.folder import labels_file_findings

    path = tmp_path / "labels.json"
    path.write_text('{\n "a.jpg": ["cat"],\n "b.jpg": ["cat"],\n "a.jpg": ["cat"]\n}\n')
    (finding,) = labels_file_findings(path, ("background", "cat"))
    assert finding[0] == "warning"
    assert "listed again at line 4 (first at line 2)" in finding[1]
