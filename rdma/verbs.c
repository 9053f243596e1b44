/* rdma/verbs — libibverbs provider: one RC queue pair per connection, RDMA
 * WRITE WITH IMMEDIATE, receives pre-posted for the immediates (no buffers:
 * a write-with-imm consumes a receive but places its bytes by rkey), one CQ
 * per context for both directions with a completion channel as the fd.
 * GPU memory: duet_rdma_mr_reg(.., DUET_RDMA_MEM_DEVICE) registers a device
 * pointer through peer memory (nvidia-peermem); duet_rdma_mr_reg_dmabuf()
 * registers a dma-buf (ibv_reg_dmabuf_mr) — its "pointer" is the iova.
 * Each connection is two RC QPs: bulk writes, and urgent writes (credits)
 * so those never wait behind bulk data (the paper's separate high-priority
 * queues). Blob: LID, port, MTU, both QP numbers and PSNs, GID. Every control call goes through
 * a duet__verbs_dev_t (real libibverbs, or the emulated device for tests).
 */
#include "rdma/verbs_int.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

typedef struct vctx {
    const duet__verbs_dev_t *dev;
    struct ibv_context *ib;
    uint8_t port;
    struct ibv_port_attr pattr;
    union ibv_gid gid;
    int gid_index;
    struct ibv_pd *pd;
    struct ibv_comp_channel *ch;
    struct ibv_cq *cq;
    uint32_t depth; /* per-QP send and receive depth */
    uint32_t n_qps;
} vctx_t;

#define URGENT_DEPTH 64

/* A posted send, as its SEND completion must report it (a work completion
 * of a send carries neither the immediate nor a defined length). */
typedef struct vwr {
    uint64_t wr_id, len;
    uint32_t imm;
} vwr_t;

typedef struct vq {
    struct ibv_qp *qp;
    uint32_t psn, depth;
    vwr_t *wrs; /* ring of posted sends, in order (RC completes in order) */
    uint32_t head, count;
} vq_t;

typedef struct vconn {
    vq_t q[2]; /* [0] bulk, [1] urgent */
    duet_status_t dead;
} vconn_t;

typedef struct vmr {
    struct ibv_mr *mr;
    void *owned;
} vmr_t;

duet_status_t duet__verbs_wc_status(enum ibv_wc_status s)
{
    switch (s) {
    case IBV_WC_SUCCESS: return DUET_OK;
    case IBV_WC_REM_ACCESS_ERR:
    case IBV_WC_LOC_PROT_ERR:
    case IBV_WC_LOC_LEN_ERR:
    case IBV_WC_REM_OP_ERR: return DUET_ERR_RANGE;
    case IBV_WC_RETRY_EXC_ERR:
    case IBV_WC_RNR_RETRY_EXC_ERR:
    case IBV_WC_WR_FLUSH_ERR: return DUET_ERR_CLOSED;
    case IBV_WC_REM_INV_REQ_ERR: return DUET_ERR_INVALID;
    default: return DUET_ERR_DEVICE;
    }
}

