/* Expert placement: invariants (every expert placed, no shard holds an
 * expert twice, loads add up), the greedy's maximum against a brute-force
 * optimum on small cases, hand-made cases with known answers, capacity,
 * and applying a placement to a deployment that then validates. */
#include "topology/topology.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define MAXE 8
#define MAXS 4

/* Invariants of any placement; returns the recomputed max load. */
static double check_invariants(const duet_placement_t *p, const double *loads, int n_e, int n_s,
                               int budget, int cap)
{
    assert_int_equal(p->n_experts, n_e);
    assert_int_equal(p->n_shards, n_s);
    assert_int_equal(p->offsets[0], 0);
    int copies[64] = {0};
    int extra = 0;
    double max = 0, total = 0;
    for (int s = 0; s < n_s; s++) {
        int a = p->offsets[s], b = p->offsets[s + 1];
        assert_true(b >= a);
        if (cap)
            assert_true(b - a <= cap);
        double load = 0;
        for (int i = a; i < b; i++) {
            int e = p->experts[i];
            assert_true(e >= 0 && e < n_e);
            for (int j = a; j < i; j++)
                assert_int_not_equal(p->experts[j], e); /* never twice on one shard */
            copies[e]++;
            load += loads[e] / p->replicas[e];
        }
        assert_true(fabs(load - p->shard_load[s]) < 1e-6);
        max = fmax(max, load);
        total += load;
    }
    double want_total = 0;
    for (int e = 0; e < n_e; e++) {
        assert_true(copies[e] >= 1); /* every expert placed */
        assert_int_equal(copies[e], p->replicas[e]);
        extra += copies[e] - 1;
        want_total += loads[e];
    }
    assert_true(extra <= budget);
    assert_true(fabs(total - want_total) < 1e-6);
    assert_true(fabs(max - p->max_load) < 1e-6);
    /* every shard gets work when there are copies enough */
    if (n_e + budget >= n_s && p->offsets[n_s] >= n_s)
        for (int s = 0; s < n_s; s++)
            assert_true(p->offsets[s + 1] > p->offsets[s]);
    return max;
}

/* ---- brute force --------------------------------------------------------- */

typedef struct bf {
    const double *loads;
    int n_e, n_s, budget;
    int r[MAXE];
    int mask[MAXE]; /* shards holding expert e */
    double best;
} bf_t;

static double bf_max(const bf_t *b)
{
    double load[MAXS] = {0};
    for (int e = 0; e < b->n_e; e++)
        for (int s = 0; s < b->n_s; s++)
            if (b->mask[e] & (1 << s))
                load[s] += b->loads[e] / b->r[e];
    double m = 0;
    for (int s = 0; s < b->n_s; s++) {
        /* same rule as the greedy: no empty shard when copies suffice */
        bool used = false;
        for (int e = 0; e < b->n_e; e++)
            used |= (b->mask[e] >> s) & 1;
        if (!used && b->n_e + b->budget >= b->n_s)
            return INFINITY;
        m = fmax(m, load[s]);
    }
    return m;
}

/* choose shard sets for experts e.. (each of size r[e]) */
static void bf_assign(bf_t *b, int e)
{
    if (e == b->n_e) {
        b->best = fmin(b->best, bf_max(b));
        return;
    }
    for (int m = 1; m < (1 << b->n_s); m++) {
        if (__builtin_popcount((unsigned)m) != b->r[e])
            continue;
        b->mask[e] = m;
        bf_assign(b, e + 1);
    }
}

/* choose replica counts for experts e.. with `left` extra copies */
static void bf_replicas(bf_t *b, int e, int left)
{
    if (e == b->n_e) {
        bf_assign(b, 0);
        return;
    }
    for (int k = 0; k <= left && 1 + k <= b->n_s; k++) {
        b->r[e] = 1 + k;
        bf_replicas(b, e + 1, left - k);
    }
}

static double brute_force(const double *loads, int n_e, int n_s, int budget)
{
    bf_t b = {.loads = loads, .n_e = n_e, .n_s = n_s, .budget = budget, .best = INFINITY};
    bf_replicas(&b, 0, budget);
    return b.best;
}

