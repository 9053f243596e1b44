/* scheduler actor ("scheduler") — admission, placement, continuous batching.
 *
 * Takes: pipe.submit (a client), pipe.ready and pipe.step_done (attention
 * shards).
 * Sends: pipe.ready back (the acknowledgement), pipe.step and pipe.free
 * (attention shards), pipe.token (the
 * request's reply_to, one per generated token; the last has done = true,
 * an error ends a request with done = true and error set).
 *
 * Placement reserves a request's whole KV need (prompt + max_new tokens) on
 * the attention shard with the most room left (ties: fewest requests); a
 * request that fits nowhere right now waits in FIFO order; one that could
 * never fit fails at once. Each iteration of a shard takes every decoding
 * request (one token) and then prefill chunks up to the token budget, and
 * spreads them over the m micro-batches by token count.
 *
 * Iterations are numbered per shard and every shard runs every iteration
 * (expert shards wait for every attention shard's rounds): a shard with
 * nothing to do runs an empty one when another shard started it. Shards do
 * not wait for each other otherwise. */
#include <stdio.h>
#include <string.h>

#include "actors/pipe_int.h"
#include "model/sampling.h"

#define MOD "sched"

enum { REQ_QUEUED, REQ_RUNNING, REQ_DONE };

typedef struct sreq {
    uint64_t id;
    char reply_to[128];
    int32_t *prompt;
    int32_t n_prompt, max_new, eos;
    int state;
    int shard;
    int32_t blocks;
    int32_t fed;   /* prompt tokens in the KV cache (after the steps done) */
    int32_t chunk; /* tokens in the step in flight (0: not in it) */
    int32_t *gen;
    int32_t n_gen;
    bool waited; /* counted in kv_waits */
    float temperature, top_p;
    int32_t top_k;
    uint64_t seed;
    bool canceled; /* pipe.cancel came while its step was in flight */
} sreq_t;

typedef struct sshard {
    bool ready, busy, broken;
    uint64_t epoch; /* data-plane epoch it last reported ready in */
    char why[256];  /* why it is broken */
    uint64_t iter_next;
    int32_t blocks_used;
    int n_running;
} sshard_t;

typedef struct sched {
    duet_pipe_sched_arg_t a;
    const duet_pipe_geom_t *g;
    sshard_t *sh;
    sreq_t **req;
    size_t n_req, cap_req;
    /* step build scratch */
    uint64_t *s_req;
    int32_t *s_ub, *s_ntok, *s_tokens;
    uint32_t *s_flags;
    float *s_temp, *s_topp;
    int32_t *s_topk;
    uint64_t *s_seed;
    uint64_t *free_req;
} sched_t;

static void req_free(sreq_t *r)
{
    if (!r)
        return;
    duet_free(r->prompt);
    duet_free(r->gen);
    duet_free(r);
}

static void send_token(duet_actor_t *self, sreq_t *r, int32_t index, int32_t tok, bool done,
                       const char *err)
{
    duet_pipe_token_t t = {r->id, index, tok, done, (char *)(err ? err : "")};
    duet_status_t st = duet_send(self, r->reply_to, &duet_pipe_msg_token, &t);
    if (st)
        DUET_LOG_W(MOD, "token for req %llu to %s: %s", (unsigned long long)r->id, r->reply_to,
                   duet_error());
}

/* Done (ok or not): release its KV reservation; the shard frees the KV. */
static void req_finish(duet_actor_t *self, sched_t *s, sreq_t *r, const char *err)
{
    if (r->state == REQ_RUNNING) {
        sshard_t *sh = &s->sh[r->shard];
        sh->blocks_used -= r->blocks;
        sh->n_running--;
    }
    if (err)
        send_token(self, r, r->n_gen, -1, true, err);
    r->state = REQ_DONE;
}

static void reap(sched_t *s)
{
    size_t w = 0;
    for (size_t i = 0; i < s->n_req; i++) {
        if (s->req[i]->state == REQ_DONE)
            req_free(s->req[i]);
        else
            s->req[w++] = s->req[i];
    }
    s->n_req = w;
}

static uint64_t max_epoch(const sched_t *s)
{
    uint64_t e = 0;
    for (int i = 0; i < s->g->n_attention; i++)
        if (s->sh[i].epoch > e)
            e = s->sh[i].epoch;
    return e;
}

/* Iterations are counted per epoch: shards still in an older one wait for
 * their reset. */
static uint64_t global_next(const sched_t *s)
{
    uint64_t g = 0, e = max_epoch(s);
    for (int i = 0; i < s->g->n_attention; i++)
        if (s->sh[i].epoch == e && s->sh[i].iter_next > g)
            g = s->sh[i].iter_next;
    return g;
}

