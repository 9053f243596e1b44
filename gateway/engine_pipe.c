/* engine_pipe — the gateway's engine over the disaggregated pipeline (see
 * engine_pipe.h).
 *
 * Threads: submit/cancel/stats run on any thread and touch the request list
 * under `mu`. Callbacks run on the deployment's client actor thread (the
 * pipeline's on_token hook), one message at a time, so two callbacks of one
 * request never overlap; after duet_pipe_destroy has stopped the actors,
 * destroy finishes what is left. A request is finished (on_finish) exactly
 * once: whoever unlinks it under `mu` finishes it. */
#include "gateway/engine_pipe.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "model/model.h"
#include "model/sampling.h"

typedef struct preq {
    uint64_t id;
    uint32_t max_tokens, n_gen;
    int32_t stop_ids[DUET_GW_ENGINE_MAX_STOP_IDS];
    uint32_t n_stop_ids;
    bool cancel; /* cancel() was called */
    duet_gw_engine_callbacks_t cb;
    void *user;
    struct preq *next;
} preq_t;

typedef struct pengine {
    duet_pipe_t *pipe;
    char *model_name;
    duet_config_t mcfg; /* copy of the scalar fields we report */
    uint32_t max_context;
    pthread_mutex_t mu;
    bool quit;
    uint64_t next_id;
    preq_t *reqs;
} pengine_t;

static preq_t *unlink_id(pengine_t *E, uint64_t id)
{
    for (preq_t **pp = &E->reqs; *pp; pp = &(*pp)->next)
        if ((*pp)->id == id) {
            preq_t *r = *pp;
            *pp = r->next;
            return r;
        }
    return NULL;
}

static preq_t *find_id(pengine_t *E, uint64_t id)
{
    for (preq_t *r = E->reqs; r; r = r->next)
        if (r->id == id)
            return r;
    return NULL;
}

static bool is_stop(const preq_t *r, int32_t t)
{
    for (uint32_t i = 0; i < r->n_stop_ids; i++)
        if (r->stop_ids[i] == t)
            return true;
    return false;
}

/* The pipeline's client actor: one pipe.token. */
static void on_pipe_token(void *user, const duet_pipe_token_t *t)
{
    pengine_t *E = user;
    pthread_mutex_lock(&E->mu);
    preq_t *r = find_id(E, t->req);
    if (!r) { /* finished here already (a stop id, an error) */
        pthread_mutex_unlock(&E->mu);
        return;
    }
    if (t->error && t->error[0]) {
        unlink_id(E, t->req);
        bool canceled = r->cancel || !strcmp(t->error, DUET_PIPE_CANCELED);
        pthread_mutex_unlock(&E->mu);
        if (canceled)
            r->cb.on_finish(r->user, DUET_GW_ENGINE_FINISH_CANCELED, DUET_OK, NULL);
        else
            r->cb.on_finish(r->user, DUET_GW_ENGINE_FINISH_ERROR, DUET_ERR_IO, t->error);
        duet_free(r);
        return;
    }
    r->n_gen++;
    bool stop = is_stop(r, t->token);
    bool end = stop || t->done || r->n_gen >= r->max_tokens;
    if (end)
        unlink_id(E, t->req);
    pthread_mutex_unlock(&E->mu);
    r->cb.on_token(r->user, t->token);
    if (!end)
        return;
    r->cb.on_finish(r->user, stop ? DUET_GW_ENGINE_FINISH_STOP : DUET_GW_ENGINE_FINISH_LENGTH,
                    DUET_OK, NULL);
    if (!t->done) /* a stop id the pipeline does not know: free its KV there */
        duet_pipe_cancel(E->pipe, r->id);
    duet_free(r);
}

/* ---- ops ------------------------------------------------------------------ */

static duet_status_t pipe_info(duet_gw_engine_t *eng, duet_gw_engine_info_t *out)
{
    pengine_t *E = eng->impl;
    memset(out, 0, sizeof(*out));
    out->model_name = E->model_name;
    out->max_context = E->max_context;
    out->vocab_size = (uint32_t)E->mcfg.vocab;
    for (int i = 0; i < E->mcfg.n_eos && i < DUET_GW_ENGINE_MAX_STOP_IDS; i++)
        out->eos_ids[out->n_eos_ids++] = E->mcfg.eos_ids[i];
    return DUET_OK;
}

