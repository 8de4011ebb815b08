"""The web page at `/` in a real headless browser (Debian's Chromium driven by Playwright): it shows the plan
and the nodes, streams an answer, stops a stream, shows the API's errors, asks for the API key, and offers an
embeddings box for an encoder. The oracle of everything the page shows is the API itself, asked directly with
httpx: the same question answered whole (greedy), the same error, the same vector, the same status JSON."""
import dataclasses
import shutil

import httpx
import pytest

from dnet.serve import Server, create_app, load_served

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")

KEY = "page-test-key-0123456789"
WAIT_MS = 90_000            # an answer on a busy two-core machine can take a while


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    path = chromium()
    if path is None:
        pytest.skip("no Chromium on this machine: Debian's `chromium` package (which .ci/run installs) is needed")
    with sync_api.sync_playwright() as p:
        try:
            # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
            b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        except sync_api.Error as err:
            pytest.skip(f"Chromium at {path} would not start: {str(err).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def served():
    model = load_served("smollm2", slots=4, threads=1, context=512)
    yield model
    model.close()


@pytest.fixture(scope="module")
def server(served):
    with Server(create_app(served), port=0) as srv:
        yield srv


def open_page(browser, url: str):
    """A fresh tab (its own sessionStorage); an uncaught JavaScript error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    return context, page, errors


@pytest.fixture
def page(browser, server):
    context, page, errors = open_page(browser, server.url)
    yield page
    context.close()
    assert errors == [], f"the page raised: {errors}"


def whole_answer(url: str, question: str | list[dict], max_tokens: int, key: str | None = None) -> str:
    """The oracle: the same question (or conversation) answered whole, not streamed, greedy, straight from the API."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
    r = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=WAIT_MS / 1e3,
                   json={"model": "smollm2", "messages": messages, "temperature": 0, "max_tokens": max_tokens})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def status(url: str, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url + "/v1/dnet/status", headers=headers, timeout=10).json()


def ask(page, question: str, max_tokens: int, temperature: str = "0") -> None:
    page.get_by_label("Temperature").fill(temperature)
    page.get_by_label("Max tokens").fill(str(max_tokens))
    page.get_by_label("Message", exact=True).fill(question)
    page.get_by_role("button", name="Send").click()


def last_answer(page, state: str = "done"):
    """The last answer once it reaches `state` (the page marks each answer streaming, done, stopped or failed)."""
    answer = page.locator('article[aria-label="Answer"]').last
    sync_api.expect(answer).to_have_attribute("data-state", state, timeout=WAIT_MS)
    return answer


def record_answer_text(page) -> None:
    """Every value the last answer's text takes, as the page updates it: a streamed answer grows piece by piece."""
    page.evaluate("""() => {
        window.seenTexts = [];
        new MutationObserver(() => {
            const texts = document.querySelectorAll('article[aria-label="Answer"] .text');
            if (texts.length) window.seenTexts.push(texts[texts.length - 1].textContent);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
    }""")


def plan_rows(page) -> list[list[str]]:
    table = page.get_by_role("table", name="Plan")
    sync_api.expect(table.locator("tbody tr").first).to_be_visible(timeout=WAIT_MS)
    return [[c.strip() for c in row.locator("td").all_text_contents()] for row in table.locator("tbody tr").all()]


def test_the_page_shows_the_model_the_plan_and_the_node(page):
    rows = plan_rows(page)
    assert len(rows) == 1
    stage, node, layers, span = rows[0][:4]
    assert (stage, node, layers, span) == ("0", "local", "30", "0 – 29")
    sync_api.expect(page.get_by_role("table", name="Plan").locator("tbody tr.bottleneck")).to_have_count(1)
    sync_api.expect(page.get_by_text("Bottleneck: local")).to_be_visible()
    sync_api.expect(page.get_by_role("list", name="Nodes")).to_contain_text("local")
    sync_api.expect(page.locator("#model-line")).to_contain_text("smollm2 · llama · 30 layers · context 512")
    sync_api.expect(page.get_by_role("status", name="Connection")).to_have_text("live")


