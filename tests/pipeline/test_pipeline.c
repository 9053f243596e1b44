/* The disaggregated pipeline (actors/pipeline.h) against the single-process
 * engine and HF: for tests/fixtures/mixtral-tiny and models/pycoder-moe,
 * every request's greedy tokens must equal the engine's (each prompt run
 * alone) exactly, and HF's reference continuation (mixtral-tiny: up to the
 * first step whose HF top-1/top-2 margin is below 1e-3; pycoder: all of
 * them). Deployments: 1 attention + 1 expert shard, 2 + 4, replicated hot
 * experts, m = 1..4, staggered arrivals, a small KV pool that makes
 * requests queue, ZeroMQ inproc control on threads and the simnet with
 * seeds. A killed expert shard without a replica that is not restarted
 * ends its requests with an error in bounded time (recover_timeout_ms); a
 * stalled one delays them and they finish with the right tokens
 * (tests/faults has the recovery cases). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <glob.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../model/forward_ref.h"
#include "actors/pipeline.h"

#define MIXTRAL DUET_FIXTURES "/mixtral-tiny"
#define PYCODER DUET_MODELS "/pycoder-moe"
#define MAXP 8

typedef struct suite {
    const char *dir;
    int n;
    int32_t *ids[MAXP];
    int32_t n_ids[MAXP];
    int32_t *hf[MAXP];
    float *margin[MAXP]; /* NULL: compare every step */
    int32_t n_hf;
    int32_t *eng[MAXP]; /* engine greedy, n_hf tokens */
    int n_experts;
} suite_t;

static suite_t g_mix, g_py;

static int engine_greedy(duet_backend_t *be, const duet_model_t *m, suite_t *s)
{
    for (int i = 0; i < s->n; i++) {
        duet_engine_opts_t o = {0};
        o.fwd.max_tokens = s->n_ids[i] + 1;
        o.fwd.max_seqs = 1;
        o.kv.n_blocks = 128;
        o.kv.max_seqs = 1;
        duet_engine_t *e = NULL;
        if (duet_engine_create(be, m, &o, &e))
            return -1;
        int32_t seq, cur;
        duet_kvcache_seq_open(duet_engine_kv(e), &seq);
        duet_seq_input_t in = {seq, s->n_ids[i], s->ids[i], DUET_LOGITS_LAST};
        duet_sampling_params_t sp = {0.0f, 0, 1.0f, 0};
        s->eng[i] = malloc(sizeof(int32_t) * (size_t)s->n_hf);
        for (int32_t t = 0; t < s->n_hf; t++) {
            if (duet_engine_step(e, 1, &in, NULL, NULL) || duet_engine_sample(e, &sp, &cur)) {
                duet_engine_destroy(&e);
                return -1;
            }
            s->eng[i][t] = cur;
            in = (duet_seq_input_t){seq, 1, &s->eng[i][t], DUET_LOGITS_LAST};
        }
        duet_engine_destroy(&e);
    }
    return 0;
}

static ref_set_t g_ref;
static json_t *g_json;

static int32_t *json_ids(const json_t *arr, int32_t *n)
{
    *n = (int32_t)json_array_size(arr);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(*n ? *n : 1));
    for (int32_t i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

static int setup(void **state)
{
    (void)state;
    duet_backend_t *be = NULL;
    duet_backend_opts_t bo = {.n_threads = 1};
    if (duet_backend_open("cpu", &bo, &be))
        return -1;
    /* mixtral-tiny: reference.safetensors */
    if (ref_load(MIXTRAL, &g_ref))
        return -1;
    g_mix.dir = MIXTRAL;
    g_mix.n = g_ref.n < MAXP ? g_ref.n : MAXP;
    g_mix.n_hf = g_ref.p[0].n_greedy;
    for (int i = 0; i < g_mix.n; i++) {
        g_mix.ids[i] = (int32_t *)g_ref.p[i].ids;
        g_mix.n_ids[i] = g_ref.p[i].n;
        g_mix.hf[i] = (int32_t *)g_ref.p[i].greedy;
        g_mix.margin[i] = (float *)g_ref.p[i].margin;
    }
    /* pycoder-moe: reference.json */
    json_error_t jerr;
    g_json = json_load_file(PYCODER "/reference.json", 0, &jerr);
    if (!g_json)
        return -1;
    const json_t *gr = json_object_get(g_json, "greedy");
    g_py.dir = PYCODER;
    g_py.n = (int)json_array_size(gr);
    for (int i = 0; i < g_py.n; i++) {
        const json_t *g = json_array_get(gr, (size_t)i);
        g_py.ids[i] = json_ids(json_object_get(g, "prompt_ids"), &g_py.n_ids[i]);
        int32_t n;
        g_py.hf[i] = json_ids(json_object_get(g, "greedy"), &n);
        g_py.n_hf = n;
    }
    suite_t *all[2] = {&g_mix, &g_py};
    for (int k = 0; k < 2; k++) {
        duet_model_t *m = NULL;
        if (duet_model_load(all[k]->dir, NULL, &m))
            return -1;
        all[k]->n_experts = m->cfg.n_experts;
        int rc = engine_greedy(be, m, all[k]);
        duet_model_destroy(&m);
        if (rc)
            return -1;
    }
    duet_backend_close(&be);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < g_py.n; i++) {
        free(g_py.ids[i]);
        free(g_py.hf[i]);
        free(g_py.eng[i]);
    }
    for (int i = 0; i < g_mix.n; i++)
        free(g_mix.eng[i]);
    json_decref(g_json);
    ref_free(&g_ref);
    return 0;
}

