// gpu kernels — see kernels.h. Numerics follow cpu/ops.c (HF's float32
// path): IEEE expf/sqrtf/division (no fast math), RMSNorm x * (1/sqrt(ms +
// eps)) * w, RoPE angles pos * inv_freq in float with cos/sin in double,
// router softmax then top-k (lowest index wins ties) then renormalise.
#include "gpu/kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

namespace
{

constexpr int kThreads = 256;

__device__ __forceinline__ float ld_elem(const void *p, int dt, int64_t i)
{
    switch (dt) {
    case CUK_BF16: return __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(p)[i]);
    case CUK_F16: return __half2float(reinterpret_cast<const __half *>(p)[i]);
    default: return reinterpret_cast<const float *>(p)[i];
    }
}

unsigned grid_for(int64_t count, int threads = kThreads)
{
    int64_t b = (count + threads - 1) / threads;
    if (b > 65535L * 32)
        b = 65535L * 32; // grid-stride loops cover the rest
    return (unsigned)(b < 1 ? 1 : b);
}

// Sum over the block; every thread gets the result. sm: 32 floats.
__device__ float block_sum(float v, float *sm)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads(); // sm may be in use by a previous call
    if (lane == 0)
        sm[warp] = v;
    __syncthreads();
    const int nw = (blockDim.x + 31) >> 5;
    float t = 0.0f;
    for (int i = 0; i < nw; i++)
        t += sm[i];
    return t;
}

// ---- RMSNorm ----------------------------------------------------------------

__global__ void k_rmsnorm(const float *x, int64_t rows, int64_t dim, const void *w, int wdt,
                          float eps, float *y)
{
    __shared__ float sm[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        float ss = 0.0f;
        for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
            ss += xr[i] * xr[i];
        ss = block_sum(ss, sm);
        const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
            yr[i] = ld_elem(w, wdt, i) * (xr[i] * inv);
        __syncthreads(); // in place: every read of row r is done before the next row
    }
}

// ---- RoPE -------------------------------------------------------------------

__global__ void k_rope(float *q, float *k, int64_t n, const int32_t *pos, int32_t nh, int32_t nkv,
                       int32_t hd, const float *inv_freq)
{
    const int32_t half = hd / 2;
    const int64_t per_tok = (int64_t)(nh + (k ? nkv : 0)) * half;
    const int64_t total = n * per_tok;
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < total;
         it += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = it / per_tok;
        const int64_t r = it % per_tok;
        const int32_t h = (int32_t)(r / half), i = (int32_t)(r % half);
        float *v = h < nh ? q + (t * nh + h) * hd : k + (t * nkv + (h - nh)) * hd;
        const float a = __fmul_rn((float)pos[t], inv_freq[i]);
        const float c = (float)cos((double)a), sn = (float)sin((double)a);
        const float x1 = v[i], x2 = v[i + half];
        v[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, sn));
        v[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, sn));
    }
}

// ---- KV store ---------------------------------------------------------------

__global__ void k_kv_store(const float *k, const float *v, int64_t n, const int32_t *slot,
                           int32_t nkv, int32_t hd, int32_t bs, float *kc, float *vc)
{
    const int64_t w = (int64_t)nkv * hd;
    const int64_t total = n * w;
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < total;
         it += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = it / w, r = it % w;
        const int32_t h = (int32_t)(r / hd), d = (int32_t)(r % hd);
        const int64_t sl = slot[t];
        const int64_t blk = sl / bs, off = sl % bs;
        const int64_t dst = ((blk * nkv + h) * bs + off) * hd + d;
        kc[dst] = k[it];
        vc[dst] = v[it];
    }
}

// ---- attention --------------------------------------------------------------
//
// One CTA per (split, KV head, token), 128 threads. The CTA's threads form
// subgroups of lpk = hd / VPL lanes; a subgroup holds VPL consecutive
// elements of a key row per lane, so it reads one key (K and V row) per
// step with coalesced loads. Subgroups take keys round-robin and keep an
// online softmax for each of the g query heads that share the KV head (the
// KV is read once for all of them), then the CTA merges the subgroups.

