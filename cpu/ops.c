/* cpu ops — norms, RoPE, paged attention, routing, SwiGLU (portable C;
 * the attention inner loops switch to AVX-512 at run time).
 *
 * Numerics follow HF's float32 path: RMSNorm x * rsqrt(mean(x^2) + eps) *
 * weight; RoPE inv_freq = 1 / theta^(2i/d) and angle = pos * inv_freq in
 * float32 (rotate_half pairing i, i + d/2); softmax attention with scale;
 * router softmax over all experts, then top-k, then optional renormalise. */
#include "cpu/ops.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

void duet__cpu_tensor_read_f32(const duet_tensor_t *t, int64_t off, int64_t n, float *out)
{
    switch (t->dtype) {
    case DUET_DTYPE_F32:
        memcpy(out, (const float *)t->data + off, (size_t)n * sizeof(float));
        break;
    case DUET_DTYPE_BF16: {
        const uint16_t *p = (const uint16_t *)t->data + off;
        for (int64_t i = 0; i < n; i++)
            out[i] = duet_bf16_to_f32(p[i]);
        break;
    }
    case DUET_DTYPE_F16: {
        const uint16_t *p = (const uint16_t *)t->data + off;
        for (int64_t i = 0; i < n; i++)
            out[i] = duet_f16_to_f32(p[i]);
        break;
    }
    default: memset(out, 0, (size_t)n * sizeof(float)); break;
    }
}

static inline float tensor_at(const duet_tensor_t *t, int64_t i)
{
    switch (t->dtype) {
    case DUET_DTYPE_F32: return ((const float *)t->data)[i];
    case DUET_DTYPE_BF16: return duet_bf16_to_f32(((const uint16_t *)t->data)[i]);
    case DUET_DTYPE_F16: return duet_f16_to_f32(((const uint16_t *)t->data)[i]);
    default: return 0.0f;
    }
}

/* Split `rows` over the pool when there is enough work to pay for it. */
typedef void (*rows_fn)(void *ctx, int64_t r0, int64_t r1);
typedef struct rows_job {
    rows_fn fn;
    void *ctx;
    int64_t rows;
} rows_job_t;

static void rows_task(void *arg, int task, int n_tasks)
{
    rows_job_t *j = arg;
    int64_t r0 = j->rows * task / n_tasks, r1 = j->rows * (task + 1) / n_tasks;
    if (r1 > r0)
        j->fn(j->ctx, r0, r1);
}

static void par_rows(duet_cpu_pool_t *pool, int64_t rows, int64_t work_per_row, rows_fn fn,
                     void *ctx)
{
    int nt = pool ? duet_cpu_pool_size(pool) : 1;
    if (nt <= 1 || rows < 2 || rows * work_per_row < 32768) {
        fn(ctx, 0, rows);
        return;
    }
    if (rows < nt)
        nt = (int)rows;
    rows_job_t j = {fn, ctx, rows};
    duet_cpu_pool_run(pool, nt, rows_task, &j);
}

/* ---- RMSNorm ------------------------------------------------------------ */

typedef struct rms_ctx {
    const float *x;
    float *y;
    int64_t dim;
    const duet_tensor_t *w;
    float eps;
} rms_ctx_t;

static void rms_rows(void *arg, int64_t r0, int64_t r1)
{
    const rms_ctx_t *c = arg;
    const int64_t d = c->dim;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = c->x + r * d;
        float *y = c->y + r * d;
        float acc[8] = {0};
        int64_t i = 0;
        for (; i + 8 <= d; i += 8)
            for (int u = 0; u < 8; u++)
                acc[u] += x[i + u] * x[i + u];
        for (; i < d; i++)
            acc[0] += x[i] * x[i];
        float ss =
            ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        float inv = 1.0f / sqrtf(ss / (float)d + c->eps);
        switch (c->w->dtype) {
        case DUET_DTYPE_BF16: {
            const uint16_t *w = c->w->data;
            for (i = 0; i < d; i++)
                y[i] = duet_bf16_to_f32(w[i]) * (x[i] * inv);
            break;
        }
        case DUET_DTYPE_F32: {
            const float *w = c->w->data;
            for (i = 0; i < d; i++)
                y[i] = w[i] * (x[i] * inv);
            break;
        }
        default:
            for (i = 0; i < d; i++)
                y[i] = tensor_at(c->w, i) * (x[i] * inv);
            break;
        }
    }
}