static duet_status_t verbs_ctx_open(duet_rdma_ctx_t *ctx)
{
    vctx_t *v = duet_calloc(1, sizeof(*v));
    if (!v)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/verbs: out of memory");
    duet_status_t st;
    const char *want = ctx->params.device;
    v->dev = (want && strcmp(want, "emu") == 0) ? &duet__verbs_emu : &duet__verbs_real;
    v->ib = v->dev->open(v->dev == &duet__verbs_emu ? NULL : want, &v->port, &v->pattr);
    if (!v->ib) {
        st = duet_errorf(DUET_ERR_NOT_FOUND, "rdma/verbs: no RDMA device with an active port%s%s",
                         want ? " named " : "", want ? want : "");
        goto err_free;
    }
    v->gid_index = -1;
    if (v->pattr.link_layer == IBV_LINK_LAYER_ETHERNET || v->pattr.lid == 0) {
        /* RoCE: pick a GID, preferring an IPv4-mapped one (RoCE v2). */
        for (int i = 0; i < v->pattr.gid_tbl_len && i < 16; i++) {
            union ibv_gid g;
            if (v->dev->query_gid(v->ib, v->port, i, &g) || !g.global.interface_id)
                continue;
            bool v4 = g.raw[10] == 0xff && g.raw[11] == 0xff;
            if (v->gid_index < 0 || v4) {
                v->gid = g;
                v->gid_index = i;
            }
            if (v4)
                break;
        }
    } else if (v->dev->query_gid(v->ib, v->port, 0, &v->gid) == 0) {
        v->gid_index = 0;
    }
    v->depth = ctx->params.max_write;
    v->pd = v->dev->alloc_pd(v->ib);
    if (!v->pd) {
        st = duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: ibv_alloc_pd: %s", strerror(errno));
        goto err_close;
    }
    v->ch = v->dev->create_comp_channel(v->ib);
    if (!v->ch) {
        st = duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: ibv_create_comp_channel: %s",
                         strerror(errno));
        goto err_pd;
    }
    fcntl(v->ch->fd, F_SETFL, fcntl(v->ch->fd, F_GETFL) | O_NONBLOCK);
    v->cq = v->dev->create_cq(v->ib, (int)ctx->params.cq_depth, v->ch);
    if (!v->cq) {
        st = duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: ibv_create_cq(%u): %s", ctx->params.cq_depth,
                         strerror(errno));
        goto err_ch;
    }
    if (ibv_req_notify_cq(v->cq, 0)) {
        st = duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: ibv_req_notify_cq failed");
        goto err_cq;
    }
    ctx->priv = v;
    return DUET_OK;

err_cq:
    v->dev->destroy_cq(v->cq);
err_ch:
    v->dev->destroy_comp_channel(v->ch);
err_pd:
    v->dev->dealloc_pd(v->pd);
err_close:
    v->dev->close(v->ib);
err_free:
    duet_free(v);
    return st;
}

static void verbs_ctx_close(duet_rdma_ctx_t *ctx)
{
    vctx_t *v = ctx->priv;
    v->dev->destroy_cq(v->cq);
    v->dev->destroy_comp_channel(v->ch);
    v->dev->dealloc_pd(v->pd);
    v->dev->close(v->ib);
    duet_free(v);
}

static int ib_access(unsigned access)
{
    int a = IBV_ACCESS_LOCAL_WRITE;
    if (access & DUET_RDMA_ACCESS_REMOTE_WRITE)
        a |= IBV_ACCESS_REMOTE_WRITE;
    return a;
}

static duet_status_t mr_finish(duet_rdma_mr_t *mr, vmr_t *m, const char *what)
{
    if (!m->mr) {
        duet_status_t st =
            duet_errorf(errno == EOPNOTSUPP ? DUET_ERR_UNSUPPORTED : DUET_ERR_DEVICE,
                        "rdma/verbs: %s of %zu bytes: %s", what, mr->len, strerror(errno));
        duet_free(m->owned);
        duet_free(m);
        return st;
    }
    mr->rkey.key = m->mr->rkey;
    mr->rkey.base = (uint64_t)(uintptr_t)mr->addr;
    mr->priv = m;
    return DUET_OK;
}

static duet_status_t verbs_mr_alloc(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    vctx_t *v = ctx->priv;
    if (mr->access & DUET_RDMA_MEM_DEVICE)
        return duet_errorf(DUET_ERR_UNSUPPORTED,
                           "rdma/verbs: allocate GPU memory with the GPU "
                           "backend, then duet_rdma_mr_reg(.., DUET_RDMA_MEM_DEVICE)");
    vmr_t *m = duet_calloc(1, sizeof(*m));
    if (!m || !(m->owned = duet_aligned_alloc(4096, mr->len))) {
        duet_free(m);
        return duet_errorf(DUET_ERR_NOMEM, "rdma/verbs: cannot allocate %zu bytes", mr->len);
    }
    memset(m->owned, 0, mr->len);
    mr->addr = m->owned;
    m->mr = v->dev->reg_mr(v->pd, mr->addr, mr->len, ib_access(mr->access));
    return mr_finish(mr, m, "ibv_reg_mr");
}

