/* rdma/verbs_emu — an in-process emulated RDMA device behind a real
 * struct ibv_context, so the verbs provider runs unmodified in tests.
 *
 * The data path is reached the way rdma-core's inline wrappers reach a
 * provider: ibv_post_send(qp) calls qp->context->ops.post_send, and so on
 * for post_recv, poll_cq and req_notify_cq. The control path is the
 * duet__verbs_emu table. What it checks, as an RC HCA would:
 *  - QP state machine RESET -> INIT -> RTR -> RTS (-> ERR), with the
 *    attribute masks each transition requires; posting sends outside RTS
 *    fails with EINVAL, receives in RESET likewise.
 *  - local keys and bounds of every SGE (IBV_WC_LOC_PROT_ERR);
 *  - the responder: a QP with that number on the device with that LID/GID,
 *    in RTR/RTS, paired back with us (else IBV_WC_RETRY_EXC_ERR);
 *  - remote key, REMOTE_WRITE access, same PD, bounds (IBV_WC_REM_ACCESS_ERR);
 *  - a posted receive for the immediate (else IBV_WC_RNR_RETRY_EXC_ERR).
 * A failed work request moves the QP to ERR: later and still-posted work is
 * flushed with IBV_WC_WR_FLUSH_ERR. Delivery is a memcpy at post time; the
 * completion channel is an eventfd. One mutex guards the whole fabric.
 */
#include "rdma/verbs_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define EMU_MAX_QP 4096
#define EMU_MAX_DEV 256
#define EMU_MAX_WR 16384

typedef struct emu_dev {
    struct ibv_context ctx; /* first: ibv_context* <-> emu_dev* */
    struct ibv_device dev;
    uint16_t lid;
    union ibv_gid gid;
    bool dead;
} emu_dev_t;

typedef struct emu_mr {
    struct ibv_mr mr;
    int access;
    struct emu_mr *next;
} emu_mr_t;

typedef struct emu_wc {
    struct ibv_wc wc;
    bool is_send;
} emu_wc_t;

typedef struct emu_cq {
    struct ibv_cq cq;
    emu_wc_t *q;
    int cap, head, count;
    bool armed, overrun;
} emu_cq_t;

typedef struct emu_ch {
    struct ibv_comp_channel ch;
    struct ibv_cq *last;
} emu_ch_t;

typedef struct emu_qp {
    struct ibv_qp qp;
    struct ibv_qp_cap cap;
    int access;
    uint8_t port;
    uint32_t dest_qpn;
    struct ibv_ah_attr ah;
    uint64_t *rq;
    uint32_t rq_head, rq_count;
    uint32_t sq_out; /* send work requests not yet polled */
} emu_qp_t;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static emu_dev_t *g_devs[EMU_MAX_DEV];
static emu_qp_t *g_qps[EMU_MAX_QP]; /* by qp_num */
static emu_mr_t *g_mrs;
static uint32_t g_next_key = 0x1000;
static uint32_t g_next_qpn = 1;

static emu_dev_t *dev_of(struct ibv_context *ctx)
{
    return (emu_dev_t *)ctx;
}

/* Called with g_mu held. */
static void push_wc(struct ibv_cq *cq_, const struct ibv_wc *wc, bool is_send)
{
    emu_cq_t *cq = (emu_cq_t *)cq_;
    if (cq->count == cq->cap) {
        cq->overrun = true; /* a real HCA raises IBV_EVENT_CQ_ERR */
        return;
    }
    cq->q[(cq->head + cq->count) % cq->cap] = (emu_wc_t){*wc, is_send};
    cq->count++;
    if (cq->armed && cq->cq.channel) {
        cq->armed = false;
        ((emu_ch_t *)cq->cq.channel)->last = cq_;
        uint64_t one = 1;
        if (write(cq->cq.channel->fd, &one, sizeof(one)) < 0) {
        }
    }
}

static void flush_rq(emu_qp_t *qp)
{
    while (qp->rq_count) {
        struct ibv_wc wc = {.wr_id = qp->rq[qp->rq_head],
                            .status = IBV_WC_WR_FLUSH_ERR,
                            .opcode = IBV_WC_RECV,
                            .qp_num = qp->qp.qp_num};
        qp->rq_head = (qp->rq_head + 1) % qp->cap.max_recv_wr;
        qp->rq_count--;
        push_wc(qp->qp.recv_cq, &wc, false);
    }
}

