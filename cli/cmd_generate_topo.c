/* duet generate --topology FILE — generation through a deployment: the
 * file's attention shards, expert shards (placement, replicas), m, token
 * budget and KV cache, all brought up in this process (actors/pipeline.h:
 * the file's nodes over ZeroMQ inproc, the file's data-plane provider
 * between the shards; verbs falls back to shm). Also the
 * topology -> pipeline configuration shared with `duet run` / `duet node`
 * (cli/pipe_topo.h). */
#include <arpa/inet.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include "cli/pipe_topo.h"
#include "model/backend.h"
#include "rdma/rdma.h"

int duet__topology_model_dir(const char *path, char *buf, size_t cap);
int duet__generate_topology(const char *path, const char *model_dir, const int32_t *prompt,
                            int32_t n_prompt, int32_t max_tokens, int32_t eos,
                            const duet_sampling_params_t *sp, int threads, const char *trace,
                            int32_t *gen, int32_t *n_gen, double *secs);

static duet_status_t load(const char *cmd, const char *path, duet_topology_t **topo)
{
    duet_topo_report_t rep = {0};
    duet_status_t st = duet_topology_load(path, NULL, topo, &rep);
    if (st) {
        duet_buf_t b = {0};
        duet_topo_report_format(&rep, &b);
        fprintf(stderr, "duet %s: %s is not a valid deployment:\n%.*s", cmd, path, (int)b.len,
                b.data ? (const char *)b.data : "");
        if (!b.len)
            fprintf(stderr, "%s\n", duet_error());
        duet_buf_cleanup(&b);
    }
    duet_topo_report_cleanup(&rep);
    return st;
}

void duet__topo_pipe_cleanup(duet__topo_pipe_t *tp)
{
    duet_free(tp->rows);
    duet_free(tp->n_rows);
    duet_free(tp->names);
    duet_free(tp->addrs);
    duet_free(tp->hosts);
    duet_free(tp->attn_node);
    duet_free(tp->exp_node);
    duet_free(tp->addr_buf);
    duet_free(tp->attn_backend);
    duet_free(tp->exp_backend);
    duet_free(tp->attn_device);
    duet_free(tp->exp_device);
    duet_topology_destroy(&tp->topo);
    memset(tp, 0, sizeof(*tp));
}

int duet__topo_pipe_init(duet__topo_pipe_t *tp, const char *cmd, const char *path,
                         const char *model_dir, bool multi_process)
{
    memset(tp, 0, sizeof(*tp));
    if (load(cmd, path, &tp->topo))
        return -1;
    const duet_topology_t *t = tp->topo;
    const duet_topo_settings_t *s = duet_topology_settings(t);
    int A = duet_topology_attention_count(t), S = duet_topology_expert_shard_count(t);
    int N = (int)duet_topology_node_count(t);
    tp->rows = duet_calloc((size_t)S + 1, sizeof(int *));
    tp->n_rows = duet_calloc((size_t)S + 1, sizeof(int));
    tp->names = duet_calloc((size_t)N + 1, sizeof(char *));
    tp->addrs = duet_calloc((size_t)N + 1, sizeof(char *));
    tp->hosts = duet_calloc((size_t)N + 1, sizeof(char *));
    tp->attn_node = duet_calloc((size_t)A + 1, sizeof(int));
    tp->exp_node = duet_calloc((size_t)S + 1, sizeof(int));
    tp->addr_buf = duet_calloc((size_t)N + 1, sizeof(*tp->addr_buf));
    tp->attn_backend = duet_calloc((size_t)A + 1, sizeof(char *));
    tp->exp_backend = duet_calloc((size_t)S + 1, sizeof(char *));
    tp->attn_device = duet_calloc((size_t)A + 1, sizeof(int));
    tp->exp_device = duet_calloc((size_t)S + 1, sizeof(int));
    if (!tp->rows || !tp->n_rows || !tp->names || !tp->addrs || !tp->hosts || !tp->attn_node ||
        !tp->exp_node || !tp->addr_buf || !tp->attn_backend || !tp->exp_backend ||
        !tp->attn_device || !tp->exp_device) {
        fprintf(stderr, "duet %s: out of memory\n", cmd);
        duet__topo_pipe_cleanup(tp);
        return -1;
    }
    if (multi_process && s->control == DUET_CONTROL_INPROC) {
        if (N > 1) {
            fprintf(stderr,
                    "duet %s: %s: control 'inproc' cannot join %d processes; use ipc or tcp, "
                    "or --single-process\n",
                    cmd, path, N);
            duet__topo_pipe_cleanup(tp);
            return -1;
        }
        multi_process = false; /* one node: nothing to join */
    }
    int threads = 0;
    for (int i = 0; i < N; i++) {
        const duet_topo_node_t *nd = duet_topology_node(t, (size_t)i);
        tp->names[i] = nd->name;
        struct in_addr ia;
        if (multi_process && nd->host && inet_pton(AF_INET, nd->host, &ia) == 1)
            tp->hosts[i] = nd->host; /* the tcp data plane binds it */
        if (nd->address) {
            tp->addrs[i] = nd->address;
        } else if (s->control == DUET_CONTROL_IPC) {
            snprintf(tp->addr_buf[i], sizeof(tp->addr_buf[i]), "ipc:///tmp/duet-%s-%s.sock",
                     s->name ? s->name : "deployment", nd->name);
            tp->addrs[i] = tp->addr_buf[i];
        } else if (multi_process && s->control != DUET_CONTROL_INPROC) {
            fprintf(stderr, "duet %s: %s: node %s has no address (needed for %s)\n", cmd, path,
                    nd->name, duet_control_transport_name(s->control));
            duet__topo_pipe_cleanup(tp);
            return -1;
        }
    }
    for (int a = 0; a < A; a++) {
        const duet_topo_actor_t *ac = duet_topology_attention(t, a);
        tp->attn_node[a] = duet_topology_node_find(t, ac->node);
        if (ac->compute.threads > threads)
            threads = ac->compute.threads;
        tp->attn_backend[a] = duet_compute_backend_name(ac->compute.backend);
        tp->attn_device[a] = ac->compute.device;
    }
    for (int e = 0; e < S; e++) {
        const duet_topo_actor_t *ac = duet_topology_expert_shard(t, e);
        tp->exp_node[e] = duet_topology_node_find(t, ac->node);
        tp->rows[e] = ac->experts;
        tp->n_rows[e] = (int)ac->n_experts;
        tp->exp_backend[e] = duet_compute_backend_name(ac->compute.backend);
        tp->exp_device[e] = ac->compute.device;
    }
    const duet_topo_actor_t *sch = duet_topology_find_kind(t, DUET_ACTOR_SCHEDULER);
    const duet_topo_actor_t *rt = duet_topology_find_kind(t, DUET_ACTOR_ROUTER);
    const char *prov = duet_data_provider_name(s->data);
    if (s->data == DUET_DATA_VERBS && !duet_rdma_provider_exists("verbs"))
        prov = "shm";
    if (!multi_process && s->data == DUET_DATA_VERBS)
        prov = "shm";
    tp->cfg = (duet_pipe_config_t){
        .model_dir = model_dir ? model_dir : s->model_dir,
        .n_attention = A,
        .n_expert_shards = S,
        .shard_experts = tp->rows,
        .shard_n_experts = tp->n_rows,
        .micro_batches = s->micro_batches,
        .token_budget = s->token_budget,
        .kv_blocks = s->kv_blocks,
        .kv_block_size = s->kv_block_size,
        .provider = prov,
        .control = multi_process ? DUET_PIPE_CONTROL_IPC : DUET_PIPE_CONTROL_INPROC,
        .threads = threads,
        .n_nodes = N,
        .node_names = tp->names,
        .node_addrs = tp->addrs,
        .node_hosts = tp->hosts,
        .attention_node = tp->attn_node,
        .expert_node = tp->exp_node,
        .scheduler_node = sch ? duet_topology_node_find(t, sch->node) : 0,
        .router_node = rt ? duet_topology_node_find(t, rt->node) : 0,
        /* each shard computes where the file says (backend: cpu | cuda[:N]) */
        .attention_backend = tp->attn_backend,
        .expert_backend = tp->exp_backend,
        .attention_device = tp->attn_device,
        .expert_device = tp->exp_device,
    };
    return 0;
}

