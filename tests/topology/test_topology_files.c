/* Deployment files: every example loads and validates against the real
 * model, each bad file reports its problem at the right line and key,
 * API-composed equals file-loaded, and load -> write -> load round-trips. */
#include "topology/topology.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define EXAMPLES DUET_SOURCE_DIR "/examples/topologies"

static duet_topology_t *load_example(const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", EXAMPLES, name);
    duet_topology_t *t = NULL;
    duet_topo_report_t report = {0};
    duet_status_t st = duet_topology_load(path, NULL, &t, &report);
    if (st)
        fprintf(stderr, "%s: %s\n", path, duet_error());
    assert_int_equal(st, DUET_OK);
    assert_int_equal(report.n_issues, 0);
    assert_non_null(t);
    duet_topo_report_cleanup(&report);
    return t;
}

static char *model_realpath(void)
{
    char *p = realpath(DUET_MODELS "/pycoder-moe", NULL);
    assert_non_null(p);
    return p;
}

static void check_common(const duet_topology_t *t)
{
    const duet_topo_settings_t *s = duet_topology_settings(t);
    char *model = model_realpath();
    assert_string_equal(s->model_dir, model);
    free(model);
    assert_non_null(duet_topology_find_kind(t, DUET_ACTOR_ROUTER));
    assert_non_null(duet_topology_find_kind(t, DUET_ACTOR_SCHEDULER));
    /* every expert of the model is on at least one shard */
    for (int e = 0; e < 8; e++)
        assert_true(duet_topology_expert_shards(t, e, NULL, 0) >= 1);
    assert_int_equal(duet_topology_expert_shards(t, 8, NULL, 0), 0);
}

static void test_single(void **state)
{
    (void)state;
    duet_topology_t *t = load_example("single.yaml");
    check_common(t);
    assert_int_equal(duet_topology_attention_count(t), 1);
    assert_int_equal(duet_topology_expert_shard_count(t), 1);
    assert_int_equal(duet_topology_node_count(t), 1);
    const duet_topo_settings_t *s = duet_topology_settings(t);
    assert_int_equal(s->control, DUET_CONTROL_INPROC);
    assert_int_equal(s->micro_batches, 2);
    assert_string_equal(s->name, "single");
    size_t idx[8];
    assert_int_equal(duet_topology_node_actors(t, "main", idx, 8), 5);
    const duet_topo_actor_t *e = duet_topology_expert_shard(t, 0);
    assert_non_null(e);
    assert_string_equal(e->name, "expert/0");
    assert_int_equal(e->n_experts, 8);
    const duet_topo_actor_t *gw = duet_topology_find_kind(t, DUET_ACTOR_GATEWAY);
    assert_string_equal(gw->listen, "127.0.0.1:8000");
    duet_topology_destroy(&t);
    assert_null(t);
}

static void test_local_2x4(void **state)
{
    (void)state;
    duet_topology_t *t = load_example("local-2x4.yaml");
    check_common(t);
    assert_int_equal(duet_topology_attention_count(t), 2);
    assert_int_equal(duet_topology_expert_shard_count(t), 4);
    assert_int_equal(duet_topology_settings(t)->data, DUET_DATA_SHM);
    assert_int_equal(duet_topology_settings(t)->micro_batches, 3);
    /* expert -> shard table: expert 5 lives on expert/2 only */
    int shards[4];
    assert_int_equal(duet_topology_expert_shards(t, 5, shards, 4), 1);
    assert_int_equal(shards[0], 2);
    const duet_topo_actor_t *a1 = duet_topology_attention(t, 1);
    assert_string_equal(a1->name, "attn/1");
    assert_string_equal(a1->node, "attn1");
    assert_int_equal(a1->compute.threads, 2);
    size_t idx[4];
    assert_int_equal(duet_topology_node_actors(t, "exp3", idx, 4), 1);
    const duet_topo_actor_t *x = duet_topology_actor(t, idx[0]);
    assert_int_equal(x->kind, DUET_ACTOR_EXPERT);
    assert_int_equal(x->shard, 3);
    assert_int_equal(x->n_experts, 2);
    assert_int_equal(x->experts[0], 6);
    assert_int_equal(x->experts[1], 7);
    const duet_topo_node_t *front = duet_topology_node(t, 0);
    assert_string_equal(front->address, "ipc:///tmp/duet-local-2x4-front.sock");
    assert_null(duet_topology_node(t, 1)->address);
    duet_topology_destroy(&t);
}

