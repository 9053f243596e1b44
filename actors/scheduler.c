/* scheduler actor ("scheduler") — admission, placement, continuous batching.
 *
 * Takes: pipe.submit, pipe.ack, pipe.cancel (a client), pipe.ready and
 * pipe.step_done (attention shards), sys.down (attention shards, clients).
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
 * not wait for each other otherwise.
 *
 * Recovery is uniform, by recomputation. The scheduler keeps each
 * request's context: the prompt and every token already streamed. When a
 * step fails (an expert shard died, a round timed out, data did not match,
 * the data plane moved to a new epoch), when a step never answers, or when
 * an attention shard dies (monitor DOWN), the requests of that shard do not
 * end: their KV is freed (pipe.free; nothing to free on a dead shard) and
 * they queue again as a prefill of prompt + tokens already sent, placed on
 * any ready attention shard, continuing at the next position. Sampling is
 * deterministic per (seed, position), so the replay yields the same tokens,
 * and tokens are streamed by index, so the client sees none twice and none
 * missing. The failed shard serves again once it reports ready in a newer
 * data-plane epoch (the router starts one on pipe.resync, an expert shard's
 * death or return, an attention shard's death or return).
 * A request replayed more than PIPE_MAX_REPLAYS times in a row, without a
 * new token in between, ends with the last error (one that fails every
 * time it runs must not cycle for ever; one that keeps moving through a
 * storm of unrelated failures must not end); requests wait at most
 * recover_timeout_ms while no attention shard is ready, then end with an
 * error that says why. A shard that reports
 * ready in a newer epoch while a step of an older one is in flight (it was
 * restarted before its death was noticed, or the step's answer was lost)
 * fails that step at once.
 *
 * A restart (the scheduler runs under its node's supervisor) starts with
 * no requests: the client re-submits each open one with the tokens it has
 * (pipe.submit.generated), queued here as a replay that continues at the
 * next index; the attention shards, seeing the old scheduler DOWN, move to
 * a new epoch and report ready again, and the first ready of each is
 * answered with its keep_only list, freeing the old scheduler's KV there.
 * A pipe.ack that says the client has the whole stream of a request still
 * running here (it got the end from the old scheduler) ends it silently.
 *
 * The client stream (pipeline.h, pipe.ack): pipe.submit is acknowledged
 * and deduplicated by request id (finished ids are remembered); a finished
 * request stays until its client acknowledged the whole stream (or its
 * client is down, or KEEP_DONE_NS), and a quiet stream's unacknowledged
 * tail is sent again every RESEND_NS. Every client actor (reply_to) is
 * monitored: when it stops or its node goes silent, its requests are
 * canceled and their KV freed. Each idle ready shard gets the keep_only
 * list every KEEP_ONLY_TICKS ticks (a lost pipe.free is repaired). */
#include <stdio.h>
#include <string.h>

#include "actors/pipe_int.h"
#include "model/sampling.h"

#define MOD "sched"

enum { REQ_QUEUED, REQ_RUNNING, REQ_DONE };

#define PIPE_MAX_REPLAYS 16
#define TAG_TICK 7
#define RESEND_NS 500000000ull     /* a quiet stream's unacknowledged tail goes again */
#define KEEP_DONE_NS 10000000000ull /* a finished request waits this long for its ack */
#define KEEP_ONLY_TICKS 5           /* keep_only to each idle ready shard every 500 ms */
#define SEEN_IDS 4096               /* finished request ids remembered (pipe.submit repeats) */

