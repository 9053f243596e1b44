/* rdma/sim — in-memory provider for the simulated network.
 *
 * All contexts of one duet_rdma_sim_t live in this process. A write is
 * captured when posted and placed when due (posting time + the pair's delay),
 * by whichever context polls or posts next (or duet_rdma_sim_progress), so a
 * single-threaded run on a virtual clock is repeatable. Writes on one
 * connection land in order. Faults: per-pair delay, stall of a receiver
 * (writes into it are held), loss of a peer (writes to or from it fail with
 * DUET_ERR_CLOSED). A fabric-wide mutex makes threaded use safe too.
 */
#include "rdma/rdma_int.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define SIM_BLOB_LEN 28

typedef struct sim_ep {
    duet_rdma_sim_t *sim;
    duet_rdma_ctx_t *ctx;
    uint32_t id;
    bool killed, stalled;
    duet__cq_t cq;
    int efd;
    bool armed;
} sim_ep_t;

typedef struct sim_conn {
    uint32_t peer_ep, peer_conn;
    duet_status_t dead;
    uint64_t last_due;
} sim_conn_t;

typedef struct sim_ev {
    uint32_t src_ep, src_conn, dst_ep, dst_conn;
    uint64_t due;
    uint8_t *data;
    uint64_t key, off, len;
    uint32_t imm;
    uint64_t wr_id;
} sim_ev_t;

typedef struct sim_delay {
    const duet_rdma_ctx_t *from, *to;
    uint64_t ns;
} sim_delay_t;

struct duet_rdma_sim {
    pthread_mutex_t mu;
    uint64_t id;
    uint64_t (*now)(void *);
    void *now_arg;
    sim_ep_t **eps;
    size_t n_eps, cap_eps;
    sim_ev_t *evs;
    size_t n_evs, cap_evs;
    sim_delay_t *delays;
    size_t n_delays, cap_delays;
};

static uint64_t real_now(void *arg)
{
    return duet_now_ns();
}

duet_status_t duet_rdma_sim_create(duet_rdma_sim_t **sim_out)
{
    duet_rdma_sim_t *sim = duet_calloc(1, sizeof(*sim));
    if (!sim)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/sim: out of memory");
    pthread_mutex_init(&sim->mu, NULL);
    static uint64_t next_id;
    sim->id = __atomic_add_fetch(&next_id, 1, __ATOMIC_RELAXED) ^ ((uint64_t)getpid() << 32);
    sim->now = real_now;
    *sim_out = sim;
    return DUET_OK;
}

void duet_rdma_sim_destroy(duet_rdma_sim_t **sim_p)
{
    if (!sim_p || !*sim_p)
        return;
    duet_rdma_sim_t *sim = *sim_p;
    for (size_t i = 0; i < sim->n_evs; i++)
        duet_free(sim->evs[i].data);
    duet_free(sim->evs);
    duet_free(sim->eps);
    duet_free(sim->delays);
    pthread_mutex_destroy(&sim->mu);
    duet_free(sim);
    *sim_p = NULL;
}

void duet_rdma_sim_set_clock(duet_rdma_sim_t *sim, uint64_t (*now)(void *arg), void *arg)
{
    pthread_mutex_lock(&sim->mu);
    sim->now = now ? now : real_now;
    sim->now_arg = arg;
    pthread_mutex_unlock(&sim->mu);
}

void duet_rdma_sim_set_delay(duet_rdma_sim_t *sim, const duet_rdma_ctx_t *from,
                             const duet_rdma_ctx_t *to, uint64_t delay_ns)
{
    pthread_mutex_lock(&sim->mu);
    size_t i;
    for (i = 0; i < sim->n_delays; i++)
        if (sim->delays[i].from == from && sim->delays[i].to == to)
            break;
    if (i == sim->n_delays) {
        if (duet_vec_reserve((void **)&sim->delays, &sim->cap_delays, i + 1,
                             sizeof(*sim->delays)) == DUET_OK)
            sim->n_delays++;
        else
            i = SIZE_MAX;
    }
    if (i != SIZE_MAX)
        sim->delays[i] = (sim_delay_t){from, to, delay_ns};
    pthread_mutex_unlock(&sim->mu);
}