static duet_status_t pipe_submit(duet_gw_engine_t *eng, const duet_gw_engine_request_t *req,
                                 const duet_gw_engine_callbacks_t *cb, void *user,
                                 uint64_t *id_out)
{
    pengine_t *E = eng->impl;
    if (!req->prompt || req->n_prompt == 0 || req->max_tokens == 0)
        return duet_errorf(DUET_ERR_INVALID, "pipeline engine: empty prompt or max_tokens 0");
    if (req->n_prompt + (uint64_t)req->max_tokens > (uint64_t)E->max_context)
        return duet_errorf(DUET_ERR_INVALID,
                           "pipeline engine: %zu prompt + %u new tokens exceed the context of %u",
                           req->n_prompt, req->max_tokens, E->max_context);
    for (size_t i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= E->mcfg.vocab)
            return duet_errorf(DUET_ERR_INVALID, "pipeline engine: prompt[%zu] = %d out of range",
                               i, req->prompt[i]);
    duet_sampling_params_t sp = {
        .temperature = req->temperature,
        .top_k = req->top_k > 0 ? req->top_k : 0,
        .top_p = req->top_p > 0 && req->top_p <= 1 ? req->top_p : 1.0f,
        .seed = req->seed,
    };
    duet_status_t st = duet_sampling_params_check(&sp);
    if (st)
        return duet_error_wrap(st, "pipeline engine");
    preq_t *r = duet_calloc(1, sizeof(*r));
    if (!r)
        return duet_errorf(DUET_ERR_NOMEM, "pipeline engine: out of memory");
    r->max_tokens = req->max_tokens;
    r->n_stop_ids = req->n_stop_ids < DUET_GW_ENGINE_MAX_STOP_IDS ? req->n_stop_ids
                                                                  : DUET_GW_ENGINE_MAX_STOP_IDS;
    memcpy(r->stop_ids, req->stop_ids, r->n_stop_ids * sizeof(int32_t));
    r->cb = *cb;
    r->user = user;
    pthread_mutex_lock(&E->mu);
    if (E->quit) {
        pthread_mutex_unlock(&E->mu);
        duet_free(r);
        return duet_errorf(DUET_ERR_CLOSED, "pipeline engine: shutting down");
    }
    uint64_t id = ++E->next_id;
    r->id = id;
    r->next = E->reqs;
    E->reqs = r;
    pthread_mutex_unlock(&E->mu);
    /* the pipeline knows one eos; the other stop ids are matched above */
    int32_t eos = r->n_stop_ids ? r->stop_ids[0] : -1;
    duet_pipe_sampling_t ps = {sp.temperature, sp.top_k, sp.top_p, sp.seed};
    /* r may be finished by the client actor from here on: use only `id` */
    st = duet_pipe_submit_sampled(E->pipe, id, req->prompt, (int32_t)req->n_prompt,
                                  (int32_t)req->max_tokens, eos, &ps);
    if (st) {
        pthread_mutex_lock(&E->mu);
        preq_t *mine = unlink_id(E, id);
        pthread_mutex_unlock(&E->mu);
        duet_free(mine);
        return duet_error_wrap(st, "pipeline engine: submit");
    }
    *id_out = id;
    return DUET_OK;
}

static duet_status_t pipe_cancel(duet_gw_engine_t *eng, uint64_t id)
{
    pengine_t *E = eng->impl;
    pthread_mutex_lock(&E->mu);
    preq_t *r = find_id(E, id);
    if (r)
        r->cancel = true;
    pthread_mutex_unlock(&E->mu);
    if (!r)
        return DUET_ERR_NOT_FOUND;
    /* the scheduler answers with a last pipe.token {error "canceled"} (or
     * the request ends on its own first) */
    duet_status_t st = duet_pipe_cancel(E->pipe, id);
    return st ? duet_error_wrap(st, "pipeline engine: cancel") : DUET_OK;
}

static duet_status_t pipe_stats(duet_gw_engine_t *eng, duet_gw_engine_stats_t *out)
{
    pengine_t *E = eng->impl;
    memset(out, 0, sizeof(*out));
    duet_pipe_stats_t ps;
    duet_pipe_stats(E->pipe, &ps);
    pthread_mutex_lock(&E->mu);
    bool quit = E->quit;
    pthread_mutex_unlock(&E->mu);
    out->ready = !quit && ps.n_attention > 0 && ps.shards_ready == ps.n_attention;
    out->running = ps.running;
    out->waiting = ps.waiting;
    out->kv_blocks_total = ps.kv_blocks_total;
    out->kv_blocks_used = ps.kv_blocks_used;
    out->kv_usage = ps.kv_blocks_total ? (double)ps.kv_blocks_used / (double)ps.kv_blocks_total
                                       : 0.0;
    out->n_extra = 6;
    out->extra[0] = (duet_gw_engine_metric_t){"duet_pipe_steps_total",
                                              "Iterations completed by all attention shards.",
                                              true, (double)ps.steps};
    out->extra[1] = (duet_gw_engine_metric_t){"duet_pipe_expert_rounds_total",
                                              "Rounds computed by all expert shards.", true,
                                              (double)ps.rounds_expert};
    out->extra[2] = (duet_gw_engine_metric_t){
        "duet_pipe_dropped_messages_total",
        "Late, duplicate or stray control messages dropped.", true,
        (double)(ps.dropped_stray + ps.dropped_dup)};
    out->extra[3] = (duet_gw_engine_metric_t){"duet_pipe_kv_waits_total",
                                              "Requests that queued for KV blocks.", true,
                                              (double)ps.kv_waits};
    out->extra[4] = (duet_gw_engine_metric_t){"duet_pipe_canceled_total",
                                              "Requests canceled in the scheduler.", true,
                                              (double)ps.canceled};
    out->extra[5] = (duet_gw_engine_metric_t){"duet_pipe_attention_shards_ready",
                                              "Attention shards ready to serve.", false,
                                              (double)ps.shards_ready};
    return DUET_OK;
}

