"""DDP on CPU: two gloo processes run five epochs and end with the same adapter.

Both processes are started at once, as torchrun or a cluster launcher would (Fabric
sees LOCAL_RANK and joins them), so their imports overlap. Only rank 0 keeps a template
cache, so the processes run different numbers of T-teacher forwards (no gradient, no
collective): they must still agree step by step.
"""

import os
import socket
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    import torch

    from co2sam.config import load_config
    from co2sam.prompts import oracle_boxes
    from co2sam.train.loop import fit

    data_root, out_dir = sys.argv[1], sys.argv[2]
    config = load_config(None, [
        "model.sam=tiny", "data.dataset=synthetic", f"data.root={data_root}",
        "data.train_split=train", "data.num_workers=0", "prompts.source=oracle",
        f"train.out_dir={out_dir}/run", "train.accelerator=cpu", "train.devices=2",
        "train.batch_size=1", "train.max_steps=10", "train.val_every=0",
        "optim.warmup_steps=0", "optim.lr=1e-2",
        f"train.template_cache_gib={1 if os.environ['LOCAL_RANK'] == '0' else 0}",
    ])

    def boxes_fn(sample):  # one image without boxes: its process joins with a zero loss
        boxes = oracle_boxes(sample)
        return boxes.select([]) if sample.id == "syn_00001" else boxes

    result = fit(config, boxes_fn=boxes_fn, progress=False)
    rank = torch.distributed.get_rank()
    lora = {n: p.detach().clone() for n, p in result.segmenter.named_parameters() if "lora_" in n}
    saved = {"lora": lora, "step": result.step, "skipped": result.skipped_images,
             "hit_rate": result.template_cache_hit_rate}
    torch.save(saved, f"{out_dir}/rank{rank}.pt")
    """
)


def test_ddp_two_processes_end_with_the_same_adapter(tmp_path):
    from co2sam.data.synthetic import make_synthetic_dataset

    data_root = tmp_path / "data"
    make_synthetic_dataset(
        data_root, num_images=5, num_classes=2, image_size=48, seed=0, splits={"train": 4, "val": 1}
    )
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = []
    for rank in (0, 1):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK="0")
        env.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE="2", OMP_NUM_THREADS="1")
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(data_root), str(tmp_path)],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        for process in processes:
            output, _ = process.communicate(timeout=120)
            assert process.returncode == 0, output[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 10  # 2 images per process, 5 epochs
    assert ranks[0]["skipped"] + ranks[1]["skipped"] == 5  # one image without boxes
    assert ranks[0]["hit_rate"] > 0 and ranks[1]["hit_rate"] is None
    first, second = ranks[0]["lora"], ranks[1]["lora"]
    assert first.keys() == second.keys() and first
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(first[n].abs().sum() > 0 for n in first if "lora_B" in n)  # it trained
