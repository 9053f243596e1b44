/* engine_local — the single-process engine (model/forward.h duet_engine_t)
 * behind the gateway's engine interface (engine.h), so that the gateway
 * serves a real model before the disaggregated scheduler exists.
 *
 * One worker thread runs continuous batching: each step takes one decode
 * token from every running request and fills the rest of the token budget
 * with prompt chunks (chunked prefill) of admitted requests, in arrival
 * order. Admission is by worst-case KV: a request is admitted when the
 * blocks for prompt + max_tokens fit beside those of the running requests,
 * so a step never runs out of KV mid-request; the rest wait (reported as
 * "waiting"). Cancel and finish close the sequence and free its blocks.
 *
 * This is a stand-in for the scheduler of the disaggregated pipeline, not
 * its design: no preemption, no KV-aware re-placement, one micro-batch. */
#ifndef DUET_GATEWAY_ENGINE_LOCAL_H
#define DUET_GATEWAY_ENGINE_LOCAL_H

#include "gateway/engine.h"
#include "model/forward.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duet_gw_local_opts {
    const char *model_name; /* NULL: the model's model_type */
    int32_t max_context;    /* per request; 0: the model's max_position_embeddings, capped by KV */
} duet_gw_local_opts_t;

/* Create the model engine on `be` for `model` with `eopts` (may be NULL) and
 * start the worker. be and model must outlive the engine. Destroy with
 * duet_gw_local_destroy. */
DUET_API duet_status_t duet_gw_local_create(duet_backend_t *be, const duet_model_t *model,
                                            const duet_engine_opts_t *eopts,
                                            const duet_gw_local_opts_t *opts,
                                            duet_gw_engine_t **out);
/* Stops the worker; requests still in flight finish with CANCELED. */
DUET_API void duet_gw_local_destroy(duet_gw_engine_t **eng_p);

#ifdef __cplusplus
}
#endif
#endif /* DUET_GATEWAY_ENGINE_LOCAL_H */
