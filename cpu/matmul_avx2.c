/* matmul_avx2 — AVX2+FMA+F16C kernels for y[n,out] (+)= x[n,in] · W[out,in]^T
 * (f32 activations, F32/F16/BF16 weights widened exactly, f32 accumulation).
 *
 * Same plan as matmul_avx512.c with 8-wide vectors and 16 registers:
 *  - few rows: each weight row streams once and is dotted with up to 4
 *    activation rows at a time; BF16 widens with a shift (even elements) and
 *    a mask (odd ones) against activations permuted once per call. The K
 *    tail goes through a small zero-padded copy (AVX2 has no 16-bit masked
 *    loads).
 *  - many rows: a 6×16 register tile over a 16-column f32 panel packed per
 *    K block, activations packed once per call into 6-row interleaved
 *    blocks. */
#include "cpu/matmul_impl.h"

#include <immintrin.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define FORCE_INLINE static inline __attribute__((always_inline))

static size_t dt_size(duet_dtype_t dt)
{
    return dt == DUET_DTYPE_F32 ? 4 : 2;
}

/* 16 weights from p as two f32 vectors: BF16 even/odd, others natural. */
FORCE_INLINE void wload16(duet_dtype_t dt, const void *p, __m256 *a, __m256 *b)
{
    if (dt == DUET_DTYPE_BF16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)p);
        *a = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        *b = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)));
    } else if (dt == DUET_DTYPE_F16) {
        *a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        *b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p + 1));
    } else {
        *a = _mm256_loadu_ps((const float *)p);
        *b = _mm256_loadu_ps((const float *)p + 8);
    }
}

FORCE_INLINE float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- few rows --------------------------------------------------------------- */

#define GEMV_MAX_R 4

typedef struct gemv_job {
    const float *xp; /* prepared activations [n][kpad] */
    int64_t kpad;
    int64_t n, in, out;
    const void *w;
    duet_dtype_t dt;
    float *y;
    bool accumulate;
    int64_t rows;
} gemv_job_t;

