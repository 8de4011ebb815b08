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