def test_a_question_streams_the_answer_a_whole_greedy_request_gives(page, server):
    question = "What is the capital of France?"
    tps = page.get_by_label("Tokens per second", exact=True)
    sync_api.expect(tps).to_have_text("0.0")          # nothing generated yet by this module's server
    record_answer_text(page)
    ask(page, question, 16)
    shown = last_answer(page).locator(".text").text_content()
    assert shown == whole_answer(server.url, question, 16)
    # streamed: the text grew in several steps, each a prefix of the final answer
    seen = [t for t in dict.fromkeys(page.evaluate("window.seenTexts")) if t]
    assert len(seen) >= 2 and all(shown.startswith(t) for t in seen), seen
    # the live figure follows the server: tokens/s comes off zero at the next poll
    page.wait_for_function("() => parseFloat(document.getElementById('fig-tps').textContent) > 0", timeout=5000)
    generated = status(server.url)["stats"]["generated_tokens"]
    sync_api.expect(page.get_by_label("Tokens generated", exact=True)).to_have_text(str(generated), timeout=5000)
    # the stage's measured time per step appears once there are decode steps
    assert plan_rows(page)[0][5] != "—"


def test_a_follow_up_question_carries_the_conversation_and_new_chat_forgets_it(page, server):
    first, second = "Name a fruit.", "What color is it?"
    ask(page, first, 8)
    reply = last_answer(page).locator(".text").text_content()
    ask(page, second, 8)
    answers = page.locator('article[aria-label="Answer"]')
    sync_api.expect(answers).to_have_count(2)
    conversation = [{"role": "user", "content": first}, {"role": "assistant", "content": reply},
                    {"role": "user", "content": second}]
    followed, alone = whole_answer(server.url, conversation, 8), whole_answer(server.url, second, 8)
    assert followed != alone        # else this test could not tell whether the page sent the conversation
    assert last_answer(page).locator(".text").text_content() == followed
    page.get_by_role("button", name="New chat").click()
    sync_api.expect(page.locator("article")).to_have_count(0)
    ask(page, second, 8)
    assert last_answer(page).locator(".text").text_content() == alone


def test_stop_aborts_the_stream_and_the_server_cancels_the_generation(page, server):
    cancelled = status(server.url)["stats"]["cancelled"]
    ask(page, "Write a long story about a lighthouse keeper.", 400)     # greedy: it runs to the 400-token limit
    answer = page.locator('article[aria-label="Answer"]').last
    sync_api.expect(answer.locator(".text")).not_to_be_empty(timeout=WAIT_MS)
    page.get_by_role("button", name="Stop").click()
    last_answer(page, "stopped")
    sync_api.expect(answer.locator(".meta")).to_contain_text("stopped")
    sync_api.expect(page.get_by_role("button", name="Send")).to_be_enabled()
    sync_api.expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    # the server saw the connection close and freed the sequence long before its 400 tokens
    page.wait_for_function("() => document.getElementById('fig-running').textContent === '0'", timeout=10_000)
    assert status(server.url)["stats"]["cancelled"] == cancelled + 1


def test_an_error_from_the_api_is_shown_as_the_api_words_it(page, server):
    question = " ".join(["word"] * 600)         # past the context of 512
    ask(page, question, 16)
    last_answer(page, "failed")
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                   json={"model": "smollm2", "messages": [{"role": "user", "content": question}], "max_tokens": 16})
    assert r.status_code == 400
    sync_api.expect(page.get_by_role("alert")).to_be_visible()
    sync_api.expect(page.locator("#alert-text")).to_have_text(r.json()["error"]["message"])


