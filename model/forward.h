/* forward — the forward pass of an HF MoE decoder, cut where the
 * disaggregated pipeline cuts it, expressed only in backend ops.
 *
 * Attention side (duet_fwd_t, one per attention shard; holds the KV cache):
 *   duet_fwd_begin      a micro-batch (duet_ubatch_t): reserve KV, embed
 *   duet_fwd_attention  layer l, attention half: norm, QKV (+bias), q/k
 *                       norm, RoPE, paged attention, o-proj, residual,
 *                       ffn norm, then on sparse layers router → top-k ids
 *                       and weights (+ qwen2_moe shared expert, gated, added
 *                       to the residual), on dense layers the MLP itself.
 *                       Leaves the normed hidden states and the routes.
 *   duet_fwd_combine    layer l: residual += Σ weight · expert output
 *   duet_fwd_logits     final norm + LM head for the rows asked for
 *   duet_fwd_sample     one token per logits row
 * Expert side (duet_experts_t, one per expert shard, no KV):
 *   duet_experts_forward  layer l, rows grouped by expert: SwiGLU FFN, one
 *                         GEMM per expert over all its rows
 * Between them, duet_dispatch_build turns routes into per-expert groups.
 * duet_engine_t composes all of it in one process (duet generate, tests).
 *
 * Micro-batch state (residual stream, routes) lives in duet_ubatch_t, so an
 * attention shard can keep several micro-batches in flight across layers;
 * the scratch of one layer-half lives in duet_fwd_t. Everything is sized at
 * creation: steps do not allocate. Row buffers handed across the cut
 * (normed states, expert inputs/outputs) are backend memory. */
#ifndef DUET_MODEL_FORWARD_H
#define DUET_MODEL_FORWARD_H

#include "base/base.h"
#include "model/backend.h"
#include "model/kvcache.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duet_fwd duet_fwd_t;
typedef struct duet_ubatch duet_ubatch_t;
typedef struct duet_experts duet_experts_t;
typedef struct duet_engine duet_engine_t;

typedef enum duet_logits_mode {
    DUET_LOGITS_NONE = 0, /* no output (a prefill chunk that is not the last) */
    DUET_LOGITS_LAST = 1, /* the last token's logits (decode, end of prefill) */
    DUET_LOGITS_ALL = 2,  /* every token's logits (scoring, tests) */
} duet_logits_mode_t;

/* One sequence's part of a step: n_tokens new tokens appended to KV
 * sequence `seq` (prefill chunk: many; decode: one). */
typedef struct duet_seq_input {
    int32_t seq;
    int32_t n_tokens;
    const int32_t *tokens;
    duet_logits_mode_t logits;
} duet_seq_input_t;

/* ---- attention side ---------------------------------------------------- */

/* RoPE inverse frequencies. HF keeps them in a buffer that is not in the
 * checkpoint: a model cast to bf16 (as it is when trained or saved in bf16)
 * carries them rounded to bf16 even when later run in float32, while a
 * fresh from_pretrained(dtype=float32) recomputes them in float32. The two
 * differ by up to ~1e-2 in logits at position 64, so pick the one the model
 * was made with. The bundled references (mixtral-tiny, pycoder-moe) are the
 * first kind. */
typedef enum duet_rope_freq {
    DUET_ROPE_FREQ_CHECKPOINT = 0, /* rounded to the checkpoint's weight dtype (default) */
    DUET_ROPE_FREQ_F32 = 1,        /* float32, as a fresh float32 load computes them */
} duet_rope_freq_t;

typedef struct duet_fwd_opts {
    int32_t max_tokens; /* tokens per micro-batch (0: 512) */
    int32_t max_seqs;   /* sequences per micro-batch (0: 64) */
    int32_t max_logits; /* logits rows per micro-batch (0: max_seqs) */
    duet_rope_freq_t rope_freq;
} duet_fwd_opts_t;

/* The model must hold the attention role's tensors (DUET_ROLE_FULL or
 * DUET_ROLE_ATTENTION); be, model and kv must outlive the context. */
DUET_API duet_status_t duet_fwd_create(duet_backend_t *be, const duet_model_t *model,
                                       duet_kvcache_t *kv, const duet_fwd_opts_t *opts,
                                       duet_fwd_t **out);
DUET_API void duet_fwd_destroy(duet_fwd_t **fwd_p);

/* A micro-batch sized by the context's options. */
DUET_API duet_status_t duet_ubatch_create(duet_fwd_t *fwd, duet_ubatch_t **out);
DUET_API void duet_ubatch_destroy(duet_ubatch_t **ub_p);

/* Start a micro-batch: validate ids, reserve KV for every sequence (all or
 * nothing: CAPACITY leaves the cache unchanged), embed the tokens. */
DUET_API duet_status_t duet_fwd_begin(duet_fwd_t *fwd, duet_ubatch_t *ub, int32_t n_seqs,
                                      const duet_seq_input_t *seqs);

/* Undo a begun micro-batch that will not finish (a failed step, a shard
 * that died): its sequences go back to the lengths they had before
 * duet_fwd_begin, freeing blocks reserved for it. */
DUET_API void duet_fwd_abort(duet_fwd_t *fwd, duet_ubatch_t *ub);

/* Attention half of layer `layer`. On a sparse layer the routes (see
 * duet_ubatch_routes) and the normed states are left for dispatch; on a
 * dense layer the MLP is done and there is nothing to dispatch. */
