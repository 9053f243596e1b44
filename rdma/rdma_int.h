/* rdma internals: the provider ops table and the objects the core shares with
 * providers. Private to rdma/ (and its tests). */
#ifndef DUET_RDMA_INT_H
#define DUET_RDMA_INT_H

#include "rdma/rdma.h"

/* Wire helpers: little-endian, unaligned-safe. */
static inline void duet__put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void duet__put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void duet__put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t duet__get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t duet__get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static inline uint64_t duet__get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Every blob starts with this 8-byte header. */
#define DUET_RDMA_BLOB_MAGIC 0x616d6472u /* "rdma" */
#define DUET_RDMA_BLOB_VERSION 1
enum { DUET__PROV_SHM = 1, DUET__PROV_TCP = 2, DUET__PROV_VERBS = 3, DUET__PROV_SIM = 4 };
void duet__blob_header(uint8_t *p, uint8_t prov, uint8_t len);
/* Checks magic, version, provider and that `len` equals the stated length. */
duet_status_t duet__blob_check(const void *blob, size_t len, uint8_t prov, size_t want,
                               const char *who);

typedef struct duet_rdma_ops duet_rdma_ops_t;

struct duet_rdma_ctx {
    const duet_rdma_ops_t *ops;
    void *priv;
    duet_rdma_ctx_params_t params;
    duet_rdma_conn_t **conns; /* by id; NULL = free */
    size_t n_conns, cap_conns;
    duet_rdma_mr_t **mrs;
    size_t n_mrs, cap_mrs;
};

struct duet_rdma_mr {
    duet_rdma_ctx_t *ctx;
    void *addr;
    size_t len;
    unsigned access;
    uint32_t slot; /* index in ctx->mrs */
    duet_rdma_rkey_t rkey;
    void *priv;
};

struct duet_rdma_conn {
    duet_rdma_ctx_t *ctx;
    uint32_t id; /* index in ctx->conns; written into blobs */
    uint64_t user;
    bool connected;
    void *priv;
};

struct duet_rdma_ops {
    const char *name;
    duet_status_t (*ctx_open)(duet_rdma_ctx_t *ctx);
    void (*ctx_close)(duet_rdma_ctx_t *ctx);
    duet_status_t (*mr_alloc)(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr);
    duet_status_t (*mr_reg)(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr);
    duet_status_t (*mr_reg_dmabuf)(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr, int fd,
                                   uint64_t offset, uint64_t iova);
    void (*mr_dereg)(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr);
    duet_status_t (*conn_open)(duet_rdma_ctx_t *ctx, duet_rdma_conn_t *conn);
    duet_status_t (*conn_blob)(const duet_rdma_conn_t *conn, uint8_t *buf, size_t *len);
    duet_status_t (*conn_connect)(duet_rdma_conn_t *conn, const void *blob, size_t len);
    duet_status_t (*conn_status)(const duet_rdma_conn_t *conn);
    void (*conn_close)(duet_rdma_conn_t *conn);
    duet_status_t (*write)(duet_rdma_conn_t *conn, const duet_rdma_mr_t *src, size_t src_off,
                           const duet_rdma_rkey_t *dst, uint64_t dst_off, size_t len, uint32_t imm,
                           unsigned flags, uint64_t wr_id);
    int (*poll)(duet_rdma_ctx_t *ctx, duet_rdma_cqe_t *out, int max);
    int (*fd)(const duet_rdma_ctx_t *ctx);
    duet_status_t (*arm)(duet_rdma_ctx_t *ctx);
    /* Longest the caller may sleep on the fd before polling again (ns), or
     * -1 when the fd alone suffices (sim: the next delayed delivery). */
    int64_t (*next_due_ns)(duet_rdma_ctx_t *ctx);
};

extern const duet_rdma_ops_t duet__rdma_shm_ops;
extern const duet_rdma_ops_t duet__rdma_tcp_ops;
extern const duet_rdma_ops_t duet__rdma_sim_ops;
#ifdef DUET_HAVE_VERBS
extern const duet_rdma_ops_t duet__rdma_verbs_ops;
#endif

/* Stubs for operations a provider does not have. */
duet_status_t duet__rdma_unsupported_reg(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr);
duet_status_t duet__rdma_unsupported_dmabuf(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr, int fd,
                                            uint64_t offset, uint64_t iova);

