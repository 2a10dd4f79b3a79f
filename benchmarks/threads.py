"""Do SAM's outputs depend on the number of CPU threads? (Why a sharded CPU run can
differ from one process in the last bit.)

On CPU, ``co2sam evaluate --devices N`` gives each process cores / N intra-op threads
(Lightning's choice unless ``OMP_NUM_THREADS`` is set) and one process uses every core.
This segments the same generated images with the same SAM at each thread count and
prints, against the first count: the largest mask-logit difference, the share of logits
that differ, and the label-map pixels that differ (label-guided, oracle boxes).

    python benchmarks/threads.py --threads 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from co2sam.config import DataConfig
from co2sam.data import build_dataset, make_synthetic_dataset
from co2sam.inference.sam import SamPredictor, box_mask_logits
from co2sam.prompts import oracle_boxes
from co2sam.prompts.oracle import dataset_instance_mask
from co2sam.sam import load_sam, segmenter_for


def outputs_per_thread_count(sam: str, images: int, size: int, threads: list[int]) -> dict:
    """``{threads: (mask logits per image, label maps per image)}`` on generated images."""
    with tempfile.TemporaryDirectory() as folder:
        make_synthetic_dataset(
            Path(folder), num_images=images, num_classes=4, image_size=size, splits={"val": images}
        )
        dataset = build_dataset(DataConfig(dataset="synthetic", root=folder), "val")
        samples = [dataset[index] for index in range(len(dataset))]
        boxes = [oracle_boxes(s, dataset_instance_mask(dataset, s.id)) for s in samples]
    segmenter = segmenter_for(load_sam(sam)).eval()
    by_id = {sample.id: box for sample, box in zip(samples, boxes, strict=True)}
    predictor = SamPredictor(segmenter, lambda sample: by_id[sample.id], len(dataset.class_names))
    found = {}
    for count in threads:
        torch.set_num_threads(count)
        with torch.inference_mode():
            logits = [
                box_mask_logits(segmenter, [s.image], [b])[0]
                for s, b in zip(samples, boxes, strict=True)
            ]
            maps = [
                predictor.predict([s], ("label-guided",))[0].label_maps["label-guided"]
                for s in samples
            ]
        found[count] = (logits, maps)
    return found


def compare(found: dict) -> list[dict]:
    """One row per thread count, against the first."""
    first, (base_logits, base_maps) = next(iter(found.items()))
    rows = []
    for count, (logits, maps) in found.items():
        pairs = list(zip(base_logits, logits, strict=True))
        rows.append(
            {
                "threads": count,
                "against": first,
                "max_logit_diff": max(float((a - b).abs().max()) for a, b in pairs),
                "logits_differing": sum(int((a != b).sum()) for a, b in pairs)
                / sum(a.numel() for a, _ in pairs),
                "pixels_differing": sum(
                    int((a != b).sum()) for a, b in zip(base_maps, maps, strict=True)
                ),
                "images_differing": sum(
                    bool((a != b).any()) for a, b in zip(base_maps, maps, strict=True)
                ),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam", default="tiny", help="SAM weights (default: tiny, random)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=200, help="image side in pixels")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = compare(outputs_per_thread_count(args.sam, args.images, args.size, args.threads))
    if args.json:
        print(json.dumps(rows))
        return rows
    print(f"SAM {args.sam}, {args.images} images of {args.size} px, oracle boxes")
    print("| threads | max logit diff | logits differing | label pixels differing (images) |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['threads']} vs {row['against']} | {row['max_logit_diff']:.3g} | "
            f"{100 * row['logits_differing']:.1f}% | {row['pixels_differing']} "
            f"({row['images_differing']}) |"
        )
    return rows


if __name__ == "__main__":
    main()
