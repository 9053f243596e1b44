/* Private to actors/: the arguments the bring-up hands each pipeline actor.
 * Everything pointed to is owned by the bring-up (deploy.c) and outlives
 * the actors; an actor uses its own objects from its own thread only. */
#ifndef DUET_ACTORS_PIPE_INT_H
#define DUET_ACTORS_PIPE_INT_H

#include <stdatomic.h>

#include "actors/pipeline.h"
#include "actors/trace.h"
#include "model/backend.h"
#include "model/forward.h"
#include "model/model.h"
#include "rdma/rdma.h"

/* Rows on the data plane: a header, then rows of `hidden` floats. */
#define DUET_PIPE_MAGIC 0x44554554u /* "DUET" */
typedef struct duet_pipe_hdr {
    uint32_t magic;
    uint32_t rows;
    uint64_t round;
    uint32_t sum; /* FNV-1a of the rows' bytes when the deployment checks them (else 0) */
    uint32_t pad;
} duet_pipe_hdr_t;

static inline uint32_t duet__pipe_sum(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}

typedef struct duet_pipe_counters {
    atomic_uint_fast64_t rounds_expert;
    atomic_uint_fast64_t dropped_stray;
    atomic_uint_fast64_t dropped_dup;
    atomic_uint_fast64_t steps;
    atomic_uint_fast64_t kv_waits;
    /* published by the scheduler after each message (duet_pipe_stats) */
    atomic_uint_fast64_t running, waiting, kv_used, shards_ready, canceled;
    atomic_uint_fast64_t ready_mask;   /* attention shards ready (first 64) */
    atomic_uint_fast64_t replays;      /* requests re-placed for recomputation */
    atomic_uint_fast64_t epochs;       /* data-plane epochs the router started */
    atomic_uint_fast64_t epoch_ns[32]; /* when the first 32 of them started (actor time) */
    atomic_uint_fast64_t rounds_coalesced; /* expert rounds run in an earlier round's pass */
} duet_pipe_counters_t;

typedef struct duet_pipe_geom {
    int n_attention, n_expert_shards, m;
    int max_tokens_ub; /* tokens one micro-batch may carry */
    int max_seqs_ub;
    int n_sparse; /* sparse layers (rounds per micro-batch and iteration) */
    size_t slot_size;
    int ring; /* send-buffer depth in rounds */
    uint32_t round_timeout_ms;
    bool checksum; /* data-plane rows carry a checksum, checked on arrival */
    int coalesce;  /* expert round coalescing: > 0 on, < 0 off, 0 auto (expert.c) */
} duet_pipe_geom_t;

typedef struct duet_pipe_attn_arg {
    int shard;
    const duet_pipe_geom_t *geom;
    const duet_model_t *model; /* attention role */
    duet_backend_t *be;
    int kv_blocks, kv_block_size;
    const char *provider;  /* data plane */
    const char *dp_host;   /* tcp data plane: address to bind (NULL: 127.0.0.1) */
    duet_rdma_sim_t *rsim; /* provider "sim" */
    duet_pipe_counters_t *counters;
    duet_obs_t *obs;               /* counters and trace events of this actor */
    atomic_int *corrupt_countdown; /* flip a byte of a dispatch write when it reaches 0 */
    /* set by the actor itself (duet__pipe_dp_open) */
    duet_rdma_ctx_t *ctx;
    duet_m2n_t *dispatch; /* sender */
    duet_m2n_t *combine;  /* receiver */
    duet_rdma_mr_t *send_mr;
} duet_pipe_attn_arg_t;

typedef struct duet_pipe_expert_arg {
    int shard;
    const duet_pipe_geom_t *geom;
    const duet_model_t *model; /* expert role */
    duet_backend_t *be;
    const int *experts;
    int n_experts;
    const char *provider;
    const char *dp_host;
    duet_rdma_sim_t *rsim;
    duet_pipe_counters_t *counters;
    duet_obs_t *obs;
    atomic_int *fail_countdown; /* injected compute error when it reaches 0 (NULL: none) */
    int fail_every;             /* then set it to this (0: once) */
    /* set by the actor itself */
    duet_rdma_ctx_t *ctx;
    duet_m2n_t *dispatch; /* receiver */
    duet_m2n_t *combine;  /* sender */
    duet_rdma_mr_t *send_mr;
} duet_pipe_expert_arg_t;

