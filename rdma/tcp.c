/* rdma/tcp — one-sided writes emulated over TCP, same semantics as RDMA.
 *
 * Each context listens on one socket. A connection uses two streams: the one
 * this side dialled carries this side's writes (and the peer's ACKs back);
 * the one the peer dialled carries the peer's writes (and our ACKs). Wire:
 * fixed 48-byte little-endian headers (duet__tcp_hdr_t):
 *   HELLO  first frame of a dialled stream: key = the receiving connection's
 *          token, off = its id (both from its blob);
 *   WRITE  one chunk (<= 256 KiB) of a write: seq, key, off, len, imm,
 *          total; flag LAST on the final chunk. The payload follows and is
 *          received straight into the registered region after the header is
 *          checked against the region table (unknown key -> NOT_FOUND,
 *          outside the region -> RANGE; the bytes are then discarded);
 *   ACK    back on the same stream once the LAST chunk is placed: seq and
 *          the status; the writer's SEND completion carries it.
 * Urgent writes go ahead of queued bulk writes at the next chunk boundary.
 * Anything else on the wire is a protocol error that ends the connection.
 * One progress thread per context does all socket I/O (poll loop); the
 * caller's thread only queues writes and drains completions, under a mutex.
 */
#include "rdma/rdma_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define TCP_BLOB_LEN 36
#define TCP_MAX_PEND 64
#define TCP_CONNECT_MS 5000

/* ---- wire -------------------------------------------------------------- */

void duet__tcp_hdr_encode(const duet__tcp_hdr_t *h, uint8_t out[DUET__TCP_HDR])
{
    duet__put32(out, DUET__TCP_MAGIC);
    out[4] = DUET__TCP_VERSION;
    out[5] = h->type;
    out[6] = h->flags;
    out[7] = 0;
    duet__put64(out + 8, h->seq);
    duet__put64(out + 16, h->key);
    duet__put64(out + 24, h->off);
    duet__put32(out + 32, h->len);
    duet__put32(out + 36, h->imm);
    duet__put64(out + 40, h->total);
}

duet_status_t duet__tcp_hdr_decode(const uint8_t in[DUET__TCP_HDR], duet__tcp_hdr_t *h)
{
    if (duet__get32(in) != DUET__TCP_MAGIC)
        return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: frame: bad magic 0x%08x at byte 0",
                           duet__get32(in));
    if (in[4] != DUET__TCP_VERSION || in[7] != 0)
        return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: frame: version %u (byte 4)", in[4]);
    duet__tcp_hdr_t v = {.type = in[5],
                         .flags = in[6],
                         .seq = duet__get64(in + 8),
                         .key = duet__get64(in + 16),
                         .off = duet__get64(in + 24),
                         .len = duet__get32(in + 32),
                         .imm = duet__get32(in + 36),
                         .total = duet__get64(in + 40)};
    switch (v.type) {
    case DUET__TCP_HELLO:
    case DUET__TCP_ACK:
        if (v.flags || v.len || v.total)
            return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: frame type %u: non-zero flags/length",
                               v.type);
        if (v.type == DUET__TCP_ACK &&
            !((int32_t)v.imm <= 0 && (int32_t)v.imm >= (int32_t)DUET_ERR_INTERNAL))
            return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: ACK: bad status %d at byte 36",
                               (int32_t)v.imm);
        break;
    case DUET__TCP_WRITE:
        if (v.flags & ~DUET__TCP_F_LAST)
            return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: WRITE: unknown flags 0x%x (byte 6)",
                               v.flags);
        if (v.len > DUET__TCP_CHUNK)
            return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: WRITE: chunk of %u bytes exceeds %u",
                               v.len, DUET__TCP_CHUNK);
        if (v.off + v.len < v.off)
            return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: WRITE: offset+length overflows");
        if (v.flags & DUET__TCP_F_LAST) {
            /* the write started at off + len - total, which must not be < 0 */
            if (v.total < v.len || v.off + v.len < v.total)
                return duet_errorf(DUET_ERR_PROTOCOL,
                                   "rdma/tcp: WRITE: total %llu inconsistent with chunk [%llu,+%u)",
                                   (unsigned long long)v.total, (unsigned long long)v.off, v.len);
        } else if (v.len == 0 || v.total <= v.len) {
            return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: WRITE: bad non-final chunk");
        }
        break;
    default:
        return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: frame: unknown type %u (byte 5)", v.type);
    }
    *h = v;
    return DUET_OK;
}

void duet__tcp_rx_want(duet__tcp_rx_t *rx, uint8_t **ptr, size_t *max)
{
    if (!rx->in_payload) {
        *ptr = rx->hdr + rx->have;
        *max = DUET__TCP_HDR - rx->have;
    } else if (rx->dst) {
        *ptr = rx->dst + rx->have;
        *max = rx->cur.len - rx->have;
    } else {
        *ptr = rx->sink;
        *max = DUET_MIN(sizeof(rx->sink), rx->cur.len - rx->have);
    }
}

