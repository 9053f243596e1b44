/* forward — attention half, expert FFN, combine, logits; and the
 * single-process engine that chains them. Only backend ops touch
 * activations; this file owns shapes, buffers and batch bookkeeping. */
#include "model/forward.h"

#include <math.h>
#include <string.h>

duet_status_t duet_backend_unsupported(const char *backend, const char *op)
{
    return duet_errorf(DUET_ERR_UNSUPPORTED, "backend '%s' does not implement %s", backend, op);
}

struct duet_fwd {
    duet_backend_t *be;
    const duet_backend_ops_t *ops;
    const duet_model_t *m;
    const duet_config_t *cfg;
    duet_kvcache_t *kv;
    duet_fwd_opts_t o;
    int32_t mlp_dim; /* widest dense / shared MLP */
    duet_dtype_t rope_freq_dtype;
    /* scratch of one layer-half (backend memory) */
    float *q, *k, *v, *att; /* [T, nh*hd], [T, nkv*hd] x2, [T, nh*hd] */
    float *rlog;            /* [T, E] router logits */
    float *mg, *mu;         /* [T, mlp_dim] */
    float *sg;              /* [T] shared expert gate logit */
    float *so;              /* [T, hidden] shared expert output */
    float *lrows;           /* [max_logits, hidden] */
    void *bufs[16];
    int n_bufs;
};

struct duet_ubatch {
    duet_fwd_t *fwd;
    int32_t n_seqs, n_tokens;
    float *h;      /* [T, hidden] residual stream (backend) */
    float *x;      /* [T, hidden] normed states (backend) */
    float *logits; /* [max_logits, vocab] (backend) */
    int32_t n_logits;
    int32_t *logit_tok;              /* [max_logits] token index of each logits row */
    int64_t *sample_pos;             /* [max_logits] position of the token each row produces */
    int32_t *tokens;                 /* [T] */
    int32_t *positions;              /* [T] */
    duet_attn_seq_t *aseqs;          /* [S] */
    int32_t *seq_ids, *n_new, *pos0; /* [S] */
    int32_t *ids;                    /* [T, top_k] */
    float *wts;                      /* [T, top_k] */
    bool routed;
    bool logits_ready;
};

static duet_status_t fwd_buf(duet_fwd_t *f, size_t bytes, float **out)
{
    void *p = NULL;
    duet_status_t st = f->ops->buf_alloc(f->be, bytes ? bytes : 4, &p);
    if (st)
        return st;
    f->bufs[f->n_bufs++] = p;
    *out = p;
    return DUET_OK;
}

static bool held(const duet_tensor_t *t)
{
    return t->data != NULL;
}

static duet_status_t need(const duet_tensor_t *t, const char *what, int layer)
{
    if (held(t))
        return DUET_OK;
    if (layer >= 0)
        return duet_errorf(DUET_ERR_NOT_FOUND,
                           "forward: layer %d %s is not held by this model role", layer, what);
    return duet_errorf(DUET_ERR_NOT_FOUND, "forward: %s is not held by this model role", what);
}