constexpr int kAttnThreads = 128;

template <int VPL> __device__ __forceinline__ void load_row(const float *p, float (&r)[VPL])
{
    if constexpr (VPL % 4 == 0) {
#pragma unroll
        for (int i = 0; i < VPL; i += 4) {
            float4 t = *reinterpret_cast<const float4 *>(p + i);
            r[i] = t.x;
            r[i + 1] = t.y;
            r[i + 2] = t.z;
            r[i + 3] = t.w;
        }
    } else if constexpr (VPL == 2) {
        float2 t = *reinterpret_cast<const float2 *>(p);
        r[0] = t.x;
        r[1] = t.y;
    } else {
#pragma unroll
        for (int i = 0; i < VPL; i++)
            r[i] = p[i];
    }
}

// One key's K and V row slice of this lane (zeros when the key is not valid).
template <int VPL>
__device__ __forceinline__ void load_kv(const float *kc, const float *vc, const int32_t *table,
                                        bool valid, int32_t j, int32_t nkv, int kvh, int32_t bs,
                                        int32_t hd, int li, float (&kr)[VPL], float (&vr)[VPL])
{
    if (valid) {
        const int64_t blk = table[j / bs];
        const int64_t base = ((blk * nkv + kvh) * bs + (j % bs)) * (int64_t)hd + li * VPL;
        load_row<VPL>(kc + base, kr);
        load_row<VPL>(vc + base, vr);
    } else {
#pragma unroll
        for (int i = 0; i < VPL; i++)
            kr[i] = vr[i] = 0.0f;
    }
}

// Online softmax update of the g heads with one key. Every lane of the warp
// calls it (the shuffles need the whole warp); `valid` is uniform over a
// subgroup of lpk lanes, which is all the reduction spans.
template <int VPL, int G>
__device__ __forceinline__ void
attend(const float (&qr)[G][VPL], const float (&kr)[VPL], const float (&vr)[VPL], bool valid, int g,
       int lpk, float scale, float (&m)[G], float (&l)[G], float (&acc)[G][VPL])
{
#pragma unroll
    for (int h = 0; h < G; h++) {
        if (h >= g) // g is uniform over the CTA
            break;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < VPL; i++)
            s = fmaf(qr[h][i], kr[i], s);
        for (int o = lpk >> 1; o > 0; o >>= 1)
            s += __shfl_xor_sync(0xffffffffu, s, o);
        if (valid) {
            const float sc = s * scale;
            if (sc > m[h]) {
                const float r = expf(m[h] - sc); // 0 on the first key
                l[h] *= r;
#pragma unroll
                for (int i = 0; i < VPL; i++)
                    acc[h][i] *= r;
                m[h] = sc;
            }
            const float p = expf(sc - m[h]);
            l[h] += p;
#pragma unroll
            for (int i = 0; i < VPL; i++)
                acc[h][i] = fmaf(p, vr[i], acc[h][i]);
        }
    }
}

