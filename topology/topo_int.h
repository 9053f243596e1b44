/* topology internals shared by the builder, validator, YAML loader/writer
 * and placement. Nothing outside topology/ includes this. */
#ifndef DUET_TOPO_INT_H
#define DUET_TOPO_INT_H

#include "topology/topology.h"

/* Bounds that keep a hostile or mistaken file from exhausting memory or
 * time: nodes and actors (attention groups expanded), and issues kept. */
#define TOPO_MAX_NODES 65536
#define TOPO_MAX_ACTORS 65536
#define TOPO_MAX_ISSUES 200

/* A place in the source file: 1-based line and column; 0 = none. */
typedef struct topo_loc {
    int line;
    int col;
} topo_loc_t;

typedef struct topo_node {
    duet_topo_node_t pub; /* strings owned */
    topo_loc_t at;        /* the entry itself */
    topo_loc_t at_name, at_host, at_address, at_process, at_curve_public, at_curve_secret;
} topo_node_t;

typedef struct topo_actor {
    duet_topo_actor_t pub; /* strings and experts owned */
    bool named;            /* name given explicitly (written back) */
    int entry;             /* index of its entry in the file's `actors` list / add call */
    topo_loc_t at, at_name, at_node, at_backend, at_threads, at_listen, at_experts, at_count;
    topo_loc_t *at_expert; /* [pub.n_experts] location of each id; NULL for API */
} topo_actor_t;

struct duet_topology {
    duet_topo_settings_t set; /* strings owned */
    char *file;               /* source file for messages; NULL for API-composed */
    topo_loc_t at_model, at_m, at_budget, at_blocks, at_block_size, at_data, at_control, at_curve,
        at_nodes, at_actors, at_root;
    topo_node_t *nodes;
    size_t n_nodes, cap_nodes;
    topo_actor_t *actors;
    size_t n_actors, cap_actors;
    int n_entries; /* actor entries (an attention group counts once) */
    int n_attention, n_expert;
};

/* Append one issue; key and message are formatted into the report. Returns
 * DUET_ERR_NOMEM if even that fails (the report is then incomplete). */
duet_status_t duet__topo_issue(duet_topo_report_t *r, const char *file, topo_loc_t at,
                               const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Set duet_error() from the first issues and return DUET_ERR_INVALID. */
duet_status_t duet__topo_report_fail(const duet_topo_report_t *r);

/* Append a deep copy of *tmpl (strings, experts and their locations
 * copied); the caller keeps tmpl. Actors: `count` copies forming one entry,
 * each given its shard index and, unless named, its default name. */
duet_status_t duet__topo_push_node(duet_topology_t *t, const topo_node_t *tmpl);
duet_status_t duet__topo_push_actors(duet_topology_t *t, const topo_actor_t *tmpl, int count);
void duet__topo_node_cleanup(topo_node_t *n);
void duet__topo_actor_cleanup(topo_actor_t *a);
/* Replace a string field with a copy of value (NULL clears it). */
duet_status_t duet__topo_set_str(const char **field, const char *value);

#endif /* DUET_TOPO_INT_H */
