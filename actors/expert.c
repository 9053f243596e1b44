/* expert shard actor ("expert/<s>") — the experts placed on it, every layer.
 *
 * Takes: pipe.wire (attention shards' data-plane info; answered with ours),
 * pipe.dispatch (one per attention shard and round, after that shard's M2N
 * write of the round's rows), pipe.reset (router: a new data-plane epoch;
 * also the answer to pipe.up).
 * Sends: pipe.up (router, every 50 ms until answered), pipe.wire,
 * pipe.result to every attention shard, after the N2M write of its rows
 * back.
 *
 * Rounds are computed strictly in order, each once pipe.dispatch for it
 * has come from EVERY attention shard (an empty dispatch still counts): the
 * rows of all shards are gathered per expert, each held expert runs one
 * FFN over all its rows, and each shard gets its rows back in the order it
 * sent them. A pipe.dispatch for a round already computed or a second one
 * from the same shard is dropped and counted; one that names an expert not
 * held here fails that round for everyone with a clear error.
 *
 * Coalescing (geom.coalesce: duet_pipe_config_t.expert_coalesce; auto by
 * default: on when a layer's held expert weights are >= 16 MiB; env
 * DUET_EXPERT_COALESCE=0 / =1 turns auto off / on): when round r is about
 * to run and later rounds of its (iteration, layer) group (r / m) are complete too
 * (every live shard's pipe.dispatch handled, their M2N data arrived), they
 * run in one expert pass — rows grouped per expert across the rounds, one
 * read of each expert's weights — and each round's results still go back
 * as its own N2M write and pipe.result. Nothing waits for a round: a
 * complete round whose group has a later round not complete yet only
 * waits for the messages already in the mailbox (a 0 ms timer fires after
 * them). A later round whose data is bad ends the group before it and
 * then fails alone; any other failure fails every round of the group.
 * While an injected compute error is pending (fail_round) rounds run
 * alone, so that it hits the round it names.
 *
 * Membership: a data-plane epoch names the attention shards that take part
 * (pipe.reset from the router); rounds wait for those only, and the groups
 * rank them in index order. pipe.up repeats every 100 ms for as long as the
 * shard lives (the router's view of it, and how a restarted router learns
 * the epoch); an expert shard that is not a member of the epoch ignores
 * dispatches until a newer epoch takes it in. */
#include <stdio.h>
#include <string.h>

#include "actors/pipe_int.h"

#define MOD "expert"

typedef struct pend {
    bool used;
    uint64_t round;
    uint64_t data_since; /* actor time the wait for its data began (0: not yet) */
    int layer;
    int n_got;
    char error[256];
    uint8_t *got; /* [M] */
    int32_t *ng;  /* [M] */
    int32_t *exp; /* [M * E] */
    int32_t *cnt; /* [M * E] */
} pend_t;

typedef struct expert {
    duet_pipe_expert_arg_t a;
    const duet_pipe_geom_t *g;
    const duet_config_t *cfg;
    duet_experts_t *ex;
    int M, E, P;
    size_t rowb;
    int32_t *hidx; /* expert id -> held index, -1 */
    pend_t *pend;  /* [P] ring by round */
    uint64_t next;
    bool broken;
    char why[256];
    int max_rows; /* rows from one attention shard in one round */
    float *x, *y;
    float *xh, *yh;            /* host staging when the backend's buffers are device memory */
    int32_t *tot, *xoff, *cur; /* [n held] */
    int32_t *srcpos;           /* [kmax * M * max_rows] */
    int32_t *nsrc;             /* [kmax * M] */
    int kmax;                  /* most rounds run together (1: no coalescing) */
    const void **gdata;        /* [kmax * M] a group's M2N data */
    size_t *glen;              /* [kmax * M] */
    int32_t *rtot;             /* [kmax] rows of each round of a group */
    bool kick_armed;           /* a KICK_TAG timer is pending */
    bool data_armed;           /* a DATA_TAG timer is pending */
    uint8_t *wired;            /* [M] */
    uint64_t epoch;            /* data-plane epoch */
    uint32_t *alive_a;         /* [M] attention shards in the epoch */
    int n_live;                /* how many */
    bool member;               /* this shard takes part in the epoch */
    duet_obs_t own_obs;        /* counters when the bring-up gives none */
    uint8_t *wfail;            /* [M] this round's N2M write to attn/a failed */
    /* pipe.result that found no credit towards attn/a: sent in order on
     * sys.writable; dropped with the epoch */
    struct qres {
        uint64_t round;
        int32_t layer;
        uint32_t rows;
        char error[256];
    } * *q; /* [M] */
    int *q_n, *q_cap;
    uint64_t write_end; /* when the last round's writes were out */
} expert_t;