duet_status_t duet_fwd_create(duet_backend_t *be, const duet_model_t *model, duet_kvcache_t *kv,
                              const duet_fwd_opts_t *opts, duet_fwd_t **out)
{
    const duet_config_t *c = &model->cfg;
    duet_fwd_opts_t o = {0};
    if (opts)
        o = *opts;
    if (o.max_tokens <= 0)
        o.max_tokens = 512;
    if (o.max_seqs <= 0)
        o.max_seqs = 64;
    if (o.max_logits <= 0)
        o.max_logits = o.max_seqs;
    if (c->n_heads <= 0 || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads || c->head_dim <= 0 ||
        c->head_dim % 2)
        return duet_errorf(
            DUET_ERR_INVALID,
            "forward: unsupported attention shape (%d heads, %d KV heads, head_dim %d)", c->n_heads,
            c->n_kv_heads, c->head_dim);
    if (c->n_experts > 0 && (c->top_k < 1 || c->top_k > c->n_experts))
        return duet_errorf(DUET_ERR_INVALID, "forward: top-%d of %d experts", c->top_k,
                           c->n_experts);
    const duet_kv_layer_t *kl0 = duet_kvcache_layer(kv, 0);
    if (!kl0 || !duet_kvcache_layer(kv, c->n_layers - 1) || duet_kvcache_layer(kv, c->n_layers) ||
        kl0->n_kv_heads != c->n_kv_heads || kl0->head_dim != c->head_dim)
        return duet_errorf(DUET_ERR_INVALID,
                           "forward: the KV cache was made for another shape than this model's "
                           "(%d layers, %d KV heads of %d)",
                           c->n_layers, c->n_kv_heads, c->head_dim);
    duet_status_t st = need(&model->embed, "embed_tokens", -1);
    if (!st)
        st = need(&model->final_norm, "final norm", -1);
    if (!st)
        st = need(&model->lm_head, "lm_head", -1);
    for (int l = 0; !st && l < c->n_layers; l++) {
        const duet_layer_weights_t *L = &model->layers[l];
        st = need(&L->wq, "q_proj", l);
        if (!st)
            st = need(&L->wo, "o_proj", l);
        if (!st)
            st = need(&L->attn_norm, "input_layernorm", l);
        if (!st && c->sparse_layer[l])
            st = need(&L->router, "router gate", l);
        else if (!st)
            st = need(&L->dense.gate, "dense MLP", l);
    }
    if (st)
        return st;

    duet_fwd_t *f = duet_calloc(1, sizeof(*f));
    if (!f)
        return duet_errorf(DUET_ERR_NOMEM, "forward: out of memory");
    f->be = be;
    f->ops = be->ops;
    f->m = model;
    f->cfg = c;
    f->kv = kv;
    f->o = o;
    f->mlp_dim = DUET_MAX(c->shared_dim, c->dense_dim);
    f->rope_freq_dtype = o.rope_freq == DUET_ROPE_FREQ_F32 ? DUET_DTYPE_F32 : model->embed.dtype;
    const size_t T = (size_t)o.max_tokens, F = sizeof(float);
    const size_t qw = (size_t)c->n_heads * (size_t)c->head_dim;
    const size_t kw = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    if ((st = fwd_buf(f, T * qw * F, &f->q)) || (st = fwd_buf(f, T * kw * F, &f->k)) ||
        (st = fwd_buf(f, T * kw * F, &f->v)) || (st = fwd_buf(f, T * qw * F, &f->att)) ||
        (st = fwd_buf(f, T * (size_t)DUET_MAX(c->n_experts, 1) * F, &f->rlog)) ||
        (st = fwd_buf(f, T * (size_t)DUET_MAX(f->mlp_dim, 1) * F, &f->mg)) ||
        (st = fwd_buf(f, T * (size_t)DUET_MAX(f->mlp_dim, 1) * F, &f->mu)) ||
        (st = fwd_buf(f, T * F, &f->sg)) ||
        (st = fwd_buf(f, (c->shared_dim > 0 ? T * (size_t)c->hidden : 1) * F, &f->so)) ||
        (st = fwd_buf(f, (size_t)o.max_logits * (size_t)c->hidden * F, &f->lrows))) {
        duet_fwd_destroy(&f);
        return duet_error_wrap(st, "forward: workspace for %d tokens", o.max_tokens);
    }
    st = be->ops->weights_prepare(be, model);
    if (st) {
        duet_fwd_destroy(&f);
        return st;
    }
    *out = f;
    return DUET_OK;
}

void duet_fwd_destroy(duet_fwd_t **fwd_p)
{
    if (!fwd_p || !*fwd_p)
        return;
    duet_fwd_t *f = *fwd_p;
    for (int i = 0; i < f->n_bufs; i++)
        f->ops->buf_free(f->be, f->bufs[i]);
    duet_free(f);
    *fwd_p = NULL;
}

duet_status_t duet_ubatch_create(duet_fwd_t *f, duet_ubatch_t **out)
{
    const duet_config_t *c = f->cfg;
    duet_ubatch_t *ub = duet_calloc(1, sizeof(*ub));
    if (!ub)
        return duet_errorf(DUET_ERR_NOMEM, "forward: out of memory");
    ub->fwd = f;
    const size_t T = (size_t)f->o.max_tokens, S = (size_t)f->o.max_seqs,
                 L = (size_t)f->o.max_logits, K = (size_t)DUET_MAX(c->top_k, 1);
    ub->logit_tok = duet_calloc(L, sizeof(int32_t));
    ub->sample_pos = duet_calloc(L, sizeof(int64_t));
    ub->tokens = duet_calloc(T, sizeof(int32_t));
    ub->positions = duet_calloc(T, sizeof(int32_t));
    ub->aseqs = duet_calloc(S, sizeof(duet_attn_seq_t));
    ub->seq_ids = duet_calloc(S, sizeof(int32_t));
    ub->n_new = duet_calloc(S, sizeof(int32_t));
    ub->pos0 = duet_calloc(S, sizeof(int32_t));
    ub->ids = duet_calloc(T * K, sizeof(int32_t));
    ub->wts = duet_calloc(T * K, sizeof(float));
    duet_status_t st = DUET_OK;
    if (!ub->logit_tok || !ub->sample_pos || !ub->tokens || !ub->positions || !ub->aseqs ||
        !ub->seq_ids || !ub->n_new || !ub->pos0 || !ub->ids || !ub->wts) {
        st = duet_errorf(DUET_ERR_NOMEM, "forward: out of memory for a micro-batch");
        goto err;
    }
    void *p;
    const size_t hb = T * (size_t)c->hidden * sizeof(float);
    if ((st = f->ops->buf_alloc(f->be, hb, &p)))
        goto err;
    ub->h = p;
    if ((st = f->ops->buf_alloc(f->be, hb, &p)))
        goto err;
    ub->x = p;
    if ((st = f->ops->buf_alloc(f->be, L * (size_t)c->vocab * sizeof(float), &p)))
        goto err;
    ub->logits = p;
    *out = ub;
    return DUET_OK;
err:
    duet_ubatch_destroy(&ub);
    return st;
}

