import sys
from pathlib import Path

import numpy as np
import pytest

# Test files are imported by path (--import-mode=importlib), so two folders may both hold a
# test_pipeline.py; helper modules beside the tests (programs.py, ...) are found through sys.path.
for folder in sorted(p for p in Path(__file__).parent.rglob("*") if p.is_dir() and p.name != "__pycache__"):
    sys.path.append(str(folder))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session", autouse=True)
def verify_kernels():
    """Every kernel a kernel pass produces in any test is checked by the kernel-IR verifier
    (`dnet.kernel.verify`): a pass that emits ill-formed IR fails the test that ran it."""
    from dnet.kernel import verify

    previous = verify.enable(True)
    yield
    verify.enable(previous)