static duet_status_t send_res(duet_actor_t *self, expert_t *s, int a, const struct qres *q)
{
    duet_pipe_result_t r = {.epoch = s->epoch,
                            .round = q->round,
                            .layer = q->layer,
                            .expert_shard = s->a.shard,
                            .rows = q->rows,
                            .error = (char *)q->error};
    char to[32];
    snprintf(to, sizeof(to), "attn/%d", a);
    return duet_send(self, to, &duet_pipe_msg_result, &r);
}

static duet_status_t queue_res(expert_t *s, int a, const struct qres *q)
{
    if (s->q_n[a] == s->q_cap[a]) {
        int nc = s->q_cap[a] ? 2 * s->q_cap[a] : 8;
        struct qres *nq = duet_realloc_array(s->q[a], (size_t)nc, sizeof(*nq));
        if (!nq)
            return DUET_ERR_NOMEM;
        s->q[a] = nq;
        s->q_cap[a] = nc;
    }
    s->q[a][s->q_n[a]++] = *q;
    return DUET_OK;
}

static void flush_res(duet_actor_t *self, expert_t *s, int a)
{
    int k = 0;
    while (k < s->q_n[a] && send_res(self, s, a, &s->q[a][k]) == DUET_OK)
        k++;
    memmove(s->q[a], s->q[a] + k, sizeof(struct qres) * (size_t)(s->q_n[a] - k));
    s->q_n[a] -= k;
}

/* Round `round`'s results to every live attention shard; gi: its index
 * in the group just computed (its srcpos / nsrc). */
static duet_status_t send_results(duet_actor_t *self, expert_t *s, uint64_t round, int layer,
                                  const char *err, int gi)
{
    const int32_t *srcpos = s->srcpos + (size_t)gi * (size_t)s->M * (size_t)s->max_rows;
    const int32_t *nsrc = s->nsrc + (size_t)gi * (size_t)s->M;
    duet_status_t st = DUET_OK;
    char werr[256] = "";
    uint8_t *base = duet_rdma_mr_ptr(s->a.send_mr);
    size_t slot = (size_t)(round % (uint64_t)s->g->ring);
    for (int a = 0; a < s->M; a++) {
        s->wfail[a] = 0;
        if (!s->alive_a[a])
            continue;
        uint32_t rows = err ? 0 : (uint32_t)nsrc[a];
        size_t off = (slot * (size_t)s->M + (size_t)a) * s->g->slot_size;
        uint8_t *buf = base + off;
        duet_pipe_hdr_t h = {DUET_PIPE_MAGIC, rows, round, 0, 0};
        for (uint32_t j = 0; j < rows; j++)
            memcpy(buf + sizeof(h) + (size_t)j * s->rowb,
                   (s->yh ? s->yh : s->y) +
                       (size_t)srcpos[(size_t)a * s->max_rows + j] * (size_t)s->cfg->hidden,
                   s->rowb);
        if (s->g->checksum)
            h.sum = duet__pipe_sum(buf + sizeof(h), (size_t)rows * s->rowb);
        memcpy(buf, &h, sizeof(h));
        duet_status_t ws = duet_m2n_send(
            s->a.combine, round, (uint32_t)duet__pipe_grank(s->alive_a, a), s->a.send_mr, off,
            sizeof(h) + (size_t)rows * s->rowb, (int64_t)s->g->round_timeout_ms * 1000000);
        s->wfail[a] = ws != DUET_OK;
        if (!ws) {
            s->a.obs->bytes += sizeof(h) + (size_t)rows * s->rowb;
            duet_obs_ev(s->a.obs, 's', DUET_TR_FLOW_RESULT, duet_now_ns(), 0,
                        duet_obs_flow_id(s->epoch, 1, round, a, s->a.shard), 0, 0, 0, 0);
        } else if (!st) {
            snprintf(werr, sizeof(werr), "N2M write of round %llu: %s", (unsigned long long)round,
                     duet_error());
            st = ws;
        }
    }
    /* every write is out: the round's slice ends before the first
     * pipe.result can wake an attention shard */
    s->write_end = duet_now_ns();
    for (int a = 0; a < s->M; a++) {
        if (!s->alive_a[a])
            continue;
        struct qres q = {.round = round, .layer = layer, .rows = err ? 0 : (uint32_t)nsrc[a]};
        snprintf(q.error, sizeof(q.error), "%.255s", err ? err : s->wfail[a] ? werr : "");
        duet_status_t ms = s->q_n[a] ? DUET_ERR_AGAIN : send_res(self, s, a, &q);
        if (ms == DUET_ERR_AGAIN) /* no credit: it goes on sys.writable */
            ms = queue_res(s, a, &q);
        if (ms)
            DUET_LOG_W(MOD, "%s: pipe.result to attn/%d: %s", duet_actor_name(self), a,
                       duet_error());
    }
    return st;
}