template <int VPL>
__global__ void __launch_bounds__(kAttnThreads)
    k_attention(const float *q, const float *kc, const float *vc, const int32_t *ctx_len,
                const int32_t *bt_off, const int32_t *bt, int32_t nh, int32_t nkv, int32_t hd,
                int32_t bs, float scale, int32_t n_split, int32_t chunk, float *part, float *out)
{
    constexpr int G = CUK_ATTN_MAX_G;
    constexpr int MAXSG = kAttnThreads / 8; // subgroups: 128 / lpk, lpk >= 8 (hd >= 8)
    __shared__ float sm_m[MAXSG][G];
    __shared__ float sm_l[MAXSG][G];
    __shared__ float sm_acc[kAttnThreads * VPL * G]; // [nsg][G][hd]: nsg * hd = 128 * VPL

    const int split = blockIdx.x, kvh = blockIdx.y;
    const int64_t t = blockIdx.z;
    const int g = nh / nkv;
    const int lpk = hd / VPL; // power of two <= 32
    const int nsg = kAttnThreads / lpk;
    const int sg = threadIdx.x / lpk, li = threadIdx.x % lpk;
    const int gpw = 32 / lpk; // subgroups per warp
    const int warp = threadIdx.x >> 5;

    const int32_t ctx = ctx_len[t];
    const int32_t start = split * chunk;
    const int32_t end = min(ctx, start + chunk);
    const int32_t *table = bt + bt_off[t];

    // q may sit at any float offset of a buffer: scalar loads (read once)
    float qr[G][VPL];
    const float *qbase = q + (t * nh + (int64_t)kvh * g) * hd + li * VPL;
#pragma unroll
    for (int h = 0; h < G; h++)
#pragma unroll
        for (int i = 0; i < VPL; i++)
            qr[h][i] = h < g ? qbase[(int64_t)h * hd + i] : 0.0f;
    float m[G], l[G], acc[G][VPL];
#pragma unroll
    for (int h = 0; h < G; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
#pragma unroll
        for (int i = 0; i < VPL; i++)
            acc[h][i] = 0.0f;
    }

    // Warp-uniform loop: the warp's subgroups take keys jw + (0 .. gpw-1)
    // and, a round later, jw + nsg + (0 .. gpw-1): both keys' rows are
    // loaded before either is used (two rows in flight per lane).
    for (int32_t jw = start + warp * gpw; jw < end; jw += 2 * nsg) {
        const int32_t j0 = jw + (sg % gpw), j1 = j0 + nsg;
        const bool v0 = j0 < end, v1 = j1 < end;
        float k0[VPL], x0[VPL], k1[VPL], x1[VPL];
        load_kv<VPL>(kc, vc, table, v0, j0, nkv, kvh, bs, hd, li, k0, x0);
        load_kv<VPL>(kc, vc, table, v1, j1, nkv, kvh, bs, hd, li, k1, x1);
        attend<VPL, G>(qr, k0, x0, v0, g, lpk, scale, m, l, acc);
        attend<VPL, G>(qr, k1, x1, v1, g, lpk, scale, m, l, acc);
    }

    // Merge the subgroups.
#pragma unroll
    for (int h = 0; h < G; h++) {
        if (h < g) {
            if (li == 0) {
                sm_m[sg][h] = m[h];
                sm_l[sg][h] = l[h];
            }
#pragma unroll
            for (int i = 0; i < VPL; i++)
                sm_acc[((int64_t)sg * G + h) * hd + li * VPL + i] = acc[h][i];
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < g * hd; e += blockDim.x) {
        const int h = e / hd, d = e % hd;
        float M = -INFINITY;
        for (int s2 = 0; s2 < nsg; s2++)
            M = fmaxf(M, sm_m[s2][h]);
        float L = 0.0f, O = 0.0f;
        if (M > -INFINITY) {
            for (int s2 = 0; s2 < nsg; s2++) {
                const float ms = sm_m[s2][h];
                if (ms == -INFINITY)
                    continue;
                const float f = expf(ms - M);
                L = fmaf(sm_l[s2][h], f, L);
                O = fmaf(sm_acc[((int64_t)s2 * G + h) * hd + d], f, O);
            }
        }
        const int64_t head = t * nh + (int64_t)kvh * g + h;
        if (n_split == 1) {
            out[head * hd + d] = O / L; // L > 0: every token sees at least itself
        } else {
            float *pp = part + (head * n_split + split) * (int64_t)(hd + 2);
            pp[d] = O;
            if (d == 0) {
                pp[hd] = M;
                pp[hd + 1] = L;
            }
        }
    }
}

__global__ void k_attn_combine(const float *part, int64_t n, int32_t nh, int32_t hd,
                               int32_t n_split, float *out)
{
    const int64_t head = blockIdx.x; // t * nh + h
    const float *pp = part + head * n_split * (int64_t)(hd + 2);
    float M = -INFINITY;
    for (int s = 0; s < n_split; s++)
        M = fmaxf(M, pp[(int64_t)s * (hd + 2) + hd]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float L = 0.0f, O = 0.0f;
        for (int s = 0; s < n_split; s++) {
            const float *ps = pp + (int64_t)s * (hd + 2);
            const float ms = ps[hd];
            if (ms == -INFINITY)
                continue;
            const float f = expf(ms - M);
            L = fmaf(ps[hd + 1], f, L);
            O = fmaf(ps[d], f, O);
        }
        out[head * hd + d] = O / L;
    }
}

// ---- routing ----------------------------------------------------------------

__global__ void k_route(const float *logits, int64_t n, int32_t E, int32_t top_k, bool norm,
                        int32_t *ids, float *weights)
{
    const int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (r >= n)
        return;
    float p[CUK_ROUTE_MAX_E];
    const float *x = logits + r * E;
    float mx = x[0];
    for (int32_t e = 1; e < E; e++)
        if (x[e] > mx)
            mx = x[e];
    float sum = 0.0f;
    for (int32_t e = 0; e < E; e++) {
        p[e] = expf(x[e] - mx);
        sum += p[e];
    }
    for (int32_t e = 0; e < E; e++)
        p[e] /= sum;
    int32_t *id = ids + r * top_k;
    float *w = weights + r * top_k;
    float wsum = 0.0f;
    for (int32_t j = 0; j < top_k; j++) {
        int32_t best = -1;
        for (int32_t e = 0; e < E; e++) {
            bool taken = false;
            for (int32_t i = 0; i < j; i++)
                taken |= id[i] == e;
            if (!taken && (best < 0 || p[e] > p[best]))
                best = e;
        }
        id[j] = best;
        w[j] = p[best];
        wsum += p[best];
    }
    if (norm)
        for (int32_t j = 0; j < top_k; j++)
            w[j] /= wsum;
}

// ---- elementwise ------------------------------------------------------------

__global__ void k_swiglu(const float *gate, const float *up, int64_t count, float *out)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up[i]);
    }
}