/* Placement: S shards; expert e on shard e % S; `hot` experts also on the
 * shard after their own (a replica). */
typedef struct placement {
    int ids[16][64];
    int n[16];
    const int *rows[16];
} placement_t;

static void place(placement_t *p, int n_experts, int S, int hot)
{
    memset(p, 0, sizeof(*p));
    for (int e = 0; e < n_experts; e++) {
        int s = e % S;
        p->ids[s][p->n[s]++] = e;
        if (e < hot && S > 1) {
            int r = (s + 1) % S;
            p->ids[r][p->n[r]++] = e;
        }
    }
    for (int s = 0; s < S; s++)
        p->rows[s] = p->ids[s];
}

typedef struct run_opts {
    int A, S, m, hot;
    duet_pipe_control_t control;
    uint64_t seed;
    int copies;           /* each prompt submitted this many times */
    bool stagger;         /* later requests arrive while earlier ones decode */
    int kv_blocks;        /* 0: default */
    int budget;           /* 0: default */
    const char *provider; /* NULL: sim */
    uint64_t *sim_out;    /* simulation: [delivered, virtual ns] at the end */
    bool multiprocess;    /* every shard node in a child process (ipc control) */
    const char *faults;   /* fault plan text */
    uint64_t *dropped;    /* out: late/duplicate/stray control messages dropped */
    uint64_t *kv_waits;   /* out: requests that queued for KV */
    const char *const *attn_be; /* per attention shard compute backend (NULL: cpu) */
    const char *const *exp_be;  /* per expert shard */
    int coalesce;               /* duet_pipe_config_t.expert_coalesce */
    uint32_t stall_expert_ms;   /* hold expert/0's messages this long before each wait */
    uint64_t *coalesced;        /* out: expert rounds coalesced */
    bool checksum;              /* data-plane checksums */
    uint32_t corrupt_write;     /* duet_pipe_config_t.corrupt_write */
    uint64_t *replays;          /* out: requests replayed after a failure */
} run_opts_t;

/* A child process running one node until the parent closes `hold`. */
static pid_t spawn_node(const duet_pipe_config_t *base, const char *node, int hold[2])
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    close(hold[1]);
    duet_pipe_config_t cfg = *base;
    cfg.only_node = node;
    duet_pipe_t *p = NULL;
    if (duet_pipe_create(&cfg, &p)) {
        fprintf(stderr, "node %s: %s\n", node, duet_error());
        _exit(3);
    }
    char c;
    while (read(hold[0], &c, 1) > 0) {
    }
    duet_pipe_destroy(&p);
    _exit(0);
}

