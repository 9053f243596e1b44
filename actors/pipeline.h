/* pipeline — the disaggregated serving pipeline: scheduler, router,
 * attention shards and expert shards as actors, their message schemas, and
 * the bring-up of a deployment: all nodes in one process (tests, `duet
 * generate --topology`, `duet run --single-process`) or one node per
 * process (only_node: `duet run`, `duet node`).
 *
 * Protocol (control plane = actor messages; bulk rows = rdma M2N/N2M).
 * Start-up, repeated every 50 ms until answered (processes may start in any
 * order; repeats are idempotent):
 *   attn/a ──pipe.wire{M2N/N2M info}──▶ expert/s ──pipe.wire──▶ attn/a
 *   router ──pipe.reset{epoch 0, members, table}──▶ attn/a (at its start, and the
 *     answer to a pipe.hello of a shard that lacks it)
 *   attn/a ──pipe.hello{incarnation, epoch}──▶ router    (every 100 ms, for life)
 *   expert/s ──pipe.up{incarnation, epoch}──▶ router     (every 100 ms, for life)
 *   attn/a ──pipe.ready{epoch}──▶ scheduler ──pipe.ready (ack)──▶ attn/a
 *     (ready = table with a live shard for every expert + every member
 *     expert shard wired; attn/a then monitors them)
 * Serving:
 *   client ──pipe.submit──▶ scheduler ──pipe.ack──▶ client (repeated until acked)
 *   scheduler ──pipe.step{epoch, iter, per-sequence ub/tokens}──▶ attn/a
 *     (every shard runs every iteration, an idle one with an empty batch)
 *   attn/a, per micro-batch i and sparse layer j, round r = (iter·S + j)·m + i:
 *       M2N write (slot r, header {magic, round, rows}) to every expert shard,
 *       then pipe.dispatch{epoch, round, layer, experts[], counts[]} to each.
 *   expert/s, once pipe.dispatch for round r came from EVERY attention shard
 *       (rounds strictly in order): data from the ring, grouped FFN, N2M write
 *       of each shard's rows back, then pipe.result{epoch, round, rows} to each.
 *   attn/a, once pipe.result for its oldest awaited round came from every
 *       expert shard: combine, the micro-batch's next layer; after the last:
 *       logits, sampling.
 *   attn/a ──pipe.step_done{epoch, iter, req[], token[], error}──▶ scheduler
 *   scheduler ──pipe.token{req, index, token, done, error}──▶ client
 *   client ──pipe.ack{req, next, resend}──▶ scheduler (every 8 tokens, at the
 *     end, on a duplicate; resend on a gap)
 *   scheduler ──pipe.free{req[]}──▶ attn/a (KV freed)
 *   attn/a ──pipe.load{per-expert rows}──▶ router
 *
 * Late, duplicate or stray pipe.dispatch / pipe.result messages (another
 * epoch, a round not awaited, a sender already counted) are counted and
 * dropped; data whose header does not match its control message fails the
 * step with PROTOCOL. pipe.dispatch / pipe.result that find no credit
 * towards their receiver wait (in order) for sys.writable.
 *
 * Membership and epochs. The router decides, per data-plane epoch, which
 * attention and expert shards take part, and the routing table over the
 * live expert shards: pipe.reset{epoch, attn_live[], expert_live[],
 * offsets, shards} to every shard (and the scheduler). The M2N/N2M groups
 * of an epoch hold its members only (ranked in index order); rounds go to,
 * and wait for, members only. Epoch 0 has every shard. Shards report every
 * 100 ms for as long as they live (attn: pipe.hello, expert: pipe.up, each
 * with {incarnation, epoch, member}); the router monitors them. A new epoch
 * starts when a member dies (sys.down at the router, or pipe.down from an
 * attention shard), when a shard outside the membership or in a new
 * incarnation reports (it joins: a restart, a return after a partition),
 * or on pipe.resync{epoch} for the current epoch (a step failed there: the
 * data plane is out of step; once per epoch). A shard behind gets the
 * current pipe.reset on its next report. A restarted router learns the
 * epoch from the reports (one newer than its own), gathers the shards that
 * report within 300 ms as members and starts the next epoch.
 *
 * Recovery, uniform by recomputation (scheduler.c). A step that fails (an
 * expert shard died or failed a round, a round made no progress for
 * round_timeout_ms, the epoch changed under it), a step that never answers
 * (2 x round_timeout_ms + 1 s), or the death of an attention shard
 * (monitor DOWN at the scheduler) do not end requests: the shard's
 * requests have their KV freed (pipe.free) and queue again as a prefill of
 * prompt + tokens already streamed, on any ready attention shard,
 * continuing at the next position. Sampling is deterministic per (seed,
 * position) (model/sampling.h) and tokens are streamed by index, so the
 * client sees no token twice and none missing, and greedy outputs equal a
 * fault-free run. The shard serves again once it reports ready in a newer
 * epoch; when it does, the scheduler sends pipe.free{keep_only} with the
 * requests it has there, and the shard frees every other KV sequence
 * (lost frees, requests moved elsewhere). So:
 *   - expert shard dies, its experts have replicas: the next epoch's table
 *     routes their rows to the replicas; the failed step is replayed;
 *   - expert shard dies, no replica: attention shards are not ready while
 *     an expert has no live shard; requests wait; its supervisor restarts
 *     it (weights re-mapped from the model files), it joins a new epoch and
 *     the requests are replayed. If no attention shard is ready for
 *     recover_timeout_ms the waiting requests end with an error naming the
 *     epoch's missing shards and experts;
 *   - attention shard dies: its requests are recomputed on the others (or
 *     on it once its supervisor restarted it and it rejoined);
 *   - router dies: restarted by its supervisor, rebuilt from the reports;
 *     requests in flight finish;
 *   - scheduler dies: its supervisor (the one of its node) restarts it
 *     with no requests. The client actor monitors the scheduler; on DOWN it
 *     submits every unfinished request again (repeated until acknowledged)
 *     with the tokens it already has (pipe.submit.generated): the new
 *     scheduler queues it as a prefill of prompt + those tokens, continuing
 *     at the next index, exactly like a replay. Each attention shard
 *     monitors the scheduler too (from its first acknowledged pipe.ready);
 *     on DOWN it asks the router for a new epoch (pipe.resync, repeated
 *     every 50 ms until one comes), so every shard reports pipe.ready
 *     again, to the new scheduler, which answers the first ready of each
 *     shard with pipe.free{keep_only} of its own requests there: the
 *     sequences of the old scheduler's requests are freed. A pipe.ack
 *     {next = INT32_MAX} for a request the scheduler still runs (the
 *     client had the whole stream from the old scheduler) ends it silently;
 *   - lost, duplicated, delayed messages: round messages are deduplicated
 *     by (epoch, round, sender); a duplicate pipe.step (same iteration) is
 *     dropped; a lost one, or a lost answer, fails the step by timeout and
 *     replays it. pipe.submit is repeated by the client until acknowledged
 *     (pipe.ack) and deduplicated by request id (also after the request
 *     finished: the last 4096 ids are remembered); pipe.token carries its
 *     index: the client drops duplicates, asks for a resend on a gap, and
 *     acknowledges the stream; the scheduler sends an unacknowledged tail
 *     again (see pipe.ack). pipe.free is idempotent (unknown ids are
 *     ignored) and a lost one is repaired by the keep_only list the
 *     scheduler sends each idle ready shard every 500 ms (and when a shard
 *     becomes ready in a new epoch);
 *   - a client actor (reply_to of pipe.submit; the gateway's) that stops
 *     or whose node goes silent: the scheduler monitors it; on DOWN every
 *     request of it is canceled and its KV freed.
 * A request replayed more than 16 times ends with its last error. */
