"""DDP on CPU: two gloo processes distill together and end with the same network.

Both processes are started at once, as torchrun or a cluster launcher would (Fabric sees
LOCAL_RANK and joins them). Each takes one image of every two-image step and half of the
validation images; rank 0 writes the run folder.
"""

import textwrap

import pytest
import torch
from ddp_support import run_two_ranks

SCRIPT = textwrap.dedent(
    """
    import sys

    import torch

    from co2sam.distill.config import load_distill_config
    from co2sam.distill.loop import distill

    voc, out_dir = sys.argv[1], sys.argv[2]
    config = load_distill_config(None, [
        "model.pretrained=tiny", "data.dataset=synthetic", f"data.root={voc}/..",
        "data.train_split=train", "data.num_workers=0", f"pseudo_labels.dir={voc}",
        "augment.scale=[128,48]", "augment.crop_size=48", "eval.scale=[128,48]",
        "train.accelerator=cpu", "train.devices=2", "train.batch_size=2",
        "train.iterations=4", "train.val_every=4", f"train.out_dir={out_dir}/run",
        "optim.warmup_steps=0", "optim.lr=1e-3",
    ])
    result = distill(config, progress=False)
    rank = torch.distributed.get_rank()
    parameters = {n: p.detach().clone() for n, p in result.net.named_parameters()}
    torch.save({"parameters": parameters, "step": result.step, "epoch": result.epoch,
                "history": result.history}, f"{out_dir}/rank{rank}.pt")
    """
)


def test_two_processes_end_with_the_same_network(tmp_path):
    from co2sam.data.synthetic import make_synthetic_dataset
    from co2sam.data.voc import VocDataset
    from co2sam.evaluate import evaluate_predictor
    from co2sam.inference.segmenter import SegmenterPredictor
    from co2sam.models.segmentation_net import build_net, load_net
    from co2sam.train.checkpoint import load_checkpoint

    voc = make_synthetic_dataset(
        tmp_path / "data", num_images=6, num_classes=2, image_size=48, seed=0,
        splits={"train": 4, "val": 2},
    )  # fmt: skip
    script = tmp_path / "distill_ddp.py"
    script.write_text(SCRIPT)
    run_two_ranks(script, [voc, tmp_path], tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 4
    assert ranks[0]["epoch"] == ranks[1]["epoch"] == 2  # 4 images, 2 per step
    # one validation, shared out and summed: both processes hold the numbers that one
    # process scoring the whole val split with the saved network gets
    assert len(ranks[0]["history"]) == 1 and ranks[0]["history"] == ranks[1]["history"]
    net = load_net(tmp_path / "run" / "last")[0]
    val = VocDataset(voc, "val")
    alone = evaluate_predictor(
        SegmenterPredictor(net, scale=(128, 48)), val, modes=("open",), progress=False
    )["open"]
    recorded = ranks[0]["history"][0]["metrics"]["open"]
    assert recorded["miou"] == pytest.approx(alone["miou"], abs=1e-9)
    assert recorded["pixel_accuracy"] == pytest.approx(alone["pixel_accuracy"], abs=1e-9)
    first, second = ranks[0]["parameters"], ranks[1]["parameters"]
    assert first.keys() == second.keys() and first
    for name in first:
        assert torch.equal(first[name], second[name]), name
    torch.manual_seed(1337)  # distill's seed: the starting network
    start = build_net("segformer", "tiny", load_net(tmp_path / "run" / "last")[0].class_names)
    assert not torch.equal(first["hf.decode_head.classifier.weight"],
                           start.hf.decode_head.classifier.weight)  # fmt: skip
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert len(checkpoint["process_rng"]) == 2 and checkpoint["step"] == 4
    assert (tmp_path / "run" / "best").is_dir()
