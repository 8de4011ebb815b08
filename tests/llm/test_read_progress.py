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