static uint64_t delay_of(duet_rdma_sim_t *sim, const duet_rdma_ctx_t *from,
                         const duet_rdma_ctx_t *to)
{
    uint64_t best = 0;
    int score = -1;
    for (size_t i = 0; i < sim->n_delays; i++) {
        const sim_delay_t *d = &sim->delays[i];
        if ((d->from && d->from != from) || (d->to && d->to != to))
            continue;
        int s = (d->from != NULL) + (d->to != NULL);
        if (s > score) {
            score = s;
            best = d->ns;
        }
    }
    return best;
}

static sim_ep_t *ep_of(duet_rdma_sim_t *sim, const duet_rdma_ctx_t *ctx)
{
    for (size_t i = 0; i < sim->n_eps; i++)
        if (sim->eps[i] && sim->eps[i]->ctx == ctx)
            return sim->eps[i];
    return NULL;
}

static void ep_push(sim_ep_t *ep, const duet_rdma_cqe_t *e)
{
    if (duet__cq_push(&ep->cq, e) != DUET_OK)
        DUET_LOG_E("rdma", "sim: lost a completion (out of memory)");
    if (ep->armed) {
        ep->armed = false;
        uint64_t one = 1;
        if (write(ep->efd, &one, sizeof(one)) < 0) {
        }
    }
}

/* Finish event i with `st` (and place its bytes when st is OK). */
static void ev_finish(duet_rdma_sim_t *sim, size_t i, duet_status_t st)
{
    sim_ev_t ev = sim->evs[i];
    memmove(sim->evs + i, sim->evs + i + 1, (sim->n_evs - i - 1) * sizeof(*sim->evs));
    sim->n_evs--;
    sim_ep_t *src = ev.src_ep < sim->n_eps ? sim->eps[ev.src_ep] : NULL;
    sim_ep_t *dst = ev.dst_ep < sim->n_eps ? sim->eps[ev.dst_ep] : NULL;
    if (st == DUET_OK && dst) {
        duet_rdma_conn_t *dc = duet__rdma_conn_get(dst->ctx, ev.dst_conn);
        if (!dc) {
            st = DUET_ERR_CLOSED;
        } else if (ev.len) {
            duet_rdma_mr_t *mr = duet__rdma_mr_get(dst->ctx, ev.key);
            if (!mr || !(mr->access & DUET_RDMA_ACCESS_REMOTE_WRITE))
                st = DUET_ERR_NOT_FOUND;
            else if (ev.off > mr->len || ev.len > mr->len - ev.off)
                st = DUET_ERR_RANGE;
            else
                memcpy((uint8_t *)mr->addr + ev.off, ev.data, ev.len);
        }
        if (st == DUET_OK) {
            duet_rdma_cqe_t e = {.kind = DUET_RDMA_CQE_RECV,
                                 .imm = ev.imm,
                                 .len = ev.len,
                                 .conn = dc,
                                 .conn_user = dc->user,
                                 .conn_id = dc->id};
            ep_push(dst, &e);
        }
    }
    if (src) {
        duet_rdma_conn_t *sc = duet__rdma_conn_get(src->ctx, ev.src_conn);
        if (sc) {
            duet_rdma_cqe_t e = {.kind = DUET_RDMA_CQE_SEND,
                                 .status = st,
                                 .imm = ev.imm,
                                 .len = ev.len,
                                 .wr_id = ev.wr_id,
                                 .conn = sc,
                                 .conn_user = sc->user,
                                 .conn_id = sc->id};
            ep_push(src, &e);
            if (st == DUET_ERR_CLOSED)
                ((sim_conn_t *)sc->priv)->dead = DUET_ERR_CLOSED;
        }
    }
    duet_free(ev.data);
}

