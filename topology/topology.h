/* topology — a deployment of duet: which nodes (processes on hosts) exist,
 * which actors run on each (attention shards, expert shards with their
 * expert placement and replicas, router, scheduler, gateway), the pipeline
 * settings (m micro-batches, token budget, KV cache) and the transports
 * (data-plane provider, control transport, optional CURVE).
 *
 * A deployment is composed in code with the calls below or loaded from a
 * YAML deployment file (topology/FORMAT.md); both give the same structure,
 * and duet_topology_write turns either back into a file. Validation reports
 * every problem it finds with what was wrong and where: for file-loaded
 * deployments file:line:column and the key path ("actors[2].experts[1]").
 *
 * The launcher (`duet run`, `duet node`) reads a validated deployment
 * through the query calls: nodes, the actors of a node, expert -> expert
 * shards and expert shard -> experts. The planner (issue 9) fills expert
 * shards with duet_topology_place_experts + duet_topology_apply_placement
 * and writes the result with duet_topology_write.
 *
 * Not thread-safe: one thread builds a topology; once built, concurrent
 * read-only queries are fine. */
#ifndef DUET_TOPOLOGY_H
#define DUET_TOPOLOGY_H

#include "base/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Longest node or actor name (bytes, without the NUL). */
#define DUET_TOPO_NAME_MAX 63

/* ---- enumerations ------------------------------------------------------ */

typedef enum duet_actor_kind {
    DUET_ACTOR_ATTENTION = 0,
    DUET_ACTOR_EXPERT = 1,
    DUET_ACTOR_ROUTER = 2,
    DUET_ACTOR_SCHEDULER = 3,
    DUET_ACTOR_GATEWAY = 4,
} duet_actor_kind_t;
#define DUET_ACTOR_KIND_COUNT 5

typedef enum duet_compute_backend {
    DUET_COMPUTE_CPU = 0,
    DUET_COMPUTE_CUDA = 1,
} duet_compute_backend_t;

/* Data-plane provider: the names are rdma/'s provider names. */
typedef enum duet_data_provider {
    DUET_DATA_SHM = 0,
    DUET_DATA_TCP = 1,
    DUET_DATA_VERBS = 2,
    DUET_DATA_SIM = 3,
} duet_data_provider_t;

typedef enum duet_control_transport {
    DUET_CONTROL_INPROC = 0,
    DUET_CONTROL_IPC = 1,
    DUET_CONTROL_TCP = 2,
} duet_control_transport_t;

/* Spellings used in files ("attention", "cuda", "shm", "ipc"). Static
 * storage; "?" for a value out of range. _parse returns false for an
 * unknown word and leaves *out alone. */
DUET_API const char *duet_actor_kind_name(duet_actor_kind_t kind);
DUET_API bool duet_actor_kind_parse(const char *s, duet_actor_kind_t *out);
DUET_API const char *duet_compute_backend_name(duet_compute_backend_t b);
DUET_API const char *duet_data_provider_name(duet_data_provider_t p);
DUET_API bool duet_data_provider_parse(const char *s, duet_data_provider_t *out);
DUET_API const char *duet_control_transport_name(duet_control_transport_t c);
DUET_API bool duet_control_transport_parse(const char *s, duet_control_transport_t *out);

/* ---- read-only views ----------------------------------------------------- */

/* Where an actor computes. threads: CPU worker threads of the actor (also
 * for cuda: host threads). device: CUDA device index (cuda only). */
typedef struct duet_compute {
    duet_compute_backend_t backend;
    int device;
    int threads;
} duet_compute_t;

/* One node = one OS process of the deployment (several nodes may share a
 * process, see `process`). Strings are owned by the topology; NULL = not
 * given. */
