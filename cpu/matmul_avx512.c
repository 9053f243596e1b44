/* matmul_avx512 — AVX-512 kernels for y[n,out] (+)= x[n,in] · W[out,in]^T
 * with f32 activations and F32/F16/BF16 weights widened exactly to f32.
 *
 * Two algorithms, chosen per call by shape (use_gemm):
 *  - streaming dot products (decode, and batches whose activations fit in
 *    L2): weights are read once, in memory order, in blocks of 4 rows; each
 *    block is dotted with 4 activation rows at a time in a 4×4 register tile
 *    and stays in L1 for the next 4. BF16 needs no shuffles: a 64-byte load
 *    of 32 bf16 gives the even elements as f32 by a 16-bit left shift and the
 *    odd ones by masking the low halves, so the activations are permuted once
 *    per call to even/odd order within each 32-element block (zero-padded,
 *    so the K tail is one masked load). Software prefetch runs one block
 *    (+2 KiB) ahead, which hides DRAM latency even at 8+ rows where each
 *    line takes longer to consume. Output rows are split across the pool.
 *  - packed GEMM (prefill; long K): a panel of 32 output columns × KC of K
 *    is widened and transposed to f32 once (in L1) and reused by every block
 *    of up to 12 activation rows in a 12×32 register-tiled FMA kernel;
 *    activations are packed once per call into row-interleaved blocks so the
 *    kernel broadcasts from one stream.
 * Accumulation is f32 in every path (no bf16 rounding of activations), and
 * each output's reduction order does not depend on the thread count.
 *
 * The opt-in bf16 precision (duet_cpu_matmul_prec) has a bf16 twin of each:
 * streaming vdpbf16ps dot products (activations rounded once per call) and
 * a packed GEMM on K pairs; see "bf16 precision" below. */
#include "cpu/matmul_impl.h"

#include <immintrin.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FORCE_INLINE static inline __attribute__((always_inline))

/* ---- weight loads ------------------------------------------------------- */

/* 32 consecutive weights starting at element k of a row, as two f32 vectors
 * in the order the prepared activations use: BF16 even/odd, others natural.
 * m: lanes to load (all ones except at the K tail). */
FORCE_INLINE void wload32(duet_dtype_t dt, const void *row, int64_t k, __mmask32 m, bool tail,
                          __m512 *a, __m512 *b)
{
    if (dt == DUET_DTYPE_BF16) {
        const uint16_t *p = (const uint16_t *)row + k;
        __m512i v = tail ? _mm512_maskz_loadu_epi16(m, p) : _mm512_loadu_si512(p);
        *a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        *b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
    } else if (dt == DUET_DTYPE_F16) {
        const uint16_t *p = (const uint16_t *)row + k;
        __m256i lo = tail ? _mm256_maskz_loadu_epi16((__mmask16)m, p)
                          : _mm256_loadu_si256((const __m256i *)p);
        __m256i hi = tail ? _mm256_maskz_loadu_epi16((__mmask16)(m >> 16), p + 16)
                          : _mm256_loadu_si256((const __m256i *)(p + 16));
        *a = _mm512_cvtph_ps(lo);
        *b = _mm512_cvtph_ps(hi);
    } else {
        const float *p = (const float *)row + k;
        *a = tail ? _mm512_maskz_loadu_ps((__mmask16)m, p) : _mm512_loadu_ps(p);
        *b = tail ? _mm512_maskz_loadu_ps((__mmask16)(m >> 16), p + 16) : _mm512_loadu_ps(p + 16);
    }
}

static size_t dt_size(duet_dtype_t dt)
{
    return dt == DUET_DTYPE_F32 ? 4 : 2;
}

/* ---- few rows: streaming dot products ------------------------------------ */

/* Register block: 4 activation rows × 4 weight rows (16 accumulators).
 * More activation rows share the 4 weight rows from L1, 4 at a time; this
 * measured faster than 8×2 or 8×3 blocks (fewer activation loads per FMA). */
#define GEMV_MAX_R 4
#define GEMV_C 4

typedef struct gemv_job {
    const float *xp;    /* prepared activations [n][kpad] (exact path) */
    const uint16_t *xb; /* or bf16-rounded activations [n][kpad] (bf16 path) */
    int64_t kpad;
    int64_t n, in, out;
    const void *w;
    duet_dtype_t dt;
    float *y;
    bool accumulate;
    int64_t pf_blocks, pf_bytes; /* prefetch distance: whole blocks + bytes */
} gemv_job_t;

/* K chunk for many activation rows: a chunk of 4 rows of activations
 * (16 KiB) and of 4 weight rows (8 KiB for bf16) stay in L1 together. */
#define GEMV_KV 1024
#define GEMV_KV_MAX_GROUPS 16 /* chunking keeps 1 KiB of accumulators per 4 rows */

/* acc[r][c] += x_r · w_c over K in [k0, k1) (k0 a multiple of 32) for R
 * activation rows from r0 and C weight rows from o0. The accumulators start
 * at zero (first) or from save, and end in save or, when last (k1 == in),
 * as horizontal sums written (added) to y. Chunking does not change the
 * order of any lane's additions, so results match the unchunked kernel. */