/* Rounds run together (expert_coalesce): consecutive rounds of one
 * (iteration, layer) group, r = (iter·S + j)·m + i, that are complete when
 * the first of them is about to run. A group of one is the plain round. */
#define KICK_TAG 2 /* sys.timer tag: run the rounds deferred behind the mailbox */
#define DATA_TAG 3 /* sys.timer tag: look again for a round's data (run_ready) */
/* auto coalescing: on when one layer's held expert weights are at least
 * this big (beyond the caches: each expert pass streams them) */
#define COALESCE_AUTO_BYTES (16.0 * 1024 * 1024)

/* The rounds after p that may run with it, now: same group and layer,
 * every live shard's dispatch handled, their M2N data arrived. Never
 * waits. ps[0] = p; returns the count (1: p alone). */
static int pick_group(expert_t *s, pend_t *p, pend_t **ps)
{
    ps[0] = p;
    int k = 1;
    if (s->kmax < 2 || s->broken || p->error[0] || !s->member ||
        (s->a.fail_countdown && atomic_load(s->a.fail_countdown) > 0))
        return 1; /* injected faults count plain rounds */
    const uint64_t m = (uint64_t)s->g->m, grp = p->round / m;
    bool progressed = false;
    while (k < s->kmax) {
        uint64_t rr = p->round + (uint64_t)k;
        if (rr / m != grp)
            break;
        pend_t *q = &s->pend[rr % (uint64_t)s->P];
        if (!q->used || q->round != rr || q->n_got < s->n_live || q->error[0] ||
            q->layer != p->layer)
            break;
        if (!progressed) {
            if (duet_m2n_progress(s->a.dispatch))
                break;
            progressed = true;
        }
        /* rr < p->round + m <= the ring's window (2m slots from the oldest
         * unreleased round, p->round) */
        if (duet_m2n_missing(s->a.dispatch, rr, NULL, 0) != 0)
            break;
        ps[k++] = q;
    }
    return k;
}

/* Gather, compute and return rounds ps[0..k-1] (consecutive, one layer):
 * the rows of all of them grouped per expert, one expert pass, then each
 * round's results to every attention shard as a single round's would go. */