/* Build and send one iteration of shard `a`. */
static duet_status_t start_step(duet_actor_t *self, sched_t *s, int a)
{
    const int M = s->g->m;
    int32_t tok[64] = {0}, seqs[64] = {0};
    int32_t budget = s->a.token_budget;
    size_t n = 0, nt = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < s->n_req && budget > 0; i++) {
            sreq_t *r = s->req[i];
            if (r->state != REQ_RUNNING || r->shard != a)
                continue;
            bool decode = r->fed == r->n_prompt;
            if (decode != (pass == 0))
                continue;
            int best = -1;
            for (int u = 0; u < M; u++)
                if (seqs[u] < s->g->max_seqs_ub && tok[u] < s->g->max_tokens_ub &&
                    (best < 0 || tok[u] < tok[best]))
                    best = u;
            if (best < 0)
                break;
            int32_t chunk = decode ? 1 : r->n_prompt - r->fed;
            if (chunk > budget)
                chunk = budget;
            if (chunk > s->g->max_tokens_ub - tok[best])
                chunk = s->g->max_tokens_ub - tok[best];
            uint32_t fl = 0;
            if (decode) {
                s->s_tokens[nt] = r->gen[r->n_gen - 1];
                fl = DUET_PIPE_SEQ_LOGITS;
            } else {
                memcpy(s->s_tokens + nt, r->prompt + r->fed, sizeof(int32_t) * (size_t)chunk);
                if (r->fed == 0)
                    fl |= DUET_PIPE_SEQ_NEW;
                if (r->fed + chunk == r->n_prompt)
                    fl |= DUET_PIPE_SEQ_LOGITS;
            }
            s->s_req[n] = r->id;
            s->s_ub[n] = best;
            s->s_ntok[n] = chunk;
            s->s_flags[n] = fl;
            s->s_temp[n] = r->temperature;
            s->s_topk[n] = r->top_k;
            s->s_topp[n] = r->top_p;
            s->s_seed[n] = r->seed;
            n++;
            nt += (size_t)chunk;
            tok[best] += chunk;
            seqs[best]++;
            budget -= chunk;
            r->chunk = chunk;
        }
    }
    sshard_t *sh = &s->sh[a];
    duet_pipe_step_t m = {
        .epoch = sh->epoch,
        .iter = sh->iter_next,
        .req = {s->s_req, n},
        .ub = {s->s_ub, n},
        .ntok = {s->s_ntok, n},
        .flags = {s->s_flags, n},
        .tokens = {s->s_tokens, nt},
        .temperature = {s->s_temp, n},
        .top_k = {s->s_topk, n},
        .top_p = {s->s_topp, n},
        .seed = {s->s_seed, n},
    };
    char to[32];
    snprintf(to, sizeof(to), "attn/%d", a);
    duet_status_t st = duet_send(self, to, &duet_pipe_msg_step, &m);
    if (st)
        return duet_error_wrap(st, "pipe.step to %s", to);
    sh->busy = true;
    sh->iter_next++;
    if (duet_obs_tracing(s->a.obs)) {
        int64_t queued = 0, running = 0, kv = 0;
        for (size_t i = 0; i < s->n_req; i++) {
            queued += s->req[i]->state == REQ_QUEUED;
            running += s->req[i]->state == REQ_RUNNING;
        }
        for (int k = 0; k < s->g->n_attention; k++)
            kv += s->sh[k].blocks_used;
        uint64_t now = duet_now_ns();
        duet_obs_ev(s->a.obs, 'C', DUET_TR_C_QUEUE, now, 0, 0, queued, running, 0, 0);
        duet_obs_ev(s->a.obs, 'C', DUET_TR_C_KV, now, 0, 0, kv, 0, 0, 0);
    }
    return DUET_OK;
}

