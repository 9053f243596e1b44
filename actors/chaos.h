/* chaos — a workload under a fault plan against a fault-free reference,
 * with the recovery invariants checked (`duet chaos`, tests/faults).
 *
 * A run: N requests with prompts drawn from the workload seed (greedy, so
 * the tokens are a function of the prompt), submitted spread over
 * arrival_ms, against a deployment with the fault plan (mailbox.h rules:
 * drop, delay, dup, reorder, partition, crash, stall; times count from the
 * deployment's start, virtual under the simulation). Checked:
 *   - exactly one terminal pipe.token (done) per request; none after it;
 *   - tokens of every stream numbered 0, 1, 2, ... (none duplicated,
 *     missing or reordered);
 *   - every completed request's tokens equal the reference's; a request
 *     that ended with an error has a prefix of them;
 *   - lost (no answer at all by the deadline) and hung (started, not done
 *     by the deadline) requests;
 *   - after drain: no request running or queued at the scheduler, zero KV
 *     blocks reserved there, zero KV sequences and blocks held by every
 *     attention shard; in every attention and expert shard's data-plane
 *     groups (M2N dispatch, N2M combine) zero slots holding unreleased
 *     rounds, zero credits not returned and zero writes in flight, and no
 *     round message waiting for actor credit;
 *   - detection: the first crash to the first new data-plane epoch: at
 *     once for a crash the runtime reports (DOWN), else 3 missed heartbeats
 *     after the last one heard, so at most 4 heartbeat intervals (checked
 *     under the simulation; on real threads reported only: a loaded host
 *     delays it);
 *   - stall: per fault, the longest gap in the token stream in the window
 *     after it (and the fault-free run's longest gap, for comparison).
 * (Data-plane groups are rebuilt with every epoch: what the check sees is
 * the last epoch's, which must end with nothing held.) */
#ifndef DUET_ACTORS_CHAOS_H
#define DUET_ACTORS_CHAOS_H

#include "actors/pipeline.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duet_chaos_config {
    duet_pipe_config_t pipe;    /* the deployment; its `faults` and on_token are set per run */
    uint64_t workload_seed;     /* prompts */
    int requests;               /* 0: 8 */
    int max_new;                /* tokens per request (0: 16) */
    int prompt_min, prompt_max; /* prompt lengths (0: 3 .. 20) */
    uint32_t arrival_ms;        /* requests arrive spread over this (0: all at once) */
    uint32_t deadline_ms;       /* after the last arrival (0: 60000; virtual under sim) */
    uint32_t heartbeat_ms;      /* for the detection bound (0: the runtime's 100) */
    uint32_t start_ms;          /* the first request goes in at this deployment time, so that
                                   fault times mean the same in every run (0: 100) */
    /* Optional: called about every 5 ms while the requests run, with the
     * time since the first submit (faults from outside: kill -9 of a node
     * process, and its restart). */
    void (*tick)(void *user, duet_pipe_t *p, double since_submit_ms);
    void *tick_user;
} duet_chaos_config_t;

typedef struct duet_chaos_ref duet_chaos_ref_t;

#define DUET_CHAOS_MAX_FAULTS 16

typedef struct duet_chaos_result {
    int requests, completed, errored, lost, hung, mismatched, order_errors, terminal_errors;
    uint64_t faults[DUET_FAULT_KIND_COUNT]; /* injected, by kind */
    uint64_t replays, epochs, restarts;
    uint64_t leaked_kv_blocks, leaked_kv_seqs; /* attention shards after drain */
    uint64_t leaked_dp_slots;   /* data-plane slots holding unreleased rounds, all shards */
    uint64_t leaked_dp_credits; /* credits not returned + writes in flight, all shards */
    uint64_t leaked_ctl_queued; /* round messages still waiting for actor credit */
    int shards_checked;         /* shards that answered the after-drain check */
    uint64_t sched_left;                       /* running + waiting + KV blocks at the scheduler */
    double detect_ms;                          /* first crash -> new epoch; -1: no crash */
    bool detect_late;                          /* > 3 heartbeat intervals */
    int n_stalls;
    double stall_at_ms[DUET_CHAOS_MAX_FAULTS];
    double stall_ms[DUET_CHAOS_MAX_FAULTS]; /* longest token gap in [at, at + 5 s] */
    char stall_what[DUET_CHAOS_MAX_FAULTS][48];
    double ref_gap_ms;     /* the fault-free run's longest gap */
    double max_gap_ms;     /* this run's longest gap between tokens (any request) */
    double first_epoch_ms; /* deployment time of the first new data-plane epoch (-1: none) */
    double epoch_ms[16];   /* deployment times the first new epochs started */
    int n_epoch_ms;
    double run_ms; /* first submit to last answer */
    char first_problem[512];
} duet_chaos_result_t;

/* The fault-free run: the reference tokens and timings. */
DUET_API duet_status_t duet_chaos_reference(const duet_chaos_config_t *c, duet_chaos_ref_t **out);
DUET_API void duet_chaos_ref_destroy(duet_chaos_ref_t **ref);
/* Virtual/real ms from deployment start to the first submit, and the run's
 * length (for placing faults). */
DUET_API void duet_chaos_ref_times(const duet_chaos_ref_t *ref, double *start_ms, double *run_ms);

/* One run under `faults` (plan text, NULL = none; plan_seed: its
 * probabilities). An error only when the run could not be carried out. */
DUET_API duet_status_t duet_chaos_run(const duet_chaos_config_t *c, const duet_chaos_ref_t *ref,
                                      const char *faults, uint64_t plan_seed,
                                      duet_chaos_result_t *out);
/* Nothing lost, hung, mismatched, misnumbered, leaked or detected late. */
DUET_API bool duet_chaos_ok(const duet_chaos_result_t *r);
/* A random plan for `seed`: 1-3 faults among crash / stall / straggler of
 * an expert or attention shard, a crash of the scheduler, drops, duplicates and reorders of the
 * pipeline's round messages, and a partition cutting one shard's node off
 * from the others for 60-960 ms, placed in [start_ms, start_ms + span_ms). */
DUET_API void duet_chaos_random_plan(uint64_t seed, const duet_pipe_config_t *pc, double start_ms,
                                     double span_ms, char *buf, size_t cap);
/* Human-readable report (several lines). */
DUET_API void duet_chaos_print(FILE *f, const duet_chaos_result_t *r);

#ifdef __cplusplus
}
#endif
#endif