#ifndef DUET_ACTORS_PIPELINE_H
#define DUET_ACTORS_PIPELINE_H

#include "actors/actors.h"
#include "base/base.h"
#include "mailbox/mailbox.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- messages ------------------------------------------------------------ */

typedef struct duet_pipe_submit {
    uint64_t req;
    duet_array_t prompt; /* int32 token ids */
    int32_t max_new;
    int32_t eos; /* -1: none */
    char *reply_to;
    /* sampling (model/sampling.h): temperature 0 = greedy */
    float temperature;
    int32_t top_k;
    float top_p;
    uint64_t seed;
    duet_array_t eos_ids; /* int32: more end ids (optional; any of eos, eos_ids ends it) */
    /* int32 (optional): the tokens the client already has, 0..count-1 of
     * the stream (a re-submission after the scheduler restarted): the
     * request continues at index count, recomputing prompt + these */
    duet_array_t generated;
} duet_pipe_submit_t;

static const duet_field_t duet_pipe_submit_fields[] = {
    DUET_FIELD(duet_pipe_submit_t, req, DUET_F_U64),
    DUET_FIELD_MAX(duet_pipe_submit_t, prompt, DUET_F_ARR_I32, 1 << 20),
    DUET_FIELD(duet_pipe_submit_t, max_new, DUET_F_I32),
    DUET_FIELD(duet_pipe_submit_t, eos, DUET_F_I32),
    DUET_FIELD_MAX(duet_pipe_submit_t, reply_to, DUET_F_STR, 127),
    DUET_FIELD(duet_pipe_submit_t, temperature, DUET_F_F32),
    DUET_FIELD(duet_pipe_submit_t, top_k, DUET_F_I32),
    DUET_FIELD(duet_pipe_submit_t, top_p, DUET_F_F32),
    DUET_FIELD(duet_pipe_submit_t, seed, DUET_F_U64),
    {"eos_ids", DUET_F_ARR_I32, (uint32_t)offsetof(duet_pipe_submit_t, eos_ids), 64, true, NULL},
    {"generated", DUET_F_ARR_I32, (uint32_t)offsetof(duet_pipe_submit_t, generated), 1 << 20, true,
     NULL},
};

typedef struct duet_pipe_token {
    uint64_t req;
    int32_t index; /* of the generated token; -1 with an error before any */
    int32_t token;
    bool done;
    char *error; /* "" = none */
} duet_pipe_token_t;

static const duet_field_t duet_pipe_token_fields[] = {
    DUET_FIELD(duet_pipe_token_t, req, DUET_F_U64),
    DUET_FIELD(duet_pipe_token_t, index, DUET_F_I32),
    DUET_FIELD(duet_pipe_token_t, token, DUET_F_I32),
    DUET_FIELD(duet_pipe_token_t, done, DUET_F_BOOL),
    DUET_FIELD_MAX(duet_pipe_token_t, error, DUET_F_STR, 1023),
};

typedef struct duet_pipe_ready {
    int32_t shard;
    uint64_t epoch; /* data-plane epoch the shard is wired in */
} duet_pipe_ready_t;

static const duet_field_t duet_pipe_ready_fields[] = {
    DUET_FIELD(duet_pipe_ready_t, shard, DUET_F_I32),
    DUET_FIELD(duet_pipe_ready_t, epoch, DUET_F_U64),
};

/* Tokens sampled in one iteration, one per sequence that asked for logits. */
typedef struct duet_pipe_step_done {
    int32_t shard;
    uint64_t epoch; /* of the pipe.step it answers */
    uint64_t iter;
    duet_array_t req;   /* uint64 */
    duet_array_t token; /* int32 */
    char *error;        /* "" = ok; otherwise the step failed as a whole */
} duet_pipe_step_done_t;

static const duet_field_t duet_pipe_step_done_fields[] = {
    DUET_FIELD(duet_pipe_step_done_t, shard, DUET_F_I32),
    DUET_FIELD(duet_pipe_step_done_t, epoch, DUET_F_U64),
    DUET_FIELD(duet_pipe_step_done_t, iter, DUET_F_U64),
    DUET_FIELD_MAX(duet_pipe_step_done_t, req, DUET_F_ARR_U64, 1 << 16),
    DUET_FIELD_MAX(duet_pipe_step_done_t, token, DUET_F_ARR_I32, 1 << 16),
    DUET_FIELD_MAX(duet_pipe_step_done_t, error, DUET_F_STR, 1023),
};

