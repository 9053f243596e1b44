/* rdma/verbs internals: the control-path table the verbs provider calls.
 *
 * The data path (ibv_post_send, ibv_post_recv, ibv_poll_cq,
 * ibv_req_notify_cq) is always the real inline wrappers of <infiniband/
 * verbs.h>, which dispatch through context->ops. The control path (open,
 * PD, MR, CQ, QP, state changes, CQ events) lives in libibverbs proper and
 * reaches the kernel, so it goes through this table: `duet__verbs_real`
 * wraps libibverbs, `duet__verbs_emu` is the in-process emulated device
 * (verbs_emu.c) whose ibv_context ops check QP states, keys and bounds and
 * deliver writes in memory. Private to rdma/ and its tests.
 */
#ifndef DUET_RDMA_VERBS_INT_H
#define DUET_RDMA_VERBS_INT_H

#include "rdma/rdma_int.h"

#include <infiniband/verbs.h>

typedef struct duet__verbs_dev {
    const char *name;
    /* Open `want` (NULL = first with an active port); fills port and attrs. */
    struct ibv_context *(*open)(const char *want, uint8_t *port, struct ibv_port_attr *attr);
    int (*close)(struct ibv_context *ctx);
    int (*query_gid)(struct ibv_context *ctx, uint8_t port, int index, union ibv_gid *gid);
    struct ibv_pd *(*alloc_pd)(struct ibv_context *ctx);
    int (*dealloc_pd)(struct ibv_pd *pd);
    struct ibv_mr *(*reg_mr)(struct ibv_pd *pd, void *addr, size_t len, int access);
    struct ibv_mr *(*reg_dmabuf_mr)(struct ibv_pd *pd, uint64_t off, size_t len, uint64_t iova,
                                    int fd, int access);
    int (*dereg_mr)(struct ibv_mr *mr);
    struct ibv_comp_channel *(*create_comp_channel)(struct ibv_context *ctx);
    int (*destroy_comp_channel)(struct ibv_comp_channel *ch);
    struct ibv_cq *(*create_cq)(struct ibv_context *ctx, int cqe, struct ibv_comp_channel *ch);
    int (*destroy_cq)(struct ibv_cq *cq);
    int (*get_cq_event)(struct ibv_comp_channel *ch, struct ibv_cq **cq, void **cq_ctx);
    void (*ack_cq_events)(struct ibv_cq *cq, unsigned n);
    struct ibv_qp *(*create_qp)(struct ibv_pd *pd, struct ibv_qp_init_attr *attr);
    int (*modify_qp)(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask);
    int (*destroy_qp)(struct ibv_qp *qp);
} duet__verbs_dev_t;

extern const duet__verbs_dev_t duet__verbs_real;
extern const duet__verbs_dev_t duet__verbs_emu;

/* Emulated device controls for tests. */
/* Peer loss: every QP of this context goes to the error state (its posted
 * work is flushed) and peers writing to it get IBV_WC_RETRY_EXC_ERR. */
void duet__verbs_emu_kill(struct ibv_context *ctx);
/* The emulated context behind a duet verbs context (NULL if not emulated). */
struct ibv_context *duet__verbs_ibctx(duet_rdma_ctx_t *ctx);
/* QP of a connection, 0 = bulk, 1 = urgent (tests check their state). */
struct ibv_qp *duet__verbs_qp(duet_rdma_conn_t *conn, int which);

/* A connection is two RC QPs: [0] bulk writes, [1] urgent writes (credits,
 * acknowledgements), so those never queue behind bulk data. */
#define DUET__VERBS_BLOB_LEN 48
typedef struct duet__verbs_blob {
    uint16_t lid;
    uint8_t port, mtu;
    uint32_t qpn[2], psn[2];
    uint8_t gid[16];
} duet__verbs_blob_t;
duet_status_t duet__verbs_blob_decode(const void *blob, size_t len, duet__verbs_blob_t *out);
/* Map a work completion status to duet's. */
duet_status_t duet__verbs_wc_status(enum ibv_wc_status s);

#endif /* DUET_RDMA_VERBS_INT_H */
