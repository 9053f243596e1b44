/* cpu backend — model/backend.h's ops table on the host: buffers are
 * aligned host memory, GEMMs go to duet_cpu_matmul, the rest to cpu/ops.c,
 * all on one thread pool (the caller counts as a thread). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_kernels.h"
#include "cpu/ops.h"
#include "model/backend.h"
#include "model/sampling.h"

typedef struct cpu_backend {
    duet_backend_t base;
    duet_cpu_pool_t *pool;
    duet_cpu_prec_t prec;    /* GEMM precision (exact unless bf16 was asked for and runs here) */
    duet_sampler_t *sampler; /* created on the first sample call, per vocabulary */
} cpu_backend_t;

static cpu_backend_t *cpu(duet_backend_t *be)
{
    return be->impl; /* not a cast of be: a wrapper may reuse impl with its own ops */
}

static void cpu_destroy(duet_backend_t *be)
{
    cpu_backend_t *c = cpu(be);
    duet_sampler_destroy(&c->sampler);
    duet_cpu_pool_destroy(&c->pool);
    duet_free(c);
}

static duet_status_t cpu_buf_alloc(duet_backend_t *be, size_t bytes, void **out)
{
    (void)be;
    size_t sz = (bytes + 63) & ~(size_t)63;
    void *p = duet_aligned_alloc(64, sz ? sz : 64);
    if (!p)
        return duet_errorf(DUET_ERR_NOMEM, "cpu backend: cannot allocate %zu bytes", bytes);
    *out = p;
    return DUET_OK;
}

static void cpu_buf_free(duet_backend_t *be, void *buf)
{
    (void)be;
    duet_free(buf);
}

static duet_status_t cpu_buf_upload(duet_backend_t *be, void *dst, const void *src, size_t n)
{
    (void)be;
    if (dst != src && n)
        memcpy(dst, src, n);
    return DUET_OK;
}

static duet_status_t cpu_buf_download(duet_backend_t *be, void *dst, const void *src, size_t n)
{
    (void)be;
    if (dst != src && n)
        memcpy(dst, src, n);
    return DUET_OK;
}

static duet_status_t cpu_buf_zero(duet_backend_t *be, void *dst, size_t n)
{
    (void)be;
    memset(dst, 0, n);
    return DUET_OK;
}

static duet_status_t cpu_sync(duet_backend_t *be)
{
    (void)be;
    return DUET_OK;
}

static duet_status_t cpu_weights_prepare(duet_backend_t *be, const duet_model_t *model)
{
    (void)be;
    (void)model; /* weights are used in place from the mapping */
    return DUET_OK;
}

static bool float_dtype(duet_dtype_t dt)
{
    return dt == DUET_DTYPE_F32 || dt == DUET_DTYPE_F16 || dt == DUET_DTYPE_BF16;
}

static duet_status_t cpu_matmul(duet_backend_t *be, const float *x, int64_t n, int64_t in,
                                const duet_tensor_t *w, const duet_tensor_t *bias, float *y,
                                bool accumulate)
{
    if (!float_dtype(w->dtype))
        return duet_errorf(DUET_ERR_UNSUPPORTED, "cpu backend: matmul with %s weights",
                           duet_dtype_name(w->dtype));
    int64_t out = w->shape[0];
    duet_cpu_matmul_prec(cpu(be)->pool, cpu(be)->prec, x, n, in, w->data, w->dtype, out, y,
                         accumulate);
    if (bias && bias->data)
        duet__cpu_add_bias(y, n, out, bias);
    return DUET_OK;
}

static duet_status_t cpu_matmul_batch(duet_backend_t *be, const duet_matmul_desc_t *mms, int count)
{
    enum { CHUNK = 64 };
    duet_cpu_mm_t mm[CHUNK];
    for (int i0 = 0; i0 < count; i0 += CHUNK) {
        int n = DUET_MIN(CHUNK, count - i0);
        for (int i = 0; i < n; i++) {
            const duet_matmul_desc_t *d = &mms[i0 + i];
            if (!float_dtype(d->w->dtype))
                return duet_errorf(DUET_ERR_UNSUPPORTED, "cpu backend: matmul with %s weights",
                                   duet_dtype_name(d->w->dtype));
            mm[i] = (duet_cpu_mm_t){d->x,        d->n,           d->in, d->w->data,
                                    d->w->dtype, d->w->shape[0], d->y,  d->accumulate};
        }
        duet_cpu_matmul_batch_prec(cpu(be)->pool, cpu(be)->prec, mm, n);
        for (int i = 0; i < n; i++) {
            const duet_matmul_desc_t *d = &mms[i0 + i];
            if (d->bias && d->bias->data)
                duet__cpu_add_bias(d->y, d->n, d->w->shape[0], d->bias);
        }
    }
    return DUET_OK;
}