duet_status_t duet__tcp_rx_got(duet__tcp_rx_t *rx, size_t n, const duet__tcp_rx_cb_t *cb)
{
    if (!rx->in_payload) {
        rx->have += n;
        if (rx->have < DUET__TCP_HDR)
            return DUET_OK;
        rx->have = 0;
        duet_status_t st = duet__tcp_hdr_decode(rx->hdr, &rx->cur);
        if (st)
            return st;
        if (rx->cur.type == DUET__TCP_HELLO) {
            if (rx->hello_done)
                return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: second HELLO on a stream");
            rx->hello_done = true;
            return cb->frame(cb->arg, &rx->cur, DUET_OK);
        }
        if (rx->cur.type != DUET__TCP_WRITE || !rx->hello_done)
            return duet_errorf(DUET_ERR_PROTOCOL,
                               "rdma/tcp: frame type %u before HELLO or on the"
                               " wrong stream",
                               rx->cur.type);
        rx->dst = NULL;
        rx->cur_status = DUET_OK;
        if (rx->cur.len == 0)
            return cb->frame(cb->arg, &rx->cur, DUET_OK);
        rx->cur_status = cb->resolve(cb->arg, rx->cur.key, rx->cur.off, rx->cur.len, &rx->dst);
        if (rx->cur_status)
            rx->dst = NULL;
        rx->in_payload = true;
        return DUET_OK;
    }
    rx->have += n;
    if (rx->have < rx->cur.len)
        return DUET_OK;
    rx->have = 0;
    rx->in_payload = false;
    duet_status_t st = rx->cur_status;
    if (rx->cur.flags & DUET__TCP_F_LAST)
        return cb->frame(cb->arg, &rx->cur, st);
    if (st)
        return cb->frame(cb->arg, &rx->cur, st);
    return DUET_OK;
}

/* ---- provider objects -------------------------------------------------- */

typedef struct tcp_wr {
    struct tcp_wr *next;
    uint64_t seq;
    const uint8_t *src;
    uint64_t key, off;
    size_t len, sent;
    uint32_t imm;
    uint64_t wr_id;
} tcp_wr_t;

typedef struct tcp_q {
    tcp_wr_t *head, *tail;
} tcp_q_t;

typedef struct tcp_conn {
    duet_rdma_conn_t *conn;
    uint32_t id;
    uint64_t token;
    int out_fd, in_fd;
    duet_status_t dead;
    bool closing, reaped;
    /* send side (out_fd) */
    tcp_q_t urgent, bulk, infl;
    size_t n_pending;
    uint64_t next_seq;
    tcp_wr_t *cur; /* write whose chunk is on the wire */
    uint8_t cur_hdr[DUET__TCP_HDR];
    size_t cur_chunk, cur_done;
    uint8_t ack_in[DUET__TCP_HDR];
    size_t ack_have;
    /* receive side (in_fd) */
    duet__tcp_rx_t rx;
    uint64_t fail_seq[2]; /* open multi-chunk writes that already failed */
    duet_status_t fail_st[2];
    uint8_t *ack_out;
    size_t ack_len, ack_cap, ack_done;
} tcp_conn_t;

typedef struct tcp_region {
    uint64_t key;
    uint8_t *addr;
    size_t len;
} tcp_region_t;

typedef struct tcp_pend {
    int fd;
    uint8_t hdr[DUET__TCP_HDR];
    size_t have;
} tcp_pend_t;

typedef struct tcp_ctx {
    duet_rdma_ctx_t *ctx;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    pthread_t thr;
    bool stop;
    int lfd, wake, efd;
    bool armed;
    uint32_t addr;
    uint16_t port;
    duet__cq_t cq;
    tcp_conn_t **conns;
    size_t n_conns, cap_conns;
    tcp_region_t *regs;
    size_t n_regs, cap_regs;
    tcp_pend_t pend[TCP_MAX_PEND];
    size_t n_pend;
    struct pollfd *pfds;
    uint32_t *pmap;
    size_t cap_pfds;
} tcp_ctx_t;

static void q_push(tcp_q_t *q, tcp_wr_t *w)
{
    w->next = NULL;
    if (q->tail)
        q->tail->next = w;
    else
        q->head = w;
    q->tail = w;
}

static tcp_wr_t *q_pop(tcp_q_t *q)
{
    tcp_wr_t *w = q->head;
    if (w) {
        q->head = w->next;
        if (!q->head)
            q->tail = NULL;
    }
    return w;
}

static void wake_thread(tcp_ctx_t *t)
{
    uint64_t one = 1;
    if (write(t->wake, &one, sizeof(one)) < 0) {
    }
}

/* Called with t->mu held. */
static void push_cqe(tcp_ctx_t *t, const duet_rdma_cqe_t *e)
{
    if (duet__cq_push(&t->cq, e) != DUET_OK)
        DUET_LOG_E("rdma", "tcp: lost a completion (out of memory)");
    if (t->armed) {
        t->armed = false;
        uint64_t one = 1;
        if (write(t->efd, &one, sizeof(one)) < 0) {
        }
    }
}

