from pathlib import Path

import pytest

from dnet.frontend.dsl import parse_program

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture
def program():
    """Parse DSL text (imports resolve from the standard library)."""
    return lambda text, file="test.dnet": parse_program(text, file)
