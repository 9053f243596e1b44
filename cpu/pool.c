/* pool — a fork/join thread pool for the CPU kernels.
 *
 * Contract: duet_cpu_pool_run() publishes one job (fn, ctx, n_tasks) and
 * takes tasks itself; worker threads take tasks too. It returns when every
 * task has completed — not when every worker has noticed the job, so a
 * descheduled or sleeping worker never delays a run it took no part in.
 *
 * All claiming goes through one 64-bit word: generation (24 bits), task
 * count (20) and next index (20). A worker reads fn/ctx after seeing a new
 * generation and then claims with a CAS on that word; the CAS can only
 * succeed while that generation still has unclaimed tasks, i.e. before the
 * caller could have published the next job, so a stale worker can never run
 * one job's task with another job's fn/ctx. (A run of more than 2^20 - 1
 * tasks, far beyond what the kernels issue, runs on the caller alone.)
 *
 * Decode issues ~100 short runs per token, so waking must be cheap: an idle
 * worker spins on the word for a while (DUET_CPU_SPIN_US, default 200 µs)
 * and only then sleeps on a futex; the caller makes the syscall only when
 * some worker sleeps (Dekker-style: both sides use seq_cst). */
#include "cpu/cpu_kernels.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define POOL_MAX_THREADS 256
#define CACHELINE 64

#define ST_IDX_BITS 20
#define ST_N_BITS 20
#define ST_GEN_BITS 24
#define ST_MAX_TASKS ((1 << ST_N_BITS) - 1)
#define ST_GEN(s) ((uint32_t)((s) >> (ST_IDX_BITS + ST_N_BITS)))
#define ST_N(s) ((int)(((s) >> ST_IDX_BITS) & ((1u << ST_N_BITS) - 1)))
#define ST_IDX(s) ((int)((s) & ((1u << ST_IDX_BITS) - 1)))
#define ST_MAKE(gen, n)                                                                            \
    (((uint64_t)((gen) & ((1u << ST_GEN_BITS) - 1)) << (ST_IDX_BITS + ST_N_BITS)) |                \
     ((uint64_t)(n) << ST_IDX_BITS))

struct duet_cpu_pool {
    int n_threads;
    uint64_t spin_ns;
    pthread_t *threads;
    uint32_t gen; /* caller only */

    _Alignas(CACHELINE) _Atomic uint64_t state; /* gen | n_tasks | next index */
    _Atomic(duet_cpu_task_fn) fn;
    _Atomic(void *) ctx;
    _Atomic bool stop;
    _Alignas(CACHELINE) _Atomic uint32_t wake; /* futex word: bumped every run */
    _Atomic int sleepers;
    _Alignas(CACHELINE) _Atomic int done; /* tasks completed in this run */
};

