"""Shared test setup.

Tests use tiny models whose operations are far too small to gain from intra-op
threads; under load (pytest -n 2 on 2 cores) torch's spinning threads make them
up to ~100x slower, so each test process uses one thread.
"""

import torch

torch.set_num_threads(1)