static duet_status_t kick(duet_actor_t *self, sched_t *s)
{
    const int A = s->g->n_attention;
    /* placement, FIFO */
    for (size_t i = 0; i < s->n_req; i++) {
        sreq_t *r = s->req[i];
        if (r->state != REQ_QUEUED)
            continue;
        int best = -1, healthy = 0;
        for (int a = 0; a < A; a++) {
            sshard_t *sh = &s->sh[a];
            if (sh->broken)
                continue;
            healthy++;
            if (!sh->ready || sh->blocks_used + r->blocks > s->a.kv_blocks || sh->n_running >= 256)
                continue;
            int32_t room = s->a.kv_blocks - sh->blocks_used;
            if (best < 0 || room > s->a.kv_blocks - s->sh[best].blocks_used ||
                (room == s->a.kv_blocks - s->sh[best].blocks_used &&
                 sh->n_running < s->sh[best].n_running))
                best = a;
        }
        if (!healthy) {
            char why[384];
            snprintf(why, sizeof(why), "no attention shard is available (attn/0: %.300s)",
                     s->sh[0].why);
            req_finish(self, s, r, why);
            continue;
        }
        if (best < 0) { /* waits for KV to free up */
            if (!r->waited) {
                r->waited = true;
                atomic_fetch_add(&s->a.counters->kv_waits, 1);
            }
            break;
        }
        r->state = REQ_RUNNING;
        r->shard = best;
        s->sh[best].blocks_used += r->blocks;
        s->sh[best].n_running++;
    }
    reap(s);
    uint64_t gn = global_next(s), ge = max_epoch(s);
    for (int a = 0; a < A; a++) {
        sshard_t *sh = &s->sh[a];
        if (!sh->ready || sh->busy || sh->broken || sh->epoch != ge)
            continue;
        bool need = sh->iter_next < gn;
        for (size_t i = 0; i < s->n_req && !need; i++)
            need = s->req[i]->state == REQ_RUNNING && s->req[i]->shard == a;
        if (!need)
            continue;
        duet_status_t st = start_step(self, s, a);
        if (st)
            return st;
        gn = global_next(s);
        if (a > 0 && sh->iter_next == gn)
            a = -1; /* a new iteration started: earlier idle shards must run it too */
    }
    return DUET_OK;
}

static duet_status_t on_step_done(duet_actor_t *self, sched_t *s, const duet_pipe_step_done_t *d)
{
    if (d->shard < 0 || d->shard >= s->g->n_attention || !s->sh[d->shard].busy) {
        DUET_LOG_W(MOD, "unexpected pipe.step_done from shard %d", d->shard);
        return DUET_OK;
    }
    sshard_t *sh = &s->sh[d->shard];
    sh->busy = false;
    size_t nf = 0;
    if (d->epoch != sh->epoch) {
        /* a step of an epoch the shard has left: it did not run; its
         * requests go again in the next step */
        for (size_t i = 0; i < s->n_req; i++)
            if (s->req[i]->state == REQ_RUNNING && s->req[i]->shard == d->shard)
                s->req[i]->chunk = 0;
    } else if (d->error[0]) {
        sh->broken = true;
        snprintf(sh->why, sizeof(sh->why), "%.255s", d->error);
        for (size_t i = 0; i < s->n_req; i++) {
            sreq_t *r = s->req[i];
            if (r->state != REQ_RUNNING || r->shard != d->shard)
                continue;
            s->free_req[nf++] = r->id;
            req_finish(self, s, r, d->error);
        }
    } else {
        const uint64_t *rq = d->req.data;
        const int32_t *tk = d->token.data;
        size_t nt = d->req.count < d->token.count ? d->req.count : d->token.count;
        for (size_t i = 0; i < s->n_req; i++) {
            sreq_t *r = s->req[i];
            if (r->state != REQ_RUNNING || r->shard != d->shard || !r->chunk)
                continue;
            if (r->fed < r->n_prompt)
                r->fed += r->chunk;
            r->chunk = 0;
            for (size_t k = 0; k < nt; k++) {
                if (rq[k] != r->id)
                    continue;
                r->gen[r->n_gen++] = tk[k];
                bool done = r->n_gen >= r->max_new || tk[k] == r->eos;
                send_token(self, r, r->n_gen - 1, tk[k], done, NULL);
                if (done) {
                    s->free_req[nf++] = r->id;
                    req_finish(self, s, r, NULL);
                }
                break;
            }
        }
    }
    for (size_t i = 0; i < s->n_req; i++) { /* canceled while in this step */
        sreq_t *r = s->req[i];
        if (r->canceled && r->state == REQ_RUNNING && r->shard == d->shard && !r->chunk) {
            s->free_req[nf++] = r->id;
            req_finish(self, s, r, DUET_PIPE_CANCELED);
            atomic_fetch_add(&s->a.counters->canceled, 1);
        }
    }
    if (nf) {
        duet_pipe_free_t f = {{s->free_req, nf}};
        char to[32];
        snprintf(to, sizeof(to), "attn/%d", d->shard);
        duet_status_t st = duet_send(self, to, &duet_pipe_msg_free, &f);
        if (st)
            DUET_LOG_W(MOD, "pipe.free to %s: %s", to, duet_error());
    }
    return kick(self, s);
}

