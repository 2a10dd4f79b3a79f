"""Speed of the pre-flight check (co2sam.data.preflight) against check-data's full scan.

Writes a VOC-layout split of photo-sized JPEGs (500 x 375, textured so they compress
like photos, about 60-100 KB) and class-index PNG masks into a temporary folder, then
times, on the same files:

- ``check-data``'s scan (every image fully decoded, one thread);
- the pre-flight that ``train``/``evaluate``/``pseudo-labels``/``boxes`` run
  (JPEGs decoded at 1/8 scale, PNG checksums), with 1 thread and with ``--threads``.

The first pass over the files is not timed (it warms the page cache for all three).

    python benchmarks/preflight.py --images 400 --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from co2sam.data.check import scan_dataset
from co2sam.data.voc import VocDataset


def write_split(root: Path, count: int, seed: int = 0) -> VocDataset:
    """``count`` JPEG photos and PNG masks in the VOC layout under ``root``."""
    voc = root / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:375, 0:500]
    ids = []
    for index in range(count):
        base = (np.sin(xs / (20 + index % 7)) + np.cos(ys / (15 + index % 5))) * 60 + 128
        noise = rng.normal(0, 25, (375, 500, 3))
        pixels = np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)
        image_id = f"img_{index:05d}"
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        mask = np.zeros((375, 500), np.uint8)
        mask[50:200, 100 + index % 50 : 300] = 1 + index % 20
        mask[48:52, 100:300] = 255
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{image_id}.png")
        ids.append(image_id)
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    return VocDataset(root, "train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        dataset = write_split(Path(folder), args.images)
        megabytes = sum(dataset.image_path(i).stat().st_size for i in dataset.ids) / 2**20
        scan_dataset(dataset, fast=True)  # warm the page cache
        cases = {
            "check-data (full decode, 1 thread)": dict(fast=False, workers=1),
            "pre-flight (1 thread)": dict(fast=True, workers=1),
            f"pre-flight ({args.threads} threads)": dict(fast=True, workers=args.threads),
        }
        results = {}
        for name, options in cases.items():
            started = time.perf_counter()
            problems = scan_dataset(dataset, **options)
            seconds = time.perf_counter() - started
            assert not [p for p in problems if p.level == "error"], problems[:3]
            results[name] = {
                "seconds": round(seconds, 3),
                "images_per_s": round(args.images / seconds, 1),
            }
        print(
            json.dumps(
                {"images": args.images, "jpeg_mib": round(megabytes, 1), "results": results},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
