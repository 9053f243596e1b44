/* cpu kernels — the thread pool and the matrix kernels the CPU backend is
 * built on. Private to cpu/ (and cpu tests/benchmarks).
 *
 * Numerics: activations are f32; weights may be F32, F16 or BF16 and are
 * widened exactly to f32; accumulation is f32. This is the "exact" path
 * that matches Hugging Face's float32-from-bf16 reference within rounding.
 * Kernels are chosen at run time by CPU features (AVX-512 [+BF16], AVX2+FMA,
 * portable C); DUET_CPU_ISA=portable|avx2|avx512 forces one (for tests). */
#ifndef DUET_CPU_KERNELS_H
#define DUET_CPU_KERNELS_H

#include "base/base.h"
#include "model/model.h"

/* ---- thread pool ------------------------------------------------------- */

typedef struct duet_cpu_pool duet_cpu_pool_t;
typedef void (*duet_cpu_task_fn)(void *ctx, int task, int n_tasks);

/* n_threads counts the caller: a pool of 2 has one worker thread plus the
 * caller, which also runs tasks. n_threads <= 0: number of online CPUs. */
duet_cpu_pool_t *duet_cpu_pool_create(int n_threads);
void duet_cpu_pool_destroy(duet_cpu_pool_t **pool_p);
int duet_cpu_pool_size(const duet_cpu_pool_t *pool);
/* Run fn(ctx, t, n_tasks) for every t in [0, n_tasks) and return when all
 * are done. Not reentrant: one run at a time per pool. */
void duet_cpu_pool_run(duet_cpu_pool_t *pool, int n_tasks, duet_cpu_task_fn fn, void *ctx);

/* ---- matrix kernels ---------------------------------------------------- */

/* y[n, out] = x[n, in] · W[out, in]^T, or y += ... when accumulate.
 * x, y: f32 row-major with leading dimensions in and out. W: row-major
 * [out, in] of dtype wdt (F32, F16 or BF16). pool may be NULL (caller only). */
void duet_cpu_matmul(duet_cpu_pool_t *pool, const float *x, int64_t n, int64_t in, const void *w,
                     duet_dtype_t wdt, int64_t out, float *y, bool accumulate);

/* Name of the kernel family in use ("avx512-bf16", "avx2", "portable"). */
const char *duet_cpu_isa_name(void);

#endif
