"""`dnet serve` as a user runs it: it serves until SIGTERM, says where; bad options are one line, status 2."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

DNET = [os.path.join(os.path.dirname(sys.executable), "dnet")]


def run(*args, timeout=60):
    return subprocess.run([*DNET, "serve", *args], capture_output=True, text=True, timeout=timeout)


def test_serves_until_terminated_and_says_where(tmp_path):
    key = tmp_path / "key"
    key.write_text("k" * 32 + "\n")
    proc = subprocess.Popen([*DNET, "serve", "--port", "0", "--slots", "2", "--context", "256", "--threads", "1",
                             "--api-key-file", str(key), "--json"], stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the server exited before serving"
            event = json.loads(line)
            url = event.get("url") if event["event"] == "note" else None
        headers = {"Authorization": "Bearer " + "k" * 32}
        assert httpx.get(url + "/v1/models", headers=headers).json()["data"][0]["id"] == "smollm2"
        r = httpx.post(url + "/v1/completions", headers=headers, timeout=60,
                       json={"model": "smollm2", "prompt": "Hello", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("args, words", [
    (["--host", "0.0.0.0"], "without an API key"),
    (["--api-key-file", "/nonexistent/key"], "cannot read the API key file"),
    (["--port", "70000"], "not a port number"),
    (["--slots", "0"], "--slots must be at least 1"),
    (["-T", "local:x"], "local"),
])
def test_bad_options_are_one_line(args, words):
    r = run(*args)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr


def test_a_short_key_and_a_port_in_use_are_refused_before_loading(tmp_path):
    key = tmp_path / "key"
    key.write_text("short")
    r = run("--api-key-file", str(key))
    assert r.returncode == 2 and "at least 16" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        start = time.monotonic()
        r = run("--port", str(busy.getsockname()[1]))
        assert r.returncode == 2 and "in use" in r.stderr
        assert time.monotonic() - start < 20        # refused before the model was loaded
