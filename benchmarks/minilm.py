"""all-MiniLM-L6-v2 sentence embeddings: dnet (C backend) vs ONNX Runtime vs PyTorch eager.

    .venv/bin/python benchmarks/minilm.py [--threads N] [--batches 1 8] [--seq 128] [--backends-only] [--int8-only]

Also dnet's LLVM backend (target "llvm", JIT-compiled through llvmlite) against its C backend:
`--backends-only` measures just those two (no torch, no ONNX Runtime).

All three compute the same thing from the same real weights (BERT encoder, mean pooling,
L2 normalisation) with the same thread count; latencies are medians of interleaved runs.
Also reported: dnet's compile time (cold, in an empty cache, and cached), the peak
resident memory of a process that loads the compiled model and runs it, against the
size of the weights, and int8: dnet's weight-only int8 (`quantize="int8"`) and its
dynamic int8 (`quantize="int8-dynamic"`: activations quantized per token, integer
products) beside ONNX Runtime's dynamic int8 quantization of the same model, and dnet's
`precision="bf16"` beside f32, with each one's cosine similarity to the f32 PyTorch
embeddings. `--int8-only` measures just dnet's int8-dynamic beside its plain form (every
projection per-token int8, no smoothing, the scheme before; `graph.passes.dynamic_quant`)
and ONNX Runtime's dynamic int8, with cosines on random ids and on the test sentences;
`--before ARTIFACT` puts a saved artefact (another version's int8-dynamic) in the plain form's place.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_median, interleaved_medians, pin_threads, table  # noqa: E402


def torch_model():
    import torch
    from transformers import AutoModel

    from dnet.models.minilm import model_dir

    bert = AutoModel.from_pretrained(str(model_dir())).eval()

    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, ids, mask, types):
            h = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            w = mask.unsqueeze(-1).to(h.dtype)
            e = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, dim=-1)

    return Embed().eval()


def export_onnx(model, path: Path) -> Path:
    import torch

    ids = torch.zeros((1, 8), dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(model, (ids, torch.ones_like(ids), ids), str(path), input_names=names, output_names=["out"],
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in names}, dynamo=False, opset_version=17)
    return path


def onnx_session(path: Path, threads: int, spinning: bool):
    """ONNX Runtime on the CPU; `spinning=False` makes its idle threads sleep, as dnet's do."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compile_dnet(cache: Path, threads: int, quantize: str | None = None, precision: str | None = None,
                 target: str = "c", plain: bool = False):
    """The model compiled; `plain`: int8-dynamic without smoothing or bf16 (every projection per-token int8)."""
    import dnet
    from dnet.graph.passes.dynamic_quant import quantize_dynamic
    from dnet.models.minilm import minilm_model

    module, types = minilm_model()
    graph = dnet.to_graph(module, types)
    if plain:
        graph, quantize = quantize_dynamic(graph, smooth=False, after_activations="int8"), None
    options = {"cache_dir": cache}
    start = time.perf_counter()
    exe = dnet.compile(graph, target=target, threads=threads, quantize=quantize, precision=precision, **options)
    return exe, time.perf_counter() - start


def backend_tables(exe_c, exe_llvm, threads: int, batches: list[int], seq: int, repeats: int) -> tuple[list, list]:
    """dnet's LLVM backend against its C backend: wall-clock medians of interleaved runs with `threads`
    threads, and CPU time per call with one thread."""
    import numpy as np

    rng = np.random.default_rng(0)
    wall = [["batch x seq", "dnet-c ms", "dnet-llvm ms", "llvm / c", "max |llvm - c|"]]
    cpu = [["batch x seq", "dnet-c cpu ms", "dnet-llvm cpu ms", "llvm / c"]]
    for batch in batches:
        ids = rng.integers(1000, 20000, (batch, seq))
        feeds = dict(zip(exe_c.graph.input_names, [ids, np.ones_like(ids), np.zeros_like(ids)]))
        name = exe_c.graph.output_names[0]
        diff = float(np.abs(exe_c.run(feeds)[name] - exe_llvm.run(feeds)[name]).max())
        t = interleaved_medians({"c": lambda: exe_c.run(feeds), "llvm": lambda: exe_llvm.run(feeds)}, repeats)
        wall.append([f"{batch} x {seq}", f"{t['c'] * 1e3:.1f}", f"{t['llvm'] * 1e3:.1f}", f"{t['llvm'] / t['c']:.2f}",
                     f"{diff:.1e}"])
        for exe in (exe_c, exe_llvm):
            exe.runner.module.set_threads(1)
        c = {"c": cpu_median(lambda: exe_c.run(feeds), repeats * 2),
             "llvm": cpu_median(lambda: exe_llvm.run(feeds), repeats * 2)}
        for exe in (exe_c, exe_llvm):
            exe.runner.module.set_threads(threads)
        cpu.append([f"{batch} x {seq}", f"{c['c'] * 1e3:.1f}", f"{c['llvm'] * 1e3:.1f}", f"{c['llvm'] / c['c']:.2f}"])
    return wall, cpu