typedef struct duet_pipe_router_arg {
    int n_attention;
    int n_expert_shards;
    int n_experts;
    uint32_t *offsets; /* n_experts + 1 */
    int32_t *shards;
    duet_pipe_counters_t *counters;
} duet_pipe_router_arg_t;

typedef struct duet_pipe_sched_arg {
    const duet_pipe_geom_t *geom;
    int token_budget;
    int kv_blocks, kv_block_size;
    int max_seq_len;
    uint32_t recover_timeout_ms;
    duet_pipe_counters_t *counters;
    duet_obs_t *obs;
} duet_pipe_sched_arg_t;

/* A shard's data plane: its context, its end of the dispatch group
 * (attention sends, experts receive) and of the combine group (the other
 * way), and its registered send buffers (ring x peers x slot). */
duet_status_t duet__pipe_dp_open(const char *provider, const char *host, duet_rdma_sim_t *rsim,
                                 const duet_pipe_geom_t *g, bool attention, int rank,
                                 const uint32_t *alive_a, const uint32_t *alive_e,
                                 duet_rdma_ctx_t **ctx, duet_m2n_t **disp, duet_m2n_t **comb,
                                 duet_rdma_mr_t **mr);
/* Membership of an epoch: alive[i] != 0 for members (NULL: all n). The
 * groups of the epoch hold the members only, ranked in index order. */
int duet__pipe_grank(const uint32_t *alive, int i);
int duet__pipe_count(const uint32_t *alive, int n);
void duet__pipe_dp_close(duet_rdma_ctx_t **ctx, duet_m2n_t **disp, duet_m2n_t **comb,
                         duet_rdma_mr_t **mr);
/* Connect this shard's two groups to peer `peer` with the info it sent. */
duet_status_t duet__pipe_dp_connect(duet_m2n_t *disp, duet_m2n_t *comb, int peer,
                                    const duet_pipe_wire_t *w);
/* Send peer `peer` (actor `to`) this shard's info for it. */
/* Whether round `round`'s data has all arrived at receiver `g`, waiting a
 * short slice at most. A round's control messages take another path than
 * its data and can overtake it; a receiver that blocked here for the whole
 * round timeout would not serve its mailbox (a new epoch, a DOWN) until
 * then. *since (actor time; 0 = not waiting yet) keeps when the wait began
 * across calls. DUET_OK: go on (the data is in, or the wait is over and
 * the caller's duet_m2n_recv(.., 0) says what is missing); DUET_ERR_AGAIN:
 * not yet: a sys.timer with `tag` fires after DUET_PIPE_DATA_RETRY_NS
 * (*armed: one is pending; the caller clears it when it fires). */
#define DUET_PIPE_DATA_SLICE_NS 2000000ull
#define DUET_PIPE_DATA_RETRY_NS 1000000ull
duet_status_t duet__pipe_data_wait(duet_actor_t *self, duet_m2n_t *g, uint64_t round,
                                   uint64_t *since, uint32_t timeout_ms, bool *armed, uint64_t tag);
/* Answer a pipe.stats_req with this actor's counters, and the slots and
 * credits in use in its data-plane groups (disp, comb may be NULL; they get
 * a progress call first) and its round messages queued for actor credit.
 * Best effort: a bad reply_to is logged, never an error that would stop
 * the actor. */
void duet__pipe_reply_stats(duet_actor_t *self, const duet_obs_t *obs,
                            const duet_pipe_stats_req_t *req, uint64_t kv_seqs,
                            uint64_t kv_blocks_used, uint64_t epoch, duet_m2n_t *disp,
                            duet_m2n_t *comb, uint64_t ctl_queued);
duet_status_t duet__pipe_dp_send_wire(duet_actor_t *self, const char *to, uint64_t epoch,
                                      int my_rank, int peer, duet_m2n_t *disp, duet_m2n_t *comb);

/* The deployment's counters (chaos checks). */
duet_pipe_counters_t *duet__pipe_counters(duet_pipe_t *p);
/* Actor time (duet_actor_now_ns) of the deployment's start: 0 under the
 * simulation, the nodes' creation on real threads. */
uint64_t duet__pipe_time_base(duet_pipe_t *p);

extern const duet_actor_ops_t duet__pipe_attention_ops;
extern const duet_actor_ops_t duet__pipe_expert_ops;
extern const duet_actor_ops_t duet__pipe_router_ops;
extern const duet_actor_ops_t duet__pipe_scheduler_ops;

#endif
