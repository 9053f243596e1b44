/* engine_local — continuous batching over the single-process engine (see
 * engine_local.h).
 *
 * Threads: submit/cancel/stats run on any thread and only touch the lists
 * and counters under `mu`. The worker alone drives the model engine and the
 * KV cache; it takes `mu` to move requests between lists and calls the
 * gateway's callbacks without holding it. A request is finished (on_finish)
 * exactly once: whoever unlinks it from the lists under `mu` finishes it. */
#include "gateway/engine_local.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "model/kvcache.h"

typedef struct lreq {
    uint64_t id;
    int32_t *prompt;
    int32_t n_prompt;
    int32_t prefilled; /* prompt tokens already in the KV cache */
    uint32_t n_gen;
    int32_t last_tok;
    uint32_t max_tokens;
    int32_t stop_ids[DUET_GW_ENGINE_MAX_STOP_IDS];
    uint32_t n_stop_ids;
    duet_sampling_params_t sp;
    duet_gw_engine_callbacks_t cb;
    void *user;
    int32_t seq;    /* -1 until admitted */
    int32_t blocks; /* KV blocks set aside at admission */
    bool cancel;
    struct lreq *next;
} lreq_t;

typedef struct local {
    duet_engine_t *eng;
    const duet_model_t *model;
    char *model_name;
    int32_t max_context;
    int32_t budget;   /* tokens per step */
    int32_t max_seqs; /* requests per step */
    int32_t block_size, total_blocks;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool quit;
    uint64_t next_id;
    lreq_t *waiting, *running; /* FIFO lists */
    uint32_t n_waiting, n_running;
    int32_t reserved_blocks;
    int32_t used_blocks; /* as of the last step, for stats */
    uint64_t steps, step_tokens;
    /* worker scratch, sized at creation */
    duet_seq_input_t *in;
    lreq_t **row_req;
    duet_sampling_params_t *row_sp;
    int32_t *row_tok;
} local_t;

static void list_append(lreq_t **head, lreq_t *r)
{
    r->next = NULL;
    while (*head)
        head = &(*head)->next;
    *head = r;
}

static bool list_remove(lreq_t **head, lreq_t *r)
{
    for (; *head; head = &(*head)->next)
        if (*head == r) {
            *head = r->next;
            return true;
        }
    return false;
}

static void req_free(lreq_t *r)
{
    duet_free(r->prompt);
    duet_free(r);
}

/* Caller holds mu and has unlinked r: give its KV back. */
static void release_locked(local_t *L, lreq_t *r)
{
    if (r->seq >= 0) {
        duet_kvcache_t *kv = duet_engine_kv(L->eng);
        duet_kvcache_seq_close(kv, r->seq);
        r->seq = -1;
        L->used_blocks = duet_kvcache_total_blocks(kv) - duet_kvcache_free_blocks(kv);
    }
    L->reserved_blocks -= r->blocks;
    r->blocks = 0;
}

static int32_t blocks_for(const local_t *L, int64_t tokens)
{
    return (int32_t)((tokens + L->block_size - 1) / L->block_size);
}

/* Under mu: unlink canceled requests into *done. */
static void collect_canceled(local_t *L, lreq_t **done)
{
    lreq_t **lists[2] = {&L->waiting, &L->running};
    for (int i = 0; i < 2; i++) {
        for (lreq_t **pp = lists[i]; *pp;) {
            lreq_t *r = *pp;
            if (!r->cancel) {
                pp = &r->next;
                continue;
            }
            *pp = r->next;
            if (i == 0)
                L->n_waiting--;
            else
                L->n_running--;
            release_locked(L, r);
            r->next = *done;
            *done = r;
        }
    }
}

/* Under mu: move waiting requests to running while KV and batch room last. */
static void admit(local_t *L)
{
    while (L->waiting && L->n_running < (uint32_t)L->max_seqs) {
        lreq_t *r = L->waiting;
        int32_t need = blocks_for(L, (int64_t)r->n_prompt + r->max_tokens);
        if (L->reserved_blocks + need > L->total_blocks)
            return;
        int32_t seq;
        if (duet_kvcache_seq_open(duet_engine_kv(L->eng), &seq) != DUET_OK)
            return;
        L->waiting = r->next;
        L->n_waiting--;
        r->seq = seq;
        r->blocks = need;
        L->reserved_blocks += need;
        list_append(&L->running, r);
        L->n_running++;
    }
}