static const duet_gw_engine_ops_t pipe_ops = {
    .name = "pipeline",
    .info = pipe_info,
    .submit = pipe_submit,
    .cancel = pipe_cancel,
    .stats = pipe_stats,
};

/* ---- create / destroy ---------------------------------------------------- */

static void pengine_free(pengine_t *E)
{
    duet_free(E->model_name);
    pthread_mutex_destroy(&E->mu);
    duet_free(E);
}

duet_status_t duet_gw_pipe_create(const duet_pipe_config_t *cfg, const duet_gw_pipe_opts_t *opts,
                                  duet_gw_engine_t **out)
{
    if (!cfg || !out)
        return duet_errorf(DUET_ERR_INVALID, "pipeline engine: a deployment is required");
    if (cfg->only_node && strcmp(cfg->only_node, "ctl") != 0)
        return duet_errorf(DUET_ERR_INVALID,
                           "pipeline engine: the scheduler must run in this process");
    pengine_t *E = duet_calloc(1, sizeof(*E));
    duet_gw_engine_t *e = duet_calloc(1, sizeof(*e));
    if (!E || !e) {
        duet_free(E);
        duet_free(e);
        return duet_errorf(DUET_ERR_NOMEM, "pipeline engine: out of memory");
    }
    pthread_mutex_init(&E->mu, NULL);
    duet_pipe_config_t c = *cfg;
    c.on_token = on_pipe_token;
    c.on_token_user = E;
    duet_status_t st = duet_pipe_create(&c, &E->pipe);
    if (st) {
        pengine_free(E);
        duet_free(e);
        return st;
    }
    const duet_model_t *m = duet_pipe_model(E->pipe);
    E->mcfg.vocab = m->cfg.vocab;
    E->mcfg.max_pos = m->cfg.max_pos;
    E->mcfg.n_eos = m->cfg.n_eos;
    memcpy(E->mcfg.eos_ids, m->cfg.eos_ids, sizeof(E->mcfg.eos_ids));
    int64_t kvb = cfg->kv_blocks > 0 ? cfg->kv_blocks : 512;
    int64_t kvbs = cfg->kv_block_size > 0 ? cfg->kv_block_size : 16;
    int64_t ctx = m->cfg.max_pos;
    if (ctx > kvb * kvbs)
        ctx = kvb * kvbs;
    E->max_context = (uint32_t)(ctx > 0 ? ctx : 0);
    const char *name = opts && opts->model_name ? opts->model_name : m->cfg.model_type;
    E->model_name = duet_strdup(name && *name ? name : "duet");
    if (!E->model_name || E->max_context < 2) {
        st = E->model_name ? duet_errorf(DUET_ERR_INVALID,
                                         "pipeline engine: a context of %u tokens is too small",
                                         E->max_context)
                           : duet_errorf(DUET_ERR_NOMEM, "pipeline engine: out of memory");
        duet_pipe_destroy(&E->pipe);
        pengine_free(E);
        duet_free(e);
        return st;
    }
    e->ops = &pipe_ops;
    e->impl = E;
    *out = e;
    return DUET_OK;
}

bool duet_gw_pipe_wait_ready(duet_gw_engine_t *eng, uint32_t timeout_ms)
{
    pengine_t *E = eng->impl;
    uint64_t deadline = duet_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        duet_pipe_stats_t ps;
        duet_pipe_stats(E->pipe, &ps);
        if (ps.n_attention > 0 && ps.shards_ready == ps.n_attention)
            return true;
        if (duet_now_ns() >= deadline)
            return false;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void duet_gw_pipe_destroy(duet_gw_engine_t **eng_p)
{
    if (!eng_p || !*eng_p)
        return;
    pengine_t *E = (*eng_p)->impl;
    pthread_mutex_lock(&E->mu);
    E->quit = true;
    pthread_mutex_unlock(&E->mu);
    duet_pipe_destroy(&E->pipe); /* the client actor is gone after this */
    pthread_mutex_lock(&E->mu);
    preq_t *left = E->reqs;
    E->reqs = NULL;
    pthread_mutex_unlock(&E->mu);
    while (left) {
        preq_t *next = left->next;
        left->cb.on_finish(left->user, DUET_GW_ENGINE_FINISH_CANCELED, DUET_OK, NULL);
        duet_free(left);
        left = next;
    }
    pengine_free(E);
    duet_free(*eng_p);
    *eng_p = NULL;
}
