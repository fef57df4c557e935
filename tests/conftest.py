import os

import pytest
import torch

os.environ.setdefault("CODEPRIOR_NO_PROGRESS", "1")
# Tiny models run fastest on one thread (and several pytest processes may share the machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
