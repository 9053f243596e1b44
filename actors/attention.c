/* attention shard actor ("attn/<a>") — attention weights, KV cache, routing.
 *
 * Takes: pipe.wire (expert shards' data-plane info), pipe.table (router),
 * pipe.ready (the scheduler's acknowledgement), pipe.step
 * (scheduler; one iteration split into m micro-batches), pipe.result (expert
 * shards), pipe.free (scheduler), sys.down (a monitored expert shard died),
 * sys.timer (progress watchdog).
 * Sends: pipe.wire (expert shards), pipe.hello (router), pipe.ready,
 * pipe.step_done (scheduler), pipe.dispatch (expert shards, after the
 * round's M2N write), pipe.load (router). Start-up messages repeat every
 * 50 ms until answered.
 *
 * A step starts every micro-batch: each runs its attention halves until
 * its first sparse layer, writes round r = (iter·S + j)·m + i to every
 * expert shard and waits. Whichever micro-batch's round is complete (a
 * pipe.result from every expert shard) combines and runs on to its next
 * sparse layer, so micro-batch i+1's attention overlaps the experts' work
 * on micro-batch i. When all micro-batches ran their last layer the step
 * ends with their sampled tokens.
 *
 * Membership and recovery: a data-plane epoch (pipe.reset from the router)
 * names the expert shards and attention shards that take part and carries
 * the routing table over the live expert shards; rounds go to, and wait
 * for, those only. A failed step (a round that timed out, data that did
 * not match, an expert shard's error or death) is reported to the
 * scheduler (which replays its requests) and to the router (pipe.resync:
 * the data plane of this epoch is out of step); the shard refuses steps
 * until a newer epoch. pipe.hello repeats every 100 ms for as long as the
 * shard lives: the router's view of it. pipe.free that comes during a step
 * waits for the step's end. A first chunk (SEQ_NEW) for a request that
 * still has a KV sequence here (a replay whose pipe.free was lost) starts
 * it afresh. */
#include <stdio.h>
#include <string.h>

#include "actors/pipe_int.h"
#include "model/kvcache.h"

#define MOD "attn"
#define DATA_TAG 3 /* sys.timer tag: look again for a round's data (combine_ready) */

typedef struct ub_state {
    duet_ubatch_t *ub;
    duet_dispatch_t d;
    int32_t n_seqs, n_tok;
    duet_seq_input_t *in;       /* [max_seqs] */
    uint64_t *req;              /* [max_seqs] */
    duet_sampling_params_t *sp; /* [max_seqs] */
    int32_t *tok;               /* [max_tokens] */
    int layer, sparse_j;
    bool begun, done, waiting;
    uint64_t round;
    uint64_t data_since; /* actor time the wait for the round's data began (0: not yet) */
    uint8_t *got;       /* [N] */
    uint32_t *got_rows; /* [N] */
    int n_got;
    int32_t *dest_n;    /* [N] */
    int32_t *dest_rows; /* [N * max_rows]: dispatch row of each row sent */
    float *y;           /* [max_rows * hidden] */
} ub_state_t;

typedef struct attn {
    duet_pipe_attn_arg_t a;
    const duet_pipe_geom_t *g;
    const duet_config_t *cfg;
    duet_kvcache_t *kv;
    duet_fwd_t *fwd;
    ub_state_t *ubs;
    int max_rows;
    size_t rowb;
    /* request -> KV sequence */
    uint64_t *map_req;
    int32_t *map_seq;
    int map_n, map_cap;
    /* data plane: expert shards wired both ways */
    uint8_t *wired;
    uint64_t *wired_inc; /* [N] incarnation of each expert shard wired with */
    int n_wired;
    uint32_t *alive_a, *alive_e; /* membership of the epoch ([A], [N]) */
    int n_live_e;
    bool member;
    uint64_t *pfree; /* pipe.free during a step: applied at its end */
    int n_pfree;
    size_t cap_pfree;
    uint64_t ticks;
    /* pipe.dispatch that found no credit towards expert/d (DUET_ERR_AGAIN):
     * sent in order on sys.writable; dropped with the epoch */
    struct qdisp {
        uint64_t round;
        int32_t layer, ng;
        int32_t *exp, *cnt;
    } * *q; /* [N] */
    int *q_n, *q_cap;
    bool ready_sent, stepped, acked;
    bool sched_mon;  /* the scheduler is monitored (from its first ack) */
    bool sched_lost; /* it went down in this epoch: pipe.resync until a new one */
    uint64_t startup_timer;
    uint64_t epoch; /* data-plane epoch */
    /* routing table */
    bool have_table;
    bool data_armed; /* a DATA_TAG timer is pending */
    uint64_t table_version;
    uint32_t *off;
    int32_t *shards;
    size_t n_shards;
    uint32_t *rr;
    /* step */
    bool busy, broken;
    char why[512];
    uint64_t iter;
    int ubs_done;
    uint64_t last_progress;
    uint64_t *res_req;
    int32_t *res_tok;
    int res_n, res_cap;
    uint64_t *load;
    int32_t *dexp, *dcnt; /* [N * E] groups per destination */
    int32_t *dng;         /* [N] */
    duet_sampling_params_t *sp;
    int32_t *sampled;
    duet_obs_t own_obs; /* counters when the bring-up gives none */
    uint64_t disp_end;  /* when the last dispatch's writes were out */
    /* host staging when the backend's buffers are device memory
     * (ops->device_memory): normed rows out, expert results in */
    float *xh; /* [max_tokens_ub * hidden] */
    float *yh; /* [max_rows * hidden] */
} attn_t;

static int map_find(const attn_t *s, uint64_t req)
{
    for (int i = 0; i < s->map_n; i++)
        if (s->map_req[i] == req)
            return i;
    return -1;
}

static void free_req(attn_t *s, uint64_t req)
{
    int mi = map_find(s, req);
    if (mi < 0)
        return;
    duet_kvcache_seq_close(s->kv, s->map_seq[mi]);
    s->map_req[mi] = s->map_req[s->map_n - 1];
    s->map_seq[mi] = s->map_seq[s->map_n - 1];
    s->map_n--;
}

static void apply_pending_frees(attn_t *s)
{
    for (int k = 0; k < s->n_pfree; k++)
        free_req(s, s->pfree[k]);
    s->n_pfree = 0;
}

static duet_status_t send_disp(duet_actor_t *self, attn_t *s, int d, const struct qdisp *q)
{
    duet_pipe_dispatch_t m = {
        .epoch = s->epoch,
        .round = q->round,
        .layer = q->layer,
        .shard = s->a.shard,
        .experts = {q->exp, (size_t)q->ng},
        .counts = {q->cnt, (size_t)q->ng},
    };
    char to[32];
    snprintf(to, sizeof(to), "expert/%d", d);
    return duet_send(self, to, &duet_pipe_msg_dispatch, &m);
}