enum {
    DUET_PIPE_SEQ_LOGITS = 1u << 0, /* sample a token after this chunk */
    DUET_PIPE_SEQ_NEW = 1u << 1,    /* first chunk: open a KV sequence */
};

/* One iteration of one attention shard: sequence k is request req[k] in
 * micro-batch ub[k] with ntok[k] tokens (concatenated in `tokens`). */
typedef struct duet_pipe_step {
    uint64_t epoch; /* a step of an older epoch is answered "stale", not run */
    uint64_t iter;
    duet_array_t req;    /* uint64 */
    duet_array_t ub;     /* int32 */
    duet_array_t ntok;   /* int32 */
    duet_array_t flags;  /* uint32 DUET_PIPE_SEQ_* */
    duet_array_t tokens; /* int32 */
    /* per sequence: sampling parameters */
    duet_array_t temperature; /* float */
    duet_array_t top_k;       /* int32 */
    duet_array_t top_p;       /* float */
    duet_array_t seed;        /* uint64 */
} duet_pipe_step_t;

static const duet_field_t duet_pipe_step_fields[] = {
    DUET_FIELD(duet_pipe_step_t, epoch, DUET_F_U64),
    DUET_FIELD(duet_pipe_step_t, iter, DUET_F_U64),
    DUET_FIELD_MAX(duet_pipe_step_t, req, DUET_F_ARR_U64, 1 << 16),
    DUET_FIELD_MAX(duet_pipe_step_t, ub, DUET_F_ARR_I32, 1 << 16),
    DUET_FIELD_MAX(duet_pipe_step_t, ntok, DUET_F_ARR_I32, 1 << 16),
    DUET_FIELD_MAX(duet_pipe_step_t, flags, DUET_F_ARR_U32, 1 << 16),
    DUET_FIELD_MAX(duet_pipe_step_t, tokens, DUET_F_ARR_I32, 1 << 20),
    DUET_FIELD_MAX(duet_pipe_step_t, temperature, DUET_F_ARR_F32, 1 << 16),
    DUET_FIELD_MAX(duet_pipe_step_t, top_k, DUET_F_ARR_I32, 1 << 16),
    DUET_FIELD_MAX(duet_pipe_step_t, top_p, DUET_F_ARR_F32, 1 << 16),
    DUET_FIELD_MAX(duet_pipe_step_t, seed, DUET_F_ARR_U64, 1 << 16),
};

/* keep_only = false: free the KV of requests req[]; true: free every KV
 * sequence EXCEPT those of req[] (the scheduler's full list for the shard,
 * sent when the shard becomes ready in a new epoch: whatever a lost
 * pipe.free or a partition left behind goes). */
typedef struct duet_pipe_free {
    duet_array_t req; /* uint64 */
    bool keep_only;
} duet_pipe_free_t;

static const duet_field_t duet_pipe_free_fields[] = {
    DUET_FIELD_MAX(duet_pipe_free_t, req, DUET_F_ARR_U64, 1 << 16),
    DUET_FIELD_OPT(duet_pipe_free_t, keep_only, DUET_F_BOOL),
};

/* Expert shard s's rows for attention shard `shard`'s round are in the N2M
 * ring (error != "": the round failed there). */
typedef struct duet_pipe_result {
    uint64_t epoch;
    uint64_t round;
    int32_t layer;
    int32_t expert_shard;
    uint32_t rows;
    char *error;
} duet_pipe_result_t;

static const duet_field_t duet_pipe_result_fields[] = {
    DUET_FIELD(duet_pipe_result_t, epoch, DUET_F_U64),
    DUET_FIELD(duet_pipe_result_t, round, DUET_F_U64),
    DUET_FIELD(duet_pipe_result_t, layer, DUET_F_I32),
    DUET_FIELD(duet_pipe_result_t, expert_shard, DUET_F_I32),
    DUET_FIELD(duet_pipe_result_t, rows, DUET_F_U32),
    DUET_FIELD_MAX(duet_pipe_result_t, error, DUET_F_STR, 1023),
};

/* Attention shard `shard` wrote round `round` (layer `layer`) into the M2N
 * ring: counts[g] rows of expert experts[g], grouped in that order. */
typedef struct duet_pipe_dispatch {
    uint64_t epoch;
    uint64_t round;
    int32_t layer;
    int32_t shard;
    duet_array_t experts; /* int32 */
    duet_array_t counts;  /* int32 */
} duet_pipe_dispatch_t;

static const duet_field_t duet_pipe_dispatch_fields[] = {
    DUET_FIELD(duet_pipe_dispatch_t, epoch, DUET_F_U64),
    DUET_FIELD(duet_pipe_dispatch_t, round, DUET_F_U64),
    DUET_FIELD(duet_pipe_dispatch_t, layer, DUET_F_I32),
    DUET_FIELD(duet_pipe_dispatch_t, shard, DUET_F_I32),
    DUET_FIELD_MAX(duet_pipe_dispatch_t, experts, DUET_F_ARR_I32, 4096),
    DUET_FIELD_MAX(duet_pipe_dispatch_t, counts, DUET_F_ARR_I32, 4096),
};

/* Routing table: expert e is served by shards[offsets[e] .. offsets[e+1]). */
typedef struct duet_pipe_table {
    uint64_t version;
    duet_array_t offsets; /* uint32, n_experts + 1 */
    duet_array_t shards;  /* int32 */
} duet_pipe_table_t;

static const duet_field_t duet_pipe_table_fields[] = {
    DUET_FIELD(duet_pipe_table_t, version, DUET_F_U64),
    DUET_FIELD_MAX(duet_pipe_table_t, offsets, DUET_F_ARR_U32, 4097),
    DUET_FIELD_MAX(duet_pipe_table_t, shards, DUET_F_ARR_I32, 1 << 16),
};

