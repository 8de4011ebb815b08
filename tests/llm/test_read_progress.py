"""Reading a GGUF file reports its metadata parse as one step and its tensors one by one."""
import struct

import pytest
from tiny_models import write_tiny_gguf

from dnet.core.progress import ADVANCE, DONE, START, Recorder, reporting
from dnet.llm.read import read_model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])    # llama: q and k rows are copied in a new order
def test_every_tensor_of_the_file_is_counted_once(tmp_path, arch):
    path = write_tiny_gguf(tmp_path, arch, "q8_0")
    header = path.read_bytes()[:24]                        # magic, version, tensor count (uint64 LE), ...
    (tensor_count,) = struct.unpack_from("<Q", header, 8)
    recorder = Recorder()
    with reporting(recorder):
        read_model(path)
    metadata, tensors = recorder.of(f"read {path.name} metadata"), recorder.of(f"read {path.name} tensors")
    assert [e.kind for e in metadata] == [START, DONE]
    assert [e.kind for e in tensors] == [START] + [ADVANCE] * tensor_count + [DONE]
    assert tensors[-1].completed == tensors[-1].total == tensor_count


def test_quantizing_a_float_model_counts_each_of_its_tensors(tmp_path):
    import dnet

    path = write_tiny_gguf(tmp_path, "qwen2", "f32")
    recorder = Recorder()
    with reporting(recorder):
        dnet.llm.load(path, target="numpy", quantize="q8_0", context=16).close()
    read, converted = recorder.of(f"read {path.name} tensors"), recorder.of("quantize weights to q8_0")
    assert [e.kind for e in converted] == [START] + [ADVANCE] * read[-1].total + [DONE]
