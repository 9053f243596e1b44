/* kvcache — block pool, per-sequence block tables, all-or-nothing reserve. */
#include "model/kvcache.h"

#include <string.h>

typedef struct kv_seq {
    bool open;
    int32_t len;
    int32_t n_blocks;
    int32_t *blocks; /* [max_blocks_per_seq] */
} kv_seq_t;

struct duet_kvcache {
    duet_backend_t *be;
    int32_t n_layers;
    int32_t block_size;
    int32_t n_blocks;
    int32_t max_seqs;
    int32_t max_seq_len;
    int32_t max_blocks_per_seq;
    duet_kv_layer_t *layers;
    int32_t *free_list; /* stack of free block ids */
    int32_t n_free;
    kv_seq_t *seqs;
    int32_t n_open;
    int32_t *table_mem;
};

size_t duet_kvcache_block_bytes(const duet_config_t *cfg, int32_t block_size)
{
    return (size_t)2 * (size_t)cfg->n_layers * (size_t)block_size * (size_t)cfg->n_kv_heads *
           (size_t)cfg->head_dim * sizeof(float);
}

duet_status_t duet_kvcache_create(duet_backend_t *be, const duet_config_t *cfg,
                                  const duet_kvcache_opts_t *opts, duet_kvcache_t **out)
{
    duet_kvcache_opts_t o = {0};
    if (opts)
        o = *opts;
    if (o.block_size == 0)
        o.block_size = 16;
    if (o.max_seqs == 0)
        o.max_seqs = 256;
    if (o.max_seq_len == 0)
        o.max_seq_len = cfg->max_pos > 0 ? cfg->max_pos : 4096;
    if (o.block_size < 0 || o.max_seqs < 0 || o.max_seq_len < 0 || o.n_blocks < 0)
        return duet_errorf(DUET_ERR_INVALID, "kv cache: negative size in options");
    size_t bb = duet_kvcache_block_bytes(cfg, o.block_size);
    int32_t max_bps = (o.max_seq_len + o.block_size - 1) / o.block_size;
    if (o.n_blocks == 0) {
        if (o.max_bytes)
            o.n_blocks = (int32_t)DUET_MIN(o.max_bytes / bb, (size_t)INT32_MAX);
        else
            o.n_blocks = max_bps * DUET_MIN(o.max_seqs, 4);
    }
    if (o.n_blocks <= 0)
        return duet_errorf(
            DUET_ERR_INVALID,
            "kv cache: %zu bytes hold no block (one block of %d tokens takes %zu bytes)",
            o.max_bytes, o.block_size, bb);

    duet_kvcache_t *kv = duet_calloc(1, sizeof(*kv));
    if (!kv)
        return duet_errorf(DUET_ERR_NOMEM, "kv cache: out of memory");
    kv->be = be;
    kv->n_layers = cfg->n_layers;
    kv->block_size = o.block_size;
    kv->n_blocks = o.n_blocks;
    kv->max_seqs = o.max_seqs;
    kv->max_seq_len = o.max_seq_len;
    kv->max_blocks_per_seq = max_bps;
    duet_status_t st = DUET_ERR_NOMEM;
    kv->layers = duet_calloc((size_t)cfg->n_layers, sizeof(*kv->layers));
    kv->free_list = duet_calloc((size_t)o.n_blocks, sizeof(int32_t));
    kv->seqs = duet_calloc((size_t)o.max_seqs, sizeof(*kv->seqs));
    kv->table_mem = duet_calloc((size_t)o.max_seqs * (size_t)max_bps, sizeof(int32_t));
    if (!kv->layers || !kv->free_list || !kv->seqs || !kv->table_mem) {
        duet_errorf(DUET_ERR_NOMEM, "kv cache: out of memory for %d sequences", o.max_seqs);
        goto err_free;
    }
    size_t pool = bb / 2 / (size_t)cfg->n_layers * (size_t)o.n_blocks;
    for (int32_t l = 0; l < cfg->n_layers; l++) {
        duet_kv_layer_t *L = &kv->layers[l];
        L->n_blocks = o.n_blocks;
        L->block_size = o.block_size;
        L->n_kv_heads = cfg->n_kv_heads;
        L->head_dim = cfg->head_dim;
        void *k = NULL, *v = NULL;
        st = be->ops->buf_alloc(be, pool, &k);
        if (st) {
            duet_error_wrap(st, "kv cache: layer %d of %d (%zu bytes per pool)", l, cfg->n_layers,
                            pool);
            goto err_free;
        }
        L->k = k;
        st = be->ops->buf_alloc(be, pool, &v);
        if (st) {
            duet_error_wrap(st, "kv cache: layer %d of %d (%zu bytes per pool)", l, cfg->n_layers,
                            pool);
            goto err_free;
        }
        L->v = v;
    }
    for (int32_t i = 0; i < o.n_blocks; i++)
        kv->free_list[i] = o.n_blocks - 1 - i; /* pop gives 0, 1, 2, ... */
    kv->n_free = o.n_blocks;
    for (int32_t s = 0; s < o.max_seqs; s++)
        kv->seqs[s].blocks = kv->table_mem + (size_t)s * (size_t)max_bps;
    *out = kv;
    return DUET_OK;

err_free:
    duet_kvcache_destroy(&kv);
    return st;
}