def print_backends(threads: int, args, tmp: Path, exe_c=None) -> None:
    from dnet.hardware import detect

    if exe_c is None:
        exe_c, _ = compile_dnet(tmp / "cache", threads)
    exe_llvm, llvm_compile = compile_dnet(tmp / "cache", threads, target="llvm")
    wall, cpu = backend_tables(exe_c, exe_llvm, threads, args.batches, args.seq, args.repeats)
    print(f"dnet's LLVM backend vs its C backend, all-MiniLM-L6-v2, {threads} threads, {detect().summary()}")
    print("wall-clock latency, medians of interleaved runs:")
    print(table(wall))
    print("one thread each, CPU time per call (medians):")
    print(table(cpu))
    print(f"LLVM compile (IR rendered, optimised and JIT-compiled, empty cache): {llvm_compile:.2f} s")


def ort_int8(path: Path) -> Path:
    """ONNX Runtime's own dynamic int8 quantization of the exported model (what a user would pick)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name("minilm-int8.onnx")
    quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
    return out


def path_of(exe, entry: str) -> str:
    """The path a compiled library's low-precision Gemms were built with (backends/c/igemm.py)."""
    import ctypes

    fn = getattr(ctypes.CDLL(str(exe.runner.module.library)), entry)
    fn.restype = ctypes.c_char_p
    return fn().decode()


def cosine(a, b) -> float:
    import numpy as np

    return float(np.min(np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)))


def rss_probe(artifact: Path, threads: int, batch: int, seq: int) -> dict:
    """Peak RSS of a fresh process that loads the artefact and runs it (run in a subprocess)."""
    code = f"""
import json, numpy as np
from dnet.api import load_artifact
def status(key):   # kB fields of /proc/self/status; VmHWM is the peak since exec
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
exe = load_artifact({str(artifact)!r})
loaded = status("VmHWM")
exe.runner.module.set_threads({threads})
ids = np.random.default_rng(0).integers(1000, 2000, ({batch}, {seq}))
exe.run(dict(zip(exe.graph.input_names, [ids, np.ones_like(ids), np.zeros_like(ids)])))
print(json.dumps({{"peak": status("VmHWM"), "loaded": loaded, "after_run": status("VmRSS"),
                  "weights": exe.graph.weight_bytes()}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def sentence_cosines(exes: dict) -> dict[str, float]:
    """Worst cosine over tests/models/test_minilm.py's sentences to sentence-transformers, per executable."""
    import os

    import sentence_transformers

    from dnet.models import load_minilm, model_dir

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "models"))
    from test_minilm import SENTENCES

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    st = sentence_transformers.SentenceTransformer(str(model_dir()), device="cpu")
    want = st.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    batch = load_minilm().tokenize(SENTENCES)
    out = {}
    for name, exe in exes.items():
        feeds = {k: batch[k] for k in exe.graph.input_names}
        out[name] = cosine(exe.run(feeds)[exe.graph.output_names[0]], want)
    return out


def interleaved_cpu_medians(fns: dict, repeats: int, rounds: int = 5) -> dict[str, float]:
    """Median over `rounds` of each one's CPU-time median of `repeats` calls, alternating round by round."""
    import statistics

    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(cpu_median(fn, repeats))
    return {name: statistics.median(v) for name, v in samples.items()}


