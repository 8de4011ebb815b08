"""Models that arrive as ONNX files: dnet (`dnet.from_onnx`, C backend) vs ONNX Runtime on the same file.

    .venv/bin/python benchmarks/onnx_models.py [--threads N] [--batches 1 8] [--models minilm cnn mobilenet]
                                               [--winograd off auto] [--cpu-time]

all-MiniLM-L6-v2 exported from PyTorch (as benchmarks/minilm.py does, sequence 128), a
ResNet-style CNN (stem, four stages of residual 3x3 blocks, global pooling, a classifier;
random weights, batch-norm folded by the exporter) and a MobileNet-style one (inverted
residual blocks: 1x1 expansion, 3x3 depthwise, 1x1 projection, ReLU6) at 224 x 224. Both runtimes read the
same .onnx file, use the same thread count, and get the same inputs; latencies are
medians of interleaved runs. `--winograd MODE...` compiles dnet once per $DNET_WINOGRAD mode (the C
backend's 3x3 stride-1 convolutions: "off" direct, "auto" the rule, "4"/"2" forced) and runs them side by
side with ONNX Runtime; `--cpu-time` measures process CPU time per call instead of wall time (what a shared
machine disturbs least; with --threads 1 it is one core's time).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, pin_threads, table  # noqa: E402


def interleaved_cpu_medians(fns: dict, repeats: int, rounds: int = 7) -> dict[str, float]:
    """As interleaved_medians, in process CPU time."""
    import statistics
    import time

    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            start = time.process_time()
            for _ in range(repeats):
                fn()
            samples[name].append((time.process_time() - start) / repeats)
    return {name: statistics.median(v) for name, v in samples.items()}


def resnet_like():
    import torch
    from torch import nn

    def block(c_in, c_out, stride):
        body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU(),
                             nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out))
        skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride)
        return body, skip

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.body, self.skip = block(c_in, c_out, stride)

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                          Block(64, 64, 1), Block(64, 128, 2), Block(128, 256, 2), Block(256, 512, 2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))
    return model.eval()


def mobilenet_like():
    """MobileNetV2's inverted residual blocks (expansion 6) at a few widths: depthwise convolutions."""
    import torch
    from torch import nn

    def conv(c_in, c_out, k, stride, groups=1, act=True):
        layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups), nn.BatchNorm2d(c_out)]
        return layers + [nn.ReLU6()] if act else layers

    class Inverted(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            wide = 6 * c_in
            self.body = nn.Sequential(*conv(c_in, wide, 1, 1), *conv(wide, wide, 3, stride, groups=wide),
                                      *conv(wide, c_out, 1, 1, act=False))
            self.residual = stride == 1 and c_in == c_out

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    torch.manual_seed(0)
    model = nn.Sequential(*conv(3, 32, 3, 2), *conv(32, 32, 3, 1, groups=32), *conv(32, 16, 1, 1, act=False),
                          Inverted(16, 24, 2), Inverted(24, 24, 1), Inverted(24, 32, 2), Inverted(32, 32, 1),
                          Inverted(32, 64, 2), Inverted(64, 64, 1), Inverted(64, 96, 1), Inverted(96, 160, 2),
                          Inverted(160, 320, 1), *conv(320, 1280, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(1280, 1000))
    return model.eval()


def export(model, args, path: Path, names: list[str], dynamic: dict) -> Path:
    import torch

    with torch.inference_mode():
        torch.onnx.export(model, args, str(path), input_names=names, output_names=["out"], dynamic_axes=dynamic,
                          opset_version=17, dynamo=False)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["minilm", "cnn", "mobilenet"],
                    choices=["minilm", "cnn", "mobilenet"])
    ap.add_argument("--winograd", nargs="+", default=None, choices=["auto", "off", "2", "4"],
                    help="compile dnet once per $DNET_WINOGRAD mode, each beside ONNX Runtime")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time per call, not wall time")
    args = ap.parse_args(argv)
    import os
    from dnet.hardware import detect

    threads = args.threads or detect().cores
    pin_threads(threads)
    import numpy as np
    import torch

    import dnet
    from minilm import export_onnx, onnx_session, torch_model

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    modes = args.winograd or [None]
    label = {m: "dnet-c" if m is None else f"dnet-c {m}" for m in modes}
    rows = [["model", "batch", *[f"{label[m]} ms" for m in modes], "onnxruntime ms",
             *[f"{label[m]} / ort" for m in modes], "max |dnet - ort|"]]
    measure = interleaved_cpu_medians if args.cpu_time else interleaved_medians
    with tempfile.TemporaryDirectory(prefix="dnet-onnx-") as tmp:
        tmp = Path(tmp)
        image = {"image": {0: "batch"}, "out": {0: "batch"}}
        makers = {"minilm": ("all-MiniLM-L6-v2", lambda: export_onnx(torch_model(), tmp / "minilm.onnx")),
                  "cnn": ("resnet-like CNN", lambda: export(resnet_like(), (torch.zeros(1, 3, 224, 224),),
                                                             tmp / "cnn.onnx", ["image"], image)),
                  "mobilenet": ("mobilenet-like CNN", lambda: export(mobilenet_like(), (torch.zeros(1, 3, 224, 224),),
                                                                      tmp / "mobilenet.onnx", ["image"], image))}
        models = {makers[m][0]: makers[m][1]() for m in args.models}
        for name, path in models.items():
            exes = {}
            for mode in modes:
                if mode is not None:
                    os.environ["DNET_WINOGRAD"] = mode
                exes[mode] = dnet.compile(dnet.from_onnx(path), target="c", threads=threads)
            exe = exes[modes[0]]
            ort = onnx_session(path, threads, True)
            for batch in args.batches:
                if name != "all-MiniLM-L6-v2":
                    feeds = {"image": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
                else:
                    ids = rng.integers(1000, 20000, (batch, 128))
                    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
                    feeds = {k: v for k, v in feeds.items() if k in exe.graph.input_names}
                ort_feeds = {i.name: feeds[i.name] for i in ort.get_inputs()}
                want = ort.run(None, ort_feeds)[0]
                err = max(float(np.abs(e.run(feeds)[e.graph.output_names[0]] - want).max()) for e in exes.values())
                fns = {m: (lambda e=e: e.run(feeds)) for m, e in exes.items()}
                t = measure({**fns, "ort": lambda: ort.run(None, ort_feeds)}, args.repeats)
                rows.append([name, str(batch), *[f"{t[m] * 1e3:.1f}" for m in modes], f"{t['ort'] * 1e3:.1f}",
                             *[f"{t[m] / t['ort']:.2f}" for m in modes], f"{err:.1e}"])
    clock = "CPU time" if args.cpu_time else "wall time"
    print(f"the same .onnx file in dnet (from_onnx, C backend) and ONNX Runtime, {threads} threads, {clock}, "
          f"load average {os.getloadavg()[0]:.1f}, {detect().summary()}")
    print(table(rows))


if __name__ == "__main__":
    main()