/* Queue a pipe.dispatch that found no credit (or that must wait behind one). */
static duet_status_t queue_disp(attn_t *s, int d, const struct qdisp *q)
{
    const int E = s->cfg->n_experts;
    if (s->q_n[d] == s->q_cap[d]) {
        int nc = s->q_cap[d] ? 2 * s->q_cap[d] : 8;
        struct qdisp *nq = duet_realloc_array(s->q[d], (size_t)nc, sizeof(*nq));
        if (!nq)
            return DUET_ERR_NOMEM;
        for (int k = s->q_cap[d]; k < nc; k++) {
            nq[k].exp = duet_calloc((size_t)E + 1, sizeof(int32_t));
            nq[k].cnt = duet_calloc((size_t)E + 1, sizeof(int32_t));
            if (!nq[k].exp || !nq[k].cnt) {
                s->q[d] = nq;
                s->q_cap[d] = k;
                return DUET_ERR_NOMEM;
            }
        }
        s->q[d] = nq;
        s->q_cap[d] = nc;
    }
    struct qdisp *t = &s->q[d][s->q_n[d]++];
    t->round = q->round;
    t->layer = q->layer;
    t->ng = q->ng;
    memcpy(t->exp, q->exp, sizeof(int32_t) * (size_t)q->ng);
    memcpy(t->cnt, q->cnt, sizeof(int32_t) * (size_t)q->ng);
    return DUET_OK;
}

/* Send what waits for expert/d, in order, until credit runs out again. */
static void flush_disp(duet_actor_t *self, attn_t *s, int d)
{
    int k = 0;
    while (k < s->q_n[d] && send_disp(self, s, d, &s->q[d][k]) == DUET_OK)
        k++;
    if (!k)
        return;
    for (int j = k; j < s->q_n[d]; j++) { /* keep the buffers: swap */
        struct qdisp t = s->q[d][j - k];
        s->q[d][j - k] = s->q[d][j];
        s->q[d][j] = t;
    }
    s->q_n[d] -= k;
}

static duet_status_t send_step_done(duet_actor_t *self, attn_t *s, const char *err)
{
    duet_pipe_step_done_t d = {
        .shard = s->a.shard,
        .epoch = s->epoch,
        .iter = s->iter,
        .req = {s->res_req, err ? 0 : (size_t)s->res_n},
        .token = {s->res_tok, err ? 0 : (size_t)s->res_n},
        .error = (char *)(err ? err : ""),
    };
    /* not fatal: a step whose answer is lost is failed by the scheduler's
     * watchdog and replayed */
    if (duet_send(self, "scheduler", &duet_pipe_msg_step_done, &d))
        DUET_LOG_W(MOD, "%s: pipe.step_done: %s", duet_actor_name(self), duet_error());
    return DUET_OK;
}

static void report_load(duet_actor_t *self, attn_t *s)
{
    duet_pipe_load_t l = {.shard = s->a.shard, .rows = {s->load, (size_t)s->cfg->n_experts}};
    if (duet_send(self, "router", &duet_pipe_msg_load, &l) == DUET_OK)
        memset(s->load, 0, sizeof(uint64_t) * (size_t)s->cfg->n_experts);
}

/* The step failed: undo what did not finish, tell the scheduler. The shard
 * keeps no half-done state; rounds of this step that arrive later find
 * nothing waiting and are dropped as stray. */
static duet_status_t step_fail(duet_actor_t *self, attn_t *s, const char *why)
{
    DUET_LOG_W(MOD, "%s: step %llu failed: %s", duet_actor_name(self), (unsigned long long)s->iter,
               why);
    for (int i = 0; i < s->g->m; i++) {
        ub_state_t *u = &s->ubs[i];
        if (u->begun && !u->done)
            duet_fwd_abort(s->fwd, u->ub);
        u->begun = u->done = u->waiting = false;
    }
    /* the M2N rings are now out of step with the expert shards: a new
     * epoch is needed (the router starts one, once per epoch) */
    if (!s->broken) {
        s->broken = true;
        snprintf(s->why, sizeof(s->why), "%s", why);
    }
    duet_pipe_resync_t rs = {.shard = s->a.shard, .epoch = s->epoch, .why = (char *)why};
    duet_send(self, "router", &duet_pipe_msg_resync, &rs);
    s->busy = false;
    duet_status_t st = send_step_done(self, s, why);
    s->iter++;
    apply_pending_frees(s);
    return st;
}

static duet_status_t step_finish(duet_actor_t *self, attn_t *s)
{
    s->busy = false;
    apply_pending_frees(s);
    for (int i = 0; i < s->g->m; i++)
        s->ubs[i].begun = s->ubs[i].done = false;
    duet_status_t st = send_step_done(self, s, NULL);
    atomic_fetch_add(&s->a.counters->steps, 1);
    s->a.obs->steps++;
    s->iter++;
    report_load(self, s);
    return st;
}