typedef struct sreq {
    uint64_t id;
    char reply_to[128];
    int32_t *prompt; /* the context: prompt, then every token generated */
    int32_t n_prompt, max_new, eos;
    int32_t eos_more[64];
    int32_t n_eos_more;
    int32_t replays;
    int state;
    int shard;
    int32_t blocks;
    int32_t fed;   /* context tokens in the KV cache (after the steps done) */
    int32_t chunk; /* tokens in the step in flight (0: not in it) */
    int32_t *gen;
    int32_t n_gen;
    bool waited; /* counted in kv_waits */
    float temperature, top_p;
    int32_t top_k;
    uint64_t seed;
    bool canceled; /* pipe.cancel came while its step was in flight */
    bool orphan;   /* its client is down: nothing more is sent to it */
    char last_error[256];
    char final_err[256]; /* the terminal error sent ("" = none / ended ok) */
    int32_t acked;       /* stream messages the client acknowledged */
    uint64_t sent_ns;    /* when a stream message last went out */
    uint64_t done_ns;    /* when it finished */
} sreq_t;

typedef struct sclient {
    char name[128];
} sclient_t;

typedef struct sshard {
    bool ready, busy, broken, monitored;
    uint64_t epoch;     /* data-plane epoch it last reported ready in */
    uint64_t min_epoch; /* after a failure: ready again only in a newer epoch than this */
    uint64_t step_epoch, step_iter, step_sent; /* the step in flight */
    uint64_t unready_since;                    /* 0: ready */
    char why[256];                             /* why it is broken */
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
    uint64_t none_ready_since; /* 0: some shard is ready */
    char last_why[256];        /* the last failure seen (for errors) */
    char members[256];         /* who the router's latest epoch leaves out */
    uint64_t members_epoch;
    sclient_t *cl; /* client actors monitored (reply_to of pipe.submit) */
    size_t n_cl, cap_cl;
    uint64_t seen[SEEN_IDS]; /* ids of finished requests (ring) */
    size_t n_seen;
    uint64_t now;
    uint64_t ticks;
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
    if (r->orphan)
        return;
    r->sent_ns = duet_actor_now_ns(self);
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
    if (err) {
        snprintf(r->final_err, sizeof(r->final_err), "%s", err);
        send_token(self, r, r->n_gen, -1, true, err);
    }
    r->state = REQ_DONE;
    r->done_ns = duet_actor_now_ns(self);
}

/* Stream messages of a request: its tokens, then its terminal error. */
static int32_t n_out(const sreq_t *r)
{
    return r->n_gen + (r->final_err[0] ? 1 : 0);
}

/* Send the stream again from message `from` (a gap or a lost tail). */
static void resend(duet_actor_t *self, sreq_t *r, int32_t from)
{
    if (from < 0)
        from = 0;
    for (int32_t k = from; k < r->n_gen; k++)
        send_token(self, r, k, r->gen[k],
                   r->state == REQ_DONE && !r->final_err[0] && k == r->n_gen - 1, NULL);
    if (r->final_err[0] && from <= r->n_gen)
        send_token(self, r, r->n_gen, -1, true, r->final_err);
}

/* Finished requests go once their client has the whole stream (or is
 * down, or KEEP_DONE_NS passed); their ids are remembered. */
static void reap(sched_t *s)
{
    size_t w = 0;
    for (size_t i = 0; i < s->n_req; i++) {
        sreq_t *r = s->req[i];
        if (r->state == REQ_DONE &&
            (r->orphan || r->acked >= n_out(r) || s->now > r->done_ns + KEEP_DONE_NS)) {
            s->seen[s->n_seen++ % SEEN_IDS] = r->id;
            req_free(r);
        } else {
            s->req[w++] = r;
        }
    }
    s->n_req = w;
}