static bool is_stop(const lreq_t *r, int32_t t)
{
    for (uint32_t i = 0; i < r->n_stop_ids; i++)
        if (r->stop_ids[i] == t)
            return true;
    return false;
}

static void finish_list(lreq_t *done, duet_gw_engine_finish_t reason, duet_status_t st,
                        const char *detail)
{
    while (done) {
        lreq_t *next = done->next;
        done->cb.on_finish(done->user, reason, st, detail);
        req_free(done);
        done = next;
    }
}

/* One scheduling step. Returns false when there was nothing to do. */
static bool step_once(local_t *L)
{
    lreq_t *canceled = NULL;
    pthread_mutex_lock(&L->mu);
    collect_canceled(L, &canceled);
    admit(L);
    /* decode tokens first (they hold latency), then prompt chunks */
    int32_t n_in = 0, n_rows = 0, budget = L->budget;
    for (int pass = 0; pass < 2; pass++) {
        for (lreq_t *r = L->running; r && budget > 0 && n_in < L->max_seqs; r = r->next) {
            bool decoding = r->prefilled == r->n_prompt;
            if (decoding != (pass == 0))
                continue;
            duet_seq_input_t *in = &L->in[n_in++];
            in->seq = r->seq;
            if (decoding) {
                in->n_tokens = 1;
                in->tokens = &r->last_tok;
                in->logits = DUET_LOGITS_LAST;
            } else {
                int32_t left = r->n_prompt - r->prefilled;
                in->n_tokens = left < budget ? left : budget;
                in->tokens = r->prompt + r->prefilled;
                in->logits = in->n_tokens == left ? DUET_LOGITS_LAST : DUET_LOGITS_NONE;
            }
            budget -= in->n_tokens;
            if (in->logits == DUET_LOGITS_LAST) {
                L->row_req[n_rows] = r;
                L->row_sp[n_rows] = r->sp;
                n_rows++;
            }
        }
    }
    pthread_mutex_unlock(&L->mu);
    finish_list(canceled, DUET_GW_ENGINE_FINISH_CANCELED, DUET_OK, NULL);
    if (n_in == 0)
        return canceled != NULL;

    duet_status_t st = duet_engine_step(L->eng, n_in, L->in, NULL, NULL);
    if (!st && n_rows)
        st = duet_engine_sample(L->eng, L->row_sp, L->row_tok);
    lreq_t *done_ok = NULL, *done_len = NULL, *failed = NULL;
    char detail[256] = "";
    pthread_mutex_lock(&L->mu);
    if (st) {
        /* the step did not happen: every request in it fails */
        snprintf(detail, sizeof(detail), "engine step failed: %s", duet_error());
        for (int32_t i = 0; i < n_in; i++) {
            for (lreq_t *r = L->running; r; r = r->next) {
                if (r->seq != L->in[i].seq)
                    continue;
                list_remove(&L->running, r);
                L->n_running--;
                release_locked(L, r);
                r->next = failed;
                failed = r;
                break;
            }
        }
    } else {
        L->steps++;
        for (int32_t i = 0; i < n_in; i++)
            L->step_tokens += (uint64_t)L->in[i].n_tokens;
        /* prompt progress */
        for (int32_t i = 0; i < n_in; i++)
            for (lreq_t *r = L->running; r; r = r->next)
                if (r->seq == L->in[i].seq && r->prefilled < r->n_prompt)
                    r->prefilled += L->in[i].n_tokens;
    }
    duet_kvcache_t *kv = duet_engine_kv(L->eng);
    L->used_blocks = duet_kvcache_total_blocks(kv) - duet_kvcache_free_blocks(kv);
    pthread_mutex_unlock(&L->mu);
    if (st) {
        finish_list(failed, DUET_GW_ENGINE_FINISH_ERROR, st, detail);
        return true;
    }

    /* deliver the sampled tokens; finish what is complete */
    for (int32_t i = 0; i < n_rows; i++) {
        lreq_t *r = L->row_req[i];
        int32_t t = L->row_tok[i];
        r->last_tok = t;
        r->n_gen++;
        r->cb.on_token(r->user, t);
        bool stop = is_stop(r, t);
        bool length =
            r->n_gen >= r->max_tokens || r->n_prompt + (int32_t)r->n_gen >= L->max_context;
        if (!stop && !length)
            continue;
        pthread_mutex_lock(&L->mu);
        bool mine = list_remove(&L->running, r); /* not if a cancel took it */
        if (mine) {
            L->n_running--;
            release_locked(L, r);
        }
        pthread_mutex_unlock(&L->mu);
        if (!mine)
            continue;
        if (stop) {
            r->next = done_ok;
            done_ok = r;
        } else {
            r->next = done_len;
            done_len = r;
        }
    }
    finish_list(done_ok, DUET_GW_ENGINE_FINISH_STOP, DUET_OK, NULL);
    finish_list(done_len, DUET_GW_ENGINE_FINISH_LENGTH, DUET_OK, NULL);
    return true;
}

