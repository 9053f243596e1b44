/* model — a Hugging Face MoE checkpoint in memory: config.json, tensors
 * memory-mapped from safetensors, and the weights of one role (a whole
 * model, an attention shard, or an expert shard holding some experts).
 *
 * Tensors point into read-only mappings of the checkpoint files; nothing is
 * copied. A tensor a role does not hold has data == NULL. The forward pass
 * (model/forward.h) and the tokenizer (model/tokenizer.h) build on this. */
#ifndef DUET_MODEL_H
#define DUET_MODEL_H

#include "base/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- dtypes and tensors ------------------------------------------------ */

typedef enum duet_dtype {
    DUET_DTYPE_F32 = 0,
    DUET_DTYPE_F16 = 1,
    DUET_DTYPE_BF16 = 2,
    DUET_DTYPE_F64 = 3,
    DUET_DTYPE_I8 = 4,
    DUET_DTYPE_U8 = 5,
    DUET_DTYPE_I16 = 6,
    DUET_DTYPE_I32 = 7,
    DUET_DTYPE_I64 = 8,
    DUET_DTYPE_BOOL = 9,
    DUET_DTYPE_COUNT
} duet_dtype_t;

DUET_API size_t duet_dtype_size(duet_dtype_t dt);
DUET_API const char *duet_dtype_name(duet_dtype_t dt); /* safetensors spelling: "BF16" */
/* Parse a safetensors dtype string; false if unknown. */
DUET_API bool duet_dtype_parse(const char *s, size_t len, duet_dtype_t *out);

#define DUET_TENSOR_MAX_DIMS 4

typedef struct duet_tensor {
    duet_dtype_t dtype;
    int ndim;
    int64_t shape[DUET_TENSOR_MAX_DIMS]; /* row-major, shape[ndim-1] fastest */
    const void *data;                    /* NULL: not present / not held by this role */
    size_t nbytes;
} duet_tensor_t;