void duet_ubatch_destroy(duet_ubatch_t **ub_p)
{
    if (!ub_p || !*ub_p)
        return;
    duet_ubatch_t *ub = *ub_p;
    duet_fwd_t *f = ub->fwd;
    if (ub->h)
        f->ops->buf_free(f->be, ub->h);
    if (ub->x)
        f->ops->buf_free(f->be, ub->x);
    if (ub->logits)
        f->ops->buf_free(f->be, ub->logits);
    duet_free(ub->logit_tok);
    duet_free(ub->sample_pos);
    duet_free(ub->tokens);
    duet_free(ub->positions);
    duet_free(ub->aseqs);
    duet_free(ub->seq_ids);
    duet_free(ub->n_new);
    duet_free(ub->pos0);
    duet_free(ub->ids);
    duet_free(ub->wts);
    duet_free(ub);
    *ub_p = NULL;
}

duet_status_t duet_fwd_begin(duet_fwd_t *f, duet_ubatch_t *ub, int32_t n_seqs,
                             const duet_seq_input_t *seqs)
{
    const duet_config_t *c = f->cfg;
    if (n_seqs <= 0 || n_seqs > f->o.max_seqs)
        return duet_errorf(DUET_ERR_INVALID, "forward: %d sequences in a step (1..%d allowed)",
                           n_seqs, f->o.max_seqs);
    int64_t total = 0, n_logits = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        const duet_seq_input_t *s = &seqs[i];
        if (s->n_tokens <= 0 || !s->tokens)
            return duet_errorf(DUET_ERR_INVALID, "forward: sequence %d of the step has no tokens",
                               i);
        if (s->logits != DUET_LOGITS_NONE && s->logits != DUET_LOGITS_LAST &&
            s->logits != DUET_LOGITS_ALL)
            return duet_errorf(DUET_ERR_INVALID, "forward: sequence %d asks for logits mode %d", i,
                               (int)s->logits);
        for (int32_t t = 0; t < s->n_tokens; t++)
            if (s->tokens[t] < 0 || s->tokens[t] >= c->vocab)
                return duet_errorf(DUET_ERR_INVALID,
                                   "forward: token %d of sequence %d is id %d, outside the "
                                   "vocabulary [0, %d)",
                                   t, i, s->tokens[t], c->vocab);
        total += s->n_tokens;
        n_logits += s->logits == DUET_LOGITS_ALL ? s->n_tokens : s->logits == DUET_LOGITS_LAST;
    }
    if (total > f->o.max_tokens)
        return duet_errorf(DUET_ERR_CAPACITY,
                           "forward: step of %lld tokens exceeds the micro-batch size %d",
                           (long long)total, f->o.max_tokens);
    if (n_logits > f->o.max_logits)
        return duet_errorf(DUET_ERR_CAPACITY,
                           "forward: step asks for %lld logits rows, more than the %d configured",
                           (long long)n_logits, f->o.max_logits);
    for (int32_t i = 0; i < n_seqs; i++) {
        ub->seq_ids[i] = seqs[i].seq;
        ub->n_new[i] = seqs[i].n_tokens;
    }
    duet_status_t st = duet_kvcache_reserve(f->kv, n_seqs, ub->seq_ids, ub->n_new, ub->pos0);
    if (st)
        return st;
    ub->n_seqs = n_seqs;
    ub->n_tokens = (int32_t)total;
    ub->n_logits = 0;
    ub->routed = false;
    ub->logits_ready = false;
    int32_t tok = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        const duet_seq_input_t *s = &seqs[i];
        ub->aseqs[i] = (duet_attn_seq_t){tok, s->n_tokens, ub->pos0[i],
                                         duet_kvcache_seq_blocks(f->kv, s->seq)};
        for (int32_t t = 0; t < s->n_tokens; t++) {
            ub->tokens[tok + t] = s->tokens[t];
            ub->positions[tok + t] = ub->pos0[i] + t;
        }
        int32_t first = s->logits == DUET_LOGITS_ALL ? 0 : s->n_tokens - 1;
        if (s->logits != DUET_LOGITS_NONE)
            for (int32_t t = first; t < s->n_tokens; t++) {
                ub->logit_tok[ub->n_logits] = tok + t;
                ub->sample_pos[ub->n_logits] = (int64_t)ub->pos0[i] + t + 1;
                ub->n_logits++;
            }
        tok += s->n_tokens;
    }
    st = f->ops->embed(f->be, &f->m->embed, ub->tokens, total, ub->h);
    if (st)
        duet_fwd_abort(f, ub);
    return st;
}