__global__ void k_gather_rows(const float *src, int64_t dim, const int32_t *idx, int64_t n,
                              float *dst)
{
    const int64_t total = n * dim;
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < total;
         it += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = it / dim, j = it % dim;
        dst[it] = src[(int64_t)idx[i] * dim + j];
    }
}

__global__ void k_scatter_add(const float *src, int64_t dim, const int32_t *dst_rows,
                              const int32_t *src_off, const int32_t *src_list, const float *w,
                              int64_t n_dst, float *dst)
{
    for (int64_t i = blockIdx.y; i < n_dst; i += gridDim.y) {
        float *d = dst + (int64_t)dst_rows[i] * dim;
        const int32_t a = src_off[i], b = src_off[i + 1];
        for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < dim;
             j += (int64_t)gridDim.x * blockDim.x) {
            float acc = d[j];
            for (int32_t e = a; e < b; e++) {
                const int32_t s = src_list[e];
                const float f = w ? w[s] : 1.0f;
                acc = __fadd_rn(acc, __fmul_rn(f, src[(int64_t)s * dim + j]));
            }
            d[j] = acc;
        }
    }
}

__global__ void k_sigmoid_gate_add(const float *x, const float *g, int64_t rows, int64_t dim,
                                   float *y)
{
    const int64_t total = rows * dim;
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < total;
         it += (int64_t)gridDim.x * blockDim.x) {
        const float s = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-g[it / dim])));
        y[it] = __fadd_rn(y[it], __fmul_rn(s, x[it]));
    }
}

__global__ void k_add(const float *x, int64_t n, float *y)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __fadd_rn(y[i], x[i]);
}