FORCE_INLINE void gemv_tile(const gemv_job_t *j, duet_dtype_t dt, int R, int C, int64_t r0,
                            int64_t o0, int64_t k0, int64_t k1, __m512 *save, bool first, bool last)
{
    __m512 acc[GEMV_MAX_R][GEMV_C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            acc[r][c] = first ? _mm512_setzero_ps() : save[r * GEMV_C + c];
    const size_t es = dt_size(dt);
    const char *wr[GEMV_C];
    for (int c = 0; c < C; c++)
        wr[c] = (const char *)j->w + (size_t)(o0 + c) * (size_t)j->in * es;
    const float *xr = j->xp + r0 * j->kpad;
    const size_t pf = (size_t)C * (size_t)j->in * es * (size_t)j->pf_blocks + (size_t)j->pf_bytes;
    const int64_t kend = k1 & ~(int64_t)31;
    int64_t k = k0;
    for (; k < kend; k += 32) {
        for (int c = 0; c < C; c++) {
            /* The block's rows are contiguous: fetch the same spot of the
             * next block (plus pf_bytes), about a block's time ahead. */
            _mm_prefetch(wr[c] + (size_t)k * es + pf, _MM_HINT_T0);
            __m512 wa, wb;
            wload32(dt, wr[c], k, 0, false, &wa, &wb);
            for (int r = 0; r < R; r++) {
                const float *xk = xr + r * j->kpad + k;
                acc[r][c] = _mm512_fmadd_ps(wa, _mm512_loadu_ps(xk), acc[r][c]);
                acc[r][c] = _mm512_fmadd_ps(wb, _mm512_loadu_ps(xk + 16), acc[r][c]);
            }
        }
    }
    if (k < k1) { /* the K tail: only in the last chunk */
        __mmask32 m = (__mmask32)((1ull << (k1 - k)) - 1);
        for (int c = 0; c < C; c++) {
            __m512 wa, wb;
            wload32(dt, wr[c], k, m, true, &wa, &wb);
            for (int r = 0; r < R; r++) {
                const float *xk = xr + r * j->kpad + k;
                acc[r][c] = _mm512_fmadd_ps(wa, _mm512_loadu_ps(xk), acc[r][c]);
                acc[r][c] = _mm512_fmadd_ps(wb, _mm512_loadu_ps(xk + 16), acc[r][c]);
            }
        }
    }
    if (!last) {
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++)
                save[r * GEMV_C + c] = acc[r][c];
        return;
    }
    for (int r = 0; r < R; r++) {
        float *yr = j->y + (r0 + r) * j->out + o0;
        for (int c = 0; c < C; c++) {
            float s = _mm512_reduce_add_ps(acc[r][c]);
            yr[c] = j->accumulate ? yr[c] + s : s;
        }
    }
}

/* Instantiate gemv_tile for constant R (rows) and C (weight rows). */
#define GEMV_CASES(DT, C, r0, o0, k0, k1, save, first, last)                                       \
    switch (R) {                                                                                   \
    case 1: gemv_tile(j, DT, 1, C, r0, o0, k0, k1, save, first, last); break;                      \
    case 2: gemv_tile(j, DT, 2, C, r0, o0, k0, k1, save, first, last); break;                      \
    case 3: gemv_tile(j, DT, 3, C, r0, o0, k0, k1, save, first, last); break;                      \
    default: gemv_tile(j, DT, 4, C, r0, o0, k0, k1, save, first, last); break;                     \
    }

FORCE_INLINE void gemv_range(const gemv_job_t *j, duet_dtype_t dt, int64_t o0, int64_t o1)
{
    const int64_t groups = (j->n + GEMV_MAX_R - 1) / GEMV_MAX_R;
    /* Several row groups share each weight block; with long K, go chunk by
     * chunk so the activations each chunk needs stay in L1. */
    const bool chunked = groups > 1 && groups <= GEMV_KV_MAX_GROUPS && j->in > GEMV_KV;
    const int64_t kv = chunked ? GEMV_KV : j->in;
    __m512 save[GEMV_KV_MAX_GROUPS][GEMV_MAX_R * GEMV_C];
    for (int64_t o = o0; o < o1;) {
        int64_t step = o1 - o >= GEMV_C ? GEMV_C : 1;
        for (int64_t k0 = 0; k0 < j->in; k0 += kv) {
            int64_t k1 = j->in - k0 < kv ? j->in : k0 + kv;
            bool first = k0 == 0, last = k1 == j->in;
            for (int64_t g = 0; g < groups; g++) {
                int64_t r0 = g * GEMV_MAX_R;
                int R = (int)(j->n - r0 < GEMV_MAX_R ? j->n - r0 : GEMV_MAX_R);
                __m512 *sv = save[chunked ? g : 0];
                if (step == GEMV_C) {
                    GEMV_CASES(dt, GEMV_C, r0, o, k0, k1, sv, first, last)
                } else {
                    GEMV_CASES(dt, 1, r0, o, k0, k1, sv, first, last)
                }
            }
        }
        o += step;
    }
}

static void gemv_run(const gemv_job_t *j, int64_t o0, int64_t o1)
{
    switch (j->dt) {
    case DUET_DTYPE_BF16: gemv_range(j, DUET_DTYPE_BF16, o0, o1); break;
    case DUET_DTYPE_F16: gemv_range(j, DUET_DTYPE_F16, o0, o1); break;
    default: gemv_range(j, DUET_DTYPE_F32, o0, o1); break;
    }
}

/* Activations into the order wload32 produces weights in, zero-padded. */
static void gemv_prep_x(const float *x, int64_t n, int64_t in, duet_dtype_t dt, float *xp,
                        int64_t kpad)
{
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * in;
        float *d = xp + r * kpad;
        if (dt == DUET_DTYPE_BF16) {
            int64_t k = 0;
            const __m512i ev =
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
            for (; k + 32 <= in; k += 32) {
                __m512 lo = _mm512_loadu_ps(xr + k), hi = _mm512_loadu_ps(xr + k + 16);
                _mm512_storeu_ps(d + k, _mm512_permutex2var_ps(lo, ev, hi));
                _mm512_storeu_ps(d + k + 16, _mm512_permutex2var_ps(lo, od, hi));
            }
            if (k < in) {
                memset(d + k, 0, 32 * sizeof(float));
                for (int64_t i = 0; k + i < in; i++)
                    d[k + (i & 1 ? 16 : 0) + i / 2] = xr[k + i];
            }
        } else {
            memcpy(d, xr, (size_t)in * sizeof(float));
            memset(d + in, 0, (size_t)(kpad - in) * sizeof(float));
        }
    }
}