static void complete_wr(tcp_ctx_t *t, tcp_conn_t *c, tcp_wr_t *w, duet_status_t st)
{
    if (!c->closing) {
        duet_rdma_cqe_t e = {.kind = DUET_RDMA_CQE_SEND,
                             .status = st,
                             .imm = w->imm,
                             .len = w->len,
                             .wr_id = w->wr_id,
                             .conn = c->conn,
                             .conn_user = c->conn->user,
                             .conn_id = c->id};
        push_cqe(t, &e);
    }
    c->n_pending--;
    duet_free(w);
}

/* The connection is over: close its streams, fail what is pending. */
static void conn_fail(tcp_ctx_t *t, tcp_conn_t *c, duet_status_t st, const char *why)
{
    DUET_LOG_D("rdma", "tcp[%d]: conn %u fail %s out=%d in=%d closing=%d (%s)", getpid(), c->id,
               duet_status_str(st), c->out_fd, c->in_fd, c->closing, why);
    if (!c->dead) {
        c->dead = st;
        if (!c->closing)
            DUET_LOG_I("rdma", "tcp: connection %u failed (%s): %s", c->id, duet_status_str(st),
                       why);
    }
    if (c->out_fd >= 0)
        close(c->out_fd);
    if (c->in_fd >= 0)
        close(c->in_fd);
    c->out_fd = c->in_fd = -1;
    c->cur = NULL;
    tcp_wr_t *w;
    while ((w = q_pop(&c->infl)) != NULL)
        complete_wr(t, c, w, st);
    while ((w = q_pop(&c->urgent)) != NULL)
        complete_wr(t, c, w, st);
    while ((w = q_pop(&c->bulk)) != NULL)
        complete_wr(t, c, w, st);
}

static duet_status_t rx_resolve(void *arg, uint64_t key, uint64_t off, uint32_t len, uint8_t **out)
{
    tcp_ctx_t *t = arg;
    for (size_t i = 0; i < t->n_regs; i++) {
        if (t->regs[i].key != key)
            continue;
        if (off > t->regs[i].len || len > t->regs[i].len - off)
            return DUET_ERR_RANGE;
        *out = t->regs[i].addr + off;
        return DUET_OK;
    }
    return DUET_ERR_NOT_FOUND;
}

typedef struct rx_arg {
    tcp_ctx_t *t;
    tcp_conn_t *c;
} rx_arg_t;

static duet_status_t rx_resolve_conn(void *arg, uint64_t key, uint64_t off, uint32_t len,
                                     uint8_t **out)
{
    return rx_resolve(((rx_arg_t *)arg)->t, key, off, len, out);
}

static duet_status_t rx_frame(void *arg, const duet__tcp_hdr_t *h, duet_status_t st)
{
    tcp_ctx_t *t = ((rx_arg_t *)arg)->t;
    tcp_conn_t *c = ((rx_arg_t *)arg)->c;
    if (h->type != DUET__TCP_WRITE)
        return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: unexpected frame %u", h->type);
    /* fold an earlier failed chunk of the same write into its result */
    for (int i = 0; i < 2; i++)
        if (c->fail_st[i] && c->fail_seq[i] == h->seq) {
            if (h->flags & DUET__TCP_F_LAST) {
                st = st ? st : c->fail_st[i];
                c->fail_st[i] = DUET_OK;
            }
        }
    if (!(h->flags & DUET__TCP_F_LAST)) { /* a middle chunk failed: remember */
        for (int i = 0; i < 2; i++)
            if (!c->fail_st[i] || c->fail_seq[i] == h->seq) {
                c->fail_seq[i] = h->seq;
                c->fail_st[i] = st;
                return DUET_OK;
            }
        return duet_errorf(DUET_ERR_PROTOCOL, "rdma/tcp: more than two interleaved writes");
    }
    if (st == DUET_OK) {
        duet_rdma_cqe_t e = {.kind = DUET_RDMA_CQE_RECV,
                             .imm = h->imm,
                             .len = h->total,
                             .conn = c->conn,
                             .conn_user = c->conn->user,
                             .conn_id = c->id};
        if (!c->closing)
            push_cqe(t, &e);
    }
    uint8_t ack[DUET__TCP_HDR];
    duet__tcp_hdr_t a = {.type = DUET__TCP_ACK, .seq = h->seq, .imm = (uint32_t)(int32_t)st};
    duet__tcp_hdr_encode(&a, ack);
    if (c->ack_done == c->ack_len)
        c->ack_len = c->ack_done = 0;
    if (duet_vec_reserve((void **)&c->ack_out, &c->ack_cap, c->ack_len + DUET__TCP_HDR, 1))
        return duet_errorf(DUET_ERR_NOMEM, "rdma/tcp: out of memory for an ACK");
    memcpy(c->ack_out + c->ack_len, ack, DUET__TCP_HDR);
    c->ack_len += DUET__TCP_HDR;
    return DUET_OK;
}

