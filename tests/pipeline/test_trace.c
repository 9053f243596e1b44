/* Pipeline observability (actors/pipeline.h: trace_path, pipe.stats_req):
 * a small deployment (mixtral-tiny, 1 attention + 1 expert shard, m = 2)
 * writes a Chrome trace; the test parses it and checks one named track per
 * actor, slice counts (layers x micro-batches x steps), causality per
 * round (attention, then expert compute, then combine), flows that pair up,
 * and that the stats message counts what was run. The tokens still equal
 * the single-process engine's. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "actors/pipeline.h"
#include "model/backend.h"
#include "model/forward.h"
#include "model/model.h"
#include "model/sampling.h"

#define MIXTRAL DUET_FIXTURES "/mixtral-tiny"
#define NREQ 2
#define MAX_NEW 6

static const int32_t g_prompts[NREQ][6] = {{1, 15, 27, 42, 7, 99}, {3, 8, 64, 5, 0, 0}};
static const int32_t g_plen[NREQ] = {6, 4};

static void engine_greedy(const duet_model_t *m, const int32_t *ids, int32_t n, int32_t *out)
{
    duet_backend_t *be = NULL;
    duet_backend_opts_t bo = {.n_threads = 1};
    assert_int_equal(duet_backend_open("cpu", &bo, &be), DUET_OK);
    duet_engine_opts_t o = {0};
    o.fwd.max_tokens = n + 1;
    o.fwd.max_seqs = 1;
    o.kv.n_blocks = 64;
    o.kv.max_seqs = 1;
    duet_engine_t *e = NULL;
    assert_int_equal(duet_engine_create(be, m, &o, &e), DUET_OK);
    int32_t seq, cur;
    duet_kvcache_seq_open(duet_engine_kv(e), &seq);
    duet_seq_input_t in = {seq, n, ids, DUET_LOGITS_LAST};
    duet_sampling_params_t sp = {0.0f, 0, 1.0f, 0};
    for (int32_t t = 0; t < MAX_NEW; t++) {
        assert_int_equal(duet_engine_step(e, 1, &in, NULL, NULL), DUET_OK);
        assert_int_equal(duet_engine_sample(e, &sp, &cur), DUET_OK);
        out[t] = cur;
        in = (duet_seq_input_t){seq, 1, &out[t], DUET_LOGITS_LAST};
    }
    duet_engine_destroy(&e);
    duet_backend_close(&be);
}

typedef struct slice {
    double ts, end;
    int seen;
} slice_t;

#define MAXR 4096

static int64_t arg_i(const json_t *ev, const char *k)
{
    return json_integer_value(json_object_get(json_object_get(ev, "args"), k));
}

static void test_trace_1x1_m2(void **state)
{
    (void)state;
    const int m = 2;
    duet_model_t *model = NULL;
    duet_load_opts_t lo = {.role = DUET_ROLE_FULL};
    assert_int_equal(duet_model_load(MIXTRAL, &lo, &model), DUET_OK);
    const int L = model->cfg.n_layers, E = model->cfg.n_experts;
    int n_sparse = 0;
    for (int l = 0; l < L; l++)
        n_sparse += model->cfg.sparse_layer[l] ? 1 : 0;
    int32_t eng[NREQ][MAX_NEW];
    for (int k = 0; k < NREQ; k++)
        engine_greedy(model, g_prompts[k], g_plen[k], eng[k]);
    duet_model_destroy(&model);

    int ids[64];
    for (int e = 0; e < E; e++)
        ids[e] = e;
    const int *rows[1] = {ids};
    int nrows[1] = {E};
    char path[256];
    snprintf(path, sizeof(path), "/tmp/duet-trace-test-%d.json", (int)getpid());
    duet_pipe_config_t cfg = {
        .model_dir = MIXTRAL,
        .n_attention = 1,
        .n_expert_shards = 1,
        .shard_experts = rows,
        .shard_n_experts = nrows,
        .micro_batches = m,
        .token_budget = 64,
        .kv_block_size = 16,
        .control = DUET_PIPE_CONTROL_INPROC,
        .trace_path = path,
    };
    duet_pipe_t *p = NULL;
    duet_status_t st = duet_pipe_create(&cfg, &p);
    if (st)
        print_message("pipe: %s\n", duet_error());
    assert_int_equal(st, DUET_OK);
    uint64_t want_tokens = 0;
    for (int k = 0; k < NREQ; k++) {
        assert_int_equal(duet_pipe_submit(p, (uint64_t)k, g_prompts[k], g_plen[k], MAX_NEW, -1),
                         DUET_OK);
        want_tokens += (uint64_t)g_plen[k] + MAX_NEW - 1; /* the last token is not fed */
    }
    for (int k = 0; k < NREQ; k++) {
        assert_int_equal(duet_pipe_wait(p, (uint64_t)k, MAX_NEW, 60000), DUET_OK);
        int32_t out[MAX_NEW];
        bool done = false;
        char err[256];
        int32_t n = duet_pipe_result(p, (uint64_t)k, out, MAX_NEW, &done, err, sizeof(err));
        assert_string_equal(err, "");
        assert_true(done);
        assert_int_equal(n, MAX_NEW);
        for (int t = 0; t < MAX_NEW; t++)
            assert_int_equal(out[t], eng[k][t]);
    }
    /* the scheduler's free/load follow the last step_done: let them land */
    usleep(50000);
    duet_pipe_stats_t ps;
    duet_pipe_stats(p, &ps);
    duet_pipe_actor_stats_t as, es;
    assert_int_equal(duet_pipe_actor_stats(p, "attn/0", &as, 10000), DUET_OK);
    assert_int_equal(duet_pipe_actor_stats(p, "expert/0", &es, 10000), DUET_OK);
    const uint64_t steps = ps.steps, rounds = steps * (uint64_t)n_sparse * (uint64_t)m;
    print_message(
        "  steps %llu, attn: busy %.3f ms rounds %llu tokens %llu bytes %llu; "
        "expert: busy %.3f ms rounds %llu rows %llu bytes %llu\n",
        (unsigned long long)steps, (double)as.busy_ns / 1e6, (unsigned long long)as.rounds,
        (unsigned long long)as.tokens, (unsigned long long)as.bytes, (double)es.busy_ns / 1e6,
        (unsigned long long)es.rounds, (unsigned long long)es.tokens, (unsigned long long)es.bytes);
    assert_true(steps >= MAX_NEW);
    assert_int_equal(as.steps, steps);
    assert_int_equal(as.rounds, rounds);
    assert_int_equal(as.tokens, want_tokens);
    assert_int_equal(es.rounds, rounds);
    assert_int_equal(es.rounds, ps.rounds_expert);
    assert_true(as.busy_ns > 0 && es.busy_ns > 0 && as.bytes > 0 && es.bytes > 0);
    duet_pipe_destroy(&p);

    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        print_message("trace: %s line %d\n", jerr.text, jerr.line);
    assert_non_null(root);
    const json_t *evs = json_object_get(root, "traceEvents");
    assert_true(json_is_array(evs));
    int tid_attn = -1, tid_exp = -1, tid_sched = -1;
    size_t n_ev = json_array_size(evs);
    for (size_t k = 0; k < n_ev; k++) {
        const json_t *ev = json_array_get(evs, k);
        if (strcmp(json_string_value(json_object_get(ev, "ph")), "M") ||
            strcmp(json_string_value(json_object_get(ev, "name")), "thread_name"))
            continue;
        const char *nm = json_string_value(json_object_get(json_object_get(ev, "args"), "name"));
        int tid = (int)json_integer_value(json_object_get(ev, "tid"));
        if (!strcmp(nm, "attn/0")) {
            assert_int_equal(tid_attn, -1);
            tid_attn = tid;
        } else if (!strcmp(nm, "expert/0")) {
            assert_int_equal(tid_exp, -1);
            tid_exp = tid;
        } else if (!strcmp(nm, "scheduler")) {
            assert_int_equal(tid_sched, -1);
            tid_sched = tid;
        }
    }
    assert_true(tid_attn >= 0 && tid_exp >= 0 && tid_sched >= 0);
    assert_true(tid_attn != tid_exp && tid_attn != tid_sched && tid_exp != tid_sched);

    assert_true(rounds < MAXR);
    slice_t *att = calloc(MAXR, sizeof(slice_t)), *disp = calloc(MAXR, sizeof(slice_t)),
            *exp = calloc(MAXR, sizeof(slice_t)), *comb = calloc(MAXR, sizeof(slice_t));
    assert_true(att && disp && exp && comb);
    uint64_t n_att = 0, n_disp = 0, n_exp = 0, n_comb = 0, n_queue = 0, n_kv = 0;
    uint64_t *s_ids = calloc(4 * MAXR, sizeof(uint64_t)),
             *f_ids = calloc(4 * MAXR, sizeof(uint64_t));
    size_t n_s = 0, n_f = 0;
    bool stats_attn = false, stats_exp = false;
    for (size_t k = 0; k < n_ev; k++) {
        const json_t *ev = json_array_get(evs, k);
        const char *ph = json_string_value(json_object_get(ev, "ph"));
        const char *nm = json_string_value(json_object_get(ev, "name"));
        int tid = (int)json_integer_value(json_object_get(ev, "tid"));
        double ts = json_number_value(json_object_get(ev, "ts"));
        if (!strcmp(ph, "X")) {
            double end = ts + json_number_value(json_object_get(ev, "dur"));
            int64_t r = arg_i(ev, "round");
            assert_true(r < MAXR);
            slice_t *tab = NULL;
            if (!strcmp(nm, "attention")) {
                assert_int_equal(tid, tid_attn);
                n_att++;
                tab = r >= 0 ? att : NULL;
            } else if (!strcmp(nm, "dispatch")) {
                assert_int_equal(tid, tid_attn);
                n_disp++;
                tab = disp;
            } else if (!strcmp(nm, "expert")) {
                assert_int_equal(tid, tid_exp);
                n_exp++;
                tab = exp;
            } else if (!strcmp(nm, "combine")) {
                assert_int_equal(tid, tid_attn);
                n_comb++;
                tab = comb;
            }
            if (tab) {
                assert_true(r >= 0);
                assert_int_equal(tab[r].seen, 0);
                tab[r] = (slice_t){ts, end, 1};
            }
        } else if (!strcmp(ph, "s")) {
            assert_true(n_s < 4 * MAXR);
            s_ids[n_s++] = (uint64_t)json_integer_value(json_object_get(ev, "id"));
        } else if (!strcmp(ph, "f")) {
            assert_true(n_f < 4 * MAXR);
            f_ids[n_f++] = (uint64_t)json_integer_value(json_object_get(ev, "id"));
        } else if (!strcmp(ph, "C")) {
            assert_int_equal(tid, tid_sched);
            n_queue += !strcmp(nm, "queue");
            n_kv += !strcmp(nm, "kv_blocks");
        } else if (!strcmp(ph, "i") && !strcmp(nm, "stats")) {
            if (tid == tid_attn) {
                stats_attn = true;
                assert_int_equal(arg_i(ev, "rounds"), as.rounds);
                assert_int_equal(arg_i(ev, "tokens"), as.tokens);
            } else if (tid == tid_exp) {
                stats_exp = true;
                assert_int_equal(arg_i(ev, "rounds"), es.rounds);
            }
        }
    }
    print_message("  trace: %zu events, %llu attention / %llu dispatch / %llu expert / %llu "
                  "combine slices, %zu flows\n",
                  n_ev, (unsigned long long)n_att, (unsigned long long)n_disp,
                  (unsigned long long)n_exp, (unsigned long long)n_comb, n_s);
    assert_int_equal(n_att, (uint64_t)L * (uint64_t)m * steps);
    assert_int_equal(n_disp, rounds);
    assert_int_equal(n_exp, rounds);
    assert_int_equal(n_comb, rounds);
    assert_true(n_queue >= steps && n_kv >= steps);
    assert_true(stats_attn && stats_exp);
    /* causality per (layer, micro-batch) of each step, i.e. per round */
    const double eps = 0.002; /* µs: printing rounds to the ns */
    for (uint64_t r = 0; r < rounds; r++) {
        assert_true(att[r].seen && disp[r].seen && exp[r].seen && comb[r].seen);
        assert_true(att[r].end <= disp[r].ts + eps);
        assert_true(disp[r].end <= exp[r].ts + eps);
        assert_true(exp[r].end <= comb[r].ts + eps);
    }
    /* flows: one dispatch and one result transfer per round, each paired */
    assert_int_equal(n_s, 2 * rounds);
    assert_int_equal(n_f, n_s);
    for (size_t a = 0; a < n_s; a++) {
        int match = 0;
        for (size_t b = 0; b < n_f; b++)
            match += f_ids[b] == s_ids[a];
        assert_int_equal(match, 1);
    }
    free(s_ids);
    free(f_ids);
    free(att);
    free(disp);
    free(exp);
    free(comb);
    json_decref(root);
    unlink(path);
}

