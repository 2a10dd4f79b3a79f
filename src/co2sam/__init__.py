"""co2sam: weakly supervised semantic segmentation by adapting SAM with LoRA (Co2SAM)."""

__version__ = "0.1.0"