static void *worker(void *arg)
{
    local_t *L = arg;
    for (;;) {
        pthread_mutex_lock(&L->mu);
        bool quit = L->quit;
        bool idle = !L->waiting && !L->running;
        if (!quit && idle) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1; /* bounded wait: re-check quit */
            pthread_cond_timedwait(&L->cv, &L->mu, &ts);
        }
        quit = L->quit;
        pthread_mutex_unlock(&L->mu);
        if (quit)
            break;
        if (!step_once(L)) {
            /* waiting requests that cannot be admitted yet and nothing
             * running: wait for a cancel or a new submit */
            pthread_mutex_lock(&L->mu);
            if (!L->quit && !L->running) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 50 * 1000 * 1000;
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&L->cv, &L->mu, &ts);
            }
            pthread_mutex_unlock(&L->mu);
        }
    }
    /* shutting down: everything left ends as canceled */
    lreq_t *left = NULL;
    pthread_mutex_lock(&L->mu);
    lreq_t **lists[2] = {&L->waiting, &L->running};
    for (int i = 0; i < 2; i++) {
        while (*lists[i]) {
            lreq_t *r = *lists[i];
            *lists[i] = r->next;
            release_locked(L, r);
            r->next = left;
            left = r;
        }
    }
    L->n_waiting = L->n_running = 0;
    pthread_mutex_unlock(&L->mu);
    finish_list(left, DUET_GW_ENGINE_FINISH_CANCELED, DUET_OK, NULL);
    return NULL;
}

/* ---- ops ------------------------------------------------------------------ */

static duet_status_t local_info(duet_gw_engine_t *eng, duet_gw_engine_info_t *out)
{
    local_t *L = eng->impl;
    const duet_config_t *c = &L->model->cfg;
    memset(out, 0, sizeof(*out));
    out->model_name = L->model_name;
    out->max_context = (uint32_t)L->max_context;
    out->vocab_size = (uint32_t)c->vocab;
    for (int i = 0; i < c->n_eos && i < DUET_GW_ENGINE_MAX_STOP_IDS; i++)
        out->eos_ids[out->n_eos_ids++] = c->eos_ids[i];
    return DUET_OK;
}

