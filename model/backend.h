/* backend — the compute backend as a const ops table.
 *
 * The forward pass (model/forward.h) calls nothing but this table, so a
 * backend (cpu/ now, a CUDA one later) is swapped without touching it.
 *
 * Memory model. Activations, the KV cache and every intermediate live in
 * backend buffers: buf_alloc returns a backend address (host memory for
 * "cpu", device memory for "cuda") that only the backend's ops dereference;
 * the host moves bytes in and out with buf_upload / buf_download. Pointers
 * typed `float *` in the ops below are such backend addresses (they may be
 * offset inside a buffer). Weights are the model's duet_tensor_t (host,
 * memory-mapped); weights_prepare lets a device backend stage the tensors it
 * will be handed and find its copy by tensor address later.
 *
 * Index and metadata arrays (token ids, positions, block tables, routing ids
 * and weights) are small and live in host memory (`const int32_t *` etc.);
 * a device backend stages them itself. Routing decisions come back to host
 * memory because the dispatcher that sends tokens to expert shards reads
 * them there.
 *
 * Ops are synchronous with respect to each other (a device backend may queue
 * them on one stream); buf_download and sync wait for completion. An op a
 * backend does not implement points to a stub returning DUET_ERR_UNSUPPORTED.
 * Ops that cannot fail return void; their arguments are checked by the
 * forward pass, which owns the shapes. */
#ifndef DUET_MODEL_BACKEND_H
#define DUET_MODEL_BACKEND_H

#include "base/base.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duet_backend duet_backend_t;
typedef struct duet_backend_ops duet_backend_ops_t;

/* ---- attention batch description --------------------------------------- */

/* One sequence's slice of an attention batch: tokens [tok0, tok0+n_tokens)
 * of the batch are positions [pos0, pos0+n_tokens) of the sequence, whose
 * KV cache blocks are block_table[0 .. ceil((pos0+n_tokens)/block_size)).
 * A prefill chunk has n_tokens > 1 (pos0 = tokens already cached), a decode
 * step n_tokens = 1. Attention is causal: token at position p sees 0..p. */
typedef struct duet_attn_seq {
    int32_t tok0;
    int32_t n_tokens;
    int32_t pos0;
    const int32_t *block_table; /* host */
} duet_attn_seq_t;

typedef struct duet_attn_batch {
    int32_t n_seqs;
    const duet_attn_seq_t *seqs; /* host, n_seqs entries, tok0 ascending and contiguous */
    int32_t n_tokens;            /* sum of n_tokens */
    const int32_t *positions;    /* host [n_tokens]: position of each token */
} duet_attn_batch_t;

/* One layer's paged KV storage (f32, backend memory): per (block, KV head)
 * a slab of block_size * head_dim floats in K and in V, at offset
 * (block * n_kv_heads + kv_head) * block_size * head_dim. The layout inside
 * a slab is the backend's (cpu: K transposed [head_dim][block_size], V
 * [block_size][head_dim]); only the attention op reads or writes it. */
typedef struct duet_kv_layer {
    float *k;
    float *v;
    int32_t n_blocks;
    int32_t block_size;
    int32_t n_kv_heads;
    int32_t head_dim;
} duet_kv_layer_t;

/* ---- sampling ---------------------------------------------------------- */

/* temperature <= 0 (or top_k == 1) is greedy. top_k <= 0: no top-k cut;
 * top_p >= 1: no nucleus cut. The random draw for a token is a pure function
 * of (seed, position), so replaying a request reproduces its tokens. */
typedef struct duet_sampling_params {
    float temperature;
    int32_t top_k;
    float top_p;
    uint64_t seed;
} duet_sampling_params_t;

/* One GEMM of a batch (see matmul_batch). */
typedef struct duet_matmul_desc {
    const float *x;
    int64_t n, in;
    const duet_tensor_t *w;
    const duet_tensor_t *bias; /* may be NULL */
    float *y;
    bool accumulate;
} duet_matmul_desc_t;

/* ---- the ops table ----------------------------------------------------- */

struct duet_backend_ops {
    const char *name;
    /* Backend buffers are device memory the host cannot dereference: data
     * crossing to the data plane goes through buf_download / buf_upload
     * (false: host memory, callers may read and write it directly). */
    bool device_memory;
    void (*destroy)(duet_backend_t *be);

    /* memory */
    duet_status_t (*buf_alloc)(duet_backend_t *be, size_t bytes, void **out);
    void (*buf_free)(duet_backend_t *be, void *buf);
    duet_status_t (*buf_upload)(duet_backend_t *be, void *dst, const void *host_src, size_t bytes);
    duet_status_t (*buf_download)(duet_backend_t *be, void *host_dst, const void *src,
                                  size_t bytes);
    duet_status_t (*buf_zero)(duet_backend_t *be, void *dst, size_t bytes);
    duet_status_t (*sync)(duet_backend_t *be);
    /* Make the tensors of `model` usable by later ops (device upload, page
     * prefault); called once per model before its first forward step. */
    duet_status_t (*weights_prepare)(duet_backend_t *be, const duet_model_t *model);