__global__ void k_add_bias(float *y, int64_t rows, int64_t dim, const void *bias, int bdt)
{
    const int64_t total = rows * dim;
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < total;
         it += (int64_t)gridDim.x * blockDim.x)
        y[it] = __fadd_rn(y[it], ld_elem(bias, bdt, it % dim));
}

__global__ void k_embed(const void *table, int tdt, int64_t dim, const int32_t *ids, int64_t n,
                        float *out)
{
    const int64_t total = n * dim;
    for (int64_t it = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; it < total;
         it += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = it / dim, j = it % dim;
        out[it] = ld_elem(table, tdt, (int64_t)ids[i] * dim + j);
    }
}

__global__ void k_to_f32(const void *src, int sdt, int64_t count, float *dst)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = ld_elem(src, sdt, i);
}

__global__ void k_f32_to_16(const float *src, int64_t count, int ddt, void *dst)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count;
         i += (int64_t)gridDim.x * blockDim.x) {
        if (ddt == CUK_BF16)
            reinterpret_cast<__nv_bfloat16 *>(dst)[i] = __float2bfloat16_rn(src[i]);
        else
            reinterpret_cast<__half *>(dst)[i] = __float2half_rn(src[i]);
    }
}

__global__ void k_bf16_from_16(const void *src, int sdt, int64_t count, void *dst)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count;
         i += (int64_t)gridDim.x * blockDim.x)
        reinterpret_cast<__nv_bfloat16 *>(dst)[i] = __float2bfloat16_rn(ld_elem(src, sdt, i));
}

// ---- sampling ---------------------------------------------------------------
// Greedy: lowest index among the largest non-NaN logits (0 if all NaN),
// exactly duet_sample_greedy. Other rows: model/sampling.c's steps, the
// order-dependent ones (top-k quickselect, nucleus sort, the draw) on one
// thread so that the same logits give the same token as the CPU.

