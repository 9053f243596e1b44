/* weights — duet_model_load: config.json plus the checkpoint's tensors,
 * mapped by Hugging Face name into duet_model_t for one role.
 *
 * Roles: FULL holds everything; ATTENTION everything except the routed
 * experts (embeddings, attention, norms, router gates, shared expert, dense
 * MLPs, LM head); EXPERT only the listed routed experts, of every sparse
 * layer. Only the tensors a role holds are looked up and validated (present,
 * float dtype, shape, alignment) — an expert shard may run from a partial
 * checkpoint — and only their pages are ever touched, so the RSS of a shard
 * tracks what it holds.
 *
 * Expert tensors are found per expert (HF's on-disk naming:
 * mixtral block_sparse_moe.experts.E.w1/w3/w2, others
 * mlp.experts.E.gate_proj/up_proj/down_proj) or, failing that, in the fused
 * 3-D layout of transformers 5's in-memory modules (mlp.experts.gate_up_proj
 * [E, 2*dim, hidden] with gate rows first, mlp.experts.down_proj
 * [E, hidden, dim]); an expert is then a contiguous slice. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/model.h"
#include "model/safetensors.h"

struct duet_model_files {
    duet_checkpoint_t *ck;
};

typedef struct span {
    const uint8_t *p;
    size_t n;
} span_t;

typedef struct loader {
    duet_model_t *m;
    const duet_config_t *cfg;
    duet_checkpoint_t *ck;
    const char *dir;
    span_t *spans; /* held tensors, for prefault */
    size_t n_spans, cap_spans;
} loader_t;

static bool is_float(duet_dtype_t dt)
{
    return dt == DUET_DTYPE_F32 || dt == DUET_DTYPE_F16 || dt == DUET_DTYPE_BF16;
}

static void shape_str(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, size - o, "[");
    for (int i = 0; i < ndim && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < size)
        snprintf(buf + o, size - o, "]");
}

static duet_status_t add_span(loader_t *L, const duet_tensor_t *t)
{
    if (duet_vec_reserve((void **)&L->spans, &L->cap_spans, L->n_spans + 1, sizeof(span_t)))
        return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", L->dir);
    L->spans[L->n_spans++] = (span_t){t->data, t->nbytes};
    L->m->held_bytes += t->nbytes;
    return DUET_OK;
}

/* Check a found tensor against the expected shape; `name` and `path` for
 * the error detail. */
static duet_status_t check(loader_t *L, const duet_tensor_t *t, const char *name, const char *path,
                           int ndim, const int64_t *shape)
{
    if (!is_float(t->dtype))
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: tensor '%s': dtype %s, expected a float type (BF16, F16, F32)",
                           path, name, duet_dtype_name(t->dtype));
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[96], want[96];
        shape_str(got, sizeof(got), t->ndim, t->shape);
        shape_str(want, sizeof(want), ndim, shape);
        return duet_errorf(DUET_ERR_INVALID, "%s: tensor '%s': shape %s, expected %s", path, name,
                           got, want);
    }
    if (!duet_tensor_aligned(t))
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: tensor '%s': data is not aligned to its %zu-byte element size",
                           path, name, duet_dtype_size(t->dtype));
    return DUET_OK;
}

/* Look up the tensor named by fmt..., check its shape ([d0] or [d0, d1]),
 * and hold it in *dst. */
