"""`dnet.compile(..., target='c')` end to end, and artefacts that run without a compiler."""
import numpy as np
import pytest

import dnet
from dnet import functional as F
from dnet.api import load_artifact, save_artifact
from dnet.backends.c import backend, device
from dnet.backends.numpy import run_graph


class Block(dnet.Module):
    def __init__(self, rng):
        super().__init__()
        self.w = dnet.Parameter(rng.standard_normal((24, 16)).astype(np.float32) / 4)
        self.b = dnet.Parameter(rng.standard_normal(24).astype(np.float32))

    def forward(self, x):
        return F.softmax(F.gelu(F.linear(x, self.w, self.b)), -1)


@pytest.fixture(scope="module")
def exe(c_cache):
    model = Block(np.random.default_rng(0))
    return dnet.compile(model, [dnet.TensorType(("batch", 16), dnet.f32)], target="c", cache_dir=c_cache)


def test_compile_with_target_c_matches_the_reference(exe, rng):
    x = rng.standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(exe(x), run_graph(exe.graph, {"x": x})["output"], rtol=1e-5, atol=1e-6)


def test_artifact_runs_without_compiling(exe, tmp_path, monkeypatch, rng):
    save_artifact(exe, tmp_path / "art")

    def no_compiler():
        raise AssertionError("the artefact must not compile")

    monkeypatch.setattr(device, "find_compiler", no_compiler)   # the C device's loader is what compiles
    loaded = load_artifact(tmp_path / "art")
    x = rng.standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x), exe(x))


def test_wrong_input_shape_is_a_shape_error(exe):
    with pytest.raises(dnet.DnetError, match="expected"):
        exe(np.zeros((2, 15), np.float32))


@pytest.mark.parametrize("damage", ["flip a byte of the library", "truncate the library", "drop the digests",
                                    "change the program", "flip a byte of the weights", "a digest not a string"])
def test_a_changed_artefact_is_refused_before_it_is_loaded(exe, tmp_path, damage):
    import json

    from dnet.errors import SerializationError

    art = save_artifact(exe, tmp_path / "art") or tmp_path / "art"
    lib, program = tmp_path / "art" / backend.LIB, tmp_path / "art" / backend.PROGRAM
    if damage == "flip a byte of the library":
        data = bytearray(lib.read_bytes())
        data[len(data) // 2] ^= 1
        lib.write_bytes(bytes(data))
    elif damage == "truncate the library":
        lib.write_bytes(lib.read_bytes()[:4096])
    elif damage == "flip a byte of the weights":
        weights = tmp_path / "art" / backend.WEIGHTS
        data = bytearray(weights.read_bytes())
        assert data, "the test model's weights are packed into the artefact"
        data[len(data) // 2] ^= 1
        weights.write_bytes(bytes(data))
    else:
        manifest = json.loads(program.read_text())
        if damage == "drop the digests":
            del manifest["sha256"]
        elif damage == "a digest not a string":
            manifest["sha256"][backend.WEIGHTS] = 7
        else:
            manifest["program"]["buffers"][0]["name"] += "x"
        program.write_text(json.dumps(manifest))
    with pytest.raises(SerializationError, match="SHA-256|sha256"):
        load_artifact(art)


@pytest.mark.parametrize("offset", ["12", -8, 1 << 40, None])
def test_a_bad_weight_offset_in_the_manifest_is_a_serialization_error(exe, tmp_path, offset):
    """The offsets sit beside the hashed program, so they are checked one by one: a dnet error, never numpy's."""
    import json

    from dnet.errors import SerializationError

    art = save_artifact(exe, tmp_path / "art") or tmp_path / "art"
    program = tmp_path / "art" / backend.PROGRAM
    manifest = json.loads(program.read_text())
    assert manifest["weights"], "the test model has weights packed into the artefact"
    first = next(iter(manifest["weights"]))
    manifest["weights"][first] = offset
    program.write_text(json.dumps(manifest))
    with pytest.raises(SerializationError, match="bad offset"):
        load_artifact(art)


@pytest.mark.parametrize("change", ["drop the target", "a target not a name", "not an object"])
def test_a_malformed_artefact_manifest_is_a_serialization_error(exe, tmp_path, change):
    import json

    from dnet.errors import SerializationError

    save_artifact(exe, tmp_path / "art")
    path = tmp_path / "art" / "manifest.json"
    manifest = json.loads(path.read_text())
    if change == "drop the target":
        del manifest["target"]
    elif change == "a target not a name":
        manifest["target"] = ["c"]
    else:
        manifest = [manifest]
    path.write_text(json.dumps(manifest))
    with pytest.raises(SerializationError, match="target|artefact format"):
        load_artifact(tmp_path / "art")
