/* duet generate --topology FILE — generation through a deployment: the
 * file's attention shards, expert shards (placement, replicas), m, token
 * budget and KV cache, all brought up in this process (actors/pipeline.h:
 * one node per actor over ZeroMQ inproc, the file's data-plane provider
 * between the shards; verbs falls back to shm). Greedy only. */
#include <stdio.h>
#include <string.h>

#include "actors/pipeline.h"
#include "topology/topology.h"

int duet__topology_model_dir(const char *path, char *buf, size_t cap);
int duet__generate_topology(const char *path, const char *model_dir, const int32_t *prompt,
                            int32_t n_prompt, int32_t max_tokens, int32_t eos, int threads,
                            int32_t *gen, int32_t *n_gen, double *secs);

static duet_status_t load(const char *path, duet_topology_t **topo)
{
    duet_topo_report_t rep = {0};
    duet_status_t st = duet_topology_load(path, NULL, topo, &rep);
    if (st) {
        duet_buf_t b = {0};
        duet_topo_report_format(&rep, &b);
        fprintf(stderr, "duet generate: %s is not a valid deployment:\n%.*s", path,
                (int)b.len, b.data ? (const char *)b.data : "");
        if (!b.len)
            fprintf(stderr, "%s\n", duet_error());
        duet_buf_cleanup(&b);
    }
    duet_topo_report_cleanup(&rep);
    return st;
}

/* The deployment's model directory into buf; 0 on success. */
int duet__topology_model_dir(const char *path, char *buf, size_t cap)
{
    duet_topology_t *topo = NULL;
    if (load(path, &topo))
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
                            int32_t n_prompt, int32_t max_tokens, int32_t eos, int threads,
                            int32_t *gen, int32_t *n_gen, double *secs)
{
    duet_topology_t *topo = NULL;
    if (load(path, &topo))
        return -1;
    const duet_topo_settings_t *s = duet_topology_settings(topo);
    int S = duet_topology_expert_shard_count(topo);
    int A = duet_topology_attention_count(topo);
    const int **rows = duet_calloc((size_t)(S > 0 ? S : 1), sizeof(int *));
    int *n = duet_calloc((size_t)(S > 0 ? S : 1), sizeof(int));
    int rc = -1;
    duet_pipe_t *p = NULL;
    if (!rows || !n)
        goto out;
    for (int i = 0; i < S; i++) {
        const duet_topo_actor_t *a = duet_topology_expert_shard(topo, i);
        rows[i] = a->experts;
        n[i] = (int)a->n_experts;
    }
    const char *prov = duet_data_provider_name(s->data);
    if (s->data == DUET_DATA_VERBS)
        prov = "shm";
    duet_pipe_config_t cfg = {
        .model_dir = model_dir ? model_dir : s->model_dir,
        .n_attention = A,
        .n_expert_shards = S,
        .shard_experts = rows,
        .shard_n_experts = n,
        .micro_batches = s->micro_batches,
        .token_budget = s->token_budget,
        .kv_blocks = s->kv_blocks,
        .kv_block_size = s->kv_block_size,
        .provider = prov,
        .control = DUET_PIPE_CONTROL_INPROC,
        .threads = threads,
    };
    double t0 = duet_now_s();
    if (duet_pipe_create(&cfg, &p)) {
        fprintf(stderr, "duet generate: %s: %s\n", path, duet_error());
        goto out;
    }
    if (duet_pipe_submit(p, 1, prompt, n_prompt, max_tokens, eos) ||
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
    duet_free(rows);
    duet_free(n);
    duet_topology_destroy(&topo);
    return rc;
}