/* Write micro-batch i's rows of sparse layer `layer` as round `round`. */
static duet_status_t dispatch(duet_actor_t *self, attn_t *s, int i, int layer, uint64_t round)
{
    ub_state_t *u = &s->ubs[i];
    const int N = s->g->n_expert_shards, E = s->cfg->n_experts;
    const int hidden = s->cfg->hidden;
    duet_status_t st;
    u->d.n_rows = 0;
    if (u->n_seqs > 0) {
        const int32_t *ids;
        const float *w;
        int32_t k;
        if (!duet_ubatch_routes(u->ub, &ids, &w, &k))
            return duet_errorf(DUET_ERR_INTERNAL, "layer %d: sparse layer without routes", layer);
        st = duet_dispatch_build(&u->d, ids, w, duet_ubatch_n_tokens(u->ub), k);
        if (st)
            return st;
    }
    for (int d = 0; d < N; d++)
        u->dest_n[d] = s->dng[d] = 0;
    for (int e = 0; e < E && u->d.n_rows > 0; e++) {
        int32_t cnt = u->d.count[e];
        if (!cnt)
            continue;
        uint32_t lo0 = s->off[e], nr = s->off[e + 1] - s->off[e];
        if (nr == 0)
            return duet_errorf(DUET_ERR_NOT_FOUND, "expert %d has no expert shard in table v%llu",
                               e, (unsigned long long)s->table_version);
        s->load[e] += (uint64_t)cnt;
        /* spread the expert's rows over its replicas, rotating the start */
        for (uint32_t k = 0; k < nr; k++) {
            int32_t lo = (int32_t)((int64_t)cnt * k / nr),
                    hi = (int32_t)((int64_t)cnt * (k + 1) / nr);
            if (hi <= lo)
                continue;
            int dst = s->shards[lo0 + (k + s->rr[e]) % nr];
            if (!s->alive_e[dst])
                return duet_errorf(DUET_ERR_INVALID,
                                   "table v%llu routes expert %d to expert/%d, not in epoch %llu",
                                   (unsigned long long)s->table_version, e, dst,
                                   (unsigned long long)s->epoch);
            s->dexp[dst * E + s->dng[dst]] = e;
            s->dcnt[dst * E + s->dng[dst]] = hi - lo;
            s->dng[dst]++;
            for (int32_t r = lo; r < hi; r++)
                u->dest_rows[(size_t)dst * s->max_rows + u->dest_n[dst]++] = u->d.offset[e] + r;
        }
        s->rr[e]++;
    }
    const float *x = u->n_seqs > 0 ? duet_ubatch_normed(u->ub) : NULL;
    if (x && s->xh && u->d.n_rows > 0) {
        /* device-memory backend: one download of the micro-batch's normed rows */
        if ((st = s->a.be->ops->buf_download(s->a.be, s->xh, x,
                                             s->rowb * (size_t)duet_ubatch_n_tokens(u->ub))))
            return duet_error_wrap(st, "layer %d: normed rows to host", layer);
        x = s->xh;
    }
    uint8_t *base = duet_rdma_mr_ptr(s->a.send_mr);
    size_t slot = (size_t)(round % (uint64_t)s->g->ring);
    for (int d = 0; d < N; d++) {
        if (!s->alive_e[d])
            continue;
        size_t off = (slot * (size_t)N + (size_t)d) * s->g->slot_size;
        uint8_t *buf = base + off;
        duet_pipe_hdr_t h = {DUET_PIPE_MAGIC, (uint32_t)u->dest_n[d], round, 0, 0};
        for (int32_t j = 0; j < u->dest_n[d]; j++) {
            int32_t row = u->dest_rows[(size_t)d * s->max_rows + j];
            memcpy(buf + sizeof(h) + (size_t)j * s->rowb,
                   x + (size_t)u->d.row_token[row] * (size_t)hidden, s->rowb);
        }
        size_t len = sizeof(h) + (size_t)u->dest_n[d] * s->rowb;
        if (s->g->checksum)
            h.sum = duet__pipe_sum(buf + sizeof(h), len - sizeof(h));
        memcpy(buf, &h, sizeof(h));
        if (u->dest_n[d] > 0 && s->a.corrupt_countdown && atomic_load(s->a.corrupt_countdown) > 0 &&
            atomic_fetch_sub(s->a.corrupt_countdown, 1) == 1) {
            buf[sizeof(h) + 5] ^= 0x40; /* fault injection: a corrupted byte on the wire */
            DUET_LOG_I(MOD, "%s: corrupted a byte of round %llu to expert/%d (fault injection)",
                       duet_actor_name(self), (unsigned long long)round, d);
        }
        st = duet_m2n_send(s->a.dispatch, round, (uint32_t)duet__pipe_grank(s->alive_e, d),
                           s->a.send_mr, off, len, (int64_t)s->g->round_timeout_ms * 1000000);
        if (st)
            return duet_error_wrap(st, "dispatch round %llu to expert/%d",
                                   (unsigned long long)round, d);
        s->a.obs->bytes += len;
        duet_obs_ev(s->a.obs, 's', DUET_TR_FLOW_DISPATCH, duet_now_ns(), 0,
                    duet_obs_flow_id(s->epoch, 0, round, s->a.shard, d), 0, 0, 0, 0);
    }
    /* every write is out: the dispatch slice ends before the first
     * pipe.dispatch can wake an expert shard */
    s->disp_end = duet_now_ns();
    for (int d = 0; d < N; d++) {
        if (!s->alive_e[d])
            continue;
        struct qdisp q = {round, layer, s->dng[d], s->dexp + (size_t)d * E,
                          s->dcnt + (size_t)d * E};
        st = s->q_n[d] ? DUET_ERR_AGAIN : send_disp(self, s, d, &q);
        if (st == DUET_ERR_AGAIN) /* no credit: it goes on sys.writable */
            st = queue_disp(s, d, &q);
        if (st)
            return duet_error_wrap(st, "pipe.dispatch to expert/%d", d);
    }
    return DUET_OK;
}

/* Run micro-batch i until it waits for a round or is finished. */
static duet_status_t advance(duet_actor_t *self, attn_t *s, int i)
{
    ub_state_t *u = &s->ubs[i];
    const int L = s->cfg->n_layers;
    duet_status_t st;
    duet_obs_t *o = s->a.obs;
    while (u->layer < L) {
        int l = u->layer;
        uint64_t t0 = duet_now_ns();
        if (u->n_seqs > 0 && (st = duet_fwd_attention(s->fwd, u->ub, l)))
            return duet_error_wrap(st, "layer %d attention", l);
        uint64_t t1 = duet_now_ns();
        bool sparse = s->cfg->sparse_layer[l];
        uint64_t round =
            (s->iter * (uint64_t)s->g->n_sparse + (uint64_t)u->sparse_j) * (uint64_t)s->g->m +
            (uint64_t)i;
        o->busy_ns += t1 - t0;
        duet_obs_ev(o, 'X', DUET_TR_ATTENTION, t0, t1 - t0, 0, sparse ? (int64_t)round : -1, l, i,
                    u->n_tok);
        if (!sparse) {
            u->layer++;
            continue;
        }
        if ((st = dispatch(self, s, i, l, round)))
            return st;
        uint64_t t2 = s->disp_end;
        o->busy_ns += t2 - t1;
        o->rounds++;
        duet_obs_ev(o, 'X', DUET_TR_DISPATCH, t1, t2 - t1, 0, (int64_t)round, l, i, u->d.n_rows);
        u->waiting = true;
        u->data_since = 0;
        u->round = round;
        u->n_got = 0;
        memset(u->got, 0, (size_t)s->g->n_expert_shards);
        return DUET_OK;
    }
    if (u->n_seqs > 0) {
        uint64_t t0 = duet_now_ns();
        int32_t rows = 0;
        if ((st = duet_fwd_logits(s->fwd, u->ub, &rows)))
            return duet_error_wrap(st, "logits");
        int32_t nr = 0; /* one parameter set per logits row, in input order */
        for (int32_t k = 0; k < u->n_seqs && nr < s->g->max_seqs_ub; k++)
            if (u->in[k].logits != DUET_LOGITS_NONE)
                s->sp[nr++] = u->sp[k];
        if (rows > 0 && (st = duet_fwd_sample(s->fwd, u->ub, s->sp, s->sampled)))
            return duet_error_wrap(st, "sample");
        int32_t r = 0;
        for (int32_t k = 0; k < u->n_seqs; k++) {
            if (u->in[k].logits == DUET_LOGITS_NONE)
                continue;
            if (s->res_n >= s->res_cap || r >= rows)
                return duet_errorf(DUET_ERR_INTERNAL, "more sampled rows than expected");
            s->res_req[s->res_n] = u->req[k];
            s->res_tok[s->res_n++] = s->sampled[r++];
        }
        uint64_t t1 = duet_now_ns();
        o->busy_ns += t1 - t0;
        duet_obs_ev(o, 'X', DUET_TR_LOGITS, t0, t1 - t0, 0, -1, L, i, rows);
    }
    u->done = true;
    if (++s->ubs_done == s->g->m)
        return step_finish(self, s);
    return DUET_OK;
}