FORCE_INLINE void gemv_block(const gemv_job_t *j, duet_dtype_t dt, int R, int C, int64_t r0,
                             int64_t o0)
{
    __m256 acc[GEMV_MAX_R][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            acc[r][c] = _mm256_setzero_ps();
    const size_t es = dt_size(dt);
    const char *wr[4];
    for (int c = 0; c < C; c++)
        wr[c] = (const char *)j->w + (size_t)(o0 + c) * (size_t)j->in * es;
    const size_t pf = (size_t)C * (size_t)j->in * es + 2048; /* next block, +2 KiB */
    const float *xr = j->xp + r0 * j->kpad;
    const int64_t in = j->in, kfull = in & ~(int64_t)15;
    int64_t k = 0;
    for (; k < kfull; k += 16) {
        for (int c = 0; c < C; c++) {
            _mm_prefetch(wr[c] + (size_t)k * es + pf, _MM_HINT_T0);
            __m256 wa, wb;
            wload16(dt, wr[c] + (size_t)k * es, &wa, &wb);
            for (int r = 0; r < R; r++) {
                const float *xk = xr + r * j->kpad + k;
                acc[r][c] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(xk), acc[r][c]);
                acc[r][c] = _mm256_fmadd_ps(wb, _mm256_loadu_ps(xk + 8), acc[r][c]);
            }
        }
    }
    if (k < in) {
        for (int c = 0; c < C; c++) {
            _Alignas(32) uint8_t tail[64] = {0};
            memcpy(tail, wr[c] + (size_t)k * es, (size_t)(in - k) * es);
            __m256 wa, wb;
            wload16(dt, tail, &wa, &wb);
            for (int r = 0; r < R; r++) {
                const float *xk = xr + r * j->kpad + k;
                acc[r][c] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(xk), acc[r][c]);
                acc[r][c] = _mm256_fmadd_ps(wb, _mm256_loadu_ps(xk + 8), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        float *yr = j->y + (r0 + r) * j->out + o0;
        for (int c = 0; c < C; c++) {
            float s = hsum8(acc[r][c]);
            yr[c] = j->accumulate ? yr[c] + s : s;
        }
    }
}

#define GEMV_CASES(DT, C, r0, o0)                                                                  \
    switch (R) {                                                                                   \
    case 1: gemv_block(j, DT, 1, C, r0, o0); break;                                                \
    case 2: gemv_block(j, DT, 2, (C) > 2 ? 2 : (C), r0, o0); break;                                \
    case 3: gemv_block(j, DT, 3, (C) > 2 ? 2 : (C), r0, o0); break;                                \
    default: gemv_block(j, DT, 4, (C) > 2 ? 2 : (C), r0, o0); break;                               \
    }

FORCE_INLINE void gemv_range(const gemv_job_t *j, duet_dtype_t dt, int64_t o0, int64_t o1)
{
    const int cw = j->n == 1 ? 4 : 2;
    for (int64_t o = o0; o < o1;) {
        int64_t step = o1 - o >= cw ? cw : 1;
        for (int64_t r0 = 0; r0 < j->n; r0 += GEMV_MAX_R) {
            int R = (int)(j->n - r0 < GEMV_MAX_R ? j->n - r0 : GEMV_MAX_R);
            if (step == 4) {
                GEMV_CASES(dt, 4, r0, o)
            } else if (step == 2) {
                GEMV_CASES(dt, 2, r0, o)
            } else {
                GEMV_CASES(dt, 1, r0, o)
            }
        }
        o += step;
    }
}

static void gemv_task(void *ctx, int task, int n_tasks)
{
    const gemv_job_t *j = ctx;
    int64_t o0 = (int64_t)task * j->rows;
    int64_t o1 = o0 + j->rows < j->out ? o0 + j->rows : j->out;
    switch (j->dt) {
    case DUET_DTYPE_BF16: gemv_range(j, DUET_DTYPE_BF16, o0, o1); break;
    case DUET_DTYPE_F16: gemv_range(j, DUET_DTYPE_F16, o0, o1); break;
    default: gemv_range(j, DUET_DTYPE_F32, o0, o1); break;
    }
}

static void gemv_prep_x(const float *x, int64_t n, int64_t in, duet_dtype_t dt, float *xp,
                        int64_t kpad)
{
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * in;
        float *d = xp + r * kpad;
        memset(d, 0, (size_t)kpad * sizeof(float));
        if (dt == DUET_DTYPE_BF16) {
            for (int64_t k = 0; k < in; k++) {
                int64_t b = k & ~(int64_t)15, i = k - b;
                d[b + (i & 1 ? 8 : 0) + i / 2] = xr[k];
            }
        } else {
            memcpy(d, xr, (size_t)in * sizeof(float));
        }
    }
}

static void matmul_gemv(duet_cpu_pool_t *pool, const float *x, int64_t n, int64_t in, const void *w,
                        duet_dtype_t wdt, int64_t out, float *y, bool accumulate)
{
    int64_t kpad = (in + 15) & ~(int64_t)15;
    size_t bytes = (size_t)(n * kpad) * sizeof(float);
    float stackbuf[8 * 1024] __attribute__((aligned(32)));
    float *xp =
        bytes <= sizeof(stackbuf) ? stackbuf : duet__cpu_scratch(DUET__SCRATCH_BATCH, bytes);
    if (!xp)
        abort(); /* out of memory inside a kernel */
    gemv_prep_x(x, n, in, wdt, xp, kpad);
    gemv_job_t j = {.xp = xp,
                    .kpad = kpad,
                    .n = n,
                    .in = in,
                    .out = out,
                    .w = w,
                    .dt = wdt,
                    .y = y,
                    .accumulate = accumulate};
    j.rows = duet__mm_task_rows(pool, out, 4, 4, 16);
    duet_cpu_pool_run(pool, (int)((out + j.rows - 1) / j.rows), gemv_task, &j);
}

/* ---- many rows ------------------------------------------------------------------- */

#define MR 6
#define NR 16
#define KC 256

typedef struct gemm_job {
    const float *x;
    float *ap; /* [n_blocks][in][MR] */
    int64_t n, in, out;
    const void *w;
    duet_dtype_t dt;
    float *y;
    bool accumulate;
    int64_t n_blocks;
} gemm_job_t;

static void gemm_pack_a_task(void *ctx, int task, int n_tasks)
{
    const gemm_job_t *j = ctx;
    int64_t r0 = (int64_t)task * MR;
    float *dst = j->ap + (size_t)task * (size_t)j->in * MR;
    int m = (int)(j->n - r0 < MR ? j->n - r0 : MR);
    for (int64_t k = 0; k < j->in; k++) {
        float *d = dst + k * MR;
        int r = 0;
        for (; r < m; r++)
            d[r] = j->x[(r0 + r) * j->in + k];
        for (; r < MR; r++)
            d[r] = 0.0f;
    }
}

/* bp[kk][16] = W[o0 + c][k0 + kk], zero past out. */
FORCE_INLINE void gemm_pack_b(const gemm_job_t *j, duet_dtype_t dt, int64_t o0, int64_t k0,
                              int64_t kc, float *bp)
{
    const size_t es = dt_size(dt);
    int rows = (int)(j->out - o0 < NR ? j->out - o0 : NR);
    _Alignas(32) float tmp[KC + 16];
    for (int c = 0; c < NR; c++) {
        if (c >= rows) {
            for (int64_t kk = 0; kk < kc; kk++)
                bp[kk * NR + c] = 0.0f;
            continue;
        }
        const char *row = (const char *)j->w + ((size_t)(o0 + c) * (size_t)j->in + (size_t)k0) * es;
        int64_t kk = 0;
        for (; kk + 8 <= kc; kk += 8) {
            __m256 v;
            if (dt == DUET_DTYPE_BF16)
                v = _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + kk * 2))), 16));
            else if (dt == DUET_DTYPE_F16)
                v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + kk * 2)));
            else
                v = _mm256_loadu_ps((const float *)row + kk);
            _mm256_store_ps(tmp + kk, v);
        }
        for (; kk < kc; kk++) {
            uint16_t h;
            if (dt == DUET_DTYPE_F32) {
                memcpy(&tmp[kk], row + kk * 4, 4);
                continue;
            }
            memcpy(&h, row + kk * 2, 2);
            tmp[kk] = dt == DUET_DTYPE_BF16 ? duet_bf16_to_f32(h) : duet_f16_to_f32(h);
        }
        for (kk = 0; kk < kc; kk++)
            bp[kk * NR + c] = tmp[kk];
    }
}

