/* plan — the paper's performance model, deployment planner (Algorithm 1)
 * and a discrete-event simulator of the ping-pong pipeline (issue 9).
 *
 * Three pieces share the structures below:
 *   profile  what one host measured (duet profile): attention time per
 *            micro-batch and layer T_a = k1·b_a + k2 (+ k_ctx·b_a·context),
 *            expert time per expert group T_e = k3·b_e + k4, combine,
 *            logits, the control-message latency T_c and the per-step
 *            overhead seen in a real pipeline run, and the data plane's
 *            transfer time per message size (Util(size)) per provider.
 *            Stored as JSON (duet_profile_save / _load).
 *   plan     hardware types (YAML, topology/hardware/), a model's shape
 *            (config.json only), and the search: for every (attention type,
 *            expert type) pair, tp_a, tp_e, n_a by the balance rule, m = 1..4,
 *            the largest global batch meeting the TBT SLO and the KV bound;
 *            ranked by throughput per cost.
 *   sim      a discrete-event simulation of one deployment: attention
 *            shards, expert shards, rounds r = (iter·S + j)·m + i strictly in
 *            order on expert shards, messages with latency, optional shared
 *            core pool (CPU hosts), Chrome trace output.
 *
 * Times are seconds (double) everywhere in this header. */
#ifndef DUET_TOPOLOGY_PLAN_H
#define DUET_TOPOLOGY_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- profile --------------------------------------------------------------- */

#define DUET_PROF_MAX_PTS 64
#define DUET_PROF_MAX_PROV 4
#define DUET_PROF_MAX_READERS 8
#define DUET_PROF_MAX_ROUTE_IDS 16384
/* Profile file format this build writes; it reads 1 (no contention table)
 * and 2. */
#define DUET_PROFILE_FORMAT 2

/* y = a·x + b with the points it was fitted to. */
typedef struct duet_prof_fit {
    double a, b;
    int n;
    double x[DUET_PROF_MAX_PTS], x2[DUET_PROF_MAX_PTS], y[DUET_PROF_MAX_PTS];
} duet_prof_fit_t;

/* Transfer time of one message of `bytes` on a provider: measured points
 * plus the fit time = lat + bytes / bw. Util(size) = (size / time) / bw_peak. */
typedef struct duet_prof_link {
    char name[16];
    double lat, bw; /* s, bytes/s */
    int n;
    double bytes[DUET_PROF_MAX_PTS], sec[DUET_PROF_MAX_PTS];
} duet_prof_link_t;

