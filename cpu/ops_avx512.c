/* cpu ops, AVX-512 variants: the attention block kernel. Compiled with
 * AVX-512 flags; called only after a run-time CPU feature check (ops.c). */
#include <immintrin.h>
#include <math.h>

#include "cpu/ops.h"

/* e^x, relative error ~2e-7: x = n ln2 + r, |r| <= ln2/2, e^r by a
 * degree-7 Taylor polynomial, scaled by 2^n. Inputs below -87 give 0 (as
 * expf underflows); inputs above 88 are clamped (finite, ~1.6e38). */
static inline __m512 exp_ps(__m512 x)
{
    const __m512 lo = _mm512_set1_ps(-87.0f);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps((__mmask16)~under, p, n);
}

/* Up to 4 query heads of one KV head at once (NH constant after inlining):
 * each K row and V row is loaded once for all of them, and the heads'
 * independent FMA chains overlap. Every head's arithmetic (two partial
 * sums over even/odd d and j, in order) is what a lone head would do, so
 * results do not depend on how heads are grouped. */
static inline __attribute__((always_inline)) void
attn_heads16(const float *q, int NH, int32_t hd, const float *kb, const float *vb, int32_t nin,
             __mmask16 valid, float scale, float *mx, float *l, float *acc)
{
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    /* 16 scores per head: sum over d of q[d] * K^T[d][0..15] */
    __m512 s0[4], s1[4];
    for (int h = 0; h < NH; h++) {
        s0[h] = _mm512_setzero_ps();
        s1[h] = _mm512_setzero_ps();
    }
    for (int32_t d = 0; d + 2 <= hd; d += 2) {
        const __m512 k0 = _mm512_loadu_ps(kb + (int64_t)d * 16);
        const __m512 k1 = _mm512_loadu_ps(kb + (int64_t)(d + 1) * 16);
        for (int h = 0; h < NH; h++) {
            const float *qh = q + (int64_t)h * hd;
            s0[h] = _mm512_fmadd_ps(_mm512_set1_ps(qh[d]), k0, s0[h]);
            s1[h] = _mm512_fmadd_ps(_mm512_set1_ps(qh[d + 1]), k1, s1[h]);
        }
    }
    float pj[4][16] __attribute__((aligned(64)));
    for (int h = 0; h < NH; h++) {
        float *ah = acc + (int64_t)h * hd;
        __m512 s = _mm512_mask_blend_ps(
            valid, ninf, _mm512_mul_ps(_mm512_add_ps(s0[h], s1[h]), _mm512_set1_ps(scale)));
        float bm = _mm512_reduce_max_ps(s);
        if (bm > mx[h]) {
            float r = expf(mx[h] - bm); /* 0 on the first block */
            l[h] *= r;
            __m512 vr = _mm512_set1_ps(r);
            for (int32_t i = 0; i < hd; i += 16)
                _mm512_storeu_ps(ah + i, _mm512_mul_ps(_mm512_loadu_ps(ah + i), vr));
            mx[h] = bm;
        }
        __m512 p = _mm512_maskz_mov_ps(valid, exp_ps(_mm512_sub_ps(s, _mm512_set1_ps(mx[h]))));
        l[h] += _mm512_reduce_add_ps(p);
        _mm512_store_ps(pj[h], p);
    }
    /* acc += sum_j p_j v_j, 16 columns of the output at a time */
    for (int32_t i = 0; i < hd; i += 16) {
        __m512 a0[4], a1[4];
        for (int h = 0; h < NH; h++) {
            a0[h] = _mm512_loadu_ps(acc + (int64_t)h * hd + i);
            a1[h] = _mm512_setzero_ps();
        }
        int32_t j = 0;
        for (; j + 2 <= nin; j += 2) {
            const __m512 v0 = _mm512_loadu_ps(vb + (int64_t)j * hd + i);
            const __m512 v1 = _mm512_loadu_ps(vb + (int64_t)(j + 1) * hd + i);
            for (int h = 0; h < NH; h++) {
                a0[h] = _mm512_fmadd_ps(_mm512_set1_ps(pj[h][j]), v0, a0[h]);
                a1[h] = _mm512_fmadd_ps(_mm512_set1_ps(pj[h][j + 1]), v1, a1[h]);
            }
        }
        if (j < nin) {
            const __m512 v0 = _mm512_loadu_ps(vb + (int64_t)j * hd + i);
            for (int h = 0; h < NH; h++)
                a0[h] = _mm512_fmadd_ps(_mm512_set1_ps(pj[h][j]), v0, a0[h]);
        }
        for (int h = 0; h < NH; h++)
            _mm512_storeu_ps(acc + (int64_t)h * hd + i, _mm512_add_ps(a0[h], a1[h]));
    }
}

/* hd is a multiple of 16 (so even): no odd-d tail. */
void duet__cpu_attn_block16_avx512(const float *q, int32_t g, int32_t hd, int32_t bs,
                                   const float *kb, const float *vb, int32_t nin, float scale,
                                   float *mx, float *l, float *acc)
{
    (void)bs; /* 16 */
    const __mmask16 valid = (__mmask16)(nin >= 16 ? 0xffffu : (1u << nin) - 1u);
    for (int32_t h0 = 0; h0 < g; h0 += 4) {
        const float *qh = q + (int64_t)h0 * hd;
        float *ah = acc + (int64_t)h0 * hd;
        switch (g - h0 >= 4 ? 4 : g - h0) {
        case 1: attn_heads16(qh, 1, hd, kb, vb, nin, valid, scale, mx + h0, l + h0, ah); break;
        case 2: attn_heads16(qh, 2, hd, kb, vb, nin, valid, scale, mx + h0, l + h0, ah); break;
        case 3: attn_heads16(qh, 3, hd, kb, vb, nin, valid, scale, mx + h0, l + h0, ah); break;
        default: attn_heads16(qh, 4, hd, kb, vb, nin, valid, scale, mx + h0, l + h0, ah); break;
        }
    }
}

void duet__cpu_swiglu_avx512(const float *gate, const float *up, int64_t n, float *out)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 g = _mm512_loadu_ps(gate + i);
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
        __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
    }
    for (; i < n; i++)
        out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}
