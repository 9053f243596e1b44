/* cpu kernels — the thread pool and the matrix kernels the CPU backend is
 * built on. Private to cpu/ (and cpu tests/benchmarks).
 *
 * Numerics: activations are f32; weights may be F32, F16 or BF16 and are
 * widened exactly to f32; accumulation is f32. This is the "exact" path
 * that matches Hugging Face's float32-from-bf16 reference within rounding.
 * Kernels are chosen at run time by CPU features (AVX-512 [+BF16], AVX2+FMA,
 * portable C); DUET_CPU_ISA=portable|avx2|avx512 forces one (for tests).
 *
 * Tuning knobs (environment, read once): DUET_CPU_SPIN_US — how long an idle
 * pool worker spins before sleeping (default 200); DUET_CPU_GEMM_MIN_ROWS —
 * rows from which the AVX-512 path packs weights into f32 panels instead of
 * streaming them (default: chosen by shape); DUET_CPU_PF_BLOCKS / DUET_CPU_PF_BYTES —
 * weight prefetch distance of the streaming path (default 1 block + 2048). */
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

/* One matmul of a batch, with duet_cpu_matmul's meaning. */
typedef struct duet_cpu_mm {
    const float *x;
    int64_t n, in;
    const void *w;
    duet_dtype_t wdt;
    int64_t out;
    float *y;
    bool accumulate;
} duet_cpu_mm_t;

/* Independent matmuls in one pool run: e.g. the gate and up projections of
 * a token (same x, two W), or one layer of every active expert for a batch.
 * Saves a fork/join per matmul and balances small ones across threads. The
 * y of one must not overlap the x or y of another. Same numerics as
 * duet_cpu_matmul (each result is bitwise what a lone call would give). */
void duet_cpu_matmul_batch(duet_cpu_pool_t *pool, const duet_cpu_mm_t *mms, int count);

/* ---- precision --------------------------------------------------------- */

/* DUET_CPU_PREC_EXACT: the numerics above (the default everywhere).
 * DUET_CPU_PREC_BF16 (opt-in): for BF16 weights and calls of at least
 * duet_cpu_bf16_min_rows() activation rows, the activations are rounded to
 * bf16 (round to nearest even; f32 denormals to zero) once per call and
 * multiplied with vdpbf16ps, accumulating in f32: twice the multiply-add
 * rate of widening bf16 weights to f32. Each product is exact, so a result
 * differs from the exact path only through the activation rounding
 * (|error| <= 2^-8 · Σ|x·w| per output, ~1e-3 of |y| typically). Other
 * weight dtypes, fewer rows (decode at batch 1 is bound by weight reads, so
 * rounding buys nothing there), outputs narrower than 32 (MoE routers with
 * < 32 experts, gates: they pick experts, and a near tie flipped by the
 * rounding changes a token's output wholesale; they cost nothing), and CPUs without AVX512-BF16 (or
 * a family other than avx512 selected) take the exact path. Results in this mode depend on the row
 * count through that threshold. */
typedef enum duet_cpu_prec {
    DUET_CPU_PREC_EXACT = 0,
    DUET_CPU_PREC_BF16 = 1,
} duet_cpu_prec_t;

/* Whether DUET_CPU_PREC_BF16 runs its kernels here: the avx512 family is in
 * use and the CPU has AVX512-BF16. */
bool duet_cpu_bf16_supported(void);

/* duet_cpu_matmul / duet_cpu_matmul_batch with a precision. */
void duet_cpu_matmul_prec(duet_cpu_pool_t *pool, duet_cpu_prec_t prec, const float *x, int64_t n,
                          int64_t in, const void *w, duet_dtype_t wdt, int64_t out, float *y,
                          bool accumulate);
void duet_cpu_matmul_batch_prec(duet_cpu_pool_t *pool, duet_cpu_prec_t prec,
                                const duet_cpu_mm_t *mms, int count);

/* Rows from which DUET_CPU_PREC_BF16 rounds activations (default 4, or
 * DUET_CPU_BF16_MIN_ROWS from the environment; set 1 to use it for every
 * call). For tests and benchmarks; not safe while kernels run elsewhere. */
int64_t duet_cpu_bf16_min_rows(void);
void duet_cpu_set_bf16_min_rows(int64_t rows);

/* AVX-512 family: from how many activation rows on weights are packed into
 * f32 panels for a register-tiled GEMM instead of streamed through dot
 * products. 0 (default, or DUET_CPU_GEMM_MIN_ROWS unset): chosen by shape.
 * For tests and benchmarks; not safe while kernels run on other threads. */
void duet_cpu_set_gemm_min_rows(int64_t rows);

/* Name of the kernel family in use ("avx512-bf16", "avx2", "portable"). */
const char *duet_cpu_isa_name(void);

/* ---- kernel family selection (tests, benchmarks) ----------------------- */

typedef enum duet_cpu_isa {
    DUET_CPU_ISA_PORTABLE = 0,
    DUET_CPU_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    DUET_CPU_ISA_AVX512 = 2, /* AVX-512 F/BW/VL/DQ (named "avx512-bf16" where the CPU has
                              * BF16; the exact path does not use its dot products) */
    DUET_CPU_ISA_COUNT
} duet_cpu_isa_t;

/* Whether this CPU can run the family. */
bool duet_cpu_isa_supported(duet_cpu_isa_t isa);
/* The family in use: the best supported one, or DUET_CPU_ISA from the
 * environment, or the last duet_cpu_isa_select(). */
duet_cpu_isa_t duet_cpu_isa(void);
/* Force a family for every later kernel call in the process (not safe to
 * call while kernels run on other threads). DUET_ERR_UNSUPPORTED if the CPU
 * lacks it. */
duet_status_t duet_cpu_isa_select(duet_cpu_isa_t isa);

#endif