static void to_error(emu_qp_t *qp)
{
    qp->qp.state = IBV_QPS_ERR;
    flush_rq(qp);
}

static emu_mr_t *mr_by_lkey(struct ibv_pd *pd, uint32_t lkey)
{
    for (emu_mr_t *m = g_mrs; m; m = m->next)
        if (m->mr.lkey == lkey && m->mr.pd == pd)
            return m;
    return NULL;
}

static emu_mr_t *mr_by_rkey(uint32_t rkey)
{
    for (emu_mr_t *m = g_mrs; m; m = m->next)
        if (m->mr.rkey == rkey)
            return m;
    return NULL;
}

static bool inside(const struct ibv_mr *mr, uint64_t addr, uint64_t len)
{
    uint64_t base = (uint64_t)(uintptr_t)mr->addr;
    return addr >= base && len <= mr->length && addr - base <= mr->length - len;
}

/* The responder QP this requester is paired with, or NULL if unreachable. */
static emu_qp_t *responder(emu_qp_t *qp)
{
    if (qp->dest_qpn >= EMU_MAX_QP)
        return NULL;
    emu_qp_t *d = g_qps[qp->dest_qpn];
    if (!d)
        return NULL;
    emu_dev_t *dd = dev_of(d->qp.context);
    if (dd->dead)
        return NULL;
    if (qp->ah.is_global) {
        if (memcmp(qp->ah.grh.dgid.raw, dd->gid.raw, 16) != 0)
            return NULL;
    } else if (qp->ah.dlid != dd->lid) {
        return NULL;
    }
    if (d->qp.state != IBV_QPS_RTR && d->qp.state != IBV_QPS_RTS)
        return NULL;
    if (d->dest_qpn != qp->qp.qp_num)
        return NULL;
    return d;
}

static enum ibv_wc_status execute(emu_qp_t *qp, struct ibv_send_wr *wr, uint32_t *len_out)
{
    uint64_t len = 0;
    for (int i = 0; i < wr->num_sge; i++) {
        emu_mr_t *m = mr_by_lkey(qp->qp.pd, wr->sg_list[i].lkey);
        if (!m || !inside(&m->mr, wr->sg_list[i].addr, wr->sg_list[i].length))
            return IBV_WC_LOC_PROT_ERR;
        len += wr->sg_list[i].length;
    }
    if (len > 0x80000000ull)
        return IBV_WC_LOC_LEN_ERR;
    emu_qp_t *d = responder(qp);
    if (!d)
        return IBV_WC_RETRY_EXC_ERR;
    uint8_t *dst = NULL;
    if (len) {
        emu_mr_t *rm = mr_by_rkey(wr->wr.rdma.rkey);
        if (!rm || rm->mr.pd != d->qp.pd || !(rm->access & IBV_ACCESS_REMOTE_WRITE) ||
            !(d->access & IBV_ACCESS_REMOTE_WRITE) ||
            !inside(&rm->mr, wr->wr.rdma.remote_addr, len))
            return IBV_WC_REM_ACCESS_ERR;
        dst = (uint8_t *)(uintptr_t)wr->wr.rdma.remote_addr;
    }
    if (wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM && d->rq_count == 0)
        return IBV_WC_RNR_RETRY_EXC_ERR;
    for (int i = 0; i < wr->num_sge; i++) {
        memcpy(dst, (const void *)(uintptr_t)wr->sg_list[i].addr, wr->sg_list[i].length);
        dst += wr->sg_list[i].length;
    }
    if (wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
        struct ibv_wc rwc = {.wr_id = d->rq[d->rq_head],
                             .status = IBV_WC_SUCCESS,
                             .opcode = IBV_WC_RECV_RDMA_WITH_IMM,
                             .byte_len = (uint32_t)len,
                             .imm_data = wr->imm_data,
                             .qp_num = d->qp.qp_num,
                             .src_qp = qp->qp.qp_num,
                             .wc_flags = IBV_WC_WITH_IMM};
        d->rq_head = (d->rq_head + 1) % d->cap.max_recv_wr;
        d->rq_count--;
        push_wc(d->qp.recv_cq, &rwc, false);
    }
    *len_out = (uint32_t)len;
    return IBV_WC_SUCCESS;
}