static duet_status_t local_submit(duet_gw_engine_t *eng, const duet_gw_engine_request_t *req,
                                  const duet_gw_engine_callbacks_t *cb, void *user,
                                  uint64_t *id_out)
{
    local_t *L = eng->impl;
    if (!req->prompt || req->n_prompt == 0 || req->max_tokens == 0)
        return duet_errorf(DUET_ERR_INVALID, "local engine: empty prompt or max_tokens 0");
    if (req->n_prompt + (uint64_t)req->max_tokens > (uint64_t)L->max_context)
        return duet_errorf(DUET_ERR_INVALID,
                           "local engine: %zu prompt + %u new tokens exceed the context of %d",
                           req->n_prompt, req->max_tokens, L->max_context);
    for (size_t i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= L->model->cfg.vocab)
            return duet_errorf(DUET_ERR_INVALID, "local engine: prompt[%zu] = %d out of range", i,
                               req->prompt[i]);
    lreq_t *r = duet_calloc(1, sizeof(*r));
    int32_t *p = duet_calloc(req->n_prompt, sizeof(int32_t));
    if (!r || !p) {
        duet_free(r);
        duet_free(p);
        return duet_errorf(DUET_ERR_NOMEM, "local engine: out of memory");
    }
    memcpy(p, req->prompt, req->n_prompt * sizeof(int32_t));
    r->prompt = p;
    r->n_prompt = (int32_t)req->n_prompt;
    r->max_tokens = req->max_tokens;
    r->n_stop_ids = req->n_stop_ids < DUET_GW_ENGINE_MAX_STOP_IDS ? req->n_stop_ids
                                                                  : DUET_GW_ENGINE_MAX_STOP_IDS;
    memcpy(r->stop_ids, req->stop_ids, r->n_stop_ids * sizeof(int32_t));
    r->sp = (duet_sampling_params_t){
        .temperature = req->temperature,
        .top_k = req->top_k > 0 ? req->top_k : 0,
        .top_p = req->top_p > 0 && req->top_p <= 1 ? req->top_p : 1.0f,
        .seed = req->seed,
    };
    r->cb = *cb;
    r->user = user;
    r->seq = -1;
    pthread_mutex_lock(&L->mu);
    if (L->quit) {
        pthread_mutex_unlock(&L->mu);
        req_free(r);
        return duet_errorf(DUET_ERR_CLOSED, "local engine: shutting down");
    }
    r->id = ++L->next_id;
    list_append(&L->waiting, r);
    L->n_waiting++;
    *id_out = r->id;
    pthread_cond_signal(&L->cv);
    pthread_mutex_unlock(&L->mu);
    return DUET_OK;
}

static duet_status_t local_cancel(duet_gw_engine_t *eng, uint64_t id)
{
    local_t *L = eng->impl;
    duet_status_t st = DUET_ERR_NOT_FOUND;
    pthread_mutex_lock(&L->mu);
    lreq_t *lists[2] = {L->waiting, L->running};
    for (int i = 0; i < 2; i++)
        for (lreq_t *r = lists[i]; r; r = r->next)
            if (r->id == id) {
                r->cancel = true;
                st = DUET_OK;
            }
    pthread_cond_signal(&L->cv);
    pthread_mutex_unlock(&L->mu);
    return st;
}

static duet_status_t local_stats(duet_gw_engine_t *eng, duet_gw_engine_stats_t *out)
{
    local_t *L = eng->impl;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&L->mu);
    out->ready = !L->quit;
    out->running = L->n_running;
    out->waiting = L->n_waiting;
    out->kv_blocks_total = (uint64_t)L->total_blocks;
    out->kv_blocks_used = (uint64_t)L->used_blocks;
    out->kv_usage = L->total_blocks ? (double)L->used_blocks / L->total_blocks : 0.0;
    out->n_extra = 3;
    out->extra[0] = (duet_gw_engine_metric_t){"duet_engine_steps_total",
                                              "Batched forward steps run.", true, (double)L->steps, ""};
    out->extra[1] = (duet_gw_engine_metric_t){"duet_engine_step_tokens_total",
                                              "Tokens (prompt and generated) through the model.",
                                              true, (double)L->step_tokens, ""};
    out->extra[2] = (duet_gw_engine_metric_t){"duet_kv_blocks_reserved",
                                              "KV blocks set aside for admitted requests.", false,
                                              (double)L->reserved_blocks, ""};
    pthread_mutex_unlock(&L->mu);
    return DUET_OK;
}

static const duet_gw_engine_ops_t local_ops = {
    .name = "local",
    .info = local_info,
    .submit = local_submit,
    .cancel = local_cancel,
    .stats = local_stats,
};

/* ---- create / destroy ---------------------------------------------------- */