/* An attention shard asks the router for the table (repeated until it has one). */
typedef struct duet_pipe_hello {
    int32_t shard;
    uint64_t incarnation; /* the shard's runtime epoch (a new one = a restart) */
    uint64_t epoch;       /* the data-plane epoch the shard is in */
    bool member;          /* it is a member of that epoch */
} duet_pipe_hello_t;

static const duet_field_t duet_pipe_hello_fields[] = {
    DUET_FIELD(duet_pipe_hello_t, shard, DUET_F_I32),
    DUET_FIELD_OPT(duet_pipe_hello_t, incarnation, DUET_F_U64),
    DUET_FIELD_OPT(duet_pipe_hello_t, epoch, DUET_F_U64),
    DUET_FIELD_OPT(duet_pipe_hello_t, member, DUET_F_BOOL),
};

typedef struct duet_pipe_load {
    int32_t shard;
    duet_array_t rows; /* uint64 per expert, since the last report */
} duet_pipe_load_t;

static const duet_field_t duet_pipe_load_fields[] = {
    DUET_FIELD(duet_pipe_load_t, shard, DUET_F_I32),
    DUET_FIELD_MAX(duet_pipe_load_t, rows, DUET_F_ARR_U64, 4096),
};

/* Data-plane wiring, before anything else: attn/a sends each expert/s its
 * M2N (dispatch, a sends) and N2M (combine, a receives) connection info;
 * expert/s connects both and answers with its own info for a. A shard is
 * ready once every pair is connected both ways. */
typedef struct duet_pipe_wire {
    uint64_t epoch;
    uint64_t incarnation; /* the sender's runtime epoch */
    int32_t rank;         /* attention shard (to an expert) or expert shard (to attention) */
    duet_bytes_t disp;    /* duet_m2n_info of the dispatch group for the receiver */
    duet_bytes_t comb;    /* the same for the combine group */
} duet_pipe_wire_t;

static const duet_field_t duet_pipe_wire_fields[] = {
    DUET_FIELD(duet_pipe_wire_t, epoch, DUET_F_U64),
    DUET_FIELD(duet_pipe_wire_t, incarnation, DUET_F_U64),
    DUET_FIELD(duet_pipe_wire_t, rank, DUET_F_I32),
    DUET_FIELD_MAX(duet_pipe_wire_t, disp, DUET_F_BIN, 1024),
    DUET_FIELD_MAX(duet_pipe_wire_t, comb, DUET_F_BIN, 1024),
};

/* Expert shard `shard` is up (repeated until the router answers with
 * pipe.reset); the router watches it from then on. */
typedef struct duet_pipe_up {
    int32_t shard;
    uint64_t epoch;
    uint64_t incarnation; /* the actor's runtime epoch: a new one = a restart */
    bool member;          /* it is a member of `epoch` */
} duet_pipe_up_t;

static const duet_field_t duet_pipe_up_fields[] = {
    DUET_FIELD(duet_pipe_up_t, shard, DUET_F_I32),
    DUET_FIELD(duet_pipe_up_t, epoch, DUET_F_U64),
    DUET_FIELD(duet_pipe_up_t, incarnation, DUET_F_U64),
    DUET_FIELD_OPT(duet_pipe_up_t, member, DUET_F_BOOL),
};

/* Attention shard -> router: expert shard `shard`, incarnation
 * `incarnation` (the one it was wired with), is down. */
typedef struct duet_pipe_down {
    int32_t shard;
    uint64_t incarnation;
} duet_pipe_down_t;

static const duet_field_t duet_pipe_down_fields[] = {
    DUET_FIELD(duet_pipe_down_t, shard, DUET_F_I32),
    DUET_FIELD(duet_pipe_down_t, incarnation, DUET_F_U64),
};

/* Router -> shards: data-plane epoch `epoch` begins. A shard behind it
 * fails its step in flight, rebuilds its M2N/N2M groups (rounds restart at
 * 0) and, for attention shards, rewires and reports pipe.ready again. Sent
 * to every shard when an expert shard that died comes back up; to a single
 * expert shard as the answer to its pipe.up. */
typedef struct duet_pipe_reset {
    uint64_t epoch;
    /* membership of the epoch (empty: every shard): 1 per attention shard /
     * expert shard that takes part; the data-plane groups hold only those,
     * ranked in index order */
    duet_array_t attn_live;   /* uint32 [n_attention] */
    duet_array_t expert_live; /* uint32 [n_expert_shards] */
    /* the routing table of the epoch (live expert shards only; empty: keep) */
    duet_array_t offsets; /* uint32, n_experts + 1 */
    duet_array_t shards;  /* int32 */
} duet_pipe_reset_t;

static const duet_field_t duet_pipe_reset_fields[] = {
    DUET_FIELD(duet_pipe_reset_t, epoch, DUET_F_U64),
    {"attn_live", DUET_F_ARR_U32, (uint32_t)offsetof(duet_pipe_reset_t, attn_live), 4096, true,
     NULL},
    {"expert_live", DUET_F_ARR_U32, (uint32_t)offsetof(duet_pipe_reset_t, expert_live), 4096, true,
     NULL},
    {"offsets", DUET_F_ARR_U32, (uint32_t)offsetof(duet_pipe_reset_t, offsets), 4097, true, NULL},
    {"shards", DUET_F_ARR_I32, (uint32_t)offsetof(duet_pipe_reset_t, shards), 1 << 16, true, NULL},
};

/* Attention shard -> router: a step of epoch `epoch` failed (a round timed
 * out, data did not match, an expert shard failed a round): the data plane
 * of that epoch is out of step. The router starts a new epoch (once per
 * epoch, however many shards report it). The scheduler may send it too
 * (shard -1) when a step never answers. */
typedef struct duet_pipe_resync {
    int32_t shard;
    uint64_t epoch;
    char *why;
} duet_pipe_resync_t;

static const duet_field_t duet_pipe_resync_fields[] = {
    DUET_FIELD(duet_pipe_resync_t, shard, DUET_F_I32),
    DUET_FIELD(duet_pipe_resync_t, epoch, DUET_F_U64),
    DUET_FIELD_MAX(duet_pipe_resync_t, why, DUET_F_STR, 1023),
};