/* ---- bf16 precision: streaming vdpbf16ps dot products ----------------------
 *
 * The opt-in bf16 mode (duet_cpu_matmul_prec with DUET_CPU_PREC_BF16; only
 * for BF16 weights): activations are rounded to bf16 (RNE) once per call
 * into [n][kpad] (zero-padded to a multiple of 32), and each 64-byte load of
 * 32 weights meets 32 activations in one vdpbf16ps: 32 multiply-adds with
 * f32 accumulation, where the exact path needs two f32 FMAs plus the two
 * widening ops. bf16 × bf16 products are exact in f32, so the only change
 * from the exact path is the rounding of the activations (relative 2^-9).
 * Same 4×4 register tile, K chunking and prefetch as the exact streaming
 * path; the R activation vectors of a K step are loaded once and shared by
 * the C weight rows. */

#define BGEMV_KV 2048 /* K chunk: 4 rows of bf16 activations = 16 KiB */

FORCE_INLINE __m512 dpbf16(__m512 acc, __m512i a, __m512i b)
{
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

/* The horizontal sums of a, b, c, d as one vector (4 sums in 9 shuffles
 * instead of 16): 128-bit quarters first, then within each quarter. */
FORCE_INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
    /* quarter q of abcd: the four partial sums of a, b, c, d (q = 0..3) */
    __m512 abcd = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    abcd = _mm512_add_ps(abcd, _mm512_permute_ps(abcd, _MM_SHUFFLE(2, 3, 0, 1)));
    abcd = _mm512_add_ps(abcd, _mm512_permute_ps(abcd, _MM_SHUFFLE(1, 0, 3, 2)));
    const __m512i first = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(first, abcd));
}

FORCE_INLINE void bgemv_tile(const gemv_job_t *j, int R, int C, int64_t r0, int64_t o0, int64_t k0,
                             int64_t k1, __m512 *save, bool first, bool last)
{
    __m512 acc[GEMV_MAX_R][GEMV_C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            acc[r][c] = first ? _mm512_setzero_ps() : save[r * GEMV_C + c];
    const uint16_t *wr[GEMV_C];
    for (int c = 0; c < C; c++)
        wr[c] = (const uint16_t *)j->w + (size_t)(o0 + c) * (size_t)j->in;
    const uint16_t *xr = j->xb + r0 * j->kpad;
    const size_t pf = (size_t)C * (size_t)j->in * 2 * (size_t)j->pf_blocks + (size_t)j->pf_bytes;
    const int64_t kend = k1 & ~(int64_t)31;
    int64_t k = k0;
    for (; k < kend; k += 32) {
        __m512i xv[GEMV_MAX_R];
        for (int r = 0; r < R; r++)
            xv[r] = _mm512_loadu_si512(xr + r * j->kpad + k);
        for (int c = 0; c < C; c++) {
            _mm_prefetch((const char *)(wr[c] + k) + pf, _MM_HINT_T0);
            __m512i wv = _mm512_loadu_si512(wr[c] + k);
            for (int r = 0; r < R; r++)
                acc[r][c] = dpbf16(acc[r][c], xv[r], wv);
        }
    }
    if (k < k1) { /* the K tail (last chunk only): weights past `in` masked to zero */
        __mmask32 m = (__mmask32)((1ull << (k1 - k)) - 1);
        __m512i xv[GEMV_MAX_R];
        for (int r = 0; r < R; r++)
            xv[r] = _mm512_loadu_si512(xr + r * j->kpad + k); /* zero-padded */
        for (int c = 0; c < C; c++) {
            __m512i wv = _mm512_maskz_loadu_epi16(m, wr[c] + k);
            for (int r = 0; r < R; r++)
                acc[r][c] = dpbf16(acc[r][c], xv[r], wv);
        }
    }
    if (!last) {
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++)
                save[r * GEMV_C + c] = acc[r][c];
        return;
    }
    for (int r = 0; r < R; r++) {
        float *yr = j->y + (r0 + r) * j->out + o0;
        if (C == 4) {
            __m128 s = hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
            if (j->accumulate)
                s = _mm_add_ps(s, _mm_loadu_ps(yr));
            _mm_storeu_ps(yr, s);
            continue;
        }
        for (int c = 0; c < C; c++) {
            float s = _mm512_reduce_add_ps(acc[r][c]);
            yr[c] = j->accumulate ? yr[c] + s : s;
        }
    }
}

#define BGEMV_CASES(C, r0, o0, k0, k1, save, first, last)                                          \
    switch (R) {                                                                                   \
    case 1: bgemv_tile(j, 1, C, r0, o0, k0, k1, save, first, last); break;                         \
    case 2: bgemv_tile(j, 2, C, r0, o0, k0, k1, save, first, last); break;                         \
    case 3: bgemv_tile(j, 3, C, r0, o0, k0, k1, save, first, last); break;                         \
    default: bgemv_tile(j, 4, C, r0, o0, k0, k1, save, first, last); break;                        \
    }

static void bgemv_run(const gemv_job_t *j, int64_t o0, int64_t o1)
{
    const int64_t groups = (j->n + GEMV_MAX_R - 1) / GEMV_MAX_R;
    const bool chunked = groups > 1 && groups <= GEMV_KV_MAX_GROUPS && j->in > BGEMV_KV;
    const int64_t kv = chunked ? BGEMV_KV : j->in;
    __m512 save[GEMV_KV_MAX_GROUPS][GEMV_MAX_R * GEMV_C];
    for (int64_t o = o0; o < o1;) {
        int64_t step = o1 - o >= GEMV_C ? GEMV_C : 1;
        for (int64_t k0 = 0; k0 < j->in; k0 += kv) {
            int64_t k1 = j->in - k0 < kv ? j->in : k0 + kv;
            bool first = k0 == 0, last = k1 == j->in;
            for (int64_t g = 0; g < groups; g++) {
                int64_t r0 = g * GEMV_MAX_R;
                int R = (int)(j->n - r0 < GEMV_MAX_R ? j->n - r0 : GEMV_MAX_R);
                __m512 *sv = save[chunked ? g : 0];
                if (step == GEMV_C) {
                    BGEMV_CASES(GEMV_C, r0, o, k0, k1, sv, first, last)
                } else {
                    BGEMV_CASES(1, r0, o, k0, k1, sv, first, last)
                }
            }
        }
        o += step;
    }
}