static int emu_post_send(struct ibv_qp *qp_, struct ibv_send_wr *wr, struct ibv_send_wr **bad)
{
    emu_qp_t *qp = (emu_qp_t *)qp_;
    int rc = 0;
    pthread_mutex_lock(&g_mu);
    for (; wr; wr = wr->next) {
        if (qp->qp.state != IBV_QPS_RTS && qp->qp.state != IBV_QPS_ERR) {
            rc = EINVAL;
            break;
        }
        if ((wr->opcode != IBV_WR_RDMA_WRITE && wr->opcode != IBV_WR_RDMA_WRITE_WITH_IMM) ||
            wr->num_sge < 0 || (uint32_t)wr->num_sge > qp->cap.max_send_sge) {
            rc = EINVAL;
            break;
        }
        if (qp->sq_out >= qp->cap.max_send_wr) {
            rc = ENOMEM;
            break;
        }
        struct ibv_wc wc = {
            .wr_id = wr->wr_id, .opcode = IBV_WC_RDMA_WRITE, .qp_num = qp->qp.qp_num};
        if (qp->qp.state == IBV_QPS_ERR) {
            wc.status = IBV_WC_WR_FLUSH_ERR;
        } else {
            uint32_t len = 0;
            wc.status = execute(qp, wr, &len);
            /* byte_len of a send completion is undefined on hardware: poison it */
            wc.byte_len = 0xdeadbeef;
            if (wc.status != IBV_WC_SUCCESS)
                to_error(qp);
        }
        if (wc.status != IBV_WC_SUCCESS || (wr->send_flags & IBV_SEND_SIGNALED)) {
            qp->sq_out++;
            push_wc(qp->qp.send_cq, &wc, true);
        }
    }
    if (rc && bad)
        *bad = wr;
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static int emu_post_recv(struct ibv_qp *qp_, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
    emu_qp_t *qp = (emu_qp_t *)qp_;
    int rc = 0;
    pthread_mutex_lock(&g_mu);
    for (; wr; wr = wr->next) {
        if (qp->qp.state == IBV_QPS_RESET || wr->num_sge < 0 ||
            (uint32_t)wr->num_sge > qp->cap.max_recv_sge) {
            rc = EINVAL;
            break;
        }
        if (qp->rq_count == qp->cap.max_recv_wr) {
            rc = ENOMEM;
            break;
        }
        qp->rq[(qp->rq_head + qp->rq_count) % qp->cap.max_recv_wr] = wr->wr_id;
        qp->rq_count++;
        if (qp->qp.state == IBV_QPS_ERR)
            flush_rq(qp);
    }
    if (rc && bad)
        *bad = wr;
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static int emu_poll_cq(struct ibv_cq *cq_, int n, struct ibv_wc *wc)
{
    emu_cq_t *cq = (emu_cq_t *)cq_;
    int got = 0;
    pthread_mutex_lock(&g_mu);
    if (cq->overrun) {
        pthread_mutex_unlock(&g_mu);
        return -1;
    }
    while (got < n && cq->count) {
        emu_wc_t *e = &cq->q[cq->head];
        wc[got++] = e->wc;
        if (e->is_send && e->wc.qp_num < EMU_MAX_QP && g_qps[e->wc.qp_num])
            g_qps[e->wc.qp_num]->sq_out--;
        cq->head = (cq->head + 1) % cq->cap;
        cq->count--;
    }
    pthread_mutex_unlock(&g_mu);
    return got;
}

static int emu_req_notify_cq(struct ibv_cq *cq_, int solicited_only)
{
    emu_cq_t *cq = (emu_cq_t *)cq_;
    pthread_mutex_lock(&g_mu);
    cq->armed = true;
    pthread_mutex_unlock(&g_mu);
    return 0;
}

/* ---- control path ------------------------------------------------------ */

static struct ibv_context *emu_open(const char *want, uint8_t *port, struct ibv_port_attr *attr)
{
    emu_dev_t *d = duet_calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    pthread_mutex_lock(&g_mu);
    int slot = -1;
    for (int i = 0; i < EMU_MAX_DEV; i++)
        if (!g_devs[i]) {
            slot = i;
            break;
        }
    if (slot < 0) {
        pthread_mutex_unlock(&g_mu);
        duet_free(d);
        errno = ENOMEM;
        return NULL;
    }
    static uint16_t next_lid = 1;
    d->lid = next_lid++;
    if (next_lid == 0xc000)
        next_lid = 1;
    d->gid.raw[0] = 0xfe;
    d->gid.raw[1] = 0x80;
    d->gid.raw[14] = (uint8_t)(d->lid >> 8);
    d->gid.raw[15] = (uint8_t)d->lid;
    d->gid.raw[8] = 0x02; /* a non-zero interface id */
    g_devs[slot] = d;
    pthread_mutex_unlock(&g_mu);
    snprintf(d->dev.name, sizeof(d->dev.name), "emu%d", slot);
    d->dev.node_type = IBV_NODE_CA;
    d->dev.transport_type = IBV_TRANSPORT_IB;
    d->ctx.device = &d->dev;
    d->ctx.cmd_fd = d->ctx.async_fd = -1;
    d->ctx.num_comp_vectors = 1;
    d->ctx.ops.post_send = emu_post_send;
    d->ctx.ops.post_recv = emu_post_recv;
    d->ctx.ops.poll_cq = emu_poll_cq;
    d->ctx.ops.req_notify_cq = emu_req_notify_cq;
    pthread_mutex_init(&d->ctx.mutex, NULL);
    *port = 1;
    memset(attr, 0, sizeof(*attr));
    attr->state = IBV_PORT_ACTIVE;
    attr->max_mtu = attr->active_mtu = IBV_MTU_4096;
    attr->gid_tbl_len = 1;
    attr->lid = d->lid;
    attr->link_layer = IBV_LINK_LAYER_INFINIBAND;
    attr->max_msg_sz = 0x80000000u;
    return &d->ctx;
}

static int emu_close(struct ibv_context *ctx)
{
    emu_dev_t *d = dev_of(ctx);
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < EMU_MAX_DEV; i++)
        if (g_devs[i] == d)
            g_devs[i] = NULL;
    pthread_mutex_unlock(&g_mu);
    pthread_mutex_destroy(&d->ctx.mutex);
    duet_free(d);
    return 0;
}

void duet__verbs_emu_kill(struct ibv_context *ctx)
{
    emu_dev_t *d = dev_of(ctx);
    pthread_mutex_lock(&g_mu);
    d->dead = true;
    for (int i = 0; i < EMU_MAX_QP; i++)
        if (g_qps[i] && g_qps[i]->qp.context == ctx)
            to_error(g_qps[i]);
    pthread_mutex_unlock(&g_mu);
}

static int emu_query_gid(struct ibv_context *ctx, uint8_t port, int index, union ibv_gid *gid)
{
    if (port != 1 || index != 0)
        return EINVAL;
    *gid = dev_of(ctx)->gid;
    return 0;
}

static struct ibv_pd *emu_alloc_pd(struct ibv_context *ctx)
{
    struct ibv_pd *pd = duet_calloc(1, sizeof(*pd));
    if (pd)
        pd->context = ctx;
    return pd;
}

static int emu_dealloc_pd(struct ibv_pd *pd)
{
    pthread_mutex_lock(&g_mu);
    bool busy = false;
    for (emu_mr_t *m = g_mrs; m; m = m->next)
        busy |= m->mr.pd == pd;
    for (int i = 0; i < EMU_MAX_QP; i++)
        busy |= g_qps[i] && g_qps[i]->qp.pd == pd;
    pthread_mutex_unlock(&g_mu);
    if (busy)
        return EBUSY;
    duet_free(pd);
    return 0;
}

static struct ibv_mr *emu_reg_mr(struct ibv_pd *pd, void *addr, size_t len, int access)
{
    /* As on hardware: remote write needs local write. */
    if (!addr || !len ||
        ((access & IBV_ACCESS_REMOTE_WRITE) && !(access & IBV_ACCESS_LOCAL_WRITE))) {
        errno = EINVAL;
        return NULL;
    }
    emu_mr_t *m = duet_calloc(1, sizeof(*m));
    if (!m) {
        errno = ENOMEM;
        return NULL;
    }
    m->mr.context = pd->context;
    m->mr.pd = pd;
    m->mr.addr = addr;
    m->mr.length = len;
    m->access = access;
    pthread_mutex_lock(&g_mu);
    m->mr.lkey = m->mr.rkey = (g_next_key++ << 8) | 0x5a;
    m->next = g_mrs;
    g_mrs = m;
    pthread_mutex_unlock(&g_mu);
    return &m->mr;
}

static struct ibv_mr *emu_reg_dmabuf_mr(struct ibv_pd *pd, uint64_t off, size_t len, uint64_t iova,
                                        int fd, int access)
{
    errno = EOPNOTSUPP; /* the emulated device has no dma-buf importer */
    return NULL;
}

static int emu_dereg_mr(struct ibv_mr *mr)
{
    pthread_mutex_lock(&g_mu);
    for (emu_mr_t **pp = &g_mrs; *pp; pp = &(*pp)->next)
        if (&(*pp)->mr == mr) {
            emu_mr_t *m = *pp;
            *pp = m->next;
            pthread_mutex_unlock(&g_mu);
            duet_free(m);
            return 0;
        }
    pthread_mutex_unlock(&g_mu);
    return EINVAL;
}

static struct ibv_comp_channel *emu_create_comp_channel(struct ibv_context *ctx)
{
    emu_ch_t *ch = duet_calloc(1, sizeof(*ch));
    if (!ch)
        return NULL;
    ch->ch.context = ctx;
    ch->ch.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ch->ch.fd < 0) {
        duet_free(ch);
        return NULL;
    }
    return &ch->ch;
}