void duet_fwd_abort(duet_fwd_t *f, duet_ubatch_t *ub)
{
    for (int32_t i = 0; i < ub->n_seqs; i++)
        duet_kvcache_seq_truncate(f->kv, ub->seq_ids[i], ub->pos0[i]);
    ub->n_seqs = 0;
    ub->n_tokens = 0;
    ub->n_logits = 0;
    ub->routed = false;
    ub->logits_ready = false;
}

/* SwiGLU MLP on n rows of x: out (=|+=) down(silu(gate x) * up x). */
static duet_status_t mlp(duet_fwd_t *f, const duet_expert_weights_t *w, const float *x, int64_t n,
                         float *out, bool accumulate)
{
    const duet_backend_ops_t *ops = f->ops;
    const int64_t H = f->cfg->hidden, D = w->gate.shape[0];
    const duet_matmul_desc_t gu[2] = {
        {x, n, H, &w->gate, NULL, f->mg, false},
        {x, n, H, &w->up, NULL, f->mu, false},
    };
    duet_status_t st = ops->matmul_batch(f->be, gu, 2);
    if (!st)
        st = ops->swiglu(f->be, f->mg, f->mu, n, D, f->mg);
    if (!st)
        st = ops->matmul(f->be, f->mg, n, D, &w->down, NULL, out, accumulate);
    return st;
}

duet_status_t duet_fwd_attention(duet_fwd_t *f, duet_ubatch_t *ub, int32_t layer)
{
    const duet_config_t *c = f->cfg;
    const duet_backend_ops_t *ops = f->ops;
    duet_backend_t *be = f->be;
    if (layer < 0 || layer >= c->n_layers)
        return duet_errorf(DUET_ERR_RANGE, "forward: layer %d of %d", layer, c->n_layers);
    const duet_layer_weights_t *L = &f->m->layers[layer];
    const int64_t n = ub->n_tokens, H = c->hidden, hd = c->head_dim;
    const int64_t qw = (int64_t)c->n_heads * hd, kw = (int64_t)c->n_kv_heads * hd;
    duet_status_t st;

    if ((st = ops->rmsnorm(be, ub->h, n, H, &L->attn_norm, c->rms_eps, ub->x)))
        return st;
    const duet_matmul_desc_t qkv[3] = {
        {ub->x, n, H, &L->wq, held(&L->bq) ? &L->bq : NULL, f->q, false},
        {ub->x, n, H, &L->wk, held(&L->bk) ? &L->bk : NULL, f->k, false},
        {ub->x, n, H, &L->wv, held(&L->bv) ? &L->bv : NULL, f->v, false},
    };
    if ((st = ops->matmul_batch(be, qkv, 3)))
        return st;
    if (c->qk_norm == DUET_QK_NORM_HEAD) {
        if ((st = ops->rmsnorm(be, f->q, n * c->n_heads, hd, &L->q_norm, c->rms_eps, f->q)) ||
            (st = ops->rmsnorm(be, f->k, n * c->n_kv_heads, hd, &L->k_norm, c->rms_eps, f->k)))
            return st;
    } else if (c->qk_norm == DUET_QK_NORM_FULL) {
        if ((st = ops->rmsnorm(be, f->q, n, qw, &L->q_norm, c->rms_eps, f->q)) ||
            (st = ops->rmsnorm(be, f->k, n, kw, &L->k_norm, c->rms_eps, f->k)))
            return st;
    }
    if ((st = ops->rope(be, f->q, f->k, n, ub->positions, c->n_heads, c->n_kv_heads, c->head_dim,
                        c->rope_theta, f->rope_freq_dtype)))
        return st;
    const duet_attn_batch_t batch = {ub->n_seqs, ub->aseqs, ub->n_tokens, ub->positions};
    const duet_kv_layer_t *kvl = duet_kvcache_layer(f->kv, layer);
    if ((st = ops->attention(be, &batch, kvl, f->q, f->k, f->v, c->n_heads, 1.0f / sqrtf((float)hd),
                             f->att)))
        return st;
    /* residual: h += o_proj(att) */
    if ((st = ops->matmul(be, f->att, n, qw, &L->wo, NULL, ub->h, true)))
        return st;
    if ((st = ops->rmsnorm(be, ub->h, n, H, &L->ffn_norm, c->rms_eps, ub->x)))
        return st;
    ub->logits_ready = false;
    if (!c->sparse_layer[layer]) {
        ub->routed = false;
        return mlp(f, &L->dense, ub->x, n, ub->h, true);
    }
    /* Mixtral always renormalises its top-k; the others follow config. */
    const bool norm = c->arch == DUET_ARCH_MIXTRAL ? true : c->norm_topk_prob;
    if ((st = ops->matmul(be, ub->x, n, H, &L->router, NULL, f->rlog, false)) ||
        (st = ops->route(be, f->rlog, n, c->n_experts, c->top_k, norm, ub->ids, ub->wts)))
        return st;
    if (c->shared_dim > 0 && held(&L->shared.gate)) {
        /* qwen2_moe: h += sigmoid(x · g) * shared_expert(x); the MoE part is
         * added by the combine, so the sum is the same. */
        if ((st = mlp(f, &L->shared, ub->x, n, f->so, false)) ||
            (st = ops->matmul(be, ub->x, n, H, &L->shared_gate, NULL, f->sg, false)) ||
            (st = ops->sigmoid_gate_add(be, f->so, f->sg, n, H, ub->h)))
            return st;
    }
    ub->routed = true;
    return DUET_OK;
}