/* Returns mismatches against the engine (and HF). */
static int run(const suite_t *su, const run_opts_t *ro)
{
    placement_t pl;
    place(&pl, su->n_experts, ro->S, ro->hot);
    duet_pipe_config_t cfg = {
        .model_dir = su->dir,
        .n_attention = ro->A,
        .n_expert_shards = ro->S,
        .shard_experts = pl.rows,
        .shard_n_experts = pl.n,
        .micro_batches = ro->m,
        .token_budget = ro->budget ? ro->budget : 64,
        .kv_blocks = ro->kv_blocks,
        .kv_block_size = 16,
        .control = ro->control,
        .sim_seed = ro->seed,
        .sim_latency_max_ns = 200000,
        .provider = ro->provider,
        .faults = ro->faults,
        .attention_backend = ro->attn_be,
        .expert_backend = ro->exp_be,
        .expert_coalesce = ro->coalesce,
        .checksum = ro->checksum,
        .corrupt_write = ro->corrupt_write,
    };
    pid_t kids[16];
    int n_kids = 0, hold[2] = {-1, -1};
    char tag[64];
    if (ro->multiprocess) {
        snprintf(tag, sizeof(tag), "test%d-%s", (int)getpid(), ro->provider);
        cfg.control = DUET_PIPE_CONTROL_IPC;
        cfg.ipc_tag = tag;
        assert_int_equal(pipe(hold), 0);
        char node[16];
        for (int i = 0; i < ro->A + ro->S; i++) {
            snprintf(node, sizeof(node), i < ro->A ? "a%d" : "e%d", i < ro->A ? i : i - ro->A);
            kids[n_kids] = spawn_node(&cfg, node, hold);
            assert_true(kids[n_kids] > 0);
            n_kids++;
        }
        close(hold[0]);
        cfg.only_node = "ctl";
    }
    duet_pipe_t *p = NULL;
    duet_status_t st = duet_pipe_create(&cfg, &p);
    if (st)
        print_message("pipe: %s\n", duet_error());
    assert_int_equal(st, DUET_OK);
    int copies = ro->copies ? ro->copies : 1;
    int nreq = su->n * copies;
    for (int k = 0; k < nreq; k++) {
        int i = k % su->n;
        if (ro->stagger && k > 0 && k % 2 == 0) /* wait for a token of the previous one */
            assert_int_equal(duet_pipe_wait(p, (uint64_t)k - 1, 1 + k % 3, 60000), DUET_OK);
        assert_int_equal(duet_pipe_submit(p, (uint64_t)k, su->ids[i], su->n_ids[i], su->n_hf, -1),
                         DUET_OK);
    }
    int bad = 0, compared = 0;
    int32_t out[256];
    for (int k = 0; k < nreq; k++) {
        int i = k % su->n;
        if (ro->stall_expert_ms) /* the attention shard dispatches a group's rounds meanwhile */
            assert_int_equal(duet_pipe_stall_expert(p, 0, ro->stall_expert_ms), DUET_OK);
        st = duet_pipe_wait(p, (uint64_t)k, su->n_hf, 60000);
        if (st)
            print_message("wait %d: %s\n", k, duet_error());
        assert_int_equal(st, DUET_OK);
        bool done;
        char err[256];
        int32_t n = duet_pipe_result(p, (uint64_t)k, out, 256, &done, err, sizeof(err));
        if (err[0])
            print_message("req %d: %s\n", k, err);
        assert_string_equal(err, "");
        assert_true(done);
        assert_int_equal(n, su->n_hf);
        bool live = true;
        for (int32_t t = 0; t < n; t++) {
            if (out[t] != su->eng[i][t]) {
                print_message("req %d (prompt %d) step %d: got %d, engine %d\n", k, i, t, out[t],
                              su->eng[i][t]);
                bad++;
                break;
            }
            if (su->margin[i] && su->margin[i][t] < REF_MARGIN_MIN)
                live = false;
            if (live) {
                compared++;
                if (out[t] != su->hf[i][t]) {
                    print_message("req %d step %d: got %d, HF %d\n", k, t, out[t], su->hf[i][t]);
                    bad++;
                    live = false;
                }
            }
        }
    }
    duet_pipe_stats_t ps;
    duet_pipe_stats(p, &ps);
    print_message("  %s A=%d S=%d m=%d hot=%d %s: %d requests, %d HF tokens compared, "
                  "%d mismatches, %llu expert rounds, %llu steps\n",
                  strrchr(su->dir, '/') + 1, ro->A, ro->S, ro->m, ro->hot,
                  ro->control == DUET_PIPE_CONTROL_SIM ? "sim"
                  : ro->multiprocess                   ? "multi-process"
                                                       : "inproc",
                  nreq, compared, bad, (unsigned long long)ps.rounds_expert,
                  (unsigned long long)ps.steps);
    assert_true(compared >= su->n);
    if (ro->sim_out)
        assert_true(duet_pipe_sim_progress(p, &ro->sim_out[0], &ro->sim_out[1]));
    if (ro->dropped)
        *ro->dropped = ps.dropped_dup + ps.dropped_stray;
    if (ro->kv_waits)
        *ro->kv_waits = ps.kv_waits;
    if (ps.rounds_coalesced)
        print_message("    (%llu expert rounds coalesced)\n", (unsigned long long)ps.rounds_coalesced);
    if (ro->coalesced)
        *ro->coalesced = ps.rounds_coalesced;
    if (ro->replays)
        *ro->replays = ps.replays;
    duet_pipe_destroy(&p);
    assert_null(p);
    if (ro->multiprocess) {
        close(hold[1]);
        for (int k = 0; k < n_kids; k++) {
            int ws = 0;
            assert_int_equal(waitpid(kids[k], &ws, 0), kids[k]);
            assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
        }
        /* the ipc socket files the nodes leave behind */
        char pat[128];
        glob_t gl;
        snprintf(pat, sizeof(pat), "/tmp/duet-pipe-%s-*", tag);
        if (glob(pat, 0, NULL, &gl) == 0) {
            for (size_t k = 0; k < gl.gl_pathc; k++)
                unlink(gl.gl_pathv[k]);
            globfree(&gl);
        }
    }
    return bad;
}