static duet_status_t run_round(duet_actor_t *self, expert_t *s, pend_t *const *ps, int k)
{
    const int H = s->a.n_experts;
    const pend_t *p = ps[0];
    uint64_t r = p->round;
    duet_status_t st;
    char err[512];
    uint64_t t0 = duet_now_ns();
    if (p->error[0]) {
        k = 1;
        snprintf(err, sizeof(err), "%s", p->error);
        goto fail;
    }
    /* run_ready waited for the data (duet__pipe_data_wait) */
    if ((st = duet_m2n_recv(s->a.dispatch, r, 0))) {
        k = 1;
        snprintf(err, sizeof(err), "%s: round %llu data: %s", duet_actor_name(self),
                 (unsigned long long)r, duet_error());
        goto fail_broken;
    }
    /* check every round's data first: a bad later round ends the group
     * before it (it then fails on its own, as it would alone) */
    for (int i = 0; i < k; i++) {
        const pend_t *pi = ps[i];
        uint64_t ri = r + (uint64_t)i;
        for (int a = 0; a < s->M; a++) {
            const void *data = NULL;
            size_t len = 0;
            s->gdata[i * s->M + a] = NULL;
            if (!s->alive_a[a])
                continue;
            if ((st = duet_m2n_data(s->a.dispatch, ri, (uint32_t)duet__pipe_grank(s->alive_a, a),
                                    &data, &len))) {
                snprintf(err, sizeof(err), "round %llu from attn/%d: %s", (unsigned long long)ri, a,
                         duet_error());
                goto bad;
            }
            int32_t rows = 0;
            for (int g = 0; g < pi->ng[a]; g++)
                rows += pi->cnt[a * s->E + g];
            duet_pipe_hdr_t h;
            if (len >= sizeof(h))
                memcpy(&h, data, sizeof(h));
            if (len < sizeof(h) || h.magic != DUET_PIPE_MAGIC || h.round != ri ||
                h.rows != (uint32_t)rows || len != sizeof(h) + (size_t)rows * s->rowb ||
                rows > s->max_rows) {
                snprintf(err, sizeof(err),
                         "round %llu from attn/%d: data (%zu bytes) does not match its "
                         "pipe.dispatch (%d rows)",
                         (unsigned long long)ri, a, len, rows);
                goto bad;
            }
            if (s->g->checksum &&
                duet__pipe_sum((const uint8_t *)data + sizeof(h), len - sizeof(h)) != h.sum) {
                snprintf(err, sizeof(err), "round %llu from attn/%d: data-plane checksum mismatch",
                         (unsigned long long)ri, a);
                goto bad;
            }
            s->gdata[i * s->M + a] = data;
            s->glen[i * s->M + a] = len;
            continue;
        bad:
            if (i == 0) {
                k = 1;
                goto fail_broken;
            }
            k = i;
            break;
        }
    }
    for (int h = 0; h < H; h++)
        s->tot[h] = s->cur[h] = 0;
    for (int i = 0; i < k; i++)
        for (int a = 0; a < s->M; a++)
            for (int g = 0; s->alive_a[a] && g < ps[i]->ng[a]; g++)
                s->tot[s->hidx[ps[i]->exp[a * s->E + g]]] += ps[i]->cnt[a * s->E + g];
    int32_t total = 0;
    for (int h = 0; h < H; h++) {
        s->xoff[h] = total;
        total += s->tot[h];
    }
    for (int i = 0; i < k; i++) {
        const pend_t *pi = ps[i];
        int32_t *srcpos = s->srcpos + (size_t)i * (size_t)s->M * (size_t)s->max_rows;
        int32_t *nsrc = s->nsrc + (size_t)i * (size_t)s->M;
        s->rtot[i] = 0;
        for (int a = 0; a < s->M; a++) {
            nsrc[a] = 0;
            if (!s->alive_a[a])
                continue;
            const uint8_t *q = (const uint8_t *)s->gdata[i * s->M + a] + sizeof(duet_pipe_hdr_t);
            s->a.obs->bytes += s->glen[i * s->M + a];
            int32_t j = 0;
            for (int g = 0; g < pi->ng[a]; g++) {
                int hh = s->hidx[pi->exp[a * s->E + g]];
                for (int32_t c = 0; c < pi->cnt[a * s->E + g]; c++, j++) {
                    int32_t dst = s->xoff[hh] + s->cur[hh]++;
                    memcpy((s->xh ? s->xh : s->x) + (size_t)dst * (size_t)s->cfg->hidden,
                           q + (size_t)j * s->rowb, s->rowb);
                    srcpos[(size_t)a * s->max_rows + j] = dst;
                }
            }
            nsrc[a] = j;
            s->rtot[i] += j;
        }
    }
    for (int i = 0; i < k; i++)
        if ((st = duet_m2n_release(s->a.dispatch, r + (uint64_t)i))) {
            snprintf(err, sizeof(err), "release round %llu: %s",
                     (unsigned long long)(r + (uint64_t)i), duet_error());
            goto fail_broken;
        }
    if (s->a.fail_countdown && atomic_load(s->a.fail_countdown) > 0 &&
        atomic_fetch_sub(s->a.fail_countdown, 1) == 1) {
        atomic_store(s->a.fail_countdown, s->a.fail_every);
        snprintf(err, sizeof(err), "%s: layer %d: injected compute error", duet_actor_name(self),
                 p->layer);
        goto fail_broken;
    }
    if (total > 0 && s->xh &&
        (st = s->a.be->ops->buf_upload(s->a.be, s->x, s->xh, s->rowb * (size_t)total))) {
        snprintf(err, sizeof(err), "%s: layer %d: rows to the device: %s", duet_actor_name(self),
                 p->layer, duet_error());
        goto fail_broken;
    }
    if (total > 0 &&
        (st = duet_experts_forward(s->ex, p->layer, H, s->a.experts, s->tot, s->x, s->y))) {
        snprintf(err, sizeof(err), "%s: layer %d: %s", duet_actor_name(self), p->layer,
                 duet_error());
        goto fail_broken;
    }
    if (total > 0 && s->yh &&
        (st = s->a.be->ops->buf_download(s->a.be, s->yh, s->y, s->rowb * (size_t)total))) {
        snprintf(err, sizeof(err), "%s: layer %d: results to host: %s", duet_actor_name(self),
                 p->layer, duet_error());
        goto fail_broken;
    }
    atomic_fetch_add(&s->a.counters->rounds_expert, (uint_fast64_t)k);
    if (k > 1)
        atomic_fetch_add(&s->a.counters->rounds_coalesced, (uint_fast64_t)(k - 1));
    st = DUET_OK;
    for (int i = 0; i < k; i++) {
        uint64_t ri = r + (uint64_t)i;
        if (duet_obs_tracing(s->a.obs))
            for (int a = 0; a < s->M; a++)
                duet_obs_ev(s->a.obs, 'f', DUET_TR_FLOW_DISPATCH, t0, 0,
                            duet_obs_flow_id(s->epoch, 0, ri, a, s->a.shard), 0, 0, 0, 0);
        duet_status_t ss = send_results(self, s, ri, ps[i]->layer, NULL, i);
        if (ss && !st)
            st = ss;
        /* round i's slice: from the end of round i-1's writes (the group's
         * start for the first) to the end of its own */
        uint64_t t1 = s->write_end;
        s->a.obs->busy_ns += t1 - t0;
        s->a.obs->rounds++;
        s->a.obs->tokens += (uint64_t)s->rtot[i];
        duet_obs_ev(s->a.obs, 'X', DUET_TR_EXPERT, t0, t1 - t0, 0, (int64_t)ri, ps[i]->layer,
                    (int64_t)(ri % (uint64_t)s->g->m), s->rtot[i]);
        t0 = t1;
    }
    if (st) {
        s->broken = true;
        snprintf(s->why, sizeof(s->why), "%s", duet_error());
    }
    return DUET_OK;
fail_broken:
fail:
    /* the round stays unreleased in the ring: later rounds cannot follow */
    if (!s->broken) {
        s->broken = true;
        snprintf(s->why, sizeof(s->why), "%.255s", err);
    }
    DUET_LOG_W(MOD, "%s: %s", duet_actor_name(self), err);
    for (int i = 0; i < k; i++) { /* a group fails every round of it */
        for (int a = 0; a < s->M; a++)
            s->nsrc[(size_t)i * (size_t)s->M + (size_t)a] = 0;
        send_results(self, s, r + (uint64_t)i, ps[i]->layer, err, i);
    }
    return DUET_OK;
}