void duet_kvcache_destroy(duet_kvcache_t **kv_p)
{
    if (!kv_p || !*kv_p)
        return;
    duet_kvcache_t *kv = *kv_p;
    if (kv->layers)
        for (int32_t l = 0; l < kv->n_layers; l++) {
            if (kv->layers[l].k)
                kv->be->ops->buf_free(kv->be, kv->layers[l].k);
            if (kv->layers[l].v)
                kv->be->ops->buf_free(kv->be, kv->layers[l].v);
        }
    duet_free(kv->layers);
    duet_free(kv->free_list);
    duet_free(kv->seqs);
    duet_free(kv->table_mem);
    duet_free(kv);
    *kv_p = NULL;
}

static kv_seq_t *seq_get(const duet_kvcache_t *kv, int32_t seq)
{
    if (seq < 0 || seq >= kv->max_seqs || !kv->seqs[seq].open)
        return NULL;
    return &kv->seqs[seq];
}

duet_status_t duet_kvcache_seq_open(duet_kvcache_t *kv, int32_t *seq_out)
{
    for (int32_t s = 0; s < kv->max_seqs; s++)
        if (!kv->seqs[s].open) {
            kv->seqs[s].open = true;
            kv->seqs[s].len = 0;
            kv->seqs[s].n_blocks = 0;
            kv->n_open++;
            *seq_out = s;
            return DUET_OK;
        }
    return duet_errorf(DUET_ERR_CAPACITY, "kv cache: all %d sequence slots are in use",
                       kv->max_seqs);
}

static void seq_release_blocks(duet_kvcache_t *kv, kv_seq_t *s, int32_t keep)
{
    while (s->n_blocks > keep)
        kv->free_list[kv->n_free++] = s->blocks[--s->n_blocks];
}

void duet_kvcache_seq_close(duet_kvcache_t *kv, int32_t seq)
{
    kv_seq_t *s = seq_get(kv, seq);
    if (!s)
        return;
    seq_release_blocks(kv, s, 0);
    s->open = false;
    s->len = 0;
    kv->n_open--;
}

int32_t duet_kvcache_seq_len(const duet_kvcache_t *kv, int32_t seq)
{
    kv_seq_t *s = seq_get(kv, seq);
    return s ? s->len : -1;
}

duet_status_t duet_kvcache_seq_truncate(duet_kvcache_t *kv, int32_t seq, int32_t len)
{
    kv_seq_t *s = seq_get(kv, seq);
    if (!s)
        return duet_errorf(DUET_ERR_INVALID, "kv cache: sequence %d is not open", seq);
    if (len < 0 || len > s->len)
        return duet_errorf(DUET_ERR_RANGE,
                           "kv cache: cannot truncate sequence %d of %d tokens to %d", seq, s->len,
                           len);
    s->len = len;
    seq_release_blocks(kv, s, (len + kv->block_size - 1) / kv->block_size);
    return DUET_OK;
}

const int32_t *duet_kvcache_seq_blocks(const duet_kvcache_t *kv, int32_t seq)
{
    kv_seq_t *s = seq_get(kv, seq);
    return s ? s->blocks : NULL;
}

duet_status_t duet_kvcache_reserve(duet_kvcache_t *kv, int32_t n, const int32_t *seqs,
                                   const int32_t *n_new, int32_t *pos0_out)
{
    int64_t need = 0;
    for (int32_t i = 0; i < n; i++) {
        kv_seq_t *s = seq_get(kv, seqs[i]);
        if (!s)
            return duet_errorf(DUET_ERR_INVALID, "kv cache: sequence %d is not open", seqs[i]);
        for (int32_t j = 0; j < i; j++)
            if (seqs[j] == seqs[i])
                return duet_errorf(DUET_ERR_INVALID,
                                   "kv cache: sequence %d appears twice in one batch", seqs[i]);
        if (n_new[i] < 0)
            return duet_errorf(DUET_ERR_INVALID, "kv cache: negative token count for sequence %d",
                               seqs[i]);
        int64_t len = (int64_t)s->len + n_new[i];
        if (len > kv->max_seq_len)
            return duet_errorf(
                DUET_ERR_RANGE,
                "kv cache: sequence %d would hold %lld tokens, more than the maximum "
                "sequence length %d",
                seqs[i], (long long)len, kv->max_seq_len);
        int64_t nb = (len + kv->block_size - 1) / kv->block_size;
        need += nb - s->n_blocks;
    }
    if (need > kv->n_free)
        return duet_errorf(DUET_ERR_CAPACITY,
                           "kv cache full: the batch needs %lld more blocks of %d tokens, %d of %d "
                           "are free",
                           (long long)need, kv->block_size, kv->n_free, kv->n_blocks);
    for (int32_t i = 0; i < n; i++) {
        kv_seq_t *s = &kv->seqs[seqs[i]];
        if (pos0_out)
            pos0_out[i] = s->len;
        s->len += n_new[i];
        int32_t nb = (s->len + kv->block_size - 1) / kv->block_size;
        while (s->n_blocks < nb)
            s->blocks[s->n_blocks++] = kv->free_list[--kv->n_free];
    }
    return DUET_OK;
}

int32_t duet_kvcache_free_blocks(const duet_kvcache_t *kv)
{
    return kv->n_free;
}

int32_t duet_kvcache_total_blocks(const duet_kvcache_t *kv)
{
    return kv->n_blocks;
}

int32_t duet_kvcache_block_size(const duet_kvcache_t *kv)
{
    return kv->block_size;
}

int32_t duet_kvcache_open_seqs(const duet_kvcache_t *kv)
{
    return kv->n_open;
}

const duet_kv_layer_t *duet_kvcache_layer(const duet_kvcache_t *kv, int32_t layer)
{
    if (layer < 0 || layer >= kv->n_layers)
        return NULL;
    return &kv->layers[layer];
}