typedef int (*get_handle_fn)(void *handle, unsigned long long dptr, size_t size, int type,
                             unsigned long long flags);
static get_handle_fn cuda_get_handle;
static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;

static void cuda_load(void)
{
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib)
        *(void **)&cuda_get_handle = dlsym(lib, "cuMemGetHandleForAddressRange");
}

/* A dma-buf fd for CUDA device memory [dptr, +len), through the driver API
 * found at run time (no link-time dependency on libcuda: hosts without a
 * GPU driver still load duet). -1 if unavailable. *base gets the page-aligned
 * start the fd covers. */
static int cuda_dmabuf_fd(uintptr_t dptr, size_t len, uintptr_t *base)
{
    pthread_once(&cuda_once, cuda_load);
    get_handle_fn fn = cuda_get_handle;
    if (!fn)
        return -1;
    const uintptr_t page = 4096;
    uintptr_t start = dptr & ~(page - 1), end = (dptr + len + page - 1) & ~(page - 1);
    int fd = -1;
    /* CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD = 1 */
    if (fn(&fd, start, end - start, 1, 0) != 0)
        return -1;
    *base = start;
    return fd;
}

static duet_status_t verbs_mr_reg(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    vctx_t *v = ctx->priv;
    vmr_t *m = duet_calloc(1, sizeof(*m));
    if (!m)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/verbs: out of memory");
    if (mr->access & DUET_RDMA_MEM_DEVICE) {
        /* GPU memory: dma-buf first (upstream kernels), then peer memory
         * (nvidia-peermem makes ibv_reg_mr accept device pointers). */
        uintptr_t base = 0, dptr = (uintptr_t)mr->addr;
        int fd = cuda_dmabuf_fd(dptr, mr->len, &base);
        if (fd >= 0) {
            m->mr =
                v->dev->reg_dmabuf_mr(v->pd, dptr - base, mr->len, dptr, fd, ib_access(mr->access));
            close(fd); /* the registration holds its own reference */
            if (m->mr)
                return mr_finish(mr, m, "ibv_reg_dmabuf_mr (GPU)");
            DUET_LOG_I("rdma", "verbs: dma-buf registration failed (%s); trying peer memory",
                       strerror(errno));
        }
        m->mr = v->dev->reg_mr(v->pd, mr->addr, mr->len, ib_access(mr->access));
        return mr_finish(mr, m, "ibv_reg_mr (GPU, peer memory: is nvidia-peermem loaded?)");
    }
    m->mr = v->dev->reg_mr(v->pd, mr->addr, mr->len, ib_access(mr->access));
    return mr_finish(mr, m, "ibv_reg_mr");
}

static duet_status_t verbs_mr_reg_dmabuf(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr, int fd,
                                         uint64_t offset, uint64_t iova)
{
    vctx_t *v = ctx->priv;
    vmr_t *m = duet_calloc(1, sizeof(*m));
    if (!m)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/verbs: out of memory");
    mr->addr = (void *)(uintptr_t)iova;
    m->mr = v->dev->reg_dmabuf_mr(v->pd, offset, mr->len, iova, fd, ib_access(mr->access));
    return mr_finish(mr, m, "ibv_reg_dmabuf_mr");
}

static void verbs_mr_dereg(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    vctx_t *v = ctx->priv;
    vmr_t *m = mr->priv;
    if (v->dev->dereg_mr(m->mr))
        DUET_LOG_W("rdma", "verbs: ibv_dereg_mr failed: %s", strerror(errno));
    duet_free(m->owned);
    duet_free(m);
}