typedef struct duet_topo_node {
    const char *name;              /* unique; the node's routing id on the control plane */
    const char *host;              /* machine it runs on (name or IP); NULL = this host */
    const char *address;           /* control-plane endpoint it binds ("tcp://10.0.0.2:7000",
                                      "ipc:///tmp/duet-a.sock"); NULL = derived (inproc, ipc) */
    const char *process;           /* process group: nodes with the same value run in one OS
                                      process; NULL = a process of its own (named after the node) */
    const char *curve_public;      /* z85 public key (40 chars), CURVE only */
    const char *curve_secret_file; /* file holding the z85 secret key, CURVE only */
} duet_topo_node_t;

/* One actor. Attention shards are numbered 0..n_attention-1 and expert
 * shards 0..n_expert_shards-1 in the order they were added. Default names:
 * "attn/<shard>", "expert/<shard>", "router", "scheduler", "gateway". */
typedef struct duet_topo_actor {
    duet_actor_kind_t kind;
    const char *name;
    const char *node;       /* name of the node it runs on */
    int shard;              /* attention / expert shard index; 0 for the others */
    duet_compute_t compute; /* attention and expert shards */
    const int *experts;     /* expert shards: expert ids held (every layer) */
    size_t n_experts;
    const char *listen; /* gateway: HTTP listen address "host:port" */
} duet_topo_actor_t;

/* Deployment-wide settings. */
typedef struct duet_topo_settings {
    const char *name;                 /* deployment name; NULL = none */
    const char *model_dir;            /* model directory (Hugging Face layout); files resolve it
                                         against the file's folder, so this is absolute for them */
    int micro_batches;                /* m >= 1 (default 1) */
    int token_budget;                 /* tokens per scheduler step, > 0 (default 256) */
    int kv_blocks;                    /* KV-cache blocks per attention shard, > 0 (default 512) */
    int kv_block_size;                /* tokens per KV block, > 0 (default 16) */
    duet_data_provider_t data;        /* default shm */
    duet_control_transport_t control; /* default ipc */
    bool curve;                       /* CURVE on the control plane (default off) */
} duet_topo_settings_t;

/* ---- validation report ------------------------------------------------- */

/* One problem: what (message) and where. line/column are 1-based; 0 when
 * unknown (API-composed deployments). key is the path of the offending
 * entry, e.g. "pipeline.micro_batches" or "actors[3].experts[1]". */
typedef struct duet_topo_issue {
    char *file; /* NULL for API-composed deployments */
    int line;
    int column;
    char *key;
    char *message;
} duet_topo_issue_t;

/* Every problem found, in file order where there is one. Fill by passing
 * a zeroed report to load/validate; free with duet_topo_report_cleanup. */
typedef struct duet_topo_report {
    duet_topo_issue_t *issues;
    size_t n_issues;
    size_t cap_issues;
} duet_topo_report_t;

DUET_API void duet_topo_report_cleanup(duet_topo_report_t *report);
/* All issues as "file:line:col: key: message" lines into *out (appended). */
DUET_API duet_status_t duet_topo_report_format(const duet_topo_report_t *report, duet_buf_t *out);

/* ---- create, compose, destroy ------------------------------------------ */

typedef struct duet_topology duet_topology_t;

/* An empty deployment with the defaults above. The caller destroys it. */
DUET_API duet_status_t duet_topology_create(duet_topology_t **topo_out);
/* Accepts NULL and a pointer to NULL; clears *topo_p. */
DUET_API void duet_topology_destroy(duet_topology_t **topo_p);

/* Node description for duet_topology_add_node. Strings are copied; NULL =
 * not given. */
typedef struct duet_topo_node_spec {
    const char *name;
    const char *host;
    const char *address;
    const char *process;
    const char *curve_public;
    const char *curve_secret_file;
} duet_topo_node_spec_t;

/* The add and set calls copy what they are given and check only what is
 * a programmer error (NULL where a value is required, n < 1); whether the
 * deployment makes sense (names unique, nodes defined, experts placed) is
 * duet_topology_validate's job, so API and file report the same way. */
DUET_API duet_status_t duet_topology_add_node(duet_topology_t *topo,
                                              const duet_topo_node_spec_t *spec);
/* n attention shards on `node` with the same compute settings. */
DUET_API duet_status_t duet_topology_add_attention(duet_topology_t *topo, const char *node, int n,
                                                   const duet_compute_t *compute);