static duet_status_t on_submit(duet_actor_t *self, sched_t *s, const duet_pipe_submit_t *m)
{
    sreq_t *r = duet_calloc(1, sizeof(*r));
    if (!r)
        return DUET_ERR_NOMEM;
    r->id = m->req;
    snprintf(r->reply_to, sizeof(r->reply_to), "%s", m->reply_to);
    r->n_prompt = (int32_t)m->prompt.count;
    r->max_new = m->max_new;
    r->eos = m->eos;
    r->temperature = m->temperature;
    r->top_k = m->top_k;
    r->top_p = m->top_p;
    r->seed = m->seed;
    r->state = REQ_QUEUED;
    int64_t need =
        ((int64_t)r->n_prompt + r->max_new + s->a.kv_block_size - 1) / s->a.kv_block_size;
    r->blocks = (int32_t)(need > INT32_MAX ? INT32_MAX : need);
    char err[256] = "";
    duet_sampling_params_t sp = {r->temperature, r->top_k, r->top_p, r->seed};
    if (duet_sampling_params_check(&sp))
        snprintf(err, sizeof(err), "request %llu: %s", (unsigned long long)r->id, duet_error());
    else if (r->n_prompt < 1 || r->max_new < 1)
        snprintf(err, sizeof(err), "request %llu: empty prompt or max_new < 1",
                 (unsigned long long)r->id);
    else if (need > s->a.kv_blocks || (int64_t)r->n_prompt + r->max_new > s->a.max_seq_len)
        snprintf(err, sizeof(err),
                 "request %llu: %d prompt + %d new tokens do not fit one attention shard "
                 "(%d KV blocks of %d, at most %d positions)",
                 (unsigned long long)r->id, r->n_prompt, r->max_new, s->a.kv_blocks,
                 s->a.kv_block_size, s->a.max_seq_len);
    if (!err[0]) {
        r->prompt = duet_malloc(sizeof(int32_t) * (size_t)r->n_prompt);
        r->gen = duet_malloc(sizeof(int32_t) * (size_t)r->max_new);
        if (!r->prompt || !r->gen) {
            req_free(r);
            return DUET_ERR_NOMEM;
        }
        memcpy(r->prompt, m->prompt.data, sizeof(int32_t) * (size_t)r->n_prompt);
    }
    if (duet_vec_reserve((void **)&s->req, &s->cap_req, s->n_req + 1, sizeof(sreq_t *))) {
        req_free(r);
        return DUET_ERR_NOMEM;
    }
    s->req[s->n_req++] = r;
    if (err[0]) {
        req_finish(self, s, r, err);
        reap(s);
        return DUET_OK;
    }
    return kick(self, s);
}

/* pipe.cancel: a queued request or one between steps ends now (its KV
 * freed on its shard); one in a step in flight ends when the step is done. */
static duet_status_t on_cancel(duet_actor_t *self, sched_t *s, uint64_t id)
{
    for (size_t i = 0; i < s->n_req; i++) {
        sreq_t *r = s->req[i];
        if (r->id != id || r->state == REQ_DONE)
            continue;
        if (r->state == REQ_RUNNING && r->chunk) {
            r->canceled = true;
            return DUET_OK;
        }
        int shard = r->state == REQ_RUNNING ? r->shard : -1;
        req_finish(self, s, r, DUET_PIPE_CANCELED);
        atomic_fetch_add(&s->a.counters->canceled, 1);
        if (shard >= 0) {
            duet_pipe_free_t f = {{&r->id, 1}};
            char to[32];
            snprintf(to, sizeof(to), "attn/%d", shard);
            if (duet_send(self, to, &duet_pipe_msg_free, &f))
                DUET_LOG_W(MOD, "pipe.free to %s: %s", to, duet_error());
        }
        return kick(self, s); /* reaps it; its room may admit another */
    }
    return DUET_OK;
}

/* Running/waiting/KV for duet_pipe_stats. */
static void publish(sched_t *s)
{
    uint64_t run = 0, wait = 0, kv = 0, ready = 0;
    for (size_t i = 0; i < s->n_req; i++) {
        run += s->req[i]->state == REQ_RUNNING;
        wait += s->req[i]->state == REQ_QUEUED;
    }
    for (int a = 0; a < s->g->n_attention; a++) {
        kv += (uint64_t)(s->sh[a].blocks_used > 0 ? s->sh[a].blocks_used : 0);
        ready += s->sh[a].ready && !s->sh[a].broken;
    }
    atomic_store(&s->a.counters->running, run);
    atomic_store(&s->a.counters->waiting, wait);
    atomic_store(&s->a.counters->kv_used, kv);
    atomic_store(&s->a.counters->shards_ready, ready);
}