/* x [n][in] f32 -> xb [n][kpad] bf16 (round to nearest even), zero-padded. */
static void bgemv_prep_x(const float *x, int64_t n, int64_t in, uint16_t *xb, int64_t kpad)
{
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * in;
        uint16_t *d = xb + r * kpad;
        for (int64_t k = 0; k < kpad; k += 32) {
            int64_t left = in - k;
            __mmask16 m0 = (__mmask16)(left >= 16 ? 0xffff : left > 0 ? (1u << left) - 1 : 0);
            __mmask16 m1 = (__mmask16)(left >= 32  ? 0xffff
                                       : left > 16 ? (1u << (left - 16)) - 1
                                                   : 0);
            __m512 lo = _mm512_maskz_loadu_ps(m0, xr + k);
            __m512 hi = _mm512_maskz_loadu_ps(m1, xr + k + 16);
            /* dst[0..15] from the second operand, dst[16..31] from the first */
            __m512bh v = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(d + k, (__m512i)v);
        }
    }
}

/* ---- many rows: packed register-tiled GEMM -------------------------------- */

#define MR 12 /* activation rows per micro-tile */
#define NR 32 /* output columns per micro-tile (two vectors) */
#ifndef KC
#define KC 256 /* K block: a packed 32×KC f32 panel is 32 KiB (L1) */
#endif
#ifndef GROUP_MAX
#define GROUP_MAX 4 /* panels per task, sharing each activation block from L1 */
#endif

typedef struct gemm_job {
    const float *x;
    float *ap;  /* packed activations [n_blocks][in][MR] */
    int64_t mb; /* activation rows per block (<= MR; blocks split n evenly) */
    int64_t n, in, out;
    const void *w;
    duet_dtype_t dt;
    float *y;
    bool accumulate;
    int64_t n_blocks;
    bool bf16; /* bf16 precision: ap holds bf16 pairs (uint32 [n_blocks][kpairs][MR]) */
} gemm_job_t;

/* 16 rows × 16 floats, in place: rows become columns. */
FORCE_INLINE void transpose16(__m512 r[16])
{
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* t[4q+0]=lo(r4q,r4q+1) t[4q+1]=hi(r4q,r4q+1) t[4q+2]=lo(r4q+2,r4q+3) t[4q+3]=hi(..) */
    for (int q = 0; q < 4; q++) {
        __m512d a = _mm512_castps_pd(t[4 * q]), b = _mm512_castps_pd(t[4 * q + 1]);
        __m512d c = _mm512_castps_pd(t[4 * q + 2]), d = _mm512_castps_pd(t[4 * q + 3]);
        u[4 * q + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c)); /* col 0 of each lane */
        u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c)); /* col 1 */
        u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d)); /* col 2 */
        u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d)); /* col 3 */
    }
    /* u[4q+c] = [rows 4q..4q+3 at cols c | c+4 | c+8 | c+12] (one 128-bit lane each) */
    for (int c = 0; c < 4; c++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);      /* c | c+8 (rows 0-7) */
        __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);      /* c+4 | c+12 */
        __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88); /* rows 8-15 */
        __m512 v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        r[c + 8] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
        r[c + 4] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        r[c + 12] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
    }
}

/* Pack activation rows [b*mb, b*mb+mb) as ap[k][MR], zero rows past them:
 * 16 K at a time through a 16×16 transpose. */
static void gemm_pack_a(const gemm_job_t *j, int64_t block)
{
    int64_t r0 = block * j->mb;
    float *dst = j->ap + (size_t)block * (size_t)j->in * MR;
    int m = (int)(j->n - r0 < j->mb ? j->n - r0 : j->mb);
    for (int64_t k = 0; k < j->in; k += 16) {
        int64_t kl = j->in - k < 16 ? j->in - k : 16;
        __mmask16 km = (__mmask16)((1u << kl) - 1);
        __m512 r[16];
        for (int i = 0; i < 16; i++)
            r[i] = i < m ? _mm512_maskz_loadu_ps(km, j->x + (r0 + i) * j->in + k)
                         : _mm512_setzero_ps();
        transpose16(r);
        for (int i = 0; i < kl; i++)
            _mm512_mask_storeu_ps(dst + (k + i) * MR, (__mmask16)((1u << MR) - 1), r[i]);
    }
}

/* 16 weights of one row as f32 (natural order); m: lanes to load. */
FORCE_INLINE __m512 wload16(duet_dtype_t dt, const void *row, int64_t k, __mmask16 m)
{
    if (dt == DUET_DTYPE_BF16) {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else if (dt == DUET_DTYPE_F16) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k));
    }
    return _mm512_maskz_loadu_ps(m, (const float *)row + k);
}

/* bp[kk][32] = W[o0 + c][k0 + kk] for c < 32, kk < kc; zero past out/in. */
FORCE_INLINE void gemm_pack_b(const gemm_job_t *j, duet_dtype_t dt, int64_t o0, int64_t k0,
                              int64_t kc, float *bp)
{
    const size_t es = dt_size(dt);
    for (int half = 0; half < 2; half++) {
        int64_t ob = o0 + half * 16;
        int rows = (int)(j->out - ob < 16 ? (j->out - ob > 0 ? j->out - ob : 0) : 16);
        for (int64_t kk = 0; kk < kc; kk += 16) {
            int64_t kl = kc - kk < 16 ? kc - kk : 16;
            __mmask16 m = (__mmask16)((1u << kl) - 1);
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                if (i < rows) {
                    const char *row = (const char *)j->w + (size_t)(ob + i) * (size_t)j->in * es;
                    r[i] = wload16(dt, row, k0 + kk, m);
                    /* the next K block of this row, for the next pack */
                    _mm_prefetch(row + (size_t)(k0 + kk + KC) * es, _MM_HINT_T1);
                } else {
                    r[i] = _mm512_setzero_ps();
                }
            }
            transpose16(r);
            for (int i = 0; i < kl; i++)
                _mm512_store_ps(bp + (kk + i) * NR + half * 16, r[i]);
        }
    }
}