/* Every expert shard's rows for micro-batch i's round are in: combine. */
static duet_status_t complete(duet_actor_t *self, attn_t *s, int i)
{
    ub_state_t *u = &s->ubs[i];
    const int N = s->g->n_expert_shards;
    uint64_t t0 = duet_now_ns();
    int64_t rows_in = 0;
    /* combine_ready waited for the data (duet__pipe_data_wait) */
    duet_status_t st = duet_m2n_recv(s->a.combine, u->round, 0);
    if (st)
        return duet_error_wrap(st, "round %llu results", (unsigned long long)u->round);
    for (int d = 0; d < N; d++) {
        const void *data;
        size_t len;
        if (!s->alive_e[d])
            continue;
        if ((st = duet_m2n_data(s->a.combine, u->round, (uint32_t)duet__pipe_grank(s->alive_e, d),
                                &data, &len)))
            return st;
        duet_pipe_hdr_t h;
        if (len < sizeof(h))
            return duet_errorf(DUET_ERR_PROTOCOL, "round %llu from expert/%d: %zu bytes",
                               (unsigned long long)u->round, d, len);
        memcpy(&h, data, sizeof(h));
        if (h.magic != DUET_PIPE_MAGIC || h.round != u->round || h.rows != (uint32_t)u->dest_n[d] ||
            h.rows != u->got_rows[d] || len != sizeof(h) + (size_t)h.rows * s->rowb)
            return duet_errorf(DUET_ERR_PROTOCOL,
                               "round %llu from expert/%d: data for round %llu with %u rows "
                               "(%zu bytes), expected %d rows",
                               (unsigned long long)u->round, d, (unsigned long long)h.round, h.rows,
                               len, u->dest_n[d]);
        const uint8_t *q = (const uint8_t *)data + sizeof(h);
        if (s->g->checksum && duet__pipe_sum(q, len - sizeof(h)) != h.sum)
            return duet_errorf(DUET_ERR_PROTOCOL,
                               "round %llu from expert/%d: data-plane checksum mismatch",
                               (unsigned long long)u->round, d);
        s->a.obs->bytes += len;
        rows_in += h.rows;
        for (uint32_t j = 0; j < h.rows; j++) {
            int32_t row = u->dest_rows[(size_t)d * s->max_rows + j];
            memcpy((s->yh ? s->yh : u->y) + (size_t)row * (size_t)s->cfg->hidden,
                   q + (size_t)j * s->rowb, s->rowb);
        }
    }
    if (s->yh && u->n_seqs > 0 && u->d.n_rows > 0 &&
        (st = s->a.be->ops->buf_upload(s->a.be, u->y, s->yh, s->rowb * (size_t)u->d.n_rows)))
        return duet_error_wrap(st, "round %llu results to the device", (unsigned long long)u->round);
    if ((st = duet_m2n_release(s->a.combine, u->round)))
        return st;
    if (u->n_seqs > 0 && u->d.n_rows > 0 &&
        (st = duet_fwd_combine(s->fwd, u->ub, u->layer, u->y, u->d.row_token, u->d.row_weight,
                               u->d.n_rows)))
        return duet_error_wrap(st, "layer %d combine", u->layer);
    uint64_t t1 = duet_now_ns();
    s->a.obs->busy_ns += t1 - t0;
    if (duet_obs_tracing(s->a.obs)) {
        duet_obs_ev(s->a.obs, 'X', DUET_TR_COMBINE, t0, t1 - t0, 0, (int64_t)u->round, u->layer, i,
                    rows_in);
        for (int d = 0; d < N; d++)
            if (s->alive_e[d])
                duet_obs_ev(s->a.obs, 'f', DUET_TR_FLOW_RESULT, t0, 0,
                            duet_obs_flow_id(s->epoch, 1, u->round, s->a.shard, d), 0, 0, 0, 0);
    }
    u->waiting = false;
    u->layer++;
    u->sparse_j++;
    return advance(self, s, i);
}

static duet_status_t on_step(duet_actor_t *self, attn_t *s, const duet_pipe_step_t *m)
{
    char why[640];
    if (m->epoch != s->epoch) { /* sent before the scheduler heard of our reset */
        duet_pipe_step_done_t d = {
            .shard = s->a.shard, .epoch = m->epoch, .iter = m->iter, .error = "stale epoch"};
        if (duet_send(self, "scheduler", &duet_pipe_msg_step_done, &d))
            DUET_LOG_W(MOD, "%s: pipe.step_done: %s", duet_actor_name(self), duet_error());
        return DUET_OK;
    }
    if (s->broken) {
        snprintf(why, sizeof(why), "%s: unavailable: %s", duet_actor_name(self), s->why);
        s->iter = m->iter; /* the answer names the step it answers */
        send_step_done(self, s, why);
        s->iter = m->iter + 1;
        return DUET_OK;
    }
    size_t n = m->req.count;
    const int M = s->g->m;
    if (m->iter < s->iter || (s->busy && m->iter == s->iter)) { /* a duplicate */
        atomic_fetch_add(&s->a.counters->dropped_dup, 1);
        return DUET_OK;
    }
    if (s->busy || m->iter != s->iter || m->ub.count != n || m->ntok.count != n ||
        m->flags.count != n || m->temperature.count != n || m->top_k.count != n ||
        m->top_p.count != n || m->seed.count != n) {
        snprintf(why, sizeof(why), "bad pipe.step (iter %llu, expected %llu, busy %d)",
                 (unsigned long long)m->iter, (unsigned long long)s->iter, s->busy);
        return send_step_done(self, s, why);
    }
    const uint64_t *req = m->req.data;
    const int32_t *ubi = m->ub.data, *ntok = m->ntok.data, *tokens = m->tokens.data;
    const uint32_t *flags = m->flags.data;
    for (int i = 0; i < M; i++) {
        ub_state_t *u = &s->ubs[i];
        u->n_seqs = u->n_tok = 0;
        u->layer = u->sparse_j = 0;
        u->begun = u->done = u->waiting = false;
    }
    s->res_n = 0;
    s->ubs_done = 0;
    size_t pos = 0;
    /* validate everything before touching the KV cache */
    int32_t seqs_in[64] = {0}, toks_in[64] = {0};
    for (size_t k = 0; k < n; k++) {
        if (ubi[k] < 0 || ubi[k] >= M || M > 64 || ntok[k] < 1 ||
            pos + (size_t)ntok[k] > m->tokens.count || ++seqs_in[ubi[k]] > s->g->max_seqs_ub ||
            (toks_in[ubi[k]] += ntok[k]) > s->g->max_tokens_ub ||
            (!(flags[k] & DUET_PIPE_SEQ_NEW) && map_find(s, req[k]) < 0)) {
            snprintf(why, sizeof(why), "bad pipe.step entry %zu (req %llu)", k,
                     (unsigned long long)req[k]);
            return step_fail(self, s, why);
        }
        pos += (size_t)ntok[k];
    }
    pos = 0;
    for (size_t k = 0; k < n; k++) /* a replay from position 0: start afresh */
        if (flags[k] & DUET_PIPE_SEQ_NEW)
            free_req(s, req[k]);
    for (size_t k = 0; k < n; k++) {
        ub_state_t *u = &s->ubs[ubi[k]];
        int mi = map_find(s, req[k]);
        if (mi < 0) {
            int32_t seq;
            if (s->map_n == s->map_cap || duet_kvcache_seq_open(s->kv, &seq)) {
                snprintf(why, sizeof(why), "no KV sequence left for req %llu",
                         (unsigned long long)req[k]);
                return step_fail(self, s, why);
            }
            mi = s->map_n++;
            s->map_req[mi] = req[k];
            s->map_seq[mi] = seq;
        }
        memcpy(u->tok + u->n_tok, tokens + pos, sizeof(int32_t) * (size_t)ntok[k]);
        u->req[u->n_seqs] = req[k];
        u->sp[u->n_seqs] = (duet_sampling_params_t){
            ((const float *)m->temperature.data)[k], ((const int32_t *)m->top_k.data)[k],
            ((const float *)m->top_p.data)[k], ((const uint64_t *)m->seed.data)[k]};
        u->in[u->n_seqs++] = (duet_seq_input_t){
            s->map_seq[mi], ntok[k], u->tok + u->n_tok,
            (flags[k] & DUET_PIPE_SEQ_LOGITS) ? DUET_LOGITS_LAST : DUET_LOGITS_NONE};
        u->n_tok += ntok[k];
        pos += (size_t)ntok[k];
    }
    s->a.obs->tokens += pos;
    s->busy = true;
    s->last_progress = duet_actor_now_ns(self);
    duet_status_t st;
    for (int i = 0; i < M; i++) {
        ub_state_t *u = &s->ubs[i];
        if (u->n_seqs == 0)
            continue;
        if ((st = duet_fwd_begin(s->fwd, u->ub, u->n_seqs, u->in))) {
            snprintf(why, sizeof(why), "micro-batch %d: %s", i, duet_error());
            return step_fail(self, s, why);
        }
        u->begun = true;
    }
    for (int i = 0; i < M && s->busy; i++) {
        if ((st = advance(self, s, i))) {
            snprintf(why, sizeof(why), "micro-batch %d: %s", i, duet_error());
            return step_fail(self, s, why);
        }
    }
    return DUET_OK;
}