static void test_uneven(void **state)
{
    (void)state;
    duet_topology_t *t = load_example("uneven.yaml");
    check_common(t);
    assert_int_equal(duet_topology_attention_count(t), 3);
    assert_int_equal(duet_topology_expert_shard_count(t), 2);
    int shards[4];
    assert_int_equal(duet_topology_expert_shards(t, 0, shards, 4), 2); /* the replica */
    assert_int_equal(shards[0], 0);
    assert_int_equal(shards[1], 1);
    assert_int_equal(duet_topology_expert_shards(t, 4, shards, 4), 1);
    assert_int_equal(shards[0], 1);
    size_t idx[8];
    assert_int_equal(duet_topology_node_actors(t, "attn", idx, 8), 3);
    for (int i = 0; i < 3; i++) {
        const duet_topo_actor_t *a = duet_topology_actor(t, idx[i]);
        char name[16];
        snprintf(name, sizeof(name), "attn/%d", i);
        assert_string_equal(a->name, name);
        assert_int_equal(a->shard, i);
    }
    assert_string_equal(duet_topology_expert_shard(t, 1)->name, "expert/hot-b");
    duet_topology_destroy(&t);
}

static void test_hetero(void **state)
{
    (void)state;
    duet_topology_t *t = load_example("hetero.yaml");
    check_common(t);
    const duet_topo_actor_t *a = duet_topology_attention(t, 0);
    assert_int_equal(a->compute.backend, DUET_COMPUTE_CUDA);
    assert_int_equal(a->compute.device, 0);
    for (int s = 0; s < duet_topology_expert_shard_count(t); s++)
        assert_int_equal(duet_topology_expert_shard(t, s)->compute.backend, DUET_COMPUTE_CPU);
    assert_int_equal(duet_topology_expert_shard(t, 1)->compute.threads, 2);
    duet_topology_destroy(&t);
}

/* load -> write -> load gives an equal deployment, and writing is stable */
static void round_trip(const duet_topology_t *t)
{
    duet_buf_t a = {0}, b = {0};
    assert_int_equal(duet_topology_write(t, &a), DUET_OK);
    duet_topology_t *u = NULL;
    duet_topo_report_t report = {0};
    duet_status_t st =
        duet_topology_parse((const char *)a.data, a.len, "written.yaml", NULL, NULL, &u, &report);
    if (st)
        fprintf(stderr, "%s\n--- text:\n%.*s", duet_error(), (int)a.len, (const char *)a.data);
    assert_int_equal(st, DUET_OK);
    assert_true(duet_topology_equal(t, u));
    assert_int_equal(duet_topology_write(u, &b), DUET_OK);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    duet_topo_report_cleanup(&report);
    duet_topology_destroy(&u);
    duet_buf_cleanup(&a);
    duet_buf_cleanup(&b);
}

static void test_round_trip_examples(void **state)
{
    (void)state;
    static const char *const files[] = {"single.yaml", "local-2x4.yaml", "uneven.yaml",
                                        "hetero.yaml"};
    for (size_t i = 0; i < DUET_ARRAY_LEN(files); i++) {
        duet_topology_t *t = load_example(files[i]);
        round_trip(t);
        duet_topology_destroy(&t);
    }
}

