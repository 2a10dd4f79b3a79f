import json

import pytest
import torch

from co2sam.models.segmentation_net import (
    ARCHITECTURES,
    METADATA_FILE,
    SegmentationNetError,
    build_net,
    load_net,
    mask_targets,
    pixel_cross_entropy,
    read_net_metadata,
    save_net,
)

NAMES = ("background", "a", "b")


def _batch(seed=0, height=64, width=96):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, height, width, generator=generator)
    labels = torch.randint(0, 3, (2, height, width), generator=generator)
    labels[0, :12] = 255
    return pixels, labels


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_architecture_trains_and_predicts_at_the_input_size(architecture):
    torch.manual_seed(0)
    net = build_net(architecture, "tiny", NAMES)
    pixels, labels = _batch()
    loss = net(pixels, labels).loss
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    net.eval()
    with torch.no_grad():
        scores = net(pixels).scores
    assert scores.shape == (2, 3, 64, 96)
    assert (scores >= 0).all()
    if architecture != "mask2former":  # softmax; Mask2Former sums over queries
        torch.testing.assert_close(scores.sum(1), torch.ones(2, 64, 96))


def test_segformer_loss_equals_transformers_cross_entropy():
    torch.manual_seed(0)
    net = build_net("segformer", "tiny", NAMES).eval()  # no dropout: same logits twice
    pixels, labels = _batch()
    ours = net(pixels, labels).loss
    theirs = net.hf(pixels, labels=labels).loss
    torch.testing.assert_close(ours, theirs)


def test_upernet_loss_adds_the_auxiliary_head_as_transformers_does():
    torch.manual_seed(0)
    net = build_net("upernet", "tiny", NAMES).eval()
    pixels, labels = _batch()
    ours = net(pixels, labels).loss
    theirs = net.hf(pixels, labels=labels).loss
    torch.testing.assert_close(ours, theirs)
    main_only = pixel_cross_entropy(net.hf(pixels).logits, labels)
    assert ours > main_only  # the auxiliary term (weight 0.4) is in


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_a_batch_without_labelled_pixels_gives_a_finite_loss(architecture):
    torch.manual_seed(0)
    net = build_net(architecture, "tiny", NAMES)
    pixels, _ = _batch()
    loss = net(pixels, torch.full((2, 64, 96), 255)).loss
    loss.backward()
    assert torch.isfinite(loss)
    if architecture != "mask2former":  # no class to learn: zero (transformers gives NaN)
        assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_mask_targets_one_mask_per_class_present_without_ignore():
    labels = torch.tensor([[[0, 2, 255], [2, 2, 0]], [[255, 255, 255], [255, 255, 255]]])
    masks, classes = mask_targets(labels)
    assert classes[0].tolist() == [0, 2] and classes[1].tolist() == []
    assert masks[0].shape == (2, 2, 3) and masks[1].shape == (0, 2, 3)
    assert masks[0][1].tolist() == [[0, 1, 0], [1, 1, 0]]
    assert masks[0][:, 0, 2].sum() == 0  # the ignored pixel is in no mask


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_saved_folder_reloads_the_same_network(tmp_path, architecture):
    torch.manual_seed(0)
    net = build_net(architecture, "tiny", NAMES).eval()
    save_net(net, tmp_path / "best", {"step": 7})
    save_net(net, tmp_path / "best", {"step": 8})  # replacing a folder keeps one copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    loaded, metadata = load_net(tmp_path / "best")
    assert metadata["step"] == 8 and metadata["class_names"] == list(NAMES)
    assert loaded.architecture == architecture and not loaded.training
    pixels, _ = _batch()
    with torch.no_grad():
        assert torch.equal(net(pixels).scores, loaded(pixels).scores)
    assert not list(tmp_path.glob("best/*.bin"))  # safetensors only, nothing pickled


def test_folders_that_are_not_segmenters_are_refused(tmp_path):
    with pytest.raises(SegmentationNetError, match="co2sam_segmenter.json is missing"):
        read_net_metadata(tmp_path)
    (tmp_path / METADATA_FILE).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(SegmentationNetError, match="format 99"):
        read_net_metadata(tmp_path)
    with pytest.raises(SegmentationNetError, match="unknown architecture"):
        build_net("deeplab", "tiny", NAMES)


def test_pretrained_weights_load_with_a_new_head_for_other_classes(tmp_path):
    torch.manual_seed(0)
    source = build_net("segformer", "tiny", [f"c{i}" for i in range(5)])
    source.hf.save_pretrained(tmp_path / "pretrained")
    net = build_net("segformer", str(tmp_path / "pretrained"), NAMES)
    assert net.hf.decode_head.classifier.out_channels == 3
    assert net.hf.config.id2label[2] == "b"
    encoder = "segformer.stages.0.patch_embeddings.proj.weight"
    torch.testing.assert_close(
        net.hf.state_dict()[encoder], source.hf.state_dict()[encoder], rtol=0, atol=0
    )
    with pytest.raises(SegmentationNetError, match="cannot load segformer"):
        build_net("segformer", str(tmp_path / "missing"), NAMES)


@pytest.mark.parametrize(
    ("name", "keep"),
    [("model.safetensors", 100), ("model.safetensors", 0.5), ("config.json", 0.5)],
    ids=["weights-header-cut", "weights-half", "config-half"],
)
def test_a_damaged_folder_is_refused_naming_the_file_and_the_fix(tmp_path, name, keep):
    save_net(build_net("segformer", "tiny", NAMES), tmp_path / "best", {})
    damaged = tmp_path / "best" / name
    data = damaged.read_bytes()
    damaged.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(SegmentationNetError) as refused:
        load_net(tmp_path / "best")
    message = str(refused.value)
    assert f"cannot read {damaged}" in message and "truncated or corrupt" in message
    assert "copy the folder again" in message and "\n" not in message
