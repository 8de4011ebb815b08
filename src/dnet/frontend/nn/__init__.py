"""dnet.nn: layers in the style of torch.nn, written with dnet.functional.

Parameter names match PyTorch's (`weight`, `bias`, `running_mean`, ...), so
`model.load_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()})`
loads a torch model's weights into the same dnet layers.

Parameters start uninitialised but typed: a layer knows each weight's shape and
dtype, and compiling a model whose weights were never loaded is a WeightError that
names the weight. `dnet.nn.init.seeded_(model, seed)` fills them with seeded
random values instead (for tests and random-weight benchmarks).
"""
from dnet.frontend import functional
from dnet.frontend.module import Module, ModuleList, Parameter, Sequential
from dnet.frontend.nn import init
from dnet.frontend.nn.activation import GELU, Dropout, Identity, ReLU, Sigmoid, SiLU, Softmax, Tanh
from dnet.frontend.nn.attention import MultiHeadAttention
from dnet.frontend.nn.conv import AdaptiveAvgPool2d, AvgPool2d, Conv2d, MaxPool2d
from dnet.frontend.nn.linear import Embedding, Flatten, Linear
from dnet.frontend.nn.norm import BatchNorm2d, LayerNorm, RMSNorm

__all__ = [
    "functional", "init", "Module", "ModuleList", "Parameter", "Sequential",
    "Linear", "Embedding", "Flatten", "Identity", "Dropout",
    "GELU", "ReLU", "SiLU", "Sigmoid", "Tanh", "Softmax",
    "LayerNorm", "RMSNorm", "BatchNorm2d",
    "MultiHeadAttention",
    "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
]