/* The N2M ring releases rounds in order, and control messages may arrive
 * out of order (delay, other senders): combine the oldest awaited round
 * while every expert shard's pipe.result for it is in. Its data may still
 * be on the wire: then come back on a timer (DATA_TAG), serving the
 * mailbox meanwhile. */
static duet_status_t combine_ready(duet_actor_t *self, attn_t *s)
{
    while (s->busy) {
        int lo = -1;
        for (int k = 0; k < s->g->m; k++)
            if (s->ubs[k].waiting && (lo < 0 || s->ubs[k].round < s->ubs[lo].round))
                lo = k;
        if (lo < 0 || s->ubs[lo].n_got < s->n_live_e)
            break;
        ub_state_t *u = &s->ubs[lo];
        if (duet__pipe_data_wait(self, s->a.combine, u->round, &u->data_since,
                                 s->g->round_timeout_ms, &s->data_armed,
                                 DATA_TAG) == DUET_ERR_AGAIN)
            break;
        duet_status_t st = complete(self, s, lo);
        if (st && s->busy) {
            char why[1200];
            snprintf(why, sizeof(why), "micro-batch %d: %s", lo, duet_error());
            return step_fail(self, s, why);
        }
    }
    return DUET_OK;
}

static duet_status_t on_result(duet_actor_t *self, attn_t *s, const duet_pipe_result_t *r)
{
    char why[1200];
    int i = -1;
    for (int k = 0; k < s->g->m && s->busy && r->epoch == s->epoch; k++)
        if (s->ubs[k].waiting && s->ubs[k].round == r->round)
            i = k;
    if (i < 0 || r->expert_shard < 0 || r->expert_shard >= s->g->n_expert_shards ||
        !s->alive_e[r->expert_shard]) {
        atomic_fetch_add(&s->a.counters->dropped_stray, 1);
        DUET_LOG_D(MOD, "%s: stray pipe.result round %llu from expert/%d", duet_actor_name(self),
                   (unsigned long long)r->round, r->expert_shard);
        return DUET_OK;
    }
    ub_state_t *u = &s->ubs[i];
    if (u->got[r->expert_shard]) {
        atomic_fetch_add(&s->a.counters->dropped_dup, 1);
        return DUET_OK;
    }
    if (r->error[0]) {
        snprintf(why, sizeof(why), "expert/%d failed round %llu: %s", r->expert_shard,
                 (unsigned long long)r->round, r->error);
        return step_fail(self, s, why);
    }
    u->got[r->expert_shard] = 1;
    u->got_rows[r->expert_shard] = r->rows;
    s->last_progress = duet_actor_now_ns(self);
    if (++u->n_got < s->n_live_e)
        return DUET_OK;
    return combine_ready(self, s);
}

static duet_status_t maybe_ready(duet_actor_t *self, attn_t *s)
{
    if (s->ready_sent || !s->member || !s->have_table || s->n_wired < s->n_live_e ||
        s->n_live_e < 1)
        return DUET_OK;
    for (int e = 0; e < s->cfg->n_experts; e++)
        if (s->off[e + 1] == s->off[e])
            return DUET_OK; /* an expert with no live shard: wait for its return */
    s->ready_sent = true;
    /* the router watches this shard from its first report on: make one now */
    duet_pipe_hello_t h = {.shard = s->a.shard,
                           .incarnation = duet_actor_epoch(self),
                           .epoch = s->epoch,
                           .member = true};
    duet_send(self, "router", &duet_pipe_msg_hello, &h);
    duet_pipe_ready_t r = {.shard = s->a.shard, .epoch = s->epoch};
    return duet_send(self, "scheduler", &duet_pipe_msg_ready, &r);
}

static duet_status_t on_wire(duet_actor_t *self, attn_t *s, const duet_pipe_wire_t *w)
{
    if (w->epoch != s->epoch || !s->member || w->rank < 0 || w->rank >= s->g->n_expert_shards ||
        !s->alive_e[w->rank] || s->wired[w->rank]) {
        atomic_fetch_add(&s->a.counters->dropped_dup, 1);
        return DUET_OK;
    }
    duet_status_t st = duet__pipe_dp_connect(s->a.dispatch, s->a.combine,
                                             duet__pipe_grank(s->alive_e, w->rank), w);
    if (st) { /* info of a context gone (a late repeat): the next one will do */
        DUET_LOG_D(MOD, "%s: wiring expert/%d: %s", duet_actor_name(self), w->rank, duet_error());
        atomic_fetch_add(&s->a.counters->dropped_stray, 1);
        return DUET_OK;
    }
    s->wired[w->rank] = 1;
    s->wired_inc[w->rank] = w->incarnation;
    s->n_wired++;
    /* it exists now: from here on its death fails our steps */
    char name[32];
    snprintf(name, sizeof(name), "expert/%d", w->rank);
    if ((st = duet_monitor(self, name, NULL)))
        return duet_error_wrap(st, "monitor %s", name);
    return maybe_ready(self, s);
}

