"""The README's first example runs as written and computes what its model says."""
import re
from pathlib import Path

import numpy as np
from scipy import special

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_mlp_example_matches_a_numpy_mlp():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - our own README
    model, y = scope["model"], scope["y"]
    x = np.random.default_rng(0).random((3, 5, 384)).astype(np.float32)
    h = x @ model.up.weight.data.T + model.up.bias.data
    h = 0.5 * h * (1 + special.erf(h / np.sqrt(2)))
    expected = h @ model.down.weight.data.T + model.down.bias.data
    np.testing.assert_allclose(scope["exe"](x), expected, rtol=1e-4, atol=1e-5)
    assert y.shape == (2, 7, 384)