__device__ void dev_select_topk(int32_t *idx, float *p, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = p[lo + (hi - lo) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (p[i] > pivot)
                i++;
            while (p[j] < pivot)
                j--;
            if (i <= j) {
                float tp = p[i];
                p[i] = p[j];
                p[j] = tp;
                int32_t ti = idx[i];
                idx[i] = idx[j];
                idx[j] = ti;
                i++;
                j--;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

__device__ void dev_sort_desc(int32_t *idx, float *p, int32_t n)
{
    const int32_t gaps[] = {1750, 701, 301, 132, 57, 23, 10, 4, 1};
    for (int g = 0; g < 9; g++) {
        int32_t gap = gaps[g];
        for (int32_t i = gap; i < n; i++) {
            float pv = p[i];
            int32_t iv = idx[i];
            int32_t j = i;
            while (j >= gap && (p[j - gap] < pv || (p[j - gap] == pv && idx[j - gap] > iv))) {
                p[j] = p[j - gap];
                idx[j] = idx[j - gap];
                j -= gap;
            }
            p[j] = pv;
            idx[j] = iv;
        }
    }
}

__global__ void __launch_bounds__(kThreads)
    k_sample(const float *logits, int32_t V, const float *temperature, const int32_t *top_kp,
             const float *top_pp, const double *u_p, float *scratch_p, int32_t *scratch_i,
             int32_t *out)
{
    __shared__ float s_v[kThreads];
    __shared__ int32_t s_i[kThreads];
    __shared__ float s_mx;
    const int64_t r = blockIdx.x;
    const float *l = logits + r * V;
    // parallel argmax (greedy) and max (ignoring NaN, as sampling.c's `>`)
    float bv = NAN;
    int32_t bi = -1;
    for (int32_t i = threadIdx.x; i < V; i += blockDim.x) {
        const float x = l[i];
        if (!isnan(x) && (bi < 0 || x > bv)) { // i ascending per thread: ties keep the lower
            bv = x;
            bi = i;
        }
    }
    s_v[threadIdx.x] = bv;
    s_i[threadIdx.x] = bi;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) {
            const float ov = s_v[threadIdx.x + o];
            const int32_t oi = s_i[threadIdx.x + o];
            const float cv = s_v[threadIdx.x];
            const int32_t ci = s_i[threadIdx.x];
            if (oi >= 0 && (ci < 0 || ov > cv || (ov == cv && oi < ci))) {
                s_v[threadIdx.x] = ov;
                s_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    const int32_t greedy = s_i[0] < 0 ? 0 : s_i[0];
    const float mxv = s_i[0] < 0 ? -INFINITY : s_v[0];
    const float temp = temperature[r];
    const int32_t top_k = top_kp[r];
    if (temp <= 0.0f || top_k == 1 || !isfinite(mxv)) {
        if (threadIdx.x == 0)
            out[r] = greedy;
        return;
    }
    if (threadIdx.x == 0)
        s_mx = mxv;
    __syncthreads();
    const float mx = s_mx;
    const float inv_t = __fdiv_rn(1.0f, temp);
    float *p = scratch_p + r * (int64_t)V;
    int32_t *idx = scratch_i + r * (int64_t)V;
    for (int32_t i = threadIdx.x; i < V; i += blockDim.x) {
        // expf in float as the CPU: (float)exp(double) is the correctly
        // rounded value glibc's expf returns up to its last-bit rounding
        p[i] = (float)exp((double)__fmul_rn(__fsub_rn(l[i], mx), inv_t));
        idx[i] = i;
    }
    __syncthreads();
    if (threadIdx.x != 0)
        return;
    double sum = 0.0;
    for (int32_t i = 0; i < V; i++)
        sum += p[i];
    int32_t n = V;
    if (top_k > 0 && top_k < n) {
        dev_select_topk(idx, p, n, top_k);
        n = top_k;
        sum = 0.0;
        for (int32_t i = 0; i < n; i++)
            sum += p[i];
    }
    const float top_p = top_pp[r];
    if (top_p < 1.0f) {
        double floor_p = (1.0 - (double)top_p) / (double)n * sum;
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++)
            if ((double)p[i] >= floor_p) {
                p[m] = p[i];
                idx[m] = idx[i];
                m++;
            }
        n = m;
        dev_sort_desc(idx, p, n);
        double target = (double)top_p * sum, acc = 0.0;
        int32_t keep = n;
        for (int32_t i = 0; i < n; i++) {
            acc += p[i];
            if (acc >= target) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = 0.0;
        for (int32_t i = 0; i < n; i++)
            sum += p[i];
    }
    double u = u_p[r] * sum, acc = 0.0;
    int32_t pick = idx[n - 1];
    for (int32_t i = 0; i < n; i++) {
        acc += p[i];
        if (u < acc) {
            pick = idx[i];
            break;
        }
    }
    out[r] = pick;
}

} // namespace

// ---- launchers --------------------------------------------------------------

extern "C" {

cudaError_t duet_cuk_rmsnorm(cudaStream_t s, const float *x, int64_t rows, int64_t dim,
                             const void *w, int wdt, float eps, float *y)
{
    if (rows <= 0)
        return cudaSuccess;
    unsigned g = (unsigned)(rows < 65535 * 16 ? rows : 65535 * 16);
    k_rmsnorm<<<g, kThreads, 0, s>>>(x, rows, dim, w, wdt, eps, y);
    return cudaGetLastError();
}

cudaError_t duet_cuk_rope(cudaStream_t s, float *q, float *k, int64_t n, const int32_t *positions,
                          int32_t n_heads, int32_t n_kv, int32_t hd, const float *inv_freq)
{
    const int64_t total = n * (int64_t)(n_heads + (k ? n_kv : 0)) * (hd / 2);
    if (total <= 0)
        return cudaSuccess;
    k_rope<<<grid_for(total), kThreads, 0, s>>>(q, k, n, positions, n_heads, n_kv, hd, inv_freq);
    return cudaGetLastError();
}

cudaError_t duet_cuk_kv_store(cudaStream_t s, const float *k, const float *v, int64_t n,
                              const int32_t *slot, int32_t n_kv, int32_t hd, int32_t bs, float *kc,
                              float *vc)
{
    const int64_t total = n * n_kv * (int64_t)hd;
    if (total <= 0)
        return cudaSuccess;
    k_kv_store<<<grid_for(total), kThreads, 0, s>>>(k, v, n, slot, n_kv, hd, bs, kc, vc);
    return cudaGetLastError();
}

bool duet_cuk_attn_supported(int32_t hd, int32_t g)
{
    bool pow2 = hd >= 8 && hd <= 256 && (hd & (hd - 1)) == 0;
    return pow2 && g >= 1 && g <= CUK_ATTN_MAX_G;
}

cudaError_t duet_cuk_attention(cudaStream_t s, const float *q, const float *kc, const float *vc,
                               int64_t n, const int32_t *ctx, const int32_t *bt_off,
                               const int32_t *bt, int32_t n_heads, int32_t n_kv, int32_t hd,
                               int32_t bs, float scale, int32_t n_split, int32_t chunk, float *part,
                               float *out)
{
    if (n <= 0)
        return cudaSuccess;
    if (!duet_cuk_attn_supported(hd, n_heads / n_kv) || n > 65535 || n_kv > 65535)
        return cudaErrorInvalidValue;
    dim3 grid((unsigned)n_split, (unsigned)n_kv, (unsigned)n);
    const int vpl = hd <= 32 ? 1 : hd / 32;
    switch (vpl) {
    case 1:
        k_attention<1><<<grid, kAttnThreads, 0, s>>>(q, kc, vc, ctx, bt_off, bt, n_heads, n_kv, hd,
                                                     bs, scale, n_split, chunk, part, out);
        break;
    case 2:
        k_attention<2><<<grid, kAttnThreads, 0, s>>>(q, kc, vc, ctx, bt_off, bt, n_heads, n_kv, hd,
                                                     bs, scale, n_split, chunk, part, out);
        break;
    case 4:
        k_attention<4><<<grid, kAttnThreads, 0, s>>>(q, kc, vc, ctx, bt_off, bt, n_heads, n_kv, hd,
                                                     bs, scale, n_split, chunk, part, out);
        break;
    default:
        k_attention<8><<<grid, kAttnThreads, 0, s>>>(q, kc, vc, ctx, bt_off, bt, n_heads, n_kv, hd,
                                                     bs, scale, n_split, chunk, part, out);
        break;
    }
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess || n_split == 1)
        return e;
    const unsigned threads = (unsigned)(hd < 128 ? hd : 128);
    k_attn_combine<<<(unsigned)(n * n_heads), threads, 0, s>>>(part, n, n_heads, hd, n_split, out);
    return cudaGetLastError();
}

cudaError_t duet_cuk_route(cudaStream_t s, const float *logits, int64_t n, int32_t n_experts,
                           int32_t top_k, bool norm, int32_t *ids, float *weights)
{
    if (n <= 0)
        return cudaSuccess;
    k_route<<<(unsigned)((n + 63) / 64), 64, 0, s>>>(logits, n, n_experts, top_k, norm, ids,
                                                     weights);
    return cudaGetLastError();
}

cudaError_t duet_cuk_swiglu(cudaStream_t s, const float *gate, const float *up, int64_t count,
                            float *out)
{
    if (count <= 0)
        return cudaSuccess;
    k_swiglu<<<grid_for(count), kThreads, 0, s>>>(gate, up, count, out);
    return cudaGetLastError();
}

cudaError_t duet_cuk_gather_rows(cudaStream_t s, const float *src, int64_t dim, const int32_t *idx,
                                 int64_t n, float *dst)
{
    if (n * dim <= 0)
        return cudaSuccess;
    k_gather_rows<<<grid_for(n * dim), kThreads, 0, s>>>(src, dim, idx, n, dst);
    return cudaGetLastError();
}

cudaError_t duet_cuk_scatter_add_rows(cudaStream_t s, const float *src, int64_t dim,
                                      const int32_t *dst_rows, const int32_t *src_off,
                                      const int32_t *src_list, const float *w, int64_t n_dst,
                                      float *dst)
{
    if (n_dst <= 0 || dim <= 0)
        return cudaSuccess;
    dim3 grid((unsigned)((dim + kThreads - 1) / kThreads),
              (unsigned)(n_dst < 65535 ? n_dst : 65535));
    k_scatter_add<<<grid, kThreads, 0, s>>>(src, dim, dst_rows, src_off, src_list, w, n_dst, dst);
    return cudaGetLastError();
}

cudaError_t duet_cuk_sigmoid_gate_add(cudaStream_t s, const float *x, const float *g, int64_t rows,
                                      int64_t dim, float *y)
{
    if (rows * dim <= 0)
        return cudaSuccess;
    k_sigmoid_gate_add<<<grid_for(rows * dim), kThreads, 0, s>>>(x, g, rows, dim, y);
    return cudaGetLastError();
}

cudaError_t duet_cuk_add(cudaStream_t s, const float *x, int64_t n, float *y)
{
    if (n <= 0)
        return cudaSuccess;
    k_add<<<grid_for(n), kThreads, 0, s>>>(x, n, y);
    return cudaGetLastError();
}

cudaError_t duet_cuk_add_bias(cudaStream_t s, float *y, int64_t rows, int64_t dim, const void *bias,
                              int bdt)
{
    if (rows * dim <= 0)
        return cudaSuccess;
    k_add_bias<<<grid_for(rows * dim), kThreads, 0, s>>>(y, rows, dim, bias, bdt);
    return cudaGetLastError();
}

cudaError_t duet_cuk_embed(cudaStream_t s, const void *table, int tdt, int64_t dim,
                           const int32_t *ids, int64_t n, float *out)
{
    if (n * dim <= 0)
        return cudaSuccess;
    k_embed<<<grid_for(n * dim), kThreads, 0, s>>>(table, tdt, dim, ids, n, out);
    return cudaGetLastError();
}

cudaError_t duet_cuk_to_f32(cudaStream_t s, const void *src, int sdt, int64_t count, float *dst)
{
    if (count <= 0)
        return cudaSuccess;
    k_to_f32<<<grid_for(count), kThreads, 0, s>>>(src, sdt, count, dst);
    return cudaGetLastError();
}

cudaError_t duet_cuk_f32_to_16(cudaStream_t s, const float *src, int64_t count, int ddt, void *dst)
{
    if (count <= 0)
        return cudaSuccess;
    k_f32_to_16<<<grid_for(count), kThreads, 0, s>>>(src, count, ddt, dst);
    return cudaGetLastError();
}

cudaError_t duet_cuk_bf16_from_16(cudaStream_t s, const void *src, int sdt, int64_t count,
                                  void *dst)
{
    if (count <= 0)
        return cudaSuccess;
    k_bf16_from_16<<<grid_for(count), kThreads, 0, s>>>(src, sdt, count, dst);
    return cudaGetLastError();
}

cudaError_t duet_cuk_sample(cudaStream_t s, const float *logits, int64_t n, int32_t vocab,
                            const float *temperature, const int32_t *top_k, const float *top_p,
                            const double *u, float *scratch_p, int32_t *scratch_i, int32_t *out)
{
    if (n <= 0)
        return cudaSuccess;
    if (n > 2147483647)
        return cudaErrorInvalidValue;
    k_sample<<<(unsigned)n, kThreads, 0, s>>>(logits, vocab, temperature, top_k, top_p, u,
                                              scratch_p, scratch_i, out);
    return cudaGetLastError();
}

} // extern "C"
