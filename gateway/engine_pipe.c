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
    pthread_mutex_t stats_mu; /* one pipe.stats_req round at a time */
    int n_expert_shards;
    bool sim; /* a simulated deployment: only its driver may step it */
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
    /* every stop id ends the request in the pipeline (its KV freed there) */
    int32_t stop[DUET_GW_ENGINE_MAX_STOP_IDS];
    size_t n_stop = r->n_stop_ids;
    memcpy(stop, r->stop_ids, n_stop * sizeof(int32_t));
    int32_t eos = n_stop ? stop[0] : -1;
    duet_pipe_sampling_t ps = {sp.temperature, sp.top_k, sp.top_p, sp.seed, stop,
                               (int32_t)n_stop};
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

#define PIPE_MAX_ACTORS 16 /* per-actor samples for at most this many shards */
#define PIPE_STATS_MS 100  /* wait for one shard's pipe.actor_stats */

typedef struct actor_answer {
    char name[24];
    bool ok;
    duet_pipe_actor_stats_t st;
} actor_answer_t;

/* Ask every shard for its counters (pipe.stats_req). The KV blocks in use
 * are the attention shards' own count (the scheduler's kv_used is its
 * reservation: prompt + max_tokens of every placed request, not what the
 * caches hold); *kv_ok is false when an attention shard did not answer. */
static int ask_actors(pengine_t *E, uint32_t n_attention, actor_answer_t *ans, uint64_t *kv,
                      bool *kv_ok)
{
    int n = 0;
    *kv = 0;
    *kv_ok = true;
    pthread_mutex_lock(&E->stats_mu);
    uint32_t total = n_attention + (uint32_t)E->n_expert_shards;
    for (uint32_t i = 0; i < total; i++) {
        bool attn = i < n_attention;
        actor_answer_t a = {.ok = false};
        if (attn)
            snprintf(a.name, sizeof(a.name), "attn/%u", i);
        else
            snprintf(a.name, sizeof(a.name), "expert/%u", i - n_attention);
        a.ok = duet_pipe_actor_stats(E->pipe, a.name, &a.st, PIPE_STATS_MS) == DUET_OK;
        if (attn && a.ok)
            *kv += a.st.kv_blocks_used;
        else if (attn)
            *kv_ok = false;
        if (n < PIPE_MAX_ACTORS)
            ans[n++] = a;
    }
    pthread_mutex_unlock(&E->stats_mu);
    return n;
}