/* Strings that need quoting, CURVE keys and tcp addresses survive a trip. */
static void test_round_trip_quoting(void **state)
{
    (void)state;
    duet_topology_t *t = NULL;
    assert_int_equal(duet_topology_create(&t), DUET_OK);
    char *model = model_realpath();
    assert_int_equal(duet_topology_set_model(t, model), DUET_OK);
    free(model);
    assert_int_equal(duet_topology_set_name(t, "true"), DUET_OK); /* a YAML bool word */
    duet_topology_set_control(t, DUET_CONTROL_TCP, true);
    duet_topology_set_data_provider(t, DUET_DATA_TCP);
    const char *key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    duet_topo_node_spec_t a = {.name = "a",
                               .host = "10.0.0.1",
                               .address = "tcp://10.0.0.1:7000",
                               .curve_public = key,
                               .curve_secret_file = "/etc/duet/a #1.key"};
    duet_topo_node_spec_t b = {.name = "b",
                               .host = "10.0.0.2",
                               .address = "tcp://10.0.0.2:7000",
                               .curve_public = key,
                               .curve_secret_file = "keys/\"b\".key"};
    assert_int_equal(duet_topology_add_node(t, &a), DUET_OK);
    assert_int_equal(duet_topology_add_node(t, &b), DUET_OK);
    int all[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    duet_compute_t gpu = {.backend = DUET_COMPUTE_CUDA, .device = 3, .threads = 2};
    assert_int_equal(duet_topology_add_router(t, "a"), DUET_OK);
    assert_int_equal(duet_topology_add_scheduler(t, "a"), DUET_OK);
    assert_int_equal(duet_topology_add_attention(t, "a", 2, &gpu), DUET_OK);
    assert_int_equal(duet_topology_add_expert_shard(t, "b", NULL, all, 8, NULL), DUET_OK);
    assert_int_equal(duet_topology_add_gateway(t, "a", "[::1]:8080"), DUET_OK);
    duet_topo_report_t report = {0};
    duet_status_t st = duet_topology_validate(t, NULL, &report);
    if (st)
        fprintf(stderr, "%s\n", duet_error());
    assert_int_equal(st, DUET_OK);
    round_trip(t);
    duet_topo_report_cleanup(&report);
    duet_topology_destroy(&t);
}

/* The uneven deployment composed through the API equals the file. */
static void test_api_equals_file(void **state)
{
    (void)state;
    char *model = model_realpath();
    duet_topology_t *t = NULL;
    assert_int_equal(duet_topology_create(&t), DUET_OK);
    static const char *const nodes[] = {"front", "attn", "exp0", "exp1"};
    for (size_t i = 0; i < 4; i++) {
        duet_topo_node_spec_t spec = {.name = nodes[i]};
        assert_int_equal(duet_topology_add_node(t, &spec), DUET_OK);
    }
    assert_int_equal(duet_topology_set_name(t, "uneven"), DUET_OK);
    assert_int_equal(duet_topology_set_model(t, model), DUET_OK);
    duet_topology_set_micro_batches(t, 3);
    duet_topology_set_token_budget(t, 384);
    duet_topology_set_kv_cache(t, 768, 16);
    duet_compute_t cpu1 = {.backend = DUET_COMPUTE_CPU, .threads = 1};
    int hot_a[] = {0, 1, 2, 3}, hot_b[] = {0, 4, 5, 6, 7};
    int shard = -1;
    assert_int_equal(duet_topology_add_gateway(t, "front", "127.0.0.1:8001"), DUET_OK);
    assert_int_equal(duet_topology_add_scheduler(t, "front"), DUET_OK);
    assert_int_equal(duet_topology_add_router(t, "front"), DUET_OK);
    assert_int_equal(duet_topology_add_attention(t, "attn", 3, &cpu1), DUET_OK);
    assert_int_equal(duet_topology_name_last_actor(t, "x"), DUET_ERR_INVALID); /* a group */
    assert_int_equal(duet_topology_add_expert_shard(t, "exp0", &cpu1, hot_a, 4, &shard), DUET_OK);
    assert_int_equal(shard, 0);
    assert_int_equal(duet_topology_name_last_actor(t, "expert/hot-a"), DUET_OK);
    assert_int_equal(duet_topology_add_expert_shard(t, "exp1", &cpu1, hot_b, 5, &shard), DUET_OK);
    assert_int_equal(shard, 1);
    assert_int_equal(duet_topology_name_last_actor(t, "expert/hot-b"), DUET_OK);
    assert_int_equal(duet_topology_validate(t, NULL, NULL), DUET_OK);

    duet_topology_t *f = load_example("uneven.yaml");
    assert_true(duet_topology_equal(t, f));
    /* and one difference is seen */
    duet_topology_set_micro_batches(t, 2);
    assert_false(duet_topology_equal(t, f));
    duet_topology_destroy(&f);
    duet_topology_destroy(&t);
    free(model);
}

/* examples/compose_topology prints a file equal to uneven.yaml. */
static void test_compose_example(void **state)
{
    (void)state;
#ifndef DUET_EXAMPLE_COMPOSE
    print_message("SKIP: examples/compose_topology was not built in this configuration\n");
    skip();
#else
    char *model = model_realpath();
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "'%s' '%s'", DUET_EXAMPLE_COMPOSE, model);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    duet_buf_t out = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        assert_int_equal(duet_buf_append(&out, chunk, n), DUET_OK);
    assert_int_equal(pclose(p), 0);
    duet_topology_t *c = NULL;
    duet_status_t st =
        duet_topology_parse((const char *)out.data, out.len, "composed.yaml", NULL, NULL, &c, NULL);
    if (st)
        fprintf(stderr, "%s\n", duet_error());
    assert_int_equal(st, DUET_OK);
    duet_topology_t *f = load_example("uneven.yaml");
    assert_true(duet_topology_equal(c, f));
    duet_topology_destroy(&f);
    duet_topology_destroy(&c);
    duet_buf_cleanup(&out);
    free(model);
#endif
}

/* ---- bad files ------------------------------------------------------------ */

typedef struct bad_case {
    const char *what;
    const char *text;
    int line;         /* expected line of the issue */
    const char *key;  /* expected key path */
    const char *says; /* expected words in the message */
} bad_case_t;

/* Lines: 1 model, 2 nodes, 3 node a, 4 actors, 5 router, 6 scheduler,
 * 7 attention, 8 expert. Each case changes one thing. */
#define HEAD "model: /nonexistent/model\nnodes:\n  - name: a\nactors:\n"
#define RS "  - {kind: router, node: a}\n  - {kind: scheduler, node: a}\n"
#define ATT "  - {kind: attention, node: a}\n"
#define ALL8 "  - {kind: expert, node: a, experts: [0, 1, 2, 3, 4, 5, 6, 7]}\n"

