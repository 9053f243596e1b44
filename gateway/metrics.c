/* metrics — Prometheus text exposition (format 0.0.4) of the gateway's
 * counters and the engine's stats. Histogram buckets are vLLM's, so
 * dashboards built for vLLM read duet unchanged. */
#include "gateway/metrics.h"

#include <stdio.h>
#include <string.h>

static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                     0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                     20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
static const double itl_bounds[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                    0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double e2e_bounds[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                    5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

/* the gateway's own overhead: fine around its 1 ms goal */
static const double emit_bounds[] = {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.0006,
                                     0.0007,  0.0008,   0.0009,  0.001,  0.0015,  0.002,  0.0025,
                                     0.005,   0.01,     0.025,   0.05,   0.1,     0.25,   1.0};

void duet__gw_metrics_init(duet__gw_metrics_t *m)
{
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->mu, NULL);
    m->ttft.bounds = ttft_bounds;
    m->ttft.n_bounds = DUET_ARRAY_LEN(ttft_bounds);
    m->itl.bounds = itl_bounds;
    m->itl.n_bounds = DUET_ARRAY_LEN(itl_bounds);
    m->e2e.bounds = e2e_bounds;
    m->e2e.n_bounds = DUET_ARRAY_LEN(e2e_bounds);
    m->emit.bounds = emit_bounds;
    m->emit.n_bounds = DUET_ARRAY_LEN(emit_bounds);
}

void duet__gw_metrics_cleanup(duet__gw_metrics_t *m)
{
    pthread_mutex_destroy(&m->mu);
}

void duet__gw_hist_observe(duet__gw_hist_t *h, double v)
{
    if (!(v >= 0.0)) /* NaN or a clock going backwards */
        v = 0.0;
    if (v > 1e9) /* keeps sum_ns from overflowing; no bucket is that high */
        v = 1e9;
    /* bucket before count: a reader never sees a bucket above +Inf */
    for (size_t i = 0; i < h->n_bounds; i++) {
        if (v <= h->bounds[i]) {
            atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
            break;
        }
    }
    /* above every bound: counted only in +Inf (h->count) */
    atomic_fetch_add_explicit(&h->sum_ns, (uint64_t)(v * 1e9 + 0.5), memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_release);
}

/* A label value with \, " and newline escaped, as the format asks. */
static duet_status_t put_label(duet_buf_t *out, const char *s)
{
    for (; *s; s++) {
        const char *esc = NULL;
        if (*s == '\\')
            esc = "\\\\";
        else if (*s == '"')
            esc = "\\\"";
        else if (*s == '\n')
            esc = "\\n";
        duet_status_t st = esc ? duet_buf_append(out, esc, 2) : duet_buf_append(out, s, 1);
        if (st)
            return st;
    }
    return DUET_OK;
}

/* HELP text: \ and newline escaped. */
static duet_status_t put_help(duet_buf_t *out, const char *s)
{
    for (; s && *s; s++) {
        duet_status_t st = *s == '\n'   ? duet_buf_append(out, "\\n", 2)
                           : *s == '\\' ? duet_buf_append(out, "\\\\", 2)
                                        : duet_buf_append(out, s, 1);
        if (st)
            return st;
    }
    return duet_buf_append(out, "\n", 1);
}

static duet_status_t head(duet_buf_t *out, const char *name, const char *type, const char *help)
{
    if (duet_buf_printf(out, "# HELP %s ", name) || put_help(out, help))
        return DUET_ERR_NOMEM;
    return duet_buf_printf(out, "# TYPE %s %s\n", name, type);
}

static duet_status_t sample(duet_buf_t *out, const char *name, const char *model,
                            const char *extra_label, double v)
{
    if (duet_buf_printf(out, "%s{model_name=\"", name) || put_label(out, model))
        return DUET_ERR_NOMEM;
    if (extra_label && duet_buf_printf(out, "\",%s", extra_label))
        return DUET_ERR_NOMEM;
    return duet_buf_printf(out, "%s} %.17g\n", extra_label ? "" : "\"", v);
}

static duet_status_t hist(duet_buf_t *out, const char *name, const char *help, const char *model,
                          const duet__gw_hist_t *h)
{
    char n[128], le[64];
    if (head(out, name, "histogram", help))
        return DUET_ERR_NOMEM;
    /* count first: every observation it covers is in the buckets (they are
     * added before it), so the buckets never exceed +Inf */
    uint64_t count = atomic_load_explicit(&h->count, memory_order_acquire);
    uint64_t sum_ns = atomic_load_explicit(&h->sum_ns, memory_order_relaxed);
    uint64_t cum = 0;
    snprintf(n, sizeof(n), "%s_bucket", name);
    for (size_t i = 0; i < h->n_bounds; i++) {
        cum += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
        if (cum > count) /* observations still being added */
            cum = count;
        snprintf(le, sizeof(le), "le=\"%.17g\"", h->bounds[i]);
        if (sample(out, n, model, le, (double)cum))
            return DUET_ERR_NOMEM;
    }
    if (sample(out, n, model, "le=\"+Inf\"", (double)count))
        return DUET_ERR_NOMEM;
    snprintf(n, sizeof(n), "%s_sum", name);
    if (sample(out, n, model, NULL, (double)sum_ns * 1e-9))
        return DUET_ERR_NOMEM;
    snprintf(n, sizeof(n), "%s_count", name);
    return sample(out, n, model, NULL, (double)count);
}

duet_status_t duet__gw_metrics_render(duet__gw_metrics_t *m, const char *model,
                                      const duet_gw_engine_stats_t *es, duet_buf_t *out)
{
    static const char *const fin_names[DUET__GW_FIN_COUNT] = {"stop", "length", "abort", "error"};
    duet_status_t st = DUET_ERR_NOMEM;
    /* a snapshot of the per-request counters; the per-token ones are atomic */
    struct {
        uint64_t prompt_tokens, generation_tokens, stop_string_hits, cancels_on_disconnect;
        uint64_t active_streams, request_finished[DUET__GW_FIN_COUNT], http_by_class[6];
    } c;
    pthread_mutex_lock(&m->mu);
    c.prompt_tokens = m->prompt_tokens;
    c.stop_string_hits = m->stop_string_hits;
    c.cancels_on_disconnect = m->cancels_on_disconnect;
    c.active_streams = m->active_streams;
    memcpy(c.request_finished, m->request_finished, sizeof(c.request_finished));
    memcpy(c.http_by_class, m->http_by_class, sizeof(c.http_by_class));
    pthread_mutex_unlock(&m->mu);
    c.generation_tokens = atomic_load(&m->generation_tokens);

    if (head(out, "vllm:num_requests_running", "gauge",
             "Number of requests in model execution batches.") ||
        sample(out, "vllm:num_requests_running", model, NULL, es->running) ||
        head(out, "vllm:num_requests_waiting", "gauge",
             "Number of requests waiting to be processed.") ||
        sample(out, "vllm:num_requests_waiting", model, NULL, es->waiting) ||
        head(out, "vllm:kv_cache_usage_perc", "gauge",
             "KV-cache usage. 1 means 100 percent usage.") ||
        sample(out, "vllm:kv_cache_usage_perc", model, NULL, es->kv_usage) ||
        head(out, "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.") ||
        sample(out, "vllm:prompt_tokens_total", model, NULL, (double)c.prompt_tokens) ||
        head(out, "vllm:generation_tokens_total", "counter",
             "Number of generation tokens processed.") ||
        sample(out, "vllm:generation_tokens_total", model, NULL, (double)c.generation_tokens) ||
        head(out, "vllm:request_success_total", "counter",
             "Count of finished requests, by finish reason."))
        goto out;
    for (int i = 0; i < DUET__GW_FIN_COUNT; i++) {
        char lbl[64];
        snprintf(lbl, sizeof(lbl), "finished_reason=\"%s\"", fin_names[i]);
        if (sample(out, "vllm:request_success_total", model, lbl, (double)c.request_finished[i]))
            goto out;
    }
    if (hist(out, "vllm:time_to_first_token_seconds",
             "Histogram of time to first token in seconds.", model, &m->ttft) ||
        hist(out, "vllm:inter_token_latency_seconds",
             "Histogram of inter-token latency in seconds.", model, &m->itl) ||
        hist(out, "vllm:e2e_request_latency_seconds",
             "Histogram of end to end request latency in seconds.", model, &m->e2e) ||
        hist(out, "duet_gateway_emit_latency_seconds",
             "Gateway overhead on streams: from a token reaching the gateway (the engine's "
             "callback) to its SSE bytes being written to the socket.",
             model, &m->emit))
        goto out;

    /* duet's own */
    if (head(out, "duet_gw_engine_ready", "gauge", "1 when the pipeline can serve.") ||
        sample(out, "duet_gw_engine_ready", model, NULL, es->ready ? 1 : 0) ||
        head(out, "duet_kv_blocks_used", "gauge", "KV-cache blocks in use.") ||
        sample(out, "duet_kv_blocks_used", model, NULL, (double)es->kv_blocks_used) ||
        head(out, "duet_kv_blocks_total", "gauge", "KV-cache blocks in all.") ||
        sample(out, "duet_kv_blocks_total", model, NULL, (double)es->kv_blocks_total) ||
        head(out, "duet_gateway_http_responses_total", "counter",
             "HTTP responses by status class."))
        goto out;
    for (int i = 1; i < 6; i++) {
        char lbl[32];
        snprintf(lbl, sizeof(lbl), "code=\"%dxx\"", i);
        if (sample(out, "duet_gateway_http_responses_total", model, lbl,
                   (double)c.http_by_class[i]))
            goto out;
    }
    if (head(out, "duet_gateway_stop_string_hits_total", "counter",
             "Choices ended by a stop string.") ||
        sample(out, "duet_gateway_stop_string_hits_total", model, NULL,
               (double)c.stop_string_hits) ||
        head(out, "duet_gateway_disconnect_cancels_total", "counter",
             "Requests canceled because the client went away.") ||
        sample(out, "duet_gateway_disconnect_cancels_total", model, NULL,
               (double)c.cancels_on_disconnect) ||
        head(out, "duet_gateway_active_streams", "gauge", "Requests being generated right now.") ||
        sample(out, "duet_gateway_active_streams", model, NULL, (double)c.active_streams))
        goto out;
    const char *prev = NULL;
    for (uint32_t i = 0; i < es->n_extra && i < DUET_GW_ENGINE_MAX_EXTRA; i++) {
        const duet_gw_engine_metric_t *x = &es->extra[i];
        if (!x->name)
            continue;
        if ((!prev || strcmp(prev, x->name) != 0) &&
            head(out, x->name, x->counter ? "counter" : "gauge", x->help ? x->help : x->name))
            goto out;
        prev = x->name;
        if (sample(out, x->name, model, x->labels[0] ? x->labels : NULL, x->value))
            goto out;
    }
    st = DUET_OK;
out:
    return st;
}