static void test_mixtral_1x1_m1(void **state)
{
    (void)state;
    run_opts_t o = {.A = 1, .S = 1, .m = 1};
    assert_int_equal(run(&g_mix, &o), 0);
}

static void test_mixtral_1x1_m2_m3_m4(void **state)
{
    (void)state;
    for (int m = 2; m <= 4; m++) {
        run_opts_t o = {.A = 1, .S = 1, .m = m};
        assert_int_equal(run(&g_mix, &o), 0);
    }
}

/* Expert round coalescing: expert/0 held for a while before each request
 * is awaited, so rounds of one layer group pile up complete and run in
 * one expert pass; the tokens must still be the engine's and HF's. Off,
 * nothing coalesces. */
static void test_mixtral_coalesce(void **state)
{
    (void)state;
    for (int m = 2; m <= 4; m++) {
        uint64_t coal = 0;
        run_opts_t o = {.A = 1, .S = 1, .m = m, .coalesce = 1, .stall_expert_ms = 30,
                        .control = DUET_PIPE_CONTROL_INPROC, .coalesced = &coal};
        assert_int_equal(run(&g_mix, &o), 0);
        print_message("  m=%d: %llu expert rounds coalesced\n", m, (unsigned long long)coal);
        assert_true(coal > 0);
    }
    uint64_t coal = 0;
    run_opts_t o = {.A = 2, .S = 4, .m = 3, .coalesce = 1, .stall_expert_ms = 30,
                    .control = DUET_PIPE_CONTROL_INPROC, .coalesced = &coal};
    assert_int_equal(run(&g_mix, &o), 0);
    print_message("  2x4 m=3: %llu expert rounds coalesced\n", (unsigned long long)coal);
    assert_true(coal > 0);
    coal = 1;
    run_opts_t off = {.A = 1, .S = 1, .m = 3, .coalesce = -1, .stall_expert_ms = 30,
                      .control = DUET_PIPE_CONTROL_INPROC, .coalesced = &coal};
    assert_int_equal(run(&g_mix, &off), 0);
    assert_int_equal(coal, 0);
    /* a corrupted write in a round of a piled-up group (attn/0's 2nd and
     * 5th dispatch writes with rows): the group ends before it, it fails,
     * the step is replayed, and the tokens are still right */
    for (uint32_t cw = 2; cw <= 5; cw += 3) {
        uint64_t rep = 0;
        coal = 0;
        run_opts_t bad = {.A = 1, .S = 1, .m = 3, .coalesce = 1, .stall_expert_ms = 30,
                          .checksum = true, .corrupt_write = cw, .coalesced = &coal,
                          .replays = &rep};
        assert_int_equal(run(&g_mix, &bad), 0);
        print_message("  corrupt write %u: %llu replays, %llu coalesced\n", cw,
                      (unsigned long long)rep, (unsigned long long)coal);
        assert_true(rep >= 1);
    }
}

static void test_mixtral_2x4(void **state)
{
    (void)state;
    for (int m = 1; m <= 4; m += 3) {
        run_opts_t o = {.A = 2, .S = 4, .m = m, .copies = 2, .stagger = true};
        assert_int_equal(run(&g_mix, &o), 0);
    }
}

static void test_mixtral_replicated(void **state)
{
    (void)state;
    run_opts_t o = {.A = 2, .S = 3, .m = 3, .hot = 3, .copies = 2, .stagger = true};
    assert_int_equal(run(&g_mix, &o), 0);
}

