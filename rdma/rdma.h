/* rdma — duet's data plane: registered memory, one-sided writes with a 32-bit
 * immediate, completion queues, and M2N/N2M rounds with credit-based slot
 * reuse (after MegaScale-Infer's M2N library).
 *
 * Contract, the same for every provider (shm, tcp, verbs, sim):
 *  - A context owns one completion queue. Memory registered on it gets a
 *    remote key (duet_rdma_rkey_t) that a peer may write into.
 *  - A connection is set up by both sides: each creates a connection,
 *    publishes its blob (bytes the caller carries over the control plane) and
 *    connects with the peer's blob. No per-transfer set-up follows.
 *  - duet_rdma_write() copies len bytes from a registered local buffer into
 *    (rkey, offset) on the peer and carries a 32-bit immediate. The writer
 *    gets a SEND completion once the data is placed remotely (or the write
 *    failed); the receiver gets a RECV completion (imm, len, source
 *    connection), and the bytes are in its memory when that completion is
 *    returned. A 0-byte write carries only the immediate; its key is ignored.
 *  - Completions are polled with duet_rdma_poll(); duet_rdma_fd() is a file
 *    descriptor that an actor's loop can poll() together with its mailbox:
 *    drain with duet_rdma_poll(), call duet_rdma_arm(), poll once more, then
 *    sleep on the fd.
 *  - Errors are per connection: a dead or misbehaving peer fails the writes
 *    pending on that connection (DUET_ERR_CLOSED / _RANGE / _NOT_FOUND /
 *    _PROTOCOL in the SEND completion) and leaves other connections working.
 *  - A context, its connections and memory are used by one thread at a time
 *    (an actor); providers' internal threads are their own business.
 */
#ifndef DUET_RDMA_H
#define DUET_RDMA_H

#include "base/base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duet_rdma_ctx duet_rdma_ctx_t;
typedef struct duet_rdma_mr duet_rdma_mr_t;
typedef struct duet_rdma_conn duet_rdma_conn_t;
typedef struct duet_rdma_sim duet_rdma_sim_t;

/* Largest connection blob of any provider. */
#define DUET_RDMA_BLOB_MAX 128
/* Encoded size of a remote key (duet_rdma_rkey_pack). */
#define DUET_RDMA_RKEY_WIRE 32

/* What a peer needs to write into a registered region. Opaque to users:
 * carry it with duet_rdma_rkey_pack/unpack. */
typedef struct duet_rdma_rkey {
    uint64_t key;  /* provider key (verbs: rkey; others: region id) */
    uint64_t base; /* verbs: remote virtual address of offset 0; others 0 */
    uint64_t len;  /* bytes in the region (sender-side bounds check) */
} duet_rdma_rkey_t;

typedef struct duet_rdma_ctx_params {
    const char *provider; /* "shm", "tcp", "verbs", "sim" */
    /* tcp: IPv4 address to listen on (default 127.0.0.1).
     * verbs: device name; NULL = first device with an active port;
     *        "emu" = the in-process emulated device (tests). */
    const char *device;
    duet_rdma_sim_t *sim; /* sim: the fabric this context joins */
    uint32_t cq_depth;    /* completions the queue holds (default 32768) */
    uint32_t max_write;   /* writes in flight per connection (default 256) */
} duet_rdma_ctx_params_t;

enum {
    DUET_RDMA_ACCESS_LOCAL = 0,        /* source of writes only */
    DUET_RDMA_ACCESS_REMOTE_WRITE = 1, /* peers may write into it */
    DUET_RDMA_MEM_DEVICE = 2,          /* GPU memory (verbs: peer memory) */
};

enum {
    /* Jump ahead of queued bulk writes on this connection (credits, acks). */
    DUET_RDMA_WRITE_URGENT = 1,
};

typedef enum duet_rdma_cqe_kind {
    DUET_RDMA_CQE_SEND = 1, /* a write this side posted finished */
    DUET_RDMA_CQE_RECV = 2, /* a peer's write landed here */
} duet_rdma_cqe_kind_t;