static const bad_case_t bad_cases[] = {
    {"expert unplaced", HEAD RS ATT "  - {kind: expert, node: a, experts: [0, 1, 2, 3, 4, 6]}\n", 4,
     "actors", "experts 5, 7 are not placed"},
    {"placed twice on one shard",
     HEAD RS ATT "  - {kind: expert, node: a, experts: [0, 1, 2, 3, 4, 5, 6, 7, 3]}\n", 8,
     "actors[3].experts[8]", "placed twice"},
    {"expert out of range",
     HEAD RS ATT "  - {kind: expert, node: a, experts: [0, 1, 2, 3, 4, 5, 6, 7, 8]}\n", 8,
     "actors[3].experts[8]", "out of range: the model has 8 experts"},
    {"negative expert",
     HEAD RS ATT "  - {kind: expert, node: a, experts: [0, 1, 2, 3, 4, 5, 6, -7]}\n", 8,
     "actors[3].experts[7]", "out of range"},
    {"unknown actor kind", HEAD RS "  - {kind: atention, node: a}\n" ALL8, 7, "actors[2].kind",
     "unknown actor kind 'atention'"},
    {"actor without kind", HEAD RS "  - {node: a}\n" ALL8, 7, "actors[2]", "without a kind"},
    {"node referenced but not defined", HEAD RS "  - {kind: attention, node: b}\n" ALL8, 7,
     "actors[2].node", "node 'b' is not defined"},
    {"node missing address for tcp",
     "model: /m\ntransport:\n  control: tcp\nnodes:\n  - name: a\n    address: "
     "tcp://10.0.0.1:7000\n"
     "  - name: b\nactors:\n" RS ATT ALL8,
     7, "nodes[1].address", "has no address"},
    {"bad tcp address",
     "model: /m\ntransport: {control: tcp}\nnodes:\n  - {name: a, address: 'tcp://10.0.0.1'}\n"
     "  - {name: b, address: 'tcp://10.0.0.2:7000'}\nactors:\n" RS ATT ALL8,
     4, "nodes[0].address", "needs a host and a port"},
    {"address of the wrong transport",
     "model: /m\nnodes:\n  - {name: a, address: 'tcp://10.0.0.1:7000'}\nactors:\n" RS ATT ALL8, 3,
     "nodes[0].address", "does not fit control transport ipc"},
    {"node missing host for tcp data across hosts",
     "model: /m\ntransport: {control: tcp, data: tcp}\nnodes:\n"
     "  - {name: a, host: 10.0.0.1, address: 'tcp://10.0.0.1:7000'}\n"
     "  - {name: b, address: 'tcp://10.0.0.2:7000'}\nactors:\n" RS ATT ALL8,
     5, "nodes[1].host", "has no host"},
    {"shm across hosts",
     "model: /m\ntransport: {control: tcp, data: shm}\nnodes:\n"
     "  - {name: a, host: 10.0.0.1, address: 'tcp://10.0.0.1:7000'}\n"
     "  - {name: b, host: 10.0.0.2, address: 'tcp://10.0.0.2:7000'}\nactors:\n" RS ATT ALL8,
     2, "transport.data", "shm works on one host"},
    {"inproc across processes",
     "model: /m\ntransport:\n  control: inproc\nnodes:\n  - name: a\n  - name: b\nactors:\n" RS ATT
         ALL8,
     3, "transport.control", "inproc needs every node in one process"},
    {"duplicate node name", "model: /m\nnodes:\n  - name: a\n  - name: a\nactors:\n" RS ATT ALL8, 4,
     "nodes[1].name", "duplicate node name 'a' (first defined at line 3)"},
    {"duplicate actor name",
     HEAD RS "  - {kind: attention, node: a, name: x}\n  - {kind: expert, node: a, name: x, "
             "experts: [0, 1, 2, 3, 4, 5, 6, 7]}\n",
     8, "actors[3].name", "duplicate actor name 'x'"},
    {"bad node name", "model: /m\nnodes:\n  - name: 'a b'\nactors:\n" RS ATT ALL8, 3,
     "nodes[0].name", "node name 'a b' must be"},
    {"m < 1",
     "model: /m\npipeline:\n  micro_batches: 0\nnodes:\n  - name: a\nactors:\n" RS ATT ALL8, 3,
     "pipeline.micro_batches", "between 1 and 64 (got 0)"},
    {"token budget zero",
     "model: /m\npipeline:\n  token_budget: 0\nnodes:\n  - name: a\nactors:\n" RS ATT ALL8, 3,
     "pipeline.token_budget", "must be positive"},
    {"kv blocks negative",
     "model: /m\nkv_cache:\n  blocks: -4\nnodes:\n  - name: a\nactors:\n" RS ATT ALL8, 3,
     "kv_cache.blocks", "must be positive (got -4)"},
    {"kv block size zero",
     "model: /m\nkv_cache: {blocks: 8, block_size: 0}\nnodes:\n  - name: a\nactors:\n" RS ATT ALL8,
     2, "kv_cache.block_size", "must be positive"},
    {"unknown top-level key (typo)", "model: /m\nnodess:\n  - name: a\n", 2, "nodess",
     "unknown key 'nodess' (did you mean 'nodes'?)"},
    {"unknown nested key (typo)",
     "model: /m\npipeline:\n  micro_batchs: 2\nnodes:\n  - name: a\nactors:\n" RS ATT ALL8, 3,
     "pipeline.micro_batchs", "did you mean 'micro_batches'"},
    {"unknown actor key", HEAD RS "  - {kind: attention, node: a, thread: 2}\n" ALL8, 7,
     "actors[2].thread", "did you mean 'threads'"},
    {"unrelated unknown key", "model: /m\nfoo: 1\nnodes:\n  - name: a\nactors:\n" RS ATT ALL8, 2,
     "foo", "expected one of"},
    {"key not for this kind", HEAD RS "  - {kind: attention, node: a, experts: [1]}\n" ALL8, 7,
     "actors[2].experts", "does not apply to kind attention"},
    {"integer as a word", "model: /m\npipeline:\n  micro_batches: three\n", 3,
     "pipeline.micro_batches", "expected an integer, got a word 'three'"},
    {"integer quoted", "model: /m\npipeline:\n  micro_batches: \"3\"\n", 3,
     "pipeline.micro_batches", "expected an integer, got a quoted string"},
    {"integer too large", "model: /m\nkv_cache:\n  blocks: 99999999999\n", 3, "kv_cache.blocks",
     "out of range"},
    {"bool wrong", "model: /m\ntransport:\n  curve: maybe\n", 3, "transport.curve",
     "expected true or false"},
    {"list where scalar", "model: [a, b]\n", 1, "model", "expected a string, got a list"},
    {"scalar where list", HEAD RS ATT "  - {kind: expert, node: a, experts: 5}\n", 8,
     "actors[3].experts", "expected a list"},
    {"expert id not a number", HEAD RS ATT "  - {kind: expert, node: a, experts: [0, x]}\n", 8,
     "actors[3].experts[1]", "expected an integer"},
    {"mapping where list", "model: /m\nnodes:\n  name: a\n", 3, "nodes", "expected a list"},
    {"unknown transport", "model: /m\ntransport:\n  data: rdma\n", 3, "transport.data",
     "unknown data-plane provider 'rdma'"},
    {"unknown backend", HEAD RS "  - {kind: attention, node: a, backend: gpu}\n" ALL8, 7,
     "actors[2].backend", "unknown backend 'gpu'"},
    {"device on cpu", HEAD RS "  - {kind: attention, node: a, device: 1}\n" ALL8, 7,
     "actors[2].device", "cuda only"},
    {"device contradicts backend",
     HEAD RS "  - {kind: attention, node: a, device: 2, backend: 'cuda:1'}\n" ALL8, 7,
     "actors[2].device", "device 2 contradicts backend cuda:1"},
    {"threads zero", HEAD RS "  - {kind: attention, node: a, threads: 0}\n" ALL8, 7,
     "actors[2].threads", "between 1 and"},
    {"duplicate key", "model: /m\nmodel: /n\n", 2, "model",
     "duplicate key 'model' (first at line 1)"},
    {"missing model", "nodes:\n  - name: a\nactors:\n" RS ATT ALL8, 1, "model", "missing"},
    {"missing router", HEAD "  - {kind: scheduler, node: a}\n" ATT ALL8, 4, "actors", "no router"},
    {"second scheduler", HEAD RS "  - {kind: scheduler, node: a}\n" ATT ALL8, 7, "actors[2].kind",
     "a second scheduler (the first is at line 6)"},
    {"no attention", HEAD RS ALL8, 4, "actors", "no attention shard"},
    {"empty expert shard", HEAD RS ATT ALL8 "  - {kind: expert, node: a, experts: []}\n", 9,
     "actors[4].experts", "holds no experts"},
    {"count with a name", HEAD RS "  - {kind: attention, node: a, count: 2, name: x}\n" ALL8, 7,
     "actors[2].name", "takes no name"},
    {"count zero", HEAD RS "  - {kind: attention, node: a, count: 0}\n" ALL8, 7, "actors[2].count",
     "between 1 and"},
    {"bad gateway listen", HEAD RS ATT ALL8 "  - {kind: gateway, node: a, listen: nowhere}\n", 9,
     "actors[4].listen", "HOST:PORT"},
    {"curve keys missing",
     "model: /m\ntransport: {curve: true}\nnodes:\n  - name: a\nactors:\n" RS ATT ALL8, 4,
     "nodes[0].curve_public", "no CURVE public key"},
    {"process on two hosts",
     "model: /m\ntransport: {control: tcp, data: tcp}\nnodes:\n"
     "  - {name: a, host: 10.0.0.1, process: p, address: 'tcp://10.0.0.1:1'}\n"
     "  - {name: b, host: 10.0.0.2, process: p, address: 'tcp://10.0.0.2:1'}\nactors:\n" RS ATT
         ALL8,
     5, "nodes[1].host", "shares process 'p'"},
    {"yaml syntax error", "model: /m\nnodes: [a, b\nactors:\n", 3, "", "YAML syntax error"},
    {"alias refused", "model: &m /m\nname: *m\n", 1, "", "anchors"},
    {"not a mapping", "- just\n- a list\n", 1, "", "a deployment file is a mapping"},
    {"version", "version: 2\nmodel: /m\n", 1, "version", "unsupported format version 2"},
};

