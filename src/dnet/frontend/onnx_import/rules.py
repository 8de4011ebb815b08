"""The rule table: ONNX op type (default domain) -> the function that builds it."""
from __future__ import annotations

from dnet.frontend.onnx_import import math_ops, nn_ops, shape_ops

RULES = {**shape_ops.RULES, **math_ops.RULES, **nn_ops.RULES}
OPSETS = range(11, 22)  # the ai.onnx versions whose spelling of the ops above the rules read