/* C[m rows, nc cols] (+)= Ap[kc][MR] · Bp[kc][32]; c points at y[r0, o0].
 * M (compile time, a multiple of 4 >= m) is how many rows are computed. */
FORCE_INLINE void gemm_micro(int M, const float *ap, const float *bp, int64_t kc, float *c,
                             int64_t ldc, int m, int nc, bool load_c)
{
    __m512 acc[MR][2];
    __mmask16 m0 = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1);
    __mmask16 m1 = (__mmask16)(nc >= 32 ? 0xffff : nc > 16 ? (1u << (nc - 16)) - 1 : 0);
    for (int r = 0; r < M; r++) {
        if (load_c && r < m) {
            acc[r][0] = _mm512_maskz_loadu_ps(m0, c + r * ldc);
            acc[r][1] = _mm512_maskz_loadu_ps(m1, c + r * ldc + 16);
        } else {
            acc[r][0] = _mm512_setzero_ps();
            acc[r][1] = _mm512_setzero_ps();
        }
    }
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(bp + k * NR);
        __m512 b1 = _mm512_load_ps(bp + k * NR + 16);
        const float *a = ap + k * MR;
        for (int r = 0; r < M; r++) {
            __m512 av = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < m; r++) {
        _mm512_mask_storeu_ps(c + r * ldc, m0, acc[r][0]);
        _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc[r][1]);
    }
}

static void gemm_micro_any(const float *ap, const float *bp, int64_t kc, float *c, int64_t ldc,
                           int m, int nc, bool load_c)
{
    if (m > 8)
        gemm_micro(12, ap, bp, kc, c, ldc, m, nc, load_c);
    else if (m > 4)
        gemm_micro(8, ap, bp, kc, c, ldc, m, nc, load_c);
    else
        gemm_micro(4, ap, bp, kc, c, ldc, m, nc, load_c);
}

FORCE_INLINE void gemm_group(const gemm_job_t *j, duet_dtype_t dt, int64_t p0, int64_t p1,
                             float *bp)
{
    for (int64_t k0 = 0; k0 < j->in; k0 += KC) {
        int64_t kc = j->in - k0 < KC ? j->in - k0 : KC;
        for (int64_t p = p0; p < p1; p++)
            gemm_pack_b(j, dt, p * NR, k0, kc, bp + (p - p0) * KC * NR);
        bool load_c = j->accumulate || k0 > 0;
        for (int64_t b = 0; b < j->n_blocks; b++) {
            int64_t r0 = b * j->mb;
            int m = (int)(j->n - r0 < j->mb ? j->n - r0 : j->mb);
            const float *ap = j->ap + (size_t)b * (size_t)j->in * MR + (size_t)k0 * MR;
            for (int64_t p = p0; p < p1; p++) {
                int64_t o0 = p * NR;
                int nc = (int)(j->out - o0 < NR ? j->out - o0 : NR);
                gemm_micro_any(ap, bp + (p - p0) * KC * NR, kc, j->y + r0 * j->out + o0, j->out, m,
                               nc, load_c);
            }
        }
    }
}

/* ---- bf16 precision: packed GEMM with vdpbf16ps ---------------------------
 * The same blocking as the f32 GEMM, on pairs of K: A holds, per K pair,
 * the MR rows' (x[k], x[k+1]) rounded to bf16 as one 32-bit word, which the
 * micro-kernel broadcasts; a B panel holds per K pair the 32 columns'
 * (w[k], w[k+1]) words, which are the weight rows' own 32-bit words, so the
 * pack is a 16x16 transpose of 32-bit lanes with no conversion. KCB K
 * (KCB/2 pairs) of a 32-column panel is 32 KiB, as in the f32 GEMM. */
#define KCB 512

static size_t gemm_kpairs(int64_t in)
{
    return (size_t)((in + 1) / 2);
}