void duet__topo_node_malloc(const duet__topo_pipe_t *tp, const char *node)
{
    int ni = duet_topology_node_find(tp->topo, node);
    if (ni < 0)
        return;
    for (int a = 0; a < tp->cfg.n_attention; a++)
        if (tp->attn_node[a] == ni)
            return;
    for (int e = 0; e < tp->cfg.n_expert_shards; e++)
        if (tp->exp_node[e] == ni)
            return;
#ifdef DUET_GLIBC_MALLOC
    mallopt(M_ARENA_MAX, 1);
#endif
}

/* The deployment's model directory into buf; 0 on success. */
int duet__topology_model_dir(const char *path, char *buf, size_t cap)
{
    duet_topology_t *topo = NULL;
    if (load("generate", path, &topo))
        return -1;
    const duet_topo_settings_t *s = duet_topology_settings(topo);
    int rc = 0;
    if (!s->model_dir) {
        fprintf(stderr, "duet generate: %s names no model; give --model\n", path);
        rc = -1;
    } else {
        snprintf(buf, cap, "%s", s->model_dir);
    }
    duet_topology_destroy(&topo);
    return rc;
}

int duet__generate_topology(const char *path, const char *model_dir, const int32_t *prompt,
                            int32_t n_prompt, int32_t max_tokens, int32_t eos,
                            const duet_sampling_params_t *sp, int threads, const char *trace,
                            int32_t *gen, int32_t *n_gen, double *secs)
{
    duet__topo_pipe_t tp;
    if (duet__topo_pipe_init(&tp, "generate", path, model_dir, false))
        return -1;
    if (threads > 0)
        tp.cfg.threads = threads;
    tp.cfg.trace_path = trace;
    int rc = -1;
    duet_pipe_t *p = NULL;
    double t0 = duet_now_s();
    if (duet_pipe_create(&tp.cfg, &p)) {
        fprintf(stderr, "duet generate: %s: %s\n", path, duet_error());
        goto out;
    }
    /* every end id of the model ends it, not only the first (eos < 0: none) */
    const duet_model_t *mdl = duet_pipe_model(p);
    duet_pipe_sampling_t ps = {sp->temperature, sp->top_k, sp->top_p, sp->seed, NULL, 0};
    if (eos >= 0 && mdl && mdl->cfg.n_eos > 1) {
        ps.eos_ids = mdl->cfg.eos_ids;
        ps.n_eos_ids = mdl->cfg.n_eos;
    }
    if (duet_pipe_submit_sampled(p, 1, prompt, n_prompt, max_tokens, eos, &ps) ||
        duet_pipe_wait(p, 1, max_tokens, 600000)) {
        fprintf(stderr, "duet generate: %s\n", duet_error());
        goto out;
    }
    char err[256];
    bool done;
    *n_gen = duet_pipe_result(p, 1, gen, max_tokens, &done, err, sizeof(err));
    *secs = duet_now_s() - t0;
    if (err[0]) {
        fprintf(stderr, "duet generate: %s\n", err);
        goto out;
    }
    rc = 0;
out:
    duet_pipe_destroy(&p);
    duet__topo_pipe_cleanup(&tp);
    return rc;
}
