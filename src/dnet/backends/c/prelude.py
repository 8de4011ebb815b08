"""The C text every generated library starts with: types, conversions, vectorisable math.

exp, tanh and erf are written out here (branch-free range reduction and polynomials)
so that GCC and Clang vectorise the loops that call them; libm's versions are opaque
calls that keep a softmax or a GELU scalar.
"""
from dnet.kernel.render import CStyleRenderer

PRELUDE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

/* -- the thread pool ------------------------------------------------------------------
 * dn_parallel(fn, ctx, n) runs fn(ctx, begin, end) over chunks of [0, n). The caller
 * works too, and it returns once every chunk is done, not once every worker has woken:
 * on a busy machine a worker the OS has not scheduled yet finds no work left, instead
 * of holding everyone at a barrier (what a static OpenMP loop does). */
typedef void (*dn_body)(void* ctx, int64_t begin, int64_t end);

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake;
    int threads, started;
    uint32_t gen;
    dn_body fn; void* ctx; int64_t n, chunk, chunks;
    _Atomic uint64_t next;      /* generation << 32 | next chunk */
    _Atomic int64_t done;
} dn_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0};

static void dn_run_chunks(uint32_t gen, dn_body fn, void* ctx, int64_t n, int64_t chunk, int64_t chunks) {
    for (;;) {
        uint64_t s = atomic_load(&dn_pool.next);
        if ((uint32_t)(s >> 32) != gen || (int64_t)(s & 0xffffffffu) >= chunks) return;
        if (!atomic_compare_exchange_weak(&dn_pool.next, &s, s + 1)) continue;
        int64_t c = (int64_t)(s & 0xffffffffu), begin = c * chunk, end = begin + chunk < n ? begin + chunk : n;
        fn(ctx, begin, end);
        atomic_fetch_add(&dn_pool.done, 1);
    }
}

static inline void dn_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Kernels come back to back: a worker that has just finished watches for the next job
 * for a short while (about 100 microseconds) before it sleeps, so the next kernel does
 * not wait for the OS to wake it. Bounded, so an idle process costs nothing. */
#define DN_SPIN 2000

static void* dn_worker(void* arg) {
    const int id = (int)(intptr_t)arg;      /* workers 0.. ; the caller is the last thread */
    uint32_t seen = 0;
    for (;;) {
        int i = 0;
        while (i < DN_SPIN && __atomic_load_n(&dn_pool.gen, __ATOMIC_ACQUIRE) == seen) { dn_pause(); ++i; }
        if (i < DN_SPIN) {     /* a job came while spinning: the caller is about to let go of the lock,
                                  so wait for it awake rather than be put to sleep and woken by a syscall */
            while (pthread_mutex_trylock(&dn_pool.mu) != 0) dn_pause();
        } else {
            pthread_mutex_lock(&dn_pool.mu);
        }
        while (dn_pool.gen == seen) pthread_cond_wait(&dn_pool.wake, &dn_pool.mu);
        seen = dn_pool.gen;
        dn_body fn = dn_pool.fn; void* ctx = dn_pool.ctx;
        int64_t n = dn_pool.n, chunk = dn_pool.chunk, chunks = dn_pool.chunks;
        const int active = id + 1 < dn_pool.threads;
        pthread_mutex_unlock(&dn_pool.mu);
        if (active) dn_run_chunks(seen, fn, ctx, n, chunk, chunks);
    }
    return 0;
}

static void dn_start_workers(void) {       /* with dn_pool.mu held */
    while (dn_pool.started < dn_pool.threads - 1) {
        pthread_t t;
        if (pthread_create(&t, 0, dn_worker, (void*)(intptr_t)dn_pool.started) != 0) {
            dn_pool.threads = dn_pool.started + 1;
            break;
        }
        pthread_detach(t);
        dn_pool.started++;
    }
}

static pthread_mutex_t dn_busy = PTHREAD_MUTEX_INITIALIZER;   /* one job on the pool at a time */
static void dn_after_fork(void);
static void dn_register_fork_handler(void) { pthread_atfork(0, 0, dn_after_fork); }

static void dn_after_fork(void) {    /* the child has none of the workers: start afresh */
    pthread_mutex_init(&dn_pool.mu, 0);
    pthread_cond_init(&dn_pool.wake, 0);
    pthread_mutex_init(&dn_busy, 0);
    dn_pool.started = 0;
}

static void dn_parallel(dn_body fn, void* ctx, int64_t n, int64_t min_per_chunk) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    int64_t threads = dn_pool.threads;
    if (n <= 0) return;
    if (threads <= 1 || n < 2 * min_per_chunk) { fn(ctx, 0, n); return; }
    pthread_once(&once, dn_register_fork_handler);
    if (pthread_mutex_trylock(&dn_busy) != 0) { fn(ctx, 0, n); return; }   /* another caller has the pool */
    /* about 4 chunks a thread; a few coarse tasks (a matmul's blocks) are handed out one by one,
       since grouping them (10 in 5 pairs, over 2 threads) would unbalance the threads */
    int64_t chunks = min_per_chunk <= 1 && n <= 8 * threads ? n : 4 * threads, chunk;
    if (chunks > n / min_per_chunk) chunks = n / min_per_chunk;
    chunk = (n + chunks - 1) / chunks;
    chunks = (n + chunk - 1) / chunk;
    pthread_mutex_lock(&dn_pool.mu);
    dn_start_workers();
    uint32_t gen = dn_pool.gen + 1;
    dn_pool.fn = fn; dn_pool.ctx = ctx; dn_pool.n = n; dn_pool.chunk = chunk; dn_pool.chunks = chunks;
    atomic_store(&dn_pool.done, 0);
    atomic_store(&dn_pool.next, (uint64_t)gen << 32);
    __atomic_store_n(&dn_pool.gen, gen, __ATOMIC_RELEASE);   /* publishes the job to spinning workers */
    pthread_cond_broadcast(&dn_pool.wake);
    pthread_mutex_unlock(&dn_pool.mu);
    dn_run_chunks(gen, fn, ctx, n, chunk, chunks);
    for (int spins = 0; atomic_load(&dn_pool.done) < chunks; ++spins)
        if (spins > 64) sched_yield();
    pthread_mutex_unlock(&dn_busy);
}

