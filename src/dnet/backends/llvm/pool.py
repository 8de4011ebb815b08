"""The LLVM backend's thread pool: the C backend's design, written in LLVM IR, one per process.

`dn_parallel(fn, ctx, n, grain)` runs `fn(ctx, begin, end)` over chunks of [0, n). The caller
works too, and it returns once every chunk is done, not once every worker has woken: on a busy
machine a worker the OS has not scheduled yet finds no work left instead of holding everyone at a
barrier. Workers that have just finished watch for the next job for a short while (kernels come
back to back) and then sleep on a condition variable.

The pool's state is a global of its own JIT module; its mutex and condition variable are
initialised through ctypes (their size is the C library's business, so a generous slot is kept for
each), and its worker threads are started through ctypes' `pthread_create` with the JIT'd
`dn_worker` as their start routine: plain OS threads, as the C backend's, outside Python.
Every compiled LLVM program calls this one pool (the JIT resolves `dn_parallel` and `dn_threads`
to it), so two programs never oversubscribe the cores.
"""
from __future__ import annotations

import ctypes
import os
import threading

from dnet.backends.llvm.jit import Compiled, jit

SPIN = 2000          # pause instructions a worker spins for the next job before it sleeps (about 100 us)

# byte offsets in @dn_pool (hot atomics on their own cache lines)
GEN, FN, CTX, N, CHUNK, CHUNKS = 0, 8, 16, 24, 32, 40
NEXT, DONE, THREADS, BUSY = 64, 128, 192, 200
MUTEX, COND, SIZE = 256, 512, 768     # 256 bytes reserved for each pthread object