static const duet_topo_issue_t *find_issue(const duet_topo_report_t *r, const char *key)
{
    for (size_t i = 0; i < r->n_issues; i++)
        if (strcmp(r->issues[i].key, key) == 0)
            return &r->issues[i];
    return NULL;
}

static void dump(const duet_topo_report_t *r)
{
    duet_buf_t b = {0};
    duet_topo_report_format(r, &b);
    fprintf(stderr, "%.*s", (int)b.len, b.data ? (const char *)b.data : "");
    duet_buf_cleanup(&b);
}

static void test_bad_files(void **state)
{
    (void)state;
    duet_topo_validate_opts_t opts = {.n_experts = 8};
    int failed = 0;
    for (size_t i = 0; i < DUET_ARRAY_LEN(bad_cases); i++) {
        const bad_case_t *c = &bad_cases[i];
        duet_topology_t *t = NULL;
        duet_topo_report_t r = {0};
        duet_status_t st =
            duet_topology_parse(c->text, strlen(c->text), "bad.yaml", NULL, &opts, &t, &r);
        const duet_topo_issue_t *is = find_issue(&r, c->key);
        bool ok = st == DUET_ERR_INVALID && t == NULL && is && is->line == c->line &&
                  strstr(is->message, c->says) && is->file && !strcmp(is->file, "bad.yaml");
        /* duet_error() carries the first issues as file:line:col */
        char where[32];
        snprintf(where, sizeof(where), "bad.yaml:%d:", r.n_issues ? r.issues[0].line : -1);
        ok = ok && strstr(duet_error(), where) != NULL;
        if (!ok) {
            failed++;
            fprintf(stderr, "case '%s': want line %d key '%s' saying '%s'; got status %d:\n",
                    c->what, c->line, c->key, c->says, st);
            dump(&r);
        }
        duet_topo_report_cleanup(&r);
        duet_topology_destroy(&t);
    }
    assert_int_equal(failed, 0);
}