duet_status_t duet_fwd_combine(duet_fwd_t *f, duet_ubatch_t *ub, int32_t layer, const float *y,
                               const int32_t *row_token, const float *row_weight, int64_t n_rows)
{
    (void)layer;
    for (int64_t i = 0; i < n_rows; i++)
        if (row_token[i] < 0 || row_token[i] >= ub->n_tokens)
            return duet_errorf(DUET_ERR_RANGE,
                               "forward: combine row %lld names token %d of a %d-token batch",
                               (long long)i, row_token[i], ub->n_tokens);
    if (n_rows == 0)
        return DUET_OK;
    return f->ops->scatter_add_rows(f->be, y, f->cfg->hidden, row_token, row_weight, n_rows, ub->h);
}

duet_status_t duet_fwd_logits(duet_fwd_t *f, duet_ubatch_t *ub, int32_t *n_rows_out)
{
    const duet_config_t *c = f->cfg;
    duet_status_t st;
    if (ub->n_logits > 0) {
        if ((st = f->ops->gather_rows(f->be, ub->h, c->hidden, ub->logit_tok, ub->n_logits,
                                      f->lrows)) ||
            (st = f->ops->rmsnorm(f->be, f->lrows, ub->n_logits, c->hidden, &f->m->final_norm,
                                  c->rms_eps, f->lrows)) ||
            (st = f->ops->lm_head(f->be, f->lrows, ub->n_logits, c->hidden, &f->m->lm_head,
                                  ub->logits)))
            return st;
    }
    ub->logits_ready = true;
    if (n_rows_out)
        *n_rows_out = ub->n_logits;
    return DUET_OK;
}

duet_status_t duet_fwd_logits_download(duet_fwd_t *f, duet_ubatch_t *ub, float *host)
{
    if (!ub->logits_ready)
        return duet_errorf(DUET_ERR_INVALID, "forward: logits downloaded before duet_fwd_logits");
    return f->ops->buf_download(f->be, host, ub->logits,
                                (size_t)ub->n_logits * (size_t)f->cfg->vocab * sizeof(float));
}

duet_status_t duet_fwd_sample(duet_fwd_t *f, duet_ubatch_t *ub,
                              const duet_sampling_params_t *params, int32_t *tokens_out)
{
    if (!ub->logits_ready)
        return duet_errorf(DUET_ERR_INVALID, "forward: sampling before duet_fwd_logits");
    if (ub->n_logits == 0)
        return DUET_OK;
    return f->ops->sample(f->be, ub->logits, ub->n_logits, f->cfg->vocab, params, ub->sample_pos,
                          tokens_out);
}

int32_t duet_ubatch_n_tokens(const duet_ubatch_t *ub)
{
    return ub->n_tokens;
}

const float *duet_ubatch_normed(const duet_ubatch_t *ub)
{
    return ub->x;
}

bool duet_ubatch_routes(const duet_ubatch_t *ub, const int32_t **ids, const float **weights,
                        int32_t *top_k)
{
    if (!ub->routed)
        return false;
    *ids = ub->ids;
    *weights = ub->wts;
    *top_k = ub->fwd->cfg->top_k;
    return true;
}

const float *duet_ubatch_logits(const duet_ubatch_t *ub)
{
    return ub->logits;
}

int32_t duet_ubatch_position(const duet_ubatch_t *ub, int32_t i)
{
    return ub->positions[i];
}

