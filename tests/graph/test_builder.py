"""GraphBuilder.const: one node per weight name, and a name never stands for two different arrays."""
import numpy as np
import pytest

from dnet.errors import WeightError
from dnet.graph.builder import GraphBuilder


def test_the_same_weight_twice_is_one_node():
    b = GraphBuilder()
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert b.const("w", w) == b.const("w", w.copy())
    assert len(b.graph.nodes) == 1


@pytest.mark.parametrize("other", [np.zeros((2, 3), np.float32), np.arange(6, dtype=np.float32),
                                   np.arange(6, dtype=np.float16).reshape(2, 3)],
                         ids=["values", "shape", "dtype"])
def test_one_name_for_two_different_weights_is_an_error(other):
    b = GraphBuilder()
    with b.scope("layer"):
        b.const("w", np.arange(6, dtype=np.float32).reshape(2, 3))
        with pytest.raises(WeightError, match="'layer'.*weight 'w' defined twice with different values"):
            b.const("w", other)
