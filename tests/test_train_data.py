import numpy as np
import pytest

from co2sam.data.views import TrainViews, flip_boxes
from co2sam.records import Boxes, Sample
from co2sam.train.data import EpochSampler, TrainingSet, collate_train_items

BOXES = Boxes(
    np.array([[2, 3, 20, 15], [10, 1, 30, 9]], np.float32), np.array([1, 2]), np.array([0.9, 0.4])
)


def _dataset(count: int = 6) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [
        Sample(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), None, [1, 2], f"im{i}")
        for i in range(count)
    ]


def _training_set(**kwargs) -> TrainingSet:
    return TrainingSet(_dataset(), lambda sample: BOXES, TrainViews(0), seed=7, **kwargs)


def test_boxes_follow_the_weak_view_flip():
    flips = set()
    training_set = _training_set()
    for epoch in range(4):
        training_set.set_epoch(epoch)
        for index in range(len(training_set)):
            item = training_set[index]
            image = training_set.dataset[index].image
            pair = training_set.views(image, BOXES.xyxy, training_set.sample_rng(index))
            flips.add((pair.hflip, pair.vflip))
            expected = flip_boxes(BOXES.xyxy, (24, 32), hflip=pair.hflip, vflip=pair.vflip)
            np.testing.assert_allclose(item.boxes, expected)
            np.testing.assert_array_equal(item.weak, pair.weak)
            np.testing.assert_array_equal(item.box_classes, BOXES.classes)
    assert len(flips) > 1, "no flip happened in 24 samples"


def test_reference_mode_keeps_the_unflipped_boxes():
    training_set = _training_set(flip_boxes=False)
    for index in range(len(training_set)):
        np.testing.assert_array_equal(training_set[index].boxes, BOXES.xyxy)


@pytest.mark.parametrize(
    ("overrides", "flipped"), [([], True), (["prompts.compat=reference"], False)]
)
def test_voc_preset_flips_boxes_and_prompts_reference_does_not(overrides, flipped):
    """The voc preset takes the published loss form, not the unflipped-box bug."""
    from types import SimpleNamespace

    from co2sam.config import load_config
    from co2sam.train.loop import _loader

    config = load_config("voc", overrides + ["data.num_workers=0"])
    assert config.loss.compat == "reference"
    fabric = SimpleNamespace(world_size=1, global_rank=0)
    training_set = _loader(config, _dataset(), lambda sample: BOXES, fabric)[0]
    assert training_set.flip_boxes is flipped


def test_augmentation_depends_only_on_seed_epoch_and_index():
    first, second = _training_set(), _training_set()
    first.set_epoch(3)
    second.set_epoch(3)
    np.testing.assert_array_equal(first[4].strong, second[4].strong)
    second.set_epoch(4)
    assert not all(np.array_equal(first[i].strong, second[i].strong) for i in range(len(first)))


@pytest.mark.parametrize("replicas", [1, 2])
def test_sampler_resumes_mid_epoch_with_the_same_order(replicas):
    dataset = list(range(10))
    for rank in range(replicas):
        sampler = EpochSampler(dataset, num_replicas=replicas, rank=rank, seed=1)
        sampler.set_position(2)
        full = list(sampler)
        sampler.set_position(2, start=3)
        assert list(sampler) == full[3:]
        assert len(sampler) == len(full) - 3
        assert sampler.batches_per_epoch(2) == -(-len(full) // 2)


@pytest.mark.parametrize(("size", "replicas"), [(10, 1), (10, 2), (7, 3), (2, 3)])
def test_sampler_deals_out_distributed_samplers_order(size, replicas):
    from torch.utils.data import DistributedSampler

    for rank in range(replicas):
        sampler = EpochSampler(list(range(size)), num_replicas=replicas, rank=rank, seed=1)
        reference = DistributedSampler(
            list(range(size)), num_replicas=replicas, rank=rank, seed=1, shuffle=True
        )
        sampler.set_position(4)
        reference.set_epoch(4)
        assert list(sampler) == list(reference) and len(sampler) == len(reference)


@pytest.mark.parametrize(
    ("before", "after"), [((1, 3), (2, 2)), ((2, 2), (3, 1)), ((2, 1), (1, 4))]
)
def test_sampler_position_carries_over_to_other_processes_and_batch_sizes(before, after):
    """Resumed with another (processes, batch size), the rest of the epoch's order is dealt
    out: every image not yet used comes once, none that was (but the padding)."""
    size, batches_done = 23, 2
    replicas, batch_size = before
    order = EpochSampler(list(range(size)), num_replicas=1, rank=0, seed=5)
    order.set_position(1)
    order = list(order)
    used = []
    for rank in range(replicas):
        sampler = EpochSampler(list(range(size)), num_replicas=replicas, rank=rank, seed=5)
        sampler.set_position(1)
        used += list(sampler)[: batches_done * batch_size]
    consumed = batches_done * batch_size * replicas  # what the checkpoint records
    assert sorted(used) == sorted(order[:consumed])
    replicas, batch_size = after
    rest = []
    for rank in range(replicas):
        sampler = EpochSampler(list(range(size)), num_replicas=replicas, rank=rank, seed=5)
        sampler.set_position(1, consumed=consumed)
        share = list(sampler)
        assert len(share) == len(sampler) == -(-(size - consumed) // replicas)
        rest += share
    padding = len(rest) - (size - consumed)
    assert sorted(rest) == sorted(order[consumed:] + order[:padding])
    assert set(rest) | set(used) == set(range(size))


def test_collate_keeps_ragged_boxes_per_image():
    items = [_training_set()[0], _training_set()[1]]
    batch = collate_train_items(items)
    assert len(batch) == 2 and batch.image_ids == ["im0", "im1"]
    assert [b.shape for b in batch.boxes] == [(2, 4), (2, 4)]


def test_fabric_loader_wrapper_cannot_change_the_epoch_order():
    """Fabric calls sampler.set_epoch(<passes over this loader in this process>) itself."""
    from lightning.fabric import Fabric
    from torch.utils.data import DataLoader

    dataset = list(range(12))
    sampler = EpochSampler(dataset, num_replicas=1, rank=0, seed=1)
    loader = Fabric(accelerator="cpu", devices=1).setup_dataloaders(
        DataLoader(dataset, sampler=sampler, batch_size=1),
        use_distributed_sampler=False,
        move_to_device=False,
    )
    orders = {}
    for epoch in (3, 3, 5):  # a resumed run's first pass is epoch 3, not the wrapper's 0
        sampler.set_position(epoch)
        orders.setdefault(epoch, []).append([int(batch) for batch in loader])
    reference = EpochSampler(dataset, num_replicas=1, rank=0, seed=1)
    for epoch, passes in orders.items():
        reference.set_position(epoch)
        assert all(order == list(reference) for order in passes), epoch
    assert orders[3][0] != orders[5][0]
    sampler.set_epoch(0)  # ignored
    assert [int(batch) for batch in sampler] == orders[5][0]
