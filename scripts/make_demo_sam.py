"""Make the demo SAM's shipped weights: box -> mask pretraining on the demo's source domain.

    python scripts/make_demo_sam.py                 # writes src/co2sam/assets/demo_sam
    python scripts/make_demo_sam.py --out my_demo_sam  # elsewhere

Deterministic for a given seed, torch version and thread count (the script uses 2
threads): it generates the source domain (co2sam.demo.data.pretraining_spec, seed 0),
builds the demo SAM from random weights (co2sam.demo.model.build_demo_sam, seed 0),
trains every parameter (co2sam.demo.pretrain) and writes a transformers folder with
fp16 weights (< 2 MB) plus provenance.json (command, seeds, settings, losses, scores).
About 3 minutes of CPU time (7 minutes on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from co2sam.demo.data import make_domain, pretraining_spec, target_spec
from co2sam.demo.detector import detector_settings, simulated_boxes
from co2sam.demo.model import build_demo_sam, demo_sam_path, load_demo_sam, save_demo_sam
from co2sam.demo.pretrain import PretrainConfig, collect_objects, pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=demo_sam_path())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    from co2sam.data.voc import VocDataset
    from co2sam.evaluate import evaluate_model
    from co2sam.sam import Segmenter

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        source = pretraining_spec(seed=args.seed)
        target = target_spec(num_train=160, num_val=64, seed=0)  # the demo's, for the check
        source_root = make_domain(Path(scratch) / "source", source)
        train = VocDataset(source_root, "train")
        print(f"source domain: {len(train)} training images")
        segmenter = Segmenter(build_demo_sam(seed=args.seed))
        settings = PretrainConfig(steps=args.steps, seed=args.seed)
        summary = pretrain(segmenter, collect_objects(train), settings, log=print)

        provenance = {
            "command": " ".join(
                ["python scripts/make_demo_sam.py", *(a for a in sys.argv[1:] if a != "--out")]
            ),
            "seed": args.seed,
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "source_domain": source.to_dict(),
            "check_domain": target.to_dict(),
            "pretraining": summary,
        }
        save_demo_sam(segmenter.sam, args.out, provenance)

        # Check what was written: reload the fp16 file and score it with a simulated detector
        # on the source domain's val split and on the target val split `co2sam demo` uses.
        reloaded = Segmenter(load_demo_sam(args.out))
        scores = {}
        for name, spec in (("source", source), ("target", target)):
            root = source_root if name == "source" else make_domain(Path(scratch) / name, spec)
            val = VocDataset(root, "val")
            boxes = simulated_boxes(val, detector_settings("default", 0), all_classes=True)
            metrics = evaluate_model(reloaded, val, boxes, progress=False)
            scores[name] = {mode: round(m["miou"], 4) for mode, m in metrics.items()}
            print(f"{name} val mIoU: {scores[name]}")
        provenance["val_miou"] = scores
        provenance["seconds"] = round(time.perf_counter() - started, 1)
        (args.out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    size = (args.out / "model.safetensors").stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB) in {provenance['seconds']:.0f} s")


if __name__ == "__main__":
    main()