/* Client -> scheduler: end request `req` now (a client went away). The
 * scheduler ends it with a pipe.token {done, error "canceled"} and frees its
 * KV (at once, or after the step it is in); unknown or finished ids are
 * ignored. */
typedef struct duet_pipe_cancel {
    uint64_t req;
} duet_pipe_cancel_t;

static const duet_field_t duet_pipe_cancel_fields[] = {
    DUET_FIELD(duet_pipe_cancel_t, req, DUET_F_U64),
};

#define DUET_PIPE_CANCELED "canceled"

/* Acknowledgements of the client stream (both directions):
 *   scheduler -> client {req}: pipe.submit of `req` arrived (the client
 *     repeats pipe.submit every 300 ms until it gets this or a token; a
 *     repeat is ignored by request id);
 *   client -> scheduler {req, next, resend}: the client has the stream's
 *     messages 0..next-1 in order (tokens, then the terminal error if any;
 *     INT32_MAX: all of it). resend: it saw a gap, send again from `next`.
 *     The scheduler keeps a finished request until its stream is
 *     acknowledged (or its client is down, or 10 s passed) and sends the
 *     unacknowledged tail again when the stream was quiet for 500 ms. */
typedef struct duet_pipe_ack {
    uint64_t req;
    int32_t next;
    bool resend;
} duet_pipe_ack_t;

static const duet_field_t duet_pipe_ack_fields[] = {
    DUET_FIELD(duet_pipe_ack_t, req, DUET_F_U64),
    DUET_FIELD_OPT(duet_pipe_ack_t, next, DUET_F_I32),
    DUET_FIELD_OPT(duet_pipe_ack_t, resend, DUET_F_BOOL),
};

/* Per-actor counters: anyone sends pipe.stats_req to an attention or expert
 * shard; it answers pipe.actor_stats to reply_to with the same cookie.
 * busy_ns: time spent computing (attention, dispatch, combine, logits; an
 * expert shard's gather, FFN and write-back); rounds: rounds dispatched
 * (attention) or computed (expert); tokens: tokens run (attention) or rows
 * computed (expert); bytes: data-plane bytes written and read; steps:
 * iterations completed (attention). */
typedef struct duet_pipe_stats_req {
    uint64_t cookie;
    char *reply_to;
} duet_pipe_stats_req_t;

static const duet_field_t duet_pipe_stats_req_fields[] = {
    DUET_FIELD(duet_pipe_stats_req_t, cookie, DUET_F_U64),
    DUET_FIELD_MAX(duet_pipe_stats_req_t, reply_to, DUET_F_STR, 127),
};

typedef struct duet_pipe_actor_stats {
    uint64_t cookie;
    char *actor;
    uint64_t busy_ns;
    uint64_t rounds;
    uint64_t tokens;
    uint64_t bytes;
    uint64_t steps;
    uint64_t kv_seqs;        /* attention: KV sequences open now */
    uint64_t kv_blocks_used; /* attention: KV blocks in use now */
    uint64_t epoch;          /* data-plane epoch the actor is in */
    /* data plane of its current epoch (duet_m2n_usage over its dispatch and
     * combine groups, after a progress call): zero once idle */
    uint64_t dp_slots_held;  /* writes arrived in rounds not yet released */
    uint64_t dp_credits_out; /* rounds written whose credit has not come back */
    uint64_t dp_inflight;    /* writes posted, not completed */
    uint64_t ctl_queued;     /* round messages waiting for actor credit (sys.writable) */
} duet_pipe_actor_stats_t;

static const duet_field_t duet_pipe_actor_stats_fields[] = {
    DUET_FIELD(duet_pipe_actor_stats_t, cookie, DUET_F_U64),
    DUET_FIELD_MAX(duet_pipe_actor_stats_t, actor, DUET_F_STR, 127),
    DUET_FIELD(duet_pipe_actor_stats_t, busy_ns, DUET_F_U64),
    DUET_FIELD(duet_pipe_actor_stats_t, rounds, DUET_F_U64),
    DUET_FIELD(duet_pipe_actor_stats_t, tokens, DUET_F_U64),
    DUET_FIELD(duet_pipe_actor_stats_t, bytes, DUET_F_U64),
    DUET_FIELD(duet_pipe_actor_stats_t, steps, DUET_F_U64),
    DUET_FIELD_OPT(duet_pipe_actor_stats_t, kv_seqs, DUET_F_U64),
    DUET_FIELD_OPT(duet_pipe_actor_stats_t, kv_blocks_used, DUET_F_U64),
    DUET_FIELD_OPT(duet_pipe_actor_stats_t, epoch, DUET_F_U64),
    DUET_FIELD_OPT(duet_pipe_actor_stats_t, dp_slots_held, DUET_F_U64),
    DUET_FIELD_OPT(duet_pipe_actor_stats_t, dp_credits_out, DUET_F_U64),
    DUET_FIELD_OPT(duet_pipe_actor_stats_t, dp_inflight, DUET_F_U64),
    DUET_FIELD_OPT(duet_pipe_actor_stats_t, ctl_queued, DUET_F_U64),
};

/* Message descriptors: one per type for the whole program (the codec's
 * registry knows a type by its descriptor's address, so a header-static
 * DUET_MSG_DEFINE would give every file its own unregistered copy). The
 * descriptors live in deploy.c; X(var, id, name, T, fields). */