def _source(x86: bool) -> str:
    pause = "call void @llvm.x86.sse2.pause()" if x86 else ""
    pause_decl = "declare void @llvm.x86.sse2.pause()" if x86 else ""

    def field(name: str, offset: int) -> str:
        return f"%{name} = getelementptr i8, ptr @dn_pool, i64 {offset}"
    return f"""
@dn_pool = global [{SIZE} x i8] zeroinitializer, align 64

declare i32 @pthread_mutex_lock(ptr)
declare i32 @pthread_mutex_trylock(ptr)
declare i32 @pthread_mutex_unlock(ptr)
declare i32 @pthread_cond_wait(ptr, ptr)
declare i32 @pthread_cond_broadcast(ptr)
declare i32 @sched_yield()
{pause_decl}

; claim chunks of job `gen` until none is left
define internal void @dn_run_chunks(i64 %gen, ptr %fn, ptr %ctx, i64 %n, i64 %chunk, i64 %chunks) {{
entry:
  {field("nextp", NEXT)}
  {field("donep", DONE)}
  br label %loop
loop:
  %s = load atomic i64, ptr %nextp seq_cst, align 8
  %sg = lshr i64 %s, 32
  %c = and i64 %s, 4294967295
  %same = icmp eq i64 %sg, %gen
  %more = icmp slt i64 %c, %chunks
  %ok = and i1 %same, %more
  br i1 %ok, label %try, label %out
try:
  %s1 = add i64 %s, 1
  %r = cmpxchg weak ptr %nextp, i64 %s, i64 %s1 seq_cst seq_cst
  %won = extractvalue {{ i64, i1 }} %r, 1
  br i1 %won, label %work, label %loop
work:
  %begin = mul i64 %c, %chunk
  %e0 = add i64 %begin, %chunk
  %lt = icmp slt i64 %e0, %n
  %end = select i1 %lt, i64 %e0, i64 %n
  call void %fn(ptr %ctx, i64 %begin, i64 %end)
  %old = atomicrmw add ptr %donep, i64 1 seq_cst
  br label %loop
out:
  ret void
}}

define i64 @dn_threads() {{
entry:
  {field("tp", THREADS)}
  %t = load atomic i64, ptr %tp monotonic, align 8
  ret i64 %t
}}

define void @dn_parallel(ptr %fn, ptr %ctx, i64 %n, i64 %grain) {{
entry:
  {field("genp", GEN)}
  {field("fnp", FN)}
  {field("ctxp", CTX)}
  {field("np", N)}
  {field("chunkp", CHUNK)}
  {field("chunksp", CHUNKS)}
  {field("nextp", NEXT)}
  {field("donep", DONE)}
  {field("busyp", BUSY)}
  {field("mu", MUTEX)}
  {field("cv", COND)}
  %empty = icmp sle i64 %n, 0
  br i1 %empty, label %done, label %check
check:
  %threads = call i64 @dn_threads()
  %one = icmp sle i64 %threads, 1
  %g2 = mul i64 %grain, 2
  %small = icmp slt i64 %n, %g2
  %serial = or i1 %one, %small
  br i1 %serial, label %alone, label %claim
claim:
  %r = cmpxchg ptr %busyp, i64 0, i64 1 acquire monotonic
  %got = extractvalue {{ i64, i1 }} %r, 1
  br i1 %got, label %post, label %alone       ; another caller has the pool: run it here
alone:
  call void %fn(ptr %ctx, i64 0, i64 %n)
  br label %done
post:
  ; about 4 chunks a thread; a few coarse tasks (a matmul's blocks) are handed out one by one
  %t8 = mul i64 %threads, 8
  %few = icmp sle i64 %n, %t8
  %coarse = icmp sle i64 %grain, 1
  %each = and i1 %few, %coarse
  %t4 = mul i64 %threads, 4
  %c0 = select i1 %each, i64 %n, i64 %t4
  %gr = select i1 %coarse, i64 1, i64 %grain
  %cmax = sdiv i64 %n, %gr
  %cbig = icmp sgt i64 %c0, %cmax
  %c1 = select i1 %cbig, i64 %cmax, i64 %c0
  %nm1 = add i64 %n, -1
  %q0 = add i64 %nm1, %c1
  %chunk = sdiv i64 %q0, %c1
  %q1 = add i64 %nm1, %chunk
  %chunks = sdiv i64 %q1, %chunk
  %l = call i32 @pthread_mutex_lock(ptr %mu)
  %g0 = load i64, ptr %genp, align 8
  %g1 = add i64 %g0, 1
  %gen = and i64 %g1, 4294967295
  store ptr %fn, ptr %fnp, align 8
  store ptr %ctx, ptr %ctxp, align 8
  store i64 %n, ptr %np, align 8
  store i64 %chunk, ptr %chunkp, align 8
  store i64 %chunks, ptr %chunksp, align 8
  store atomic i64 0, ptr %donep seq_cst, align 8
  %first = shl i64 %gen, 32
  store atomic i64 %first, ptr %nextp seq_cst, align 8
  store atomic i64 %gen, ptr %genp release, align 8     ; publishes the job to spinning workers
  %b = call i32 @pthread_cond_broadcast(ptr %cv)
  %u = call i32 @pthread_mutex_unlock(ptr %mu)
  call void @dn_run_chunks(i64 %gen, ptr %fn, ptr %ctx, i64 %n, i64 %chunk, i64 %chunks)
  br label %wait
wait:
  %spins = phi i64 [0, %post], [%spins1, %waitmore], [%spins1, %yield]
  %d = load atomic i64, ptr %donep seq_cst, align 8
  %finished = icmp sge i64 %d, %chunks
  br i1 %finished, label %release, label %waitmore
waitmore:
  %spins1 = add i64 %spins, 1
  %long = icmp sgt i64 %spins, 64
  br i1 %long, label %yield, label %wait
yield:
  %y = call i32 @sched_yield()
  br label %wait
release:
  store atomic i64 0, ptr %busyp release, align 8
  br label %done
done:
  ret void
}}

; a worker thread's start routine; `arg` is its index (workers 0.. ; callers are not counted)
define ptr @dn_worker(ptr %arg) {{
entry:
  %id = ptrtoint ptr %arg to i64
  {field("genp", GEN)}
  {field("fnp", FN)}
  {field("ctxp", CTX)}
  {field("np", N)}
  {field("chunkp", CHUNK)}
  {field("chunksp", CHUNKS)}
  {field("tp", THREADS)}
  {field("mu", MUTEX)}
  {field("cv", COND)}
  br label %job
job:
  %seen = phi i64 [0, %entry], [%gen, %run], [%gen, %idle]
  br label %spin
spin:
  %i = phi i64 [0, %job], [%i1, %spinmore]
  %g = load atomic i64, ptr %genp acquire, align 8
  %same = icmp eq i64 %g, %seen
  %short = icmp slt i64 %i, {SPIN}
  %keep = and i1 %same, %short
  br i1 %keep, label %spinmore, label %arrived
spinmore:
  {pause}
  %i1 = add i64 %i, 1
  br label %spin
arrived:
  %early = icmp slt i64 %i, {SPIN}
  br i1 %early, label %trylock, label %lock
trylock:                  ; a job came while spinning: the caller is about to let go of the lock, so wait
  %tl = call i32 @pthread_mutex_trylock(ptr %mu)       ; for it awake rather than sleep and be woken by a syscall
  %got = icmp eq i32 %tl, 0
  br i1 %got, label %check, label %trymore
trymore:
  {pause}
  br label %trylock
lock:
  %l = call i32 @pthread_mutex_lock(ptr %mu)
  br label %check
check:
  %gw = load atomic i64, ptr %genp monotonic, align 8
  %asleep = icmp eq i64 %gw, %seen
  br i1 %asleep, label %sleep, label %take
sleep:
  %w = call i32 @pthread_cond_wait(ptr %cv, ptr %mu)
  br label %check
take:
  %gen = load atomic i64, ptr %genp monotonic, align 8
  %fn = load ptr, ptr %fnp, align 8
  %ctx = load ptr, ptr %ctxp, align 8
  %n = load i64, ptr %np, align 8
  %chunk = load i64, ptr %chunkp, align 8
  %chunks = load i64, ptr %chunksp, align 8
  %threads = load atomic i64, ptr %tp monotonic, align 8
  %u = call i32 @pthread_mutex_unlock(ptr %mu)
  %id1 = add i64 %id, 1
  %active = icmp slt i64 %id1, %threads
  br i1 %active, label %run, label %idle
run:
  call void @dn_run_chunks(i64 %gen, ptr %fn, ptr %ctx, i64 %n, i64 %chunk, i64 %chunks)
  br label %job
idle:
  br label %job
}}
"""