/* The per-node trace files of a multi-process deployment merge into one. */
static void test_trace_merge(void **state)
{
    (void)state;
    char a[128], b[128], out[128];
    snprintf(a, sizeof(a), "/tmp/duet-trace-merge-%d.a", (int)getpid());
    snprintf(b, sizeof(b), "/tmp/duet-trace-merge-%d.b", (int)getpid());
    snprintf(out, sizeof(out), "/tmp/duet-trace-merge-%d.json", (int)getpid());
    FILE *f = fopen(a, "w");
    assert_non_null(f);
    fputs("{\"traceEvents\":[\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":2,"
          "\"args\":{\"name\":\"attn/0\"}}\n]}\n",
          f);
    fclose(f);
    f = fopen(b, "w");
    assert_non_null(f);
    fputs("{\"traceEvents\":[\n{\"ph\":\"X\",\"name\":\"expert\",\"pid\":1,\"tid\":3,\"ts\":1.5,"
          "\"dur\":2}\n]}\n",
          f);
    fclose(f);
    const char *parts[3] = {a, "/nonexistent/x", b};
    assert_int_equal(duet_pipe_trace_merge(out, parts, 3), DUET_OK);
    json_error_t jerr;
    json_t *root = json_load_file(out, 0, &jerr);
    assert_non_null(root);
    assert_int_equal(json_array_size(json_object_get(root, "traceEvents")), 2);
    json_decref(root);
    unlink(a);
    unlink(b);
    unlink(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trace_1x1_m2),
        cmocka_unit_test(test_trace_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