/* x rows of a block -> ap[kp][MR] bf16 pairs; zero past in and past n. */
static void gemm_pack_a_bf16(const gemm_job_t *j, int64_t block)
{
    int64_t r0 = block * j->mb;
    const size_t kpairs = gemm_kpairs(j->in);
    uint32_t *dst = (uint32_t *)j->ap + (size_t)block * kpairs * MR;
    int m = (int)(j->n - r0 < j->mb ? j->n - r0 : j->mb);
    for (int64_t k = 0; k < j->in; k += 32) {
        int64_t left = j->in - k;
        __mmask16 m0 = (__mmask16)(left >= 16 ? 0xffff : (1u << left) - 1);
        __mmask16 m1 = (__mmask16)(left >= 32 ? 0xffff : left > 16 ? (1u << (left - 16)) - 1 : 0);
        __m512 r[16];
        for (int i = 0; i < 16; i++) {
            if (i < m) {
                const float *xr = j->x + (r0 + i) * j->in + k;
                __m512 lo = _mm512_maskz_loadu_ps(m0, xr), hi = _mm512_maskz_loadu_ps(m1, xr + 16);
                r[i] = _mm512_castsi512_ps((__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            } else {
                r[i] = _mm512_setzero_ps();
            }
        }
        transpose16(r);
        int64_t kp0 = k / 2, np = (left + 1) / 2 < 16 ? (left + 1) / 2 : 16;
        for (int i = 0; i < np; i++)
            _mm512_mask_storeu_ps((float *)(dst + (kp0 + i) * MR), (__mmask16)((1u << MR) - 1),
                                  r[i]);
    }
}

/* bp[kp][32] (32-bit words) = W[o0 + c] at K pair k0/2 + kp, for kp < ceil(kc/2);
 * zero past out and past in. */
static void gemm_pack_b_bf16(const gemm_job_t *j, int64_t o0, int64_t k0, int64_t kc, uint32_t *bp)
{
    const int64_t kcp = (kc + 1) / 2;
    for (int half = 0; half < 2; half++) {
        int64_t ob = o0 + half * 16;
        int rows = (int)(j->out - ob < 16 ? (j->out - ob > 0 ? j->out - ob : 0) : 16);
        for (int64_t kk = 0; kk < kc; kk += 32) {
            int64_t kl = kc - kk < 32 ? kc - kk : 32;
            __mmask32 m = (__mmask32)(kl >= 32 ? 0xffffffffu : (1u << kl) - 1);
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                if (i < rows) {
                    const uint16_t *row = (const uint16_t *)j->w + (size_t)(ob + i) * (size_t)j->in;
                    r[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, row + k0 + kk));
                    _mm_prefetch((const char *)(row + k0 + kk + KCB), _MM_HINT_T1);
                } else {
                    r[i] = _mm512_setzero_ps();
                }
            }
            transpose16(r);
            int64_t np = (kl + 1) / 2;
            for (int i = 0; i < np; i++)
                _mm512_store_ps((float *)(bp + (kk / 2 + i) * NR + half * 16), r[i]);
        }
    }
    (void)kcp;
}

FORCE_INLINE void gemm_micro_bf16(int M, const uint32_t *ap, const uint32_t *bp, int64_t kcp,
                                  float *c, int64_t ldc, int m, int nc, bool load_c)
{
    __m512 acc[MR][2];
    __mmask16 m0 = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1);
    __mmask16 m1 = (__mmask16)(nc >= 32 ? 0xffff : nc > 16 ? (1u << (nc - 16)) - 1 : 0);
    for (int r = 0; r < M; r++) {
        if (load_c && r < m) {
            acc[r][0] = _mm512_maskz_loadu_ps(m0, c + r * ldc);
            acc[r][1] = _mm512_maskz_loadu_ps(m1, c + r * ldc + 16);
        } else {
            acc[r][0] = _mm512_setzero_ps();
            acc[r][1] = _mm512_setzero_ps();
        }
    }
    for (int64_t k = 0; k < kcp; k++) {
        __m512i b0 = _mm512_load_si512(bp + k * NR);
        __m512i b1 = _mm512_load_si512(bp + k * NR + 16);
        const uint32_t *a = ap + k * MR;
        for (int r = 0; r < M; r++) {
            __m512i av = _mm512_set1_epi32((int)a[r]);
            acc[r][0] = dpbf16(acc[r][0], av, b0);
            acc[r][1] = dpbf16(acc[r][1], av, b1);
        }
    }
    for (int r = 0; r < m; r++) {
        _mm512_mask_storeu_ps(c + r * ldc, m0, acc[r][0]);
        _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc[r][1]);
    }
}

static void gemm_group_bf16(const gemm_job_t *j, int64_t p0, int64_t p1, uint32_t *bp)
{
    const size_t kpairs = gemm_kpairs(j->in);
    for (int64_t k0 = 0; k0 < j->in; k0 += KCB) {
        int64_t kc = j->in - k0 < KCB ? j->in - k0 : KCB;
        int64_t kcp = (kc + 1) / 2;
        for (int64_t p = p0; p < p1; p++)
            gemm_pack_b_bf16(j, p * NR, k0, kc, bp + (p - p0) * (KCB / 2) * NR);
        bool load_c = j->accumulate || k0 > 0;
        for (int64_t b = 0; b < j->n_blocks; b++) {
            int64_t r0 = b * j->mb;
            int m = (int)(j->n - r0 < j->mb ? j->n - r0 : j->mb);
            const uint32_t *ap =
                (const uint32_t *)j->ap + (size_t)b * kpairs * MR + (size_t)(k0 / 2) * MR;
            for (int64_t p = p0; p < p1; p++) {
                int64_t o0 = p * NR;
                int nc = (int)(j->out - o0 < NR ? j->out - o0 : NR);
                const uint32_t *bpp = bp + (p - p0) * (KCB / 2) * NR;
                float *c = j->y + r0 * j->out + o0;
                if (m > 8)
                    gemm_micro_bf16(12, ap, bpp, kcp, c, j->out, m, nc, load_c);
                else if (m > 4)
                    gemm_micro_bf16(8, ap, bpp, kcp, c, j->out, m, nc, load_c);
                else
                    gemm_micro_bf16(4, ap, bpp, kcp, c, j->out, m, nc, load_c);
            }
        }
    }
}

static void gemm_run(const gemm_job_t *j, int64_t p0, int64_t p1)
{
    if (j->bf16) {
        uint32_t *bpb =
            duet__cpu_scratch(DUET__SCRATCH_TASK, (size_t)GROUP_MAX * (KCB / 2) * NR * 4);
        if (!bpb)
            abort(); /* out of memory inside a kernel */
        gemm_group_bf16(j, p0, p1, bpb);
        return;
    }
    float *bp = duet__cpu_scratch(DUET__SCRATCH_TASK, (size_t)GROUP_MAX * KC * NR * sizeof(float));
    if (!bp)
        abort(); /* out of memory inside a kernel */
    switch (j->dt) {
    case DUET_DTYPE_BF16: gemm_group(j, DUET_DTYPE_BF16, p0, p1, bp); break;
    case DUET_DTYPE_F16: gemm_group(j, DUET_DTYPE_F16, p0, p1, bp); break;
    default: gemm_group(j, DUET_DTYPE_F32, p0, p1, bp); break;
    }
}