class Pool:
    """The process's pool: compiled once, its workers started as `set_threads` asks for them."""

    def __init__(self) -> None:
        state = jit()
        self.compiled = Compiled(_source(state.x86), "dnet_pool")
        self.base = self.compiled.global_address("dn_pool")
        self.parallel = self.compiled.address("dn_parallel")
        self.threads_fn = self.compiled.address("dn_threads")
        self._worker = self.compiled.address("dn_worker")
        self._libc = ctypes.CDLL(None)
        self._started = 0
        self._lock = threading.Lock()
        self._init_sync()
        os.register_at_fork(after_in_child=self._after_fork)
        self._store(THREADS, 1)

    def _init_sync(self) -> None:
        self._libc.pthread_mutex_init(ctypes.c_void_p(self.base + MUTEX), None)
        self._libc.pthread_cond_init(ctypes.c_void_p(self.base + COND), None)

    def _store(self, offset: int, value: int) -> None:
        ctypes.c_int64.from_address(self.base + offset).value = value

    def _after_fork(self) -> None:
        """The child has none of the workers (fork copies only the calling thread): start afresh."""
        self._init_sync()
        self._started = 0
        self._store(BUSY, 0)
        self._lock = threading.Lock()

    @property
    def threads(self) -> int:
        return ctypes.c_int64.from_address(self.base + THREADS).value

    def set_threads(self, n: int) -> None:
        """Run parallel loops on `n` threads (the caller and n - 1 workers), starting workers as needed."""
        n = max(1, int(n))
        with self._lock:
            start = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(self._worker)
            create = self._libc.pthread_create
            create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            while self._started < n - 1:
                handle = ctypes.c_uint64(0)
                if create(ctypes.byref(handle), None, ctypes.cast(start, ctypes.c_void_p),
                          ctypes.c_void_p(self._started)) != 0:
                    n = self._started + 1       # the OS refused a thread: run with those there are
                    break
                self._libc.pthread_detach(ctypes.c_uint64(handle.value))
                self._started += 1
            self._store(THREADS, n)


_pool: Pool | None = None
_pool_lock = threading.Lock()


def pool() -> Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = Pool()
        return _pool
