import numpy as np
import pytest
import torch

from co2sam.app.models import (
    ADAPTED,
    PLAIN,
    SEGMENTER,
    AppModels,
    class_key,
    index_map,
    merged_class_names,
)
from co2sam.app.paths import short_path
from co2sam.models.segmentation_net import build_net, save_net
from co2sam.records import Boxes
from co2sam.sam import Segmenter, attach_lora, load_sam, save_adapter

NAMES = ("background", "a", "b")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """An adapter on the demo SAM whose LoRA changes the model (B is not zero)."""
    model = attach_lora(load_sam("demo"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    return save_adapter(model, tmp_path_factory.mktemp("adapter"), base="demo")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 60, (96, 128, 3), dtype=np.uint8)
    picture[20:70, 30:100] = (220, 40, 40)
    return picture


BOXES = Boxes(np.array([[25, 15, 105, 75], [5, 5, 40, 40]], np.float32), [1, 2], [0.9, 0.4])


def test_plain_sam_alone(image):
    models = AppModels.load(sam="demo", adapter=None, device="cpu")
    assert list(models.views) == [PLAIN]
    maps = models.label_maps(image, BOXES, NAMES)
    assert maps[PLAIN].shape == (96, 128) and maps[PLAIN].dtype == np.uint8
    assert set(np.unique(maps[PLAIN])) <= {0, 1, 2} and (maps[PLAIN] == 1).any()
    assert not models.label_maps(image, Boxes(), NAMES)[PLAIN].any()  # no box: background
    assert models.box_free_views() == []
    assert models.class_lists(NAMES) == (NAMES, {PLAIN: ("a", "b")})
    assert "no adapter" in models.describe() and "drawn by hand" in models.describe()


def test_before_after_is_plain_sam_and_the_adapter_on_the_same_boxes(adapter, image):
    models = AppModels.load(sam=None, adapter=str(adapter), device="cpu")
    assert list(models.views) == [PLAIN, ADAPTED] and models.base == "demo"
    maps = models.label_maps(image, BOXES, NAMES)
    alone = AppModels(Segmenter(load_sam("demo")).eval(), base="demo")
    np.testing.assert_array_equal(maps[PLAIN], alone.label_maps(image, BOXES, NAMES)[PLAIN])
    assert (maps[PLAIN] != maps[ADAPTED]).any()  # this adapter changes the masks
    again = models.label_maps(image, BOXES, NAMES, [ADAPTED])
    assert list(again) == [ADAPTED]
    np.testing.assert_array_equal(maps[ADAPTED], again[ADAPTED])
    assert f"adapter: {short_path(adapter)}" in models.describe()


def test_class_names_match_across_spellings_and_merge_in_order():
    assert class_key("Dining table") == class_key("diningtable") == "diningtable"
    typed = ("background", "cat", "dining table")
    own = ("background", "dog", "Cat", "diningtable", "bird")
    merged = merged_class_names(typed, [own])
    assert merged == ("background", "cat", "dining table", "dog", "bird")
    assert index_map(own, merged).tolist() == [0, 3, 1, 2, 4]
    assert index_map(own, ("background", "bird")).tolist() == [0, 0, 0, 0, 1]  # not there: 0


@pytest.fixture(scope="module")
def segmenter_folder(tmp_path_factory):
    """A tiny random SegFormer whose classes are (background, dog, Cat, bird)."""
    torch.manual_seed(0)
    net = build_net("segformer", "tiny", ("background", "dog", "Cat", "bird")).eval()
    folder = tmp_path_factory.mktemp("segmenter") / "best"
    return save_net(net, folder, {"eval": {"scale": [128, 64]}})


def test_the_segmenter_view_needs_no_boxes_and_speaks_the_pages_class_names(
    segmenter_folder, image
):
    from co2sam.inference.segmenter import load_segmenter_predictor

    models = AppModels.load(sam="demo", adapter=None, device="cpu", segmenter=str(segmenter_folder))
    assert list(models.views) == [PLAIN, SEGMENTER] and models.box_free_views() == [SEGMENTER]
    typed = ("background", "cat", "fish")
    names, shown = models.class_lists(typed)
    assert names == ("background", "cat", "fish", "dog", "bird")
    assert shown == {PLAIN: ("cat", "fish"), SEGMENTER: ("dog", "cat", "bird")}

    label = models.label_maps(image, Boxes(), names, [SEGMENTER])[SEGMENTER]
    predictor, _ = load_segmenter_predictor(segmenter_folder)
    with torch.inference_mode():
        own = predictor.class_probabilities(image).argmax(0).numpy()
    assert label.shape == (96, 128) and label.dtype == np.uint8
    assert len(np.unique(own)) > 1  # the check below maps more than one class
    np.testing.assert_array_equal(label, np.array([0, 3, 1, 4])[own])  # dog 3, Cat 1, bird 4
    with_boxes = models.label_maps(image, BOXES, names)
    np.testing.assert_array_equal(with_boxes[SEGMENTER], label)  # boxes are not used
    assert set(np.unique(with_boxes[PLAIN])) <= {0, 1, 2}
    assert f"segmenter: {short_path(str(segmenter_folder))} (segformer)" in models.describe()
