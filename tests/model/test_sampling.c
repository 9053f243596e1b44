/* Sampling: greedy, temperature, top-k, top-p, determinism per
 * (seed, position), parameter checks, and the backend's sample op. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/backend.h"
#include "model/sampling.h"

#define V 1000

static float g_logits[V];

static void make_logits(unsigned seed)
{
    srand(seed);
    for (int i = 0; i < V; i++)
        g_logits[i] = (float)rand() / (float)RAND_MAX * 6.0f - 3.0f;
}

static duet_sampling_params_t params(float t, int k, float p, uint64_t seed)
{
    return (duet_sampling_params_t){t, k, p, seed};
}

static void test_greedy_is_argmax(void **state)
{
    (void)state;
    make_logits(1);
    g_logits[417] = 10.0f;
    duet_sampler_t *s = NULL;
    assert_int_equal(duet_sampler_create(V, &s), DUET_OK);
    int32_t tok = -1;
    duet_sampling_params_t p = params(0.0f, 0, 1.0f, 7);
    assert_int_equal(duet_sampler_sample(s, g_logits, &p, 0, &tok), DUET_OK);
    assert_int_equal(tok, 417);
    assert_int_equal(duet_sample_greedy(g_logits, V), 417);
    /* ties go to the lowest id */
    g_logits[12] = 10.0f;
    assert_int_equal(duet_sample_greedy(g_logits, V), 12);
    duet_sampler_destroy(&s);
    assert_null(s);
}

static void test_same_seed_same_tokens(void **state)
{
    (void)state;
    make_logits(2);
    duet_sampler_t *s = NULL;
    assert_int_equal(duet_sampler_create(V, &s), DUET_OK);
    duet_sampling_params_t a = params(1.0f, 0, 1.0f, 1234);
    duet_sampling_params_t b = params(1.0f, 0, 1.0f, 99);
    int32_t ta[64], tb[64], tc[64];
    int differ = 0;
    for (int pos = 0; pos < 64; pos++) {
        assert_int_equal(duet_sampler_sample(s, g_logits, &a, pos, &ta[pos]), DUET_OK);
        assert_int_equal(duet_sampler_sample(s, g_logits, &b, pos, &tb[pos]), DUET_OK);
        differ += ta[pos] != tb[pos];
    }
    /* replay in another order: the same tokens (pure function of seed, position) */
    for (int pos = 63; pos >= 0; pos--)
        assert_int_equal(duet_sampler_sample(s, g_logits, &a, pos, &tc[pos]), DUET_OK);
    assert_memory_equal(ta, tc, sizeof(ta));
    /* a near-flat distribution over 1000 tokens: two seeds must mostly differ */
    assert_true(differ > 48);
    duet_sampler_destroy(&s);
}

static void test_topk1_and_tiny_topp_are_greedy(void **state)
{
    (void)state;
    duet_sampler_t *s = NULL;
    assert_int_equal(duet_sampler_create(V, &s), DUET_OK);
    for (unsigned trial = 0; trial < 20; trial++) {
        make_logits(100 + trial);
        int32_t want = duet_sample_greedy(g_logits, V), tok;
        duet_sampling_params_t k1 = params(1.5f, 1, 1.0f, trial);
        assert_int_equal(duet_sampler_sample(s, g_logits, &k1, trial, &tok), DUET_OK);
        assert_int_equal(tok, want);
        duet_sampling_params_t p0 = params(1.5f, 0, 1e-6f, trial);
        assert_int_equal(duet_sampler_sample(s, g_logits, &p0, trial, &tok), DUET_OK);
        assert_int_equal(tok, want);
    }
    duet_sampler_destroy(&s);
}

/* Empirical frequencies follow softmax(logits / T), and top-k / top-p
 * never pick outside their sets. */