static size_t deliver_locked(duet_rdma_sim_t *sim)
{
    uint64_t now = sim->now(sim->now_arg);
    size_t done = 0;
    for (size_t i = 0; i < sim->n_evs;) {
        sim_ev_t *ev = &sim->evs[i];
        sim_ep_t *src = sim->eps[ev->src_ep], *dst = sim->eps[ev->dst_ep];
        if (!src || !dst || src->killed || dst->killed) {
            ev_finish(sim, i, DUET_ERR_CLOSED);
            done++;
            continue;
        }
        if (ev->due > now || dst->stalled) {
            i++;
            continue;
        }
        /* Keep per-connection order: an earlier write on the same pair that
         * is still held blocks this one. */
        bool blocked = false;
        for (size_t j = 0; j < i; j++)
            if (sim->evs[j].src_ep == ev->src_ep && sim->evs[j].src_conn == ev->src_conn)
                blocked = true;
        if (blocked) {
            i++;
            continue;
        }
        ev_finish(sim, i, DUET_OK);
        done++;
    }
    return done;
}

size_t duet_rdma_sim_progress(duet_rdma_sim_t *sim)
{
    pthread_mutex_lock(&sim->mu);
    size_t n = deliver_locked(sim);
    pthread_mutex_unlock(&sim->mu);
    return n;
}

void duet_rdma_sim_stall(duet_rdma_sim_t *sim, const duet_rdma_ctx_t *ctx, bool stalled)
{
    pthread_mutex_lock(&sim->mu);
    sim_ep_t *ep = ep_of(sim, ctx);
    if (ep)
        ep->stalled = stalled;
    deliver_locked(sim);
    pthread_mutex_unlock(&sim->mu);
}

void duet_rdma_sim_kill(duet_rdma_sim_t *sim, const duet_rdma_ctx_t *ctx)
{
    pthread_mutex_lock(&sim->mu);
    sim_ep_t *ep = ep_of(sim, ctx);
    if (ep)
        ep->killed = true;
    deliver_locked(sim);
    pthread_mutex_unlock(&sim->mu);
}

static duet_status_t sim_ctx_open(duet_rdma_ctx_t *ctx)
{
    duet_rdma_sim_t *sim = ctx->params.sim;
    if (!sim)
        return duet_errorf(DUET_ERR_INVALID, "rdma/sim: ctx params need a fabric (params.sim)");
    sim_ep_t *ep = duet_calloc(1, sizeof(*ep));
    if (!ep)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/sim: out of memory");
    ep->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ep->efd < 0) {
        duet_free(ep);
        return duet_errorf(DUET_ERR_IO, "rdma/sim: eventfd: %s", strerror(errno));
    }
    ep->sim = sim;
    ep->ctx = ctx;
    pthread_mutex_lock(&sim->mu);
    duet_status_t st =
        duet_vec_reserve((void **)&sim->eps, &sim->cap_eps, sim->n_eps + 1, sizeof(*sim->eps));
    if (st == DUET_OK) {
        ep->id = (uint32_t)sim->n_eps;
        sim->eps[sim->n_eps++] = ep;
    }
    pthread_mutex_unlock(&sim->mu);
    if (st) {
        close(ep->efd);
        duet_free(ep);
        return duet_errorf(DUET_ERR_NOMEM, "rdma/sim: out of memory");
    }
    ctx->priv = ep;
    return DUET_OK;
}

static void sim_ctx_close(duet_rdma_ctx_t *ctx)
{
    sim_ep_t *ep = ctx->priv;
    duet_rdma_sim_t *sim = ep->sim;
    pthread_mutex_lock(&sim->mu);
    ep->killed = true;
    deliver_locked(sim); /* fails what is still pending to or from it */
    sim->eps[ep->id] = NULL;
    pthread_mutex_unlock(&sim->mu);
    close(ep->efd);
    duet__cq_cleanup(&ep->cq);
    duet_free(ep);
}

static duet_status_t sim_mr_alloc(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    if (mr->access & DUET_RDMA_MEM_DEVICE)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "rdma/sim: GPU memory is not supported");
    mr->addr = duet_aligned_alloc(64, mr->len);
    if (!mr->addr)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/sim: cannot allocate %zu bytes", mr->len);
    memset(mr->addr, 0, mr->len);
    mr->priv = mr->addr;
    return DUET_OK;
}

static duet_status_t sim_mr_reg(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    if (mr->access & DUET_RDMA_MEM_DEVICE)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "rdma/sim: GPU memory is not supported");
    mr->priv = NULL;
    return DUET_OK;
}

static void sim_mr_dereg(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    sim_ep_t *ep = ctx->priv;
    pthread_mutex_lock(&ep->sim->mu); /* no delivery may be copying into it */
    pthread_mutex_unlock(&ep->sim->mu);
    duet_free(mr->priv);
}