/* Apply a routing table (from pipe.reset); false if malformed. */
static bool apply_table(duet_actor_t *self, attn_t *s, uint64_t version,
                        const duet_array_t *offsets, const duet_array_t *shards)
{
    const int E = s->cfg->n_experts;
    const uint32_t *off = offsets->data;
    const int32_t *sh = shards->data;
    if (offsets->count != (size_t)E + 1 || off[0] != 0 || off[E] != shards->count) {
        DUET_LOG_W(MOD, "%s: malformed routing table v%llu ignored", duet_actor_name(self),
                   (unsigned long long)version);
        return false;
    }
    for (int e = 0; e < E; e++)
        if (off[e + 1] < off[e])
            return false;
    for (size_t k = 0; k < shards->count; k++)
        if (sh[k] < 0 || sh[k] >= s->g->n_expert_shards)
            return false;
    int32_t *ns = duet_realloc_array(s->shards, shards->count ? shards->count : 1, sizeof(int32_t));
    if (!ns)
        return false;
    s->shards = ns;
    if (shards->count > 0) /* an empty table (every expert shard down) has no data */
        memcpy(s->shards, sh, sizeof(int32_t) * shards->count);
    memcpy(s->off, off, sizeof(uint32_t) * (size_t)(E + 1));
    s->table_version = version;
    s->have_table = true;
    return true;
}

static void send_wires(duet_actor_t *self, attn_t *s)
{
    for (int d = 0; d < s->g->n_expert_shards && s->member; d++) {
        if (s->wired[d] || !s->alive_e[d])
            continue;
        char name[32];
        snprintf(name, sizeof(name), "expert/%d", d);
        duet__pipe_dp_send_wire(self, name, s->epoch, s->a.shard, duet__pipe_grank(s->alive_e, d),
                                s->a.dispatch, s->a.combine);
    }
}

/* A new data-plane epoch: fail what is in flight, rebuild the groups over
 * the epoch's members, rewire, and become ready again. The KV cache stays
 * (the scheduler frees what it replays). */
static duet_status_t reset_epoch(duet_actor_t *self, attn_t *s, const duet_pipe_reset_t *rs)
{
    uint64_t epoch = rs->epoch;
    DUET_LOG_I(MOD, "%s: data-plane epoch %llu", duet_actor_name(self), (unsigned long long)epoch);
    if (s->busy) {
        char why[64];
        snprintf(why, sizeof(why), "data plane reset (epoch %llu)", (unsigned long long)epoch);
        step_fail(self, s, why);
    }
    duet__pipe_dp_close(&s->a.ctx, &s->a.dispatch, &s->a.combine, &s->a.send_mr);
    const int A = s->g->n_attention, N = s->g->n_expert_shards;
    const uint32_t *la = rs->attn_live.data, *le = rs->expert_live.data;
    for (int a = 0; a < A; a++)
        s->alive_a[a] = rs->attn_live.count == (size_t)A ? la[a] != 0 : 1;
    for (int d = 0; d < N; d++)
        s->alive_e[d] = rs->expert_live.count == (size_t)N ? le[d] != 0 : 1;
    s->n_live_e = duet__pipe_count(s->alive_e, N);
    s->member = s->alive_a[s->a.shard] != 0;
    if (rs->offsets.count)
        apply_table(self, s, epoch, &rs->offsets, &rs->shards);
    duet_status_t st = DUET_OK;
    if (s->member && s->n_live_e > 0)
        st = duet__pipe_dp_open(s->a.provider, s->a.dp_host, s->a.rsim, s->g, true, s->a.shard,
                                s->alive_a, s->alive_e, &s->a.ctx, &s->a.dispatch, &s->a.combine,
                                &s->a.send_mr);
    if (st)
        return st;
    memset(s->wired, 0, (size_t)N);
    memset(s->wired_inc, 0, sizeof(uint64_t) * (size_t)N);
    s->n_wired = 0;
    for (int d = 0; d < N; d++) /* rounds of the old epoch are void */
        s->q_n[d] = 0;
    s->ready_sent = s->acked = s->stepped = false;
    s->sched_lost = false;
    s->broken = false;
    s->why[0] = 0;
    s->iter = 0;
    s->epoch = epoch;
    if (!s->member) {
        s->broken = true;
        snprintf(s->why, sizeof(s->why), "not a member of data-plane epoch %llu",
                 (unsigned long long)epoch);
    }
    send_wires(self, s);
    return maybe_ready(self, s);
}

/* Every 50 ms: ask again for what has not come; every 100 ms the
 * keep-alive pipe.hello to the router. */
static duet_status_t startup_tick(duet_actor_t *self, attn_t *s)
{
    if (!s->acked)
        send_wires(self, s);
    if ((s->ticks++ & 1) == 0 || !s->have_table) {
        duet_pipe_hello_t h = {.shard = s->a.shard,
                               .incarnation = duet_actor_epoch(self),
                               .epoch = s->epoch,
                               .member = s->member && s->have_table};
        duet_send(self, "router", &duet_pipe_msg_hello, &h);
    }
    if (s->ready_sent && !s->acked) {
        duet_pipe_ready_t r = {.shard = s->a.shard, .epoch = s->epoch};
        duet_send(self, "scheduler", &duet_pipe_msg_ready, &r);
    }
    if (s->sched_lost) { /* until the router starts a new epoch */
        duet_pipe_resync_t rs = {.shard = s->a.shard, .epoch = s->epoch, .why = "scheduler down"};
        duet_send(self, "router", &duet_pipe_msg_resync, &rs);
    }
    return DUET_OK;
}

static duet_status_t on_reset(duet_actor_t *self, attn_t *s, const duet_pipe_reset_t *rs)
{
    if (rs->epoch > s->epoch)
        return reset_epoch(self, s, rs);
    if (rs->epoch == s->epoch && !s->have_table && rs->offsets.count) {
        apply_table(self, s, rs->epoch, &rs->offsets, &rs->shards);
        return maybe_ready(self, s);
    }
    return DUET_OK;
}