typedef struct duet_profile {
    char host[64];
    char backend[16];
    char model[256];
    int cores; /* CPUs this process may run on */
    /* Parallel compute capacity measured (concurrent copies of an expert
     * FFN, aggregate over single speed): below `cores` when other
     * processes use the machine. 0 = not measured (use cores). */
    double parallel;
    /* One thread's expert-FFN rate (calls/s) when the profile was taken,
     * and how much slower one thread runs now (set by a later
     * duet_profile_measure_parallel; 1 = as profiled): compute terms are
     * scaled by it, so a simulation can follow what the host gives now. */
    double single_rate, slowdown;
    int threads; /* compute threads per actor the figures were taken with */
    /* Memory contention between concurrent expert rounds (a shared host):
     * contention[k - 1] = CPU time of an expert-group FFN while k threads
     * each stream their own experts' weights at once, over the same work
     * alone (>= 1; contention[0] = 1). CPU time, not wall time: a thread
     * waiting for memory is on its core, one waiting for a core is not, so
     * this is the bandwidth share apart from the core share (`parallel`).
     * n_contention = entries measured; 0 (a format-1 profile): none. */
    int n_contention;
    double contention[DUET_PROF_MAX_READERS];
    /* How long the runtime's compute actors spin-wait (poll without
     * sleeping) after their last work, in seconds, as the calibration run
     * had it (DUET_SPIN_US or the runtime's default; 0: they sleep at
     * once, or a profile that does not say): on shared cores a spinning
     * actor keeps its core (duet_sim_cfg_t.spin). */
    double spin_s;
    int hidden, n_layers, n_sparse, n_experts, top_k;
    /* attention half of one layer for b tokens at context ctx_ref:
     * k1·b + k2; extra per token per context token: k_ctx */
    double k1, k2, k_ctx, ctx_ref;
    duet_prof_fit_t attn, attn_ctx;
    /* expert FFN of one expert group of b rows: k3·b + k4 */
    double k3, k4;
    duet_prof_fit_t expert;
    duet_prof_fit_t combine; /* per row, fixed (one micro-batch-layer) */
    duet_prof_fit_t logits;  /* final norm + LM head + sampling: per row, fixed */
    /* Measured in a real pipeline run (calibrated = true): extra time of a
     * dispatch (m2n write + pipe.dispatch to every shard), of an expert
     * round beyond its FFN (gather, write-back, pipe.result), the one-way
     * control-message latency T_c, and the gap between a step's last logits
     * and the next step's first attention (scheduler round trip). */
    bool calibrated;
    double t_c_typ;   /* median of the same samples as t_c (a mean): its typical part */
    double calib_tps; /* decode tokens/s of the last calibration run (not saved) */
    double disp_fix, disp_per_shard, exp_fix, t_c, t_step;
    /* in-pipeline over stand-alone time of attention, expert FFN and logits
     * (cache and thread effects; means over the calibration run's decode
     * rounds of the whole batch, the experts' against the routed rows the
     * simulator charges; 1 = none),
     * and the combine's extra time there (it also gathers the N2M rows) */
    double attn_scale, exp_scale, logit_scale, comb_fix;
    int n_links;
    duet_prof_link_t links[DUET_PROF_MAX_PROV];
    /* The router's choices on a real decode (the calibration run's tokens
     * replayed through the model): routes[((q·route_steps + t)·n_sparse +
     * j)·top_k + x] = the x-th expert that step t of sequence q chose at
     * sparse layer j. Expert shards of one round get unequal rows (a few
     * tokens, a skewed router) and the round waits for the slowest: the
     * simulator replays these instead of even shares. route_seqs = 0: none
     * recorded (even shares). */
    int route_seqs, route_steps;
    int16_t routes[DUET_PROF_MAX_ROUTE_IDS];
} duet_profile_t;

/* Least-squares fit of y = a·x + b over f->x/f->y[0..n). */
DUET_API void duet_prof_fit_solve(duet_prof_fit_t *f);
DUET_API duet_status_t duet_profile_save(const duet_profile_t *p, const char *path);
/* DUET_ERR_INVALID with the file and key named when a field is missing. */
DUET_API duet_status_t duet_profile_load(const char *path, duet_profile_t *out);
/* A fitted quantity at x: linear interpolation between the measured points
 * (sorted by x), the fit's slope beyond them. */
DUET_API double duet_prof_fit_eval(const duet_prof_fit_t *f, double x);
/* The simulator's terms: attention half of one layer for b tokens at
 * context ctx, one expert group of rows, combine, logits (calibration
 * offsets included). */
DUET_API double duet_profile_t_attn(const duet_profile_t *p, double b, double ctx);
DUET_API double duet_profile_t_expert(const duet_profile_t *p, double rows);
DUET_API double duet_profile_t_combine(const duet_profile_t *p, double rows);
DUET_API double duet_profile_t_logits(const duet_profile_t *p, double b);
/* Transfer time of `bytes` on link `name` (NULL or unknown: the first);
 * interpolated between the measured sizes. */
DUET_API double duet_profile_xfer(const duet_profile_t *p, const char *name, double bytes);

/* Measurement (topology/profile.c; needs the model and a compute backend). */
typedef struct duet_profile_opts {
    const char *model_dir;
    const char *backend;   /* "cpu" (default) */
    int threads;           /* per actor (default 1) */
    const char *providers; /* data-plane providers to measure, comma list ("shm,tcp") */
    int repeats;           /* timing repeats per point (default 5; median) */
    bool quick;            /* fewer points (tests) */
    void (*progress)(void *user, const char *what, int done, int total);
    void *progress_user;
} duet_profile_opts_t;

DUET_API duet_status_t duet_profile_measure(const duet_profile_opts_t *o, duet_profile_t *out);
/* The compute capacity this host gives now: one thread, then p->cores
 * threads run an expert FFN for `seconds` each; p->parallel = their
 * aggregate speed over one thread's (at least 1), p->slowdown = the first
 * call's single-thread speed over this one's (the first call sets the
 * reference). */