#define DUET_PIPE_MESSAGES(X)                                                                      \
    X(duet_pipe_msg_submit, DUET_MSG_RANGE_SCHEDULER + 0x20, "pipe.submit", duet_pipe_submit_t,    \
      duet_pipe_submit_fields)                                                                     \
    X(duet_pipe_msg_token, DUET_MSG_RANGE_SCHEDULER + 0x21, "pipe.token", duet_pipe_token_t,       \
      duet_pipe_token_fields)                                                                      \
    X(duet_pipe_msg_ready, DUET_MSG_RANGE_SCHEDULER + 0x22, "pipe.ready", duet_pipe_ready_t,       \
      duet_pipe_ready_fields)                                                                      \
    X(duet_pipe_msg_step_done, DUET_MSG_RANGE_SCHEDULER + 0x23, "pipe.step_done",                  \
      duet_pipe_step_done_t, duet_pipe_step_done_fields)                                           \
    X(duet_pipe_msg_step, DUET_MSG_RANGE_ATTENTION + 0x20, "pipe.step", duet_pipe_step_t,          \
      duet_pipe_step_fields)                                                                       \
    X(duet_pipe_msg_free, DUET_MSG_RANGE_ATTENTION + 0x21, "pipe.free", duet_pipe_free_t,          \
      duet_pipe_free_fields)                                                                       \
    X(duet_pipe_msg_result, DUET_MSG_RANGE_ATTENTION + 0x22, "pipe.result", duet_pipe_result_t,    \
      duet_pipe_result_fields)                                                                     \
    X(duet_pipe_msg_dispatch, DUET_MSG_RANGE_EXPERT + 0x20, "pipe.dispatch", duet_pipe_dispatch_t, \
      duet_pipe_dispatch_fields)                                                                   \
    X(duet_pipe_msg_table, DUET_MSG_RANGE_ROUTER + 0x20, "pipe.table", duet_pipe_table_t,          \
      duet_pipe_table_fields)                                                                      \
    X(duet_pipe_msg_load, DUET_MSG_RANGE_ROUTER + 0x21, "pipe.load", duet_pipe_load_t,             \
      duet_pipe_load_fields)                                                                       \
    X(duet_pipe_msg_wire, DUET_MSG_RANGE_EXPERT + 0x21, "pipe.wire", duet_pipe_wire_t,             \
      duet_pipe_wire_fields)                                                                       \
    X(duet_pipe_msg_hello, DUET_MSG_RANGE_ROUTER + 0x22, "pipe.hello", duet_pipe_hello_t,          \
      duet_pipe_hello_fields)                                                                      \
    X(duet_pipe_msg_up, DUET_MSG_RANGE_ROUTER + 0x23, "pipe.up", duet_pipe_up_t,                   \
      duet_pipe_up_fields)                                                                         \
    X(duet_pipe_msg_reset, DUET_MSG_RANGE_ROUTER + 0x24, "pipe.reset", duet_pipe_reset_t,          \
      duet_pipe_reset_fields)                                                                      \
    X(duet_pipe_msg_down, DUET_MSG_RANGE_ROUTER + 0x25, "pipe.down", duet_pipe_down_t,             \
      duet_pipe_down_fields)                                                                       \
    X(duet_pipe_msg_stats_req, DUET_MSG_RANGE_ATTENTION + 0x30, "pipe.stats_req",                  \
      duet_pipe_stats_req_t, duet_pipe_stats_req_fields)                                           \
    X(duet_pipe_msg_actor_stats, DUET_MSG_RANGE_ATTENTION + 0x31, "pipe.actor_stats",              \
      duet_pipe_actor_stats_t, duet_pipe_actor_stats_fields)                                       \
    X(duet_pipe_msg_cancel, DUET_MSG_RANGE_SCHEDULER + 0x24, "pipe.cancel", duet_pipe_cancel_t,    \
      duet_pipe_cancel_fields)                                                                     \
    X(duet_pipe_msg_resync, DUET_MSG_RANGE_ROUTER + 0x26, "pipe.resync", duet_pipe_resync_t,       \
      duet_pipe_resync_fields)                                                                     \
    X(duet_pipe_msg_ack, DUET_MSG_RANGE_SCHEDULER + 0x25, "pipe.ack", duet_pipe_ack_t,             \
      duet_pipe_ack_fields)

#define DUET_PIPE_MSG_DECLARE(var, type_id, type_name, T, fields) DUET_MSG_DECLARE(var, T)
DUET_PIPE_MESSAGES(DUET_PIPE_MSG_DECLARE)

/* Register every pipe.* type (idempotent). */
DUET_API void duet_pipe_register_types(void);

/* ---- deployment in one process -------------------------------------------- */

typedef enum duet_pipe_control {
    DUET_PIPE_CONTROL_INPROC = 0, /* one node per actor, ZeroMQ inproc, real threads */
    DUET_PIPE_CONTROL_SIM = 1,    /* one node per actor on a simnet (virtual time, one thread) */
    DUET_PIPE_CONTROL_IPC = 2,    /* ZeroMQ ipc (ipc:///tmp/duet-pipe-<ipc_tag>-<node>.sock):
                                     nodes may live in different processes (only_node) */
} duet_pipe_control_t;