static duet_status_t post_recvs(vq_t *q, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        struct ibv_recv_wr wr = {.wr_id = 0, .num_sge = 0}, *bad;
        int rc = ibv_post_recv(q->qp, &wr, &bad);
        if (rc)
            return duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: ibv_post_recv: %s", strerror(rc));
    }
    return DUET_OK;
}

static void vq_destroy(vctx_t *v, vq_t *q)
{
    if (q->qp && v->dev->destroy_qp(q->qp))
        DUET_LOG_W("rdma", "verbs: ibv_destroy_qp failed");
    q->qp = NULL;
    duet_free(q->wrs);
    q->wrs = NULL;
}

static duet_status_t vq_create(vctx_t *v, duet_rdma_conn_t *conn, vq_t *q, uint32_t depth)
{
    q->depth = depth;
    if (!(q->wrs = duet_calloc(depth, sizeof(*q->wrs))))
        return duet_errorf(DUET_ERR_NOMEM, "rdma/verbs: out of memory");
    struct ibv_qp_init_attr ia = {
        .qp_context = conn,
        .send_cq = v->cq,
        .recv_cq = v->cq,
        .cap = {.max_send_wr = depth, .max_recv_wr = depth, .max_send_sge = 1, .max_recv_sge = 1},
        .qp_type = IBV_QPT_RC,
    };
    q->qp = v->dev->create_qp(v->pd, &ia);
    if (!q->qp)
        return duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: ibv_create_qp: %s", strerror(errno));
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT,
                            .pkey_index = 0,
                            .port_num = v->port,
                            .qp_access_flags = IBV_ACCESS_REMOTE_WRITE};
    int rc = v->dev->modify_qp(
        q->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
    if (rc)
        return duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: QP %u to INIT: %s", q->qp->qp_num,
                           strerror(rc));
    duet_status_t st = post_recvs(q, depth);
    if (st)
        return st;
    if (getrandom(&q->psn, sizeof(q->psn), 0) != sizeof(q->psn))
        q->psn = (uint32_t)duet_now_ns();
    q->psn &= 0xffffff;
    return DUET_OK;
}

static duet_status_t verbs_conn_open(duet_rdma_ctx_t *ctx, duet_rdma_conn_t *conn)
{
    vctx_t *v = ctx->priv;
    uint64_t per = 2ull * (v->depth + URGENT_DEPTH);
    if ((uint64_t)(v->n_qps / 2 + 1) * per > ctx->params.cq_depth)
        return duet_errorf(DUET_ERR_CAPACITY,
                           "rdma/verbs: %u connections of depth %u would overflow a CQ of %u",
                           v->n_qps / 2 + 1, v->depth, ctx->params.cq_depth);
    vconn_t *c = duet_calloc(1, sizeof(*c));
    if (!c)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/verbs: out of memory");
    duet_status_t st = vq_create(v, conn, &c->q[0], v->depth);
    if (st == DUET_OK)
        st = vq_create(v, conn, &c->q[1], URGENT_DEPTH);
    if (st) {
        vq_destroy(v, &c->q[0]);
        vq_destroy(v, &c->q[1]);
        duet_free(c);
        return st;
    }
    v->n_qps += 2;
    conn->priv = c;
    return DUET_OK;
}

static duet_status_t verbs_conn_blob(const duet_rdma_conn_t *conn, uint8_t *buf, size_t *len)
{
    vctx_t *v = conn->ctx->priv;
    vconn_t *c = conn->priv;
    memset(buf, 0, DUET__VERBS_BLOB_LEN);
    duet__blob_header(buf, DUET__PROV_VERBS, DUET__VERBS_BLOB_LEN);
    duet__put16(buf + 8, v->pattr.lid);
    buf[10] = v->port;
    buf[11] = (uint8_t)v->pattr.active_mtu;
    duet__put32(buf + 12, c->q[0].qp->qp_num);
    duet__put32(buf + 16, c->q[0].psn);
    duet__put32(buf + 20, c->q[1].qp->qp_num);
    memcpy(buf + 24, v->gid.raw, 16);
    duet__put32(buf + 40, c->q[1].psn);
    *len = DUET__VERBS_BLOB_LEN;
    return DUET_OK;
}

