"""Every code block of README.md and docs/*.md works as a reader would use it (issue 13: the example topology
in docs/cluster.md did not load, and two of its snippets failed).

- python blocks run, each in its own namespace, after a prelude that makes what the surrounding prose
  assumes (`model`, `inputs`, `x`, ...) and with placeholder files (model.gguf, model.onnx,
  .../model.safetensors) replaced by real ones (all of them together take about 25 s with warm compile
  caches: the LLM ones compile SmolLM2, two start local workers);
- toml blocks load as topologies;
- each `dnet ...` command line names real commands and options (parsed by the CLI itself), and the
  cheap ones run;
- every other block is not code (a diagram, a grammar, listings of IR, errors or the wire protocol):
  `NOT_CODE` names each with the reason, and a block that is neither listed nor handled fails the test.
"""
from __future__ import annotations

import os
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)


@pytest.fixture(autouse=True)
def environment_restored():
    """The environment as it was before each test. A doc block may export variables (docs/cluster.md sets
    the cluster secret and this machine's TLS directory), and monkeypatch.delenv of a variable not yet set
    undoes nothing: every later test of this process (every worker it starts) would inherit them, and
    local workers would then expect the docs' certificates (seen: handshakes refused after this file ran)."""
    saved = dict(os.environ)
    yield
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@dataclass(frozen=True)
class Block:
    file: str
    line: int
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def _blocks() -> list[Block]:
    out = []
    for path in DOCS:
        source = path.read_text()
        for m in FENCE.finditer(source):
            line = source[:m.start()].count("\n") + 1
            out.append(Block(str(path.relative_to(ROOT)), line, m.group(2), textwrap.dedent(m.group(3))))
    return out


BLOCKS = _blocks()


def _first(file: str, needle: str) -> Block:
    return next(b for b in BLOCKS if b.file == file and needle in b.text)


# -- python -----------------------------------------------------------------------------------------------

SMALL_MODEL = """
import numpy as np, dnet
from dnet import functional as F

class Net(dnet.Module):
    def __init__(self):
        super().__init__()
        self.layers = dnet.ModuleList([dnet.nn.Linear(32, 32) for _ in range(6)])
    def forward(self, x):
        for layer in self.layers:
            x = F.gelu(layer(x))
        return x

model = Net()
dnet.nn.init.seeded_(model, seed=0)
"""

MINILM_TOKENS = """
import numpy as np
from dnet.models import load_minilm
_encoder = load_minilm()
_batch = _encoder.tokenize(["A man is eating food.", "A man is eating pasta."])
ids, mask = _batch["input_ids"], _batch["attention_mask"]
"""


def _python_cases() -> list[tuple[Block, str, dict[str, str]]]:
    """(block, prelude, placeholder -> replacement) for every python block."""
    from dnet.llm.api import default_model_path
    from dnet.models.minilm import model_dir

    minilm = str(model_dir() / "model.safetensors")
    cases = [
        (_first("README.md", "class MLP"), "", {}),
        (_first("README.md", "encoder.encode("), "", {}),
        (_first("README.md", "topology=Topology.local(3)) as exe"),
         "import dnet\nfrom dnet.models import load_minilm\nencoder = load_minilm()\n", {}),
        (_first("README.md", "dnet.llm.load()"), "", {}),
        (_first("docs/cluster.md", "Topology.local(3, scales"),
         SMALL_MODEL + "inputs = [dnet.TensorType(('batch', 32), dnet.f32)]\n"
                       "x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)\n", {}),
        (_first("docs/cluster.md", "exe.retune(inputs, rounds=4)"),
         SMALL_MODEL + "from dnet.topology import Topology\n"
                       "exe = dnet.compile(model, [dnet.TensorType(('batch', 32), dnet.f32)], "
                       "topology=Topology.local(2))\n"
                       "inputs = {'x': np.ones((4, 32), np.float32)}\n", {"rounds=4": "rounds=2"}),
        (_first("docs/dsl.md", "dnet.load_dsl(\"examples/minilm.dnet\""), MINILM_TOKENS,
         {".../model.safetensors": minilm}),
        (_first("docs/llm.md", "dnet.llm.load(\"model.gguf\""), "", {"model.gguf": str(default_model_path())}),
        (_first("docs/llvm.md", "load_minilm(\"llvm\")"), "", {}),
        (_first("docs/onnx.md", "dnet.from_onnx(\"model.onnx\")"),
         MINILM_TOKENS + "types = np.zeros_like(ids)\n", {}),   # model.onnx: exported by the test, below
    ]
    return cases


