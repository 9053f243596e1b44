/* engine — what the gateway needs from whatever generates tokens.
 *
 * The gateway speaks HTTP and text; an engine speaks token ids. Today the
 * engine behind this interface is a test fake or the single-process engine;
 * in the disaggregated pipeline it is a thin adapter that turns these calls
 * into the scheduler's messages (submit -> scheduler admit, cancel -> abort,
 * token/finish messages from the attention shards -> the callbacks).
 *
 * Contract (both sides rely on it):
 *   1. submit() copies everything it needs from the request before it
 *      returns. If it fails it returns an error and never calls a callback
 *      for that request.
 *   2. After a successful submit, the engine calls on_token zero or more
 *      times and then on_finish exactly once, in that order, for that request
 *      — from any thread, possibly before submit() has returned, but never
 *      two callbacks of the same request at the same time. After on_finish
 *      it never touches `user` again.
 *   3. A generated token that is in req->stop_ids is delivered by on_token
 *      (it counts in usage) and then finishes the request with
 *      DUET_GW_ENGINE_FINISH_STOP. Reaching max_tokens finishes it with
 *      DUET_GW_ENGINE_FINISH_LENGTH (a stop id as the last allowed token is
 *      still STOP).
 *   4. cancel() is asynchronous and idempotent: the request still gets its
 *      on_finish (reason CANCELED, unless it had already finished), and its
 *      KV blocks are freed. Canceling an unknown or finished id returns
 *      DUET_ERR_NOT_FOUND and has no effect.
 *   5. Callbacks must be quick: they run on the engine's thread. The gateway
 *      only queues the token and wakes the connection.
 *   6. stats() and info() may be called from any thread at any time.
 *
 * Stop *strings* are not part of the engine request: only the gateway has
 * the detokenized text, so it matches them and cancels the request. */
#ifndef DUET_GATEWAY_ENGINE_H
#define DUET_GATEWAY_ENGINE_H

#include "base/base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum duet_gw_engine_finish {
    DUET_GW_ENGINE_FINISH_STOP = 0,     /* a stop id was generated */
    DUET_GW_ENGINE_FINISH_LENGTH = 1,   /* max_tokens reached (or the context is full) */
    DUET_GW_ENGINE_FINISH_CANCELED = 2, /* cancel() was called */
    DUET_GW_ENGINE_FINISH_ERROR = 3,    /* the engine failed the request; see status */
} duet_gw_engine_finish_t;

#define DUET_GW_ENGINE_MAX_STOP_IDS 8

typedef struct duet_gw_engine_request {
    const int32_t *prompt; /* prompt token ids, n_prompt >= 1 */
    size_t n_prompt;
    /* sampling: temperature 0 is greedy; top_k <= 0 is off; top_p in (0, 1] */
    float temperature;
    float top_p;
    int32_t top_k;
    uint64_t seed;       /* the gateway always fills it (random if the client gave none) */
    uint32_t max_tokens; /* >= 1 */
    int32_t stop_ids[DUET_GW_ENGINE_MAX_STOP_IDS];
    uint32_t n_stop_ids;
} duet_gw_engine_request_t;

typedef struct duet_gw_engine_callbacks {
    void (*on_token)(void *user, int32_t token);
    /* `status` is DUET_OK unless reason is ERROR; `detail` (may be NULL) is
     * only valid during the call. */
    void (*on_finish)(void *user, duet_gw_engine_finish_t reason, duet_status_t status,
                      const char *detail);
} duet_gw_engine_callbacks_t;

#define DUET_GW_ENGINE_MAX_EXTRA 96

/* One duet_* metric sample the engine wants on /metrics. `name` must be a
 * valid Prometheus metric name and stay valid while the engine lives.
 * Samples of one name (differing in `labels`) must be consecutive; the
 * first one's help and type are used. */
typedef struct duet_gw_engine_metric {
    const char *name;
    const char *help;
    bool counter; /* false: gauge */
    double value;
    char labels[64]; /* more label pairs, e.g. actor="attn/0" (escaped); "" none */
} duet_gw_engine_metric_t;

typedef struct duet_gw_engine_stats {
    bool ready;       /* the pipeline can serve: /health is 200 only then */
    uint32_t running; /* requests generating */
    uint32_t waiting; /* admitted, waiting for KV / a batch slot */
    double kv_usage;  /* used KV blocks / total, in [0, 1] */
    uint64_t kv_blocks_used;
    uint64_t kv_blocks_total;
    uint32_t n_extra;
    duet_gw_engine_metric_t extra[DUET_GW_ENGINE_MAX_EXTRA];
} duet_gw_engine_stats_t;

typedef struct duet_gw_engine_info {
    const char *model_name; /* served model id; must outlive the engine's use */
    uint32_t max_context;   /* prompt + generated tokens per request */
    uint32_t vocab_size;    /* token ids in a prompt must be below this */
    int32_t eos_ids[DUET_GW_ENGINE_MAX_STOP_IDS]; /* from config.json / generation_config.json */
    uint32_t n_eos_ids;
} duet_gw_engine_info_t;

typedef struct duet_gw_engine duet_gw_engine_t;

typedef struct duet_gw_engine_ops {
    const char *name;
    duet_status_t (*info)(duet_gw_engine_t *eng, duet_gw_engine_info_t *out);
    duet_status_t (*submit)(duet_gw_engine_t *eng, const duet_gw_engine_request_t *req,
                            const duet_gw_engine_callbacks_t *cb, void *user, uint64_t *id_out);
    duet_status_t (*cancel)(duet_gw_engine_t *eng, uint64_t id);
    duet_status_t (*stats)(duet_gw_engine_t *eng, duet_gw_engine_stats_t *out);
} duet_gw_engine_ops_t;

/* An engine instance: the ops plus its private state. The creator owns it;
 * it must outlive every gateway that uses it. */
struct duet_gw_engine {
    const duet_gw_engine_ops_t *ops;
    void *impl;
};

#ifdef __cplusplus
}
#endif
#endif /* DUET_GATEWAY_ENGINE_H */