typedef struct duet_rdma_cqe {
    duet_rdma_cqe_kind_t kind;
    duet_status_t status;   /* SEND: result of the write; RECV: always OK */
    uint32_t imm;           /* the write's immediate */
    uint64_t len;           /* bytes written */
    uint64_t wr_id;         /* SEND: the caller's wr_id; RECV: 0 */
    duet_rdma_conn_t *conn; /* SEND: connection written on; RECV: source */
    uint64_t conn_user;     /* the user value given to duet_rdma_conn_create */
    uint32_t conn_id;       /* the connection's id in its context (never reused) */
} duet_rdma_cqe_t;

/* ---- providers and contexts ------------------------------------------- */

/* NULL-terminated list of providers compiled in ("shm", "tcp", "sim", and
 * "verbs" when libibverbs was found). Static storage. */
DUET_API const char *const *duet_rdma_providers(void);
DUET_API bool duet_rdma_provider_exists(const char *name);

DUET_API duet_status_t duet_rdma_ctx_create(const duet_rdma_ctx_params_t *params,
                                            duet_rdma_ctx_t **ctx_out);
/* Destroys connections and memory still open on it. Accepts NULL. */
DUET_API void duet_rdma_ctx_destroy(duet_rdma_ctx_t **ctx_p);
DUET_API const char *duet_rdma_ctx_provider(const duet_rdma_ctx_t *ctx);

/* ---- memory ------------------------------------------------------------ */

/* Allocate `len` bytes of registered, zeroed memory that peers can write
 * into when `access` has REMOTE_WRITE (the only way with shm). */
DUET_API duet_status_t duet_rdma_mr_alloc(duet_rdma_ctx_t *ctx, size_t len, unsigned access,
                                          duet_rdma_mr_t **mr_out);
/* Register caller memory (must outlive the registration). shm supports this
 * for write sources only. With DUET_RDMA_MEM_DEVICE, `addr` is CUDA device
 * memory: verbs registers it through a dma-buf from the CUDA driver, else
 * through peer memory (nvidia-peermem); other providers refuse it. */
DUET_API duet_status_t duet_rdma_mr_reg(duet_rdma_ctx_t *ctx, void *addr, size_t len,
                                        unsigned access, duet_rdma_mr_t **mr_out);
/* Register a dma-buf (GPU memory exported by the driver); verbs only. */
DUET_API duet_status_t duet_rdma_mr_reg_dmabuf(duet_rdma_ctx_t *ctx, int fd, uint64_t offset,
                                               size_t len, uint64_t iova, unsigned access,
                                               duet_rdma_mr_t **mr_out);
DUET_API void duet_rdma_mr_dereg(duet_rdma_mr_t **mr_p);
DUET_API void *duet_rdma_mr_ptr(const duet_rdma_mr_t *mr);
DUET_API size_t duet_rdma_mr_len(const duet_rdma_mr_t *mr);
DUET_API duet_rdma_rkey_t duet_rdma_mr_rkey(const duet_rdma_mr_t *mr);

DUET_API void duet_rdma_rkey_pack(const duet_rdma_rkey_t *rkey, uint8_t out[DUET_RDMA_RKEY_WIRE]);
/* Validates the bytes (untrusted: they come over the control plane). */
DUET_API duet_status_t duet_rdma_rkey_unpack(const void *buf, size_t len, duet_rdma_rkey_t *out);

/* ---- connections ------------------------------------------------------- */

DUET_API duet_status_t duet_rdma_conn_create(duet_rdma_ctx_t *ctx, uint64_t user,
                                             duet_rdma_conn_t **conn_out);
/* This side's blob for the peer; *len_out <= DUET_RDMA_BLOB_MAX. */
DUET_API duet_status_t duet_rdma_conn_blob(const duet_rdma_conn_t *conn, void *buf, size_t cap,
                                           size_t *len_out);
/* Connect with the peer's blob (untrusted bytes: validated). */
DUET_API duet_status_t duet_rdma_conn_connect(duet_rdma_conn_t *conn, const void *blob, size_t len);
/* OK while usable; otherwise the status that ended it. */
DUET_API duet_status_t duet_rdma_conn_status(const duet_rdma_conn_t *conn);
DUET_API uint64_t duet_rdma_conn_user(const duet_rdma_conn_t *conn);
/* Completions of a destroyed connection that were not polled yet are
 * discarded (ids are never reused). Accepts NULL. */