def print_int8(threads: int, args, tmp: Path) -> None:
    """dnet's int8-dynamic, its plain form (the scheme before smoothing and bf16) and ONNX Runtime's dynamic
    int8, side by side: wall-clock medians of interleaved runs, cosines to PyTorch's f32 on random ids and
    to sentence-transformers on the test sentences."""
    import numpy as np
    import torch

    from dnet.hardware import detect

    torch.set_num_threads(threads)
    new, _ = compile_dnet(tmp / "cache", threads, "int8-dynamic")
    if args.before:   # an artefact another version of dnet compiled, to compare versions in one process
        from dnet.api import load_artifact

        old = load_artifact(args.before)
        old.runner.module.set_threads(threads)
    else:
        old, _ = compile_dnet(tmp / "cache", threads, plain=True)
    model = torch_model()
    ort8 = onnx_session(ort_int8(export_onnx(model, tmp / "minilm.onnx")), threads, True)
    ort_single = onnx_session(tmp / "minilm-int8.onnx", 1, False)
    was = "before" if args.before else "plain"
    rows = [["batch x seq", f"{was} int8-dynamic ms", "int8-dynamic ms", "ort int8 ms", f"{was} / ort", "new / ort",
             f"cos {was}", "cos new", "cos ort int8"]]
    cpu_rows = [["batch x seq", f"{was} cpu ms", "int8-dynamic cpu ms", "ort int8 cpu ms", f"{was} / ort",
                 "new / ort", f"new / {was}"]]
    rng = np.random.default_rng(0)
    for batch in args.batches:
        ids = rng.integers(1000, 20000, (batch, args.seq))
        mask, types = np.ones_like(ids), np.zeros_like(ids)
        feeds = dict(zip(new.graph.input_names, [ids, mask, types]))
        ort_feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        with torch.inference_mode():
            reference = model(*(torch.from_numpy(a) for a in (ids, mask, types))).numpy()
        t = interleaved_medians({"old": lambda: old.run(feeds), "new": lambda: new.run(feeds),
                                 "ort": lambda: ort8.run(None, ort_feeds)}, args.repeats)
        cos = [cosine(e.run(feeds)[e.graph.output_names[0]], reference) for e in (old, new)]
        rows.append([f"{batch} x {args.seq}", f"{t['old'] * 1e3:.1f}", f"{t['new'] * 1e3:.1f}", f"{t['ort'] * 1e3:.1f}",
                     f"{t['old'] / t['ort']:.2f}", f"{t['new'] / t['ort']:.2f}", f"{cos[0]:.6f}", f"{cos[1]:.6f}",
                     f"{cosine(ort8.run(None, ort_feeds)[0], reference):.6f}"])
        for exe in (old, new):
            exe.runner.module.set_threads(1)
        c = interleaved_cpu_medians({"old": lambda: old.run(feeds), "new": lambda: new.run(feeds),
                                     "ort": lambda: ort_single.run(None, ort_feeds)}, args.repeats)
        for exe in (old, new):
            exe.runner.module.set_threads(threads)
        cpu_rows.append([f"{batch} x {args.seq}", f"{c['old'] * 1e3:.1f}", f"{c['new'] * 1e3:.1f}",
                         f"{c['ort'] * 1e3:.1f}", f"{c['old'] / c['ort']:.2f}", f"{c['new'] / c['ort']:.2f}",
                         f"{c['new'] / c['old']:.2f}"])
    print(f"int8-dynamic, all-MiniLM-L6-v2, {threads} threads, {detect().summary()}")
    print("wall-clock latency, medians of interleaved runs; cosines to PyTorch's f32 on the same random ids:")
    print(table(rows))
    print("one thread each, CPU time per call (medians of interleaved rounds; what a loaded machine disturbs least):")
    print(table(cpu_rows))
    print(f"int8 Gemm path: {path_of(new, 'dnet_igemm_path')}; bf16 Gemm path: {path_of(new, 'dnet_bgemm_path')}")
    worst = sentence_cosines({was: old, "new": new})
    print(f"worst cosine to sentence-transformers on the test sentences: {was} {worst[was]:.6f}, "
          f"new {worst['new']:.6f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backends-only", action="store_true", help="only dnet's LLVM backend against its C backend")
    ap.add_argument("--int8-only", action="store_true",
                    help="only dnet's int8-dynamic, its plain form (the scheme before) and ONNX Runtime's int8")
    ap.add_argument("--before", default=None, metavar="ARTIFACT",
                    help="with --int8-only: a saved int8-dynamic artefact (dnet.api.save_artifact, e.g. from an "
                         "older checkout) in place of the plain form")
    args = ap.parse_args(argv)
    from dnet.hardware import detect

    threads = args.threads or detect().cores
    pin_threads(threads)
    if args.backends_only:
        with tempfile.TemporaryDirectory(prefix="dnet-bench-") as tmp:
            print_backends(threads, args, Path(tmp))
        return
    if args.int8_only:
        with tempfile.TemporaryDirectory(prefix="dnet-bench-") as tmp:
            print_int8(threads, args, Path(tmp))
        return
    import numpy as np
    import torch

    from dnet.api import save_artifact

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="dnet-bench-") as tmp:
        tmp = Path(tmp)
        exe, cold = compile_dnet(tmp / "cache", threads)
        _, cached = compile_dnet(tmp / "cache", threads)
        exe8, _ = compile_dnet(tmp / "cache", threads, "int8")
        exe8d, _ = compile_dnet(tmp / "cache", threads, "int8-dynamic")
        exe16, _ = compile_dnet(tmp / "cache", threads, None, "bf16")
        model = torch_model()
        onnx = export_onnx(model, tmp / "minilm.onnx")
        sessions = {"ort": onnx_session(onnx, threads, True), "ort_sleep": onnx_session(onnx, threads, False)}
        ort8 = onnx_session(ort_int8(onnx), threads, True)
        save_artifact(exe, tmp / "artifact")
        save_artifact(exe8, tmp / "artifact-int8")
        rss = rss_probe(tmp / "artifact", threads, max(args.batches), args.seq)
        rss8 = rss_probe(tmp / "artifact-int8", threads, max(args.batches), args.seq)
        int8_rows = [["batch x seq", "dnet-c int8 ms", "dnet-c int8-dynamic ms", "ort int8 ms", "dnet int8 / ort int8",
                      "dnet int8-dynamic / ort int8", "cos(dnet int8, torch)", "cos(dnet int8-dynamic, torch)",
                      "cos(ort int8, torch)"]]
        bf16_rows = [["batch x seq", "dnet-c f32 ms", "dnet-c bf16 ms", "ort f32 ms", "dnet bf16 / ort f32",
                      "dnet bf16 / dnet f32", "cos(dnet bf16, torch)"]]
        rows = [["batch x seq", "dnet-c ms", "onnxruntime ms", "ort no-spin ms", "torch eager ms", "dnet / best ort",
                 "cos(dnet, torch)"]]
        single = onnx_session(onnx, 1, False)
        cpu_rows = [["batch x seq", "dnet-c cpu ms", "onnxruntime cpu ms", "dnet / ort"]]
        rng = np.random.default_rng(0)
        for batch in args.batches:
            ids = rng.integers(1000, 20000, (batch, args.seq))
            mask, types = np.ones_like(ids), np.zeros_like(ids)
            feeds = dict(zip(exe.graph.input_names, [ids, mask, types]))
            ort_feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            t_ids, t_mask, t_types = (torch.from_numpy(a) for a in (ids, mask, types))

            def run_torch():
                with torch.inference_mode():
                    return model(t_ids, t_mask, t_types)

            reference = run_torch().numpy()
            cos = cosine(exe.run(feeds)[exe.graph.output_names[0]], reference)
            fns = {"dnet": lambda: exe.run(feeds), "torch": run_torch, "dnet_int8": lambda: exe8.run(feeds),
                   "dnet_int8d": lambda: exe8d.run(feeds), "dnet_bf16": lambda: exe16.run(feeds),
                   "ort_int8": lambda: ort8.run(None, ort_feeds)}
            fns.update({name: (lambda s=s: s.run(None, ort_feeds)) for name, s in sessions.items()})
            t = interleaved_medians(fns, args.repeats)
            int8_rows.append([f"{batch} x {args.seq}", f"{t['dnet_int8'] * 1e3:.1f}", f"{t['dnet_int8d'] * 1e3:.1f}",
                              f"{t['ort_int8'] * 1e3:.1f}", f"{t['dnet_int8'] / t['ort_int8']:.2f}",
                              f"{t['dnet_int8d'] / t['ort_int8']:.2f}",
                              f"{cosine(exe8.run(feeds)[exe8.graph.output_names[0]], reference):.6f}",
                              f"{cosine(exe8d.run(feeds)[exe8d.graph.output_names[0]], reference):.6f}",
                              f"{cosine(ort8.run(None, ort_feeds)[0], reference):.6f}"])
            best_ort = min(t["ort"], t["ort_sleep"])
            bf16_rows.append([f"{batch} x {args.seq}", f"{t['dnet'] * 1e3:.1f}", f"{t['dnet_bf16'] * 1e3:.1f}",
                              f"{best_ort * 1e3:.1f}", f"{t['dnet_bf16'] / best_ort:.2f}",
                              f"{t['dnet_bf16'] / t['dnet']:.2f}",
                              f"{cosine(exe16.run(feeds)[exe16.graph.output_names[0]], reference):.6f}"])
            rows.append([f"{batch} x {args.seq}", f"{t['dnet'] * 1e3:.1f}", f"{t['ort'] * 1e3:.1f}",
                         f"{t['ort_sleep'] * 1e3:.1f}", f"{t['torch'] * 1e3:.1f}", f"{t['dnet'] / best_ort:.2f}",
                         f"{cos:.6f}"])
            exe.runner.module.set_threads(1)
            c = {"dnet": cpu_median(lambda: exe.run(feeds), args.repeats * 2),
                 "ort": cpu_median(lambda: single.run(None, ort_feeds), args.repeats * 2)}
            exe.runner.module.set_threads(threads)
            cpu_rows.append([f"{batch} x {args.seq}", f"{c['dnet'] * 1e3:.1f}", f"{c['ort'] * 1e3:.1f}",
                             f"{c['dnet'] / c['ort']:.2f}"])
    print(f"all-MiniLM-L6-v2, {threads} threads, {detect().summary()}")
    print("wall-clock latency, medians of interleaved runs:")
    print(table(rows))
    print("one thread each, CPU time per call (medians; what a loaded machine disturbs least):")
    print(table(cpu_rows))
    print("int8 (dnet int8: weight-only, per output channel; dnet int8-dynamic: activations too, per token, "
          "integer products; onnxruntime: dynamic quantization), same threads:")
    print(table(int8_rows))
    print(f"int8 Gemm path: {path_of(exe8d, 'dnet_igemm_path')}; bf16 Gemm path: {path_of(exe16, 'dnet_bgemm_path')}")
    if "avx512_bf16" not in detect().isa and "amx_bf16" not in detect().isa:
        print("this CPU has no bf16 dot-product unit (AVX512-BF16 or AMX): bf16 runs on the portable path")
    print("precision='bf16' (bf16 weights and activations, f32 sums) against f32, same threads:")
    print(table(bf16_rows))
    print(f"compile: {cold:.2f} s cold, {cached:.2f} s cached")
    for name, r in (("f32", rss), ("int8", rss8)):
        mib = 1024 * 1024
        limit = 1.5 * r["weights"] + 64 * mib
        print(f"memory ({name}) of a process loading the artefact and running batch {max(args.batches)}: peak "
              f"{r['peak'] / mib:.0f} MiB (loading alone {r['loaded'] / mib:.0f} MiB), resident after the run "
              f"{r['after_run'] / mib:.0f} MiB; weights {r['weights'] / mib:.0f} MiB, so 1.5 x weights + 64 MiB = "
              f"{limit / mib:.0f} MiB")
    with tempfile.TemporaryDirectory(prefix="dnet-bench-") as tmp:
        print_backends(threads, args, Path(tmp))


if __name__ == "__main__":
    main()