static duet_status_t cpu_lm_head(duet_backend_t *be, const float *x, int64_t n, int64_t in,
                                 const duet_tensor_t *w, float *logits)
{
    return cpu_matmul(be, x, n, in, w, NULL, logits, false);
}

static duet_status_t cpu_rmsnorm(duet_backend_t *be, const float *x, int64_t rows, int64_t dim,
                                 const duet_tensor_t *weight, float eps, float *y)
{
    duet__cpu_rmsnorm(cpu(be)->pool, x, rows, dim, weight, eps, y);
    return DUET_OK;
}

static duet_status_t cpu_rope(duet_backend_t *be, float *q, float *k, int64_t n,
                              const int32_t *positions, int32_t n_heads, int32_t n_kv_heads,
                              int32_t head_dim, float theta, duet_dtype_t freq_dtype)
{
    if (head_dim > 1024 || head_dim % 2)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "cpu backend: rope with head_dim %d", head_dim);
    duet__cpu_rope(cpu(be)->pool, q, k, n, positions, n_heads, n_kv_heads, head_dim, theta,
                   freq_dtype);
    return DUET_OK;
}

static duet_status_t cpu_attention(duet_backend_t *be, const duet_attn_batch_t *batch,
                                   const duet_kv_layer_t *kv, const float *q, const float *k,
                                   const float *v, int32_t n_heads, float scale, float *out)
{
    if (kv->head_dim > ATTN_MAX_HD || kv->block_size > ATTN_MAX_BS ||
        n_heads / kv->n_kv_heads > ATTN_MAX_G)
        return duet_errorf(DUET_ERR_UNSUPPORTED,
                           "cpu backend: attention with head_dim %d, block size %d, %d query heads "
                           "per KV head (max %d, %d, %d)",
                           kv->head_dim, kv->block_size, n_heads / kv->n_kv_heads, ATTN_MAX_HD,
                           ATTN_MAX_BS, ATTN_MAX_G);
    duet__cpu_attention(cpu(be)->pool, batch, kv, q, k, v, n_heads, scale, out);
    return DUET_OK;
}

static duet_status_t cpu_route(duet_backend_t *be, const float *logits, int64_t n,
                               int32_t n_experts, int32_t top_k, bool norm_topk, int32_t *ids,
                               float *weights)
{
    (void)be;
    if (n_experts > 1024 || top_k > n_experts || top_k < 1)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "cpu backend: routing top-%d of %d experts", top_k,
                           n_experts);
    duet__cpu_route(logits, n, n_experts, top_k, norm_topk, ids, weights);
    return DUET_OK;
}

static duet_status_t cpu_swiglu(duet_backend_t *be, const float *gate, const float *up, int64_t n,
                                int64_t dim, float *out)
{
    duet__cpu_swiglu(cpu(be)->pool, gate, up, n, dim, out);
    return DUET_OK;
}

static duet_status_t cpu_gather_rows(duet_backend_t *be, const float *src, int64_t dim,
                                     const int32_t *idx, int64_t n, float *dst)
{
    (void)be;
    for (int64_t i = 0; i < n; i++)
        memcpy(dst + i * dim, src + (int64_t)idx[i] * dim, sizeof(float) * (size_t)dim);
    return DUET_OK;
}

static duet_status_t cpu_scatter_add_rows(duet_backend_t *be, const float *src, int64_t dim,
                                          const int32_t *idx, const float *w, int64_t n, float *dst)
{
    (void)be;
    for (int64_t i = 0; i < n; i++) {
        float a = w ? w[i] : 1.0f;
        float *d = dst + (int64_t)idx[i] * dim;
        const float *s = src + i * dim;
        for (int64_t j = 0; j < dim; j++)
            d[j] += a * s[j];
    }
    return DUET_OK;
}

static duet_status_t cpu_sigmoid_gate_add(duet_backend_t *be, const float *x, const float *g,
                                          int64_t rows, int64_t dim, float *y)
{
    (void)be;
    for (int64_t r = 0; r < rows; r++) {
        float s = 1.0f / (1.0f + expf(-g[r]));
        for (int64_t j = 0; j < dim; j++)
            y[r * dim + j] += s * x[r * dim + j];
    }
    return DUET_OK;
}