static void set_sockopts(int fd)
{
    int one = 1, buf = 4 << 20;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* ---- progress thread --------------------------------------------------- */

static void do_send(tcp_ctx_t *t, tcp_conn_t *c)
{
    for (;;) {
        if (!c->cur) {
            tcp_wr_t *w = c->urgent.head ? c->urgent.head : c->bulk.head;
            if (!w)
                return;
            size_t chunk = DUET_MIN(w->len - w->sent, (size_t)DUET__TCP_CHUNK);
            duet__tcp_hdr_t h = {.type = DUET__TCP_WRITE,
                                 .seq = w->seq,
                                 .key = w->key,
                                 .off = w->off + w->sent,
                                 .len = (uint32_t)chunk,
                                 .imm = w->imm,
                                 .total = w->len};
            if (w->sent + chunk == w->len)
                h.flags = DUET__TCP_F_LAST;
            duet__tcp_hdr_encode(&h, c->cur_hdr);
            c->cur = w;
            c->cur_chunk = chunk;
            c->cur_done = 0;
        }
        tcp_wr_t *w = c->cur;
        struct iovec iov[2];
        int n = 0;
        if (c->cur_done < DUET__TCP_HDR)
            iov[n++] = (struct iovec){c->cur_hdr + c->cur_done, DUET__TCP_HDR - c->cur_done};
        size_t pdone = c->cur_done > DUET__TCP_HDR ? c->cur_done - DUET__TCP_HDR : 0;
        if (c->cur_chunk > pdone)
            iov[n++] = (struct iovec){(void *)(w->src + w->sent + pdone), c->cur_chunk - pdone};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t r = sendmsg(c->out_fd, &mh, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            conn_fail(t, c, DUET_ERR_CLOSED, strerror(errno));
            return;
        }
        c->cur_done += (size_t)r;
        if (c->cur_done < DUET__TCP_HDR + c->cur_chunk)
            continue;
        w->sent += c->cur_chunk;
        c->cur = NULL;
        if (w->sent == w->len) {
            q_pop(c->urgent.head == w ? &c->urgent : &c->bulk);
            q_push(&c->infl, w);
        }
    }
}

static void do_ack_in(tcp_ctx_t *t, tcp_conn_t *c)
{
    for (int iter = 0; iter < 256 && c->out_fd >= 0; iter++) {
        ssize_t r = recv(c->out_fd, c->ack_in + c->ack_have, DUET__TCP_HDR - c->ack_have, 0);
        if (r == 0) {
            conn_fail(t, c, DUET_ERR_CLOSED, "peer closed the stream (ack side)");
            return;
        }
        if (r < 0) {
            if (errno != EAGAIN && errno != EINTR)
                conn_fail(t, c, DUET_ERR_CLOSED, strerror(errno));
            return;
        }
        c->ack_have += (size_t)r;
        if (c->ack_have < DUET__TCP_HDR)
            continue;
        c->ack_have = 0;
        duet__tcp_hdr_t h;
        if (duet__tcp_hdr_decode(c->ack_in, &h) || h.type != DUET__TCP_ACK || !c->infl.head ||
            c->infl.head->seq != h.seq) {
            conn_fail(t, c, DUET_ERR_PROTOCOL, "bad or unexpected ACK");
            return;
        }
        complete_wr(t, c, q_pop(&c->infl), (duet_status_t)(int32_t)h.imm);
    }
}

static void do_rx(tcp_ctx_t *t, tcp_conn_t *c)
{
    rx_arg_t arg = {t, c};
    duet__tcp_rx_cb_t cb = {rx_resolve_conn, rx_frame, &arg};
    for (int iter = 0; iter < 256 && c->in_fd >= 0; iter++) {
        uint8_t *p;
        size_t max;
        duet__tcp_rx_want(&c->rx, &p, &max);
        ssize_t r = recv(c->in_fd, p, max, 0);
        if (r == 0) {
            conn_fail(t, c, DUET_ERR_CLOSED, "peer closed the stream");
            return;
        }
        if (r < 0) {
            if (errno != EAGAIN && errno != EINTR)
                conn_fail(t, c, DUET_ERR_CLOSED, strerror(errno));
            return;
        }
        duet_status_t st = duet__tcp_rx_got(&c->rx, (size_t)r, &cb);
        if (st) {
            conn_fail(t, c, st, duet_error());
            return;
        }
    }
}

static void do_ack_out(tcp_ctx_t *t, tcp_conn_t *c)
{
    while (c->in_fd >= 0 && c->ack_done < c->ack_len) {
        ssize_t r =
            send(c->in_fd, c->ack_out + c->ack_done, c->ack_len - c->ack_done, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno != EAGAIN && errno != EINTR)
                conn_fail(t, c, DUET_ERR_CLOSED, strerror(errno));
            return;
        }
        c->ack_done += (size_t)r;
    }
}