/* A KV pool of 12 blocks holds few requests at once: the rest queue. */
static void test_mixtral_kv_queueing(void **state)
{
    (void)state;
    uint64_t waits = 0;
    run_opts_t o = {
        .A = 2, .S = 2, .m = 2, .copies = 3, .kv_blocks = 12, .budget = 24, .kv_waits = &waits};
    assert_int_equal(run(&g_mix, &o), 0);
    print_message("  %llu requests waited for KV blocks\n", (unsigned long long)waits);
    assert_true(waits > 0);
}

static void test_mixtral_sim_seeds(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        run_opts_t o = {.A = 2,
                        .S = 3,
                        .m = (int)seed + 1,
                        .hot = 2,
                        .control = DUET_PIPE_CONTROL_SIM,
                        .seed = seed,
                        .copies = 2,
                        .stagger = true};
        assert_int_equal(run(&g_mix, &o), 0);
    }
}

/* The same seed gives the same run, event for event. */
static void test_mixtral_sim_repeatable(void **state)
{
    (void)state;
    uint64_t h[3][2] = {{0}};
    for (int k = 0; k < 3; k++) {
        run_opts_t o = {.A = 2,
                        .S = 2,
                        .m = 3,
                        .control = DUET_PIPE_CONTROL_SIM,
                        .seed = k < 2 ? 42 : 43,
                        .copies = 2,
                        .stagger = true,
                        .sim_out = h[k]};
        assert_int_equal(run(&g_mix, &o), 0);
    }
    print_message("  seed 42: %llu messages, %llu ns; again: %llu, %llu; seed 43: %llu, %llu\n",
                  (unsigned long long)h[0][0], (unsigned long long)h[0][1],
                  (unsigned long long)h[1][0], (unsigned long long)h[1][1],
                  (unsigned long long)h[2][0], (unsigned long long)h[2][1]);
    assert_true(h[0][0] > 0);
    assert_true(h[0][0] == h[1][0] && h[0][1] == h[1][1]);
    assert_true(h[0][1] != h[2][1]); /* the seed matters */
}

/* Sampling (temperature, top-k, top-p, seed) through the deployment draws
 * exactly the engine's tokens: a draw depends only on (seed, position) and
 * the logits. */
static void test_mixtral_sampled(void **state)
{
    (void)state;
    duet_backend_t *be = NULL;
    duet_backend_opts_t bo = {.n_threads = 1};
    assert_int_equal(duet_backend_open("cpu", &bo, &be), DUET_OK);
    duet_model_t *m = NULL;
    assert_int_equal(duet_model_load(MIXTRAL, NULL, &m), DUET_OK);
    const int n = g_mix.n;
    const int32_t steps = 16;
    int32_t want[MAXP][16];
    duet_pipe_sampling_t ps[MAXP];
    for (int i = 0; i < n; i++) {
        ps[i] =
            (duet_pipe_sampling_t){0.9f, i % 2 ? 20 : 0, i % 3 ? 0.95f : 1.0f, (uint64_t)(100 + i),
                                   NULL, 0};
        duet_sampling_params_t sp = {ps[i].temperature, ps[i].top_k, ps[i].top_p, ps[i].seed};
        duet_engine_opts_t o = {0};
        o.fwd.max_tokens = g_mix.n_ids[i] + 1;
        o.fwd.max_seqs = 1;
        o.kv.n_blocks = 64;
        o.kv.max_seqs = 1;
        duet_engine_t *e = NULL;
        assert_int_equal(duet_engine_create(be, m, &o, &e), DUET_OK);
        int32_t seq;
        assert_int_equal(duet_kvcache_seq_open(duet_engine_kv(e), &seq), DUET_OK);
        duet_seq_input_t in = {seq, g_mix.n_ids[i], g_mix.ids[i], DUET_LOGITS_LAST};
        for (int32_t t = 0; t < steps; t++) {
            assert_int_equal(duet_engine_step(e, 1, &in, NULL, NULL), DUET_OK);
            assert_int_equal(duet_engine_sample(e, &sp, &want[i][t]), DUET_OK);
            in = (duet_seq_input_t){seq, 1, &want[i][t], DUET_LOGITS_LAST};
        }
        duet_engine_destroy(&e);
    }
    duet_model_destroy(&m);
    duet_backend_close(&be);
    for (int k = 0; k < 2; k++) {
        placement_t pl;
        place(&pl, g_mix.n_experts, 3, 2);
        duet_pipe_config_t cfg = {.model_dir = MIXTRAL,
                                  .n_attention = 2,
                                  .n_expert_shards = 3,
                                  .shard_experts = pl.rows,
                                  .shard_n_experts = pl.n,
                                  .micro_batches = 3,
                                  .token_budget = 64,
                                  .control = k ? DUET_PIPE_CONTROL_SIM : DUET_PIPE_CONTROL_INPROC,
                                  .sim_seed = 11};
        duet_pipe_t *p = NULL;
        assert_int_equal(duet_pipe_create(&cfg, &p), DUET_OK);
        for (int i = 0; i < n; i++)
            assert_int_equal(duet_pipe_submit_sampled(p, (uint64_t)i, g_mix.ids[i], g_mix.n_ids[i],
                                                      steps, -1, &ps[i]),
                             DUET_OK);
        int bad = 0;
        for (int i = 0; i < n; i++) {
            assert_int_equal(duet_pipe_wait(p, (uint64_t)i, steps, 60000), DUET_OK);
            int32_t out[16];
            bool done;
            char err[256];
            assert_int_equal(duet_pipe_result(p, (uint64_t)i, out, 16, &done, err, sizeof(err)),
                             steps);
            assert_string_equal(err, "");
            for (int32_t t = 0; t < steps; t++)
                bad += out[t] != want[i][t];
        }
        print_message("  sampled (%s): %d requests x %d tokens, %d mismatches\n",
                      k ? "sim" : "inproc", n, steps, bad);
        assert_int_equal(bad, 0);
        duet_pipe_destroy(&p);
    }
}