static duet_status_t cpu_add(duet_backend_t *be, const float *x, int64_t n, float *y)
{
    (void)be;
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
    return DUET_OK;
}

static duet_status_t cpu_embed(duet_backend_t *be, const duet_tensor_t *table, const int32_t *ids,
                               int64_t n, float *out)
{
    (void)be;
    if (!float_dtype(table->dtype))
        return duet_errorf(DUET_ERR_UNSUPPORTED, "cpu backend: embedding table of %s",
                           duet_dtype_name(table->dtype));
    int64_t dim = table->shape[1];
    for (int64_t i = 0; i < n; i++)
        duet__cpu_tensor_read_f32(table, (int64_t)ids[i] * dim, dim, out + i * dim);
    return DUET_OK;
}

static duet_status_t cpu_sample(duet_backend_t *be, const float *logits, int64_t n, int32_t vocab,
                                const duet_sampling_params_t *params, const int64_t *positions,
                                int32_t *out)
{
    cpu_backend_t *c = cpu(be);
    if (!c->sampler || duet_sampler_vocab(c->sampler) != vocab) {
        duet_sampler_destroy(&c->sampler);
        duet_status_t st = duet_sampler_create(vocab, &c->sampler);
        if (st)
            return st;
    }
    for (int64_t i = 0; i < n; i++) {
        duet_status_t st =
            duet_sampler_sample(c->sampler, logits + i * vocab, &params[i], positions[i], &out[i]);
        if (st)
            return st;
    }
    return DUET_OK;
}

static const duet_backend_ops_t cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .buf_upload = cpu_buf_upload,
    .buf_download = cpu_buf_download,
    .buf_zero = cpu_buf_zero,
    .sync = cpu_sync,
    .weights_prepare = cpu_weights_prepare,
    .matmul = cpu_matmul,
    .matmul_batch = cpu_matmul_batch,
    .lm_head = cpu_lm_head,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .route = cpu_route,
    .swiglu = cpu_swiglu,
    .gather_rows = cpu_gather_rows,
    .scatter_add_rows = cpu_scatter_add_rows,
    .sigmoid_gate_add = cpu_sigmoid_gate_add,
    .add = cpu_add,
    .embed = cpu_embed,
    .sample = cpu_sample,
};

/* The precision asked for: opts, or with FP32 there (the default) the
 * environment's DUET_PRECISION; then what this CPU runs. */
static duet_status_t resolve_precision(const duet_backend_opts_t *opts, duet_cpu_prec_t *out)
{
    int want = opts ? (int)opts->precision : (int)DUET_PRECISION_FP32;
    if (want != DUET_PRECISION_FP32 && want != DUET_PRECISION_BF16)
        return duet_errorf(DUET_ERR_INVALID, "cpu backend: unknown precision %d", want);
    const char *env = getenv("DUET_PRECISION");
    if (want == DUET_PRECISION_FP32 && env && *env) {
        int p = duet_precision_parse(env);
        if (p < 0)
            return duet_errorf(DUET_ERR_INVALID,
                               "DUET_PRECISION='%s' in the environment: want fp32 or bf16", env);
        want = p;
    }
    *out = DUET_CPU_PREC_EXACT;
    if (want == DUET_PRECISION_BF16) {
        if (duet_cpu_bf16_supported())
            *out = DUET_CPU_PREC_BF16;
        else
            DUET_LOG_W("cpu",
                       "precision bf16: this CPU lacks avx512_bf16 (or kernels %s are "
                       "forced); using exact fp32",
                       duet_cpu_isa_name());
    }
    return DUET_OK;
}

duet_status_t duet_cpu_backend_create(const duet_backend_opts_t *opts, duet_backend_t **out)
{
    duet_cpu_prec_t prec = DUET_CPU_PREC_EXACT;
    duet_status_t st = resolve_precision(opts, &prec);
    if (st)
        return st;
    cpu_backend_t *c = duet_calloc(1, sizeof(*c));
    if (!c)
        return duet_errorf(DUET_ERR_NOMEM, "cpu backend: out of memory");
    c->pool = duet_cpu_pool_create(opts ? opts->n_threads : 0);
    if (!c->pool) {
        duet_free(c);
        return duet_errorf(DUET_ERR_NOMEM, "cpu backend: cannot start the thread pool");
    }
    c->prec = prec;
    c->base.ops = &cpu_ops;
    c->base.impl = c;
    *out = &c->base;
    return DUET_OK;
}