typedef struct duet_pipe_config {
    const char *model_dir;
    int n_attention;
    int n_expert_shards;
    const int *const *shard_experts; /* [n_expert_shards] expert ids held by each */
    const int *shard_n_experts;      /* [n_expert_shards] */
    int micro_batches;               /* m >= 1 */
    int token_budget;                /* tokens per attention shard per iteration (0: 256) */
    int max_seqs;                    /* sequences per micro-batch (0: 32) */
    int kv_blocks;                   /* per attention shard (0: 512) */
    int kv_block_size;               /* 0: 16 */
    const char *provider;            /* data plane: "sim" (default), "shm", "tcp" */
    duet_pipe_control_t control;
    uint64_t sim_seed;           /* simulation: seed of the simnet */
    uint64_t sim_latency_max_ns; /* simulation: link latency in [0, this] */
    uint32_t round_timeout_ms;   /* a step without progress fails after this (0: 5000) */
    int threads;                 /* compute threads per shard (0: 1) */
    /* Multi-process (DUET_PIPE_CONTROL_IPC): bring up only this node here
     * ("ctl": client, scheduler, router; "a<i>": attn/<i>; "e<s>":
     * expert/<s>); NULL = every node in this process. Every process of a
     * deployment passes the same configuration and ipc_tag. The data plane
     * must then be "shm" or "tcp". */
    const char *only_node;
    const char *ipc_tag;
    /* Fault plan text (mailbox.h: drop/delay/dup/reorder/... rules), applied
     * to every message the nodes send; NULL = none. */
    const char *faults;
    /* Node placement (optional; e.g. from a topology file): node names and
     * control-plane addresses (NULL entries or NULL array: derived as above),
     * and the node of each actor. n_nodes == 0: one node per actor, "ctl"
     * (client, scheduler, router), "a<i>", "e<s>". The client runs with the
     * scheduler. */
    int n_nodes;
    const char *const *node_names;
    const char *const *node_addrs;
    /* [n_nodes] IPv4 address each node's tcp data plane binds and advertises
     * to its peers (NULL array or entry: 127.0.0.1, this host only) */
    const char *const *node_hosts;
    const int *attention_node; /* [n_attention] node index */
    const int *expert_node;    /* [n_expert_shards] node index */
    int scheduler_node;
    int router_node;
    /* Optional: every pipe.token the client actor receives goes to this
     * hook (on the client actor's thread, one call at a time) instead of
     * the per-request results of duet_pipe_wait / duet_pipe_result, which
     * then hold nothing. */
    void (*on_token)(void *user, const duet_pipe_token_t *t);
    void *on_token_user;
    /* Observability: write a Chrome/Perfetto trace JSON of the pipeline
     * here when the deployment is destroyed (NULL = no trace). With
     * only_node the file is "<trace_path>.<node>" (merge them with
     * duet_pipe_trace_merge). trace_events: events kept per actor (0:
     * 262144; later events are counted and dropped). */
    const char *trace_path;
    size_t trace_events;
    /* Recovery (see the top of this file). recover_timeout_ms: requests
     * wait this long while no attention shard is ready (an expert without
     * a live shard, every attention shard down), then end with an error
     * (0: 10000). start_timeout_ms: duet_pipe_create, where the "ctl" node
     * runs, waits this long for every attention shard to be ready and
     * fails naming the ones that are not (0: 30000; in a simulation,
     * virtual time). no_restart: shards that stop are not restarted (by
     * default a supervisor per node restarts its attention and expert
     * shards, with their weights re-mapped from the model files). */
    uint32_t recover_timeout_ms;
    uint32_t start_timeout_ms;
    bool no_restart;
    /* Called about every 10 ms while duet_pipe_create waits for the
     * attention shards (real time only); false ends the wait with an error.
     * A launcher watches its node processes here (NULL: none). */
    bool (*start_poll)(void *user);
    void *start_poll_user;
    /* Compute backend per shard (duet_backend_open name; NULL array or
     * entry: "cpu"). Asking for one that is not built fails at start-up. */
    const char *const *attention_backend; /* [n_attention] */
    const char *const *expert_backend;    /* [n_expert_shards] */
    const int *attention_device;          /* [n_attention] device ordinal (cuda); NULL: 0 */
    const int *expert_device;             /* [n_expert_shards] */
    /* Fault injection, a compute error inside a shard: expert shard
     * fail_expert's fail_round-th round (counted over the deployment's
     * life, from 1) fails with "injected compute error" (0: none); with
     * fail_every, so does every fail_every-th round after it (1: every
     * round, a shard that can compute nothing). */
    int fail_expert;
    uint32_t fail_round;
    uint32_t fail_every;
    /* Data-plane integrity: every bulk write carries a checksum of its rows,
     * checked on arrival (a mismatch fails the round like any data error:
     * the step is replayed). corrupt_write (fault injection): attn/0's
     * corrupt_write-th dispatch write with rows gets one byte flipped after
     * its checksum is taken (0: none). */
    bool checksum;
    uint32_t corrupt_write;
    /* Node heartbeats (failure detection): heartbeat_ms 0 = the runtime's
     * 100 ms; a peer is down after heartbeat_misses silent intervals (0:
     * the runtime's 3). */
    uint32_t heartbeat_ms;
    uint32_t heartbeat_misses;
    /* Expert round coalescing: when an expert shard is about to compute
     * round r and later rounds of the same (iteration, layer) group are
     * already complete (every live attention shard's pipe.dispatch handled
     * and its M2N data arrived), it runs them in one expert pass (one read
     * of each expert's weights); results go back per round as before. It
     * never waits for a round to coalesce. > 0: on; < 0: off; 0: auto, on
     * for an expert shard whose held experts' weights of one layer are at
     * least 16 MiB (a pass then streams them from memory; smaller ones stay
     * in cache, where coalescing saves nothing and only holds the first
     * round's results back); the environment's DUET_EXPERT_COALESCE=0 / =1
     * turns auto off / on. */
    int expert_coalesce;
} duet_pipe_config_t;

typedef struct duet_pipe duet_pipe_t;

/* Load the model by role, create the data plane and the nodes, spawn the
 * actors and wait until every attention shard is ready. */
DUET_API duet_status_t duet_pipe_create(const duet_pipe_config_t *cfg, duet_pipe_t **out);
DUET_API void duet_pipe_destroy(duet_pipe_t **p_p);

/* Submit a request (thread-safe; ids unique per deployment). eos < 0: none.
 * Only where the "ctl" node runs. */
DUET_API duet_status_t duet_pipe_submit(duet_pipe_t *p, uint64_t req, const int32_t *prompt,
                                        int32_t n, int32_t max_new, int32_t eos);
/* The same with sampling: temperature 0 = greedy; otherwise top_k (0 =
 * off), top_p (1 = off), and a draw seeded by (seed, position), as
 * duet_engine_sample does, so any deployment draws the engine's tokens. */
typedef struct duet_pipe_sampling {
    float temperature;
    int32_t top_k;
    float top_p;
    uint64_t seed;
    /* more end-of-sequence ids besides `eos` (at most 64; NULL: none) */
    const int32_t *eos_ids;
    int32_t n_eos_ids;
} duet_pipe_sampling_t;
DUET_API duet_status_t duet_pipe_submit_sampled(duet_pipe_t *p, uint64_t req, const int32_t *prompt,
                                                int32_t n, int32_t max_new, int32_t eos,
                                                const duet_pipe_sampling_t *sp);
