import pytest

from dnet.backends.c import CBackend


@pytest.fixture(scope="session")
def c_cache(tmp_path_factory):
    """One compile cache for the C tests, in a temporary directory."""
    return tmp_path_factory.mktemp("dnet-cache")


@pytest.fixture(scope="session")
def compile_c(c_cache):
    """graph -> runner of the C backend (compiled into the test cache)."""
    def build(graph, **options):
        return CBackend().prepare(graph, cache_dir=c_cache, **options)
    return build