duet_status_t duet__verbs_blob_decode(const void *blob, size_t len, duet__verbs_blob_t *out)
{
    duet_status_t st = duet__blob_check(blob, len, DUET__PROV_VERBS, DUET__VERBS_BLOB_LEN, "verbs");
    if (st)
        return st;
    const uint8_t *p = blob;
    static const uint8_t zero[16];
    duet__verbs_blob_t b = {.lid = duet__get16(p + 8),
                            .port = p[10],
                            .mtu = p[11],
                            .qpn = {duet__get32(p + 12), duet__get32(p + 20)},
                            .psn = {duet__get32(p + 16), duet__get32(p + 40)}};
    memcpy(b.gid, p + 24, 16);
    if (duet__get32(p + 44))
        return duet_errorf(DUET_ERR_INVALID, "rdma/verbs: blob: reserved bytes 44..47 are not 0");
    if (b.mtu < IBV_MTU_256 || b.mtu > IBV_MTU_4096)
        return duet_errorf(DUET_ERR_INVALID, "rdma/verbs: blob: bad MTU code %u (byte 11)", b.mtu);
    for (int i = 0; i < 2; i++)
        if (b.qpn[i] == 0 || b.qpn[i] > 0xffffff || b.psn[i] > 0xffffff)
            return duet_errorf(DUET_ERR_INVALID, "rdma/verbs: blob: bad QP number or PSN of %s QP",
                               i ? "the urgent" : "the bulk");
    if (b.qpn[0] == b.qpn[1])
        return duet_errorf(DUET_ERR_INVALID, "rdma/verbs: blob: bulk and urgent QP are the same");
    if (b.lid == 0 && memcmp(b.gid, zero, 16) == 0)
        return duet_errorf(DUET_ERR_INVALID, "rdma/verbs: blob has neither a LID nor a GID");
    *out = b;
    return DUET_OK;
}

static duet_status_t vq_connect(vctx_t *v, vq_t *q, const duet__verbs_blob_t *peer, int i)
{
    struct ibv_qp_attr a = {
        .qp_state = IBV_QPS_RTR,
        .path_mtu = DUET_MIN((enum ibv_mtu)peer->mtu, v->pattr.active_mtu),
        .dest_qp_num = peer->qpn[i],
        .rq_psn = peer->psn[i],
        .max_dest_rd_atomic = 1,
        .min_rnr_timer = 12,
        .ah_attr = {.dlid = peer->lid, .sl = 0, .src_path_bits = 0, .port_num = v->port},
    };
    if (v->gid_index >= 0 && (peer->lid == 0 || v->pattr.link_layer == IBV_LINK_LAYER_ETHERNET)) {
        a.ah_attr.is_global = 1;
        memcpy(a.ah_attr.grh.dgid.raw, peer->gid, 16);
        a.ah_attr.grh.sgid_index = (uint8_t)v->gid_index;
        a.ah_attr.grh.hop_limit = 64;
    }
    int rc =
        v->dev->modify_qp(q->qp, &a,
                          IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                              IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
    if (rc)
        return duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: QP %u to RTR (peer QP %u, LID %u): %s",
                           q->qp->qp_num, peer->qpn[i], peer->lid, strerror(rc));
    struct ibv_qp_attr b = {.qp_state = IBV_QPS_RTS,
                            .timeout = 14,
                            .retry_cnt = 7,
                            .rnr_retry = 7,
                            .sq_psn = q->psn,
                            .max_rd_atomic = 1};
    rc = v->dev->modify_qp(q->qp, &b,
                           IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                               IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
    if (rc)
        return duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: QP %u to RTS: %s", q->qp->qp_num,
                           strerror(rc));
    return DUET_OK;
}

