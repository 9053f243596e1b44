/* The event simulator (topology/sim.c) against the paper's closed forms for
 * the ping-pong pipeline, with constant T_a, T_e, T_c and no other costs:
 *   m = 1: an iteration takes L (T_a + T_e + 2 T_c);
 *   full overlap (m >= 2 (1 + T_c / T_f), T_a = T_e = T_f): the whole batch
 *   takes T_total = (T_a + T_e + 2 T_c) + T_f (m L - 1).
 * Also: shared cores serialise the shards (one core: an iteration is the sum
 * of all work), time between tokens and utilisation are consistent, and the
 * trace uses the real pipeline's event names. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "topology/plan.h"

typedef struct k {
    double ta, te;
} k_t;

static double c_attn(void *u, double b, double ctx)
{
    (void)b;
    (void)ctx;
    return ((k_t *)u)->ta;
}

static double c_exp(void *u, double rows)
{
    (void)rows;
    return ((k_t *)u)->te;
}

static duet_sim_cfg_t base(k_t *k, int A, int S, int m, int L, double tc)
{
    duet_sim_cfg_t c = {.n_attention = A,
                        .n_expert_shards = S,
                        .micro_batches = m,
                        .n_layers = L,
                        .iterations = 4,
                        .tokens_ub = 8,
                        .ctx = 100,
                        .top_k = 2,
                        .n_experts = S, /* one expert group per shard */
                        .t_attn = c_attn,
                        .t_expert = c_exp,
                        .user = k,
                        .t_c = tc,
                        .row_bytes = 16};
    return c;
}

static void test_m1_is_serial(void **state)
{
    (void)state;
    k_t k = {1.0, 1.5};
    for (int L = 1; L <= 5; L += 2) {
        duet_sim_cfg_t c = base(&k, 2, 3, 1, L, 0.25);
        duet_sim_result_t r;
        assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
        double want = L * (1.0 + 1.5 + 0.5);
        assert_float_equal(r.tbt_p50, want, 1e-9);
        assert_float_equal(r.tbt_p99, want, 1e-9);
        /* tokens per iteration: n_a * m * tokens_ub */
        assert_float_equal(r.tokens_per_s, 2 * 8 / want, 1e-9);
    }
}

/* On a shared core, T_c is spent by the woken receiver: for one chain of
 * hand-offs (1 + 1, m = 1) the iteration is the same as with T_c on the
 * wire; with more shards the core pays T_c per message. */
static void test_t_c_on_core(void **state)
{
    (void)state;
    k_t k = {1.0, 1.5};
    duet_sim_cfg_t c = base(&k, 1, 1, 1, 4, 0.25);
    c.cores = 1;
    c.t_c_core = 0.25;
    duet_sim_result_t r;
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 4 * (1.0 + 1.5 + 0.5), 1e-9);
    /* 2 + 2, m = 2, one core: all work plus T_c per message waited for:
     * attention: S results per round after the first layer; experts: A
     * dispatches per round */
    duet_sim_cfg_t c2 = base(&k, 2, 2, 2, 3, 0.25);
    c2.n_experts = 2;
    c2.cores = 1;
    c2.t_c_core = 0.25;
    assert_int_equal(duet_sim_run(&c2, &r), DUET_OK);
    double rounds = 2 * 3;                                    /* m * L per attention shard */
    double work = 2 * rounds * 1.0 + 2 * rounds * 2 * 0.25    /* A x m x L combines x S T_c */
                  + 2 * rounds * 1.5 + 2 * rounds * 2 * 0.25; /* S x m x L rounds x A T_c */
    assert_float_equal(r.tbt_p50, work, 1e-9);
}

static void test_full_overlap_matches_paper(void **state)
{
    (void)state;
    static const struct {
        int m, L;
        double tc;
    } cases[] = {{3, 4, 0.2}, {3, 8, 0.5}, {4, 4, 0.9}, {4, 6, 0.0}, {2, 5, 0.0}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        k_t k = {1.0, 1.0};
        duet_sim_cfg_t c = base(&k, 1, 2, cases[i].m, cases[i].L, cases[i].tc);
        duet_sim_result_t r;
        assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
        double tf = 1.0;
        double want = (1.0 + 1.0 + 2 * cases[i].tc) + tf * (cases[i].m * cases[i].L - 1);
        printf("m %d L %d T_c %.1f: simulated %.3f, paper %.3f\n", cases[i].m, cases[i].L,
               cases[i].tc, r.tbt_p50, want);
        assert_float_equal(r.tbt_p50, want, 1e-9);
    }
}