static void put_extra(duet_gw_engine_stats_t *out, const char *name, const char *help,
                      bool counter, double v, const char *actor)
{
    if (out->n_extra >= DUET_GW_ENGINE_MAX_EXTRA)
        return;
    duet_gw_engine_metric_t *x = &out->extra[out->n_extra++];
    x->name = name;
    x->help = help;
    x->counter = counter;
    x->value = v;
    if (actor)
        snprintf(x->labels, sizeof(x->labels), "actor=\"%.40s\"", actor);
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
    uint64_t in_use = 0;
    bool live = false;
    actor_answer_t ans[PIPE_MAX_ACTORS];
    int n_ans = quit || E->sim ? 0 : ask_actors(E, ps.n_attention, ans, &in_use, &live);
    /* a shard that does not answer: the reservation bounds its use */
    out->kv_blocks_used = live ? in_use : ps.kv_blocks_used;
    if (out->kv_blocks_used > out->kv_blocks_total)
        out->kv_blocks_used = out->kv_blocks_total;
    out->kv_usage = ps.kv_blocks_total ? (double)out->kv_blocks_used / (double)ps.kv_blocks_total
                                       : 0.0;
    put_extra(out, "duet_pipe_steps_total", "Iterations completed by all attention shards.", true,
              (double)ps.steps, NULL);
    put_extra(out, "duet_pipe_expert_rounds_total", "Rounds computed by all expert shards.", true,
              (double)ps.rounds_expert, NULL);
    put_extra(out, "duet_pipe_dropped_messages_total",
              "Late, duplicate or stray control messages dropped.", true,
              (double)(ps.dropped_stray + ps.dropped_dup), NULL);
    put_extra(out, "duet_pipe_kv_waits_total", "Requests that queued for KV blocks.", true,
              (double)ps.kv_waits, NULL);
    put_extra(out, "duet_pipe_canceled_total", "Requests canceled in the scheduler.", true,
              (double)ps.canceled, NULL);
    put_extra(out, "duet_pipe_attention_shards_ready", "Attention shards ready to serve.", false,
              (double)ps.shards_ready, NULL);
    put_extra(out, "duet_kv_blocks_reserved",
              "KV blocks the scheduler reserved (prompt + max_tokens of every placed request).",
              false, (double)ps.kv_blocks_used, NULL);
    put_extra(out, "duet_kv_usage_live",
              "1 when the KV metrics are the attention shards' own count, 0 when a shard did not "
              "answer and they are the reservation.",
              false, live ? 1.0 : 0.0, NULL);
    /* faults seen */
    put_extra(out, "duet_pipe_replays_total",
              "Requests re-placed and recomputed after a shard failure.", true,
              (double)ps.replays, NULL);
    put_extra(out, "duet_pipe_epochs_total", "Data-plane epochs started (one per recovery).",
              true, (double)ps.epochs, NULL);
    put_extra(out, "duet_pipe_restarts_total", "Shard restarts by the supervisors.", true,
              (double)ps.restarts, NULL);
    /* per actor, from the shards' own counters */
    static const struct {
        const char *name, *help;
    } per[] = {
        {"duet_actor_busy_seconds_total",
         "Time the shard spent computing (attention, dispatch, combine, logits; an expert "
         "shard's gather, FFN and write-back)."},
        {"duet_actor_rounds_total", "Rounds dispatched (attention) or computed (expert)."},
        {"duet_actor_tokens_total", "Tokens run (attention) or rows computed (expert)."},
        {"duet_actor_data_bytes_total", "Data-plane bytes written and read."},
        {"duet_actor_up", "1 when the shard answered pipe.stats_req just now."},
    };
    for (size_t k = 0; k < DUET_ARRAY_LEN(per); k++) {
        for (int i = 0; i < n_ans; i++) {
            const duet_pipe_actor_stats_t *a = &ans[i].st;
            if (!ans[i].ok && k + 1 < DUET_ARRAY_LEN(per))
                continue;
            double v = k == 0   ? (double)a->busy_ns * 1e-9
                       : k == 1 ? (double)a->rounds
                       : k == 2 ? (double)a->tokens
                       : k == 3 ? (double)a->bytes
                                : (ans[i].ok ? 1.0 : 0.0);
            put_extra(out, per[k].name, per[k].help, k + 1 < DUET_ARRAY_LEN(per), v,
                      ans[i].name);
        }
    }
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
    pthread_mutex_destroy(&E->stats_mu);
    duet_free(E);
}

duet_status_t duet_gw_pipe_create(const duet_pipe_config_t *cfg, const duet_gw_pipe_opts_t *opts,
                                  duet_gw_engine_t **out)
{
    if (!cfg || !out)
        return duet_errorf(DUET_ERR_INVALID, "pipeline engine: a deployment is required");
    const char *sched_node = cfg->n_nodes > 0 && cfg->node_names &&
                                     cfg->scheduler_node >= 0 &&
                                     cfg->scheduler_node < cfg->n_nodes &&
                                     cfg->node_names[cfg->scheduler_node]
                                 ? cfg->node_names[cfg->scheduler_node]
                                 : "ctl";
    if (cfg->only_node && strcmp(cfg->only_node, sched_node) != 0)
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
    pthread_mutex_init(&E->stats_mu, NULL);
    E->n_expert_shards = cfg->n_expert_shards > 0 ? cfg->n_expert_shards : 0;
    E->sim = cfg->control == DUET_PIPE_CONTROL_SIM;
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