static duet_status_t attn_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    attn_t *s = state;
    const duet_pipe_result_t *res = duet_pipe_msg_result_body(msg);
    if (res)
        return on_result(self, s, res);
    const duet_pipe_stats_req_t *sq = duet_pipe_msg_stats_req_body(msg);
    if (sq) {
        uint64_t queued = 0;
        for (int d = 0; d < s->g->n_expert_shards; d++)
            queued += (uint64_t)s->q_n[d];
        duet__pipe_reply_stats(
            self, s->a.obs, sq, (uint64_t)duet_kvcache_open_seqs(s->kv),
            (uint64_t)(duet_kvcache_total_blocks(s->kv) - duet_kvcache_free_blocks(s->kv)),
            s->epoch, s->a.dispatch, s->a.combine, queued);
        return DUET_OK;
    }
    const duet_pipe_step_t *step = duet_pipe_msg_step_body(msg);
    if (step) {
        s->stepped = true;
        return on_step(self, s, step);
    }
    const duet_pipe_free_t *fr = duet_pipe_msg_free_body(msg);
    if (fr && fr->keep_only) {
        const uint64_t *keep = fr->req.data;
        if (s->busy)
            return DUET_OK; /* the next epoch's list will come */
        for (int i = s->map_n - 1; i >= 0; i--) {
            bool k = false;
            for (size_t j = 0; j < fr->req.count && !k; j++)
                k = keep[j] == s->map_req[i];
            if (!k) {
                DUET_LOG_D(MOD, "%s: req %llu left behind: KV freed", duet_actor_name(self),
                           (unsigned long long)s->map_req[i]);
                free_req(s, s->map_req[i]);
            }
        }
        return DUET_OK;
    }
    if (fr) {
        const uint64_t *req = fr->req.data;
        for (size_t k = 0; k < fr->req.count; k++) {
            if (!s->busy) {
                free_req(s, req[k]);
                continue;
            }
            if (duet_vec_reserve((void **)&s->pfree, &s->cap_pfree, (size_t)s->n_pfree + 1,
                                 sizeof(uint64_t)))
                return DUET_ERR_NOMEM;
            s->pfree[s->n_pfree++] = req[k];
        }
        return DUET_OK;
    }
    const duet_pipe_table_t *t = duet_pipe_msg_table_body(msg);
    if (t) {
        if (!s->have_table || t->version > s->table_version) {
            apply_table(self, s, t->version, &t->offsets, &t->shards);
            return maybe_ready(self, s);
        }
        return DUET_OK;
    }
    const duet_pipe_wire_t *w = duet_pipe_msg_wire_body(msg);
    if (w)
        return on_wire(self, s, w);
    const duet_pipe_ready_t *ack = duet_pipe_msg_ready_body(msg);
    if (ack) { /* the scheduler heard our pipe.ready */
        if (ack->epoch == s->epoch)
            s->acked = s->ready_sent;
        /* from now on its death (a restart loses its requests) resets the
         * epoch: every shard reports ready to the new one */
        if (!s->sched_mon && duet_monitor(self, "scheduler", NULL) == DUET_OK)
            s->sched_mon = true;
        return DUET_OK;
    }
    const duet_pipe_reset_t *rs = duet_pipe_msg_reset_body(msg);
    if (rs)
        return on_reset(self, s, rs);
    const duet_sys_down_t *dn = duet_msg_body(msg, &duet_msg_sys_down);
    if (dn && !strcmp(dn->actor, "scheduler")) {
        /* a restarted scheduler knows none of our sequences nor our
         * iteration: a new epoch makes every shard report ready to it, and
         * its keep_only list then frees what its predecessor left here */
        DUET_LOG_I(MOD, "%s: the scheduler is down (%s): asking for a new epoch",
                   duet_actor_name(self), dn->reason);
        s->sched_mon = false;
        s->sched_lost = true;
        duet_pipe_resync_t rq = {.shard = s->a.shard, .epoch = s->epoch, .why = "scheduler down"};
        duet_send(self, "router", &duet_pipe_msg_resync, &rq);
        return DUET_OK;
    }
    if (dn) {
        int k = -1;
        if (sscanf(dn->actor, "expert/%d", &k) != 1 || k < 0 || k >= s->g->n_expert_shards ||
            !s->alive_e[k] || !s->wired[k])
            return DUET_OK; /* not part of this epoch: nothing of ours waits for it */
        if (s->wired_inc[k]) {
            duet_pipe_down_t d = {.shard = k, .incarnation = s->wired_inc[k]};
            duet_send(self, "router", &duet_pipe_msg_down, &d); /* it restarts the epoch */
        }
        char why[640];
        snprintf(why, sizeof(why), "expert shard %s is down (%s)", dn->actor, dn->reason);
        if (s->busy)
            return step_fail(self, s, why);
        if (!s->broken) {
            s->broken = true;
            snprintf(s->why, sizeof(s->why), "%.500s", why);
        }
        return DUET_OK;
    }
    const duet_sys_writable_t *wr = duet_msg_body(msg, &duet_msg_sys_writable);
    if (wr) {
        int k = -1;
        if (sscanf(wr->to, "expert/%d", &k) == 1 && k >= 0 && k < s->g->n_expert_shards)
            flush_disp(self, s, k);
        return DUET_OK;
    }
    const duet_sys_timer_t *tm = duet_msg_body(msg, &duet_msg_sys_timer);
    if (tm && tm->tag == 1)
        return startup_tick(self, s);
    if (tm && tm->tag == DATA_TAG) {
        s->data_armed = false;
        return combine_ready(self, s);
    }
    if (tm) {
        uint64_t now = duet_actor_now_ns(self);
        if (s->busy && now - s->last_progress > (uint64_t)s->g->round_timeout_ms * 1000000) {
            char why[640];
            int n = snprintf(why, sizeof(why), "no progress for %u ms; waiting for",
                             s->g->round_timeout_ms);
            for (int i = 0; i < s->g->m; i++) {
                ub_state_t *u = &s->ubs[i];
                if (!u->waiting)
                    continue;
                for (int d = 0; d < s->g->n_expert_shards && n > 0 && (size_t)n < sizeof(why); d++)
                    if (!u->got[d])
                        n += snprintf(why + n, sizeof(why) - (size_t)n, " expert/%d (round %llu)",
                                      d, (unsigned long long)u->round);
            }
            return step_fail(self, s, why);
        }
        return DUET_OK;
    }
    return DUET_OK; /* other messages are not for us */
}

static void attn_stop(duet_actor_t *self, void *state, const char *reason)
{
    (void)self, (void)reason;
    attn_t *s = state;
    if (!s)
        return;
    for (int i = 0; s->ubs && i < s->g->m; i++) {
        ub_state_t *u = &s->ubs[i];
        duet_ubatch_destroy(&u->ub);
        duet_dispatch_cleanup(&u->d);
        duet_free(u->in);
        duet_free(u->req);
        duet_free(u->sp);
        duet_free(u->tok);
        duet_free(u->got);
        duet_free(u->got_rows);
        duet_free(u->dest_n);
        duet_free(u->dest_rows);
        if (u->y)
            s->a.be->ops->buf_free(s->a.be, u->y);
    }
    duet_free(s->ubs);
    duet_free(s->xh);
    duet_free(s->yh);
    duet__pipe_dp_close(&s->a.ctx, &s->a.dispatch, &s->a.combine, &s->a.send_mr);
    duet_free(s->wired);
    duet_free(s->wired_inc);
    duet_free(s->alive_a);
    duet_free(s->alive_e);
    duet_free(s->pfree);
    for (int d = 0; s->q && d < s->g->n_expert_shards; d++) {
        for (int k = 0; k < s->q_cap[d]; k++) {
            duet_free(s->q[d][k].exp);
            duet_free(s->q[d][k].cnt);
        }
        duet_free(s->q[d]);
    }
    duet_free(s->q);
    duet_free(s->q_n);
    duet_free(s->q_cap);
    duet_fwd_destroy(&s->fwd);
    duet_kvcache_destroy(&s->kv);
    duet_free(s->map_req);
    duet_free(s->map_seq);
    duet_free(s->off);
    duet_free(s->shards);
    duet_free(s->rr);
    duet_free(s->res_req);
    duet_free(s->res_tok);
    duet_free(s->load);
    duet_free(s->dexp);
    duet_free(s->dcnt);
    duet_free(s->dng);
    duet_free(s->sp);
    duet_free(s->sampled);
    duet_free(s);
}

