import pytest


@pytest.fixture(scope="session")
def compile_llvm():
    """graph -> runner of the LLVM backend; every test here skips, with the reason, where llvmlite is not."""
    from dnet.backends.llvm import LLVMBackend, unavailable

    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no LLVM: {reason}")

    def build(graph, **options):
        return LLVMBackend().prepare(graph, **options)
    return build