/* Duplicated and delayed (reordered) pipe.dispatch / pipe.result under the
 * simnet: the duplicates are dropped, never mixed in; the tokens stay. */
static void test_mixtral_sim_faults(void **state)
{
    (void)state;
    const char *plan = "dup p=0.3 type=pipe.dispatch\n"
                       "dup p=0.3 type=pipe.result\n"
                       "delay min=0ms max=1ms p=0.5 type=pipe.dispatch\n"
                       "delay min=0ms max=1ms p=0.5 type=pipe.result\n";
    uint64_t dropped = 0;
    run_opts_t o = {.A = 2,
                    .S = 3,
                    .m = 3,
                    .hot = 2,
                    .control = DUET_PIPE_CONTROL_SIM,
                    .seed = 5,
                    .copies = 2,
                    .stagger = true,
                    .faults = plan,
                    .dropped = &dropped};
    assert_int_equal(run(&g_mix, &o), 0);
    print_message("  %llu duplicate or stray control messages dropped\n",
                  (unsigned long long)dropped);
    assert_true(dropped > 0);
}

/* The data plane over the shm and tcp providers (all shards in this process). */
static void test_mixtral_shm_tcp(void **state)
{
    (void)state;
    const char *prov[2] = {"shm", "tcp"};
    for (int k = 0; k < 2; k++) {
        run_opts_t o = {.A = 2, .S = 2, .m = 2, .hot = 1, .provider = prov[k], .stagger = true};
        assert_int_equal(run(&g_mix, &o), 0);
    }
}

/* Every shard in a process of its own: control over ZeroMQ ipc, bulk
 * rows over shm, then tcp. */
static void test_mixtral_multiprocess(void **state)
{
    (void)state;
    const char *prov[2] = {"shm", "tcp"};
    for (int k = 0; k < 2; k++) {
        run_opts_t o = {.A = 2,
                        .S = 2,
                        .m = 3,
                        .hot = 1,
                        .provider = prov[k],
                        .stagger = true,
                        .copies = 2,
                        .multiprocess = true};
        assert_int_equal(run(&g_mix, &o), 0);
    }
}

static void test_pycoder_1x1(void **state)
{
    (void)state;
    run_opts_t o = {.A = 1, .S = 1, .m = 2};
    assert_int_equal(run(&g_py, &o), 0);
}

static void test_pycoder_2x4(void **state)
{
    (void)state;
    run_opts_t o = {.A = 2, .S = 4, .m = 3, .hot = 2, .stagger = true};
    assert_int_equal(run(&g_py, &o), 0);
}

static void test_pycoder_sim(void **state)
{
    (void)state;
    run_opts_t o = {.A = 2, .S = 2, .m = 4, .control = DUET_PIPE_CONTROL_SIM, .seed = 7};
    assert_int_equal(run(&g_py, &o), 0);
}

/* expert/1 (no replica, no supervisor) is killed mid-generation: every
 * request ends with an error naming it within recover_timeout_ms, and so
 * do requests submitted while it is down. Once it is started again the
 * deployment serves with the right tokens. */