static void test_not_enough_micro_batches(void **state)
{
    (void)state;
    /* m = 2 with T_c > 0: a micro-batch is back after T_a + T_e + 2 T_c, so
     * every layer costs that, not 2 T_f: slower than the full-overlap form */
    k_t k = {1.0, 1.0};
    duet_sim_cfg_t c = base(&k, 1, 1, 2, 4, 0.5);
    duet_sim_result_t r;
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    double full = (2 + 1.0) + 1.0 * (2 * 4 - 1);
    assert_true(r.tbt_p50 > full + 1e-6);
    /* per layer T_a + T_e + 2 T_c = 3, last micro-batch trails by T_a */
    assert_float_equal(r.tbt_p50, 4 * 3.0 + 1.0, 1e-9);
}

static void test_one_core_serialises(void **state)
{
    (void)state;
    k_t k = {1.0, 2.0};
    duet_sim_cfg_t c = base(&k, 2, 2, 2, 3, 0.0);
    c.cores = 1;
    duet_sim_result_t r;
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    /* all work of an iteration on one core: A*m*L*T_a + S*m*L*T_e */
    double work = 2 * 2 * 3 * 1.0 + 2 * 2 * 3 * 2.0;
    assert_float_equal(r.tbt_p50, work, 1e-9);
    /* dedicated devices are faster */
    c.cores = 0;
    duet_sim_result_t r2;
    assert_int_equal(duet_sim_run(&c, &r2), DUET_OK);
    assert_true(r2.tbt_p50 < r.tbt_p50);
    assert_true(r2.util_expert > 0 && r2.util_expert <= 1.0);
    assert_true(r2.util_attn > 0 && r2.util_attn <= 1.0);
}

static void test_trace_names(void **state)
{
    (void)state;
    k_t k = {1e-3, 2e-3};
    duet_sim_cfg_t c = base(&k, 2, 2, 2, 2, 1e-4);
    char path[64];
    snprintf(path, sizeof(path), "/tmp/duet-simtrace-%d.json", (int)getpid());
    c.trace_path = path;
    duet_sim_result_t r;
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    remove(path);
    buf[n] = 0;
    const char *want[] = {"\"traceEvents\"",
                          "\"name\":\"attention\"",
                          "\"name\":\"dispatch\"",
                          "\"name\":\"expert\"",
                          "\"name\":\"combine\"",
                          "\"name\":\"m2n\"",
                          "\"name\":\"n2m\"",
                          "attn/1",
                          "expert/1"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (!strstr(buf, want[i]))
            fail_msg("trace has no %s", want[i]);
}

static void test_bad_config(void **state)
{
    (void)state;
    k_t k = {1, 1};
    duet_sim_cfg_t c = base(&k, 0, 1, 1, 1, 0);
    duet_sim_result_t r;
    assert_int_equal(duet_sim_run(&c, &r), DUET_ERR_INVALID);
    c = base(&k, 1, 1, 1, 1, 0);
    c.iterations = 0;
    assert_int_equal(duet_sim_run(&c, &r), DUET_ERR_INVALID);
}

/* Memory contention on shared cores: two expert rounds on the two cores at
 * once each run contention[1] times slower; when one ends, the other goes
 * on at full speed with what it has left. Dedicated devices (cores = 0,
 * the paper's deployments) ignore the table. */
static void test_contention(void **state)
{
    (void)state;
    k_t k = {1.0, 1.0};
    static const double f[2] = {1.0, 1.6};
    duet_sim_cfg_t c = base(&k, 1, 2, 1, 3, 0.0);
    c.cores = 2;
    c.contention = f;
    c.n_contention = 2;
    duet_sim_result_t r;
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    /* per layer: attention alone, then both rounds together at 1/1.6 */
    assert_float_equal(r.tbt_p50, 3 * (1.0 + 1.6 * 1.0), 1e-9);
    /* unequal rounds (shard 1 runs two expert groups: 2 T_e) with factor 2:
     * both at half speed until shard 0 is done at 2, then shard 1's last
     * unit alone: a layer is T_a + 3 */
    static const double f2[2] = {1.0, 2.0};
    static const int groups[2] = {1, 2};
    c.contention = f2;
    c.shard_groups = groups;
    c.n_experts = 3;
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 3 * (1.0 + 3.0), 1e-9);
    /* no table: the rounds overlap freely */
    c.contention = NULL;
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 3 * (1.0 + 2.0), 1e-9);
    /* dedicated devices: the table does not apply */
    c.contention = f2;
    c.cores = 0;
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 3 * (1.0 + 2.0), 1e-9);
}

