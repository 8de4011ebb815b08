"""dnet generate and dnet chat, run as a user would, on a tiny GGUF: the text is the API's text."""
import io
import re

import pytest
from tiny_models import write_tiny_gguf

import dnet
from dnet.cli.main import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny"), "qwen2", "q4_0")


def test_generate_streams_the_same_text_as_the_api(tiny, capsys):
    main(["generate", str(tiny), "-p", "the dog", "-n", "10", "--temperature", "0", "--threads", "2"])
    out = capsys.readouterr()
    with dnet.llm.load(tiny, threads=2) as llm:
        assert out.out == llm.generate("the dog", max_tokens=10, temperature=0.0) + "\n"
    assert "tok/s" in out.err


def test_chat_keeps_the_history_and_resets_on_request(tiny, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nand then?\n/reset\nhello\n/exit\n"))
    main(["chat", str(tiny), "-n", "6", "--temperature", "0"])
    lines = [re.sub(r"^(> )+", "", line) for line in capsys.readouterr().out.splitlines()]   # prompts, then replies
    lines = [line for line in lines if line.strip(">")]
    with dnet.llm.load(tiny) as llm:
        first = llm.chat([{"role": "user", "content": "hello"}], max_tokens=6, temperature=0.0)
        second = llm.chat([{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
                           {"role": "user", "content": "and then?"}], max_tokens=6, temperature=0.0)
    assert lines == [first, second, first]


def test_a_bad_model_is_one_line_on_stderr_and_status_2(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(bad), "-p", "x"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "broken.gguf" in err and len(err.strip().splitlines()) == 1


def test_generate_across_local_workers_prints_the_plan_and_the_same_text(tiny, capsys):
    main(["generate", str(tiny), "-p", "the dog", "-n", "8", "--temperature", "0", "-T", "local:1,2"])
    out = capsys.readouterr()
    with dnet.llm.load(tiny) as llm:
        assert out.out == llm.generate("the dog", max_tokens=8, temperature=0.0) + "\n"
    assert "objective latency" in out.err and "per-stage times" in out.err and "tok/s" in out.err


@pytest.mark.parametrize("spec, what", [("local:0.5,1", "at least 1"), ("local:x", "cannot read"),
                                        ("nowhere.toml", "no topology file")])
def test_a_bad_topology_is_one_line(tiny, capsys, spec, what):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(tiny), "-p", "x", "-T", spec])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and what in err and len(err.strip().splitlines()) == 1


def test_a_memory_cap_no_single_local_worker_can_meet_splits_the_model_and_keeps_the_text(tiny, capsys):
    with dnet.llm.load(tiny, context=64) as llm:
        want = llm.generate("the dog", max_tokens=8, temperature=0.0)
        c = llm.config
        # by hand: the weights in their stored size and the KV cache (k and v, f32) at the context length
        need = llm.weight_bytes + c.num_layers * 2 * c.num_kv_heads * c.head_dim * 64 * 4
    cap = int(0.75 * need)
    main(["generate", str(tiny), "-p", "the dog", "-n", "8", "--temperature", "0", "--context", "64",
          "-T", f"local:1,2@{cap}B"])
    out = capsys.readouterr()
    assert out.out == want + "\n"
    assert re.search(r"model: 2 stages", out.err) and "unused" not in out.err    # both workers hold a part


@pytest.mark.parametrize("size", ["x", "0", "-5M", "12Q"])
def test_an_unreadable_memory_cap_is_one_line(tiny, capsys, size):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(tiny), "-p", "x", "-T", f"local:2@{size}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "memory size" in err and len(err.strip().splitlines()) == 1