static duet_status_t want(loader_t *L, duet_tensor_t *dst, int ndim, int64_t d0, int64_t d1,
                          const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static duet_status_t want(loader_t *L, duet_tensor_t *dst, int ndim, int64_t d0, int64_t d1,
                          const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    duet_tensor_t t;
    const char *path;
    duet_status_t st = duet_checkpoint_get(L->ck, name, &t, &path);
    if (st)
        return st;
    int64_t shape[2] = {d0, d1};
    if ((st = check(L, &t, name, path, ndim, shape)))
        return st;
    *dst = t;
    return add_span(L, dst);
}

/* Fused experts of layer l: [E, 2*dim, hidden] gate_up and [E, hidden, dim]
 * down, found under mlp.experts or block_sparse_moe.experts. */
static duet_status_t load_fused_experts(loader_t *L, int l, const char *moe)
{
    const duet_config_t *c = L->cfg;
    duet_model_t *m = L->m;
    char gu_name[160], dn_name[160];
    snprintf(gu_name, sizeof(gu_name), "model.layers.%d.%s.experts.gate_up_proj", l, moe);
    snprintf(dn_name, sizeof(dn_name), "model.layers.%d.%s.experts.down_proj", l, moe);
    duet_tensor_t gu, dn;
    const char *gu_path, *dn_path;
    duet_status_t st;
    if ((st = duet_checkpoint_get(L->ck, gu_name, &gu, &gu_path)) ||
        (st = duet_checkpoint_get(L->ck, dn_name, &dn, &dn_path)))
        return st;
    int64_t gu_shape[3] = {c->n_experts, 2 * (int64_t)c->expert_dim, c->hidden};
    int64_t dn_shape[3] = {c->n_experts, c->hidden, c->expert_dim};
    if ((st = check(L, &gu, gu_name, gu_path, 3, gu_shape)) ||
        (st = check(L, &dn, dn_name, dn_path, 3, dn_shape)))
        return st;
    size_t es = duet_dtype_size(gu.dtype);
    size_t mat = (size_t)c->expert_dim * (size_t)c->hidden; /* elements of one [dim, hidden] */
    for (int e = 0; e < c->n_experts; e++) {
        if (!m->holds_expert[e])
            continue;
        duet_expert_weights_t *x = &m->layers[l].experts[e];
        x->gate = (duet_tensor_t){.dtype = gu.dtype,
                                  .ndim = 2,
                                  .shape = {c->expert_dim, c->hidden},
                                  .data = (const uint8_t *)gu.data + (size_t)e * 2 * mat * es,
                                  .nbytes = mat * es};
        x->up = x->gate;
        x->up.data = (const uint8_t *)x->gate.data + mat * es;
        size_t des = duet_dtype_size(dn.dtype);
        x->down = (duet_tensor_t){.dtype = dn.dtype,
                                  .ndim = 2,
                                  .shape = {c->hidden, c->expert_dim},
                                  .data = (const uint8_t *)dn.data + (size_t)e * mat * des,
                                  .nbytes = mat * des};
        if ((st = add_span(L, &x->gate)) || (st = add_span(L, &x->up)) ||
            (st = add_span(L, &x->down)))
            return st;
    }
    return DUET_OK;
}

static duet_status_t load_experts(loader_t *L, int l)
{
    const duet_config_t *c = L->cfg;
    duet_model_t *m = L->m;
    bool mixtral = c->arch == DUET_ARCH_MIXTRAL;
    const char *moe = mixtral ? "block_sparse_moe" : "mlp";
    const char *ng = mixtral ? "w1" : "gate_proj", *nu = mixtral ? "w3" : "up_proj",
               *nd = mixtral ? "w2" : "down_proj";
    int first = -1;
    for (int e = 0; e < c->n_experts && first < 0; e++)
        if (m->holds_expert[e])
            first = e;
    if (first < 0)
        return DUET_OK;
    char probe[160];
    snprintf(probe, sizeof(probe), "model.layers.%d.%s.experts.%d.%s.weight", l, moe, first, ng);
    if (!duet_checkpoint_has(L->ck, probe)) {
        char fused[160];
        for (int k = 0; k < 2; k++) {
            const char *pre = k ? (mixtral ? "block_sparse_moe" : NULL) : "mlp";
            if (!pre)
                continue;
            snprintf(fused, sizeof(fused), "model.layers.%d.%s.experts.gate_up_proj", l, pre);
            if (duet_checkpoint_has(L->ck, fused))
                return load_fused_experts(L, l, pre);
        }
    }
    duet_status_t st;
    int64_t D = c->expert_dim, H = c->hidden;
    for (int e = 0; e < c->n_experts; e++) {
        if (!m->holds_expert[e])
            continue;
        duet_expert_weights_t *x = &m->layers[l].experts[e];
        if ((st = want(L, &x->gate, 2, D, H, "model.layers.%d.%s.experts.%d.%s.weight", l, moe, e,
                       ng)) ||
            (st = want(L, &x->up, 2, D, H, "model.layers.%d.%s.experts.%d.%s.weight", l, moe, e,
                       nu)) ||
            (st = want(L, &x->down, 2, H, D, "model.layers.%d.%s.experts.%d.%s.weight", l, moe, e,
                       nd)))
            return st;
    }
    return DUET_OK;
}

static duet_status_t load_mlp(loader_t *L, duet_expert_weights_t *x, int64_t dim, const char *pre)
{
    int64_t H = L->cfg->hidden;
    duet_status_t st;
    if ((st = want(L, &x->gate, 2, dim, H, "%sgate_proj.weight", pre)) ||
        (st = want(L, &x->up, 2, dim, H, "%sup_proj.weight", pre)) ||
        (st = want(L, &x->down, 2, H, dim, "%sdown_proj.weight", pre)))
        return st;
    return DUET_OK;
}

static duet_status_t load_attention_layer(loader_t *L, int l)
{
    const duet_config_t *c = L->cfg;
    duet_layer_weights_t *w = &L->m->layers[l];
    int64_t H = c->hidden, Q = (int64_t)c->n_heads * c->head_dim,
            KV = (int64_t)c->n_kv_heads * c->head_dim;
    duet_status_t st;
    char a[96];
    snprintf(a, sizeof(a), "model.layers.%d.self_attn", l);
    if ((st = want(L, &w->attn_norm, 1, H, 0, "model.layers.%d.input_layernorm.weight", l)) ||
        (st = want(L, &w->ffn_norm, 1, H, 0, "model.layers.%d.post_attention_layernorm.weight",
                   l)) ||
        (st = want(L, &w->wq, 2, Q, H, "%s.q_proj.weight", a)) ||
        (st = want(L, &w->wk, 2, KV, H, "%s.k_proj.weight", a)) ||
        (st = want(L, &w->wv, 2, KV, H, "%s.v_proj.weight", a)) ||
        (st = want(L, &w->wo, 2, H, Q, "%s.o_proj.weight", a)))
        return st;
    if (c->qkv_bias && ((st = want(L, &w->bq, 1, Q, 0, "%s.q_proj.bias", a)) ||
                        (st = want(L, &w->bk, 1, KV, 0, "%s.k_proj.bias", a)) ||
                        (st = want(L, &w->bv, 1, KV, 0, "%s.v_proj.bias", a))))
        return st;
    if (c->qk_norm != DUET_QK_NORM_NONE) {
        bool head = c->qk_norm == DUET_QK_NORM_HEAD;
        if ((st = want(L, &w->q_norm, 1, head ? c->head_dim : Q, 0, "%s.q_norm.weight", a)) ||
            (st = want(L, &w->k_norm, 1, head ? c->head_dim : KV, 0, "%s.k_norm.weight", a)))
            return st;
    }
    char pre[96];
    if (!c->sparse_layer[l]) {
        snprintf(pre, sizeof(pre), "model.layers.%d.mlp.", l);
        return load_mlp(L, &w->dense, c->dense_dim, pre);
    }
    const char *moe = c->arch == DUET_ARCH_MIXTRAL ? "block_sparse_moe" : "mlp";
    if ((st = want(L, &w->router, 2, c->n_experts, H, "model.layers.%d.%s.gate.weight", l, moe)))
        return st;
    if (c->shared_dim > 0) {
        snprintf(pre, sizeof(pre), "model.layers.%d.mlp.shared_expert.", l);
        if ((st = load_mlp(L, &w->shared, c->shared_dim, pre)) ||
            (st = want(L, &w->shared_gate, 2, 1, H, "model.layers.%d.mlp.shared_expert_gate.weight",
                       l)))
            return st;
    }
    return DUET_OK;
}

static duet_status_t setup_roles(duet_model_t *m, const duet_load_opts_t *o, const char *dir)
{
    int E = m->cfg.n_experts;
    if (!(m->holds_expert = duet_calloc((size_t)E, sizeof(bool))))
        return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", dir);
    switch (o->role) {
    case DUET_ROLE_FULL:
        for (int e = 0; e < E; e++)
            m->holds_expert[e] = true;
        return DUET_OK;
    case DUET_ROLE_ATTENTION: return DUET_OK;
    case DUET_ROLE_EXPERT:
        if (o->n_experts <= 0 || !o->experts)
            return duet_errorf(DUET_ERR_INVALID, "%s: an expert shard needs a list of experts",
                               dir);
        for (int i = 0; i < o->n_experts; i++) {
            int e = o->experts[i];
            if (e < 0 || e >= E)
                return duet_errorf(DUET_ERR_INVALID,
                                   "%s: expert %d does not exist (the model has %d experts)", dir,
                                   e, E);
            if (m->holds_expert[e])
                return duet_errorf(DUET_ERR_INVALID, "%s: expert %d is listed twice", dir, e);
            m->holds_expert[e] = true;
        }
        return DUET_OK;
    }
    return duet_errorf(DUET_ERR_INVALID, "%s: unknown role %d", dir, (int)o->role);
}

static void prefault(loader_t *L, const duet_load_opts_t *o)
{
    size_t total = L->m->held_bytes, done = 0;
    long pg = sysconf(_SC_PAGESIZE);
    size_t page = pg > 0 ? (size_t)pg : 4096;
    for (size_t i = 0; i < L->n_spans; i++) {
        const uint8_t *p = L->spans[i].p;
        size_t n = L->spans[i].n;
        if (!n)
            continue;
        bool populated = false;
#ifdef MADV_POPULATE_READ
        uintptr_t lo = (uintptr_t)p & ~(uintptr_t)(page - 1);
        populated = madvise((void *)lo, (uintptr_t)p + n - lo, MADV_POPULATE_READ) == 0;
#endif
        if (!populated) {
            volatile const uint8_t *v = p;
            uint8_t sink = 0;
            for (size_t off = 0; off < n; off += page)
                sink ^= v[off];
            sink ^= v[n - 1];
            (void)sink;
        }
        done += n;
        if (o->progress)
            o->progress(o->progress_arg, done, total);
    }
}

static duet_status_t load(loader_t *L, const duet_load_opts_t *o)
{
    duet_model_t *m = L->m;
    const duet_config_t *c = L->cfg;
    duet_status_t st;
    if ((st = setup_roles(m, o, L->dir)))
        return st;
    if (!(m->layers = duet_calloc((size_t)c->n_layers, sizeof(duet_layer_weights_t))))
        return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", L->dir);
    for (int l = 0; l < c->n_layers; l++)
        if (!(m->layers[l].experts =
                  duet_calloc((size_t)c->n_experts, sizeof(duet_expert_weights_t))))
            return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", L->dir);
    if ((st = duet_checkpoint_open(L->dir, &L->ck)))
        return st;
    if (!(m->files = duet_calloc(1, sizeof(*m->files))))
        return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", L->dir);
    m->files->ck = L->ck;

    int64_t V = c->vocab, H = c->hidden;
    bool attn = o->role != DUET_ROLE_EXPERT;
    if (attn) {
        if ((st = want(L, &m->embed, 2, V, H, "model.embed_tokens.weight")) ||
            (st = want(L, &m->final_norm, 1, H, 0, "model.norm.weight")))
            return st;
        if (c->tie_embeddings)
            m->lm_head = m->embed;
        else if ((st = want(L, &m->lm_head, 2, V, H, "lm_head.weight")))
            return st;
    }
    for (int l = 0; l < c->n_layers; l++) {
        if (attn && (st = load_attention_layer(L, l)))
            return st;
        if (c->sparse_layer[l] && (st = load_experts(L, l)))
            return st;
    }
    if (o->prefault)
        prefault(L, o);
    return DUET_OK;
}

duet_status_t duet_model_load(const char *dir, const duet_load_opts_t *opts, duet_model_t **out)
{
    duet_load_opts_t defaults = {.role = DUET_ROLE_FULL};
    const duet_load_opts_t *o = opts ? opts : &defaults;
    duet_model_t *m = duet_calloc(1, sizeof(*m));
    if (!m)
        return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", dir);
    duet_status_t st;
    char *cfg_path = NULL;
    duet_buf_t b = {0};
    if ((st = duet_buf_printf(&b, "%s/config.json", dir))) {
        st = duet_errorf(st, "%s: out of memory", dir);
        goto err;
    }
    cfg_path = (char *)b.data;
    if ((st = duet_config_load(cfg_path, &m->cfg)))
        goto err;
    m->role = o->role;
    loader_t L = {.m = m, .cfg = &m->cfg, .dir = dir};
    st = load(&L, o);
    duet_free(L.spans);
    if (st) {
        if (!m->files) /* else the model owns it */
            duet_checkpoint_destroy(&L.ck);
        goto err;
    }
    duet_free(cfg_path);
    *out = m;
    return DUET_OK;
err:
    duet_free(cfg_path);
    duet_model_destroy(&m);
    return st;
}

void duet_model_destroy(duet_model_t **model_p)
{
    if (!model_p || !*model_p)
        return;
    duet_model_t *m = *model_p;
    if (m->layers)
        for (int l = 0; l < m->cfg.n_layers; l++)
            duet_free(m->layers[l].experts);
    duet_free(m->layers);
    duet_free(m->holds_expert);
    if (m->files) {
        duet_checkpoint_destroy(&m->files->ck);
        duet_free(m->files);
    }
    duet_config_cleanup(&m->cfg);
    duet_free(m);
    *model_p = NULL;
}