static void test_temperature_distribution(void **state)
{
    (void)state;
    enum { N = 4 };
    const float lg[N] = {2.0f, 1.0f, 0.0f, -1.0f};
    duet_sampler_t *s = NULL;
    assert_int_equal(duet_sampler_create(N, &s), DUET_OK);
    const float temps[] = {0.5f, 1.0f, 2.0f};
    for (size_t ti = 0; ti < 3; ti++) {
        float T = temps[ti];
        double p[N], z = 0;
        for (int i = 0; i < N; i++)
            z += p[i] = exp(lg[i] / T);
        int cnt[N] = {0};
        const int draws = 40000;
        duet_sampling_params_t pr = params(T, 0, 1.0f, 42);
        for (int d = 0; d < draws; d++) {
            int32_t tok;
            assert_int_equal(duet_sampler_sample(s, lg, &pr, d, &tok), DUET_OK);
            assert_true(tok >= 0 && tok < N);
            cnt[tok]++;
        }
        for (int i = 0; i < N; i++) {
            double want = p[i] / z, got = (double)cnt[i] / draws;
            double sd = sqrt(want * (1 - want) / draws);
            printf("  T=%.1f token %d: %.4f (softmax %.4f)\n", (double)T, i, got, want);
            assert_true(fabs(got - want) < 5 * sd + 1e-3);
        }
    }
    /* top-k 2: only tokens 0 and 1, in ratio e^1 */
    int cnt[N] = {0};
    duet_sampling_params_t pk = params(1.0f, 2, 1.0f, 5);
    for (int d = 0; d < 20000; d++) {
        int32_t tok;
        assert_int_equal(duet_sampler_sample(s, lg, &pk, d, &tok), DUET_OK);
        cnt[tok]++;
    }
    assert_int_equal(cnt[2] + cnt[3], 0);
    double ratio = (double)cnt[0] / cnt[1];
    assert_true(fabs(ratio - exp(1.0)) < 0.2);
    /* top-p 0.8: p = .644 .237 .087 .032 -> nucleus {0, 1} */
    memset(cnt, 0, sizeof(cnt));
    duet_sampling_params_t pp = params(1.0f, 0, 0.8f, 6);
    for (int d = 0; d < 20000; d++) {
        int32_t tok;
        assert_int_equal(duet_sampler_sample(s, lg, &pp, d, &tok), DUET_OK);
        cnt[tok]++;
    }
    assert_int_equal(cnt[2] + cnt[3], 0);
    assert_true(cnt[1] > 3000);
    duet_sampler_destroy(&s);
}

static void test_bad_params(void **state)
{
    (void)state;
    duet_sampler_t *s = NULL;
    assert_int_equal(duet_sampler_create(V, &s), DUET_OK);
    make_logits(3);
    int32_t tok;
    duet_sampling_params_t bad[] = {
        params(-1.0f, 0, 1.0f, 0), params(NAN, 0, 1.0f, 0),  params(1.0f, -2, 1.0f, 0),
        params(1.0f, 0, 0.0f, 0),  params(1.0f, 0, 1.5f, 0),
    };
    for (size_t i = 0; i < DUET_ARRAY_LEN(bad); i++) {
        assert_int_equal(duet_sampler_sample(s, g_logits, &bad[i], 0, &tok), DUET_ERR_INVALID);
        assert_non_null(strstr(duet_error(), "sampling"));
    }
    duet_sampler_t *s2 = NULL;
    assert_int_equal(duet_sampler_create(0, &s2), DUET_ERR_INVALID);
    assert_null(s2);
    duet_sampler_destroy(&s);
}

/* The backend's sample op gives the sampler's answer per row. */
static void test_backend_sample_op(void **state)
{
    (void)state;
    duet_backend_t *be = NULL;
    assert_int_equal(duet_backend_open("cpu", NULL, &be), DUET_OK);
    float rows[3 * V];
    for (int r = 0; r < 3; r++) {
        make_logits(10 + r);
        memcpy(rows + r * V, g_logits, sizeof(g_logits));
    }
    duet_sampling_params_t pr[3] = {params(0, 0, 1, 0), params(0.8f, 40, 0.95f, 11),
                                    params(1.2f, 0, 0.9f, 12)};
    int64_t pos[3] = {5, 6, 7};
    int32_t out[3];
    assert_int_equal(be->ops->sample(be, rows, 3, V, pr, pos, out), DUET_OK);
    duet_sampler_t *s = NULL;
    assert_int_equal(duet_sampler_create(V, &s), DUET_OK);
    for (int r = 0; r < 3; r++) {
        int32_t tok;
        assert_int_equal(duet_sampler_sample(s, rows + r * V, &pr[r], pos[r], &tok), DUET_OK);
        assert_int_equal(tok, out[r]);
    }
    assert_int_equal(out[0], duet_sample_greedy(rows, V));
    duet_sampler_destroy(&s);
    duet_backend_close(&be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_is_argmax),
        cmocka_unit_test(test_same_seed_same_tokens),
        cmocka_unit_test(test_topk1_and_tiny_topp_are_greedy),
        cmocka_unit_test(test_temperature_distribution),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_backend_sample_op),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