static duet_status_t verbs_conn_connect(duet_rdma_conn_t *conn, const void *blob, size_t len)
{
    vctx_t *v = conn->ctx->priv;
    vconn_t *c = conn->priv;
    duet__verbs_blob_t peer;
    duet_status_t st = duet__verbs_blob_decode(blob, len, &peer);
    for (int i = 0; st == DUET_OK && i < 2; i++)
        st = vq_connect(v, &c->q[i], &peer, i);
    return st;
}

static duet_status_t verbs_conn_status(const duet_rdma_conn_t *conn)
{
    return ((vconn_t *)conn->priv)->dead;
}

static void verbs_conn_close(duet_rdma_conn_t *conn)
{
    vctx_t *v = conn->ctx->priv;
    vconn_t *c = conn->priv;
    vq_destroy(v, &c->q[0]);
    vq_destroy(v, &c->q[1]);
    v->n_qps -= 2;
    duet_free(c);
}

static duet_status_t verbs_write(duet_rdma_conn_t *conn, const duet_rdma_mr_t *src, size_t src_off,
                                 const duet_rdma_rkey_t *dst, uint64_t dst_off, size_t len,
                                 uint32_t imm, unsigned flags, uint64_t wr_id)
{
    vconn_t *c = conn->priv;
    vq_t *q = &c->q[(flags & DUET_RDMA_WRITE_URGENT) ? 1 : 0];
    if (c->dead)
        return duet_errorf(c->dead, "rdma/verbs: connection %u (QP %u) is down", conn->id,
                           q->qp->qp_num);
    if (q->count == q->depth)
        return duet_errorf(DUET_ERR_AGAIN, "rdma/verbs: %u writes in flight on QP %u", q->count,
                           q->qp->qp_num);
    if (len > UINT32_MAX)
        return duet_errorf(DUET_ERR_RANGE, "rdma/verbs: a write is at most 4 GiB");
    struct ibv_sge sge = {0};
    struct ibv_send_wr wr = {.wr_id = 1,
                             .opcode = IBV_WR_RDMA_WRITE_WITH_IMM,
                             .send_flags = IBV_SEND_SIGNALED,
                             .imm_data = htonl(imm)};
    if (len) {
        sge.addr = (uint64_t)(uintptr_t)src->addr + src_off;
        sge.length = (uint32_t)len;
        sge.lkey = ((vmr_t *)src->priv)->mr->lkey;
        wr.sg_list = &sge;
        wr.num_sge = 1;
        wr.wr.rdma.remote_addr = dst->base + dst_off;
        wr.wr.rdma.rkey = (uint32_t)dst->key;
    }
    struct ibv_send_wr *bad = NULL;
    int rc = ibv_post_send(q->qp, &wr, &bad);
    if (rc)
        return duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: ibv_post_send on QP %u: %s", q->qp->qp_num,
                           strerror(rc));
    q->wrs[(q->head + q->count) % q->depth] = (vwr_t){wr_id, len, imm};
    q->count++;
    return DUET_OK;
}

static duet_rdma_conn_t *conn_by_qpn(duet_rdma_ctx_t *ctx, uint32_t qpn, vq_t **q)
{
    for (size_t i = 0; i < ctx->n_conns; i++) {
        duet_rdma_conn_t *conn = ctx->conns[i];
        if (!conn)
            continue;
        vconn_t *c = conn->priv;
        for (int k = 0; k < 2; k++)
            if (c->q[k].qp->qp_num == qpn) {
                *q = &c->q[k];
                return conn;
            }
    }
    return NULL;
}