def test_with_an_api_key_the_page_asks_for_it_and_then_works(browser, served):
    question = "Name a color."
    with Server(create_app(served, api_key=KEY), port=0) as srv:
        context, page, errors = open_page(browser, srv.url)
        try:
            key = page.get_by_label("API key", exact=True)
            sync_api.expect(key).to_be_visible()
            sync_api.expect(page.locator("#key-reason")).to_contain_text("needs an API key (401")
            key.fill("not-the-key")
            page.get_by_role("button", name="Use key").click()
            sync_api.expect(page.locator("#key-reason")).to_contain_text("refused this key")
            key.fill(KEY)
            page.get_by_role("button", name="Use key").click()
            sync_api.expect(key).to_be_hidden()
            assert plan_rows(page)[0][1] == "local"
            ask(page, question, 8)
            assert last_answer(page).locator(".text").text_content() == whole_answer(srv.url, question, 8, KEY)
            # kept for the tab: a reload does not ask again
            page.reload()
            assert plan_rows(page)[0][1] == "local"
            sync_api.expect(key).to_be_hidden()
        finally:
            context.close()
    assert errors == [], f"the page raised: {errors}"


def test_an_encoder_gets_an_embeddings_box_instead_of_chat(browser):
    text = "The sea is calm tonight."
    encoder = load_served("minilm")
    try:
        with Server(create_app(encoder), port=0) as srv:
            context, page, errors = open_page(browser, srv.url)
            try:
                sync_api.expect(page.get_by_text("Chat is not available")).to_be_visible()
                sync_api.expect(page.get_by_label("Message", exact=True)).to_be_hidden()
                page.get_by_label("Text to embed").fill(text)
                page.get_by_role("button", name="Embed").click()
                values = page.get_by_role("list", name="First values").locator("li")
                sync_api.expect(values).to_have_count(8, timeout=WAIT_MS)
                shown = [float(v) for v in values.all_text_contents()]
                want = httpx.post(srv.url + "/v1/embeddings", json={"model": "minilm", "input": text},
                                  timeout=30).json()["data"][0]["embedding"]
                assert shown == pytest.approx(want[:8], abs=1e-6)
                sync_api.expect(page.locator("#embed-summary")).to_contain_text("384 dimensions")
            finally:
                context.close()
    finally:
        encoder.close()
    assert errors == [], f"the page raised: {errors}"


def test_a_cluster_plan_shows_every_stage_on_its_node(browser):
    from dnet.topology import Topology

    # three local nodes too small to hold SmolLM2 alone (its weights are 92 MiB): the plan has several stages.
    # Calibration off: the plan is the solver's, which is all the page has to show.
    topology = Topology.local(3)
    for node in topology.nodes:
        node.devices = [dataclasses.replace(d, memory=60e6) for d in node.devices]
    cluster = load_served("smollm2", topology=topology, slots=1, threads=1, context=256,
                          cluster={"calibrate": False})
    try:
        with Server(create_app(cluster), port=0) as srv:
            context, page, errors = open_page(browser, srv.url)
            try:
                plan = status(srv.url)["plan"]
                rows = plan_rows(page)
                assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
                    (str(k), s["node"], str(s["layers"]), f"{s['first']} – {s['last']}")
                    for k, s in enumerate(plan["stages"])]
                assert len(rows) >= 2
                bottleneck = page.get_by_role("table", name="Plan").locator("tbody tr.bottleneck td:nth-child(2)")
                sync_api.expect(bottleneck).to_have_text([plan["bottleneck"]])
                nodes = page.get_by_role("list", name="Nodes").locator("li")
                sync_api.expect(nodes).to_have_count(len(plan["nodes"]))
                for n in plan["nodes"]:
                    role = "stage " if n["used"] else "spare"
                    sync_api.expect(nodes.filter(has_text=n["name"])).to_contain_text(role)
                # after a few tokens, every stage shows the time it measured
                ask(page, "Name a fruit.", 4)
                last_answer(page)
                page.wait_for_function("""() => [...document.querySelectorAll('#plan tbody tr td:last-child')]
                                                .every(td => td.textContent !== '—')""", timeout=5000)
            finally:
                context.close()
    finally:
        cluster.close()
    assert errors == [], f"the page raised: {errors}"