/* One expert shard on `node` holding experts[0..n_experts) (may be empty
 * and set later). *shard_out (may be NULL) = its expert-shard index. */
DUET_API duet_status_t duet_topology_add_expert_shard(duet_topology_t *topo, const char *node,
                                                      const duet_compute_t *compute,
                                                      const int *experts, size_t n_experts,
                                                      int *shard_out);
/* Replace the experts of expert shard `shard`. */
DUET_API duet_status_t duet_topology_set_shard_experts(duet_topology_t *topo, int shard,
                                                       const int *experts, size_t n_experts);
DUET_API duet_status_t duet_topology_add_router(duet_topology_t *topo, const char *node);
DUET_API duet_status_t duet_topology_add_scheduler(duet_topology_t *topo, const char *node);
/* listen: "host:port" for HTTP; NULL = "127.0.0.1:8000". */
DUET_API duet_status_t duet_topology_add_gateway(duet_topology_t *topo, const char *node,
                                                 const char *listen);
/* Rename the most recently added actor (a single actor, not an attention
 * group of n > 1). */
DUET_API duet_status_t duet_topology_name_last_actor(duet_topology_t *topo, const char *name);

DUET_API duet_status_t duet_topology_set_name(duet_topology_t *topo, const char *name);
DUET_API duet_status_t duet_topology_set_model(duet_topology_t *topo, const char *model_dir);
DUET_API void duet_topology_set_micro_batches(duet_topology_t *topo, int m);
DUET_API void duet_topology_set_token_budget(duet_topology_t *topo, int tokens);
DUET_API void duet_topology_set_kv_cache(duet_topology_t *topo, int blocks, int block_size);
DUET_API void duet_topology_set_data_provider(duet_topology_t *topo, duet_data_provider_t data);
DUET_API void duet_topology_set_control(duet_topology_t *topo, duet_control_transport_t control,
                                        bool curve);

/* ---- validation -------------------------------------------------------- */

typedef struct duet_topo_validate_opts {
    /* > 0: the model's expert count, used instead of reading
     * <model_dir>/config.json (tests, fuzzing, planning without a model). */
    int n_experts;
} duet_topo_validate_opts_t;

/* DUET_OK, or DUET_ERR_INVALID with every problem in *report (may be NULL)
 * and the first few in duet_error(). opts may be NULL. */
DUET_API duet_status_t duet_topology_validate(const duet_topology_t *topo,
                                              const duet_topo_validate_opts_t *opts,
                                              duet_topo_report_t *report);

/* ---- deployment files ---------------------------------------------------- */

/* Load and validate a YAML deployment file. On success *topo_out is the
 * caller's to destroy; on failure it is untouched, and the problems are in
 * *report (may be NULL) and duet_error(). A relative `model:` resolves
 * against the file's folder. */
DUET_API duet_status_t duet_topology_load(const char *path, const duet_topo_validate_opts_t *opts,
                                          duet_topology_t **topo_out, duet_topo_report_t *report);
/* The same from memory. `name` appears in messages (may be NULL);
 * `base_dir` resolves a relative model path (NULL = as written). */
DUET_API duet_status_t duet_topology_parse(const char *text, size_t len, const char *name,
                                           const char *base_dir,
                                           const duet_topo_validate_opts_t *opts,
                                           duet_topology_t **topo_out, duet_topo_report_t *report);
/* Append the deployment as a YAML file that loads back to an equal
 * deployment (duet_topology_equal). */
DUET_API duet_status_t duet_topology_write(const duet_topology_t *topo, duet_buf_t *out);
DUET_API duet_status_t duet_topology_save(const duet_topology_t *topo, const char *path);

/* Same settings, nodes and actors (names, nodes, compute, experts in
 * order); where things came from is ignored. */
DUET_API bool duet_topology_equal(const duet_topology_t *a, const duet_topology_t *b);

/* ---- queries (for the launcher) ------------------------------------------ */