static int verbs_poll(duet_rdma_ctx_t *ctx, duet_rdma_cqe_t *out, int max)
{
    vctx_t *v = ctx->priv;
    struct ibv_wc wc[32];
    int got = 0;
    while (got < max) {
        int n = ibv_poll_cq(v->cq, DUET_MIN(max - got, 32), wc);
        if (n < 0)
            return duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: ibv_poll_cq failed");
        if (n == 0)
            break;
        for (int i = 0; i < n; i++) {
            vq_t *q;
            duet_rdma_conn_t *conn = conn_by_qpn(ctx, wc[i].qp_num, &q);
            if (!conn)
                continue;
            vconn_t *c = conn->priv;
            duet_status_t st = duet__verbs_wc_status(wc[i].status);
            if (wc[i].wr_id == 0) { /* a receive */
                if (st) {
                    if (!c->dead)
                        c->dead = st;
                    continue;
                }
                out[got++] = (duet_rdma_cqe_t){.kind = DUET_RDMA_CQE_RECV,
                                               .imm = ntohl(wc[i].imm_data),
                                               .len = wc[i].byte_len,
                                               .conn = conn,
                                               .conn_user = conn->user,
                                               .conn_id = conn->id};
                if (post_recvs(q, 1) && !c->dead)
                    c->dead = DUET_ERR_DEVICE;
                continue;
            }
            vwr_t w = q->count ? q->wrs[q->head] : (vwr_t){0};
            if (q->count) {
                q->head = (q->head + 1) % q->depth;
                q->count--;
            }
            if (st) {
                if (!c->dead)
                    DUET_LOG_I("rdma", "verbs: QP %u: %s (vendor error 0x%x)", wc[i].qp_num,
                               ibv_wc_status_str(wc[i].status), wc[i].vendor_err);
                if (!c->dead)
                    c->dead = st;
            }
            out[got++] = (duet_rdma_cqe_t){.kind = DUET_RDMA_CQE_SEND,
                                           .status = st,
                                           .imm = w.imm,
                                           .len = w.len,
                                           .wr_id = w.wr_id,
                                           .conn = conn,
                                           .conn_user = conn->user,
                                           .conn_id = conn->id};
        }
    }
    return got;
}

static int verbs_fd(const duet_rdma_ctx_t *ctx)
{
    return ((const vctx_t *)ctx->priv)->ch->fd;
}

static duet_status_t verbs_arm(duet_rdma_ctx_t *ctx)
{
    vctx_t *v = ctx->priv;
    struct ibv_cq *cq;
    void *cq_ctx;
    unsigned n = 0;
    while (v->dev->get_cq_event(v->ch, &cq, &cq_ctx) == 0)
        n++;
    if (n)
        v->dev->ack_cq_events(v->cq, n);
    if (ibv_req_notify_cq(v->cq, 0))
        return duet_errorf(DUET_ERR_DEVICE, "rdma/verbs: ibv_req_notify_cq failed");
    return DUET_OK;
}

struct ibv_context *duet__verbs_ibctx(duet_rdma_ctx_t *ctx)
{
    vctx_t *v = ctx->priv;
    return v->dev == &duet__verbs_emu ? v->ib : NULL;
}

struct ibv_qp *duet__verbs_qp(duet_rdma_conn_t *conn, int which)
{
    return ((vconn_t *)conn->priv)->q[which ? 1 : 0].qp;
}

const duet_rdma_ops_t duet__rdma_verbs_ops = {
    .name = "verbs",
    .ctx_open = verbs_ctx_open,
    .ctx_close = verbs_ctx_close,
    .mr_alloc = verbs_mr_alloc,
    .mr_reg = verbs_mr_reg,
    .mr_reg_dmabuf = verbs_mr_reg_dmabuf,
    .mr_dereg = verbs_mr_dereg,
    .conn_open = verbs_conn_open,
    .conn_blob = verbs_conn_blob,
    .conn_connect = verbs_conn_connect,
    .conn_status = verbs_conn_status,
    .conn_close = verbs_conn_close,
    .write = verbs_write,
    .poll = verbs_poll,
    .fd = verbs_fd,
    .arm = verbs_arm,
    .next_due_ns = NULL,
};

/* ---- the real device: thin wrappers over libibverbs --------------------- */