    /* y[n, out] (=|+=) x[n, in] · W[out, in]^T (+ bias[out]); W of dtype BF16,
     * F16 or F32, bias (may be NULL) of any float dtype. GEMV when n == 1. */
    duet_status_t (*matmul)(duet_backend_t *be, const float *x, int64_t n, int64_t in,
                            const duet_tensor_t *w, const duet_tensor_t *bias, float *y,
                            bool accumulate);
    /* Independent matmuls as one grouped launch (the q/k/v projections of a
     * batch, gate and up of an MLP, one projection of every active expert):
     * results equal separate matmul calls; no y may overlap another's x or y. */
    duet_status_t (*matmul_batch)(duet_backend_t *be, const duet_matmul_desc_t *mms, int count);
    /* The same for the LM head (a separate entry so a backend can use a
     * vocabulary-parallel or low-precision path there). */
    duet_status_t (*lm_head)(duet_backend_t *be, const float *x, int64_t n, int64_t in,
                             const duet_tensor_t *w, float *logits);

    /* y[r] = x[r] / rms(x[r]) * weight, rows of width `dim` (in place allowed). */
    duet_status_t (*rmsnorm)(duet_backend_t *be, const float *x, int64_t rows, int64_t dim,
                             const duet_tensor_t *weight, float eps, float *y);
    /* Rotary embedding in place, HF rotate_half convention (pairs i, i+hd/2),
     * q [n, n_heads*hd], k [n, n_kv*hd] (k may be NULL), positions host [n].
     * inv_freq = 1 / theta^(2i/hd) in f32, then rounded to freq_dtype when
     * that is BF16/F16: HF holds inv_freq as a buffer that goes through the
     * checkpoint's dtype when a bf16 model is loaded, and its float32
     * results depend on it (errors grow with position otherwise). */
    duet_status_t (*rope)(duet_backend_t *be, float *q, float *k, int64_t n,
                          const int32_t *positions, int32_t n_heads, int32_t n_kv_heads,
                          int32_t head_dim, float theta, duet_dtype_t freq_dtype);
    /* Store k, v [n_tokens, n_kv*hd] of the batch into the cache, then
     * out[n_tokens, n_heads*hd] = softmax(q k^T * scale, causal) v per head
     * (GQA: head h reads KV head h / (n_heads / n_kv)). */
    duet_status_t (*attention)(duet_backend_t *be, const duet_attn_batch_t *batch,
                               const duet_kv_layer_t *kv, const float *q, const float *k,
                               const float *v, int32_t n_heads, float scale, float *out);

    /* Routing: per row of logits [n, n_experts], softmax over all experts,
     * keep the top_k (descending), renormalise them to sum 1 when norm_topk.
     * ids, weights: host [n, top_k]. */
    duet_status_t (*route)(duet_backend_t *be, const float *logits, int64_t n, int32_t n_experts,
                           int32_t top_k, bool norm_topk, int32_t *ids, float *weights);
    /* out[n, dim] = silu(gate) * up, gate and up [n, dim] (out may alias gate). */
    duet_status_t (*swiglu)(duet_backend_t *be, const float *gate, const float *up, int64_t n,
                            int64_t dim, float *out);
    /* dst[i] = src[idx[i]] for rows of width dim (token gather, expert dispatch). */
    duet_status_t (*gather_rows)(duet_backend_t *be, const float *src, int64_t dim,
                                 const int32_t *idx, int64_t n, float *dst);
    /* dst[idx[i]] += w[i] * src[i] for rows of width dim (w NULL: weight 1). */
    duet_status_t (*scatter_add_rows)(duet_backend_t *be, const float *src, int64_t dim,
                                      const int32_t *idx, const float *w, int64_t n, float *dst);
    /* y[r] += sigmoid(g[r]) * x[r]; g is backend memory [rows] (qwen2_moe shared expert gate). */
    duet_status_t (*sigmoid_gate_add)(duet_backend_t *be, const float *x, const float *g,
                                      int64_t rows, int64_t dim, float *y);
    /* y[n] += x[n] (residual). */
    duet_status_t (*add)(duet_backend_t *be, const float *x, int64_t n, float *y);
    /* out[i] = table[ids[i]] widened to f32; ids host [n]. */
    duet_status_t (*embed)(duet_backend_t *be, const duet_tensor_t *table, const int32_t *ids,
                           int64_t n, float *out);
    /* One token per logits row [n, vocab]; positions host [n] seed the draw
     * (see duet_sampling_params_t); params host [n]; out host [n]. */
    duet_status_t (*sample)(duet_backend_t *be, const float *logits, int64_t n, int32_t vocab,
                            const duet_sampling_params_t *params, const int64_t *positions,
                            int32_t *out);
};

