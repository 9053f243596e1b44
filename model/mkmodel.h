/* mkmodel — write a random-weight checkpoint in Hugging Face layout
 * (config.json, model.safetensors or shards with model.safetensors.index.json,
 * a byte-level BPE tokenizer.json, generation_config.json) for any of the
 * architectures duet loads. Used by `duet mkmodel`, benchmarks and tests.
 *
 * Weights are approximately normal with standard deviation 0.02 (norm
 * weights are 1), drawn from a stream seeded by (seed, tensor name): the
 * same seed gives the same tensors whatever the sharding. Tensors are
 * generated and written in chunks, so a multi-gigabyte checkpoint needs only
 * a few megabytes of memory. */
#ifndef DUET_MODEL_MKMODEL_H
#define DUET_MODEL_MKMODEL_H

#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duet_mkmodel_opts {
    duet_arch_t arch;
    int hidden;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim; /* 0: hidden / n_heads */
    int n_experts;
    int top_k;
    int expert_dim; /* width of one routed expert */
    int shared_dim; /* qwen2_moe shared expert width; 0: 2 * expert_dim */
    int vocab;      /* at least 257 (256 byte tokens + <|endoftext|>) */
    int max_pos;
    float rope_theta;
    duet_dtype_t dtype; /* BF16, F16 or F32 */
    bool tie_embeddings;
    uint64_t seed;
    int shards; /* 1: model.safetensors; more: model-0000k-of-0000n + index */
    /* Progress (bytes of tensor data written of total); may be NULL. */
    void (*progress)(void *arg, size_t done, size_t total);
    void *progress_arg;
} duet_mkmodel_opts_t;

/* Fill *out with a named preset: "tiny" (mixtral, hidden 64, 2 layers,
 * 4/2 heads, 8 experts top-2, expert width 128, vocab 512, bf16) or
 * "bench" (mixtral, hidden 1024, 12 layers, 16/4 heads, 8 experts top-2,
 * expert width 2816, vocab 32000, bf16: about 1 B parameters) or
 * "mixtral-8l" (Mixtral 8x7B's layers: hidden 4096, 8 layers, 32/8 heads,
 * 8 experts top-2, expert width 14336, vocab 32000, bf16: about 11.8 B).
 * DUET_ERR_NOT_FOUND for another name. */
DUET_API duet_status_t duet_mkmodel_preset(const char *name, duet_mkmodel_opts_t *out);
/* Check the shape for consistency (heads divide, top_k <= experts, ...). */
DUET_API duet_status_t duet_mkmodel_check(const duet_mkmodel_opts_t *o);
/* Parameter count and bytes of tensor data the options describe. */
DUET_API uint64_t duet_mkmodel_params(const duet_mkmodel_opts_t *o);
DUET_API uint64_t duet_mkmodel_bytes(const duet_mkmodel_opts_t *o);
/* Write the checkpoint into `dir` (created if missing; files there are
 * overwritten). */
DUET_API duet_status_t duet_mkmodel_write(const char *dir, const duet_mkmodel_opts_t *o);
/* Write only a byte-level BPE tokenizer.json with `vocab` entries: the 256
 * byte tokens (GPT-2 byte-to-unicode mapping), merges up to vocab - 1, and
 * <|endoftext|> (special) as id vocab - 1. */
DUET_API duet_status_t duet_mkmodel_write_tokenizer(const char *path, int vocab);

#ifdef __cplusplus
}
#endif
#endif /* DUET_MODEL_MKMODEL_H */