/* Several problems in one file are all reported, in file order. */
static void test_many_issues(void **state)
{
    (void)state;
    const char *text =
        "model: /m\npipeline: {micro_batches: 0, token_budget: -1}\nnodes:\n"
        "  - name: a\n  - name: a\nactors:\n" RS "  - {kind: attention, node: zz}\n" ALL8;
    duet_topo_validate_opts_t opts = {.n_experts = 8};
    duet_topology_t *t = NULL;
    duet_topo_report_t r = {0};
    assert_int_equal(duet_topology_parse(text, strlen(text), "many.yaml", NULL, &opts, &t, &r),
                     DUET_ERR_INVALID);
    assert_int_equal(r.n_issues, 4);
    assert_non_null(find_issue(&r, "pipeline.micro_batches"));
    assert_non_null(find_issue(&r, "pipeline.token_budget"));
    assert_non_null(find_issue(&r, "nodes[1].name"));
    assert_non_null(find_issue(&r, "actors[2].node"));
    assert_null(t);
    duet_topo_report_cleanup(&r);
}

/* Expert range is checked against the real model's config.json. */
static void test_real_model_range(void **state)
{
    (void)state;
    char *model = model_realpath();
    char text[1024];
    snprintf(text, sizeof(text),
             "model: %s\nnodes:\n  - name: a\nactors:\n" RS ATT
             "  - {kind: expert, node: a, experts: [0, 1, 2, 3, 4, 5, 6, 7, 12]}\n",
             model);
    duet_topology_t *t = NULL;
    duet_topo_report_t r = {0};
    assert_int_equal(duet_topology_parse(text, strlen(text), "m.yaml", NULL, NULL, &t, &r),
                     DUET_ERR_INVALID);
    const duet_topo_issue_t *is = find_issue(&r, "actors[3].experts[8]");
    assert_non_null(is);
    assert_int_equal(is->line, 8);
    assert_non_null(strstr(is->message, "expert 12 is out of range: the model has 8 experts"));
    duet_topo_report_cleanup(&r);
    /* a model directory without config.json is reported at `model` */
    const char *bad = "model: /nonexistent/dir\nnodes:\n  - name: a\nactors:\n" RS ATT ALL8;
    assert_int_equal(duet_topology_parse(bad, strlen(bad), "m.yaml", NULL, NULL, &t, &r),
                     DUET_ERR_INVALID);
    is = find_issue(&r, "model");
    assert_non_null(is);
    assert_int_equal(is->line, 1);
    assert_non_null(strstr(is->message, "config.json"));
    duet_topo_report_cleanup(&r);
    free(model);
}