static void test_against_brute_force(void **state)
{
    (void)state;
    srand(12345);
    int cases = 0, optimal = 0;
    double worst = 1.0;
    for (int it = 0; it < 300; it++) {
        int n_e = 2 + rand() % 5; /* 2..6 */
        int n_s = 2 + rand() % 2; /* 2..3 */
        int budget = rand() % 3;  /* 0..2 */
        double loads[MAXE];
        for (int e = 0; e < n_e; e++) {
            /* skewed, like real traffic: a few hot experts */
            loads[e] = (double)(1 + rand() % 20);
            if (rand() % 4 == 0)
                loads[e] *= 5;
        }
        duet_placement_t *p = NULL;
        assert_int_equal(duet_topology_place_experts(loads, n_e, n_s, budget, NULL, &p), DUET_OK);
        double got = check_invariants(p, loads, n_e, n_s, budget, 0);
        double opt = brute_force(loads, n_e, n_s, budget);
        assert_true(isfinite(opt));
        assert_true(got >= opt - 1e-9); /* sanity of the brute force */
        double ratio = got / opt;
        worst = fmax(worst, ratio);
        /* LPT's bound for identical machines: 4/3 */
        if (ratio > 4.0 / 3.0 + 1e-9)
            fprintf(stderr, "greedy %.3f vs optimum %.3f (n_e %d, n_s %d, budget %d)\n", got, opt,
                    n_e, n_s, budget);
        assert_true(ratio <= 4.0 / 3.0 + 1e-9);
        cases++;
        optimal += ratio < 1 + 1e-9;
        duet_placement_destroy(&p);
        assert_null(p);
    }
    printf("placement: %d/%d cases optimal, worst ratio to optimum %.4f\n", optimal, cases, worst);
    /* the local search should find the optimum in most small cases */
    assert_true(optimal * 10 >= cases * 8);
}