/* A new data-plane epoch: fresh groups, rounds from 0, nothing pending. */
static duet_status_t reset_epoch(duet_actor_t *self, expert_t *s, const duet_pipe_reset_t *rs)
{
    uint64_t epoch = rs->epoch;
    DUET_LOG_I(MOD, "%s: data-plane epoch %llu", duet_actor_name(self), (unsigned long long)epoch);
    duet__pipe_dp_close(&s->a.ctx, &s->a.dispatch, &s->a.combine, &s->a.send_mr);
    const uint32_t *la = rs->attn_live.data, *le = rs->expert_live.data;
    for (int a = 0; a < s->M; a++)
        s->alive_a[a] = rs->attn_live.count == (size_t)s->M ? la[a] != 0 : 1;
    s->n_live = duet__pipe_count(s->alive_a, s->M);
    s->member = rs->expert_live.count == (size_t)s->g->n_expert_shards ? le[s->a.shard] != 0 : true;
    uint32_t *alive_e = NULL;
    duet_status_t st = DUET_OK;
    if (rs->expert_live.count == (size_t)s->g->n_expert_shards) {
        alive_e = duet_calloc((size_t)s->g->n_expert_shards, sizeof(uint32_t));
        if (!alive_e)
            return DUET_ERR_NOMEM;
        memcpy(alive_e, le, sizeof(uint32_t) * (size_t)s->g->n_expert_shards);
    }
    if (s->member && s->n_live > 0)
        st = duet__pipe_dp_open(s->a.provider, s->a.dp_host, s->a.rsim, s->g, false, s->a.shard,
                                s->alive_a, alive_e, &s->a.ctx, &s->a.dispatch, &s->a.combine,
                                &s->a.send_mr);
    duet_free(alive_e);
    if (st)
        return st;
    for (int i = 0; i < s->P; i++)
        s->pend[i].used = false;
    for (int a = 0; a < s->M; a++) /* results of the old epoch are void */
        s->q_n[a] = 0;
    memset(s->wired, 0, (size_t)s->M);
    s->next = 0;
    s->broken = false;
    s->why[0] = 0;
    s->epoch = epoch;
    if (!s->member || s->n_live < 1) {
        s->member = false;
        s->broken = true;
        snprintf(s->why, sizeof(s->why), "not a member of epoch %llu", (unsigned long long)epoch);
    }
    return DUET_OK;
}

static bool round_complete(const expert_t *s, uint64_t r)
{
    const pend_t *q = &s->pend[r % (uint64_t)s->P];
    return q->used && q->round == r && q->n_got >= s->n_live;
}

/* Run every round that is complete, in order. With coalescing, a round
 * whose group has a later round not complete yet is put off until the
 * messages already in the mailbox are handled (a 0 ms timer fires after
 * them): a later round's pipe.dispatch may be among them. kicked: that
 * timer fired (run what is complete now). */