static inline int64_t duet_tensor_numel(const duet_tensor_t *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* bf16/f16 <-> f32 scalar conversions (exact widening; RNE narrowing). */
static inline float duet_bf16_to_f32(uint16_t h)
{
    union {
        uint32_t u;
        float f;
    } v = {.u = (uint32_t)h << 16};
    return v.f;
}
static inline uint16_t duet_f32_to_bf16(float f)
{
    union {
        float f;
        uint32_t u;
    } v = {.f = f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
        return (uint16_t)((v.u >> 16) | 0x40u);
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}
DUET_API float duet_f16_to_f32(uint16_t h);
DUET_API uint16_t duet_f32_to_f16(float f);

/* ---- config.json ------------------------------------------------------- */

typedef enum duet_arch {
    DUET_ARCH_MIXTRAL = 0,
    DUET_ARCH_QWEN2_MOE = 1, /* shared expert + sigmoid gate, q/k/v biases */
    DUET_ARCH_QWEN3_MOE = 2, /* per-head q/k RMSNorm, explicit head_dim, norm_topk_prob */
    DUET_ARCH_OLMOE = 3,     /* q/k RMSNorm over the whole projection */
} duet_arch_t;

typedef enum duet_qk_norm {
    DUET_QK_NORM_NONE = 0,
    DUET_QK_NORM_HEAD = 1, /* RMSNorm of width head_dim applied to each head (qwen3_moe) */
    DUET_QK_NORM_FULL = 2, /* RMSNorm of width n_heads*head_dim over the projection (olmoe) */
} duet_qk_norm_t;

#define DUET_MAX_EOS 8

typedef struct duet_config {
    duet_arch_t arch;
    char model_type[32];
    int hidden;       /* hidden_size */
    int n_layers;     /* num_hidden_layers */
    int n_heads;      /* num_attention_heads */
    int n_kv_heads;   /* num_key_value_heads */
    int head_dim;     /* head_dim, or hidden / n_heads when absent or null */
    int vocab;        /* vocab_size */
    int n_experts;    /* num_local_experts or num_experts */
    int top_k;        /* num_experts_per_tok */
    int expert_dim;   /* mixtral: intermediate_size; others: moe_intermediate_size */
    int dense_dim;    /* intermediate_size of dense MLP layers (qwen2/3_moe mlp_only_layers) */
    int shared_dim;   /* qwen2_moe shared_expert_intermediate_size; 0 = no shared expert */
    bool norm_topk_prob; /* renormalise the top-k weights to sum to 1 */
    bool qkv_bias;       /* q/k/v projections have biases (qwen2_moe) */
    duet_qk_norm_t qk_norm;
    bool tie_embeddings; /* lm_head shares embed_tokens */
    float rms_eps;
    float rope_theta;
    int max_pos; /* max_position_embeddings */
    /* Sparse (MoE) layers: layer l is sparse iff sparse_layer[l]; the others
     * use a dense SwiGLU MLP of width dense_dim (qwen2_moe/qwen3_moe
     * decoder_sparse_step and mlp_only_layers). */
    bool *sparse_layer; /* n_layers entries, owned */
    int bos_id;         /* -1 if none */
    int eos_ids[DUET_MAX_EOS];
    int n_eos;
} duet_config_t;

/* Parse config.json text. `name` is used in error details (a path). On
 * failure the detail names the file and the key. */
DUET_API duet_status_t duet_config_parse(const char *json, size_t len, const char *name,
                                         duet_config_t *out);
DUET_API duet_status_t duet_config_load(const char *path, duet_config_t *out);
DUET_API void duet_config_cleanup(duet_config_t *cfg);

/* ---- weights ----------------------------------------------------------- */

typedef struct duet_expert_weights {
    duet_tensor_t gate; /* [dim, hidden]  mixtral w1, others gate_proj */
    duet_tensor_t up;   /* [dim, hidden]  mixtral w3, others up_proj */
    duet_tensor_t down; /* [hidden, dim]  mixtral w2, others down_proj */
} duet_expert_weights_t;

typedef struct duet_layer_weights {
    /* attention half */
    duet_tensor_t attn_norm;      /* [hidden] input_layernorm */
    duet_tensor_t wq, wk, wv, wo; /* [n_heads*hd, hidden], [n_kv*hd, hidden] x2, [hidden, n_heads*hd] */
    duet_tensor_t bq, bk, bv;     /* biases (qwen2_moe) */
    duet_tensor_t q_norm, k_norm; /* [head_dim] or [n_heads*hd]/[n_kv*hd] (see qk_norm) */
    duet_tensor_t ffn_norm;       /* [hidden] post_attention_layernorm */
    duet_tensor_t router;         /* [n_experts, hidden] gate (sparse layers) */
    /* expert half */
    duet_expert_weights_t *experts; /* [n_experts]; data NULL for experts not held */
    duet_expert_weights_t shared;   /* qwen2_moe shared expert (attention role holds it) */
    duet_tensor_t shared_gate;      /* [1, hidden] sigmoid gate of the shared expert */
    duet_expert_weights_t dense;    /* dense MLP of non-sparse layers */
} duet_layer_weights_t;

typedef enum duet_role {
    DUET_ROLE_FULL = 0,      /* everything: single-process engine */
    DUET_ROLE_ATTENTION = 1, /* embeddings, attention, norms, router gates, shared expert, dense MLPs, LM head */
    DUET_ROLE_EXPERT = 2,    /* only the listed experts, for every layer */
} duet_role_t;

typedef struct duet_load_opts {
    duet_role_t role;
    const int *experts; /* DUET_ROLE_EXPERT: expert ids to hold */
    int n_experts;
    bool prefault; /* touch the held tensors' pages now (no first-request page faults) */
    /* Progress callback for long loads (done/total bytes); may be NULL. */
    void (*progress)(void *arg, size_t done, size_t total);
    void *progress_arg;
} duet_load_opts_t;

typedef struct duet_model {
    duet_config_t cfg;
    duet_role_t role;
    bool *holds_expert; /* [n_experts] */
    duet_tensor_t embed;      /* [vocab, hidden] */
    duet_tensor_t final_norm; /* [hidden] */
    duet_tensor_t lm_head;    /* [vocab, hidden] (== embed when tied) */
    duet_layer_weights_t *layers; /* [n_layers] */
    size_t held_bytes;            /* bytes of the tensors this role holds */
    struct duet_model_files *files; /* private: the mapped checkpoint */
} duet_model_t;

/* Load a model directory in Hugging Face layout (config.json plus
 * model.safetensors or model.safetensors.index.json with shards). Every
 * tensor the role needs is validated (present, dtype, shape, bounds) before
 * use. opts may be NULL (full role). */
DUET_API duet_status_t duet_model_load(const char *dir, const duet_load_opts_t *opts,
                                       duet_model_t **out);
DUET_API void duet_model_destroy(duet_model_t **model_p);

#ifdef __cplusplus
}
#endif
#endif /* DUET_MODEL_H */