/* Relative model paths resolve against the file's folder. */
static void test_relative_model(void **state)
{
    (void)state;
    const char *text = "model: ../models/pycoder-moe\nnodes:\n  - name: a\nactors:\n" RS ATT ALL8;
    duet_topology_t *t = NULL;
    assert_int_equal(duet_topology_parse(text, strlen(text), "rel.yaml", DUET_MODELS "/../tests",
                                         NULL, &t, NULL),
                     DUET_OK);
    char *model = model_realpath();
    assert_string_equal(duet_topology_settings(t)->model_dir, model);
    free(model);
    duet_topology_destroy(&t);
    /* a missing file is an I/O error that names it */
    assert_int_equal(duet_topology_load("/nonexistent/x.yaml", NULL, &t, NULL), DUET_ERR_IO);
    assert_non_null(strstr(duet_error(), "/nonexistent/x.yaml"));
    assert_null(t);
}

/* API-composed deployments get the same checks, with keys and no lines. */
static void test_api_validation(void **state)
{
    (void)state;
    duet_topology_t *t = NULL;
    assert_int_equal(duet_topology_create(&t), DUET_OK);
    duet_topo_node_spec_t a = {.name = "a"};
    assert_int_equal(duet_topology_add_node(t, &a), DUET_OK);
    assert_int_equal(duet_topology_add_router(t, "a"), DUET_OK);
    assert_int_equal(duet_topology_add_scheduler(t, "a"), DUET_OK);
    assert_int_equal(duet_topology_add_attention(t, "nowhere", 2, NULL), DUET_OK);
    int ex[] = {0, 1, 1, 9};
    assert_int_equal(duet_topology_add_expert_shard(t, "a", NULL, ex, 4, NULL), DUET_OK);
    duet_topology_set_micro_batches(t, 0);
    duet_topo_validate_opts_t opts = {.n_experts = 8};
    duet_topo_report_t r = {0};
    assert_int_equal(duet_topology_validate(t, &opts, &r), DUET_ERR_INVALID);
    const char *keys[] = {"model",
                          "pipeline.micro_batches",
                          "actors[2].node",
                          "actors[3].experts[2]",
                          "actors[3].experts[3]",
                          "actors"};
    for (size_t i = 0; i < DUET_ARRAY_LEN(keys); i++) {
        const duet_topo_issue_t *is = find_issue(&r, keys[i]);
        if (!is)
            dump(&r);
        assert_non_null(is);
        assert_int_equal(is->line, 0);
        assert_null(is->file);
    }
    assert_int_equal(r.n_issues, DUET_ARRAY_LEN(keys));
    duet_topo_report_cleanup(&r);
    /* fix them all */
    int fixed[] = {0, 1, 2, 3, 4, 5, 6, 7};
    assert_int_equal(duet_topology_set_shard_experts(t, 0, fixed, 8), DUET_OK);
    assert_int_equal(duet_topology_set_shard_experts(t, 1, fixed, 8), DUET_ERR_NOT_FOUND);
    duet_topology_set_micro_batches(t, 4);
    assert_int_equal(duet_topology_set_model(t, "/m"), DUET_OK);
    duet_topo_node_spec_t nw = {.name = "nowhere"};
    assert_int_equal(duet_topology_add_node(t, &nw), DUET_OK);
    assert_int_equal(duet_topology_validate(t, &opts, &r), DUET_OK);
    assert_int_equal(r.n_issues, 0);
    duet_topology_destroy(&t);
    duet_topology_destroy(&t); /* NULL is fine */
    duet_topology_destroy(NULL);
}

/* Big or hostile files stay bounded: actor totals, issue counts, long
 * expert lists (linear checks). */