static duet_status_t run_ready(duet_actor_t *self, expert_t *s, bool kicked)
{
    pend_t *ps[64];
    for (;;) {
        pend_t *q = &s->pend[s->next % (uint64_t)s->P];
        if (!round_complete(s, s->next))
            break;
        if (s->broken && !q->error[0])
            snprintf(q->error, sizeof(q->error), "%s", s->why);
        if (!kicked && s->kmax > 1 && !q->error[0] && (q->round + 1) % (uint64_t)s->g->m != 0 &&
            !round_complete(s, q->round + 1)) {
            if (!s->kick_armed && duet_timer_start_ns(self, 0, 0, KICK_TAG, NULL) == DUET_OK)
                s->kick_armed = true;
            if (s->kick_armed)
                break;
        }
        /* its data may still be on the wire: come back on a timer, serving
         * the mailbox (a new epoch, a DOWN) meanwhile */
        if (!q->error[0] &&
            duet__pipe_data_wait(self, s->a.dispatch, q->round, &q->data_since,
                                 s->g->round_timeout_ms, &s->data_armed,
                                 DATA_TAG) == DUET_ERR_AGAIN)
            break;
        int k = pick_group(s, q, ps);
        duet_status_t st = run_round(self, s, ps, k);
        for (int i = 0; i < k; i++)
            ps[i]->used = false;
        s->next += (uint64_t)k;
        kicked = false; /* more may have come meanwhile: put the next one off again */
        if (st)
            return st;
    }
    return DUET_OK;
}

static duet_status_t on_dispatch(duet_actor_t *self, expert_t *s, const duet_pipe_dispatch_t *d)
{
    if (d->epoch != s->epoch || !s->member || d->shard < 0 || d->shard >= s->M ||
        !s->alive_a[d->shard] || d->round < s->next || d->round >= s->next + (uint64_t)s->P) {
        atomic_fetch_add(&s->a.counters->dropped_stray, 1);
        DUET_LOG_D(MOD, "%s: stray pipe.dispatch round %llu from attn/%d (next %llu)",
                   duet_actor_name(self), (unsigned long long)d->round, d->shard,
                   (unsigned long long)s->next);
        return DUET_OK;
    }
    pend_t *p = &s->pend[d->round % (uint64_t)s->P];
    if (!p->used) {
        p->used = true;
        p->round = d->round;
        p->data_since = 0;
        p->layer = d->layer;
        p->n_got = 0;
        p->error[0] = 0;
        memset(p->got, 0, (size_t)s->M);
        memset(p->ng, 0, sizeof(int32_t) * (size_t)s->M);
    }
    if (p->got[d->shard]) {
        atomic_fetch_add(&s->a.counters->dropped_dup, 1);
        return DUET_OK;
    }
    const int32_t *ex = d->experts.data, *cn = d->counts.data;
    size_t ng = d->experts.count;
    if (ng != d->counts.count || ng > (size_t)s->E)
        snprintf(p->error, sizeof(p->error), "attn/%d round %llu: malformed pipe.dispatch",
                 d->shard, (unsigned long long)d->round);
    else if (d->layer != p->layer || d->layer < 0 || d->layer >= s->cfg->n_layers)
        snprintf(p->error, sizeof(p->error), "round %llu: layer %d from attn/%d, expected %d",
                 (unsigned long long)d->round, d->layer, d->shard, p->layer);
    int32_t rows = 0;
    for (size_t g = 0; g < ng && !p->error[0]; g++) {
        if (ex[g] < 0 || ex[g] >= s->E || s->hidx[ex[g]] < 0 || cn[g] < 0)
            snprintf(p->error, sizeof(p->error), "%s does not hold expert %d (attn/%d, round %llu)",
                     duet_actor_name(self), ex[g], d->shard, (unsigned long long)d->round);
        else
            rows += cn[g];
        p->exp[d->shard * s->E + (int)g] = ex[g];
        p->cnt[d->shard * s->E + (int)g] = cn[g];
    }
    if (rows > s->max_rows && !p->error[0])
        snprintf(p->error, sizeof(p->error), "attn/%d round %llu: %d rows, at most %d", d->shard,
                 (unsigned long long)d->round, rows, s->max_rows);
    p->ng[d->shard] = p->error[0] ? 0 : (int32_t)ng;
    p->got[d->shard] = 1;
    p->n_got++;
    return run_ready(self, s, false);
}