void duet__cpu_rmsnorm(duet_cpu_pool_t *pool, const float *x, int64_t rows, int64_t dim,
                       const duet_tensor_t *weight, float eps, float *y)
{
    rms_ctx_t c = {x, y, dim, weight, eps};
    par_rows(pool, rows, dim, rms_rows, &c);
}

/* ---- RoPE --------------------------------------------------------------- */

#define ROPE_MAX_HALF 512

void duet__cpu_rope(duet_cpu_pool_t *pool, float *q, float *k, int64_t n, const int32_t *positions,
                    int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, float theta,
                    duet_dtype_t freq_dtype)
{
    (void)pool;
    const int32_t half = head_dim / 2;
    float inv_freq[ROPE_MAX_HALF];
    for (int32_t i = 0; i < half && i < ROPE_MAX_HALF; i++) {
        float e = (float)(2 * i) / (float)head_dim;
        inv_freq[i] = 1.0f / powf(theta, e);
        if (freq_dtype == DUET_DTYPE_BF16)
            inv_freq[i] = duet_bf16_to_f32(duet_f32_to_bf16(inv_freq[i]));
        else if (freq_dtype == DUET_DTYPE_F16)
            inv_freq[i] = duet_f16_to_f32(duet_f32_to_f16(inv_freq[i]));
    }
    float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
    for (int64_t t = 0; t < n; t++) {
        float pos = (float)positions[t];
        for (int32_t i = 0; i < half; i++) {
            float a = pos * inv_freq[i];
            cs[i] = (float)cos((double)a);
            sn[i] = (float)sin((double)a);
        }
        for (int pass = 0; pass < 2; pass++) {
            float *base = pass == 0 ? q + t * (int64_t)n_heads * head_dim
                                    : (k ? k + t * (int64_t)n_kv_heads * head_dim : NULL);
            int32_t nh = pass == 0 ? n_heads : n_kv_heads;
            if (!base)
                continue;
            for (int32_t h = 0; h < nh; h++) {
                float *v = base + (int64_t)h * head_dim;
                for (int32_t i = 0; i < half; i++) {
                    float x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * cs[i] - x2 * sn[i];
                    v[i + half] = x2 * cs[i] + x1 * sn[i];
                }
            }
        }
    }
}

/* ---- paged attention ---------------------------------------------------- */

/* Block layout (see duet_kv_layer_t): K of a (block, KV head) is stored
 * transposed, [head_dim][block_size], so the scores of one block are
 * block_size-wide vector FMAs with no horizontal sums; V is [block_size]
 * [head_dim]. One work item is (token, KV head): the query heads that share
 * the KV head are done together, so each K/V block is read once for them. */

void duet__cpu_attn_block_portable(const float *q, int32_t g, int32_t hd, int32_t bs,
                                   const float *kb, const float *vb, int32_t nin, float scale,
                                   float *mx, float *l, float *acc)
{
    float sc[ATTN_MAX_BS];
    for (int32_t h = 0; h < g; h++) {
        const float *qh = q + (int64_t)h * hd;
        float *ah = acc + (int64_t)h * hd;
        for (int32_t j = 0; j < nin; j++)
            sc[j] = 0.0f;
        for (int32_t d = 0; d < hd; d++) {
            const float qd = qh[d];
            const float *kr = kb + (int64_t)d * bs;
            for (int32_t j = 0; j < nin; j++)
                sc[j] += qd * kr[j];
        }
        float bm = -INFINITY;
        for (int32_t j = 0; j < nin; j++) {
            sc[j] *= scale;
            bm = fmaxf(bm, sc[j]);
        }
        if (bm > mx[h]) {
            float r = expf(mx[h] - bm); /* 0 on the first block */
            l[h] *= r;
            for (int32_t i = 0; i < hd; i++)
                ah[i] *= r;
            mx[h] = bm;
        }
        for (int32_t j = 0; j < nin; j++) {
            float p = expf(sc[j] - mx[h]);
            l[h] += p;
            const float *vr = vb + (int64_t)j * hd;
            for (int32_t i = 0; i < hd; i++)
                ah[i] += p * vr[i];
        }
    }
}

