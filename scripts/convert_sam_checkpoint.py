"""Convert SAM weights between Meta's ``.pth`` layout and a transformers folder.

    python scripts/convert_sam_checkpoint.py sam_vit_b_01ec64.pth sam-vit-base/
    python scripts/convert_sam_checkpoint.py sam-vit-base/ sam_vit_b.pth

Any source ``co2sam.sam.load_sam`` accepts works as input (``.pth``, folder, hub id,
registered name). An output ending in ``.pth`` is written in Meta's layout, anything
else as a transformers folder (``SamModel.save_pretrained``). ``co2sam`` loads both
directly; converting once only saves the key mapping at every start.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from co2sam.sam import export_official_checkpoint, load_sam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="SAM weights: .pth, transformers folder, hub id or name")
    parser.add_argument("output", type=Path, help="a .pth file (Meta layout) or a folder")
    args = parser.parse_args()
    model = load_sam(args.source)
    if args.output.suffix == ".pth":
        export_official_checkpoint(model, args.output)
    else:
        model.save_pretrained(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
