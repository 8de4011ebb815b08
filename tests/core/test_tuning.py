"""The tuning cache (`core.tuning.TuneCache`): records round-trip and merge; a process killed while
writing leaves a cache that loads; a file that is not a cache of this host is read as empty."""
import json
import os
import signal
import subprocess
import sys
import time

from dnet.core.tuning import FORMAT, TuneCache


def test_records_round_trip_and_merge(tmp_path):
    cache = TuneCache("host1", tmp_path)
    assert cache.load() == {}
    cache.update({"a": {"tile": {"kc": 128}, "seconds": 1.0}})
    cache.update({"b": {"tile": {"kc": 256}, "seconds": 2.0}})
    cache.update({"a": {"tile": {"kc": 512}, "seconds": 0.5}})
    assert TuneCache("host1", tmp_path).load() == {"a": {"tile": {"kc": 512}, "seconds": 0.5},
                                                   "b": {"tile": {"kc": 256}, "seconds": 2.0}}
    assert TuneCache("host2", tmp_path).load() == {}       # another CPU's choices are not this one's


def test_a_file_that_is_not_a_cache_of_this_host_reads_as_empty(tmp_path):
    cache = TuneCache("host1", tmp_path)
    cache.path.parent.mkdir(parents=True)
    for text in ["{not json", "[]", json.dumps({"format": "other", "host": "host1", "records": {}}),
                 json.dumps({"format": FORMAT, "host": "host2", "records": {"a": {}}}),
                 json.dumps({"format": FORMAT, "host": "host1", "records": []})]:
        cache.path.write_text(text)
        assert cache.load() == {}
    cache.path.write_text(json.dumps({"format": FORMAT, "host": "host1", "records": {"a": {"x": 1}, "b": 3}}))
    assert cache.load() == {"a": {"x": 1}}                 # a record that is not a mapping is dropped


WRITER = """
import sys
from dnet.core.tuning import TuneCache
cache = TuneCache("host1", sys.argv[1])
round_ = 0
print("ready", flush=True)
while True:   # large versions, each record naming its version, written until killed
    round_ += 1
    cache.update({f"k{i}": {"version": round_, "pad": "x" * 200} for i in range(20000)})
"""


def test_the_cache_survives_a_crash_mid_write(tmp_path):
    cache = TuneCache("host1", tmp_path)
    cache.update({f"k{i}": {"version": 0, "pad": ""} for i in range(20000)})
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        # wait until a temporary file exists, i.e. a write is under way, then kill the writer there
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".") for p in cache.path.parent.iterdir()):
            assert time.monotonic() < deadline, "the writer never started a write"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    records = cache.load()
    versions = {r["version"] for r in records.values()}
    assert len(records) == 20000 and len(versions) == 1     # one whole version, never a mix or a torn file
    cache.update({"new": {"version": -1}})                  # and the next write works
    assert cache.get("new") == {"version": -1}


def test_the_matmul_rate_is_the_tuned_kernels_flops_over_their_seconds(tmp_path):
    cache = TuneCache("host1", tmp_path)
    assert cache.matmul_rate("c") is None
    cache.update({"a": {"backend": "c", "threads": 2, "flops": 6e9, "seconds": 0.02},
                  "b": {"backend": "c", "threads": 2, "flops": 2e9, "seconds": 0.02},
                  "c": {"backend": "c", "threads": 1, "flops": 1e9, "seconds": 0.1},
                  "d": {"backend": "llvm", "threads": 2, "flops": 1e9, "seconds": 1.0},
                  "e": {"backend": "c", "threads": 2, "flops": "many", "seconds": 0.5}})
    assert cache.matmul_rate("c", threads=2) == 8e9 / 0.04        # 200 GFLOP/s over a and b
    assert cache.matmul_rate("c") == 9e9 / 0.14
    assert cache.matmul_rate("opencl") is None