/* ---- dispatch ------------------------------------------------------------ */

duet_status_t duet_dispatch_init(duet_dispatch_t *d, int32_t n_experts, int32_t max_rows)
{
    memset(d, 0, sizeof(*d));
    d->n_experts = n_experts;
    d->count = duet_calloc((size_t)n_experts, sizeof(int32_t));
    d->offset = duet_calloc((size_t)n_experts + 1, sizeof(int32_t));
    d->row_token = duet_calloc((size_t)DUET_MAX(max_rows, 1), sizeof(int32_t));
    d->row_weight = duet_calloc((size_t)DUET_MAX(max_rows, 1), sizeof(float));
    d->max_rows = max_rows;
    if (!d->count || !d->offset || !d->row_token || !d->row_weight) {
        duet_dispatch_cleanup(d);
        return duet_errorf(DUET_ERR_NOMEM, "dispatch: out of memory for %d rows", max_rows);
    }
    return DUET_OK;
}

void duet_dispatch_cleanup(duet_dispatch_t *d)
{
    duet_free(d->count);
    duet_free(d->offset);
    duet_free(d->row_token);
    duet_free(d->row_weight);
    memset(d, 0, sizeof(*d));
}

duet_status_t duet_dispatch_build(duet_dispatch_t *d, const int32_t *ids, const float *weights,
                                  int32_t n_tokens, int32_t top_k)
{
    const int64_t n = (int64_t)n_tokens * top_k;
    if (n > d->max_rows)
        return duet_errorf(DUET_ERR_CAPACITY, "dispatch: %lld rows, room for %d", (long long)n,
                           d->max_rows);
    memset(d->count, 0, sizeof(int32_t) * (size_t)d->n_experts);
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= d->n_experts)
            return duet_errorf(DUET_ERR_RANGE, "dispatch: route %lld names expert %d of %d",
                               (long long)i, ids[i], d->n_experts);
        d->count[ids[i]]++;
    }
    d->offset[0] = 0;
    for (int32_t e = 0; e < d->n_experts; e++)
        d->offset[e + 1] = d->offset[e] + d->count[e];
    /* Fill in token order, using count as a cursor and restoring it. */
    memset(d->count, 0, sizeof(int32_t) * (size_t)d->n_experts);
    for (int64_t i = 0; i < n; i++) {
        int32_t e = ids[i];
        int32_t r = d->offset[e] + d->count[e]++;
        d->row_token[r] = (int32_t)(i / top_k);
        d->row_weight[r] = weights[i];
    }
    d->n_rows = (int32_t)n;
    return DUET_OK;
}

/* ---- expert side ----------------------------------------------------------- */

struct duet_experts {
    duet_backend_t *be;
    const duet_model_t *m;
    int32_t max_rows;
    int32_t max_groups;
    float *g, *u;           /* [max_rows, expert_dim] */
    duet_matmul_desc_t *mm; /* [2 * max_groups] */
};

duet_status_t duet_experts_create(duet_backend_t *be, const duet_model_t *model, int32_t max_rows,
                                  duet_experts_t **out)
{
    duet_experts_t *ex = duet_calloc(1, sizeof(*ex));
    if (!ex)
        return duet_errorf(DUET_ERR_NOMEM, "experts: out of memory");
    ex->be = be;
    ex->m = model;
    ex->max_rows = DUET_MAX(max_rows, 1);
    /* Groups per grouped launch (more are done in chunks). */
    ex->max_groups = DUET_MAX(model->cfg.n_experts, 1);
    ex->mm = duet_calloc((size_t)ex->max_groups * 2, sizeof(*ex->mm));
    if (!ex->mm) {
        duet_free(ex);
        return duet_errorf(DUET_ERR_NOMEM, "experts: out of memory");
    }
    size_t bytes =
        (size_t)ex->max_rows * (size_t)DUET_MAX(model->cfg.expert_dim, 1) * sizeof(float);
    void *p;
    duet_status_t st = be->ops->buf_alloc(be, bytes, &p);
    if (st)
        goto err;
    ex->g = p;
    st = be->ops->buf_alloc(be, bytes, &p);
    if (st)
        goto err;
    ex->u = p;
    *out = ex;
    return DUET_OK;
err:
    duet_experts_destroy(&ex);
    return duet_error_wrap(st, "experts: workspace for %d rows", max_rows);
}

void duet_experts_destroy(duet_experts_t **ex_p)
{
    if (!ex_p || !*ex_p)
        return;
    duet_experts_t *ex = *ex_p;
    if (ex->g)
        ex->be->ops->buf_free(ex->be, ex->g);
    if (ex->u)
        ex->be->ops->buf_free(ex->be, ex->u);
    duet_free(ex->mm);
    duet_free(ex);
    *ex_p = NULL;
}

