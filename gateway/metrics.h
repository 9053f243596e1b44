/* metrics — the gateway's Prometheus counters and histograms (internal).
 * Names follow vLLM where vLLM has the metric; duet's own start duet_.
 * What changes per token (the histograms, generation_tokens) is atomic and
 * takes no lock, so that hundreds of streams do not queue on one mutex
 * behind a descheduled holder; per-request counters take `mu`. */
#ifndef DUET_GATEWAY_METRICS_H
#define DUET_GATEWAY_METRICS_H

#include <pthread.h>
#include <stdatomic.h>

#include "base/base.h"
#include "gateway/engine.h"

#define DUET__GW_MAX_BUCKETS 32

typedef struct duet__gw_hist {
    const double *bounds;
    size_t n_bounds;
    atomic_uint_fast64_t counts[DUET__GW_MAX_BUCKETS]; /* non-cumulative, per bound */
    atomic_uint_fast64_t count;
    atomic_uint_fast64_t sum_ns; /* sum of the observations in nanoseconds */
} duet__gw_hist_t;

typedef enum duet__gw_finish_label {
    DUET__GW_FIN_STOP = 0,
    DUET__GW_FIN_LENGTH,
    DUET__GW_FIN_ABORT,
    DUET__GW_FIN_ERROR,
    DUET__GW_FIN_COUNT
} duet__gw_finish_label_t;

typedef struct duet__gw_metrics {
    pthread_mutex_t mu;
    uint64_t prompt_tokens;
    atomic_uint_fast64_t generation_tokens;
    uint64_t request_finished[DUET__GW_FIN_COUNT];
    uint64_t http_by_class[6]; /* index status/100 */
    uint64_t stop_string_hits;
    uint64_t cancels_on_disconnect;
    uint64_t active_streams;
    duet__gw_hist_t ttft, itl, e2e;
    /* gateway overhead: a token's on_token -> its SSE bytes handed to the
     * socket (streaming only) */
    duet__gw_hist_t emit;
} duet__gw_metrics_t;

void duet__gw_metrics_init(duet__gw_metrics_t *m);
void duet__gw_metrics_cleanup(duet__gw_metrics_t *m);
void duet__gw_hist_observe(duet__gw_hist_t *h, double v); /* seconds; no lock needed */
/* Append the whole /metrics text. */
duet_status_t duet__gw_metrics_render(duet__gw_metrics_t *m, const char *model_name,
                                      const duet_gw_engine_stats_t *stats, duet_buf_t *out);

#endif