/* Spin-waiting actors on shared cores (the runtime's DUET_SPIN_US): an
 * actor with nothing to do keeps its core while it spins, a thread waits on
 * the core it last ran on, and a spinner yields only to a thread waiting on
 * its own core. 1 attention shard, 3 expert shards (shard 1 runs two expert
 * groups: 2 T_e), m = 1, 2 cores, T_a = T_e = 1, T_c = 0. */
static void test_spin_holds_core(void **state)
{
    (void)state;
    k_t k = {1.0, 1.0};
    static const int groups[3] = {1, 2, 1};
    duet_sim_cfg_t c = base(&k, 1, 3, 1, 3, 0.0);
    c.n_experts = 4;
    c.shard_groups = groups;
    c.cores = 2;
    duet_sim_result_t r;
    /* no spinning: shards 0 and 1 take the cores, shard 2 the one shard 0
     * leaves after T_e; every layer is T_a + 2 T_e */
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 3 * (1.0 + 2.0), 1e-9);
    /* spinning longer than a round: the attention shard spins on core 0 and
     * yields it to shard 1 (queued there); shard 0 runs on core 1, then
     * spins there for its next dispatch while shard 2, queued behind shard
     * 1 on core 0, waits for it: every layer is T_a + 3 T_e */
    c.spin = 100;
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 3 * (1.0 + 3.0), 1e-9);
    assert_float_equal(r.tbt_p99, 3 * (1.0 + 3.0), 1e-9);
    /* a short spin: once shard 0's spin ends, its idle core pulls shard 2
     * over, which from then on runs there beside shard 1: T_a + 2 T_e
     * again after the first iteration */
    c.spin = 0.25;
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 3 * (1.0 + 2.0), 1e-9);
    /* where the threads start decides the run: 2 + 2, m = 1, 2 cores. The
     * attention shards always take one core each (both are free at the
     * start); an expert shard whose core is the other expert shard's waits
     * behind it while the attention shard on the other core spins: a layer
     * is T_a + 2 T_e; with one expert shard per core T_a + T_e. Placements
     * drawn from seeds give both, nothing else. */
    duet_sim_cfg_t c4 = base(&k, 2, 2, 1, 3, 0.0);
    c4.cores = 2;
    c4.spin = 100;
    int fast = 0, slow = 0;
    for (unsigned long long seed = 1; seed <= 16; seed++) {
        c4.placement_seed = seed;
        assert_int_equal(duet_sim_run(&c4, &r), DUET_OK);
        if (fabs(r.tbt_p50 - 3 * (1.0 + 1.0)) < 1e-9)
            fast++;
        else if (fabs(r.tbt_p50 - 3 * (1.0 + 2.0)) < 1e-9)
            slow++;
        else
            fail_msg("seed %llu: %.6f a step, neither %g nor %g", seed, r.tbt_p50, 6.0, 9.0);
    }
    assert_true(fast > 0 && slow > 0);
    /* one core: a spinner yields at once to the thread queued on its core,
     * so spinning costs nothing: all work of a step, one after another */
    duet_sim_cfg_t c1 = base(&k, 1, 1, 1, 4, 0.0);
    c1.cores = 1;
    c1.spin = 100;
    assert_int_equal(duet_sim_run(&c1, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 4 * (1.0 + 1.0), 1e-9);
    /* a core per actor: spinning changes nothing (the m = 1 closed form) */
    duet_sim_cfg_t c2 = base(&k, 1, 1, 1, 4, 0.25);
    c2.cores = 2;
    c2.spin = 100;
    assert_int_equal(duet_sim_run(&c2, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 4 * (1.0 + 1.0 + 0.5), 1e-9);
}

static double c_exp_rows(void *u, double rows)
{
    return ((k_t *)u)->te * rows;
}

/* Recorded routes: the round waits for the shard that got the most rows. */
static void test_routes(void **state)
{
    (void)state;
    k_t k = {1.0, 1.0};
    duet_sim_cfg_t c = base(&k, 1, 2, 1, 1, 0.0);
    c.t_expert = c_exp_rows;
    c.top_k = 1;
    c.n_experts = 2;
    c.tokens_ub = 4;
    duet_sim_result_t r;
    /* even shares: 2 rows each */
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 1.0 + 2.0, 1e-9);
    /* 4 sequences x 2 steps x 1 layer x top-1: step 0 sends three tokens to
     * expert 0 (shard 0), step 1 all four to expert 1 (shard 1) */
    static const int16_t routes[8] = {0, 1, 0, 1, 0, 1, 1, 1};
    c.routes = routes;
    c.route_seqs = 4;
    c.route_steps = 2;
    c.requests = 4;
    c.iterations = 3; /* steps 0, 1, 0: step-to-step times 4 (step 1), 3 */
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 1.0 + 3.0, 1e-9);
    assert_float_equal(r.tbt_p99, 1.0 + 4.0, 1e-9);
    /* expert 0 on both shards: its rows split; step 0: shard 0 runs 1.5 of
     * expert 0 + 1 of expert 1, shard 1 1.5; step 1: 4 of expert 1 on shard 0 */
    static const int s0[2] = {0, 1}, s1[1] = {0};
    static const int *const sh[2] = {s0, s1};
    static const int nsh[2] = {2, 1};
    c.shard_experts = sh;
    c.shard_n_experts = nsh;
    assert_int_equal(duet_sim_run(&c, &r), DUET_OK);
    assert_float_equal(r.tbt_p50, 1.0 + 2.5, 1e-9);
    assert_float_equal(r.tbt_p99, 1.0 + 4.0, 1e-9);
    /* a route naming an expert the model does not have is refused */
    static const int16_t bad[8] = {0, 1, 0, 1, 0, 1, 1, 2};
    c.routes = bad;
    assert_int_not_equal(duet_sim_run(&c, &r), DUET_OK);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *b = calloc(1, 1 << 20);
    assert_non_null(b);
    size_t n = fread(b, 1, (1 << 20) - 1, f);
    fclose(f);
    b[n] = 0;
    return b;
}

