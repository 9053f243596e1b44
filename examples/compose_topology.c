/* compose_topology — builds the `uneven` deployment of
 * examples/topologies/uneven.yaml in code (3 attention shards, 2 expert
 * shards, the hot expert 0 replicated on both), validates it against the
 * model's config.json and prints it as a deployment file.
 *
 *   compose_topology [MODEL_DIR]      (default: models/pycoder-moe)
 *
 * The output loads back to the same deployment as uneven.yaml when
 * MODEL_DIR is that file's model directory, absolute. */
#include "topology/topology.h"

#include <stdio.h>
#include <stdlib.h>

static duet_status_t compose_uneven(const char *model_dir, duet_topology_t **topo_out)
{
    duet_topology_t *t = NULL;
    duet_status_t st = duet_topology_create(&t);
    if (st)
        return st;
    static const char *const nodes[] = {"front", "attn", "exp0", "exp1"};
    static const int hot_a[] = {0, 1, 2, 3};
    static const int hot_b[] = {0, 4, 5, 6, 7}; /* expert 0 again: a replica */
    const duet_compute_t cpu1 = {.backend = DUET_COMPUTE_CPU, .threads = 1};
    for (size_t i = 0; i < DUET_ARRAY_LEN(nodes); i++) {
        duet_topo_node_spec_t spec = {.name = nodes[i]};
        if ((st = duet_topology_add_node(t, &spec)))
            goto err_destroy;
    }
    if ((st = duet_topology_set_name(t, "uneven")) || (st = duet_topology_set_model(t, model_dir)))
        goto err_destroy;
    duet_topology_set_micro_batches(t, 3);
    duet_topology_set_token_budget(t, 384);
    duet_topology_set_kv_cache(t, 768, 16);
    duet_topology_set_control(t, DUET_CONTROL_IPC, false);
    duet_topology_set_data_provider(t, DUET_DATA_SHM);
    if ((st = duet_topology_add_gateway(t, "front", "127.0.0.1:8001")) ||
        (st = duet_topology_add_scheduler(t, "front")) ||
        (st = duet_topology_add_router(t, "front")) ||
        (st = duet_topology_add_attention(t, "attn", 3, &cpu1)) ||
        (st = duet_topology_add_expert_shard(t, "exp0", &cpu1, hot_a, DUET_ARRAY_LEN(hot_a),
                                             NULL)) ||
        (st = duet_topology_name_last_actor(t, "expert/hot-a")) ||
        (st = duet_topology_add_expert_shard(t, "exp1", &cpu1, hot_b, DUET_ARRAY_LEN(hot_b),
                                             NULL)) ||
        (st = duet_topology_name_last_actor(t, "expert/hot-b")))
        goto err_destroy;
    *topo_out = t;
    return DUET_OK;
err_destroy:
    duet_topology_destroy(&t);
    return st;
}

int main(int argc, char **argv)
{
    const char *model = argc > 1 ? argv[1] : "models/pycoder-moe";
    duet_topology_t *topo = NULL;
    duet_buf_t out = {0};
    int rc = 1;
    if (compose_uneven(model, &topo)) {
        fprintf(stderr, "compose_topology: %s\n", duet_error());
        return 1;
    }
    /* validation reads MODEL_DIR/config.json for the expert count */
    duet_topo_report_t report = {0};
    if (duet_topology_validate(topo, NULL, &report)) {
        duet_buf_t msg = {0};
        duet_topo_report_format(&report, &msg);
        fprintf(stderr, "compose_topology: invalid deployment:\n%.*s", (int)msg.len,
                msg.data ? (const char *)msg.data : "");
        duet_buf_cleanup(&msg);
        goto out_destroy;
    }
    if (duet_topology_write(topo, &out)) {
        fprintf(stderr, "compose_topology: %s\n", duet_error());
        goto out_destroy;
    }
    fwrite(out.data, 1, out.len, stdout);
    rc = fflush(stdout) == 0 ? 0 : 1;
out_destroy:
    duet_buf_cleanup(&out);
    duet_topo_report_cleanup(&report);
    duet_topology_destroy(&topo);
    return rc;
}