static duet_status_t expert_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    expert_t *s = state;
    const duet_pipe_dispatch_t *d = duet_pipe_msg_dispatch_body(msg);
    if (d)
        return on_dispatch(self, s, d);
    const duet_pipe_stats_req_t *sq = duet_pipe_msg_stats_req_body(msg);
    if (sq) {
        uint64_t queued = 0;
        for (int a = 0; a < s->M; a++)
            queued += (uint64_t)s->q_n[a];
        duet__pipe_reply_stats(self, s->a.obs, sq, 0, 0, s->epoch, s->a.dispatch, s->a.combine,
                               queued);
        return DUET_OK;
    }
    const duet_pipe_reset_t *rs = duet_pipe_msg_reset_body(msg);
    if (rs) {
        if (rs->epoch > s->epoch)
            return reset_epoch(self, s, rs);
        return DUET_OK;
    }
    const duet_sys_writable_t *wr = duet_msg_body(msg, &duet_msg_sys_writable);
    if (wr) {
        int k = -1;
        if (sscanf(wr->to, "attn/%d", &k) == 1 && k >= 0 && k < s->M)
            flush_res(self, s, k);
        return DUET_OK;
    }
    const duet_sys_timer_t *tm = duet_msg_body(msg, &duet_msg_sys_timer);
    if (tm && tm->tag == KICK_TAG) {
        s->kick_armed = false;
        return run_ready(self, s, true);
    }
    if (tm && tm->tag == DATA_TAG) {
        s->data_armed = false;
        return run_ready(self, s, true);
    }
    if (tm) { /* keep-alive: the router's view of this shard */
        duet_pipe_up_t up = {.shard = s->a.shard,
                             .epoch = s->epoch,
                             .incarnation = duet_actor_epoch(self),
                             .member = s->member};
        duet_send(self, "router", &duet_pipe_msg_up, &up);
        return DUET_OK;
    }
    const duet_pipe_wire_t *w = duet_pipe_msg_wire_body(msg);
    if (w) {
        /* an attention shard's info: connect, answer with ours */
        /* another epoch (it repeats until we are in its epoch too) or a
         * shard outside this one's membership */
        if (w->rank < 0 || w->rank >= s->M || w->epoch != s->epoch || !s->member ||
            !s->alive_a[w->rank]) {
            atomic_fetch_add(&s->a.counters->dropped_stray, 1);
            return DUET_OK;
        }
        int gr = duet__pipe_grank(s->alive_a, w->rank);
        if (!s->wired[w->rank]) { /* a repeat only wants our answer again */
            duet_status_t st = duet__pipe_dp_connect(s->a.dispatch, s->a.combine, gr, w);
            if (st) { /* info of a context gone (a late repeat): the next one will do */
                DUET_LOG_D(MOD, "%s: wiring attn/%d: %s", duet_actor_name(self), w->rank,
                           duet_error());
                atomic_fetch_add(&s->a.counters->dropped_stray, 1);
                return DUET_OK;
            }
            s->wired[w->rank] = 1;
        }
        char to[32];
        snprintf(to, sizeof(to), "attn/%d", w->rank);
        return duet__pipe_dp_send_wire(self, to, s->epoch, s->a.shard, gr, s->a.dispatch,
                                       s->a.combine);
    }
    return DUET_OK;
}

static void expert_stop(duet_actor_t *self, void *state, const char *reason)
{
    (void)self, (void)reason;
    expert_t *s = state;
    if (!s)
        return;
    for (int i = 0; s->pend && i < s->P; i++) {
        duet_free(s->pend[i].got);
        duet_free(s->pend[i].ng);
        duet_free(s->pend[i].exp);
        duet_free(s->pend[i].cnt);
    }
    duet_free(s->pend);
    duet__pipe_dp_close(&s->a.ctx, &s->a.dispatch, &s->a.combine, &s->a.send_mr);
    duet_free(s->wired);
    duet_free(s->wfail);
    duet_free(s->alive_a);
    for (int a = 0; s->q && a < s->M; a++)
        duet_free(s->q[a]);
    duet_free(s->q);
    duet_free(s->q_n);
    duet_free(s->q_cap);
    duet_experts_destroy(&s->ex);
    if (s->x)
        s->a.be->ops->buf_free(s->a.be, s->x);
    if (s->y)
        s->a.be->ops->buf_free(s->a.be, s->y);
    duet_free(s->xh);
    duet_free(s->yh);
    duet_free(s->hidx);
    duet_free(s->tot);
    duet_free(s->xoff);
    duet_free(s->cur);
    duet_free(s->srcpos);
    duet_free(s->nsrc);
    duet_free(s->gdata);
    duet_free(s->glen);
    duet_free(s->rtot);
    duet_free(s);
}