static void test_dead_expert_shard(void **state)
{
    (void)state;
    placement_t pl;
    place(&pl, g_mix.n_experts, 2, 0);
    duet_pipe_config_t cfg = {
        .model_dir = MIXTRAL,
        .n_attention = 1,
        .n_expert_shards = 2,
        .shard_experts = pl.rows,
        .shard_n_experts = pl.n,
        .micro_batches = 2,
        .token_budget = 64,
        .round_timeout_ms = 1000,
        .recover_timeout_ms = 1000,
        .no_restart = true,
        /* slow every round down so that the requests are surely mid-way */
        .faults = "delay min=2ms max=2ms type=pipe.result\n",
    };
    duet_pipe_t *p = NULL;
    assert_int_equal(duet_pipe_create(&cfg, &p), DUET_OK);
    for (int k = 0; k < 3; k++)
        assert_int_equal(
            duet_pipe_submit(p, (uint64_t)k, g_mix.ids[k + 1], g_mix.n_ids[k + 1], 400, -1),
            DUET_OK);
    assert_int_equal(duet_pipe_wait(p, 0, 2, 30000), DUET_OK);
    uint64_t t0 = duet_now_ns();
    assert_int_equal(duet_pipe_kill_expert(p, 1), DUET_OK);
    char err[256];
    bool done;
    for (int k = 0; k < 3; k++) {
        assert_int_equal(duet_pipe_wait(p, (uint64_t)k, 1000000, 10000), DUET_OK);
        duet_pipe_result(p, (uint64_t)k, NULL, 0, &done, err, sizeof(err));
        assert_true(done);
        print_message("  req %d: %s\n", k, err);
        assert_non_null(strstr(err, "expert/1"));
    }
    double secs = (double)(duet_now_ns() - t0) / 1e9;
    print_message("  all ended %.3f s after the kill\n", secs);
    assert_true(secs < 5.0);
    duet_pipe_stats_t ps;
    duet_pipe_stats(p, &ps);
    assert_int_equal(ps.kv_blocks_used, 0); /* nothing leaked by the failed requests */
    assert_int_equal(ps.running + ps.waiting, 0);
    assert_int_equal(duet_pipe_submit(p, 10, g_mix.ids[1], g_mix.n_ids[1], 4, -1), DUET_OK);
    assert_int_equal(duet_pipe_wait(p, 10, 100, 5000), DUET_OK);
    duet_pipe_result(p, 10, NULL, 0, &done, err, sizeof(err));
    assert_true(done);
    print_message("  while it is down: %s\n", err);
    assert_true(err[0] != 0);

    /* It comes back: a new data-plane epoch, and the deployment serves
     * again with the engine's tokens. */
    t0 = duet_now_ns();
    duet_status_t rs;
    while ((rs = duet_pipe_restart_expert(p, 1)) == DUET_ERR_AGAIN) /* still stopping */
        usleep(10000);
    assert_int_equal(rs, DUET_OK);
    uint64_t id = 100;
    for (;; id++) {
        assert_true(duet_now_ns() - t0 < 10000000000ull);
        assert_int_equal(duet_pipe_submit(p, id, g_mix.ids[3], g_mix.n_ids[3], g_mix.n_hf, -1),
                         DUET_OK);
        assert_int_equal(duet_pipe_wait(p, id, g_mix.n_hf, 30000), DUET_OK);
        duet_pipe_result(p, id, NULL, 0, &done, err, sizeof(err));
        if (!err[0])
            break;
        usleep(20000);
    }
    int32_t out[64];
    int32_t n = duet_pipe_result(p, id, out, 64, &done, err, sizeof(err));
    print_message("  serving again %.3f s after the restart (request %llu)\n",
                  (double)(duet_now_ns() - t0) / 1e9, (unsigned long long)id);
    assert_int_equal(n, g_mix.n_hf);
    for (int32_t t = 0; t < n; t++)
        assert_int_equal(out[t], g_mix.eng[3][t]);
    duet_pipe_destroy(&p);
}

/* expert/0 stops answering for 3 s (past the round timeout): the step
 * fails, the data plane moves to a new epoch, and once the shard answers
 * again the request is recomputed and finishes with the engine's tokens. */
