"""llvmlite, set up once per process: the host's target machine, the optimiser, the JIT.

The target machine is the host's own (process triple, `get_host_cpu_name()` and its features), so
vector types and the loop vectoriser use the widest SIMD the CPU has. C library functions that the
generated code calls (libm's `logf`, `powf`, ...; the thread pool's pthread calls) are resolved by
address from the running process, so no compiler, linker or header is needed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass

from dnet.errors import BackendError

# libc / libm functions the generated IR may call; each is looked up in the process at start-up
LIBM = ("logf", "expf", "powf", "fmodf", "sinf", "cosf", "floorf", "sqrtf", "fabsf", "tanhf", "erff",
        "nearbyintf")
LIBC = ("pthread_mutex_lock", "pthread_mutex_trylock", "pthread_mutex_unlock", "pthread_cond_wait",
        "pthread_cond_broadcast", "sched_yield", "memset", "memcpy", "malloc", "free")

_lock = threading.Lock()
_state: "_Jit | None" = None


def unavailable() -> str | None:
    """Why target "llvm" cannot run here (llvmlite missing or unusable), or None."""
    try:
        jit()
    except BackendError as err:
        return str(err)
    return None


@dataclass
class _Jit:
    llvm: object           # the llvmlite.binding module
    machine: object        # llvmlite TargetMachine for the host
    triple: str
    cpu: str
    features: str

    def new_machine(self):
        """A target machine for the host: an execution engine owns (and frees) the one it is given."""
        return self.llvm.Target.from_triple(self.triple).create_target_machine(
            cpu=self.cpu, features=self.features, opt=3, codemodel="jitdefault", jit=True)

    def fingerprint(self) -> str:
        """What changes the machine code besides the IR: LLVM's version and the host CPU."""
        return "|".join([".".join(map(str, self.llvm.llvm_version_info)), self.triple, self.cpu, self.features])

    @property
    def native_half(self) -> bool:
        """Whether the CPU converts f16 <-> f32 itself (else LLVM would call a runtime library)."""
        if self.x86:
            return "+f16c" in self.features.split(",")
        return self.triple.startswith(("aarch64", "arm64"))

    @property
    def x86(self) -> bool:
        return self.triple.startswith(("x86_64", "i386", "i686"))


def jit() -> _Jit:
    """The process's llvmlite state, made on first use."""
    global _state
    with _lock:
        if _state is None:
            _state = _start()
        return _state


def _start() -> _Jit:
    try:
        import llvmlite.binding as llvm
    except ImportError as err:
        raise BackendError(f"target 'llvm' needs llvmlite ({err})",
                           hint="pip install 'dnet[llvm]' (or pip install llvmlite)") from None
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    triple = llvm.get_process_triple()
    cpu = llvm.get_host_cpu_name()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:          # some hosts cannot list them: the CPU name alone then
        features = ""
    _resolve_c_symbols(llvm)
    state = _Jit(llvm, None, triple, cpu, features)
    state.machine = state.new_machine()
    return state


def _resolve_c_symbols(llvm) -> None:
    """Give the JIT the addresses of the C functions generated code calls (found in this process)."""
    libs = [ctypes.CDLL(None)]
    for name in ("m", "c", "pthread"):
        path = ctypes.util.find_library(name)
        if path:
            try:
                libs.append(ctypes.CDLL(path))
            except OSError:
                pass
    for symbol in LIBM + LIBC:
        for lib in libs:
            try:
                address = ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value
            except AttributeError:
                continue
            llvm.add_symbol(symbol, address)
            break


class Compiled:
    """One LLVM module, optimised for the host and compiled to machine code in this process.

    With a `cache` (`backends/llvm/cache.ObjectCache`), machine code compiled before from the same
    IR on the same CPU is loaded instead of optimised and compiled again.
    """

    def __init__(self, source: str, name: str = "dnet", cache=None):
        state = jit()
        llvm = state.llvm
        try:
            module = llvm.parse_assembly(source)
            module.name = name
            module.verify()
        except RuntimeError as err:
            raise BackendError(f"LLVM rejected the generated IR of {name}: {' '.join(str(err).split())[:400]}",
                               hint="a bug in dnet's LLVM renderer: report it with `dnet inspect --kernels`") from None
        module.triple = state.triple
        machine = state.new_machine()
        module.data_layout = str(machine.target_data)
        key = cache.key(source, state.fingerprint()) if cache is not None else None
        cached = cache.get(key) if cache is not None else None
        if cached is None:
            _optimise(machine, module)
        self.engine = llvm.create_mcjit_compiler(module, machine)
        if cache is not None:
            self.engine.set_object_cache(lambda _module, obj: cached is None and cache.put(key, bytes(obj)),
                                         lambda _module: cached)
        self.engine.finalize_object()
        self.module = module
        self.from_cache = cached is not None

    def address(self, symbol: str) -> int:
        address = self.engine.get_function_address(symbol)
        if not address:
            raise BackendError(f"compiled LLVM module has no function '{symbol}'")
        return address

    def global_address(self, symbol: str) -> int:
        return self.engine.get_global_value_address(symbol)

    def assembly(self) -> str:
        """The machine code as assembly text (for inspection)."""
        return jit().new_machine().emit_assembly(self.module)


def _optimise(machine, module) -> None:
    """LLVM's O3 pipeline with the loop and SLP vectorisers, for the host's target machine."""
    llvm = jit().llvm
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    options.loop_vectorization = True
    options.slp_vectorization = True
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(module, builder)