/* Known answers. */
static void test_known_cases(void **state)
{
    (void)state;
    duet_placement_t *p = NULL;
    /* one hot expert, budget 1: replicated on both shards, 40+10 / 40+10... */
    double hot[4] = {80, 10, 10, 10};
    assert_int_equal(duet_topology_place_experts(hot, 4, 2, 1, NULL, &p), DUET_OK);
    check_invariants(p, hot, 4, 2, 1, 0);
    assert_int_equal(p->replicas[0], 2);
    assert_true(fabs(p->max_load - 60.0) < 1e-9); /* 40+10+10 | 40+10 -> optimum 60 */
    duet_placement_destroy(&p);
    /* without a budget the hot expert alone bounds the maximum */
    assert_int_equal(duet_topology_place_experts(hot, 4, 2, 0, NULL, &p), DUET_OK);
    assert_true(fabs(p->max_load - 80.0) < 1e-9);
    duet_placement_destroy(&p);
    /* uniform: 8 experts on 4 shards, two each */
    double flat[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    assert_int_equal(duet_topology_place_experts(flat, 8, 4, 0, NULL, &p), DUET_OK);
    check_invariants(p, flat, 8, 4, 0, 0);
    for (int s = 0; s < 4; s++)
        assert_int_equal(p->offsets[s + 1] - p->offsets[s], 2);
    assert_true(fabs(p->max_load - 2.0) < 1e-9);
    duet_placement_destroy(&p);
    /* LPT's classic trap {3,3,2,2,2} on 2 shards: LPT gives 7, optimum 6 */
    double trap[5] = {3, 3, 2, 2, 2};
    assert_int_equal(duet_topology_place_experts(trap, 5, 2, 0, NULL, &p), DUET_OK);
    check_invariants(p, trap, 5, 2, 0, 0);
    assert_true(fabs(p->max_load - 6.0) < 1e-9); /* the local search swaps to 3+3 | 2+2+2 */
    duet_placement_destroy(&p);
    /* fewer experts than shards: the budget fills every shard */
    double two[2] = {5, 1};
    assert_int_equal(duet_topology_place_experts(two, 2, 4, 2, NULL, &p), DUET_OK);
    check_invariants(p, two, 2, 4, 2, 0);
    assert_int_equal(p->replicas[0], 3);
    assert_int_equal(p->offsets[4], 4);
    duet_placement_destroy(&p);
    /* a replica never lands twice on one shard even with a huge budget */
    double one[1] = {9};
    assert_int_equal(duet_topology_place_experts(one, 1, 3, 100, NULL, &p), DUET_OK);
    check_invariants(p, one, 1, 3, 100, 0);
    assert_int_equal(p->replicas[0], 3);
    assert_true(fabs(p->max_load - 3.0) < 1e-9);
    duet_placement_destroy(&p);
    /* zero loads still place everything */
    double zero[3] = {0, 0, 0};
    assert_int_equal(duet_topology_place_experts(zero, 3, 3, 0, NULL, &p), DUET_OK);
    check_invariants(p, zero, 3, 3, 0, 0);
    duet_placement_destroy(&p);
}

static void test_capacity_and_errors(void **state)
{
    (void)state;
    duet_placement_t *p = NULL;
    double loads[8] = {50, 5, 5, 5, 5, 5, 5, 5};
    duet_place_opts_t opts = {.max_per_shard = 3};
    assert_int_equal(duet_topology_place_experts(loads, 8, 3, 4, &opts, &p), DUET_OK);
    check_invariants(p, loads, 8, 3, 4, 3);
    assert_int_equal(p->offsets[3], 9); /* capacity 9: one replica fits */
    assert_int_equal(p->replicas[0], 2);
    duet_placement_destroy(&p);
    opts.max_per_shard = 2;
    assert_int_equal(duet_topology_place_experts(loads, 8, 3, 0, &opts, &p), DUET_ERR_CAPACITY);
    assert_null(p);
    double bad[2] = {1, -1};
    assert_int_equal(duet_topology_place_experts(bad, 2, 2, 0, NULL, &p), DUET_ERR_INVALID);
    double nan_[2] = {1, NAN};
    assert_int_equal(duet_topology_place_experts(nan_, 2, 2, 0, NULL, &p), DUET_ERR_INVALID);
    assert_int_equal(duet_topology_place_experts(loads, 0, 2, 0, NULL, &p), DUET_ERR_INVALID);
    assert_int_equal(duet_topology_place_experts(loads, 8, 0, 0, NULL, &p), DUET_ERR_INVALID);
    assert_int_equal(duet_topology_place_experts(loads, 8, 2, -1, NULL, &p), DUET_ERR_INVALID);
    assert_null(p);
    duet_placement_destroy(&p);
    duet_placement_destroy(NULL);
}

/* Larger random cases: invariants and a lower bound. */
static void test_large_random(void **state)
{
    (void)state;
    srand(777);
    for (int it = 0; it < 20; it++) {
        int n_e = 8 + rand() % 57, n_s = 2 + rand() % 15, budget = rand() % 16;
        double loads[64], total = 0, hottest = 0;
        for (int e = 0; e < n_e; e++) {
            loads[e] = (double)(rand() % 1000) * ((rand() % 8) ? 1 : 10);
            total += loads[e];
            hottest = fmax(hottest, loads[e]);
        }
        duet_placement_t *p = NULL;
        assert_int_equal(duet_topology_place_experts(loads, n_e, n_s, budget, NULL, &p), DUET_OK);
        double max = check_invariants(p, loads, n_e, n_s, budget, 0);
        assert_true(max >= total / n_s - 1e-6);
        /* 4/3 of the simple lower bound plus one copy: a loose sanity bound */
        assert_true(max <= total / n_s + hottest + 1e-6);
        duet_placement_destroy(&p);
    }
}

/* The planner's path: place, apply to a deployment, validate, write. */
static void test_apply_to_topology(void **state)
{
    (void)state;
    duet_topology_t *t = NULL;
    assert_int_equal(duet_topology_create(&t), DUET_OK);
    assert_int_equal(duet_topology_set_model(t, "/m"), DUET_OK);
    duet_topo_node_spec_t n = {.name = "n"};
    assert_int_equal(duet_topology_add_node(t, &n), DUET_OK);
    assert_int_equal(duet_topology_add_router(t, "n"), DUET_OK);
    assert_int_equal(duet_topology_add_scheduler(t, "n"), DUET_OK);
    assert_int_equal(duet_topology_add_attention(t, "n", 3, NULL), DUET_OK);
    for (int s = 0; s < 2; s++)
        assert_int_equal(duet_topology_add_expert_shard(t, "n", NULL, NULL, 0, NULL), DUET_OK);
    duet_topo_validate_opts_t opts = {.n_experts = 8};
    assert_int_equal(duet_topology_validate(t, &opts, NULL), DUET_ERR_INVALID); /* unplaced */
    double loads[8] = {400, 60, 50, 40, 40, 30, 20, 10};
    duet_placement_t *p = NULL;
    assert_int_equal(duet_topology_place_experts(loads, 8, 3, 1, NULL, &p), DUET_OK);
    assert_int_equal(duet_topology_apply_placement(t, p), DUET_ERR_INVALID); /* 3 != 2 shards */
    duet_placement_destroy(&p);
    assert_int_equal(duet_topology_place_experts(loads, 8, 2, 1, NULL, &p), DUET_OK);
    assert_int_equal(duet_topology_apply_placement(t, p), DUET_OK);
    assert_int_equal(duet_topology_validate(t, &opts, NULL), DUET_OK);
    int shards[2];
    assert_int_equal(duet_topology_expert_shards(t, 0, shards, 2), 2); /* hot one replicated */
    const duet_topo_actor_t *e1 = duet_topology_expert_shard(t, 1);
    assert_int_equal(e1->n_experts, (size_t)(p->offsets[2] - p->offsets[1]));
    duet_buf_t b = {0};
    assert_int_equal(duet_topology_write(t, &b), DUET_OK);
    duet_topology_t *u = NULL;
    assert_int_equal(
        duet_topology_parse((const char *)b.data, b.len, "planned.yaml", NULL, &opts, &u, NULL),
        DUET_OK);
    assert_true(duet_topology_equal(t, u));
    duet_topology_destroy(&u);
    duet_buf_cleanup(&b);
    duet_placement_destroy(&p);
    duet_topology_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_brute_force), cmocka_unit_test(test_known_cases),
        cmocka_unit_test(test_capacity_and_errors), cmocka_unit_test(test_large_random),
        cmocka_unit_test(test_apply_to_topology),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