/* An accepted stream sent its HELLO: attach it to its connection. */
static void pend_hello(tcp_ctx_t *t, tcp_pend_t *p)
{
    duet__tcp_hdr_t h;
    tcp_conn_t *c = NULL;
    if (duet__tcp_hdr_decode(p->hdr, &h) == DUET_OK && h.type == DUET__TCP_HELLO &&
        h.off < t->n_conns)
        c = t->conns[h.off];
    if (!c || c->token != h.key || c->in_fd >= 0 || c->dead || c->closing) {
        DUET_LOG_W("rdma", "tcp: refused a stream with a bad HELLO");
        close(p->fd);
        return;
    }
    c->in_fd = p->fd;
    c->rx.hello_done = true;
    DUET_LOG_D("rdma", "tcp[%d]: conn %u in=%d", getpid(), c->id, c->in_fd);
}

static size_t build_pollfds(tcp_ctx_t *t)
{
    size_t need = 2 + t->n_pend + 2 * t->n_conns;
    if (need > t->cap_pfds) {
        duet_free(t->pfds);
        duet_free(t->pmap);
        t->pfds = duet_calloc(need, sizeof(*t->pfds));
        t->pmap = duet_calloc(need, sizeof(*t->pmap));
        t->cap_pfds = t->pfds && t->pmap ? need : 0;
        if (!t->cap_pfds)
            return 0;
    }
    size_t n = 0;
    t->pfds[n] = (struct pollfd){t->wake, POLLIN, 0};
    t->pmap[n++] = 0;
    t->pfds[n] = (struct pollfd){t->lfd, POLLIN, 0};
    t->pmap[n++] = 0;
    for (size_t i = 0; i < t->n_pend; i++) {
        t->pfds[n] = (struct pollfd){t->pend[i].fd, POLLIN, 0};
        t->pmap[n++] = (uint32_t)i;
    }
    for (size_t i = 0; i < t->n_conns; i++) {
        tcp_conn_t *c = t->conns[i];
        if (!c)
            continue;
        if (c->out_fd >= 0) {
            short ev = POLLIN;
            if (c->cur || c->urgent.head || c->bulk.head)
                ev |= POLLOUT;
            t->pfds[n] = (struct pollfd){c->out_fd, ev, 0};
            t->pmap[n++] = (uint32_t)(i << 1);
        }
        if (c->in_fd >= 0) {
            short ev = POLLIN;
            if (c->ack_done < c->ack_len)
                ev |= POLLOUT;
            t->pfds[n] = (struct pollfd){c->in_fd, ev, 0};
            t->pmap[n++] = (uint32_t)(i << 1) | 1;
        }
    }
    return n;
}