def _run_python(block: Block, prelude: str, replace: dict[str, str]) -> dict:
    code = block.text
    for old, new in replace.items():
        assert old in code, f"{block.id}: the placeholder {old!r} is gone; update this test"
        code = code.replace(old, new)
    scope: dict = {"__name__": "__doc_block__"}
    exec(compile(prelude, f"{block.id} (prelude)", "exec"), scope)  # noqa: S102 - our own docs
    try:
        exec(compile(code, block.id, "exec"), scope)  # noqa: S102
    finally:
        for value in list(scope.values()):   # executables that start workers: stop them
            close = getattr(value, "close", None)
            if callable(close) and type(value).__module__.startswith("dnet") and not isinstance(value, type):
                try:
                    close()
                except Exception:  # noqa: BLE001 - already closed by the block (a with statement)
                    pass
    return scope


@pytest.mark.parametrize("block, prelude, replace", [pytest.param(*case, id=case[0].id) for case in _python_cases()])
def test_a_python_block_runs(block, prelude, replace, tmp_path, monkeypatch):
    if "model.onnx" in block.text:   # the MiniLM export the ONNX tests use, where the block reads model.onnx
        pytest.importorskip("torch")
        pytest.importorskip("onnx")
        import importlib.util

        spec = importlib.util.spec_from_file_location("minilm_bench", ROOT / "benchmarks" / "minilm.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)  # type: ignore[union-attr]
        bench.export_onnx(bench.torch_model(), tmp_path / "model.onnx")
    monkeypatch.chdir(ROOT if "examples/" in block.text else tmp_path)
    scope = _run_python(block, prelude, replace)
    for name in ("y", "embeddings", "emb", "logits"):   # what a block computes is a finite array
        if isinstance(scope.get(name), np.ndarray):
            assert np.isfinite(scope[name]).all(), f"{block.id}: {name} is not finite"


def test_the_multi_machine_steps_of_cluster_md_run_on_loopback(tmp_path, monkeypatch):
    """docs/cluster.md's steps 1-4 as written, with two local workers standing in for desk and laptop:
    `dnet cluster init`, its topology file (their addresses swapped in), and the coordinator's snippet."""
    from dnet.cli.main import main
    from dnet.cluster import LocalCluster, WorkerSpec

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    init = _first("docs/cluster.md", "dnet cluster init")
    main(shlex.split(os.path.expanduser(init.text.splitlines()[0].replace("~", str(home))))[1:])
    tls = home / ".dnet" / "tls"
    secret = (home / ".dnet" / "cluster.secret").read_text().strip()
    specs = [WorkerSpec(name=n, tls_dir=str(tls / n)) for n in ("desk", "laptop")]
    with LocalCluster(specs, secret=secret) as local:
        toml = _first("docs/cluster.md", "[[node]]").text
        toml = toml.replace("192.168.1.20:7700", local.addresses[0]).replace("192.168.1.21:7700", local.addresses[1])
        (tmp_path / "cluster.toml").write_text(toml)
        block = _first("docs/cluster.md", "Topology.load(\"cluster.toml\")")
        prelude = SMALL_MODEL + "inputs = [dnet.TensorType((4, 32), dnet.f32)]\n"
        monkeypatch.delenv("DNET_CLUSTER_SECRET", raising=False)
        monkeypatch.delenv("DNET_TLS_DIR", raising=False)
        scope = _run_python(block, prelude, {})
    assert "exe" in scope


# -- toml -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "toml"], ids=lambda b: b.id)
def test_a_toml_block_loads_as_a_topology(block):
    from dnet.topology import Topology

    topology = Topology.loads(block.text, block.id)
    assert topology.nodes


# -- command lines ----------------------------------------------------------------------------------------

def _command_lines(block: Block) -> list[str]:
    text = block.text.replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("dnet ")]


def _parse(argv: list[str]) -> None:
    """Resolve each (sub)command and parse its option names and arities as the CLI would; no value is
    converted or checked (a file the docs name need not exist here) and nothing runs."""
    from dnet.cli.main import _load_commands, cli

    _load_commands()
    command: click.Command = cli
    name, args, parent = "dnet", list(argv), None
    while True:
        ctx = click.Context(command, info_name=name, parent=parent)
        _, args, _ = command.make_parser(ctx).parse_args(args)
        if not isinstance(command, click.Group):
            return
        if not args:
            raise click.UsageError(f"'{' '.join(argv)}' stops at a command group")
        name, command, args = command.resolve_command(ctx, args)
        parent = ctx