static duet_status_t sim_conn_open(duet_rdma_ctx_t *ctx, duet_rdma_conn_t *conn)
{
    sim_conn_t *c = duet_calloc(1, sizeof(*c));
    if (!c)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/sim: out of memory");
    conn->priv = c;
    return DUET_OK;
}

static duet_status_t sim_conn_blob(const duet_rdma_conn_t *conn, uint8_t *buf, size_t *len)
{
    sim_ep_t *ep = conn->ctx->priv;
    duet__blob_header(buf, DUET__PROV_SIM, SIM_BLOB_LEN);
    duet__put64(buf + 8, ep->sim->id);
    duet__put32(buf + 16, ep->id);
    duet__put32(buf + 20, conn->id);
    duet__put32(buf + 24, 0);
    *len = SIM_BLOB_LEN;
    return DUET_OK;
}

duet_status_t duet__sim_blob_decode(const void *blob, size_t len, uint64_t *sim_id,
                                    uint32_t *ctx_id, uint32_t *conn_id)
{
    duet_status_t st = duet__blob_check(blob, len, DUET__PROV_SIM, SIM_BLOB_LEN, "sim");
    if (st)
        return st;
    const uint8_t *p = blob;
    if (duet__get32(p + 24) != 0)
        return duet_errorf(DUET_ERR_INVALID, "rdma/sim: blob: reserved bytes 24..27 are not 0");
    *sim_id = duet__get64(p + 8);
    *ctx_id = duet__get32(p + 16);
    *conn_id = duet__get32(p + 20);
    return DUET_OK;
}

static duet_status_t sim_conn_connect(duet_rdma_conn_t *conn, const void *blob, size_t len)
{
    sim_ep_t *ep = conn->ctx->priv;
    sim_conn_t *c = conn->priv;
    uint64_t sim_id;
    duet_status_t st = duet__sim_blob_decode(blob, len, &sim_id, &c->peer_ep, &c->peer_conn);
    if (st)
        return st;
    if (sim_id != ep->sim->id)
        return duet_errorf(DUET_ERR_INVALID, "rdma/sim: blob is from another fabric");
    pthread_mutex_lock(&ep->sim->mu);
    bool ok = c->peer_ep < ep->sim->n_eps && ep->sim->eps[c->peer_ep] &&
              !ep->sim->eps[c->peer_ep]->killed;
    pthread_mutex_unlock(&ep->sim->mu);
    if (!ok)
        return duet_errorf(DUET_ERR_CLOSED, "rdma/sim: peer context %u does not exist", c->peer_ep);
    return DUET_OK;
}

static duet_status_t sim_conn_status(const duet_rdma_conn_t *conn)
{
    sim_ep_t *ep = conn->ctx->priv;
    sim_conn_t *c = conn->priv;
    pthread_mutex_lock(&ep->sim->mu);
    sim_ep_t *peer = c->peer_ep < ep->sim->n_eps ? ep->sim->eps[c->peer_ep] : NULL;
    duet_status_t st = c->dead;
    if (!st && (!peer || peer->killed || ep->killed))
        st = c->dead = DUET_ERR_CLOSED;
    pthread_mutex_unlock(&ep->sim->mu);
    return st;
}

static void sim_conn_close(duet_rdma_conn_t *conn)
{
    sim_ep_t *ep = conn->ctx->priv;
    pthread_mutex_lock(&ep->sim->mu);
    /* Pending writes on it still complete towards the peer; the sender side
     * completion is dropped (the connection is gone). */
    pthread_mutex_unlock(&ep->sim->mu);
    duet_free(conn->priv);
}

