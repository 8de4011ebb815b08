"""The compile cache (hits, corruption, concurrency) and the compiler's errors."""
import json
import multiprocessing
import os
from dataclasses import replace

import pytest

from dnet.backends.c import cache as cache_mod
from dnet.backends.c.cache import CompileCache, cache_dir
from dnet.backends.c.compiler import find_compiler
from dnet.errors import BackendError

SOURCE = "int dnet_answer(void) { return 42; }\n"


def _answer(path) -> int:
    import ctypes

    return ctypes.CDLL(str(path)).dnet_answer()


def test_second_build_is_a_cache_hit(tmp_path):
    cache = CompileCache(tmp_path)
    first = cache.get_or_build(SOURCE, find_compiler(), "cpu")
    second = cache.get_or_build(SOURCE, find_compiler(), "cpu")
    assert first == second and (cache.misses, cache.hits) == (1, 1)
    assert _answer(second) == 42


def test_key_changes_with_flags_and_cpu(tmp_path):
    cc = find_compiler()
    other = replace(cc, flags=cc.flags + ("-DX=1",))
    keys = {cache_mod.cache_key(SOURCE, cc, "a"), cache_mod.cache_key(SOURCE, cc, "b"),
            cache_mod.cache_key(SOURCE, other, "a")}
    assert len(keys) == 3


def test_a_corrupt_entry_is_rebuilt_not_loaded(tmp_path):
    cache = CompileCache(tmp_path)
    lib = cache.get_or_build(SOURCE, find_compiler(), "cpu")
    lib.write_bytes(lib.read_bytes()[:100])          # a torn write
    again = CompileCache(tmp_path)
    rebuilt = again.get_or_build(SOURCE, find_compiler(), "cpu")
    assert again.misses == 1 and _answer(rebuilt) == 42
    manifest = json.loads((rebuilt.parent / cache_mod.MANIFEST).read_text())
    assert manifest["sha256"] == cache_mod._sha256(rebuilt)


def _build_in_child(root, queue):
    path = CompileCache(root).get_or_build(SOURCE, find_compiler(), "cpu")
    queue.put(_answer(path))


def test_two_processes_compiling_the_same_kernel_both_succeed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(tmp_path, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [queue.get(timeout=5) for _ in procs] == [42, 42]
    entries = [p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1


def test_compiler_errors_carry_its_message_and_the_source_path(tmp_path):
    with pytest.raises(BackendError) as err:
        CompileCache(tmp_path).get_or_build("int f(void) { return undefined_name; }\n", find_compiler(), "cpu")
    text = str(err.value)
    assert "undefined_name" in text
    kept = tmp_path / "c" / "failed"
    assert str(kept) in text and any(kept.iterdir())


def test_a_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr("shutil.which", lambda name: None)
    find_compiler.cache_clear()
    try:
        with pytest.raises(BackendError, match="no working C compiler"):
            find_compiler()
    finally:
        find_compiler.cache_clear()


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("DNET_CACHE_DIR")
    assert cache_dir().name == "dnet" and os.path.isabs(cache_dir())