static void test_limits(void **state)
{
    (void)state;
    duet_topo_validate_opts_t opts = {.n_experts = 8};
    duet_buf_t b = {0};
    assert_int_equal(duet_buf_printf(&b, "model: /m\nnodes: [{name: a}]\nactors:\n"), DUET_OK);
    for (int i = 0; i < 20; i++) /* 20 x 4096 attention shards > 65536 */
        assert_int_equal(duet_buf_printf(&b, "  - {kind: attention, node: a, count: 4096}\n"),
                         DUET_OK);
    duet_topology_t *t = NULL;
    duet_topo_report_t r = {0};
    assert_int_equal(
        duet_topology_parse((const char *)b.data, b.len, "big.yaml", NULL, &opts, &t, &r),
        DUET_ERR_INVALID);
    const duet_topo_issue_t *is = find_issue(&r, "actors[16]");
    assert_non_null(is);
    assert_non_null(strstr(is->message, "more than 65536 actors"));
    duet_topo_report_cleanup(&r);
    duet_buf_cleanup(&b);

    /* 5000 bad expert ids: the report keeps 200 and says so */
    assert_int_equal(duet_buf_printf(&b, "model: /m\nnodes: [{name: a}]\nactors:\n" RS ATT ALL8
                                         "  - {kind: expert, node: a, experts: ["),
                     DUET_OK);
    for (int i = 0; i < 5000; i++)
        assert_int_equal(duet_buf_printf(&b, "%s%d", i ? ", " : "", 100 + i), DUET_OK);
    assert_int_equal(duet_buf_printf(&b, "]}\n"), DUET_OK);
    assert_int_equal(
        duet_topology_parse((const char *)b.data, b.len, "many.yaml", NULL, &opts, &t, &r),
        DUET_ERR_INVALID);
    assert_int_equal(r.n_issues, 201);
    assert_non_null(strstr(r.issues[200].message, "the rest are not shown"));
    assert_non_null(strstr(duet_error(), "more problems"));
    duet_topo_report_cleanup(&r);
    duet_buf_cleanup(&b);

    /* 200000 ids on one shard, all in range, each expert many times:
     * duplicates found without a quadratic scan (the ctest timeout would
     * catch one) */
    assert_int_equal(duet_buf_printf(&b, "model: /m\nnodes: [{name: a}]\nactors:\n" RS ATT
                                         "  - {kind: expert, node: a, experts: ["),
                     DUET_OK);
    for (int i = 0; i < 200000; i++)
        assert_int_equal(duet_buf_printf(&b, "%s%d", i ? "," : "", i % 8), DUET_OK);
    assert_int_equal(duet_buf_printf(&b, "]}\n"), DUET_OK);
    assert_int_equal(
        duet_topology_parse((const char *)b.data, b.len, "dup.yaml", NULL, &opts, &t, &r),
        DUET_ERR_INVALID);
    is = find_issue(&r, "actors[3].experts[8]");
    assert_non_null(is);
    assert_non_null(strstr(is->message, "expert 0 is placed twice"));
    assert_non_null(strstr(is->message, "also actors[3].experts[0]"));
    duet_topo_report_cleanup(&r);
    duet_buf_cleanup(&b);
    assert_null(t);
}

/* backend: cuda with device: N, in either order, equals backend: cuda:N */
static void test_cuda_device(void **state)
{
    (void)state;
    duet_topo_validate_opts_t opts = {.n_experts = 8};
    const char *texts[] = {
        HEAD RS "  - {kind: attention, node: a, backend: cuda, device: 3}\n" ALL8,
        HEAD RS "  - {kind: attention, node: a, device: 3, backend: cuda}\n" ALL8,
        HEAD RS "  - {kind: attention, node: a, backend: 'cuda:3', device: 3}\n" ALL8,
        HEAD RS "  - {kind: attention, node: a, backend: 'cuda:3'}\n" ALL8,
    };
    for (size_t i = 0; i < DUET_ARRAY_LEN(texts); i++) {
        duet_topology_t *t = NULL;
        assert_int_equal(
            duet_topology_parse(texts[i], strlen(texts[i]), "cuda.yaml", NULL, &opts, &t, NULL),
            DUET_OK);
        const duet_topo_actor_t *a = duet_topology_attention(t, 0);
        assert_int_equal(a->compute.backend, DUET_COMPUTE_CUDA);
        assert_int_equal(a->compute.device, 3);
        duet_topology_destroy(&t);
    }
}

static void test_names(void **state)
{
    (void)state;
    duet_actor_kind_t k = DUET_ACTOR_ROUTER;
    assert_true(duet_actor_kind_parse("expert", &k));
    assert_int_equal(k, DUET_ACTOR_EXPERT);
    assert_false(duet_actor_kind_parse("experts", &k));
    assert_int_equal(k, DUET_ACTOR_EXPERT);
    assert_string_equal(duet_actor_kind_name(DUET_ACTOR_GATEWAY), "gateway");
    assert_string_equal(duet_actor_kind_name((duet_actor_kind_t)77), "?");
    duet_data_provider_t d;
    assert_true(duet_data_provider_parse("verbs", &d));
    assert_int_equal(d, DUET_DATA_VERBS);
    duet_control_transport_t c;
    assert_true(duet_control_transport_parse("tcp", &c));
    assert_int_equal(c, DUET_CONTROL_TCP);
    assert_string_equal(duet_data_provider_name(DUET_DATA_SIM), "sim");
    assert_string_equal(duet_control_transport_name(DUET_CONTROL_INPROC), "inproc");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single),
        cmocka_unit_test(test_local_2x4),
        cmocka_unit_test(test_uneven),
        cmocka_unit_test(test_hetero),
        cmocka_unit_test(test_round_trip_examples),
        cmocka_unit_test(test_round_trip_quoting),
        cmocka_unit_test(test_api_equals_file),
        cmocka_unit_test(test_compose_example),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_many_issues),
        cmocka_unit_test(test_real_model_range),
        cmocka_unit_test(test_relative_model),
        cmocka_unit_test(test_api_validation),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_cuda_device),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