/* Connection by id, or NULL. */
duet_rdma_conn_t *duet__rdma_conn_get(const duet_rdma_ctx_t *ctx, uint32_t id);
/* Registered region by key (non-verbs providers use key = index+1 | gen<<32). */
duet_rdma_mr_t *duet__rdma_mr_get(const duet_rdma_ctx_t *ctx, uint64_t key);

/* Common sender-side argument checks for duet_rdma_write. */
duet_status_t duet__rdma_write_check(const duet_rdma_conn_t *conn, const duet_rdma_mr_t *src,
                                     size_t src_off, const duet_rdma_rkey_t *dst, uint64_t dst_off,
                                     size_t len);

/* A simple growable FIFO of completions (process-local). */
typedef struct duet__cq {
    duet_rdma_cqe_t *e;
    size_t cap, head, count;
} duet__cq_t;
duet_status_t duet__cq_push(duet__cq_t *q, const duet_rdma_cqe_t *e);
int duet__cq_pop(duet__cq_t *q, duet_rdma_cqe_t *out, int max);
void duet__cq_cleanup(duet__cq_t *q);

/* ---- tcp wire (exposed for the fuzzer) --------------------------------- */
#define DUET__TCP_HDR 48
#define DUET__TCP_MAGIC 0x74656475u /* "udet" */
#define DUET__TCP_VERSION 1
#define DUET__TCP_CHUNK (256u * 1024u)
enum { DUET__TCP_HELLO = 1, DUET__TCP_WRITE = 2, DUET__TCP_ACK = 3 };
enum { DUET__TCP_F_LAST = 1 };
typedef struct duet__tcp_hdr {
    uint8_t type, flags;
    uint64_t seq;
    uint64_t key;
    uint64_t off;
    uint32_t len;
    uint32_t imm;
    uint64_t total;
} duet__tcp_hdr_t;
void duet__tcp_hdr_encode(const duet__tcp_hdr_t *h, uint8_t out[DUET__TCP_HDR]);
duet_status_t duet__tcp_hdr_decode(const uint8_t in[DUET__TCP_HDR], duet__tcp_hdr_t *h);

/* Receive state machine of one incoming stream: it says where the next bytes
 * go (directly into registered memory), the socket loop (or the fuzzer)
 * fills them and reports. Validation against the region table happens here. */
typedef struct duet__tcp_rx {
    uint8_t hdr[DUET__TCP_HDR];
    size_t have;         /* bytes of hdr, or of the payload */
    duet__tcp_hdr_t cur; /* header being served */
    uint8_t *dst;        /* payload target; NULL = discard */
    duet_status_t cur_status;
    bool in_payload;
    bool hello_done;
    uint8_t sink[4096];
} duet__tcp_rx_t;
typedef struct duet__tcp_rx_cb {
    /* Resolve (key, off, len) to memory; status on failure. */
    duet_status_t (*resolve)(void *arg, uint64_t key, uint64_t off, uint32_t len, uint8_t **out);
    /* A frame finished: HELLO, or the LAST chunk of a WRITE (status says
     * whether it was placed). Returning an error closes the stream. */
    duet_status_t (*frame)(void *arg, const duet__tcp_hdr_t *h, duet_status_t st);
    void *arg;
} duet__tcp_rx_cb_t;
/* Where the next received bytes go and at most how many. */
void duet__tcp_rx_want(duet__tcp_rx_t *rx, uint8_t **ptr, size_t *max);
/* `n` bytes arrived there. Error = protocol violation: close the stream. */
duet_status_t duet__tcp_rx_got(duet__tcp_rx_t *rx, size_t n, const duet__tcp_rx_cb_t *cb);

/* Blob decoders (for the fuzzer). */
duet_status_t duet__shm_blob_decode(const void *blob, size_t len, int *pid, uint64_t *nonce,
                                    uint32_t *conn_id);
duet_status_t duet__tcp_blob_decode(const void *blob, size_t len, uint32_t *addr, uint16_t *port,
                                    uint64_t *token, uint32_t *conn_id);
duet_status_t duet__sim_blob_decode(const void *blob, size_t len, uint64_t *sim_id,
                                    uint32_t *ctx_id, uint32_t *conn_id);

/* Validate the info a peer published for duet_m2n_connect (for the fuzzer). */
duet_status_t duet__m2n_info_decode(const duet_m2n_params_t *me, uint32_t peer, const void *info,
                                    size_t len, duet_rdma_rkey_t *rkey, const uint8_t **blob,
                                    size_t *blob_len);

#endif /* DUET_RDMA_INT_H */