static bool seen_id(const sched_t *s, uint64_t id)
{
    size_t n = s->n_seen < SEEN_IDS ? s->n_seen : SEEN_IDS;
    for (size_t i = 0; i < n; i++)
        if (s->seen[i] == id)
            return true;
    for (size_t i = 0; i < s->n_req; i++)
        if (s->req[i]->id == id)
            return true;
    return false;
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
            int32_t n_ctx = r->n_prompt + r->n_gen;
            bool decode = r->fed > 0 && r->fed == n_ctx - 1;
            if (decode != (pass == 0) || r->fed >= n_ctx)
                continue;
            int best = -1;
            for (int u = 0; u < M; u++)
                if (seqs[u] < s->g->max_seqs_ub && tok[u] < s->g->max_tokens_ub &&
                    (best < 0 || tok[u] < tok[best]))
                    best = u;
            if (best < 0)
                break;
            int32_t chunk = n_ctx - r->fed;
            if (chunk > budget)
                chunk = budget;
            if (chunk > s->g->max_tokens_ub - tok[best])
                chunk = s->g->max_tokens_ub - tok[best];
            uint32_t fl = 0;
            memcpy(s->s_tokens + nt, r->prompt + r->fed, sizeof(int32_t) * (size_t)chunk);
            if (r->fed == 0)
                fl |= DUET_PIPE_SEQ_NEW;
            if (r->fed + chunk == n_ctx)
                fl |= DUET_PIPE_SEQ_LOGITS;
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
    sh->step_epoch = sh->epoch;
    sh->step_iter = sh->iter_next;
    sh->step_sent = duet_actor_now_ns(self);
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
        int best = -1;
        for (int a = 0; a < A; a++) {
            sshard_t *sh = &s->sh[a];
            if (sh->broken || !sh->ready || sh->blocks_used + r->blocks > s->a.kv_blocks ||
                sh->n_running >= 256)
                continue;
            int32_t room = s->a.kv_blocks - sh->blocks_used;
            if (best < 0 || room > s->a.kv_blocks - s->sh[best].blocks_used ||
                (room == s->a.kv_blocks - s->sh[best].blocks_used &&
                 sh->n_running < s->sh[best].n_running))
                best = a;
        }
        if (best < 0) { /* waits for KV to free up or a shard to be ready */
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

/* Shard `a` failed (its step failed or never answered, or it died): every
 * request on it queues again for a replay of its context. `free_kv`: the
 * shard is alive, free their KV there. */
static void shard_failed(duet_actor_t *self, sched_t *s, int a, const char *why, bool free_kv)
{
    sshard_t *sh = &s->sh[a];
    size_t nf = 0;
    snprintf(s->last_why, sizeof(s->last_why), "attn/%d: %.240s", a, why);
    snprintf(sh->why, sizeof(sh->why), "%.255s", why);
    for (size_t i = 0; i < s->n_req; i++) {
        sreq_t *r = s->req[i];
        if (r->state != REQ_RUNNING || r->shard != a)
            continue;
        if (free_kv)
            s->free_req[nf++] = r->id;
        sh->blocks_used -= r->blocks;
        sh->n_running--;
        r->chunk = 0;
        r->fed = 0;
        r->shard = -1;
        snprintf(r->last_error, sizeof(r->last_error), "attn/%d: %.240s", a, why);
        if (r->canceled) {
            r->state = REQ_QUEUED; /* its room is given back above */
            req_finish(self, s, r, DUET_PIPE_CANCELED);
            atomic_fetch_add(&s->a.counters->canceled, 1);
        } else if (++r->replays > PIPE_MAX_REPLAYS) {
            r->state = REQ_QUEUED;
            char err[400];
            snprintf(err, sizeof(err), "request %llu failed %d times; last: %.300s",
                     (unsigned long long)r->id, r->replays, r->last_error);
            req_finish(self, s, r, err);
        } else {
            r->state = REQ_QUEUED;
            atomic_fetch_add(&s->a.counters->replays, 1);
        }
        if (free_kv && nf >= 256) {
            duet_pipe_free_t f = {{s->free_req, nf}, false};
            char to[32];
            snprintf(to, sizeof(to), "attn/%d", a);
            duet_send(self, to, &duet_pipe_msg_free, &f);
            nf = 0;
        }
    }
    sh->blocks_used = 0;
    sh->n_running = 0;
    sh->busy = false;
    sh->ready = false;
    if (sh->min_epoch < sh->epoch + 1)
        sh->min_epoch = sh->epoch + 1;
    if (nf) {
        duet_pipe_free_t f = {{s->free_req, nf}, false};
        char to[32];
        snprintf(to, sizeof(to), "attn/%d", a);
        if (duet_send(self, to, &duet_pipe_msg_free, &f))
            DUET_LOG_D(MOD, "pipe.free to %s: %s", to, duet_error());
    }
    if (free_kv) { /* its data plane is out of step: a new epoch (once per epoch) */
        duet_pipe_resync_t rs = {.shard = a, .epoch = sh->epoch, .why = (char *)why};
        duet_send(self, "router", &duet_pipe_msg_resync, &rs);
    }
    DUET_LOG_I(MOD, "attn/%d failed (%s): its requests are replayed", a, why);
}

static bool is_eos(const sreq_t *r, int32_t tok)
{
    if (tok == r->eos)
        return true;
    for (int32_t k = 0; k < r->n_eos_more; k++)
        if (tok == r->eos_more[k])
            return true;
    return false;
}

static duet_status_t on_step_done(duet_actor_t *self, sched_t *s, const duet_pipe_step_done_t *d)
{
    if (d->shard < 0 || d->shard >= s->g->n_attention || !s->sh[d->shard].busy ||
        d->epoch != s->sh[d->shard].step_epoch || d->iter != s->sh[d->shard].step_iter) {
        DUET_LOG_D(MOD, "unexpected pipe.step_done from shard %d (epoch %llu, iter %llu)", d->shard,
                   (unsigned long long)d->epoch, (unsigned long long)d->iter);
        return DUET_OK;
    }
    sshard_t *sh = &s->sh[d->shard];
    sh->busy = false;
    size_t nf = 0;
    if (d->epoch != sh->epoch || !strcmp(d->error, "stale epoch")) {
        /* a step of an epoch the shard has left: it did not run; its
         * requests go again in the next step */
        for (size_t i = 0; i < s->n_req; i++)
            if (s->req[i]->state == REQ_RUNNING && s->req[i]->shard == d->shard)
                s->req[i]->chunk = 0;
        if (d->epoch == sh->epoch) { /* it moved on: wait for its ready in the new epoch */
            sh->ready = false;
            if (sh->min_epoch < sh->epoch + 1)
                sh->min_epoch = sh->epoch + 1;
        }
    } else if (d->error[0]) {
        shard_failed(self, s, d->shard, d->error, true);
    } else {
        const uint64_t *rq = d->req.data;
        const int32_t *tk = d->token.data;
        size_t nt = d->req.count < d->token.count ? d->req.count : d->token.count;
        for (size_t i = 0; i < s->n_req; i++) {
            sreq_t *r = s->req[i];
            if (r->state != REQ_RUNNING || r->shard != d->shard || !r->chunk)
                continue;
            r->fed += r->chunk;
            r->chunk = 0;
            if (r->fed < r->n_prompt + r->n_gen)
                continue; /* a prefill chunk: no token */
            for (size_t k = 0; k < nt; k++) {
                if (rq[k] != r->id)
                    continue;
                r->prompt[r->n_prompt + r->n_gen] = tk[k];
                r->gen[r->n_gen++] = tk[k];
                r->replays = 0; /* it moves: only failures in a row count */
                bool done = r->n_gen >= r->max_new || is_eos(r, tk[k]);
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
        duet_pipe_free_t f = {{s->free_req, nf}, false};
        char to[32];
        snprintf(to, sizeof(to), "attn/%d", d->shard);
        duet_status_t st = duet_send(self, to, &duet_pipe_msg_free, &f);
        if (st)
            DUET_LOG_W(MOD, "pipe.free to %s: %s", to, duet_error());
    }
    return kick(self, s);
}

/* Every 100 ms: steps that never answered, and requests that waited too
 * long for any attention shard to be ready. */
static duet_status_t on_tick(duet_actor_t *self, sched_t *s)
{
    uint64_t now = duet_actor_now_ns(self);
    const int A = s->g->n_attention;
    /* a step's rounds each have round_timeout_ms; the shard fails the step
     * itself then. One that never answers at all (a lost message, a hung
     * shard) is failed here after twice that plus a margin. */
    uint64_t step_to = ((uint64_t)s->g->round_timeout_ms * 2 + 1000) * 1000000ull;
    bool any_ready = false;
    for (size_t i = 0; i < s->n_req; i++) { /* lost tails of quiet streams */
        sreq_t *r = s->req[i];
        if (!r->orphan && r->sent_ns && r->acked < n_out(r) && now > r->sent_ns + RESEND_NS) {
            DUET_LOG_D(MOD, "req %llu: stream quiet, %d of %d acknowledged: sent again",
                       (unsigned long long)r->id, r->acked, n_out(r));
            resend(self, r, r->acked);
        }
    }
    if (++s->ticks % KEEP_ONLY_TICKS == 0) /* lost pipe.free: idle shards keep only ours */
        for (int a = 0; a < A; a++) {
            sshard_t *sh = &s->sh[a];
            if (!sh->ready || sh->busy || sh->broken)
                continue;
            size_t nk = 0;
            for (size_t i = 0; i < s->n_req && nk < 256; i++)
                if (s->req[i]->state == REQ_RUNNING && s->req[i]->shard == a)
                    s->free_req[nk++] = s->req[i]->id;
            if (nk >= 256)
                continue; /* a partial list would free live sequences */
            duet_pipe_free_t f = {{s->free_req, nk}, true};
            char to[32];
            snprintf(to, sizeof(to), "attn/%d", a);
            duet_send(self, to, &duet_pipe_msg_free, &f);
        }
    for (int a = 0; a < A; a++) {
        sshard_t *sh = &s->sh[a];
        if (sh->busy && now - sh->step_sent > step_to) {
            char why[160];
            snprintf(why, sizeof(why), "step %llu (epoch %llu) got no answer in %llu ms",
                     (unsigned long long)sh->step_iter, (unsigned long long)sh->step_epoch,
                     (unsigned long long)(step_to / 1000000ull));
            shard_failed(self, s, a, why, true);
        }
        bool ok = sh->ready && !sh->broken;
        any_ready |= ok;
        if (ok || sh->busy) {
            sh->unready_since = 0;
        } else if (!sh->unready_since) {
            sh->unready_since = now ? now : 1;
        } else if (sh->n_running > 0 &&
                   now - sh->unready_since > (uint64_t)s->a.recover_timeout_ms * 1000000ull) {
            /* its requests waited long enough for it: elsewhere, or end */
            char why[160];
            snprintf(why, sizeof(why), "not ready again within %u ms", s->a.recover_timeout_ms);
            shard_failed(self, s, a, why, true);
        }
    }
    if (any_ready) {
        s->none_ready_since = 0;
    } else {
        if (!s->none_ready_since)
            s->none_ready_since = now ? now : 1;
        uint64_t waited = now - s->none_ready_since;
        if (waited > (uint64_t)s->a.recover_timeout_ms * 1000000ull) {
            for (size_t i = 0; i < s->n_req; i++) {
                sreq_t *r = s->req[i];
                if (r->state != REQ_QUEUED)
                    continue;
                char err[512];
                snprintf(err, sizeof(err),
                         "no attention shard was ready for %u ms (recover_timeout_ms); %.200s; "
                         "last failure: %.200s",
                         s->a.recover_timeout_ms,
                         s->members[0] ? s->members : "every shard is a member",
                         s->last_why[0] ? s->last_why : "none seen");
                req_finish(self, s, r, err);
            }
        }
    }
    return kick(self, s);
}

/* Client `name` is down: every request of it ends (canceled, nothing sent
 * to it) and its KV is freed. */
static duet_status_t client_down(duet_actor_t *self, sched_t *s, const char *name,
                                 const char *reason)
{
    size_t k = 0;
    for (; k < s->n_cl && strcmp(s->cl[k].name, name); k++)
        ;
    if (k == s->n_cl)
        return DUET_OK;
    s->cl[k] = s->cl[--s->n_cl];
    int n = 0;
    for (size_t i = 0; i < s->n_req; i++) {
        sreq_t *r = s->req[i];
        if (strcmp(r->reply_to, name))
            continue;
        r->orphan = true;
        if (r->state == REQ_DONE)
            continue;
        n++;
        if (r->state == REQ_RUNNING && r->chunk) {
            r->canceled = true; /* ends when its step is done */
            continue;
        }
        int shard = r->state == REQ_RUNNING ? r->shard : -1;
        req_finish(self, s, r, DUET_PIPE_CANCELED);
        atomic_fetch_add(&s->a.counters->canceled, 1);
        if (shard >= 0) {
            duet_pipe_free_t f = {{&r->id, 1}, false};
            char to[32];
            snprintf(to, sizeof(to), "attn/%d", shard);
            if (duet_send(self, to, &duet_pipe_msg_free, &f))
                DUET_LOG_D(MOD, "pipe.free to %s: %s", to, duet_error());
        }
    }
    DUET_LOG_I(MOD, "client %s is down (%s): %d requests canceled", name, reason, n);
    return kick(self, s);
}

static duet_status_t on_down(duet_actor_t *self, sched_t *s, const duet_sys_down_t *dn)
{
    int a = -1;
    if (sscanf(dn->actor, "attn/%d", &a) != 1 || a < 0 || a >= s->g->n_attention)
        return client_down(self, s, dn->actor, dn->reason);
    sshard_t *sh = &s->sh[a];
    sh->monitored = false;
    char why[400];
    snprintf(why, sizeof(why), "attention shard attn/%d is down (%.300s)", a, dn->reason);
    shard_failed(self, s, a, why, false);
    /* a restarted shard rejoins in a newer epoch (shard_failed set min_epoch) */
    return kick(self, s);
}

static duet_status_t on_submit(duet_actor_t *self, sched_t *s, const duet_pipe_submit_t *m)
{
    duet_pipe_ack_t ack = {.req = m->req};
    if (duet_send(self, m->reply_to, &duet_pipe_msg_ack, &ack))
        DUET_LOG_D(MOD, "pipe.ack to %s: %s", m->reply_to, duet_error());
    if (seen_id(s, m->req))
        return DUET_OK; /* a repeat */
    size_t ci = 0;
    for (; ci < s->n_cl && strcmp(s->cl[ci].name, m->reply_to); ci++)
        ;
    if (ci == s->n_cl) { /* a new client: its requests end when it does */
        if (duet_vec_reserve((void **)&s->cl, &s->cap_cl, s->n_cl + 1, sizeof(sclient_t)))
            return DUET_ERR_NOMEM;
        snprintf(s->cl[s->n_cl].name, sizeof(s->cl[0].name), "%s", m->reply_to);
        if (duet_monitor(self, m->reply_to, NULL) == DUET_OK)
            s->n_cl++;
        else
            DUET_LOG_W(MOD, "monitor of client %s: %s", m->reply_to, duet_error());
    }
    sreq_t *r = duet_calloc(1, sizeof(*r));
    if (!r)
        return DUET_ERR_NOMEM;
    r->id = m->req;
    snprintf(r->reply_to, sizeof(r->reply_to), "%s", m->reply_to);
    r->n_prompt = (int32_t)m->prompt.count;
    r->max_new = m->max_new;
    r->eos = m->eos;
    const int32_t *more = m->eos_ids.data;
    for (size_t k = 0; k < m->eos_ids.count && k < 64; k++)
        r->eos_more[r->n_eos_more++] = more[k];
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
    else if (m->generated.count >= (size_t)r->max_new)
        snprintf(err, sizeof(err), "request %llu: re-submitted with %zu tokens of %d",
                 (unsigned long long)r->id, m->generated.count, r->max_new);
    else if (need > s->a.kv_blocks || (int64_t)r->n_prompt + r->max_new > s->a.max_seq_len)
        snprintf(err, sizeof(err),
                 "request %llu: %d prompt + %d new tokens do not fit one attention shard "
                 "(%d KV blocks of %d, at most %d positions)",
                 (unsigned long long)r->id, r->n_prompt, r->max_new, s->a.kv_blocks,
                 s->a.kv_block_size, s->a.max_seq_len);
    if (!err[0]) {
        r->prompt = duet_malloc(sizeof(int32_t) * ((size_t)r->n_prompt + (size_t)r->max_new));
        r->gen = duet_malloc(sizeof(int32_t) * (size_t)r->max_new);
        if (!r->prompt || !r->gen) {
            req_free(r);
            return DUET_ERR_NOMEM;
        }
        memcpy(r->prompt, m->prompt.data, sizeof(int32_t) * (size_t)r->n_prompt);
        /* a re-submission (we restarted): the client has these; the
         * request goes on after them, recomputing their KV like a replay */
        const int32_t *gen = m->generated.data;
        for (size_t k = 0; k < m->generated.count; k++) {
            r->prompt[r->n_prompt + r->n_gen] = gen[k];
            r->gen[r->n_gen++] = gen[k];
        }
        r->acked = r->n_gen;
        if (r->n_gen)
            atomic_fetch_add(&s->a.counters->replays, 1);
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
            duet_pipe_free_t f = {{&r->id, 1}, false};
            char to[32];
            snprintf(to, sizeof(to), "attn/%d", shard);
            if (duet_send(self, to, &duet_pipe_msg_free, &f))
                DUET_LOG_W(MOD, "pipe.free to %s: %s", to, duet_error());
        }
        return kick(self, s); /* reaps it; its room may admit another */
    }
    return DUET_OK;
}

/* pipe.ack from a client: it has the stream up to `next`. */
static duet_status_t on_ack(duet_actor_t *self, sched_t *s, const duet_pipe_ack_t *a)
{
    for (size_t i = 0; i < s->n_req; i++) {
        sreq_t *r = s->req[i];
        if (r->id != a->req)
            continue;
        if (a->next == INT32_MAX && r->state != REQ_DONE && !r->canceled) {
            /* the client has the whole stream (from a scheduler before a
             * restart): nothing more to send, end it */
            r->orphan = true;
            DUET_LOG_D(MOD, "req %llu: its client has all of it: ended",
                       (unsigned long long)r->id);
            return on_cancel(self, s, r->id);
        }
        if (a->next > r->acked)
            r->acked = a->next;
        if (a->resend && a->next < n_out(r))
            resend(self, r, a->next);
        if (r->state == REQ_DONE)
            reap(s);
        return DUET_OK;
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
    uint64_t mask = 0;
    for (int a = 0; a < s->g->n_attention; a++) {
        kv += (uint64_t)(s->sh[a].blocks_used > 0 ? s->sh[a].blocks_used : 0);
        ready += s->sh[a].ready && !s->sh[a].broken;
        if (a < 64 && s->sh[a].ready && !s->sh[a].broken)
            mask |= 1ull << a;
    }
    atomic_store(&s->a.counters->ready_mask, mask);
    atomic_store(&s->a.counters->running, run);
    atomic_store(&s->a.counters->waiting, wait);
    atomic_store(&s->a.counters->kv_used, kv);
    atomic_store(&s->a.counters->shards_ready, ready);
}

static duet_status_t sched_dispatch(duet_actor_t *self, sched_t *s, const duet_msg_t *msg);

static duet_status_t sched_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    sched_t *s = state;
    s->now = duet_actor_now_ns(self);
    duet_status_t st = sched_dispatch(self, s, msg);
    publish(s);
    return st;
}

static duet_status_t sched_dispatch(duet_actor_t *self, sched_t *s, const duet_msg_t *msg)
{
    const duet_pipe_cancel_t *cn = duet_pipe_msg_cancel_body(msg);
    if (cn)
        return on_cancel(self, s, cn->req);
    const duet_pipe_ack_t *ak = duet_pipe_msg_ack_body(msg);
    if (ak)
        return on_ack(self, s, ak);
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
        if (sh->busy && rd->epoch > sh->step_epoch) {
            /* ready in a newer epoch with a step of an older one in flight:
             * that step will not answer (the shard left its epoch, or it
             * was restarted before its death was noticed) */
            char why[160];
            snprintf(why, sizeof(why), "ready in epoch %llu while its step %llu of epoch %llu ran",
                     (unsigned long long)rd->epoch, (unsigned long long)sh->step_iter,
                     (unsigned long long)sh->step_epoch);
            shard_failed(self, s, rd->shard, why, false);
        }
        if (rd->epoch < sh->min_epoch)
            return DUET_OK; /* from before its failure */
        if (sh->ready && rd->epoch <= sh->epoch)
            return DUET_OK; /* a repeat */
        /* first ready, or back in a new epoch: iterations restart at 0 */
        if (!sh->monitored && duet_monitor(self, to, NULL) == DUET_OK)
            sh->monitored = true;
        {
            /* first ready, or back after a failure: whatever KV it holds
             * that is not ours goes (a lost pipe.free, requests replayed
             * elsewhere, those of a scheduler before a restart) */
            size_t nk = 0;
            for (size_t i = 0; i < s->n_req && nk < 256; i++)
                if (s->req[i]->state == REQ_RUNNING && s->req[i]->shard == rd->shard)
                    s->free_req[nk++] = s->req[i]->id;
            duet_pipe_free_t f = {{s->free_req, nk}, true};
            duet_send(self, to, &duet_pipe_msg_free, &f);
        }
        sh->ready = true;
        sh->broken = false;
        sh->epoch = rd->epoch;
        sh->iter_next = 0;
        return kick(self, s);
    }
    const duet_sys_down_t *dn = duet_msg_body(msg, &duet_msg_sys_down);
    if (dn)
        return on_down(self, s, dn);
    const duet_pipe_reset_t *rs = duet_pipe_msg_reset_body(msg);
    if (rs && rs->epoch >= s->members_epoch) { /* for error messages only */
        s->members_epoch = rs->epoch;
        int n = snprintf(s->members, sizeof(s->members), "data-plane epoch %llu leaves out",
                         (unsigned long long)rs->epoch);
        size_t base = (size_t)n;
        const uint32_t *la = rs->attn_live.data, *le = rs->expert_live.data;
        for (size_t i = 0; i < rs->attn_live.count && n > 0 && (size_t)n < 200; i++)
            if (!la[i])
                n += snprintf(s->members + n, sizeof(s->members) - (size_t)n, " attn/%zu", i);
        for (size_t i = 0; i < rs->expert_live.count && n > 0 && (size_t)n < 200; i++)
            if (!le[i])
                n += snprintf(s->members + n, sizeof(s->members) - (size_t)n, " expert/%zu", i);
        const uint32_t *off = rs->offsets.data;
        int gone = 0;
        for (size_t e = 0; e + 1 < rs->offsets.count && n > 0 && (size_t)n < 200; e++)
            if (off[e + 1] == off[e])
                n += snprintf(s->members + n, sizeof(s->members) - (size_t)n, "%s%zu",
                              gone++ ? "," : " (experts without a live shard: ", e);
        if (gone && n > 0 && (size_t)n < sizeof(s->members) - 1)
            snprintf(s->members + n, sizeof(s->members) - (size_t)n, ")");
        if ((size_t)n == base)
            s->members[0] = 0;
        return DUET_OK;
    }
    const duet_sys_timer_t *tm = duet_msg_body(msg, &duet_msg_sys_timer);
    if (tm && tm->tag == TAG_TICK)
        return on_tick(self, s);
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
    duet_free(s->cl);
    duet_free(s);
}

static duet_status_t sched_start(duet_actor_t *self, void *arg, void **state_out)
{
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
    if (!s->a.recover_timeout_ms)
        s->a.recover_timeout_ms = 10000;
    return duet_timer_start(self, 100, 100, TAG_TICK, NULL);
}

const duet_actor_ops_t duet__pipe_scheduler_ops = {
    .kind = "scheduler",
    .start = sched_start,
    .handle = sched_handle,
    .stop = sched_stop,
};