static duet_status_t sim_write(duet_rdma_conn_t *conn, const duet_rdma_mr_t *src, size_t src_off,
                               const duet_rdma_rkey_t *dst, uint64_t dst_off, size_t len,
                               uint32_t imm, unsigned flags, uint64_t wr_id)
{
    sim_ep_t *ep = conn->ctx->priv;
    sim_conn_t *c = conn->priv;
    duet_rdma_sim_t *sim = ep->sim;
    duet_status_t st = sim_conn_status(conn);
    if (st)
        return duet_errorf(st, "rdma/sim: connection %u: peer is gone", conn->id);
    uint8_t *data = NULL;
    if (len) {
        data = duet_malloc(len);
        if (!data)
            return duet_errorf(DUET_ERR_NOMEM, "rdma/sim: out of memory");
        memcpy(data, (const uint8_t *)src->addr + src_off, len);
    }
    pthread_mutex_lock(&sim->mu);
    sim_ep_t *peer = sim->eps[c->peer_ep];
    uint64_t due = sim->now(sim->now_arg) + (peer ? delay_of(sim, ep->ctx, peer->ctx) : 0);
    if (due < c->last_due)
        due = c->last_due;
    c->last_due = due;
    st = duet_vec_reserve((void **)&sim->evs, &sim->cap_evs, sim->n_evs + 1, sizeof(*sim->evs));
    if (st == DUET_OK) {
        sim->evs[sim->n_evs++] =
            (sim_ev_t){ep->id,  conn->id, c->peer_ep, c->peer_conn, due, data, len ? dst->key : 0,
                       dst_off, len,      imm,        wr_id};
        deliver_locked(sim);
    }
    pthread_mutex_unlock(&sim->mu);
    if (st) {
        duet_free(data);
        return duet_errorf(DUET_ERR_NOMEM, "rdma/sim: out of memory");
    }
    return DUET_OK;
}

static int sim_poll(duet_rdma_ctx_t *ctx, duet_rdma_cqe_t *out, int max)
{
    sim_ep_t *ep = ctx->priv;
    pthread_mutex_lock(&ep->sim->mu);
    deliver_locked(ep->sim);
    int n = duet__cq_pop(&ep->cq, out, max);
    pthread_mutex_unlock(&ep->sim->mu);
    return n;
}

static int sim_fd(const duet_rdma_ctx_t *ctx)
{
    return ((const sim_ep_t *)ctx->priv)->efd;
}

static duet_status_t sim_arm(duet_rdma_ctx_t *ctx)
{
    sim_ep_t *ep = ctx->priv;
    uint64_t v;
    if (read(ep->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        return duet_errorf(DUET_ERR_IO, "rdma/sim: eventfd read: %s", strerror(errno));
    pthread_mutex_lock(&ep->sim->mu);
    deliver_locked(ep->sim);
    ep->armed = true;
    if (ep->cq.count) {
        ep->armed = false;
        uint64_t one = 1;
        if (write(ep->efd, &one, sizeof(one)) < 0) {
        }
    }
    pthread_mutex_unlock(&ep->sim->mu);
    return DUET_OK;
}

static int64_t sim_next_due(duet_rdma_ctx_t *ctx)
{
    sim_ep_t *ep = ctx->priv;
    duet_rdma_sim_t *sim = ep->sim;
    pthread_mutex_lock(&sim->mu);
    uint64_t now = sim->now(sim->now_arg);
    int64_t best = -1;
    for (size_t i = 0; i < sim->n_evs; i++) {
        int64_t d = sim->evs[i].due > now ? (int64_t)(sim->evs[i].due - now) : 0;
        /* a stalled receiver is re-checked now and then */
        sim_ep_t *dst = sim->eps[sim->evs[i].dst_ep];
        if (dst && dst->stalled)
            d = 1000000;
        if (best < 0 || d < best)
            best = d;
    }
    pthread_mutex_unlock(&sim->mu);
    return best;
}

const duet_rdma_ops_t duet__rdma_sim_ops = {
    .name = "sim",
    .ctx_open = sim_ctx_open,
    .ctx_close = sim_ctx_close,
    .mr_alloc = sim_mr_alloc,
    .mr_reg = sim_mr_reg,
    .mr_reg_dmabuf = duet__rdma_unsupported_dmabuf,
    .mr_dereg = sim_mr_dereg,
    .conn_open = sim_conn_open,
    .conn_blob = sim_conn_blob,
    .conn_connect = sim_conn_connect,
    .conn_status = sim_conn_status,
    .conn_close = sim_conn_close,
    .write = sim_write,
    .poll = sim_poll,
    .fd = sim_fd,
    .arm = sim_arm,
    .next_due_ns = sim_next_due,
};
