import os

import pytest

from dnet.backends.c import CBackend


@pytest.fixture(scope="session", autouse=True)
def c_cache(tmp_path_factory):
    """One compile cache for the C tests (libraries and the compiler probe), in a temporary directory."""
    path = tmp_path_factory.mktemp("dnet-cache")
    saved = os.environ.get("DNET_CACHE_DIR")
    os.environ["DNET_CACHE_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("DNET_CACHE_DIR", None)
    else:
        os.environ["DNET_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def compile_c(c_cache):
    """graph -> runner of the C backend (compiled into the test cache)."""
    def build(graph, **options):
        return CBackend().prepare(graph, cache_dir=c_cache, **options)
    return build