static void *tcp_thread(void *arg)
{
    tcp_ctx_t *t = arg;
    pthread_mutex_lock(&t->mu);
    while (!t->stop) {
        /* reap connections the user closed */
        for (size_t i = 0; i < t->n_conns; i++) {
            tcp_conn_t *c = t->conns[i];
            if (c && c->closing && !c->reaped) {
                conn_fail(t, c, DUET_ERR_CANCELED, "closed");
                c->reaped = true;
                t->conns[i] = NULL;
                pthread_cond_broadcast(&t->cond);
            }
        }
        size_t n = build_pollfds(t);
        size_t n_pend = t->n_pend;
        pthread_mutex_unlock(&t->mu);
        int rc = poll(t->pfds, n, -1);
        pthread_mutex_lock(&t->mu);
        if (rc < 0)
            continue;
        if (t->pfds[0].revents) {
            uint64_t v;
            if (read(t->wake, &v, sizeof(v)) < 0) {
            }
        }
        /* streams: entries after the pending HELLOs, in conn order */
        for (size_t k = 2 + n_pend; k < n; k++) {
            short re = t->pfds[k].revents;
            if (!re)
                continue;
            tcp_conn_t *c = t->conns[t->pmap[k] >> 1];
            if (!c)
                continue;
            if (t->pmap[k] & 1) {
                if (c->in_fd != t->pfds[k].fd)
                    continue;
                if (re & (POLLIN | POLLHUP | POLLERR))
                    do_rx(t, c);
                do_ack_out(t, c);
            } else {
                if (c->out_fd != t->pfds[k].fd)
                    continue;
                if (re & (POLLIN | POLLHUP | POLLERR))
                    do_ack_in(t, c);
                if (c->out_fd >= 0)
                    do_send(t, c);
            }
        }
        /* pending HELLOs (walk backwards: entries get removed) */
        for (size_t k = 2 + n_pend; k-- > 2;) {
            if (!t->pfds[k].revents)
                continue;
            tcp_pend_t *p = &t->pend[t->pmap[k]];
            ssize_t r = recv(p->fd, p->hdr + p->have, DUET__TCP_HDR - p->have, 0);
            bool drop = r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR);
            if (r > 0 && (p->have += (size_t)r) == DUET__TCP_HDR) {
                pend_hello(t, p);
                drop = true;
            } else if (drop) {
                close(p->fd);
            }
            if (drop)
                t->pend[t->pmap[k]] = t->pend[--t->n_pend];
        }
        if (t->pfds[1].revents) {
            int fd;
            while ((fd = accept4(t->lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                if (t->n_pend == TCP_MAX_PEND) {
                    close(fd);
                    continue;
                }
                set_sockopts(fd);
                t->pend[t->n_pend++] = (tcp_pend_t){.fd = fd};
            }
        }
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* ---- ops --------------------------------------------------------------- */

static duet_status_t tcp_ctx_open(duet_rdma_ctx_t *ctx)
{
    tcp_ctx_t *t = duet_calloc(1, sizeof(*t));
    if (!t)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/tcp: out of memory");
    duet_status_t st;
    t->ctx = ctx;
    t->wake = t->efd = t->lfd = -1;
    const char *host = ctx->params.device ? ctx->params.device : "127.0.0.1";
    struct in_addr ia;
    if (inet_pton(AF_INET, host, &ia) != 1) {
        st = duet_errorf(DUET_ERR_INVALID, "rdma/tcp: '%s' is not an IPv4 address", host);
        goto err_free;
    }
    t->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    t->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (t->wake < 0 || t->efd < 0 || t->lfd < 0) {
        st = duet_errorf(DUET_ERR_IO, "rdma/tcp: socket/eventfd: %s", strerror(errno));
        goto err_close;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr = ia, .sin_port = 0};
    socklen_t sl = sizeof(sa);
    if (bind(t->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(t->lfd, 128) != 0 ||
        getsockname(t->lfd, (struct sockaddr *)&sa, &sl) != 0) {
        st = duet_errorf(DUET_ERR_IO, "rdma/tcp: listen on %s: %s", host, strerror(errno));
        goto err_close;
    }
    t->addr = ntohl(sa.sin_addr.s_addr);
    t->port = ntohs(sa.sin_port);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cond, NULL);
    if (pthread_create(&t->thr, NULL, tcp_thread, t) != 0) {
        st = duet_errorf(DUET_ERR_IO, "rdma/tcp: cannot start the progress thread");
        goto err_destroy;
    }
    ctx->priv = t;
    return DUET_OK;

err_destroy:
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->mu);
err_close:
    if (t->lfd >= 0)
        close(t->lfd);
    if (t->efd >= 0)
        close(t->efd);
    if (t->wake >= 0)
        close(t->wake);
err_free:
    duet_free(t);
    return st;
}

static void tcp_ctx_close(duet_rdma_ctx_t *ctx)
{
    tcp_ctx_t *t = ctx->priv;
    pthread_mutex_lock(&t->mu);
    t->stop = true;
    wake_thread(t);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thr, NULL);
    for (size_t i = 0; i < t->n_pend; i++)
        close(t->pend[i].fd);
    close(t->lfd);
    close(t->efd);
    close(t->wake);
    duet__cq_cleanup(&t->cq);
    duet_free(t->conns);
    duet_free(t->regs);
    duet_free(t->pfds);
    duet_free(t->pmap);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->mu);
    duet_free(t);
}

static duet_status_t add_region(tcp_ctx_t *t, duet_rdma_mr_t *mr)
{
    if (!(mr->access & DUET_RDMA_ACCESS_REMOTE_WRITE))
        return DUET_OK;
    pthread_mutex_lock(&t->mu);
    duet_status_t st =
        duet_vec_reserve((void **)&t->regs, &t->cap_regs, t->n_regs + 1, sizeof(*t->regs));
    if (st == DUET_OK)
        t->regs[t->n_regs++] = (tcp_region_t){mr->rkey.key, mr->addr, mr->len};
    pthread_mutex_unlock(&t->mu);
    return st ? duet_errorf(st, "rdma/tcp: out of memory") : DUET_OK;
}

static duet_status_t tcp_mr_alloc(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    if (mr->access & DUET_RDMA_MEM_DEVICE)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "rdma/tcp: GPU memory is not supported");
    mr->addr = duet_aligned_alloc(64, mr->len);
    if (!mr->addr)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/tcp: cannot allocate %zu bytes", mr->len);
    memset(mr->addr, 0, mr->len);
    mr->priv = mr->addr;
    duet_status_t st = add_region(ctx->priv, mr);
    if (st)
        duet_free(mr->addr);
    return st;
}

static duet_status_t tcp_mr_reg(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    if (mr->access & DUET_RDMA_MEM_DEVICE)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "rdma/tcp: GPU memory is not supported");
    mr->priv = NULL;
    return add_region(ctx->priv, mr);
}

static void tcp_mr_dereg(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    tcp_ctx_t *t = ctx->priv;
    pthread_mutex_lock(&t->mu); /* no stream is placing bytes into it past this */
    for (size_t i = 0; i < t->n_regs; i++)
        if (t->regs[i].key == mr->rkey.key) {
            t->regs[i] = t->regs[--t->n_regs];
            break;
        }
    /* A payload already being received into it goes to the sink instead. */
    for (size_t i = 0; i < t->n_conns; i++) {
        tcp_conn_t *c = t->conns[i];
        if (c && c->rx.in_payload && c->rx.dst && c->rx.dst >= (uint8_t *)mr->addr &&
            c->rx.dst < (uint8_t *)mr->addr + mr->len) {
            c->rx.dst = NULL;
            c->rx.cur_status = DUET_ERR_NOT_FOUND;
        }
    }
    pthread_mutex_unlock(&t->mu);
    duet_free(mr->priv);
}

