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
} duet_pipe_hdr_t;

typedef struct duet_pipe_counters {
    atomic_uint_fast64_t rounds_expert;
    atomic_uint_fast64_t dropped_stray;
    atomic_uint_fast64_t dropped_dup;
    atomic_uint_fast64_t steps;
    atomic_uint_fast64_t kv_waits;
    /* published by the scheduler after each message (duet_pipe_stats) */
    atomic_uint_fast64_t running, waiting, kv_used, shards_ready, canceled;
} duet_pipe_counters_t;

typedef struct duet_pipe_geom {
    int n_attention, n_expert_shards, m;
    int max_tokens_ub; /* tokens one micro-batch may carry */
    int max_seqs_ub;
    int n_sparse; /* sparse layers (rounds per micro-batch and iteration) */
    size_t slot_size;
    int ring; /* send-buffer depth in rounds */
    uint32_t round_timeout_ms;
} duet_pipe_geom_t;

typedef struct duet_pipe_attn_arg {
    int shard;
    const duet_pipe_geom_t *geom;
    const duet_model_t *model; /* attention role */
    duet_backend_t *be;
    int kv_blocks, kv_block_size;
    const char *provider;  /* data plane */
    duet_rdma_sim_t *rsim; /* provider "sim" */
    duet_pipe_counters_t *counters;
    duet_obs_t *obs; /* counters and trace events of this actor */
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
    duet_rdma_sim_t *rsim;
    duet_pipe_counters_t *counters;
    duet_obs_t *obs;
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
} duet_pipe_router_arg_t;

typedef struct duet_pipe_sched_arg {
    const duet_pipe_geom_t *geom;
    int token_budget;
    int kv_blocks, kv_block_size;
    int max_seq_len;
    duet_pipe_counters_t *counters;
    duet_obs_t *obs;
} duet_pipe_sched_arg_t;

/* A shard's data plane: its context, its end of the dispatch group
 * (attention sends, experts receive) and of the combine group (the other
 * way), and its registered send buffers (ring x peers x slot). */
duet_status_t duet__pipe_dp_open(const char *provider, duet_rdma_sim_t *rsim,
                                 const duet_pipe_geom_t *g, bool attention, int rank,
                                 duet_rdma_ctx_t **ctx, duet_m2n_t **disp, duet_m2n_t **comb,
                                 duet_rdma_mr_t **mr);
void duet__pipe_dp_close(duet_rdma_ctx_t **ctx, duet_m2n_t **disp, duet_m2n_t **comb,
                         duet_rdma_mr_t **mr);
/* Connect this shard's two groups to peer `peer` with the info it sent. */
duet_status_t duet__pipe_dp_connect(duet_m2n_t *disp, duet_m2n_t *comb, int peer,
                                    const duet_pipe_wire_t *w);
/* Send peer `peer` (actor `to`) this shard's info for it. */
/* Answer a pipe.stats_req with this actor's counters. Best effort: a bad
 * reply_to is logged, never an error that would stop the actor. */
void duet__pipe_reply_stats(duet_actor_t *self, const duet_obs_t *obs,
                            const duet_pipe_stats_req_t *req);
duet_status_t duet__pipe_dp_send_wire(duet_actor_t *self, const char *to, uint64_t epoch,
                                      int my_rank, int peer, duet_m2n_t *disp, duet_m2n_t *comb);

extern const duet_actor_ops_t duet__pipe_attention_ops;
extern const duet_actor_ops_t duet__pipe_expert_ops;
extern const duet_actor_ops_t duet__pipe_router_ops;
extern const duet_actor_ops_t duet__pipe_scheduler_ops;

#endif