/* Wait until request `req` has at least `n_tokens` tokens or is done.
 * timeout_ms of wall time (threads) or virtual time (simulation). */
DUET_API duet_status_t duet_pipe_wait(duet_pipe_t *p, uint64_t req, int32_t n_tokens,
                                      uint32_t timeout_ms);
/* The tokens of `req` so far (copied into out, at most cap); *done and
 * error (may be NULL; "" = none, cap 256) as of now. Returns the count. */
DUET_API int32_t duet_pipe_result(duet_pipe_t *p, uint64_t req, int32_t *out, int32_t cap,
                                  bool *done, char *error, size_t error_cap);
/* Cancel request `req` (thread-safe, asynchronous): the scheduler ends it
 * with error DUET_PIPE_CANCELED and frees its KV blocks. */
DUET_API duet_status_t duet_pipe_cancel(duet_pipe_t *p, uint64_t req);
/* The attention-role model of this deployment (config, tokenizer-free);
 * NULL where the attention shards run in other processes only. */
DUET_API const struct duet_model *duet_pipe_model(const duet_pipe_t *p);
/* The node the scheduler runs on in this process (NULL: not here): other
 * client actors (a gateway's) may be spawned there and submit with their
 * own reply_to; the scheduler cancels their requests when they stop. */
DUET_API duet_node_t *duet_pipe_sched_node(duet_pipe_t *p);
/* Kill attention shard a (fault injection; restarted unless no_restart). */
DUET_API duet_status_t duet_pipe_kill_attention(duet_pipe_t *p, int shard);
/* Kill the router (fault injection; restarted unless no_restart). */
DUET_API duet_status_t duet_pipe_kill_router(duet_pipe_t *p);
/* Kill the scheduler (fault injection; restarted unless no_restart: the
 * client re-submits its open requests, they finish). */
DUET_API duet_status_t duet_pipe_kill_scheduler(duet_pipe_t *p);
/* Kill expert shard s (fault injection; restarted unless no_restart). */
DUET_API duet_status_t duet_pipe_kill_expert(duet_pipe_t *p, int shard);
/* Start expert shard s again after it stopped (as a supervisor would; with
 * supervision it is DUET_OK once the shard runs again). */
DUET_API duet_status_t duet_pipe_restart_expert(duet_pipe_t *p, int shard);
/* Hold expert shard s's messages for `ms` (an unreachable or hung shard). */
DUET_API duet_status_t duet_pipe_stall_expert(duet_pipe_t *p, int shard, uint32_t ms);
/* Simulation: messages delivered and virtual time so far (equal seeds give
 * equal runs); false on real threads. (The simnet's trace hash also covers
 * message bytes, and pipe.wire carries data-plane keys that differ from one
 * deployment to the next in a process.) */
DUET_API bool duet_pipe_sim_progress(duet_pipe_t *p, uint64_t *delivered, uint64_t *now_ns);
/* Faults of `kind` the deployment's fault plan injected so far. */
DUET_API uint64_t duet_pipe_fault_count(duet_pipe_t *p, duet_fault_kind_t kind);
/* Time of the deployment: virtual (simulation) or CLOCK_MONOTONIC ns since
 * its nodes were created (fault-plan times count from there). */
DUET_API uint64_t duet_pipe_now_ns(duet_pipe_t *p);
/* Let time pass: run the simulation for `ns` of virtual time, or sleep. */
DUET_API void duet_pipe_advance(duet_pipe_t *p, uint64_t ns);

/* Per-deployment counters (late/duplicate/stray control messages dropped). */
typedef struct duet_pipe_stats {
    uint64_t rounds_expert; /* rounds computed by all expert shards */
    uint64_t dropped_stray; /* pipe.dispatch / pipe.result for a round not awaited */
    uint64_t dropped_dup;   /* a second message for a (round, sender) */
    uint64_t steps;         /* iterations completed by all attention shards */
    uint64_t kv_waits;      /* requests that queued for KV blocks before placement */
    /* the scheduler's view, as of its last message handled */
    uint32_t running;          /* requests placed on an attention shard */
    uint32_t waiting;          /* requests queued for KV room */
    uint64_t kv_blocks_used;   /* reserved on all attention shards */
    uint64_t kv_blocks_total;  /* kv_blocks x attention shards */
    uint32_t shards_ready;     /* attention shards ready and not broken */
    uint32_t n_attention;
    uint64_t canceled;         /* requests ended by pipe.cancel */
    uint64_t replays;          /* requests re-placed and recomputed after a failure */
    uint64_t epochs;           /* data-plane epochs started by the router */
    uint64_t restarts;         /* shard restarts by the supervisors */
    uint64_t first_epoch_ns;   /* deployment time (duet_pipe_now_ns) the router started its
                                  first new epoch; 0: none yet */
    uint64_t rounds_coalesced; /* expert rounds that shared an earlier round's expert pass
                                  (expert_coalesce; each saved one weight read) */
} duet_pipe_stats_t;
DUET_API void duet_pipe_stats(duet_pipe_t *p, duet_pipe_stats_t *out);

/* Ask actor `actor` ("attn/<a>", "expert/<s>") for its counters with a
 * pipe.stats_req and wait up to timeout_ms for its pipe.actor_stats (the
 * strings of *out are not kept: out->actor is NULL). Only where the "ctl"
 * node runs. */
DUET_API duet_status_t duet_pipe_actor_stats(duet_pipe_t *p, const char *actor,
                                             duet_pipe_actor_stats_t *out, uint32_t timeout_ms);

/* Merge per-node trace files (trace_path with only_node) into one trace at
 * `out`; missing parts are skipped. */
DUET_API duet_status_t duet_pipe_trace_merge(const char *out, const char *const *parts, int n);

#ifdef __cplusplus
}
#endif
#endif /* DUET_ACTORS_PIPELINE_H */