static duet_status_t expert_start(duet_actor_t *self, void *arg, void **state_out)
{
    (void)self;
    expert_t *s = duet_calloc(1, sizeof(*s));
    if (!s)
        return DUET_ERR_NOMEM;
    *state_out = s;
    s->a = *(const duet_pipe_expert_arg_t *)arg;
    if (!s->a.obs)
        s->a.obs = &s->own_obs;
    s->g = s->a.geom;
    s->cfg = &s->a.model->cfg;
    s->M = s->g->n_attention;
    s->E = s->cfg->n_experts;
    s->P = 4 * s->g->m + 4;
    s->rowb = sizeof(float) * (size_t)s->cfg->hidden;
    s->max_rows = s->g->max_tokens_ub * s->cfg->top_k;
    const int H = s->a.n_experts;
    duet_status_t st;
    /* a group of coalesced rounds carries at most m rounds' rows: about
     * what one round of an m = 1 deployment carries */
    bool coal = s->g->coalesce > 0;
    if (s->g->coalesce == 0) /* auto: the held experts' weights of a layer, >= 2 bytes each */
        coal = 3.0 * s->cfg->hidden * s->cfg->expert_dim * 2.0 * H >= COALESCE_AUTO_BYTES;
    s->kmax = coal && s->g->m > 1 ? (s->g->m < 64 ? s->g->m : 64) : 1;
    int32_t cap = s->max_rows * s->M * s->kmax;
    if ((st = duet_experts_create(s->a.be, s->a.model, cap, &s->ex)))
        return st;
    void *x, *y;
    if ((st = s->a.be->ops->buf_alloc(s->a.be, s->rowb * (size_t)cap, &x)))
        return st;
    s->x = x;
    if ((st = s->a.be->ops->buf_alloc(s->a.be, s->rowb * (size_t)cap, &y)))
        return st;
    s->y = y;
    if (s->a.be->ops->device_memory) {
        s->xh = duet_malloc(s->rowb * (size_t)cap);
        s->yh = duet_malloc(s->rowb * (size_t)cap);
        if (!s->xh || !s->yh)
            return DUET_ERR_NOMEM;
    }
    s->hidx = duet_calloc((size_t)s->E, sizeof(int32_t));
    s->tot = duet_calloc((size_t)H + 1, sizeof(int32_t));
    s->xoff = duet_calloc((size_t)H + 1, sizeof(int32_t));
    s->cur = duet_calloc((size_t)H + 1, sizeof(int32_t));
    s->srcpos = duet_calloc((size_t)s->kmax * (size_t)s->M * (size_t)s->max_rows, sizeof(int32_t));
    s->nsrc = duet_calloc((size_t)s->kmax * (size_t)s->M, sizeof(int32_t));
    s->gdata = duet_calloc((size_t)s->kmax * (size_t)s->M, sizeof(*s->gdata));
    s->glen = duet_calloc((size_t)s->kmax * (size_t)s->M, sizeof(size_t));
    s->rtot = duet_calloc((size_t)s->kmax, sizeof(int32_t));
    s->pend = duet_calloc((size_t)s->P, sizeof(pend_t));
    s->wired = duet_calloc((size_t)s->M, 1);
    s->wfail = duet_calloc((size_t)s->M, 1);
    s->alive_a = duet_calloc((size_t)s->M, sizeof(uint32_t));
    s->q = duet_calloc((size_t)s->M, sizeof(*s->q));
    s->q_n = duet_calloc((size_t)s->M, sizeof(int));
    s->q_cap = duet_calloc((size_t)s->M, sizeof(int));
    if (!s->wired || !s->wfail || !s->alive_a || !s->q || !s->q_n || !s->q_cap || !s->hidx ||
        !s->tot || !s->xoff || !s->cur || !s->srcpos || !s->nsrc || !s->pend || !s->gdata ||
        !s->glen || !s->rtot)
        return DUET_ERR_NOMEM;
    for (int e = 0; e < s->E; e++)
        s->hidx[e] = -1;
    for (int h = 0; h < H; h++) {
        int e = s->a.experts[h];
        if (e < 0 || e >= s->E || s->hidx[e] >= 0)
            return duet_errorf(DUET_ERR_INVALID, "expert shard %d: bad expert id %d", s->a.shard,
                               e);
        s->hidx[e] = h;
    }
    for (int a = 0; a < s->M; a++) /* epoch 0: every shard */
        s->alive_a[a] = 1;
    s->n_live = s->M;
    s->member = true;
    if ((st = duet__pipe_dp_open(s->a.provider, s->a.dp_host, s->a.rsim, s->g, false, s->a.shard,
                                 NULL, NULL, &s->a.ctx, &s->a.dispatch, &s->a.combine,
                                 &s->a.send_mr)))
        return st;
    for (int i = 0; i < s->P; i++) {
        pend_t *p = &s->pend[i];
        p->got = duet_calloc((size_t)s->M, 1);
        p->ng = duet_calloc((size_t)s->M, sizeof(int32_t));
        p->exp = duet_calloc((size_t)s->M * (size_t)s->E, sizeof(int32_t));
        p->cnt = duet_calloc((size_t)s->M * (size_t)s->E, sizeof(int32_t));
        if (!p->got || !p->ng || !p->exp || !p->cnt)
            return DUET_ERR_NOMEM;
    }
    duet_pipe_up_t up = {
        .shard = s->a.shard, .epoch = 0, .incarnation = duet_actor_epoch(self), .member = true};
    DUET_LOG_D(MOD, "%s: started, incarnation %llu", duet_actor_name(self),
               (unsigned long long)up.incarnation);
    duet_send(self, "router", &duet_pipe_msg_up, &up); /* best effort; repeated below */
    return duet_timer_start(self, 100, 100, 1, NULL);
}

const duet_actor_ops_t duet__pipe_expert_ops = {
    .kind = "expert",
    .start = expert_start,
    .handle = expert_handle,
    .stop = expert_stop,
};