FORCE_INLINE void gemm_micro(int M, const float *ap, const float *bp, int64_t kc, float *c,
                             int64_t ldc, int m, int nc, bool load_c)
{
    __m256 acc[MR][2];
    for (int r = 0; r < M; r++) {
        acc[r][0] = _mm256_setzero_ps();
        acc[r][1] = _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(bp + k * NR);
        __m256 b1 = _mm256_load_ps(bp + k * NR + 8);
        for (int r = 0; r < M; r++) {
            __m256 av = _mm256_broadcast_ss(ap + k * MR + r);
            acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < m; r++) {
        _Alignas(32) float t[NR];
        _mm256_store_ps(t, acc[r][0]);
        _mm256_store_ps(t + 8, acc[r][1]);
        float *cr = c + r * ldc;
        if (load_c)
            for (int i = 0; i < nc; i++)
                cr[i] += t[i];
        else
            for (int i = 0; i < nc; i++)
                cr[i] = t[i];
    }
}

static void gemm_micro_any(const float *ap, const float *bp, int64_t kc, float *c, int64_t ldc,
                           int m, int nc, bool load_c)
{
    if (m > 3)
        gemm_micro(6, ap, bp, kc, c, ldc, m, nc, load_c);
    else
        gemm_micro(3, ap, bp, kc, c, ldc, m, nc, load_c);
}

static void gemm_task(void *ctx, int task, int n_tasks)
{
    const gemm_job_t *j = ctx;
    int64_t o0 = (int64_t)task * NR;
    int nc = (int)(j->out - o0 < NR ? j->out - o0 : NR);
    _Alignas(64) float bp[KC * NR];
    for (int64_t k0 = 0; k0 < j->in; k0 += KC) {
        int64_t kc = j->in - k0 < KC ? j->in - k0 : KC;
        if (j->dt == DUET_DTYPE_BF16)
            gemm_pack_b(j, DUET_DTYPE_BF16, o0, k0, kc, bp);
        else if (j->dt == DUET_DTYPE_F16)
            gemm_pack_b(j, DUET_DTYPE_F16, o0, k0, kc, bp);
        else
            gemm_pack_b(j, DUET_DTYPE_F32, o0, k0, kc, bp);
        bool load_c = j->accumulate || k0 > 0;
        for (int64_t b = 0; b < j->n_blocks; b++) {
            int64_t r0 = b * MR;
            int m = (int)(j->n - r0 < MR ? j->n - r0 : MR);
            gemm_micro_any(j->ap + (size_t)b * (size_t)j->in * MR + (size_t)k0 * MR, bp, kc,
                           j->y + r0 * j->out + o0, j->out, m, nc, load_c);
        }
    }
}

static void matmul_gemm(duet_cpu_pool_t *pool, const float *x, int64_t n, int64_t in, const void *w,
                        duet_dtype_t wdt, int64_t out, float *y, bool accumulate)
{
    gemm_job_t j = {
        .x = x, .n = n, .in = in, .out = out, .w = w, .dt = wdt, .y = y, .accumulate = accumulate};
    j.n_blocks = (n + MR - 1) / MR;
    j.ap = duet__cpu_scratch(DUET__SCRATCH_BATCH,
                             (size_t)j.n_blocks * (size_t)in * MR * sizeof(float));
    if (!j.ap)
        abort(); /* out of memory inside a kernel */
    duet_cpu_pool_run(pool, (int)j.n_blocks, gemm_pack_a_task, &j);
    duet_cpu_pool_run(pool, (int)((out + NR - 1) / NR), gemm_task, &j);
}

void duet__matmul_avx2(duet_cpu_pool_t *pool, const float *x, int64_t n, int64_t in, const void *w,
                       duet_dtype_t wdt, int64_t out, float *y, bool accumulate)
{
    if (n >= 12)
        matmul_gemm(pool, x, n, in, w, wdt, out, y, accumulate);
    else
        matmul_gemv(pool, x, n, in, w, wdt, out, y, accumulate);
}
