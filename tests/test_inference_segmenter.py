import numpy as np
import pytest
import torch

from co2sam.inference.segmenter import SegmenterPredictor, load_segmenter_predictor
from co2sam.models.segmentation_net import build_net, save_net
from co2sam.records import Sample

NAMES = ("background", "a", "b", "c")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_net("segformer", "tiny", NAMES).eval()


def _sample(height=37, width=50, labels=(2,)):
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Sample(image=image, mask=None, labels=list(labels), id="x")


def test_label_maps_are_at_the_image_size_in_both_modes(net):
    predictor = SegmenterPredictor(net, scale=(128, 64))
    with torch.inference_mode():
        (output,) = predictor.predict([_sample()], ("open", "label-guided"), confidence=True)
    assert output.boxes is None
    assert output.label_maps["open"].shape == (37, 50)
    assert set(output.label_maps["label-guided"].unique().tolist()) <= {0, 2}
    probabilities = predictor.class_probabilities(_sample().image)
    assert torch.equal(output.label_maps["open"], probabilities.argmax(0))
    confidence = output.confidences["open"]
    torch.testing.assert_close(confidence, probabilities.max(0).values)
    assert (
        (output.confidences["label-guided"] >= 0) & (output.confidences["label-guided"] <= 1)
    ).all()


def test_tta_averages_every_scale_and_its_flip(net):
    image = _sample().image
    ratios = (0.5, 1.0, 1.5)
    predictor = SegmenterPredictor(net, scale=(128, 64), tta=True, tta_ratios=ratios)
    views = []
    for ratio in ratios:
        single = SegmenterPredictor(net, scale=(128 * ratio, 64 * ratio))
        views.append(single.class_probabilities(image))
        flipped = single.class_probabilities(np.ascontiguousarray(image[:, ::-1]))
        views.append(flipped.flip(-1))
    with torch.inference_mode():
        torch.testing.assert_close(
            predictor.class_probabilities(image), torch.stack(views).mean(0), atol=1e-5, rtol=0
        )
    assert "3 scale(s) with flips" in predictor.describe()


def test_folder_settings_are_used_and_tta_can_be_switched_on(net, tmp_path):
    settings = {"scale": [96, 48], "tta": False, "tta_ratios": [0.75, 1.0], "tta_flip": False}
    save_net(net, tmp_path / "best", {"eval": settings})
    predictor, metadata = load_segmenter_predictor(tmp_path / "best")
    assert predictor.scale == (96, 48) and predictor.ratios == (1.0,)
    predictor, _ = load_segmenter_predictor(tmp_path / "best", tta=True)
    assert predictor.ratios == (0.75, 1.0) and not predictor.flip
    assert metadata["class_names"] == list(NAMES)
