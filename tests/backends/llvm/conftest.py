import pytest


@pytest.fixture(scope="session")
def llvm_cache(tmp_path_factory):
    """The machine-code cache of the LLVM tests, in a temporary directory (never the user's)."""
    return tmp_path_factory.mktemp("dnet-llvm-cache")


@pytest.fixture(scope="session")
def compile_llvm(llvm_cache):
    """graph -> runner of the LLVM backend; every test here skips, with the reason, where llvmlite is not."""
    from dnet.backends.llvm import LLVMBackend, unavailable

    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no LLVM: {reason}")

    def build(graph, **options):
        return LLVMBackend().prepare(graph, **{"cache_dir": llvm_cache, **options})
    return build