/* ---- batches: every matmul of a batch in one pool run ------------------------ */

static int64_t env_cached(_Atomic int64_t *cache, const char *name, int64_t dflt)
{
    int64_t v = atomic_load_explicit(cache, memory_order_relaxed);
    if (v == INT64_MIN) {
        const char *e = getenv(name);
        v = e && *e ? strtoll(e, NULL, 10) : dflt;
        atomic_store_explicit(cache, v, memory_order_relaxed);
    }
    return v;
}

static _Atomic int64_t cfg_pf_blocks = INT64_MIN, cfg_pf_bytes = INT64_MIN;

/* Streaming dot products run at ~200 GFLOP/s per core (Zen 5) for any row
 * count while the activations fit in L2 (K-chunked so 4 rows of a chunk fit
 * in L1), and need no packing (cold weights stream in order); beyond that
 * the packed GEMM wins. Measured per core, cold bf16 weights: 2816->1024 at
 * n=16: 170 vs 115 GFLOP/s, n=64: 196 vs 200; 1024->2816 at n=128: 214 vs
 * 209, n=512: 155 vs 222. */
static bool use_gemm(int64_t n, int64_t in, int64_t min_rows)
{
    if (min_rows > 0)
        return n >= min_rows; /* forced by DUET_CPU_GEMM_MIN_ROWS */
    return n >= 16 && n * in * (int64_t)sizeof(float) > 512 * 1024;
}

typedef struct mm_task {
    int32_t op;
    bool gemm;
    int64_t a, b; /* GEMV: output rows [a, b); GEMM: panels [a, b) */
} mm_task_t;

typedef struct batch {
    int count;
    bool *is_gemm;
    gemv_job_t *gv;
    gemm_job_t *gm;
    int64_t *pack_first; /* [count + 1]: first A-pack task of each op */
    mm_task_t *tasks;
    int n_tasks;
} batch_t;

static void batch_pack_task(void *ctx, int task, int n_tasks)
{
    const batch_t *bt = ctx;
    int op = 0;
    while (bt->pack_first[op + 1] <= task)
        op++;
    if (bt->gm[op].bf16)
        gemm_pack_a_bf16(&bt->gm[op], task - bt->pack_first[op]);
    else
        gemm_pack_a(&bt->gm[op], task - bt->pack_first[op]);
}

static void batch_task(void *ctx, int task, int n_tasks)
{
    const batch_t *bt = ctx;
    const mm_task_t *t = &bt->tasks[task];
    if (t->gemm)
        gemm_run(&bt->gm[t->op], t->a, t->b);
    else if (bt->gv[t->op].xb)
        bgemv_run(&bt->gv[t->op], t->a, t->b);
    else
        gemv_run(&bt->gv[t->op], t->a, t->b);
}

/* Bump allocator over one block (on the stack when small). */
typedef struct arena {
    char *p;
    size_t used, size;
} arena_t;

static void *arena_take(arena_t *a, size_t bytes)
{
    void *r = a->p + a->used;
    a->used += (bytes + 63) & ~(size_t)63;
    return r;
}

/* bf16 precision, bf16 streaming vs packed GEMM: the streaming kernel
 * wants the activations in L2 (chunked by K for up to 64 rows). */
static bool use_gemm_bf16(int64_t n, int64_t in, int64_t min_rows)
{
    if (min_rows > 0)
        return n >= min_rows; /* forced by DUET_CPU_GEMM_MIN_ROWS */
    return n > GEMV_MAX_R * GEMV_KV_MAX_GROUPS || n * in * (int64_t)sizeof(uint16_t) > 512 * 1024;
}

/* Whether op m takes the bf16 path (bf16_min_rows > 0: bf16 mode is on).
 * Narrow outputs stay exact: routers (out = experts) and gates feed
 * discrete choices, and cost nothing next to the projections. */
#define BF16_MIN_OUT 32
static bool use_bf16(const duet_cpu_mm_t *m, int64_t bf16_min_rows)
{
    return bf16_min_rows > 0 && m->wdt == DUET_DTYPE_BF16 && m->n >= bf16_min_rows &&
           m->out >= BF16_MIN_OUT;
}

