/* kvcache — paged KV cache of one attention shard.
 *
 * Storage: for every layer, K and V pools of n_blocks blocks of block_size
 * tokens (layout in duet_kv_layer_t), allocated once in backend memory.
 * Each sequence owns a block table (host) that maps its positions to
 * blocks. Blocks come from one free list shared by all layers (a block id
 * names the same slot in every layer's pool).
 *
 * Capacity is a normal condition, not a crash: when a reservation does not
 * fit, nothing changes and DUET_ERR_CAPACITY comes back with a detail that
 * says how many blocks were needed and free, so the scheduler can queue. */
#ifndef DUET_MODEL_KVCACHE_H
#define DUET_MODEL_KVCACHE_H

#include "base/base.h"
#include "model/backend.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duet_kvcache duet_kvcache_t;

typedef struct duet_kvcache_opts {
    int32_t block_size;  /* tokens per block; 0: 16 */
    int32_t n_blocks;    /* blocks in the pool; 0: derive from max_bytes */
    size_t max_bytes;    /* used when n_blocks == 0; both 0: room for 4 full-length sequences */
    int32_t max_seqs;    /* concurrent sequences; 0: 256 */
    int32_t max_seq_len; /* longest sequence; 0: the model's max_position_embeddings */
} duet_kvcache_opts_t;

/* Create a cache for the attention layers of `cfg` on backend `be` (the
 * backend must outlive the cache). opts may be NULL. */
DUET_API duet_status_t duet_kvcache_create(duet_backend_t *be, const duet_config_t *cfg,
                                           const duet_kvcache_opts_t *opts, duet_kvcache_t **out);
DUET_API void duet_kvcache_destroy(duet_kvcache_t **kv_p);

/* Bytes of K+V storage one block takes over all layers. */
DUET_API size_t duet_kvcache_block_bytes(const duet_config_t *cfg, int32_t block_size);

/* Start an empty sequence; CAPACITY when max_seqs sequences are open. */
DUET_API duet_status_t duet_kvcache_seq_open(duet_kvcache_t *kv, int32_t *seq_out);
/* End a sequence and return its blocks to the pool. Unknown ids are ignored. */
DUET_API void duet_kvcache_seq_close(duet_kvcache_t *kv, int32_t seq);
/* Tokens cached for the sequence (-1 if not open). */
DUET_API int32_t duet_kvcache_seq_len(const duet_kvcache_t *kv, int32_t seq);
/* Drop positions >= len (freeing whole blocks past it). */
DUET_API duet_status_t duet_kvcache_seq_truncate(duet_kvcache_t *kv, int32_t seq, int32_t len);
/* The sequence's block table (host, valid until the next reserve/close). */
DUET_API const int32_t *duet_kvcache_seq_blocks(const duet_kvcache_t *kv, int32_t seq);

/* Extend n sequences by n_new[i] tokens each, all or nothing: either every
 * sequence gets its blocks (and its length grows) or nothing changes.
 * pos0_out (may be NULL) receives each sequence's length before the call.
 * Errors: INVALID (unknown or repeated sequence), RANGE (past max_seq_len),
 * CAPACITY (not enough free blocks). */
DUET_API duet_status_t duet_kvcache_reserve(duet_kvcache_t *kv, int32_t n, const int32_t *seqs,
                                            const int32_t *n_new, int32_t *pos0_out);

DUET_API int32_t duet_kvcache_free_blocks(const duet_kvcache_t *kv);
DUET_API int32_t duet_kvcache_total_blocks(const duet_kvcache_t *kv);
DUET_API int32_t duet_kvcache_block_size(const duet_kvcache_t *kv);
DUET_API int32_t duet_kvcache_open_seqs(const duet_kvcache_t *kv);
/* Layer l's storage, for the attention op. */
DUET_API const duet_kv_layer_t *duet_kvcache_layer(const duet_kvcache_t *kv, int32_t layer);

#ifdef __cplusplus
}
#endif
#endif