duet_status_t duet_experts_forward(duet_experts_t *ex, int32_t layer, int32_t n_groups,
                                   const int32_t *expert_ids, const int32_t *counts, const float *x,
                                   float *y)
{
    const duet_config_t *c = &ex->m->cfg;
    const duet_backend_ops_t *ops = ex->be->ops;
    if (layer < 0 || layer >= c->n_layers || !c->sparse_layer[layer])
        return duet_errorf(DUET_ERR_RANGE, "experts: layer %d is not a sparse layer of %d", layer,
                           c->n_layers);
    if (n_groups < 0)
        return duet_errorf(DUET_ERR_RANGE, "experts: %d groups", n_groups);
    int64_t total = 0;
    for (int32_t g = 0; g < n_groups; g++) {
        if (expert_ids[g] < 0 || expert_ids[g] >= c->n_experts || counts[g] < 0)
            return duet_errorf(DUET_ERR_RANGE, "experts: group %d names expert %d (of %d), %d rows",
                               g, expert_ids[g], c->n_experts, counts[g]);
        if (counts[g] > 0 && !held(&ex->m->layers[layer].experts[expert_ids[g]].gate))
            return duet_errorf(DUET_ERR_NOT_FOUND,
                               "experts: expert %d of layer %d is not held by this shard",
                               expert_ids[g], layer);
        total += counts[g];
    }
    if (total > ex->max_rows)
        return duet_errorf(DUET_ERR_CAPACITY, "experts: %lld rows in one call, room for %d",
                           (long long)total, ex->max_rows);
    /* Grouped GEMM: gate and up of every active expert in one launch, then
     * SwiGLU over all their rows, then every down projection in one launch
     * (in chunks of max_groups groups when a caller repeats experts). */
    const int64_t H = c->hidden, D = c->expert_dim;
    int64_t row0 = 0;
    for (int32_t g0 = 0; g0 < n_groups;) {
        int32_t g1 = DUET_MIN(n_groups, g0 + ex->max_groups);
        int64_t off = 0;
        int nm = 0;
        for (int32_t g = g0; g < g1; g++) {
            const int64_t n = counts[g];
            if (n == 0)
                continue;
            const duet_expert_weights_t *w = &ex->m->layers[layer].experts[expert_ids[g]];
            const float *xe = x + (row0 + off) * H;
            ex->mm[nm++] = (duet_matmul_desc_t){xe, n, H, &w->gate, NULL, ex->g + off * D, false};
            ex->mm[nm++] = (duet_matmul_desc_t){xe, n, H, &w->up, NULL, ex->u + off * D, false};
            off += n;
        }
        duet_status_t st;
        if (off > 0 && ((st = ops->matmul_batch(ex->be, ex->mm, nm)) ||
                        (st = ops->swiglu(ex->be, ex->g, ex->u, off, D, ex->g))))
            return st;
        off = 0;
        nm = 0;
        for (int32_t g = g0; g < g1; g++) {
            const int64_t n = counts[g];
            if (n == 0)
                continue;
            const duet_expert_weights_t *w = &ex->m->layers[layer].experts[expert_ids[g]];
            ex->mm[nm++] = (duet_matmul_desc_t){ex->g + off * D,      n,    D, &w->down, NULL,
                                                y + (row0 + off) * H, false};
            off += n;
        }
        if (nm > 0 && (st = ops->matmul_batch(ex->be, ex->mm, nm)))
            return st;
        row0 += off;
        g0 = g1;
    }
    return DUET_OK;
}

/* ---- single-process engine --------------------------------------------------- */

struct duet_engine {
    duet_backend_t *be;
    const duet_model_t *m;
    duet_kvcache_t *kv;
    duet_fwd_t *fwd;
    duet_ubatch_t *ub;
    duet_experts_t *ex;
    duet_dispatch_t disp;
    int32_t *group_ids; /* [n_experts] */
    int32_t *group_counts;
    float *xg, *yg; /* [max_tokens * top_k, hidden] */
};

