/* The emulated ibv_context: raw verbs (the real inline ibv_post_send /
 * ibv_post_recv / ibv_poll_cq wrappers dispatching through context->ops)
 * for QP state checks, write-with-imm delivery and completion errors; then
 * the verbs provider on top of it (connection set-up reaches RTS, dma-buf
 * is refused cleanly, a killed device fails its peers' writes). */
#include "rdma/verbs_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

typedef struct node {
    struct ibv_context *ctx;
    uint8_t port;
    struct ibv_port_attr attr;
    struct ibv_pd *pd;
    struct ibv_comp_channel *ch;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    struct ibv_mr *mr;
    uint8_t buf[8192];
} node_t;

static const duet__verbs_dev_t *D = &duet__verbs_emu;

static void node_open(node_t *n)
{
    memset(n, 0, sizeof(*n));
    n->ctx = D->open(NULL, &n->port, &n->attr);
    assert_non_null(n->ctx);
    assert_int_equal(n->attr.state, IBV_PORT_ACTIVE);
    n->pd = D->alloc_pd(n->ctx);
    n->ch = D->create_comp_channel(n->ctx);
    n->cq = D->create_cq(n->ctx, 64, n->ch);
    struct ibv_qp_init_attr ia = {
        .send_cq = n->cq,
        .recv_cq = n->cq,
        .qp_type = IBV_QPT_RC,
        .cap = {.max_send_wr = 16, .max_recv_wr = 16, .max_send_sge = 1, .max_recv_sge = 1}};
    n->qp = D->create_qp(n->pd, &ia);
    assert_non_null(n->qp);
    assert_int_equal(n->qp->state, IBV_QPS_RESET);
    n->mr =
        D->reg_mr(n->pd, n->buf, sizeof(n->buf), IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    assert_non_null(n->mr);
}

static void node_close(node_t *n)
{
    D->dereg_mr(n->mr);
    D->destroy_qp(n->qp);
    assert_int_equal(D->dealloc_pd(n->pd), 0);
    D->destroy_cq(n->cq);
    D->destroy_comp_channel(n->ch);
    D->close(n->ctx);
}

static int to_init(node_t *n)
{
    struct ibv_qp_attr a = {
        .qp_state = IBV_QPS_INIT, .port_num = 1, .qp_access_flags = IBV_ACCESS_REMOTE_WRITE};
    return D->modify_qp(n->qp, &a,
                        IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

static int to_rtr(node_t *n, const node_t *peer)
{
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_RTR,
                            .path_mtu = IBV_MTU_4096,
                            .dest_qp_num = peer->qp->qp_num,
                            .rq_psn = 1,
                            .max_dest_rd_atomic = 1,
                            .min_rnr_timer = 12,
                            .ah_attr = {.dlid = peer->attr.lid, .port_num = 1}};
    return D->modify_qp(n->qp, &a,
                        IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                            IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
}

static int to_rts(node_t *n)
{
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_RTS,
                            .timeout = 14,
                            .retry_cnt = 7,
                            .rnr_retry = 7,
                            .sq_psn = 1,
                            .max_rd_atomic = 1};
    return D->modify_qp(n->qp, &a,
                        IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                            IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
}

static int post_write(node_t *n, const node_t *peer, uint32_t lkey, uint32_t rkey, size_t off,
                      size_t len, uint32_t imm, uint64_t id)
{
    struct ibv_sge sge = {.addr = (uintptr_t)n->buf, .length = (uint32_t)len, .lkey = lkey};
    struct ibv_send_wr wr = {.wr_id = id,
                             .sg_list = &sge,
                             .num_sge = 1,
                             .opcode = IBV_WR_RDMA_WRITE_WITH_IMM,
                             .send_flags = IBV_SEND_SIGNALED,
                             .imm_data = htonl(imm)},
                       *bad = NULL;
    wr.wr.rdma.remote_addr = (uintptr_t)peer->buf + off;
    wr.wr.rdma.rkey = rkey;
    return ibv_post_send(n->qp, &wr, &bad);
}

static int post_recv(node_t *n, uint64_t id)
{
    struct ibv_recv_wr wr = {.wr_id = id}, *bad;
    return ibv_post_recv(n->qp, &wr, &bad);
}

static void test_state_machine(void **state)
{
    node_t a, b;
    node_open(&a);
    node_open(&b);
    /* nothing may be posted in RESET; sends need RTS */
    assert_int_equal(post_recv(&a, 1), EINVAL);
    assert_int_equal(post_write(&a, &b, a.mr->lkey, b.mr->rkey, 0, 8, 1, 1), EINVAL);
    /* RESET -> RTR skips INIT; INIT without the port is incomplete */
    assert_int_equal(to_rtr(&a, &b), EINVAL);
    struct ibv_qp_attr bad = {.qp_state = IBV_QPS_INIT};
    assert_int_equal(D->modify_qp(a.qp, &bad, IBV_QP_STATE), EINVAL);
    assert_int_equal(to_init(&a), 0);
    assert_int_equal(a.qp->state, IBV_QPS_INIT);
    assert_int_equal(post_recv(&a, 1), 0);
    assert_int_equal(post_write(&a, &b, a.mr->lkey, b.mr->rkey, 0, 8, 1, 1), EINVAL);
    assert_int_equal(to_rts(&a), EINVAL); /* INIT -> RTS skips RTR */
    assert_int_equal(to_rtr(&a, &b), 0);
    assert_int_equal(post_write(&a, &b, a.mr->lkey, b.mr->rkey, 0, 8, 1, 1), EINVAL);
    assert_int_equal(to_rts(&a), 0);
    assert_int_equal(a.qp->state, IBV_QPS_RTS);
    /* remote write needs local write, as on hardware */
    assert_null(D->reg_mr(a.pd, a.buf, 16, IBV_ACCESS_REMOTE_WRITE));
    node_close(&a);
    node_close(&b);
}

static void connect2(node_t *a, node_t *b)
{
    assert_int_equal(to_init(a), 0);
    assert_int_equal(to_init(b), 0);
    assert_int_equal(to_rtr(a, b), 0);
    assert_int_equal(to_rtr(b, a), 0);
    assert_int_equal(to_rts(a), 0);
    assert_int_equal(to_rts(b), 0);
}

static void test_write_with_imm(void **state)
{
    node_t a, b;
    node_open(&a);
    node_open(&b);
    connect2(&a, &b);
    for (int i = 0; i < 100; i++)
        a.buf[i] = (uint8_t)(i + 1);
    assert_int_equal(post_recv(&b, 55), 0);
    assert_int_equal(ibv_req_notify_cq(b.cq, 0), 0);
    assert_int_equal(post_write(&a, &b, a.mr->lkey, b.mr->rkey, 1000, 100, 0xfeed, 9), 0);
    assert_memory_equal(b.buf + 1000, a.buf, 100);
    struct ibv_wc wc[4];
    assert_int_equal(ibv_poll_cq(b.cq, 4, wc), 1);
    assert_int_equal(wc[0].status, IBV_WC_SUCCESS);
    assert_int_equal(wc[0].opcode, IBV_WC_RECV_RDMA_WITH_IMM);
    assert_int_equal(wc[0].wr_id, 55);
    assert_int_equal(ntohl(wc[0].imm_data), 0xfeed);
    assert_int_equal(wc[0].byte_len, 100);
    assert_int_equal(wc[0].src_qp, a.qp->qp_num);
    assert_true(wc[0].wc_flags & IBV_WC_WITH_IMM);
    /* the completion channel fired */
    struct ibv_cq *cq;
    void *cq_ctx;
    assert_int_equal(D->get_cq_event(b.ch, &cq, &cq_ctx), 0);
    assert_ptr_equal(cq, b.cq);
    assert_int_equal(ibv_poll_cq(a.cq, 4, wc), 1);
    assert_int_equal(wc[0].status, IBV_WC_SUCCESS);
    assert_int_equal(wc[0].opcode, IBV_WC_RDMA_WRITE);
    assert_int_equal(wc[0].wr_id, 9);
    node_close(&a);
    node_close(&b);
}

static void expect_error(node_t *a, enum ibv_wc_status want)
{
    struct ibv_wc wc[4];
    assert_int_equal(ibv_poll_cq(a->cq, 4, wc), 1);
    assert_int_equal(wc[0].status, want);
    assert_int_equal(a->qp->state, IBV_QPS_ERR);
    /* later work is flushed */
    assert_int_equal(post_write(a, a, a->mr->lkey, a->mr->rkey, 0, 8, 0, 2), 0);
    assert_int_equal(ibv_poll_cq(a->cq, 4, wc), 1);
    assert_int_equal(wc[0].status, IBV_WC_WR_FLUSH_ERR);
}

static void test_completion_errors(void **state)
{
    enum ibv_wc_status want[] = {IBV_WC_REM_ACCESS_ERR, IBV_WC_REM_ACCESS_ERR, IBV_WC_LOC_PROT_ERR,
                                 IBV_WC_RNR_RETRY_EXC_ERR, IBV_WC_RETRY_EXC_ERR};
    for (int k = 0; k < 5; k++) {
        node_t a, b;
        node_open(&a);
        node_open(&b);
        connect2(&a, &b);
        memset(b.buf, 0, sizeof(b.buf));
        if (k != 3)
            assert_int_equal(post_recv(&b, 1), 0);
        int rc;
        if (k == 0) /* bad rkey */
            rc = post_write(&a, &b, a.mr->lkey, b.mr->rkey ^ 0x100, 0, 8, 0, 1);
        else if (k == 1) /* past the end of the remote region */
            rc = post_write(&a, &b, a.mr->lkey, b.mr->rkey, sizeof(b.buf) - 4, 8, 0, 1);
        else if (k == 2) /* bad lkey */
            rc = post_write(&a, &b, a.mr->lkey ^ 0x100, b.mr->rkey, 0, 8, 0, 1);
        else if (k == 3) /* no receive posted for the immediate */
            rc = post_write(&a, &b, a.mr->lkey, b.mr->rkey, 0, 8, 0, 1);
        else { /* the peer is gone */
            duet__verbs_emu_kill(b.ctx);
            rc = post_write(&a, &b, a.mr->lkey, b.mr->rkey, 0, 8, 0, 1);
        }
        assert_int_equal(rc, 0); /* errors arrive as completions */
        expect_error(&a, want[k]);
        for (size_t i = 0; i < sizeof(b.buf); i++)
            assert_int_equal(b.buf[i], 0);
        node_close(&a);
        node_close(&b);
    }
    assert_int_equal(duet__verbs_wc_status(IBV_WC_REM_ACCESS_ERR), DUET_ERR_RANGE);
    assert_int_equal(duet__verbs_wc_status(IBV_WC_RETRY_EXC_ERR), DUET_ERR_CLOSED);
    assert_int_equal(duet__verbs_wc_status(IBV_WC_WR_FLUSH_ERR), DUET_ERR_CLOSED);
}

static void test_provider_on_emu(void **state)
{
    duet_rdma_ctx_params_t p = {.provider = "verbs", .device = "emu"};
    duet_rdma_ctx_t *x, *y;
    assert_int_equal(duet_rdma_ctx_create(&p, &x), DUET_OK);
    assert_int_equal(duet_rdma_ctx_create(&p, &y), DUET_OK);
    assert_non_null(duet__verbs_ibctx(x));
    duet_rdma_conn_t *xy, *yx;
    assert_int_equal(duet_rdma_conn_create(x, 1, &xy), DUET_OK);
    assert_int_equal(duet_rdma_conn_create(y, 2, &yx), DUET_OK);
    assert_int_equal(duet__verbs_qp(xy, 0)->state, IBV_QPS_INIT);
    uint8_t bx[DUET_RDMA_BLOB_MAX], by[DUET_RDMA_BLOB_MAX];
    size_t lx, ly;
    assert_int_equal(duet_rdma_conn_blob(xy, bx, sizeof(bx), &lx), DUET_OK);
    assert_int_equal(duet_rdma_conn_blob(yx, by, sizeof(by), &ly), DUET_OK);
    assert_int_equal(lx, DUET__VERBS_BLOB_LEN);
    /* blob fields: QPN and LID travel */
    duet__verbs_blob_t vb;
    assert_int_equal(duet__verbs_blob_decode(bx, lx, &vb), DUET_OK);
    assert_int_equal(vb.qpn[0], duet__verbs_qp(xy, 0)->qp_num);
    assert_int_equal(vb.qpn[1], duet__verbs_qp(xy, 1)->qp_num);
    uint8_t bad[DUET_RDMA_BLOB_MAX];
    memcpy(bad, bx, lx);
    duet__put32(bad + 12, 0x1000000); /* QPN beyond 24 bits */
    assert_int_equal(duet_rdma_conn_connect(yx, bad, lx), DUET_ERR_INVALID);
    assert_int_equal(duet_rdma_conn_connect(xy, by, ly), DUET_OK);
    assert_int_equal(duet_rdma_conn_connect(yx, bx, lx), DUET_OK);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(duet__verbs_qp(xy, i)->state, IBV_QPS_RTS);
        assert_int_equal(duet__verbs_qp(yx, i)->state, IBV_QPS_RTS);
    }
    /* a full bulk queue does not hold back an urgent write (own QP) */
    int posted = 0;
    while (duet_rdma_write(xy, NULL, 0, NULL, 0, 0, 1, 0, 1) == DUET_OK)
        posted++;
    assert_int_equal(posted, 256);
    assert_int_equal(duet_rdma_write(xy, NULL, 0, NULL, 0, 0, 1, 0, 1), DUET_ERR_AGAIN);
    assert_int_equal(duet_rdma_write(xy, NULL, 0, NULL, 0, 0, 2, DUET_RDMA_WRITE_URGENT, 2),
                     DUET_OK);
    duet_rdma_cqe_t ce[300];
    int got = 0, n;
    while ((n = duet_rdma_poll(x, ce, 300)) > 0)
        got += n;
    assert_int_equal(got, 257);
    got = 0;
    while ((n = duet_rdma_poll(y, ce, 300)) > 0)
        got += n;
    assert_int_equal(got, 257);
    duet_rdma_mr_t *m;
    assert_int_equal(duet_rdma_mr_reg_dmabuf(x, 0, 0, 4096, 0, DUET_RDMA_ACCESS_REMOTE_WRITE, &m),
                     DUET_ERR_UNSUPPORTED);
    assert_int_equal(duet_rdma_mr_alloc(x, 4096, DUET_RDMA_MEM_DEVICE, &m), DUET_ERR_UNSUPPORTED);
    /* "GPU" memory on the emulated device: no dma-buf exporter here, so the
     * peer-memory path registers it */
    static uint8_t fake_gpu[8192];
    assert_int_equal(duet_rdma_mr_reg(x, fake_gpu, sizeof(fake_gpu),
                                      DUET_RDMA_MEM_DEVICE | DUET_RDMA_ACCESS_REMOTE_WRITE, &m),
                     DUET_OK);
    assert_int_equal(duet_rdma_mr_rkey(m).len, sizeof(fake_gpu));
    duet_rdma_mr_dereg(&m);
    assert_null(m);
    /* y's device dies: x's writes fail with CLOSED, by completion */
    duet_rdma_mr_t *src, *dst;
    assert_int_equal(duet_rdma_mr_alloc(x, 4096, 0, &src), DUET_OK);
    assert_int_equal(duet_rdma_mr_alloc(y, 4096, DUET_RDMA_ACCESS_REMOTE_WRITE, &dst), DUET_OK);
    duet_rdma_rkey_t rk = duet_rdma_mr_rkey(dst);
    duet__verbs_emu_kill(duet__verbs_ibctx(y));
    assert_int_equal(duet_rdma_write(xy, src, 0, &rk, 0, 64, 1, 0, 42), DUET_OK);
    duet_rdma_cqe_t e[4];
    assert_int_equal(duet_rdma_poll(x, e, 4), 1);
    assert_int_equal(e[0].kind, DUET_RDMA_CQE_SEND);
    assert_int_equal(e[0].status, DUET_ERR_CLOSED);
    assert_int_equal(e[0].wr_id, 42);
    assert_int_equal(duet_rdma_conn_status(xy), DUET_ERR_CLOSED);
    assert_int_equal(duet_rdma_write(xy, src, 0, &rk, 0, 64, 1, 0, 43), DUET_ERR_CLOSED);
    duet_rdma_ctx_destroy(&x);
    duet_rdma_ctx_destroy(&y);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_machine),
        cmocka_unit_test(test_write_with_imm),
        cmocka_unit_test(test_completion_errors),
        cmocka_unit_test(test_provider_on_emu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