void duet__matmul_batch_avx512(duet_cpu_pool_t *pool, const duet_cpu_mm_t *mms, int count,
                               int64_t bf16_min_rows)
{
    const int64_t min_rows = duet__cpu_gemm_min_rows();
    const int64_t pf_blocks = env_cached(&cfg_pf_blocks, "DUET_CPU_PF_BLOCKS", 1);
    const int64_t pf_bytes = env_cached(&cfg_pf_bytes, "DUET_CPU_PF_BYTES", 2048);
    const int threads = duet_cpu_pool_size(pool);

    /* sizes first, then one allocation */
    size_t need = 0;
    int64_t n_tasks = 0, n_pack = 0;
    for (int i = 0; i < count; i++) {
        const duet_cpu_mm_t *m = &mms[i];
        if (use_bf16(m, bf16_min_rows) && !use_gemm_bf16(m->n, m->in, min_rows)) {
            int64_t kpad = (m->in + 31) & ~(int64_t)31;
            need += ((size_t)(m->n * kpad) * sizeof(uint16_t) + 63) & ~(size_t)63;
            n_tasks += (m->out + 15) / 16;
        } else if (use_bf16(m, bf16_min_rows) || use_gemm(m->n, m->in, min_rows)) {
            int64_t nb = (m->n + MR - 1) / MR;
            n_pack += nb;
            need += ((size_t)nb * (size_t)m->in * MR * sizeof(float) + 63) & ~(size_t)63;
            n_tasks += (m->out + NR - 1) / NR; /* upper bound */
        } else {
            int64_t kpad = (m->in + 31) & ~(int64_t)31;
            need += ((size_t)(m->n * kpad) * sizeof(float) + 63) & ~(size_t)63;
            n_tasks += (m->out + 15) / 16; /* upper bound: tasks have >= 16 rows */
        }
    }
    size_t cnt = (size_t)count;
    need += ((cnt * sizeof(bool) + 63) & ~(size_t)63) +
            ((cnt * sizeof(gemv_job_t) + 63) & ~(size_t)63) +
            ((cnt * sizeof(gemm_job_t) + 63) & ~(size_t)63) +
            (((cnt + 1) * sizeof(int64_t) + 63) & ~(size_t)63) +
            (((size_t)n_tasks * sizeof(mm_task_t) + 63) & ~(size_t)63);
    _Alignas(64) char stackbuf[16 * 1024];
    arena_t ar = {.p = need <= sizeof(stackbuf) ? stackbuf
                                                : duet__cpu_scratch(DUET__SCRATCH_BATCH, need),
                  .size = need};
    if (!ar.p)
        abort(); /* out of memory inside a kernel */

    batch_t bt = {.count = count};
    bt.is_gemm = arena_take(&ar, cnt * sizeof(bool));
    bt.gv = arena_take(&ar, cnt * sizeof(gemv_job_t));
    bt.gm = arena_take(&ar, cnt * sizeof(gemm_job_t));
    bt.pack_first = arena_take(&ar, (cnt + 1) * sizeof(int64_t));
    bt.tasks = arena_take(&ar, (size_t)n_tasks * sizeof(mm_task_t));
    int64_t pf = 0;
    for (int i = 0; i < count; i++) {
        const duet_cpu_mm_t *m = &mms[i];
        bt.pack_first[i] = pf;
        const bool bf16 = use_bf16(m, bf16_min_rows);
        bt.is_gemm[i] =
            bf16 ? use_gemm_bf16(m->n, m->in, min_rows) : use_gemm(m->n, m->in, min_rows);
        if (bt.is_gemm[i]) {
            gemm_job_t *j = &bt.gm[i];
            *j = (gemm_job_t){.x = m->x,
                              .n = m->n,
                              .in = m->in,
                              .out = m->out,
                              .w = m->w,
                              .dt = m->wdt,
                              .y = m->y,
                              .accumulate = m->accumulate,
                              .bf16 = bf16};
            /* e.g. 16 rows as 8 + 8, not 12 + 4 (a 4-row tile is slow) */
            j->n_blocks = (m->n + MR - 1) / MR;
            j->mb = (m->n + j->n_blocks - 1) / j->n_blocks;
            j->mb = (j->mb + 3) & ~(int64_t)3;
            j->mb = j->mb > MR ? MR : j->mb;
            j->n_blocks = (m->n + j->mb - 1) / j->mb;
            j->ap = arena_take(&ar, (size_t)j->n_blocks * (size_t)m->in * MR * sizeof(float));
            pf += j->n_blocks;
            int64_t n_panels = (m->out + NR - 1) / NR;
            int64_t group = n_panels / ((int64_t)threads * 4);
            group = group < 1 ? 1 : group > GROUP_MAX ? GROUP_MAX : group;
            for (int64_t p = 0; p < n_panels; p += group)
                bt.tasks[bt.n_tasks++] =
                    (mm_task_t){.op = i,
                                .gemm = true,
                                .a = p,
                                .b = p + group < n_panels ? p + group : n_panels};
        } else {
            gemv_job_t *j = &bt.gv[i];
            *j = (gemv_job_t){.n = m->n,
                              .in = m->in,
                              .out = m->out,
                              .w = m->w,
                              .dt = m->wdt,
                              .y = m->y,
                              .accumulate = m->accumulate,
                              .pf_blocks = pf_blocks,
                              .pf_bytes = pf_bytes};
            j->kpad = (m->in + 31) & ~(int64_t)31;
            if (bf16) { /* streaming bf16 dot products */
                /* gate and up of an MLP share x: round it once */
                const uint16_t *same = NULL;
                for (int q = 0; q < i && !same; q++)
                    if (!bt.is_gemm[q] && bt.gv[q].xb && mms[q].x == m->x && mms[q].n == m->n &&
                        mms[q].in == m->in)
                        same = bt.gv[q].xb;
                if (same) {
                    j->xb = same;
                    (void)arena_take(&ar, (size_t)(m->n * j->kpad) * sizeof(uint16_t));
                } else {
                    uint16_t *xb = arena_take(&ar, (size_t)(m->n * j->kpad) * sizeof(uint16_t));
                    bgemv_prep_x(m->x, m->n, m->in, xb, j->kpad);
                    j->xb = xb;
                }
            } else {
                float *xp = arena_take(&ar, (size_t)(m->n * j->kpad) * sizeof(float));
                gemv_prep_x(m->x, m->n, m->in, m->wdt, xp, j->kpad);
                j->xp = xp;
            }
            /* >= 16 rows (a multiple of 4) per task, ~4 tasks per thread */
            int64_t rows = duet__mm_task_rows(pool, m->out, 4, 4, 16);
            for (int64_t o = 0; o < m->out; o += rows)
                bt.tasks[bt.n_tasks++] = (mm_task_t){
                    .op = i, .gemm = false, .a = o, .b = o + rows < m->out ? o + rows : m->out};
        }
    }
    bt.pack_first[count] = pf;
    if (n_pack)
        duet_cpu_pool_run(pool, (int)n_pack, batch_pack_task, &bt);
    duet_cpu_pool_run(pool, bt.n_tasks, batch_task, &bt);
}

void duet__matmul_avx512(duet_cpu_pool_t *pool, const float *x, int64_t n, int64_t in,
                         const void *w, duet_dtype_t wdt, int64_t out, float *y, bool accumulate)
{
    duet_cpu_mm_t mm = {
        .x = x, .n = n, .in = in, .w = w, .wdt = wdt, .out = out, .y = y, .accumulate = accumulate};
    duet__matmul_batch_avx512(pool, &mm, 1, 0);
}