duet_status_t duet_engine_create(duet_backend_t *be, const duet_model_t *model,
                                 const duet_engine_opts_t *opts, duet_engine_t **out)
{
    duet_engine_opts_t o = {0};
    if (opts)
        o = *opts;
    if (o.fwd.max_tokens <= 0)
        o.fwd.max_tokens = 512;
    if (o.kv.max_seqs <= 0)
        o.kv.max_seqs = DUET_MAX(o.fwd.max_seqs, 64);
    const duet_config_t *c = &model->cfg;
    duet_engine_t *e = duet_calloc(1, sizeof(*e));
    if (!e)
        return duet_errorf(DUET_ERR_NOMEM, "engine: out of memory");
    e->be = be;
    e->m = model;
    duet_status_t st;
    const int32_t max_rows = o.fwd.max_tokens * DUET_MAX(c->top_k, 1);
    if ((st = duet_kvcache_create(be, c, &o.kv, &e->kv)) ||
        (st = duet_fwd_create(be, model, e->kv, &o.fwd, &e->fwd)) ||
        (st = duet_ubatch_create(e->fwd, &e->ub)) ||
        (st = duet_experts_create(be, model, max_rows, &e->ex)) ||
        (st = duet_dispatch_init(&e->disp, DUET_MAX(c->n_experts, 1), max_rows)))
        goto err;
    e->group_ids = duet_calloc((size_t)DUET_MAX(c->n_experts, 1), sizeof(int32_t));
    e->group_counts = duet_calloc((size_t)DUET_MAX(c->n_experts, 1), sizeof(int32_t));
    if (!e->group_ids || !e->group_counts) {
        st = duet_errorf(DUET_ERR_NOMEM, "engine: out of memory");
        goto err;
    }
    void *p;
    const size_t rb = (size_t)max_rows * (size_t)c->hidden * sizeof(float);
    if ((st = be->ops->buf_alloc(be, rb, &p)))
        goto err;
    e->xg = p;
    if ((st = be->ops->buf_alloc(be, rb, &p)))
        goto err;
    e->yg = p;
    *out = e;
    return DUET_OK;
err:
    duet_engine_destroy(&e);
    return st;
}

void duet_engine_destroy(duet_engine_t **eng_p)
{
    if (!eng_p || !*eng_p)
        return;
    duet_engine_t *e = *eng_p;
    if (e->xg)
        e->be->ops->buf_free(e->be, e->xg);
    if (e->yg)
        e->be->ops->buf_free(e->be, e->yg);
    duet_free(e->group_ids);
    duet_free(e->group_counts);
    duet_dispatch_cleanup(&e->disp);
    duet_experts_destroy(&e->ex);
    duet_ubatch_destroy(&e->ub);
    duet_fwd_destroy(&e->fwd);
    duet_kvcache_destroy(&e->kv);
    duet_free(e);
    *eng_p = NULL;
}

duet_kvcache_t *duet_engine_kv(duet_engine_t *eng)
{
    return eng->kv;
}

duet_fwd_t *duet_engine_fwd(duet_engine_t *eng)
{
    return eng->fwd;
}

duet_status_t duet_engine_step(duet_engine_t *e, int32_t n_seqs, const duet_seq_input_t *seqs,
                               float *logits, int32_t *n_rows_out)
{
    const duet_config_t *c = &e->m->cfg;
    duet_status_t st = duet_fwd_begin(e->fwd, e->ub, n_seqs, seqs);
    if (st)
        return st;
    const int32_t n = e->ub->n_tokens;
    for (int32_t l = 0; l < c->n_layers; l++) {
        if ((st = duet_fwd_attention(e->fwd, e->ub, l)))
            goto err_rollback;
        const int32_t *ids;
        const float *wts;
        int32_t k;
        if (!duet_ubatch_routes(e->ub, &ids, &wts, &k))
            continue;
        if ((st = duet_dispatch_build(&e->disp, ids, wts, n, k)))
            goto err_rollback;
        int32_t ng = 0;
        for (int32_t x = 0; x < c->n_experts; x++)
            if (e->disp.count[x] > 0) {
                e->group_ids[ng] = x;
                e->group_counts[ng] = e->disp.count[x];
                ng++;
            }
        if ((st = e->be->ops->gather_rows(e->be, e->ub->x, c->hidden, e->disp.row_token,
                                          e->disp.n_rows, e->xg)) ||
            (st =
                 duet_experts_forward(e->ex, l, ng, e->group_ids, e->group_counts, e->xg, e->yg)) ||
            (st = duet_fwd_combine(e->fwd, e->ub, l, e->yg, e->disp.row_token, e->disp.row_weight,
                                   e->disp.n_rows)))
            goto err_rollback;
    }
    int32_t rows = 0;
    if ((st = duet_fwd_logits(e->fwd, e->ub, &rows)))
        goto err_rollback;
    if (logits && (st = duet_fwd_logits_download(e->fwd, e->ub, logits)))
        goto err_rollback;
    if (n_rows_out)
        *n_rows_out = rows;
    return DUET_OK;

err_rollback:
    duet_fwd_abort(e->fwd, e->ub); /* the step did not happen */
    return st;
}

duet_status_t duet_engine_sample(duet_engine_t *e, const duet_sampling_params_t *params,
                                 int32_t *tokens_out)
{
    return duet_fwd_sample(e->fwd, e->ub, params, tokens_out);
}