/* Pointers returned stay valid until the topology changes or is destroyed. */
DUET_API const duet_topo_settings_t *duet_topology_settings(const duet_topology_t *topo);
DUET_API size_t duet_topology_node_count(const duet_topology_t *topo);
DUET_API const duet_topo_node_t *duet_topology_node(const duet_topology_t *topo, size_t i);
/* Index of the node called `name`, or -1. */
DUET_API int duet_topology_node_find(const duet_topology_t *topo, const char *name);
DUET_API size_t duet_topology_actor_count(const duet_topology_t *topo);
DUET_API const duet_topo_actor_t *duet_topology_actor(const duet_topology_t *topo, size_t i);
/* Actors placed on node `node`: their indices (for duet_topology_actor) go
 * to idx_out[0..cap); returns how many there are (may exceed cap). */
DUET_API size_t duet_topology_node_actors(const duet_topology_t *topo, const char *node,
                                          size_t *idx_out, size_t cap);
DUET_API int duet_topology_attention_count(const duet_topology_t *topo);
DUET_API int duet_topology_expert_shard_count(const duet_topology_t *topo);
/* Attention / expert shard by shard index, or NULL. */
DUET_API const duet_topo_actor_t *duet_topology_attention(const duet_topology_t *topo, int shard);
DUET_API const duet_topo_actor_t *duet_topology_expert_shard(const duet_topology_t *topo,
                                                             int shard);
/* The expert shards holding `expert` (replicas: more than one), in shard
 * order, to shards_out[0..cap); returns how many there are. */
DUET_API size_t duet_topology_expert_shards(const duet_topology_t *topo, int expert,
                                            int *shards_out, size_t cap);
/* The one router / scheduler / gateway, or NULL. */
DUET_API const duet_topo_actor_t *duet_topology_find_kind(const duet_topology_t *topo,
                                                          duet_actor_kind_t kind);

/* ---- expert placement (paper: greedy, minimise the most loaded shard) --- */

/* Result of duet_topology_place_experts. Shard s holds
 * experts[offsets[s] .. offsets[s+1]); each copy of expert e carries
 * load[e] / replicas[e] (the router spreads a replicated expert's tokens
 * evenly over its copies). */
typedef struct duet_placement {
    int n_experts;
    int n_shards;
    int *offsets;       /* [n_shards + 1] */
    int *experts;       /* [offsets[n_shards]] */
    int *replicas;      /* [n_experts] copies of each expert (>= 1) */
    double *shard_load; /* [n_shards] */
    double max_load;    /* max over shard_load */
} duet_placement_t;

typedef struct duet_place_opts {
    /* Most experts one shard may hold (memory); 0 = no limit. */
    int max_per_shard;
} duet_place_opts_t;

/* From per-expert load counts (tokens routed to each expert, >= 0), place
 * every expert once and up to `replica_budget` extra copies of the hottest
 * experts on n_shards expert shards, minimising the most loaded shard:
 * copies go to the expert whose per-copy load is highest, then copies are
 * placed heaviest first on the least loaded shard not yet holding that
 * expert (LPT), and a local search moves or swaps copies while that lowers
 * the maximum; this for each number of replicas up to the budget (extra
 * copies do not always pay once packed), keeping the best. No shard holds
 * an expert twice; every shard gets at least one expert when
 * n_experts + replica_budget >= n_shards. *placement_out is the caller's
 * (duet_placement_destroy). opts may be NULL. */
DUET_API duet_status_t duet_topology_place_experts(const double *loads, int n_experts, int n_shards,
                                                   int replica_budget,
                                                   const duet_place_opts_t *opts,
                                                   duet_placement_t **placement_out);
DUET_API void duet_placement_destroy(duet_placement_t **placement_p);
/* Give expert shard s of the topology placement shard s's experts; the
 * topology must have exactly placement->n_shards expert shards. */
DUET_API duet_status_t duet_topology_apply_placement(duet_topology_t *topo,
                                                     const duet_placement_t *placement);

#ifdef __cplusplus
}
#endif
#endif /* DUET_TOPOLOGY_H */
