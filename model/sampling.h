/* sampling — choose the next token from a row of logits: greedy,
 * temperature, top-k, top-p (applied in that order, as HF does).
 *
 * Determinism: the one uniform draw a sample uses is a pure function of
 * (params->seed, position), so a replayed request (same seed, same logits)
 * yields the same tokens whatever batch it runs in. */
#ifndef DUET_MODEL_SAMPLING_H
#define DUET_MODEL_SAMPLING_H

#include "base/base.h"
#include "model/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duet_sampler duet_sampler_t;

/* A sampler owns scratch for a vocabulary of `vocab` entries so that
 * sampling never allocates. Not thread-safe: one per thread. */
DUET_API duet_status_t duet_sampler_create(int32_t vocab, duet_sampler_t **out);
DUET_API void duet_sampler_destroy(duet_sampler_t **sampler_p);
DUET_API int32_t duet_sampler_vocab(const duet_sampler_t *s);

/* Sample one token from logits[vocab] (not modified). Invalid params
 * (negative top_k, top_p <= 0 or > 1, NaN temperature) are DUET_ERR_INVALID. */
DUET_API duet_status_t duet_sampler_sample(duet_sampler_t *s, const float *logits,
                                           const duet_sampling_params_t *params, int64_t position,
                                           int32_t *token_out);

/* Greedy pick: index of the largest logit (lowest index on ties). */
DUET_API int32_t duet_sample_greedy(const float *logits, int32_t vocab);

/* The uniform draw in [0, 1) used for (seed, position). */
DUET_API double duet_sample_uniform(uint64_t seed, int64_t position);

/* Check params; detail names the bad field. */
DUET_API duet_status_t duet_sampling_params_check(const duet_sampling_params_t *params);

#ifdef __cplusplus
}
#endif
#endif
