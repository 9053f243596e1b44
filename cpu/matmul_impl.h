/* matmul_impl — private glue between cpu/matmul.c (dispatch, portable C)
 * and the ISA-specific kernel files (matmul_avx2.c, matmul_avx512.c). Each
 * ISA file exports one entry point with duet_cpu_matmul's contract; it is
 * only called after a run-time CPU feature check. */
#ifndef DUET_CPU_MATMUL_IMPL_H
#define DUET_CPU_MATMUL_IMPL_H

#include "cpu/cpu_kernels.h"

void duet__matmul_avx2(duet_cpu_pool_t *pool, const float *x, int64_t n, int64_t in, const void *w,
                       duet_dtype_t wdt, int64_t out, float *y, bool accumulate);
void duet__matmul_avx512(duet_cpu_pool_t *pool, const float *x, int64_t n, int64_t in,
                         const void *w, duet_dtype_t wdt, int64_t out, float *y, bool accumulate);
/* bf16_min_rows > 0: BF16-weight ops with at least that many rows take the
 * bf16-activation path (caller checked duet_cpu_bf16_supported); 0: exact. */
void duet__matmul_batch_avx512(duet_cpu_pool_t *pool, const duet_cpu_mm_t *mms, int count,
                               int64_t bf16_min_rows);
void duet__matmul_portable(duet_cpu_pool_t *pool, const float *x, int64_t n, int64_t in,
                           const void *w, duet_dtype_t wdt, int64_t out, float *y, bool accumulate);

/* A per-thread scratch buffer of at least `bytes` (64-byte aligned) that
 * lives until the thread exits; slots let nested users (the caller's batch
 * state, a task's packed panel) hold one each. NULL when out of memory. */
enum { DUET__SCRATCH_BATCH = 0, DUET__SCRATCH_TASK = 1, DUET__SCRATCH_SLOTS = 2 };
void *duet__cpu_scratch(int slot, size_t bytes);

/* duet_cpu_set_gemm_min_rows / DUET_CPU_GEMM_MIN_ROWS (0: by shape). */
int64_t duet__cpu_gemm_min_rows(void);

/* Split `out` rows into tasks of a multiple of `align` rows, about `per_thread`
 * tasks per pool thread (dynamic claiming evens out noise) and at least
 * `min_rows` rows each. Returns the rows per task. */
static inline int64_t duet__mm_task_rows(const duet_cpu_pool_t *pool, int64_t out, int64_t align,
                                         int per_thread, int64_t min_rows)
{
    int64_t n_tasks = (int64_t)duet_cpu_pool_size(pool) * per_thread;
    int64_t rows = (out + n_tasks - 1) / n_tasks;
    if (rows < min_rows)
        rows = min_rows;
    rows = (rows + align - 1) / align * align;
    return rows > 0 ? rows : align;
}

#endif
