"""Convert SAM / SAM 2.1 weights between Meta's layout and a transformers folder.

    python scripts/convert_sam_checkpoint.py sam_vit_b_01ec64.pth sam-vit-base/
    python scripts/convert_sam_checkpoint.py sam-vit-base/ sam_vit_b.pth
    python scripts/convert_sam_checkpoint.py sam2.1_hiera_base_plus.pt sam2.1-hiera-b+/

Any source ``co2sam.sam.load_sam`` accepts works as input (``.pth``/``.pt``, folder, hub
id, registered name). An output ending in ``.pth`` or ``.pt`` is written in Meta's
layout (SAM; SAM 2.1's image path), anything else as a transformers folder
(``save_pretrained``). ``co2sam`` loads both directly; converting once only saves the
key mapping at every start.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import Sam2Model, SamModel

from co2sam.sam import export_official_checkpoint, export_sam2_checkpoint, load_sam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="weights: .pth/.pt, transformers folder, hub id or name")
    parser.add_argument("output", type=Path, help="a .pth/.pt file (Meta layout) or a folder")
    args = parser.parse_args()
    model = load_sam(args.source)
    if args.output.suffix not in (".pth", ".pt"):
        model.save_pretrained(args.output)
    elif isinstance(model, SamModel):
        export_official_checkpoint(model, args.output)
    elif isinstance(model, Sam2Model):
        export_sam2_checkpoint(model, args.output)
    else:
        parser.error(f"no Meta file layout for {type(model).__name__}; write a folder instead")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
