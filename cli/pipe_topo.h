/* cli-internal: a topology (topology/topology.h) as a pipeline deployment
 * configuration (actors/pipeline.h), for generate --topology, run, node. */
#ifndef DUET_CLI_PIPE_TOPO_H
#define DUET_CLI_PIPE_TOPO_H

#include "actors/pipeline.h"
#include "topology/topology.h"

typedef struct duet__topo_pipe {
    duet_topology_t *topo;
    duet_pipe_config_t cfg; /* points into the members below and into topo */
    const int **rows;
    int *n_rows;
    const char **names;
    const char **addrs;
    const char **hosts; /* per node: its IPv4 `host:` (tcp data plane), else NULL */
    int *attn_node, *exp_node;
    char (*addr_buf)[256];
    const char **attn_backend, **exp_backend; /* per shard, from the file's `backend:` */
    int *attn_device, *exp_device;
} duet__topo_pipe_t;

/* Load and validate `path` (problems printed to stderr, prefixed by `cmd`)
 * and fill tp->cfg. multi_process: nodes talk over the file's control
 * transport at the file's addresses (ipc ones derived when absent), else all
 * in one process over inproc. model_dir overrides the file's model. */
int duet__topo_pipe_init(duet__topo_pipe_t *tp, const char *cmd, const char *path,
                         const char *model_dir, bool multi_process);
void duet__topo_pipe_cleanup(duet__topo_pipe_t *tp);

/* Call before any thread starts in a process that runs only `node`: a node
 * that hosts no attention or expert shard (the gateway, scheduler, router)
 * gets one malloc arena instead of one per thread. Its threads allocate
 * little, and with per-thread arenas the memory that peer restarts churn
 * through stayed resident in each thread's arena: an idle ctl in bench/soak.py
 * grew 3.1 % over 12 faults, 0.08 % with this cap. */
void duet__topo_node_malloc(const duet__topo_pipe_t *tp, const char *node);

#endif
