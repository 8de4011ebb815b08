"""Workers that hold the model file read their stage's weights from it; the others receive them.

The model's weights are views of a registered, read-only map of `model.bin` (as a GGUF reader's
are). Oracle: the numpy model; and the bytes counters say which way each weight came."""
import os
import shutil

import numpy as np
import pytest

from dnet.cli.main import main
from dnet.cluster import Coordinator, Worker, WorkerConfig
from dnet.cluster.local import LocalCluster, WorkerSpec
from dnet.cluster.shipping import pack
from dnet.core.origins import register_mapping
from dnet.errors import DnetError
from dnet.runtime import contiguous_assignment, split_pipeline
from residual_nets import oracle, request, residual_graph

SECRET = "test-secret-" + "0" * 32


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Files' digests are remembered in a cache of this test's own."""
    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path / "dnet-cache"))


@pytest.fixture
def model(rng, tmp_path):
    """The residual net with its weights living in tmp/models/model.bin (after a small header)."""
    net, graph = residual_graph(rng)
    folder = tmp_path / "models"
    folder.mkdir()
    names = sorted(graph.weights)
    blob = b"header--" + b"".join(np.ascontiguousarray(graph.weights[n]).tobytes() for n in names)
    (folder / "model.bin").write_bytes(blob)
    mapping = np.memmap(folder / "model.bin", dtype=np.uint8, mode="r")
    register_mapping(mapping, folder / "model.bin")
    offset = 8
    for n in names:
        array = graph.weights[n]
        graph.weights[n] = mapping[offset:offset + array.nbytes].view(array.dtype).reshape(array.shape)
        offset += array.nbytes
    return net, graph, folder, mapping


def start(tmp_path, models_per_worker):
    workers = [Worker(SECRET, WorkerConfig(name=f"w{i}", cache_dir=str(tmp_path / f"cache{i}"), models=models))
               for i, models in enumerate(models_per_worker)]
    for w in workers:
        w.start()
    return workers


def run_and_check(rng, net, graph, workers):
    """Load three stages on the workers, check the outputs; the coordinator, for its counters."""
    coordinator = Coordinator([w.address for w in workers], SECRET, call_timeout_s=20)
    try:
        coordinator.load(split_pipeline(graph, contiguous_assignment(graph, [1.0] * 3)))
        for _ in range(3):
            req = request(rng)
            np.testing.assert_allclose(coordinator.run(req)["output"], oracle(net, req["x"], req["mask"]),
                                       rtol=1e-5, atol=1e-5)
        return coordinator
    finally:
        coordinator.close()


def stage_bytes(graph, k):
    stage = split_pipeline(graph, contiguous_assignment(graph, [1.0] * 3))[k]
    return sum(a.nbytes for a in pack(stage).arrays.values())


def test_workers_holding_the_model_file_read_their_weights_there_and_none_travel(rng, tmp_path, model):
    net, graph, folder, _ = model
    workers = start(tmp_path, [[str(folder)]] * 3)
    try:
        coordinator = run_and_check(rng, net, graph, workers)
    finally:
        for w in workers:
            w.stop()
    assert coordinator.weight_bytes_sent == 0
    assert coordinator.weight_bytes_mapped == graph.weight_bytes()
    assert not [p for i in range(3) for p in (tmp_path / f"cache{i}").rglob("*.bin")]   # nothing copied to the caches


def test_a_worker_whose_file_differs_by_one_byte_is_sent_the_bytes_and_answers_right(rng, tmp_path, model):
    net, graph, folder, mapping = model
    other = tmp_path / "other"
    other.mkdir()
    changed = bytearray(np.asarray(mapping).tobytes())
    changed[-1] ^= 0xFF                                       # one byte: another SHA-256
    (other / "model.bin").write_bytes(bytes(changed))        # same name, other SHA-256
    workers = start(tmp_path, [[str(folder)], [str(folder)], [str(other)]])
    try:
        coordinator = run_and_check(rng, net, graph, workers)
    finally:
        for w in workers:
            w.stop()
    assert coordinator.weight_bytes_sent == stage_bytes(graph, 2)   # its whole stage: it holds no file we hold
    assert coordinator.weight_bytes_mapped == graph.weight_bytes() - stage_bytes(graph, 2)


def test_a_file_changed_after_it_was_indexed_costs_a_transfer_not_a_wrong_weight(rng, tmp_path, model):
    net, graph, folder, _ = model
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    workers = start(tmp_path, [[str(copy)]] * 3)
    try:
        # change one byte in place and put the file's times back: its size, times and inode say "unchanged"
        path = copy / "model.bin"
        stat = path.stat()
        with open(path, "r+b") as f:
            f.seek(stat.st_size - 1)
            last = f.read(1)
            f.seek(stat.st_size - 1)
            f.write(bytes([last[0] ^ 0xFF]))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        coordinator = run_and_check(rng, net, graph, workers)
    finally:
        for w in workers:
            w.stop()
    last_weight = graph.weights[sorted(graph.weights)[-1]]
    assert coordinator.weight_bytes_sent == last_weight.nbytes   # that weight's hash did not match: it travelled
    assert coordinator.weight_bytes_mapped == graph.weight_bytes() - last_weight.nbytes


def test_a_file_gone_after_it_was_indexed_costs_transfers(rng, tmp_path, model):
    net, graph, folder, _ = model
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    workers = start(tmp_path, [[str(copy)]] * 3)
    try:
        (copy / "model.bin").unlink()
        coordinator = run_and_check(rng, net, graph, workers)
    finally:
        for w in workers:
            w.stop()
    assert coordinator.weight_bytes_sent == graph.weight_bytes()
    assert coordinator.weight_bytes_mapped == 0


def test_a_missing_models_directory_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    nowhere = str(tmp_path / "nowhere")
    with pytest.raises(DnetError, match="--models .*nowhere: no such file or directory"):
        Worker(SECRET, WorkerConfig(models=[nowhere]))
    with pytest.raises(DnetError, match="--models .*nowhere: no such file or directory"):
        LocalCluster([WorkerSpec(models=[nowhere])]).start()
    monkeypatch.setenv("DNET_CLUSTER_SECRET", SECRET)
    for argv in (["worker", "--models", nowhere], ["cluster", "up", "2", "--models", nowhere]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert "no such file or directory" in err