static void local_free(local_t *L)
{
    duet_engine_destroy(&L->eng);
    duet_free(L->in);
    duet_free(L->row_req);
    duet_free(L->row_sp);
    duet_free(L->row_tok);
    duet_free(L->model_name);
    pthread_cond_destroy(&L->cv);
    pthread_mutex_destroy(&L->mu);
    duet_free(L);
}

duet_status_t duet_gw_local_create(duet_backend_t *be, const duet_model_t *model,
                                   const duet_engine_opts_t *eopts,
                                   const duet_gw_local_opts_t *opts, duet_gw_engine_t **out)
{
    duet_status_t st;
    if (!be || !model || !out)
        return duet_errorf(DUET_ERR_INVALID, "local engine: backend and model are required");
    local_t *L = duet_calloc(1, sizeof(*L));
    duet_gw_engine_t *e = duet_calloc(1, sizeof(*e));
    if (!L || !e) {
        duet_free(L);
        duet_free(e);
        return duet_errorf(DUET_ERR_NOMEM, "local engine: out of memory");
    }
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv, NULL);
    L->model = model;
    /* resolve the defaults here, so the batch limits are the engine's */
    duet_engine_opts_t eo = eopts ? *eopts : (duet_engine_opts_t){0};
    if (eo.fwd.max_tokens <= 0)
        eo.fwd.max_tokens = 512;
    if (eo.fwd.max_seqs <= 0)
        eo.fwd.max_seqs = 64;
    if (eo.fwd.max_logits <= 0 || eo.fwd.max_logits > eo.fwd.max_seqs)
        eo.fwd.max_logits = eo.fwd.max_seqs;
    if ((st = duet_engine_create(be, model, &eo, &L->eng))) {
        duet_error_wrap(st, "local engine");
        goto err_free;
    }
    duet_kvcache_t *kv = duet_engine_kv(L->eng);
    L->budget = eo.fwd.max_tokens;
    L->max_seqs = eo.fwd.max_seqs;
    L->block_size = duet_kvcache_block_size(kv);
    L->total_blocks = duet_kvcache_total_blocks(kv);
    int64_t ctx = opts && opts->max_context > 0 ? opts->max_context : model->cfg.max_pos;
    if (eo.kv.max_seq_len > 0 && ctx > eo.kv.max_seq_len)
        ctx = eo.kv.max_seq_len;
    if (ctx > (int64_t)L->total_blocks * L->block_size)
        ctx = (int64_t)L->total_blocks * L->block_size;
    if (ctx < 2) {
        st = duet_errorf(DUET_ERR_INVALID, "local engine: a context of %lld tokens is too small",
                         (long long)ctx);
        goto err_free;
    }
    L->max_context = (int32_t)ctx;
    const char *name = opts && opts->model_name ? opts->model_name : model->cfg.model_type;
    L->model_name = duet_strdup(name && *name ? name : "duet");
    L->in = duet_calloc((size_t)L->max_seqs, sizeof(*L->in));
    L->row_req = duet_calloc((size_t)L->max_seqs, sizeof(*L->row_req));
    L->row_sp = duet_calloc((size_t)L->max_seqs, sizeof(*L->row_sp));
    L->row_tok = duet_calloc((size_t)L->max_seqs, sizeof(*L->row_tok));
    if (!L->model_name || !L->in || !L->row_req || !L->row_sp || !L->row_tok) {
        st = duet_errorf(DUET_ERR_NOMEM, "local engine: out of memory");
        goto err_free;
    }
    if (pthread_create(&L->thread, NULL, worker, L) != 0) {
        st = duet_errorf(DUET_ERR_IO, "local engine: cannot start the worker thread");
        goto err_free;
    }
    e->ops = &local_ops;
    e->impl = L;
    *out = e;
    return DUET_OK;

err_free:
    local_free(L);
    duet_free(e);
    return st;
}

void duet_gw_local_destroy(duet_gw_engine_t **eng_p)
{
    if (!eng_p || !*eng_p)
        return;
    local_t *L = (*eng_p)->impl;
    pthread_mutex_lock(&L->mu);
    L->quit = true;
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->mu);
    pthread_join(L->thread, NULL);
    local_free(L);
    duet_free(*eng_p);
    *eng_p = NULL;
}