/* A backend instance: the ops plus its private state. */
struct duet_backend {
    const duet_backend_ops_t *ops;
    void *impl;
};

/* The stub for operations a backend does not implement. */
DUET_API duet_status_t duet_backend_unsupported(const char *backend, const char *op);

/* Precision of the GEMMs (activations stay f32 in buffers either way). cpu:
 * BF16 for bf16-weight GEMMs of several rows, where the CPU has AVX512-BF16
 * (else it logs a notice and stays exact); with FP32 here the cpu backend
 * takes DUET_PRECISION=bf16|fp32 from the environment (duet serve). */
typedef enum duet_backend_precision {
    DUET_PRECISION_FP32 = 0, /* f32 activations, weights widened to f32, f32 compute (exact) */
    DUET_PRECISION_BF16 = 1, /* activations rounded to bf16 (f16 for f16 weights) for GEMMs,
                              * 16-bit weights, f32 accumulation */
} duet_backend_precision_t;

/* cuda: how matmul_batch runs its GEMMs. */
typedef enum duet_backend_grouped {
    DUET_GROUPED_AUTO = 0,    /* cuBLAS grouped batched GEMM where the library has it */
    DUET_GROUPED_CUBLAS = 1,  /* cublasGemmGroupedBatchedEx */
    DUET_GROUPED_STREAMS = 2, /* one cublasGemmEx per GEMM, spread over side streams */
} duet_backend_grouped_t;

typedef struct duet_backend_opts {
    int n_threads; /* cpu: threads including the caller; <= 0: all online CPUs */
    int device;    /* cuda: device ordinal */
    duet_backend_precision_t precision; /* cuda, cpu (see above) */
    duet_backend_grouped_t grouped;     /* cuda */
} duet_backend_opts_t;

/* "fp32" (also "f32", "exact") or "bf16" -> DUET_PRECISION_*; -1 otherwise
 * (for --precision flags and DUET_PRECISION). */
static inline int duet_precision_parse(const char *s)
{
    if (!s)
        return -1;
    if (!__builtin_strcmp(s, "fp32") || !__builtin_strcmp(s, "f32") ||
        !__builtin_strcmp(s, "exact"))
        return DUET_PRECISION_FP32;
    if (!__builtin_strcmp(s, "bf16"))
        return DUET_PRECISION_BF16;
    return -1;
}

static inline const char *duet_precision_name(int p)
{
    return p == DUET_PRECISION_BF16 ? "bf16" : "fp32";
}

/* ---- registry ----------------------------------------------------------
 * Backends by name. The registry is compiled into the caller (it is the
 * only code that names every backend), because model/ sits below the
 * backends in the layering and cannot link up to them. Link duet_cpu (and
 * duet_gpu where built) to use it. */
DUET_API duet_status_t duet_cpu_backend_create(const duet_backend_opts_t *opts,
                                               duet_backend_t **out);
#if defined(DUET_HAVE_CUDA_BACKEND)
DUET_API duet_status_t duet_cuda_backend_create(const duet_backend_opts_t *opts,
                                                duet_backend_t **out);
#endif

/* Open backend `name` ("cpu"; "cuda" where built). opts may be NULL.
 * Close with duet_backend_close. */
static inline duet_status_t duet_backend_open(const char *name, const duet_backend_opts_t *opts,
                                              duet_backend_t **out)
{
    static const duet_backend_opts_t defaults = {0};
    if (!opts)
        opts = &defaults;
    if (!name || !__builtin_strcmp(name, "cpu"))
        return duet_cpu_backend_create(opts, out);
#if defined(DUET_HAVE_CUDA_BACKEND)
    if (!__builtin_strcmp(name, "cuda"))
        return duet_cuda_backend_create(opts, out);
#endif
#if defined(DUET_HAVE_CUDA_BACKEND)
    return duet_errorf(DUET_ERR_NOT_FOUND,
                       "no compute backend named '%s' in this build (have: cpu, cuda)", name);
#else
    return duet_errorf(DUET_ERR_NOT_FOUND,
                       "no compute backend named '%s' in this build (have: cpu; cuda needs a "
                       "build with CUDA)", name);
#endif
}

/* Destroy a backend; accepts NULL and *be_p == NULL, clears *be_p. */
static inline void duet_backend_close(duet_backend_t **be_p)
{
    if (be_p && *be_p) {
        (*be_p)->ops->destroy(*be_p);
        *be_p = NULL;
    }
}

#ifdef __cplusplus
}
#endif
#endif /* DUET_MODEL_BACKEND_H */