static long futex_wait(_Atomic uint32_t *addr, uint32_t val)
{
    return syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Claim and run tasks of generation `gen` until none are left. */
static void pool_work(duet_cpu_pool_t *pool, uint32_t gen, duet_cpu_task_fn fn, void *ctx)
{
    uint64_t s = atomic_load_explicit(&pool->state, memory_order_acquire);
    for (;;) {
        if (ST_GEN(s) != gen || ST_IDX(s) >= ST_N(s))
            return;
        if (atomic_compare_exchange_weak_explicit(&pool->state, &s, s + 1, memory_order_acquire,
                                                  memory_order_acquire)) {
            fn(ctx, ST_IDX(s), ST_N(s));
            atomic_fetch_add_explicit(&pool->done, 1, memory_order_release);
            s = atomic_load_explicit(&pool->state, memory_order_acquire);
        }
    }
}

/* Wait for a generation other than `seen`: spin first, then sleep. */
static uint32_t pool_wait_gen(duet_cpu_pool_t *pool, uint32_t seen)
{
    uint64_t deadline = 0;
    for (unsigned i = 0;; i++) {
        uint32_t g = ST_GEN(atomic_load_explicit(&pool->state, memory_order_acquire));
        if (g != seen)
            return g;
        cpu_relax();
        if ((i & 63) == 63) {
            uint64_t now = duet_now_ns();
            if (!deadline)
                deadline = now + pool->spin_ns;
            else if (now >= deadline)
                break;
        }
    }
    atomic_fetch_add(&pool->sleepers, 1);
    uint32_t g;
    for (;;) {
        uint32_t w = atomic_load(&pool->wake);
        g = ST_GEN(atomic_load(&pool->state));
        if (g != seen)
            break;
        futex_wait(&pool->wake, w);
    }
    atomic_fetch_sub(&pool->sleepers, 1);
    return g;
}

static void *pool_worker(void *arg)
{
    duet_cpu_pool_t *pool = arg;
    uint32_t seen = 0;
    for (;;) {
        seen = pool_wait_gen(pool, seen);
        if (atomic_load_explicit(&pool->stop, memory_order_acquire))
            break;
        duet_cpu_task_fn fn = atomic_load_explicit(&pool->fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&pool->ctx, memory_order_relaxed);
        pool_work(pool, seen, fn, ctx);
    }
    return NULL;
}

duet_cpu_pool_t *duet_cpu_pool_create(int n_threads)
{
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > POOL_MAX_THREADS)
        n_threads = POOL_MAX_THREADS;
    duet_cpu_pool_t *pool = duet_aligned_alloc(CACHELINE, sizeof(*pool));
    if (!pool)
        return NULL;
    *pool = (duet_cpu_pool_t){.n_threads = n_threads};
    atomic_init(&pool->state, ST_MAKE(0, 0));
    atomic_init(&pool->fn, NULL);
    atomic_init(&pool->ctx, NULL);
    atomic_init(&pool->stop, false);
    atomic_init(&pool->wake, 0);
    atomic_init(&pool->sleepers, 0);
    atomic_init(&pool->done, 0);
    pool->spin_ns = 200 * 1000;
    const char *spin = getenv("DUET_CPU_SPIN_US");
    if (spin && *spin)
        pool->spin_ns = (uint64_t)strtoull(spin, NULL, 10) * 1000;

    if (n_threads > 1) {
        pool->threads = duet_calloc((size_t)n_threads - 1, sizeof(*pool->threads));
        if (!pool->threads)
            goto err_free_pool;
        for (int i = 0; i < n_threads - 1; i++) {
            if (pthread_create(&pool->threads[i], NULL, pool_worker, pool) != 0) {
                pool->n_threads = i + 1; /* the ones started, plus the caller */
                duet_cpu_pool_destroy(&pool);
                return NULL;
            }
        }
    }
    return pool;

err_free_pool:
    duet_free(pool);
    return NULL;
}

void duet_cpu_pool_destroy(duet_cpu_pool_t **pool_p)
{
    if (!pool_p || !*pool_p)
        return;
    duet_cpu_pool_t *pool = *pool_p;
    if (pool->threads) {
        atomic_store(&pool->stop, true);
        pool->gen++;
        atomic_store(&pool->state, ST_MAKE(pool->gen, 0));
        atomic_fetch_add(&pool->wake, 1);
        futex_wake_all(&pool->wake);
        for (int i = 0; i < pool->n_threads - 1; i++)
            pthread_join(pool->threads[i], NULL);
        duet_free(pool->threads);
    }
    duet_free(pool);
    *pool_p = NULL;
}

int duet_cpu_pool_size(const duet_cpu_pool_t *pool)
{
    return pool ? pool->n_threads : 1;
}

void duet_cpu_pool_run(duet_cpu_pool_t *pool, int n_tasks, duet_cpu_task_fn fn, void *ctx)
{
    if (n_tasks <= 0)
        return;
    if (!pool || pool->n_threads == 1 || n_tasks == 1 || n_tasks > ST_MAX_TASKS) {
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, n_tasks);
        return;
    }
    atomic_store_explicit(&pool->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&pool->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
    pool->gen = (pool->gen + 1) & ((1u << ST_GEN_BITS) - 1);
    atomic_store(&pool->state, ST_MAKE(pool->gen, n_tasks)); /* seq_cst: publishes the job */
    atomic_fetch_add(&pool->wake, 1);
    if (atomic_load(&pool->sleepers) > 0)
        futex_wake_all(&pool->wake);

    pool_work(pool, pool->gen, fn, ctx);

    /* Spin for the last tasks; past ~20 µs a worker holding one has likely
     * been descheduled (an oversubscribed machine): yield so it can run. */
    uint64_t yield_at = 0;
    for (unsigned i = 0; atomic_load_explicit(&pool->done, memory_order_acquire) < n_tasks; i++) {
        cpu_relax();
        if ((i & 63) == 63) {
            uint64_t now = duet_now_ns();
            if (!yield_at)
                yield_at = now + 20 * 1000;
            else if (now >= yield_at)
                sched_yield();
        }
    }
}