DUET_API duet_status_t duet_profile_measure_parallel(duet_profile_t *p, const char *model_dir,
                                                     double seconds);

/* Memory contention (p->contention): k = 1..min(cores, 8) threads run
 * decode-sized expert-group FFNs over disjoint sets of the model's experts
 * (every sparse layer, as expert shards do) for `seconds` each, interleaved
 * `repeats` times; the least CPU time per call of each k over k = 1's. */
DUET_API duet_status_t duet_profile_measure_contention(duet_profile_t *p, const char *model_dir,
                                                       double seconds, int repeats);
/* The contention factor for k concurrent expert rounds (1 for k <= 1 or
 * when not measured; the last measured entry beyond the table). */
DUET_API double duet_profile_contention(const duet_profile_t *p, int k);

/* ---- a CPU deployment run for real (calibration and checks) -------------- */

typedef struct duet_plan_run {
    const char *model_dir;
    int n_attention, n_expert_shards, micro_batches;
    const int *const *shard_experts; /* NULL: expert e on shard e % S */
    const int *shard_n_experts;
    int threads;            /* per actor (default 1) */
    int requests;           /* sequences decoding together */
    int prompt_len;         /* tokens per prompt */
    int new_tokens;         /* tokens generated per request */
    const char *provider;   /* "shm" (default) */
    const char *trace_path; /* NULL: none (calibration writes its own) */
    int32_t *tokens_out;    /* [requests · new_tokens] the generated tokens (NULL: not kept) */
} duet_plan_run_t;

/* Decode throughput measured: requests · (tokens - 2) over the mean time a
 * request takes from its second token to its last (every request decodes
 * throughout: the run fails if some finish before others begin); seconds:
 * that mean time, tokens: requests · (tokens - 2). */
typedef struct duet_plan_measured {
    double decode_tps;
    double seconds;
    long tokens;
} duet_plan_measured_t;

DUET_API duet_status_t duet_plan_run_measure(const duet_plan_run_t *r, duet_plan_measured_t *out);
/* Run r with a trace and fill p's calibrated terms (disp_fix, exp_fix, t_c,
 * t_step) from the trace, against p's fitted compute terms; and p's routes:
 * the run's generated tokens replayed through the model (teacher forcing,
 * one sequence at a time) with the router's choices recorded. */
DUET_API duet_status_t duet_profile_calibrate(duet_profile_t *p, const duet_plan_run_t *r);

/* ---- hardware and models --------------------------------------------------- */

typedef struct duet_hw {
    char name[48];
    double price;        /* relative cost per device-hour */
    double mem_gb;       /* per device */
    double bw_gbs;       /* memory bandwidth, GB/s */
    double tflops;       /* dense bf16 */
    double nic_gbps;     /* network per device, Gbit/s */
    double net_lat_us;   /* per message (0: 50) */
    double util_half_kb; /* Util(size) = size / (size + this) (0: 256) */
    int max_tp;          /* devices one node may span */
    int count;           /* devices available (0 = as many as wanted) */
    /* from a profile (a CPU host): timings come from it, not the roofline */
    bool profiled;
    duet_profile_t prof;
} duet_hw_t;

typedef struct duet_hw_list {
    duet_hw_t *hw;
    int n;
} duet_hw_list_t;

/* Load a hardware file; a relative `profile:` resolves against the file's
 * folder. Errors name file:line and the entry. */
DUET_API duet_status_t duet_hw_load(const char *path, duet_hw_list_t *out);
DUET_API void duet_hw_list_cleanup(duet_hw_list_t *l);
DUET_API const duet_hw_t *duet_hw_find(const duet_hw_list_t *l, const char *name);

/* The parts of a model the plan needs (from config.json; no weights). */
typedef struct duet_plan_model {
    char name[64];
    int hidden, n_layers, n_sparse, n_heads, n_kv_heads, head_dim, vocab;
    int n_experts, top_k, expert_dim, dense_dim;
    double attn_params;     /* per layer (QKV, O, norms, router) */
    double other_params;    /* embeddings, LM head */
    double expert_params;   /* one expert of one layer */
    double bytes_per_param; /* 2: bf16 */
} duet_plan_model_t;

DUET_API duet_status_t duet_plan_model_load(const char *dir_or_config, duet_plan_model_t *out);