DUET_API void duet_rdma_conn_destroy(duet_rdma_conn_t **conn_p);

/* ---- data path --------------------------------------------------------- */

/* Post a write. Synchronous failure (bad arguments, dead connection, queue
 * full = DUET_ERR_AGAIN) returns an error and produces no completion;
 * otherwise exactly one SEND completion with `wr_id` follows. The source
 * bytes must stay registered and unchanged until then. Writes on one
 * connection are placed in order, except that URGENT ones may overtake
 * queued bulk writes. A failed write may have placed part of its bytes. */
DUET_API duet_status_t duet_rdma_write(duet_rdma_conn_t *conn, const duet_rdma_mr_t *src,
                                       size_t src_off, const duet_rdma_rkey_t *dst,
                                       uint64_t dst_off, size_t len, uint32_t imm, unsigned flags,
                                       uint64_t wr_id);

/* Up to `max` completions; returns how many (>= 0) or a negative status. */
DUET_API int duet_rdma_poll(duet_rdma_ctx_t *ctx, duet_rdma_cqe_t *out, int max);
/* Readable when completions may be waiting (after duet_rdma_arm). */
DUET_API int duet_rdma_fd(const duet_rdma_ctx_t *ctx);
DUET_API duet_status_t duet_rdma_arm(duet_rdma_ctx_t *ctx);
/* Arm, then sleep on the fd until something may be ready or timeout_ns
 * passes (negative = forever). Returns OK or DUET_ERR_TIMEOUT. */
DUET_API duet_status_t duet_rdma_wait(duet_rdma_ctx_t *ctx, int64_t timeout_ns);

/* ---- sim provider: fault injection ------------------------------------- */

DUET_API duet_status_t duet_rdma_sim_create(duet_rdma_sim_t **sim_out);
DUET_API void duet_rdma_sim_destroy(duet_rdma_sim_t **sim_p);
/* Clock in ns (default: duet_now_ns); a virtual clock makes runs repeatable. */
DUET_API void duet_rdma_sim_set_clock(duet_rdma_sim_t *sim, uint64_t (*now)(void *arg), void *arg);
/* Every write from `from` to `to` lands `delay_ns` after it was posted
 * (NULL endpoints = all). */
DUET_API void duet_rdma_sim_set_delay(duet_rdma_sim_t *sim, const duet_rdma_ctx_t *from,
                                      const duet_rdma_ctx_t *to, uint64_t delay_ns);
/* Hold (true) or release every write into `ctx`. */
DUET_API void duet_rdma_sim_stall(duet_rdma_sim_t *sim, const duet_rdma_ctx_t *ctx, bool stalled);
/* The peer is lost: writes to or from it fail with DUET_ERR_CLOSED. */
DUET_API void duet_rdma_sim_kill(duet_rdma_sim_t *sim, const duet_rdma_ctx_t *ctx);
/* Deliver what is due; returns writes delivered. */
DUET_API size_t duet_rdma_sim_progress(duet_rdma_sim_t *sim);

/* shm provider: unlink the shared-memory names a dead process left behind. */
DUET_API void duet_rdma_shm_cleanup_pid(int pid);

/* ---- M2N / N2M rounds -------------------------------------------------- *
 * A group of M senders and N receivers. Each receiver holds, per sender, a
 * ring of `slots` slots of `slot_size` bytes. Round r goes into slot
 * r % slots; round r is complete at a receiver when every sender's write for
 * r has arrived (a 0-byte write counts). A sender may write round r to a
 * receiver only after that receiver released round r - slots (credits,
 * returned as urgent 0-byte writes so they never wait behind bulk data).
 * There is no global synchronisation and no per-round set-up. Rounds are
 * consecutive integers starting at 0 (iteration, layer, micro-batch
 * flattened); a receiver releases them in order. N2M is the same group with
 * the roles swapped. Several groups may share a context.
 */
typedef struct duet_m2n duet_m2n_t;