static void test_stalled_expert_shard(void **state)
{
    (void)state;
    placement_t pl;
    place(&pl, g_mix.n_experts, 2, 0);
    duet_pipe_config_t cfg = {
        .model_dir = MIXTRAL,
        .n_attention = 1,
        .n_expert_shards = 2,
        .shard_experts = pl.rows,
        .shard_n_experts = pl.n,
        .micro_batches = 2,
        .round_timeout_ms = 300,
        .faults = "delay min=2ms max=2ms type=pipe.result\n",
    };
    duet_pipe_t *p = NULL;
    assert_int_equal(duet_pipe_create(&cfg, &p), DUET_OK);
    assert_int_equal(
        duet_pipe_submit(p, 1, g_mix.ids[2], g_mix.n_ids[2], g_mix.n_hf, -1), DUET_OK);
    assert_int_equal(duet_pipe_wait(p, 1, 2, 30000), DUET_OK);
    uint64_t t0 = duet_now_ns();
    assert_int_equal(duet_pipe_stall_expert(p, 0, 3000), DUET_OK);
    assert_int_equal(duet_pipe_wait(p, 1, 1000000, 20000), DUET_OK);
    char err[256];
    bool done;
    int32_t out[64];
    int32_t n = duet_pipe_result(p, 1, out, 64, &done, err, sizeof(err));
    double secs = (double)(duet_now_ns() - t0) / 1e9;
    duet_pipe_stats_t ps;
    duet_pipe_stats(p, &ps);
    print_message("  req 1 done after %.3f s (%llu replays, %llu epochs): '%s'\n", secs,
                  (unsigned long long)ps.replays, (unsigned long long)ps.epochs, err);
    assert_true(done);
    assert_string_equal(err, "");
    assert_true(ps.replays >= 1);
    assert_int_equal(n, g_mix.n_hf);
    for (int32_t t = 0; t < n; t++)
        assert_int_equal(out[t], g_mix.eng[2][t]);
    duet_pipe_destroy(&p);
}

#if defined(PIPE_HETERO)
/* Heterogeneous deployments (issue 7): the attention shard on the GPU and
 * the expert shards on CPUs, and the reverse; activations cross between
 * device and host memory through the data plane. Same tokens as the engine
 * and HF. Built against the real cuda backend (skips without a device) and
 * against the CUDA emulator (tests/gpu/emu), which runs here. */
static void test_mixtral_attention_on_gpu(void **state)
{
    (void)state;
    static const char *const ab[] = {"cuda"}, *const eb[] = {"cpu", "cpu"};
    run_opts_t ro = {.A = 1, .S = 2, .m = 2, .control = DUET_PIPE_CONTROL_INPROC,
                     .provider = "shm", .attn_be = ab, .exp_be = eb};
    assert_int_equal(run(&g_mix, &ro), 0);
}

static void test_mixtral_experts_on_gpu(void **state)
{
    (void)state;
    static const char *const ab[] = {"cpu", "cpu"}, *const eb[] = {"cuda", "cpu"};
    run_opts_t ro = {.A = 2, .S = 2, .m = 2, .hot = 1, .control = DUET_PIPE_CONTROL_INPROC,
                     .provider = "shm", .attn_be = ab, .exp_be = eb};
    assert_int_equal(run(&g_mix, &ro), 0);
}

int main(void)
{
    duet_backend_t *be = NULL;
    if (duet_backend_open("cuda", NULL, &be)) {
        printf("SKIP: no CUDA device (%s)\n", duet_error());
        return 77;
    }
    duet_backend_close(&be);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixtral_attention_on_gpu),
        cmocka_unit_test(test_mixtral_experts_on_gpu),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
#else
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixtral_1x1_m1),
        cmocka_unit_test(test_mixtral_1x1_m2_m3_m4),
        cmocka_unit_test(test_mixtral_coalesce),
        cmocka_unit_test(test_mixtral_2x4),
        cmocka_unit_test(test_mixtral_replicated),
        cmocka_unit_test(test_mixtral_kv_queueing),
        cmocka_unit_test(test_mixtral_sim_seeds),
        cmocka_unit_test(test_mixtral_sim_repeatable),
        cmocka_unit_test(test_mixtral_sim_faults),
        cmocka_unit_test(test_mixtral_sampled),
        cmocka_unit_test(test_mixtral_shm_tcp),
        cmocka_unit_test(test_mixtral_multiprocess),
        cmocka_unit_test(test_pycoder_1x1),
        cmocka_unit_test(test_pycoder_2x4),
        cmocka_unit_test(test_pycoder_sim),
        cmocka_unit_test(test_dead_expert_shard),
        cmocka_unit_test(test_stalled_expert_shard),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
#endif