static inline int dn_threads(void) { return dn_pool.threads; }

void dnet_set_threads(int n) {
    pthread_mutex_lock(&dn_pool.mu);
    dn_pool.threads = n > 0 ? n : 1;
    pthread_mutex_unlock(&dn_pool.mu);
}

int dnet_get_threads(void) { return dn_pool.threads; }

/* -- AArch64's int8 dot product (`sdot`, FEAT_DotProd: Cortex-A55/A76 and later, Apple M1 and later) ---------
 * for the integer kernels (backends/c/igemm.py, quant.py). Where the compiler targets dotprod (-march=native on
 * such a CPU, Apple's default) every CPU the library runs on has it: DN_ARM_DOT_TARGET is empty and
 * dn_arm_dotprod() is 1. Else sdot kernels are compiled for armv8.2-a+dotprod alone (a function attribute) and
 * chosen at run time from the kernel's word (Linux: AT_HWCAP's HWCAP_ASIMDDP; macOS: sysctl
 * hw.optional.arm.FEAT_DotProd), so one library suits both kinds of core. -DDN_QUANT_NO_DOTPROD keeps sdot out,
 * -DDN_QUANT_PORTABLE every NEON integer kernel. */
#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(DN_QUANT_PORTABLE)
#include <arm_neon.h>
#if !defined(DN_QUANT_NO_DOTPROD) && defined(__ARM_FEATURE_DOTPROD)
#define DN_ARM_DOT 1
#define DN_ARM_DOT_TARGET
static inline int dn_arm_dotprod(void) { return 1; }
#elif !defined(DN_QUANT_NO_DOTPROD) && (defined(__linux__) || defined(__APPLE__)) \
    && ((defined(__clang__) && __clang_major__ >= 17) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 8))
/* GCC >= 8 and Clang >= 17 give the sdot intrinsics to a function whose target has dotprod */
#define DN_ARM_DOT 1
#define DN_ARM_DOT_TARGET __attribute__((target("arch=armv8.2-a+dotprod")))
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)   /* the kernel's bit (uapi asm/hwcap.h), for C libraries that do not name it */
#endif
#else
#include <sys/sysctl.h>
#endif
static inline int dn_arm_dotprod(void) {
    static int state = -1;   /* the CPU's answer does not change: asked once */
    int s = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (s < 0) {
#if defined(__linux__)
        s = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
        int v = 0;
        size_t size = sizeof v;
        s = sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &size, 0, 0) == 0 && v;
#endif
        __atomic_store_n(&state, s, __ATOMIC_RELEASE);
    }
    return s;
}
#endif
#endif

/* -- half types: stored as 16 bits, computed as float ------------------------------ */
static inline float dn_bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t dn_f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
#if defined(__FLT16_MAX__)
static inline float dn_f16_to_f32(uint16_t h) { _Float16 x; memcpy(&x, &h, 2); return (float)x; }
static inline uint16_t dn_f32_to_f16(float f) { _Float16 x = (_Float16)f; uint16_t h; memcpy(&h, &x, 2); return h; }
#else
static inline float dn_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13);
    else if (exp) u = sign | ((exp + 112) << 23) | (man << 13);
    else if (!man) u = sign;
    else { float f = (float)man * 5.9604644775390625e-8f; memcpy(&u, &f, 4); u |= sign; }
    float f; memcpy(&f, &u, 4); return f;
}
static inline uint16_t dn_f32_to_f16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);
    if (a < 0x38800000u) {                       /* subnormal or zero: round at 2^-24 */
        float g; memcpy(&g, &a, 4);
        return (uint16_t)(sign | (uint32_t)nearbyintf(g * 16777216.0f));
    }
    uint32_t r = a - 0x38000000u;                /* rebias exponent */
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}
#endif

/* -- vectorisable math ---------------------------------------------------------------- */
static inline float dn_exp(float x) {
    float xc = x < -87.3365f ? -87.3365f : x;   /* ternaries, not fminf: they vectorise */
    xc = xc > 88.37f ? 88.37f : xc;
    float n = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23; float scale; memcpy(&scale, &e, 4);
    y = y * scale;
    y = x < -87.3365f ? 0.0f : y;
    y = x > 88.7228f ? INFINITY : y;
    return x != x ? x : y;
}
static inline float dn_tanh(float x) {
    float a = fabsf(x);
    float t = dn_exp(-2.0f * a);
    float y = (1.0f - t) / (1.0f + t);
    float x2 = x * x;   /* near zero the quotient cancels: use the series */
    float s = a * (1.0f + x2 * (-0.333333333f + x2 * (0.133333333f + x2 * -0.0539682540f)));
    y = a < 0.0625f ? s : y;
    return copysignf(y, x);
}
static inline float dn_erf(float x) {
    /* Abramowitz & Stegun 7.1.26 away from zero, Taylor series near it: |error| < 2e-7 */
    float a = fabsf(x);
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float p = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    float y = 1.0f - p * dn_exp(-a * a);
    float x2 = x * x;
    float s = a * 1.1283791671f * (1.0f + x2 * (-0.333333333f + x2 * (0.1f + x2 * -0.0238095238f)));
    y = a < 0.25f ? s : y;
    return copysignf(y, x);
}
""" + CStyleRenderer.reference_helpers()