DUET_API duet_status_t duet_fwd_attention(duet_fwd_t *fwd, duet_ubatch_t *ub, int32_t layer);

/* Combine for layer `layer`: residual[row_token[i]] += row_weight[i] * y[i]
 * for n_rows expert-output rows y (backend memory, [n_rows, hidden]). */
DUET_API duet_status_t duet_fwd_combine(duet_fwd_t *fwd, duet_ubatch_t *ub, int32_t layer,
                                        const float *y, const int32_t *row_token,
                                        const float *row_weight, int64_t n_rows);

/* Final norm + LM head for the rows the inputs asked for (in input order,
 * ALL rows of a sequence in position order). Returns the row count; the
 * logits stay in the micro-batch (backend memory, see duet_ubatch_logits). */
DUET_API duet_status_t duet_fwd_logits(duet_fwd_t *fwd, duet_ubatch_t *ub, int32_t *n_rows_out);
/* Copy the logits rows to host memory [n_rows, vocab]. */
DUET_API duet_status_t duet_fwd_logits_download(duet_fwd_t *fwd, duet_ubatch_t *ub, float *host);
/* Sample one token per logits row; params [n_rows] (host). A row's draw is
 * seeded by the position of the token it produces. */
DUET_API duet_status_t duet_fwd_sample(duet_fwd_t *fwd, duet_ubatch_t *ub,
                                       const duet_sampling_params_t *params, int32_t *tokens_out);

/* Micro-batch accessors. */
DUET_API int32_t duet_ubatch_n_tokens(const duet_ubatch_t *ub);
/* Normed hidden states [n_tokens, hidden] (backend memory): expert input. */
DUET_API const float *duet_ubatch_normed(const duet_ubatch_t *ub);
/* Routes of the last sparse attention half: ids/weights [n_tokens, top_k]
 * (host); false when the last layer was dense (nothing to dispatch). */
DUET_API bool duet_ubatch_routes(const duet_ubatch_t *ub, const int32_t **ids,
                                 const float **weights, int32_t *top_k);
DUET_API const float *duet_ubatch_logits(const duet_ubatch_t *ub);
/* Position of token i of the micro-batch. */
DUET_API int32_t duet_ubatch_position(const duet_ubatch_t *ub, int32_t i);

/* ---- dispatch ---------------------------------------------------------- */

/* Routes grouped by expert: rows [offset[e], offset[e]+count[e]) go to
 * expert e; row r is token row_token[r] with weight row_weight[r]. Within an
 * expert rows are in token order. */
typedef struct duet_dispatch {
    int32_t n_experts;
    int32_t n_rows;
    int32_t max_rows;
    int32_t *count;     /* [n_experts] */
    int32_t *offset;    /* [n_experts + 1] */
    int32_t *row_token; /* [max_rows] */
    float *row_weight;  /* [max_rows] */
} duet_dispatch_t;

DUET_API duet_status_t duet_dispatch_init(duet_dispatch_t *d, int32_t n_experts, int32_t max_rows);
DUET_API void duet_dispatch_cleanup(duet_dispatch_t *d);
DUET_API duet_status_t duet_dispatch_build(duet_dispatch_t *d, const int32_t *ids,
                                           const float *weights, int32_t n_tokens, int32_t top_k);

/* ---- expert side ------------------------------------------------------- */

/* max_rows: rows one call may carry. The model must hold the experts that
 * will be asked for (any role); be and model must outlive the context. */
DUET_API duet_status_t duet_experts_create(duet_backend_t *be, const duet_model_t *model,
                                           int32_t max_rows, duet_experts_t **out);
DUET_API void duet_experts_destroy(duet_experts_t **ex_p);
/* y = FFN_e(x) for rows grouped by expert: group g is expert expert_ids[g]
 * with counts[g] consecutive rows of x [Σcounts, hidden] (backend memory);
 * y has the same layout. Empty groups are allowed. NOT_FOUND if an expert
 * is not held, CAPACITY if Σcounts > max_rows. */
DUET_API duet_status_t duet_experts_forward(duet_experts_t *ex, int32_t layer, int32_t n_groups,
                                            const int32_t *expert_ids, const int32_t *counts,
                                            const float *x, float *y);

/* ---- single-process engine ---------------------------------------------- */

typedef struct duet_engine_opts {
    duet_fwd_opts_t fwd;
    duet_kvcache_opts_t kv;
} duet_engine_opts_t;

/* Full-role model on one backend: KV cache, attention context, one
 * micro-batch, the experts and the local dispatch. */
DUET_API duet_status_t duet_engine_create(duet_backend_t *be, const duet_model_t *model,
                                          const duet_engine_opts_t *opts, duet_engine_t **out);
DUET_API void duet_engine_destroy(duet_engine_t **eng_p);
DUET_API duet_kvcache_t *duet_engine_kv(duet_engine_t *eng);
DUET_API duet_fwd_t *duet_engine_fwd(duet_engine_t *eng);
/* One step over a mixed batch; logits (host, may be NULL) receives the rows
 * asked for, n_rows_out (may be NULL) their count. */
DUET_API duet_status_t duet_engine_step(duet_engine_t *eng, int32_t n_seqs,
                                        const duet_seq_input_t *seqs, float *logits,
                                        int32_t *n_rows_out);
/* After a step: sample one token per logits row. */
DUET_API duet_status_t duet_engine_sample(duet_engine_t *eng, const duet_sampling_params_t *params,
                                          int32_t *tokens_out);

#ifdef __cplusplus
}
#endif
#endif