static int emu_destroy_comp_channel(struct ibv_comp_channel *ch)
{
    close(ch->fd);
    duet_free(ch);
    return 0;
}

static struct ibv_cq *emu_create_cq(struct ibv_context *ctx, int cqe, struct ibv_comp_channel *ch)
{
    if (cqe <= 0 || cqe > 1 << 20) {
        errno = EINVAL;
        return NULL;
    }
    emu_cq_t *cq = duet_calloc(1, sizeof(*cq));
    if (!cq || !(cq->q = duet_calloc((size_t)cqe, sizeof(*cq->q)))) {
        duet_free(cq);
        errno = ENOMEM;
        return NULL;
    }
    cq->cap = cqe;
    cq->cq.context = ctx;
    cq->cq.channel = ch;
    cq->cq.cqe = cqe;
    return &cq->cq;
}

static int emu_destroy_cq(struct ibv_cq *cq_)
{
    emu_cq_t *cq = (emu_cq_t *)cq_;
    duet_free(cq->q);
    duet_free(cq);
    return 0;
}

static int emu_get_cq_event(struct ibv_comp_channel *ch, struct ibv_cq **cq, void **cq_ctx)
{
    uint64_t v;
    if (read(ch->fd, &v, sizeof(v)) != sizeof(v))
        return -1; /* errno = EAGAIN: nothing fired */
    pthread_mutex_lock(&g_mu);
    *cq = ((emu_ch_t *)ch)->last;
    pthread_mutex_unlock(&g_mu);
    *cq_ctx = *cq ? (*cq)->cq_context : NULL;
    return 0;
}