static duet_status_t tcp_conn_open(duet_rdma_ctx_t *ctx, duet_rdma_conn_t *conn)
{
    tcp_ctx_t *t = ctx->priv;
    tcp_conn_t *c = duet_calloc(1, sizeof(*c));
    if (!c)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/tcp: out of memory");
    c->conn = conn;
    c->id = conn->id;
    c->out_fd = c->in_fd = -1;
    if (getrandom(&c->token, sizeof(c->token), 0) != sizeof(c->token))
        c->token = duet_now_ns() ^ ((uint64_t)conn->id << 48);
    pthread_mutex_lock(&t->mu);
    duet_status_t st = DUET_OK;
    if (conn->id >= t->n_conns) {
        st = duet_vec_reserve((void **)&t->conns, &t->cap_conns, conn->id + 1, sizeof(*t->conns));
        if (st == DUET_OK) {
            while (t->n_conns <= conn->id)
                t->conns[t->n_conns++] = NULL;
        }
    }
    if (st == DUET_OK && t->conns[conn->id])
        st = DUET_ERR_INTERNAL; /* the previous user of this id is still being reaped */
    if (st == DUET_OK)
        t->conns[conn->id] = c;
    pthread_mutex_unlock(&t->mu);
    if (st) {
        duet_free(c);
        return duet_errorf(st, "rdma/tcp: cannot add connection %u", conn->id);
    }
    conn->priv = c;
    return DUET_OK;
}

static duet_status_t tcp_conn_blob(const duet_rdma_conn_t *conn, uint8_t *buf, size_t *len)
{
    tcp_ctx_t *t = conn->ctx->priv;
    tcp_conn_t *c = conn->priv;
    duet__blob_header(buf, DUET__PROV_TCP, TCP_BLOB_LEN);
    duet__put32(buf + 8, t->addr);
    duet__put16(buf + 12, t->port);
    duet__put16(buf + 14, 0);
    duet__put64(buf + 16, c->token);
    duet__put32(buf + 24, c->id);
    memset(buf + 28, 0, 8);
    *len = TCP_BLOB_LEN;
    return DUET_OK;
}

duet_status_t duet__tcp_blob_decode(const void *blob, size_t len, uint32_t *addr, uint16_t *port,
                                    uint64_t *token, uint32_t *conn_id)
{
    duet_status_t st = duet__blob_check(blob, len, DUET__PROV_TCP, TCP_BLOB_LEN, "tcp");
    if (st)
        return st;
    const uint8_t *p = blob;
    if (duet__get16(p + 14) || duet__get64(p + 28))
        return duet_errorf(DUET_ERR_INVALID, "rdma/tcp: blob: reserved bytes are not 0");
    *addr = duet__get32(p + 8);
    *port = duet__get16(p + 12);
    if (*port == 0 || *addr == 0)
        return duet_errorf(DUET_ERR_INVALID, "rdma/tcp: blob: address or port is 0 (byte 8)");
    *token = duet__get64(p + 16);
    *conn_id = duet__get32(p + 24);
    return DUET_OK;
}

static duet_status_t tcp_conn_connect(duet_rdma_conn_t *conn, const void *blob, size_t len)
{
    tcp_ctx_t *t = conn->ctx->priv;
    tcp_conn_t *c = conn->priv;
    uint32_t addr, peer_conn;
    uint16_t port;
    uint64_t token;
    duet_status_t st = duet__tcp_blob_decode(blob, len, &addr, &port, &token, &peer_conn);
    if (st)
        return st;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return duet_errorf(DUET_ERR_IO, "rdma/tcp: socket: %s", strerror(errno));
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(addr)};
    char host[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa.sin_addr, host, sizeof(host));
    /* Non-blocking connect bounded by TCP_CONNECT_MS: an unreachable peer
     * must not hang the caller for the kernel's SYN timeout. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa)), err = rc ? errno : 0;
    if (rc != 0 && err == EINPROGRESS) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        socklen_t el = sizeof(err);
        rc = poll(&pfd, 1, TCP_CONNECT_MS);
        if (rc == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0)
            rc = 0;
        else if (rc == 0)
            err = ETIMEDOUT;
        else
            rc = -1;
    }
    if (rc != 0) {
        st = duet_errorf(DUET_ERR_CLOSED, "rdma/tcp: connect to %s:%u: %s", host, port,
                         strerror(err));
        close(fd);
        return st;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    uint8_t hello[DUET__TCP_HDR];
    duet__tcp_hdr_t h = {.type = DUET__TCP_HELLO, .key = token, .off = peer_conn};
    duet__tcp_hdr_encode(&h, hello);
    if (send(fd, hello, sizeof(hello), MSG_NOSIGNAL) != (ssize_t)sizeof(hello)) {
        st = duet_errorf(DUET_ERR_CLOSED, "rdma/tcp: HELLO to %s:%u: %s", host, port,
                         strerror(errno));
        close(fd);
        return st;
    }
    set_sockopts(fd);
    pthread_mutex_lock(&t->mu);
    c->out_fd = fd;
    DUET_LOG_D("rdma", "tcp[%d]: conn %u out=%d -> %s:%u conn %u", getpid(), c->id, fd, host, port,
               peer_conn);
    wake_thread(t);
    pthread_mutex_unlock(&t->mu);
    return DUET_OK;
}

static duet_status_t tcp_conn_status(const duet_rdma_conn_t *conn)
{
    tcp_ctx_t *t = conn->ctx->priv;
    tcp_conn_t *c = conn->priv;
    pthread_mutex_lock(&t->mu);
    duet_status_t st = c->dead;
    pthread_mutex_unlock(&t->mu);
    return st;
}

static void tcp_conn_close(duet_rdma_conn_t *conn)
{
    tcp_ctx_t *t = conn->ctx->priv;
    tcp_conn_t *c = conn->priv;
    pthread_mutex_lock(&t->mu);
    c->closing = true;
    wake_thread(t);
    while (!c->reaped && !t->stop)
        pthread_cond_wait(&t->cond, &t->mu);
    if (!c->reaped) { /* the thread is gone: reap here */
        conn_fail(t, c, DUET_ERR_CANCELED, "closed");
        t->conns[c->id] = NULL;
    }
    pthread_mutex_unlock(&t->mu);
    duet_free(c->ack_out);
    duet_free(c);
}