/* ---- timing functions for a role on a hardware type ---------------------- */

/* Attention half of one layer for b tokens at mean context s, on tp devices. */
DUET_API double duet_plan_t_attn(const duet_hw_t *hw, const duet_plan_model_t *m, int tp, double b,
                                 double s);
/* Expert FFN of one expert of one layer over b rows, on tp devices. */
DUET_API double duet_plan_t_expert(const duet_hw_t *hw, const duet_plan_model_t *m, int tp,
                                   double b);
/* One-way transfer of `bytes` in messages of `msg` bytes (0: one message)
 * over n_dev devices' NICs: latency + bytes / (bandwidth · Util(msg)). */
DUET_API double duet_plan_t_xfer(const duet_hw_t *hw, int n_dev, double bytes, double msg);

/* ---- simulation ------------------------------------------------------------ */

typedef struct duet_sim_cfg {
    int n_attention, n_expert_shards, micro_batches;
    int n_layers; /* sparse layers (rounds per micro-batch per iteration) */
    int iterations;
    double tokens_ub; /* tokens per micro-batch per attention shard */
    double ctx;       /* mean context length (grows by 1 each iteration) */
    int top_k, n_experts;
    /* share of the routed rows that expert shard s receives ([S]; NULL =
     * even) and the expert groups it runs per round ([S]; NULL = E/S) */
    const double *shard_share;
    const int *shard_groups;
    /* timings (seconds); t_attn / t_expert for one micro-batch / one expert
     * group; dispatch and combine on the attention side */
    double (*t_attn)(void *u, double tokens, double ctx);
    double (*t_expert)(void *u, double rows);
    double (*t_dispatch)(void *u, double rows, int n_shards);
    double (*t_combine)(void *u, double rows);
    double (*t_logits)(void *u, double tokens);
    double (*t_exp_fix)(void *u, int n_attention);
    double (*t_xfer)(void *u, double bytes); /* data plane, one message */
    void *user;
    double t_c; /* control message latency */
    /* Shared cores (a CPU host): the typical part of T_c is spent by the
     * receiving thread being woken and scheduled on a core the others then
     * lack: each computation is charged t_c_core per message it waited for
     * (S results, A dispatches); messages carry the rest, T_c - t_c_core
     * (the slow tail of wake-ups), or the transfer if longer. */
    double t_c_core;
    double t_step;          /* gap between a step's end and the next step (scheduler) */
    double row_bytes;       /* bytes per row on the data plane */
    double cores;           /* shared compute capacity: round(cores) computations at a
                               time (the rest wait, first come first served), each at
                               speed cores / round(cores) <= 1; 0 = every actor has
                               its own device */
    /* Memory contention on the shared cores (only with cores > 0): while k
     * expert rounds hold a core at once, each runs contention[k - 1] times
     * slower (k beyond n_contention: the last entry; NULL or 0 entries:
     * none). A round's remaining work is re-timed whenever k changes. */
    const double *contention;
    int n_contention;
    /* Spin-waiting actors on the shared cores (only with cores > 0; 0 =
     * none: the cores are one first-come-first-served pool). The runtime's
     * compute actors poll for up to this long (seconds) after their last
     * work before they sleep (actors.h, DUET_SPIN_US), and a thread keeps
     * its core while it has work: a computation runs on the core it last
     * ran on if that one is free, else any free one, else it waits there
     * (the OS wakes a thread on its previous CPU when no CPU is idle); an
     * actor that ends a computation keeps its core for its next one, and
     * when it has none spins on it — the core is not free for a thread
     * waiting on another core — until its next computation comes (it runs
     * at once), the spin time passes (the core is idle: the longest-waiting
     * thread is pulled over) or a thread waits on that same core (the
     * spinner's sched_yield hands over at once and it sleeps). A message
     * to a spinning actor re-arms its spin. */
    double spin;
    /* With spin: 0 = each actor first runs on the first free core (or the
     * one fewest wait for); else the core each actor last ran on before
     * the simulated run (the OS's placement of its threads, which the
     * pipeline does not choose) is drawn from this seed. */
    unsigned long long placement_seed;
    const char *trace_path; /* Chrome trace of the simulated run; NULL = none */
    /* Recorded routes (duet_profile_t.routes; NULL: every shard gets its
     * share of tokens_ub · top_k rows). With them, `requests` sequences
     * decode, micro-batch i of attention shard a holds the sequences q with
     * q mod (n_a·m) = a·m + i, sequence q's token at iteration t routes as
     * recorded sequence q mod route_seqs at step t mod route_steps, and an
     * expert shard's round costs Σ t_expert(rows of each of its experts).
     * shard_experts / shard_n_experts: the experts each shard holds (NULL:
     * expert e on shard e mod S); a replicated expert's rows are split
     * evenly between its copies. */
    const int16_t *routes;
    int route_seqs, route_steps, requests;
    const int *const *shard_experts;
    const int *shard_n_experts;
} duet_sim_cfg_t;