static void emu_ack_cq_events(struct ibv_cq *cq, unsigned n)
{
}

static struct ibv_qp *emu_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr)
{
    if (attr->qp_type != IBV_QPT_RC || !attr->send_cq || !attr->recv_cq || attr->srq ||
        attr->cap.max_send_wr == 0 || attr->cap.max_send_wr > EMU_MAX_WR ||
        attr->cap.max_recv_wr == 0 || attr->cap.max_recv_wr > EMU_MAX_WR ||
        attr->cap.max_send_sge > 4 || attr->cap.max_recv_sge > 4) {
        errno = EINVAL;
        return NULL;
    }
    emu_qp_t *qp = duet_calloc(1, sizeof(*qp));
    if (!qp || !(qp->rq = duet_calloc(attr->cap.max_recv_wr, sizeof(uint64_t)))) {
        duet_free(qp);
        errno = ENOMEM;
        return NULL;
    }
    qp->cap = attr->cap;
    qp->qp.context = pd->context;
    qp->qp.qp_context = attr->qp_context;
    qp->qp.pd = pd;
    qp->qp.send_cq = attr->send_cq;
    qp->qp.recv_cq = attr->recv_cq;
    qp->qp.qp_type = IBV_QPT_RC;
    qp->qp.state = IBV_QPS_RESET;
    pthread_mutex_lock(&g_mu);
    uint32_t qpn = 0;
    for (uint32_t i = 0; i < EMU_MAX_QP - 1 && !qpn; i++) {
        uint32_t n = (g_next_qpn + i) % (EMU_MAX_QP - 1) + 1;
        if (!g_qps[n])
            qpn = n;
    }
    if (qpn) {
        g_next_qpn = qpn + 1;
        qp->qp.qp_num = qpn;
        g_qps[qpn] = qp;
    }
    pthread_mutex_unlock(&g_mu);
    if (!qpn) {
        duet_free(qp->rq);
        duet_free(qp);
        errno = ENOMEM;
        return NULL;
    }
    return &qp->qp;
}

