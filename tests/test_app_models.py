import numpy as np
import pytest
import torch

from co2sam.app.models import ADAPTED, PLAIN, AppModels
from co2sam.app.paths import short_path
from co2sam.records import Boxes
from co2sam.sam import Segmenter, attach_lora, load_sam, save_adapter


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
    maps = models.label_maps(image, BOXES, 3)
    assert maps[PLAIN].shape == (96, 128) and maps[PLAIN].dtype == np.uint8
    assert set(np.unique(maps[PLAIN])) <= {0, 1, 2} and (maps[PLAIN] == 1).any()
    assert not models.label_maps(image, Boxes(), 3)[PLAIN].any()  # no box: background
    assert "no adapter" in models.describe() and "drawn by hand" in models.describe()


def test_before_after_is_plain_sam_and_the_adapter_on_the_same_boxes(adapter, image):
    models = AppModels.load(sam=None, adapter=str(adapter), device="cpu")
    assert list(models.views) == [PLAIN, ADAPTED] and models.base == "demo"
    maps = models.label_maps(image, BOXES, 3)
    alone = AppModels(Segmenter(load_sam("demo")).eval(), base="demo")
    np.testing.assert_array_equal(maps[PLAIN], alone.label_maps(image, BOXES, 3)[PLAIN])
    assert (maps[PLAIN] != maps[ADAPTED]).any()  # this adapter changes the masks
    np.testing.assert_array_equal(maps[ADAPTED], models.label_maps(image, BOXES, 3)[ADAPTED])
    assert f"adapter: {short_path(adapter)}" in models.describe()