typedef struct duet_sim_result {
    double seconds;      /* simulated time of all iterations */
    double tokens_per_s; /* tokens_ub · m · n_a per iteration / mean iteration time */
    double tbt_p50, tbt_p90, tbt_p99; /* time between tokens (per attention shard step) */
    double util_attn, util_expert;    /* busy fraction, mean over shards */
    long events;
} duet_sim_result_t;

DUET_API duet_status_t duet_sim_run(const duet_sim_cfg_t *c, duet_sim_result_t *out);

/* Simulation of a host deployment from a profile: r's shape, p's terms.
 * When the profile's actors spin-wait on shared cores (p->spin_s > 0, not
 * dedicated), the result is the mean over 16 placements of the threads on
 * the cores (placement_seed 1..16; the trace is the first's): a real run
 * gets whichever placement its start-up left. */
DUET_API duet_status_t duet_sim_profile(const duet_profile_t *p, const duet_plan_run_t *r,
                                        const char *trace_path, duet_sim_result_t *out);

/* ---- plan search (Algorithm 1) ---------------------------------------------- */

typedef struct duet_plan_opts {
    double slo_tbt;                      /* seconds */
    double ctx;                          /* mean context length (default 2048) */
    int max_m;                           /* default 4 */
    int min_m;                           /* default 1 */
    bool colocated;                      /* also evaluate colocated baselines */
    const char *only_attn, *only_expert; /* restrict hardware types (NULL = all) */
    bool homogeneous_only, heterogeneous_only;
} duet_plan_opts_t;

typedef struct duet_plan {
    const duet_hw_t *hw_a, *hw_e;
    bool colocated; /* one group of tp_a devices holds everything */
    int tp_a, tp_e, n_a, n_e, m;
    int experts_per_shard;
    long batch;                   /* global batch B (sequences decoding together) */
    double t_a, t_e, t_c, t_iter; /* per micro-batch, per layer / iteration */
    double tput;                  /* tokens/s */
    double devices;               /* total devices */
    double cost;                  /* Σ devices · price */
    double tput_per_dev, tput_per_cost;
} duet_plan_t;

typedef struct duet_plan_list {
    duet_plan_t *p;
    int n;
} duet_plan_list_t;

/* Evaluate one configuration: the largest batch meeting the SLO and memory
 * (binary search). false if no batch fits. */
DUET_API bool duet_plan_eval(const duet_plan_model_t *m, duet_plan_t *pl,
                             const duet_plan_opts_t *o);
/* Evaluate one configuration at a given per-micro-batch batch b_a (the
 * paper's micro-batch ablation keeps b_a and varies m). false if it breaks
 * the SLO or the memory bound. */
DUET_API bool duet_plan_eval_at(const duet_plan_model_t *m, duet_plan_t *pl,
                                const duet_plan_opts_t *o, long b_a);
/* Algorithm 1 over every hardware pair: the best plan of each pair (and of
 * each m when o->min_m < o->max_m), sorted by throughput per cost. */
DUET_API duet_status_t duet_plan_search(const duet_plan_model_t *m, const duet_hw_list_t *hw,
                                        const duet_plan_opts_t *o, duet_plan_list_t *out);
DUET_API void duet_plan_list_cleanup(duet_plan_list_t *l);
/* Simulate a plan (one iteration at its batch) with the event simulator. */
DUET_API duet_status_t duet_plan_simulate(const duet_plan_model_t *m, const duet_plan_t *pl,
                                          const duet_plan_opts_t *o, const char *trace_path,
                                          duet_sim_result_t *out);

#ifdef __cplusplus
}
#endif
#endif