static int need(int mask, int want)
{
    return (mask & want) == want ? 0 : EINVAL;
}

static int emu_modify_qp(struct ibv_qp *qp_, struct ibv_qp_attr *a, int mask)
{
    emu_qp_t *qp = (emu_qp_t *)qp_;
    if (!(mask & IBV_QP_STATE))
        return EINVAL; /* this device supports state changes only */
    int rc = 0;
    pthread_mutex_lock(&g_mu);
    enum ibv_qp_state cur = qp->qp.state, next = a->qp_state;
    if ((mask & IBV_QP_CUR_STATE) && a->cur_qp_state != cur) {
        rc = EINVAL;
    } else if (next == IBV_QPS_RESET) {
        qp->rq_count = 0;
        qp->qp.state = IBV_QPS_RESET;
    } else if (next == IBV_QPS_ERR) {
        to_error(qp);
    } else if (cur == IBV_QPS_RESET && next == IBV_QPS_INIT) {
        rc = need(mask, IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
        if (!rc && (a->port_num != 1 || a->pkey_index != 0))
            rc = EINVAL;
        if (!rc) {
            qp->port = a->port_num;
            qp->access = (int)a->qp_access_flags;
            qp->qp.state = IBV_QPS_INIT;
        }
    } else if (cur == IBV_QPS_INIT && next == IBV_QPS_RTR) {
        rc = need(mask, IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                            IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
        if (!rc && (a->ah_attr.port_num != 1 || (!a->ah_attr.dlid && !a->ah_attr.is_global) ||
                    a->path_mtu < IBV_MTU_256 || a->path_mtu > IBV_MTU_4096 ||
                    a->dest_qp_num == 0 || a->dest_qp_num > 0xffffff || a->rq_psn > 0xffffff))
            rc = EINVAL;
        if (!rc) {
            qp->dest_qpn = a->dest_qp_num;
            qp->ah = a->ah_attr;
            qp->qp.state = IBV_QPS_RTR;
        }
    } else if (cur == IBV_QPS_RTR && next == IBV_QPS_RTS) {
        rc = need(mask, IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                            IBV_QP_MAX_QP_RD_ATOMIC);
        if (!rc && (a->sq_psn > 0xffffff || a->retry_cnt > 7 || a->rnr_retry > 7))
            rc = EINVAL;
        if (!rc)
            qp->qp.state = IBV_QPS_RTS;
    } else {
        rc = EINVAL;
    }
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static int emu_destroy_qp(struct ibv_qp *qp_)
{
    emu_qp_t *qp = (emu_qp_t *)qp_;
    pthread_mutex_lock(&g_mu);
    g_qps[qp->qp.qp_num] = NULL;
    pthread_mutex_unlock(&g_mu);
    duet_free(qp->rq);
    duet_free(qp);
    return 0;
}

const duet__verbs_dev_t duet__verbs_emu = {
    .name = "emulated",
    .open = emu_open,
    .close = emu_close,
    .query_gid = emu_query_gid,
    .alloc_pd = emu_alloc_pd,
    .dealloc_pd = emu_dealloc_pd,
    .reg_mr = emu_reg_mr,
    .reg_dmabuf_mr = emu_reg_dmabuf_mr,
    .dereg_mr = emu_dereg_mr,
    .create_comp_channel = emu_create_comp_channel,
    .destroy_comp_channel = emu_destroy_comp_channel,
    .create_cq = emu_create_cq,
    .destroy_cq = emu_destroy_cq,
    .get_cq_event = emu_get_cq_event,
    .ack_cq_events = emu_ack_cq_events,
    .create_qp = emu_create_qp,
    .modify_qp = emu_modify_qp,
    .destroy_qp = emu_destroy_qp,
};
