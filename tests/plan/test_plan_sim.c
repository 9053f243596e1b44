/* The event simulator (topology/sim.c) against the paper's closed forms for
 * the ping-pong pipeline, with constant T_a, T_e, T_c and no other costs:
 *   m = 1: an iteration takes L (T_a + T_e + 2 T_c);
 *   full overlap (m >= 2 (1 + T_c / T_f), T_a = T_e = T_f): the whole batch
 *   takes T_total = (T_a + T_e + 2 T_c) + T_f (m L - 1).
 * Also: shared cores serialise the shards (one core: an iteration is the sum
 * of all work), time between tokens and utilisation are consistent, and the
 * trace uses the real pipeline's event names. */
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
