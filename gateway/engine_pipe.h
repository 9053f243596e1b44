/* engine_pipe — the disaggregated pipeline (actors/pipeline.h) behind the
 * gateway's engine interface (engine.h).
 *
 * submit -> pipe.submit to the scheduler (prompt, max_tokens, sampling
 * parameters and seed; the first stop id goes as the pipeline's eos, the
 * others are matched here), pipe.token messages -> on_token / on_finish,
 * cancel -> pipe.cancel (the scheduler ends the request and frees its KV),
 * stats -> the scheduler's running / waiting / reserved KV blocks, plus a
 * pipe.stats_req to every shard (up to 100 ms each): KV blocks in use are the
 * attention shards' own count (vllm:kv_cache_usage_perc; the reservation
 * only when a shard does not answer, duet_kv_usage_live 0 then), and per
 * actor busy time, rounds, tokens, data-plane bytes and liveness
 * (duet_actor_*{actor="attn/0"}), with the faults seen (replays, epochs,
 * restarts).
 *
 * A stop id other than the pipeline's eos finishes the request here (STOP)
 * and cancels it in the pipeline, so its KV is freed too. */
#ifndef DUET_GATEWAY_ENGINE_PIPE_H
#define DUET_GATEWAY_ENGINE_PIPE_H

#include "actors/pipeline.h"
#include "gateway/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duet_gw_pipe_opts {
    const char *model_name; /* NULL: the model's model_type */
} duet_gw_pipe_opts_t;

/* Bring up the deployment `cfg` in this process (its on_token hook is the
 * engine's own; the scheduler must run here) and wrap it. cfg and what it
 * points to are only read during the call. Destroy with
 * duet_gw_pipe_destroy. */
DUET_API duet_status_t duet_gw_pipe_create(const duet_pipe_config_t *cfg,
                                           const duet_gw_pipe_opts_t *opts,
                                           duet_gw_engine_t **out);
/* Wait until every attention shard is ready (false on timeout). */
DUET_API bool duet_gw_pipe_wait_ready(duet_gw_engine_t *eng, uint32_t timeout_ms);
/* Stops the deployment; requests still in flight finish with CANCELED. */
DUET_API void duet_gw_pipe_destroy(duet_gw_engine_t **eng_p);

#ifdef __cplusplus
}
#endif
#endif /* DUET_GATEWAY_ENGINE_PIPE_H */