static struct ibv_context *real_open(const char *want, uint8_t *port, struct ibv_port_attr *attr)
{
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    struct ibv_context *found = NULL;
    for (int i = 0; list && i < n && !found; i++) {
        if (want && strcmp(ibv_get_device_name(list[i]), want) != 0)
            continue;
        struct ibv_context *ib = ibv_open_device(list[i]);
        if (!ib)
            continue;
        struct ibv_device_attr da;
        if (ibv_query_device(ib, &da) == 0) {
            for (uint8_t p = 1; p <= da.phys_port_cnt; p++) {
                if (ibv_query_port(ib, p, attr) == 0 && attr->state == IBV_PORT_ACTIVE) {
                    *port = p;
                    found = ib;
                    break;
                }
            }
        }
        if (!found)
            ibv_close_device(ib);
    }
    if (list)
        ibv_free_device_list(list);
    return found;
}

static int real_close(struct ibv_context *ctx)
{
    return ibv_close_device(ctx);
}

static int real_query_gid(struct ibv_context *ctx, uint8_t port, int index, union ibv_gid *gid)
{
    return ibv_query_gid(ctx, port, index, gid);
}

static struct ibv_pd *real_alloc_pd(struct ibv_context *ctx)
{
    return ibv_alloc_pd(ctx);
}

static int real_dealloc_pd(struct ibv_pd *pd)
{
    return ibv_dealloc_pd(pd);
}

static struct ibv_mr *real_reg_mr(struct ibv_pd *pd, void *addr, size_t len, int access)
{
    return ibv_reg_mr(pd, addr, len, access);
}

static struct ibv_mr *real_reg_dmabuf_mr(struct ibv_pd *pd, uint64_t off, size_t len, uint64_t iova,
                                         int fd, int access)
{
    return ibv_reg_dmabuf_mr(pd, off, len, iova, fd, access);
}

static int real_dereg_mr(struct ibv_mr *mr)
{
    return ibv_dereg_mr(mr);
}

static struct ibv_comp_channel *real_create_comp_channel(struct ibv_context *ctx)
{
    return ibv_create_comp_channel(ctx);
}

static int real_destroy_comp_channel(struct ibv_comp_channel *ch)
{
    return ibv_destroy_comp_channel(ch);
}

static struct ibv_cq *real_create_cq(struct ibv_context *ctx, int cqe, struct ibv_comp_channel *ch)
{
    return ibv_create_cq(ctx, cqe, NULL, ch, 0);
}

static int real_destroy_cq(struct ibv_cq *cq)
{
    return ibv_destroy_cq(cq);
}

static int real_get_cq_event(struct ibv_comp_channel *ch, struct ibv_cq **cq, void **cq_ctx)
{
    return ibv_get_cq_event(ch, cq, cq_ctx);
}

static void real_ack_cq_events(struct ibv_cq *cq, unsigned n)
{
    ibv_ack_cq_events(cq, n);
}

static struct ibv_qp *real_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr)
{
    return ibv_create_qp(pd, attr);
}

static int real_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask)
{
    return ibv_modify_qp(qp, attr, mask);
}

static int real_destroy_qp(struct ibv_qp *qp)
{
    return ibv_destroy_qp(qp);
}

const duet__verbs_dev_t duet__verbs_real = {
    .name = "libibverbs",
    .open = real_open,
    .close = real_close,
    .query_gid = real_query_gid,
    .alloc_pd = real_alloc_pd,
    .dealloc_pd = real_dealloc_pd,
    .reg_mr = real_reg_mr,
    .reg_dmabuf_mr = real_reg_dmabuf_mr,
    .dereg_mr = real_dereg_mr,
    .create_comp_channel = real_create_comp_channel,
    .destroy_comp_channel = real_destroy_comp_channel,
    .create_cq = real_create_cq,
    .destroy_cq = real_destroy_cq,
    .get_cq_event = real_get_cq_event,
    .ack_cq_events = real_ack_cq_events,
    .create_qp = real_create_qp,
    .modify_qp = real_modify_qp,
    .destroy_qp = real_destroy_qp,
};
