"""`compile_on`: the tests of tests/backends/test_*.py run once per compiled backend in the registry.

A backend added with `registry.register` and `register_device` is held to them with no edit here; on a
machine where it cannot run (no llvmlite, no OpenCL driver, no GPU) its cases skip with the Device's reason.
"""
import pytest

from dnet.backends import registry

COMPILED = [name for name in registry.names() if name != registry.REFERENCE]


@pytest.fixture(scope="session")
def backend_cache(tmp_path_factory):
    """The compiled code of these tests, in a temporary directory (never the user's cache)."""
    return tmp_path_factory.mktemp("dnet-backends-cache")


@pytest.fixture(scope="module", params=COMPILED)
def compile_on(request, backend_cache):
    """graph -> runner of one registered backend (`compile_on.backend` names it); skips where it is absent."""
    name = request.param
    reason = registry.device(name).available()
    if reason is not None:
        pytest.skip(f"backend '{name}' is not available here: {reason}")
    cached = {"cache_dir": backend_cache} if "cache_dir" in registry.option_names(name) else {}

    def build(graph, **options):
        return registry.prepare(name, graph, **{**cached, **options})
    build.backend = name
    with pytest.MonkeyPatch.context() as mp:   # what a backend caches beside its code (the compiler probe)
        mp.setenv("DNET_CACHE_DIR", str(backend_cache))
        yield build
