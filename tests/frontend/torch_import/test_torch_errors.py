"""Bad input to the torch importer: every failure is a dnet error that says what and where."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import dnet  # noqa: E402
from dnet.errors import DnetError, DTypeError, UnsupportedOpError  # noqa: E402
from dnet.frontend.torch_import import RULES, TorchExportError  # noqa: E402


def _line_of(fn, text: str) -> int:
    """The file line of the first line of `fn`'s source that contains `text`."""
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


class Scorer(nn.Module):
    def forward(self, x):
        return torch.topk(x, 2).values * 2


class Ranker(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.scorer = Scorer()

    def forward(self, x):
        return self.scorer(self.proj(x))


def test_an_op_without_a_rule_names_the_op_its_target_and_the_users_line():
    assert "aten.topk.default" not in RULES
    with pytest.raises(UnsupportedOpError) as info:
        dnet.from_torch(Ranker(), (torch.randn(3, 4),))
    err = info.value
    assert "'topk'" in err.message and "aten.topk.default" in err.message
    assert "torch.topk(x, 2)" in err.message  # the source line itself
    assert err.where.file == __file__
    assert err.where.line == _line_of(Scorer.forward, "torch.topk")
    assert err.where.symbol == "scorer"  # the module path, from nn_module_stack
    assert f"{__file__}:{err.where.line}" in str(err)


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a value: torch.export cannot capture it
            return x * 2
        return x


def test_a_torch_export_failure_is_a_dnet_error_carrying_torchs_message():
    x = torch.randn(3)
    with pytest.raises(Exception) as torch_info:
        torch.export.export(DataDependent(), (x,), strict=False)
    with pytest.raises(TorchExportError) as info:
        dnet.from_torch(DataDependent(), (x,))
    assert isinstance(info.value, DnetError)
    assert "torch.export failed for DataDependent" in info.value.message
    assert str(torch_info.value).splitlines()[0] in info.value.message


def test_a_module_left_in_training_mode_is_told_to_call_eval():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.BatchNorm1d(4))
    with pytest.raises(UnsupportedOpError, match=r"call module.eval\(\) first") as info:
        dnet.from_torch(model, (torch.randn(3, 4),))
    assert "aten.native_dropout.default" in info.value.message
    assert info.value.where.symbol == "1"  # the Dropout, by its path in the Sequential
    model.eval()
    dnet.from_torch(model, (torch.randn(3, 4),))  # the same module in eval mode imports


class PoolWithIndices(nn.Module):
    def forward(self, x):
        values, indices = nn.functional.max_pool2d(x, 2, return_indices=True)
        return values + indices.float()


def test_using_an_output_dnet_does_not_compute_is_unsupported_at_its_user():
    with pytest.raises(UnsupportedOpError, match="indices of max_pool2d_with_indices") as info:
        dnet.from_torch(PoolWithIndices(), (torch.randn(1, 1, 4, 4),))
    assert info.value.where.line == _line_of(PoolWithIndices.forward, "indices.float()")


class TruncatingDivision(nn.Module):
    def forward(self, x):
        return torch.div(x, 3, rounding_mode="trunc")


def test_a_variant_a_rule_does_not_cover_is_named():
    with pytest.raises(UnsupportedOpError, match="aten.div.Tensor_mode: rounding_mode='trunc'") as info:
        dnet.from_torch(TruncatingDivision(), (torch.randn(4),))
    assert info.value.where.file == __file__


class Identity(nn.Module):
    def forward(self, x):
        return x + 1


def test_a_dtype_dnet_lacks_is_a_dtype_error_naming_the_input():
    with pytest.raises(DTypeError, match="torch.float64 of input 'x' has no dnet dtype"):
        dnet.from_torch(Identity(), (torch.randn(3, dtype=torch.float64),))


def test_static_dims_reject_other_sizes_at_run_time():
    exe = dnet.compile(dnet.from_torch(Identity(), (torch.randn(2, 3),)))
    assert str(exe.graph.input_types()["x"]) == "f32(2, 3)"
    with pytest.raises(DnetError, match=r"input 'x' has shape \(4, 3\), expected \(2, 3\)"):
        exe(torch.randn(4, 3).numpy())


def test_import_dnet_does_not_import_torch():
    code = "import sys, dnet; assert callable(dnet.from_torch); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