static duet_status_t sched_dispatch(duet_actor_t *self, sched_t *s, const duet_msg_t *msg);

static duet_status_t sched_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    sched_t *s = state;
    duet_status_t st = sched_dispatch(self, s, msg);
    publish(s);
    return st;
}

static duet_status_t sched_dispatch(duet_actor_t *self, sched_t *s, const duet_msg_t *msg)
{
    const duet_pipe_cancel_t *cn = duet_pipe_msg_cancel_body(msg);
    if (cn)
        return on_cancel(self, s, cn->req);
    const duet_pipe_step_done_t *d = duet_pipe_msg_step_done_body(msg);
    if (d)
        return on_step_done(self, s, d);
    const duet_pipe_submit_t *sub = duet_pipe_msg_submit_body(msg);
    if (sub)
        return on_submit(self, s, sub);
    const duet_pipe_ready_t *rd = duet_pipe_msg_ready_body(msg);
    if (rd && rd->shard >= 0 && rd->shard < s->g->n_attention) {
        /* acknowledge (the shard repeats pipe.ready until it hears back) */
        char to[32];
        snprintf(to, sizeof(to), "attn/%d", rd->shard);
        duet_pipe_ready_t ack = {.shard = rd->shard, .epoch = rd->epoch};
        duet_send(self, to, &duet_pipe_msg_ready, &ack);
        sshard_t *sh = &s->sh[rd->shard];
        if (sh->ready && rd->epoch <= sh->epoch)
            return DUET_OK; /* a repeat */
        /* first ready, or back in a new epoch: iterations restart at 0 */
        sh->ready = true;
        sh->broken = false;
        sh->epoch = rd->epoch;
        sh->iter_next = 0;
        return kick(self, s);
    }
    return DUET_OK;
}

static void sched_stop(duet_actor_t *self, void *state, const char *reason)
{
    (void)self, (void)reason;
    sched_t *s = state;
    if (!s)
        return;
    for (size_t i = 0; i < s->n_req; i++)
        req_free(s->req[i]);
    duet_free(s->req);
    duet_free(s->sh);
    duet_free(s->s_req);
    duet_free(s->s_ub);
    duet_free(s->s_ntok);
    duet_free(s->s_tokens);
    duet_free(s->s_flags);
    duet_free(s->s_temp);
    duet_free(s->s_topp);
    duet_free(s->s_topk);
    duet_free(s->s_seed);
    duet_free(s->free_req);
    duet_free(s);
}

static duet_status_t sched_start(duet_actor_t *self, void *arg, void **state_out)
{
    (void)self;
    sched_t *s = duet_calloc(1, sizeof(*s));
    if (!s)
        return DUET_ERR_NOMEM;
    *state_out = s;
    s->a = *(const duet_pipe_sched_arg_t *)arg;
    s->g = s->a.geom;
    if (s->g->m < 1 || s->g->m > 64)
        return duet_errorf(DUET_ERR_INVALID, "micro-batches %d: must be 1..64", s->g->m);
    size_t maxs = (size_t)s->g->m * (size_t)s->g->max_seqs_ub;
    size_t maxt = (size_t)s->a.token_budget + 1;
    s->sh = duet_calloc((size_t)s->g->n_attention, sizeof(sshard_t));
    s->s_req = duet_calloc(maxs, sizeof(uint64_t));
    s->s_ub = duet_calloc(maxs, sizeof(int32_t));
    s->s_ntok = duet_calloc(maxs, sizeof(int32_t));
    s->s_flags = duet_calloc(maxs, sizeof(uint32_t));
    s->s_temp = duet_calloc(maxs, sizeof(float));
    s->s_topp = duet_calloc(maxs, sizeof(float));
    s->s_topk = duet_calloc(maxs, sizeof(int32_t));
    s->s_seed = duet_calloc(maxs, sizeof(uint64_t));
    s->s_tokens = duet_calloc(maxt, sizeof(int32_t));
    s->free_req = duet_calloc(256 + maxs, sizeof(uint64_t));
    if (!s->sh || !s->s_req || !s->s_ub || !s->s_ntok || !s->s_flags || !s->s_tokens ||
        !s->free_req || !s->s_temp || !s->s_topp || !s->s_topk || !s->s_seed)
        return DUET_ERR_NOMEM;
    return DUET_OK;
}

const duet_actor_ops_t duet__pipe_scheduler_ops = {
    .kind = "scheduler",
    .start = sched_start,
    .handle = sched_handle,
    .stop = sched_stop,
};