static void spit(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Replace the first `from` in b with `to` (same buffer, room to spare). */
static void subst(char *b, const char *from, const char *to)
{
    char *at = strstr(b, from);
    assert_non_null(at);
    size_t lf = strlen(from), lt = strlen(to);
    memmove(at + lt, at + lf, strlen(at + lf) + 1);
    memcpy(at, to, lt);
}

/* The profile file keeps the contention table and the recorded routes;
 * a format-1 file (before both) still loads, without contention; a newer
 * format or a format-2 file without its table is refused, saying why. */
static void test_profile_file(void **state)
{
    (void)state;
    duet_profile_t *p = calloc(1, sizeof(*p)), *q = calloc(1, sizeof(*q));
    assert_non_null(p);
    assert_non_null(q);
    snprintf(p->host, sizeof(p->host), "test");
    snprintf(p->backend, sizeof(p->backend), "cpu");
    p->cores = 2;
    p->threads = 1;
    p->hidden = 64;
    p->n_layers = 2;
    p->n_sparse = 2;
    p->n_experts = 4;
    p->top_k = 2;
    p->n_contention = 2;
    p->contention[0] = 1;
    p->contention[1] = 1.25;
    p->spin_s = 0.001;
    p->route_seqs = 3;
    p->route_steps = 2;
    for (int i = 0; i < 3 * 2 * 2 * 2; i++)
        p->routes[i] = (int16_t)(i % 2 ? 1 : 3 - i % 3);
    char path[64];
    snprintf(path, sizeof(path), "/tmp/duet-prof-test-%d.json", (int)getpid());
    assert_int_equal(duet_profile_save(p, path), DUET_OK);
    assert_int_equal(duet_profile_load(path, q), DUET_OK);
    assert_int_equal(q->n_contention, 2);
    assert_float_equal(duet_profile_contention(q, 2), 1.25, 1e-12);
    assert_float_equal(duet_profile_contention(q, 5), 1.25, 1e-12); /* beyond: the last */
    assert_float_equal(duet_profile_contention(q, 1), 1.0, 1e-12);
    assert_int_equal(q->route_seqs, 3);
    assert_int_equal(q->route_steps, 2);
    assert_memory_equal(q->routes, p->routes, sizeof(int16_t) * 24);
    assert_float_equal(q->spin_s, 0.001, 1e-12);
    char *text = slurp(path);
    /* the runtime's spin is optional (absent: not modelled) and checked */
    char *nospin = strdup(text);
    subst(nospin, "\"spin_us\"", "\"spin_ux\"");
    spit(path, nospin);
    assert_int_equal(duet_profile_load(path, q), DUET_OK);
    assert_float_equal(q->spin_s, 0.0, 1e-12);
    char *badspin = strdup(text);
    subst(badspin, "\"spin_us\": 1000", "\"spin_us\": -100"); /* same length */
    spit(path, badspin);
    assert_int_not_equal(duet_profile_load(path, q), DUET_OK);
    assert_non_null(strstr(duet_error(), "host.spin_us"));
    free(nospin);
    free(badspin);
    /* format 1: no contention table (read as none) */
    char *old = strdup(text);
    subst(old, "\"duet_profile\": 2", "\"duet_profile\": 1");
    spit(path, old);
    assert_int_equal(duet_profile_load(path, q), DUET_OK);
    assert_int_equal(q->n_contention, 0);
    assert_float_equal(duet_profile_contention(q, 2), 1.0, 1e-12);
    /* a newer format: refused with the versions this build reads */
    char *newer = strdup(text);
    subst(newer, "\"duet_profile\": 2", "\"duet_profile\": 3");
    spit(path, newer);
    assert_int_not_equal(duet_profile_load(path, q), DUET_OK);
    assert_non_null(strstr(duet_error(), "formats 1..2"));
    /* format 2 without its table */
    char *missing = strdup(text);
    subst(missing, "\"expert_contention\"", "\"expert_contentiox\"");
    spit(path, missing);
    assert_int_not_equal(duet_profile_load(path, q), DUET_OK);
    assert_non_null(strstr(duet_error(), "expert_contention"));
    /* a route naming an expert the model does not have (routes[0] = 3 -> 9) */
    char *badroute = strdup(text);
    char *at = strchr(strstr(badroute, "\"experts\": ["), '3');
    assert_non_null(at);
    *at = '9';
    spit(path, badroute);
    assert_int_not_equal(duet_profile_load(path, q), DUET_OK);
    assert_non_null(strstr(duet_error(), "routing.experts[0]"));
    /* one id too few */
    char *short_ = strdup(text);
    subst(short_, "\"sequences\": 3", "\"sequences\": 4");
    spit(path, short_);
    assert_int_not_equal(duet_profile_load(path, q), DUET_OK);
    assert_non_null(strstr(duet_error(), "found 24"));
    free(short_);
    remove(path);
    free(text);
    free(old);
    free(newer);
    free(missing);
    free(badroute);
    free(p);
    free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_m1_is_serial),
        cmocka_unit_test(test_full_overlap_matches_paper),
        cmocka_unit_test(test_t_c_on_core),
        cmocka_unit_test(test_not_enough_micro_batches),
        cmocka_unit_test(test_one_core_serialises),
        cmocka_unit_test(test_trace_names),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_contention),
        cmocka_unit_test(test_spin_holds_core),
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_profile_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