static duet__cpu_attn_block_fn g_attn_block16; /* block_size 16, head_dim % 16 == 0 */
static void (*g_swiglu)(const float *gate, const float *up, int64_t n, float *out);

static void swiglu_portable(const float *gate, const float *up, int64_t n, float *out)
{
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

static void pick_kernels_once(void)
{
    const char *isa = getenv("DUET_CPU_ISA");
    bool avx512 = __builtin_cpu_supports("avx512f") && (!isa || !strcmp(isa, "avx512"));
    g_swiglu = avx512 ? duet__cpu_swiglu_avx512 : swiglu_portable;
    g_attn_block16 = avx512 ? duet__cpu_attn_block16_avx512 : duet__cpu_attn_block_portable;
}

static void pick_kernels(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, pick_kernels_once);
}

typedef struct attn_ctx {
    const duet_attn_batch_t *b;
    const duet_kv_layer_t *kv;
    const float *q;
    float *out;
    int32_t n_heads;
    float scale;
    int64_t n_items;
    duet__cpu_attn_block_fn block;
} attn_ctx_t;

static int32_t seq_of_token(const duet_attn_batch_t *b, int32_t tok)
{
    int32_t lo = 0, hi = b->n_seqs - 1;
    while (lo < hi) {
        int32_t mid = (lo + hi + 1) / 2;
        if (b->seqs[mid].tok0 <= tok)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* One (token, KV head): online softmax over the context a block at a time. */
static void attn_item(const attn_ctx_t *c, int32_t tok, int32_t kvh)
{
    const duet_kv_layer_t *kv = c->kv;
    const int32_t hd = kv->head_dim, bs = kv->block_size, nkv = kv->n_kv_heads;
    const int32_t g = c->n_heads / nkv;
    const duet_attn_seq_t *s = &c->b->seqs[seq_of_token(c->b, tok)];
    const int32_t ctx = s->pos0 + (tok - s->tok0) + 1;
    const int64_t qoff = ((int64_t)tok * c->n_heads + (int64_t)kvh * g) * hd;
    float acc[ATTN_MAX_G * ATTN_MAX_HD] __attribute__((aligned(64)));
    float mx[ATTN_MAX_G], l[ATTN_MAX_G];
    memset(acc, 0, sizeof(float) * (size_t)g * (size_t)hd);
    for (int32_t h = 0; h < g; h++) {
        mx[h] = -INFINITY;
        l[h] = 0.0f;
    }
    const int64_t bstride = (int64_t)bs * hd;
    for (int32_t b0 = 0; b0 < ctx; b0 += bs) {
        const int32_t nin = DUET_MIN(bs, ctx - b0);
        const int64_t base = ((int64_t)s->block_table[b0 / bs] * nkv + kvh) * bstride;
        if (s->n_tokens == 1 && b0 + bs < ctx) {
            /* decode: the next block's K and V, a block's work ahead (into
             * L2); blocks are scattered, so the hardware prefetchers start
             * cold (prefill tokens share blocks, which stay cached) */
            const int64_t nb = ((int64_t)s->block_table[b0 / bs + 1] * nkv + kvh) * bstride;
            const char *nk = (const char *)(kv->k + nb), *nv = (const char *)(kv->v + nb);
            const int64_t nbytes = (int64_t)DUET_MIN(bs, ctx - b0 - bs) * hd * (int64_t)sizeof(float);
            const int64_t kbytes = bstride * (int64_t)sizeof(float);
            for (int64_t off = 0; off < kbytes; off += 64)
                __builtin_prefetch(nk + off, 0, 2);
            for (int64_t off = 0; off < nbytes; off += 64)
                __builtin_prefetch(nv + off, 0, 2);
        }
        c->block(c->q + qoff, g, hd, bs, kv->k + base, kv->v + base, nin, c->scale, mx, l, acc);
    }
    float *o = c->out + qoff;
    for (int32_t h = 0; h < g; h++) {
        float inv = 1.0f / l[h];
        for (int32_t i = 0; i < hd; i++)
            o[(int64_t)h * hd + i] = acc[(int64_t)h * hd + i] * inv;
    }
}

static void attn_task(void *arg, int task, int n_tasks)
{
    const attn_ctx_t *c = arg;
    const int32_t nkv = c->kv->n_kv_heads;
    /* Strided items (token-major) balance causal prefill across threads. */
    for (int64_t it = task; it < c->n_items; it += n_tasks)
        attn_item(c, (int32_t)(it / nkv), (int32_t)(it % nkv));
}

void duet__cpu_attention(duet_cpu_pool_t *pool, const duet_attn_batch_t *b,
                         const duet_kv_layer_t *kv, const float *q, const float *k, const float *v,
                         int32_t n_heads, float scale, float *out)
{
    pick_kernels();
    const int32_t hd = kv->head_dim, bs = kv->block_size, nkv = kv->n_kv_heads;
    const int64_t kvw = (int64_t)nkv * hd;
    /* Store this step's K/V first: a prefill chunk attends to itself. */
    int64_t visits = 0;
    for (int32_t si = 0; si < b->n_seqs; si++) {
        const duet_attn_seq_t *s = &b->seqs[si];
        for (int32_t t = 0; t < s->n_tokens; t++) {
            int32_t pos = s->pos0 + t;
            int64_t blk = s->block_table[pos / bs];
            int32_t off = pos % bs;
            const float *ks = k + (int64_t)(s->tok0 + t) * kvw;
            const float *vs = v + (int64_t)(s->tok0 + t) * kvw;
            for (int32_t h = 0; h < nkv; h++) {
                const int64_t base = (blk * nkv + h) * (int64_t)bs * hd;
                float *kd = kv->k + base + off;
                for (int32_t d = 0; d < hd; d++)
                    kd[(int64_t)d * bs] = ks[(int64_t)h * hd + d];
                memcpy(kv->v + base + (int64_t)off * hd, vs + (int64_t)h * hd,
                       sizeof(float) * (size_t)hd);
            }
            visits += pos + 1;
        }
    }
    attn_ctx_t c = {b,
                    kv,
                    q,
                    out,
                    n_heads,
                    scale,
                    (int64_t)b->n_tokens * nkv,
                    bs == 16 && hd % 16 == 0 ? g_attn_block16 : duet__cpu_attn_block_portable};
    int nt = pool ? duet_cpu_pool_size(pool) : 1;
    /* Small steps (a few decode tokens over short contexts) are cheaper
     * than waking the pool. */
    if (nt > 1 && c.n_items > 1 && visits * n_heads * hd >= (1 << 17)) {
        int tasks = (int)DUET_MIN((int64_t)nt * 4, c.n_items);
        duet_cpu_pool_run(pool, tasks, attn_task, &c);
    } else {
        attn_task(&c, 0, 1);
    }
}

/* ---- routing ------------------------------------------------------------ */

void duet__cpu_route(const float *logits, int64_t n, int32_t E, int32_t top_k, bool norm_topk,
                     int32_t *ids, float *weights)
{
    float p[1024];
    for (int64_t r = 0; r < n; r++) {
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
        if (norm_topk)
            for (int32_t j = 0; j < top_k; j++)
                w[j] /= wsum;
    }
}

/* ---- SwiGLU, bias -------------------------------------------------------- */

typedef struct swiglu_ctx {
    const float *g, *u;
    float *o;
    int64_t dim;
} swiglu_ctx_t;

static void swiglu_rows(void *arg, int64_t r0, int64_t r1)
{
    const swiglu_ctx_t *c = arg;
    const int64_t off = r0 * c->dim;
    g_swiglu(c->g + off, c->u + off, (r1 - r0) * c->dim, c->o + off);
}

void duet__cpu_swiglu(duet_cpu_pool_t *pool, const float *gate, const float *up, int64_t n,
                      int64_t dim, float *out)
{
    pick_kernels();
    swiglu_ctx_t c = {gate, up, out, dim};
    par_rows(pool, n, dim * 8, swiglu_rows, &c);
}

void duet__cpu_add_bias(float *y, int64_t n, int64_t dim, const duet_tensor_t *bias)
{
    for (int64_t r = 0; r < n; r++)
        for (int64_t i = 0; i < dim; i++)
            y[r * dim + i] += tensor_at(bias, i);
}
