"""A small CNN (convolutions with batch norm, ReLU, pooling, a grouped convolution, a classifier) on target
'opencl', against the numpy reference running the same compiled graph."""
import numpy as np

import dnet
from dnet import nn


def test_a_cnn_matches_the_reference_for_a_batch_of_images(compile_opencl):
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 16, 3, stride=2, groups=2), nn.ReLU(), nn.AvgPool2d(2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    nn.init.seeded_(model, seed=3, std=0.2)
    graph = dnet.to_graph(model, [dnet.TensorType(("batch", 3, 20, 20), dnet.f32)])
    images = np.random.default_rng(0).standard_normal((3, 3, 20, 20)).astype(np.float32)
    name = graph.output_names[0]
    got = compile_opencl(graph).run({graph.input_names[0]: images})[name]
    want = dnet.compile(graph, target="numpy").run({graph.input_names[0]: images})[name]
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