static duet_status_t attn_start(duet_actor_t *self, void *arg, void **state_out)
{
    attn_t *s = duet_calloc(1, sizeof(*s));
    if (!s)
        return DUET_ERR_NOMEM;
    *state_out = s;
    s->a = *(const duet_pipe_attn_arg_t *)arg;
    if (!s->a.obs)
        s->a.obs = &s->own_obs;
    s->g = s->a.geom;
    s->cfg = &s->a.model->cfg;
    const int M = s->g->m, N = s->g->n_expert_shards, E = s->cfg->n_experts;
    const int mt = s->g->max_tokens_ub, ms = s->g->max_seqs_ub;
    s->max_rows = mt * s->cfg->top_k;
    s->rowb = sizeof(float) * (size_t)s->cfg->hidden;
    duet_status_t st;
    duet_kvcache_opts_t ko = {
        .block_size = s->a.kv_block_size, .n_blocks = s->a.kv_blocks, .max_seqs = 256};
    if ((st = duet_kvcache_create(s->a.be, s->cfg, &ko, &s->kv)))
        return st;
    duet_fwd_opts_t fo = {.max_tokens = mt, .max_seqs = ms, .max_logits = ms};
    if ((st = duet_fwd_create(s->a.be, s->a.model, s->kv, &fo, &s->fwd)))
        return st;
    s->map_cap = 256;
    s->map_req = duet_calloc((size_t)s->map_cap, sizeof(uint64_t));
    s->map_seq = duet_calloc((size_t)s->map_cap, sizeof(int32_t));
    s->off = duet_calloc((size_t)E + 1, sizeof(uint32_t));
    s->shards = duet_calloc(1, sizeof(int32_t));
    s->rr = duet_calloc((size_t)E, sizeof(uint32_t));
    s->res_cap = M * ms;
    s->res_req = duet_calloc((size_t)s->res_cap, sizeof(uint64_t));
    s->res_tok = duet_calloc((size_t)s->res_cap, sizeof(int32_t));
    s->load = duet_calloc((size_t)E, sizeof(uint64_t));
    s->dexp = duet_calloc((size_t)N * (size_t)E, sizeof(int32_t));
    s->dcnt = duet_calloc((size_t)N * (size_t)E, sizeof(int32_t));
    s->dng = duet_calloc((size_t)N, sizeof(int32_t));
    s->sp = duet_calloc((size_t)ms, sizeof(*s->sp));
    s->sampled = duet_calloc((size_t)ms, sizeof(int32_t));
    s->ubs = duet_calloc((size_t)M, sizeof(ub_state_t));
    if (!s->map_req || !s->map_seq || !s->off || !s->shards || !s->rr || !s->res_req ||
        !s->res_tok || !s->load || !s->dexp || !s->dcnt || !s->dng || !s->sp || !s->sampled ||
        !s->ubs)
        return DUET_ERR_NOMEM;
    for (int k = 0; k < ms; k++)
        s->sp[k] = (duet_sampling_params_t){0.0f, 0, 1.0f, 0}; /* greedy */
    for (int i = 0; i < M; i++) {
        ub_state_t *u = &s->ubs[i];
        if ((st = duet_ubatch_create(s->fwd, &u->ub)) ||
            (st = duet_dispatch_init(&u->d, E, s->max_rows)))
            return st;
        u->in = duet_calloc((size_t)ms, sizeof(duet_seq_input_t));
        u->req = duet_calloc((size_t)ms, sizeof(uint64_t));
        u->sp = duet_calloc((size_t)ms, sizeof(duet_sampling_params_t));
        u->tok = duet_calloc((size_t)mt, sizeof(int32_t));
        u->got = duet_calloc((size_t)N, 1);
        u->got_rows = duet_calloc((size_t)N, sizeof(uint32_t));
        u->dest_n = duet_calloc((size_t)N, sizeof(int32_t));
        u->dest_rows = duet_calloc((size_t)N * (size_t)s->max_rows, sizeof(int32_t));
        if (!u->in || !u->req || !u->sp || !u->tok || !u->got || !u->got_rows || !u->dest_n ||
            !u->dest_rows)
            return DUET_ERR_NOMEM;
        void *y;
        if ((st = s->a.be->ops->buf_alloc(s->a.be, s->rowb * (size_t)s->max_rows, &y)))
            return st;
        u->y = y;
    }
    if (s->a.be->ops->device_memory) {
        s->xh = duet_malloc(s->rowb * (size_t)mt);
        s->yh = duet_malloc(s->rowb * (size_t)s->max_rows);
        if (!s->xh || !s->yh)
            return DUET_ERR_NOMEM;
    }
    s->wired = duet_calloc((size_t)N, 1);
    s->wired_inc = duet_calloc((size_t)N, sizeof(uint64_t));
    s->alive_a = duet_calloc((size_t)s->g->n_attention, sizeof(uint32_t));
    s->alive_e = duet_calloc((size_t)N, sizeof(uint32_t));
    s->q = duet_calloc((size_t)N, sizeof(*s->q));
    s->q_n = duet_calloc((size_t)N, sizeof(int));
    s->q_cap = duet_calloc((size_t)N, sizeof(int));
    if (!s->wired || !s->wired_inc || !s->alive_a || !s->alive_e || !s->q || !s->q_n || !s->q_cap)
        return DUET_ERR_NOMEM;
    for (int a = 0; a < s->g->n_attention; a++) /* epoch 0: every shard */
        s->alive_a[a] = 1;
    for (int d = 0; d < N; d++)
        s->alive_e[d] = 1;
    s->n_live_e = N;
    s->member = true;
    if ((st = duet__pipe_dp_open(s->a.provider, s->a.dp_host, s->a.rsim, s->g, true, s->a.shard,
                                 NULL, NULL, &s->a.ctx, &s->a.dispatch, &s->a.combine,
                                 &s->a.send_mr)))
        return st;
    send_wires(self, s); /* best effort: repeated until answered */
    if ((st = duet_timer_start(self, 50, 50, 1, &s->startup_timer)))
        return st;
    uint64_t period = s->g->round_timeout_ms / 4 ? s->g->round_timeout_ms / 4 : 1;
    return duet_timer_start(self, period, period, 0, NULL);
}

const duet_actor_ops_t duet__pipe_attention_ops = {
    .kind = "attention",
    .start = attn_start,
    .handle = attn_handle,
    .stop = attn_stop,
};