COMMAND_BLOCKS = [b for b in BLOCKS if b.lang == "" and _command_lines(b)]


@pytest.mark.parametrize("block", COMMAND_BLOCKS, ids=lambda b: b.id)
def test_every_dnet_command_line_names_real_commands_and_options(block):
    for line in _command_lines(block):
        argv = shlex.split(line, comments=True)[1:]
        if "[" in line and "]" in line and block.file == "docs/topology.md" or "[MODEL]" in line:
            argv = [a for a in argv if not a.startswith("[") and not a.endswith("]") and "|" not in a]
        try:
            _parse(argv)
        except click.UsageError as err:
            pytest.fail(f"{block.id}: `{line}`: {err.format_message()}")


CHEAP = ["dnet check examples/attention.dnet", "dnet inspect examples/attention.dnet --object Attention --passes "
         "--level object", "dnet inspect minilm --level summary --dims batch=1,seq=128", "dnet plan llama-1b -T local:3",
         "dnet run examples/attention.dnet --init seeded --dims x_0=2,x_1=8"]


@pytest.mark.parametrize("line", CHEAP)
def test_the_cheap_command_lines_run(line, capsys, monkeypatch):
    from dnet.cli.main import main

    assert any(line in " ".join(_command_lines(b)) for b in COMMAND_BLOCKS), f"`{line}` is no longer in the docs"
    monkeypatch.chdir(ROOT)
    main(shlex.split(line)[1:])
    assert capsys.readouterr().out.strip()


# -- not code ---------------------------------------------------------------------------------------------

NOT_CODE = [   # (file, text the block holds, why it is not run): by content, so edits above it do not matter
    ("docs/architecture.md", "frontend/", "a diagram of the layers"),
    ("docs/c_backend.md", "──schedule──►", "a diagram of the C backend's stages"),
    ("docs/c_backend.md", "kernel k4(", "kernel IR as `dnet inspect` prints it"),
    ("docs/dsl.md", "forward(Attention, {", "the seed's DSL text, quoted (examples/attention.dnet runs it)"),
    ("docs/dsl.md", "file     := stmt*", "the DSL's grammar"),
    ("docs/dsl.md", "bad.dnet:1:28:", "error messages as the DSL prints them (tests/frontend/dsl checks each)"),
    ("docs/security.md", "client -> HELLO", "the handshake's messages"),
    ("README.md", "make run", "make targets: `make run` and `make test` are the whole demo and the whole suite"),
    ("docs/cluster.md", "benchmarks/cluster.py", "a benchmark run (minutes)"),
    ("docs/cluster.md", "Topology.from_ray()", "needs Ray: tests/cluster/test_ray.py runs it as written, on a Ray cluster"),
    ("README.md", "curl -s http://127.0.0.1:8000", "needs a running server: tests/serve/test_server.py runs it"),
    ("README.md", "OpenAI(base_url=\"http://127.0.0.1:8000", "needs a running server: tests/serve/test_server.py"),
    ("docs/serve.md", "curl -s http://127.0.0.1:8000", "needs a running server: tests/serve/test_server.py runs it"),
    ("docs/serve.md", "OpenAI(base_url=\"http://127.0.0.1:8000", "needs a running server: tests/serve/test_server.py"),
]


def _not_code(block: Block) -> str | None:
    return next((why for file, needle, why in NOT_CODE if block.file == file and needle in block.text), None)


def test_every_block_is_run_checked_or_listed_as_not_code():
    handled = {b.id for b, *_ in _python_cases()}
    handled |= {b.id for b in BLOCKS if b.lang == "toml"} | {b.id for b in COMMAND_BLOCKS}
    handled.add(_first("docs/cluster.md", "Topology.load(\"cluster.toml\")").id)   # the loopback test above
    unaccounted = [b.id for b in BLOCKS if b.id not in handled and _not_code(b) is None]
    assert not unaccounted, f"blocks neither run nor listed in NOT_CODE: {unaccounted}"
    stale = [(f, needle) for f, needle, _ in NOT_CODE if not any(b.file == f and needle in b.text for b in BLOCKS)]
    assert not stale, f"NOT_CODE names blocks that moved or went: {stale}"