typedef struct duet_m2n_params {
    duet_rdma_ctx_t *ctx; /* caller-owned, outlives the group */
    uint32_t n_senders;   /* M */
    uint32_t n_receivers; /* N */
    bool is_sender;
    uint32_t rank;    /* index among senders or among receivers */
    uint32_t slots;   /* ring depth per sender (>= 1) */
    size_t slot_size; /* most bytes one sender writes in one round */
    uint32_t group_id;
    /* Waiting calls poll this long before sleeping on the fd (0 = 20 us,
     * negative = sleep at once). */
    int64_t spin_ns;
} duet_m2n_params_t;

DUET_API duet_status_t duet_m2n_create(const duet_m2n_params_t *params, duet_m2n_t **m2n_out);
DUET_API void duet_m2n_destroy(duet_m2n_t **m2n_p);
/* Number of peers (N for a sender, M for a receiver). */
DUET_API uint32_t duet_m2n_peers(const duet_m2n_t *m2n);
/* Bytes to hand to peer `peer` (its duet_m2n_connect) over the control plane. */
DUET_API duet_status_t duet_m2n_info(const duet_m2n_t *m2n, uint32_t peer, void *buf, size_t cap,
                                     size_t *len_out);
#define DUET_M2N_INFO_MAX (DUET_RDMA_BLOB_MAX + DUET_RDMA_RKEY_WIRE + 32)
/* Connect to peer `peer` with the info it published for us (validated). */
DUET_API duet_status_t duet_m2n_connect(duet_m2n_t *m2n, uint32_t peer, const void *info,
                                        size_t len);

/* Sender: write `len` bytes of `src` (registered on the group's context) as
 * round `round` to receiver `dst`; waits up to timeout_ns for a credit
 * (0 = do not wait: DUET_ERR_AGAIN). `src` must not change until
 * duet_m2n_flush() returns. */
DUET_API duet_status_t duet_m2n_send(duet_m2n_t *m2n, uint64_t round, uint32_t dst,
                                     const duet_rdma_mr_t *src, size_t src_off, size_t len,
                                     int64_t timeout_ns);
/* Sender: wait until every posted write finished; the first failure wins. */
DUET_API duet_status_t duet_m2n_flush(duet_m2n_t *m2n, int64_t timeout_ns);
/* Receiver: wait until round `round` is complete. DUET_ERR_TIMEOUT (with the
 * missing senders named in duet_error() and by duet_m2n_missing) or
 * DUET_ERR_CLOSED when a missing sender's connection died. */
DUET_API duet_status_t duet_m2n_recv(duet_m2n_t *m2n, uint64_t round, int64_t timeout_ns);
/* Receiver: sender `src`'s bytes for a complete (unreleased) round. */
DUET_API duet_status_t duet_m2n_data(const duet_m2n_t *m2n, uint64_t round, uint32_t src,
                                     const void **data_out, size_t *len_out);
/* Receiver: senders whose write for `round` has not arrived. */
DUET_API size_t duet_m2n_missing(const duet_m2n_t *m2n, uint64_t round, uint32_t *ranks,
                                 size_t cap);
/* Receiver: give round `round` (the oldest unreleased) back to the senders. */
DUET_API duet_status_t duet_m2n_release(duet_m2n_t *m2n, uint64_t round);
/* Handle whatever completions are ready without waiting. */
DUET_API duet_status_t duet_m2n_progress(duet_m2n_t *m2n);
/* Slots and credits in use, read-only (leak checks after a drain; call
 * duet_m2n_progress first so that credits that arrived are counted).
 * Receiver: slots_held = writes that arrived in rounds not yet released.
 * Sender: credits_out = rounds written to a receiver and not yet released
 * by it (summed over receivers), inflight = writes posted and not
 * completed. All zero once every round written was consumed. */
typedef struct duet_m2n_usage {
    uint64_t slots_held;
    uint64_t credits_out;
    uint32_t inflight;
} duet_m2n_usage_t;
DUET_API void duet_m2n_usage(const duet_m2n_t *m2n, duet_m2n_usage_t *out);

#ifdef __cplusplus
}
#endif
#endif /* DUET_RDMA_H */