static duet_status_t tcp_write(duet_rdma_conn_t *conn, const duet_rdma_mr_t *src, size_t src_off,
                               const duet_rdma_rkey_t *dst, uint64_t dst_off, size_t len,
                               uint32_t imm, unsigned flags, uint64_t wr_id)
{
    tcp_ctx_t *t = conn->ctx->priv;
    tcp_conn_t *c = conn->priv;
    tcp_wr_t *w = duet_calloc(1, sizeof(*w));
    if (!w)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/tcp: out of memory");
    w->src = len ? (const uint8_t *)src->addr + src_off : NULL;
    w->key = len ? dst->key : 0;
    w->off = len ? dst_off : 0;
    w->len = len;
    w->imm = imm;
    w->wr_id = wr_id;
    duet_status_t st = DUET_OK;
    pthread_mutex_lock(&t->mu);
    if (c->dead)
        st = duet_errorf(c->dead, "rdma/tcp: connection %u is down", conn->id);
    else if (c->n_pending >= conn->ctx->params.max_write)
        st = duet_errorf(DUET_ERR_AGAIN, "rdma/tcp: %zu writes in flight on connection %u",
                         c->n_pending, conn->id);
    if (st == DUET_OK) {
        w->seq = c->next_seq++;
        q_push((flags & DUET_RDMA_WRITE_URGENT) ? &c->urgent : &c->bulk, w);
        c->n_pending++;
        wake_thread(t);
    }
    pthread_mutex_unlock(&t->mu);
    if (st)
        duet_free(w);
    return st;
}

static int tcp_poll(duet_rdma_ctx_t *ctx, duet_rdma_cqe_t *out, int max)
{
    tcp_ctx_t *t = ctx->priv;
    pthread_mutex_lock(&t->mu);
    int n = duet__cq_pop(&t->cq, out, max);
    pthread_mutex_unlock(&t->mu);
    return n;
}

static int tcp_fd(const duet_rdma_ctx_t *ctx)
{
    return ((const tcp_ctx_t *)ctx->priv)->efd;
}

static duet_status_t tcp_arm(duet_rdma_ctx_t *ctx)
{
    tcp_ctx_t *t = ctx->priv;
    uint64_t v;
    pthread_mutex_lock(&t->mu);
    if (read(t->efd, &v, sizeof(v)) < 0) {
    }
    t->armed = true;
    if (t->cq.count) {
        t->armed = false;
        uint64_t one = 1;
        if (write(t->efd, &one, sizeof(one)) < 0) {
        }
    }
    pthread_mutex_unlock(&t->mu);
    return DUET_OK;
}

const duet_rdma_ops_t duet__rdma_tcp_ops = {
    .name = "tcp",
    .ctx_open = tcp_ctx_open,
    .ctx_close = tcp_ctx_close,
    .mr_alloc = tcp_mr_alloc,
    .mr_reg = tcp_mr_reg,
    .mr_reg_dmabuf = duet__rdma_unsupported_dmabuf,
    .mr_dereg = tcp_mr_dereg,
    .conn_open = tcp_conn_open,
    .conn_blob = tcp_conn_blob,
    .conn_connect = tcp_conn_connect,
    .conn_status = tcp_conn_status,
    .conn_close = tcp_conn_close,
    .write = tcp_write,
    .poll = tcp_poll,
    .fd = tcp_fd,
    .arm = tcp_arm,
    .next_due_ns = NULL,
};
