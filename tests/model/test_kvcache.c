/* Paged KV cache: block accounting, all-or-nothing reservations,
 * DUET_ERR_CAPACITY when blocks or sequence slots run out, blocks freed and
 * reused (with correct logits afterwards, against the HF reference). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "forward_ref.h"
#include "model/kvcache.h"

#define DIR DUET_FIXTURES "/mixtral-tiny"

static duet_model_t *g_model;
static duet_backend_t *g_be;

static int setup(void **state)
{
    (void)state;
    if (duet_model_load(DIR, NULL, &g_model)) {
        fprintf(stderr, "load: %s\n", duet_error());
        return -1;
    }
    return duet_backend_open("cpu", NULL, &g_be) ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    duet_backend_close(&g_be);
    duet_model_destroy(&g_model);
    return 0;
}

static duet_kvcache_t *cache(int32_t n_blocks, int32_t max_seqs, int32_t max_len)
{
    duet_kvcache_opts_t o = {
        .block_size = 16, .n_blocks = n_blocks, .max_seqs = max_seqs, .max_seq_len = max_len};
    duet_kvcache_t *kv = NULL;
    assert_int_equal(duet_kvcache_create(g_be, &g_model->cfg, &o, &kv), DUET_OK);
    return kv;
}

static void test_reserve_and_capacity(void **state)
{
    (void)state;
    duet_kvcache_t *kv = cache(4, 8, 256);
    assert_int_equal(duet_kvcache_total_blocks(kv), 4);
    int32_t a, b;
    assert_int_equal(duet_kvcache_seq_open(kv, &a), DUET_OK);
    assert_int_equal(duet_kvcache_seq_open(kv, &b), DUET_OK);
    int32_t n40 = 40, pos0 = -1;
    assert_int_equal(duet_kvcache_reserve(kv, 1, &a, &n40, &pos0), DUET_OK);
    assert_int_equal(pos0, 0);
    assert_int_equal(duet_kvcache_seq_len(kv, a), 40);
    assert_int_equal(duet_kvcache_free_blocks(kv), 1);

    /* a needs 1 more block for 9 tokens (49 -> 4 blocks) and b needs 2: the
     * pair does not fit, and nothing may change */
    int32_t seqs[2] = {a, b}, n[2] = {9, 20};
    assert_int_equal(duet_kvcache_reserve(kv, 2, seqs, n, NULL), DUET_ERR_CAPACITY);
    assert_non_null(strstr(duet_error(), "kv cache full"));
    assert_int_equal(duet_kvcache_seq_len(kv, a), 40);
    assert_int_equal(duet_kvcache_seq_len(kv, b), 0);
    assert_int_equal(duet_kvcache_free_blocks(kv), 1);

    /* within the last block: no new block */
    int32_t n8 = 8;
    assert_int_equal(duet_kvcache_reserve(kv, 1, &a, &n8, &pos0), DUET_OK);
    assert_int_equal(pos0, 40);
    assert_int_equal(duet_kvcache_free_blocks(kv), 1);

    /* repeated and unknown sequences are caller errors */
    int32_t dup[2] = {a, a}, one[2] = {1, 1};
    assert_int_equal(duet_kvcache_reserve(kv, 2, dup, one, NULL), DUET_ERR_INVALID);
    int32_t ghost = 7;
    assert_int_equal(duet_kvcache_reserve(kv, 1, &ghost, one, NULL), DUET_ERR_INVALID);

    /* truncation frees whole blocks past the new length */
    assert_int_equal(duet_kvcache_seq_truncate(kv, a, 10), DUET_OK);
    assert_int_equal(duet_kvcache_free_blocks(kv), 3);
    assert_int_equal(duet_kvcache_seq_truncate(kv, a, 11), DUET_ERR_RANGE);

    /* closing returns everything; the blocks are handed out again */
    duet_kvcache_seq_close(kv, a);
    assert_int_equal(duet_kvcache_free_blocks(kv), 4);
    int32_t n64 = 64;
    assert_int_equal(duet_kvcache_reserve(kv, 1, &b, &n64, NULL), DUET_OK);
    assert_int_equal(duet_kvcache_free_blocks(kv), 0);
    const int32_t *bt = duet_kvcache_seq_blocks(kv, b);
    bool seen[4] = {false};
    for (int i = 0; i < 4; i++) {
        assert_true(bt[i] >= 0 && bt[i] < 4);
        assert_false(seen[bt[i]]);
        seen[bt[i]] = true;
    }
    duet_kvcache_destroy(&kv);
    assert_null(kv);
    duet_kvcache_destroy(&kv); /* NULL is fine */
}

static void test_seq_slots_and_length(void **state)
{
    (void)state;
    duet_kvcache_t *kv = cache(64, 2, 32);
    int32_t a, b, c;
    assert_int_equal(duet_kvcache_seq_open(kv, &a), DUET_OK);
    assert_int_equal(duet_kvcache_seq_open(kv, &b), DUET_OK);
    assert_int_equal(duet_kvcache_seq_open(kv, &c), DUET_ERR_CAPACITY);
    assert_non_null(strstr(duet_error(), "sequence slots"));
    int32_t n33 = 33;
    assert_int_equal(duet_kvcache_reserve(kv, 1, &a, &n33, NULL), DUET_ERR_RANGE);
    duet_kvcache_seq_close(kv, b);
    assert_int_equal(duet_kvcache_open_seqs(kv), 1);
    assert_int_equal(duet_kvcache_seq_open(kv, &c), DUET_OK);
    assert_int_equal(duet_kvcache_seq_len(kv, c), 0);
    duet_kvcache_destroy(&kv);
}

/* Through the engine: a step that does not fit is CAPACITY, leaves the
 * cache as it was, and the engine keeps working; reused blocks (holding
 * stale K/V of a closed sequence) give the reference logits. */
static void test_engine_capacity_and_reuse(void **state)
{
    (void)state;
    ref_set_t r;
    assert_int_equal(ref_load(DIR, &r), 0);
    const ref_prompt_t *big = &r.p[4]; /* 64 tokens = 4 blocks */
    assert_int_equal(big->n, 64);
    duet_engine_opts_t o = {0};
    o.fwd.max_tokens = 128;
    o.fwd.max_logits = 128;
    o.kv.block_size = 16;
    o.kv.n_blocks = 6;
    o.kv.max_seqs = 4;
    duet_engine_t *e = NULL;
    assert_int_equal(duet_engine_create(g_be, g_model, &o, &e), DUET_OK);
    duet_kvcache_t *kv = duet_engine_kv(e);
    float *logits = malloc(sizeof(float) * 128 * (size_t)r.vocab);

    int32_t s1, s2;
    assert_int_equal(duet_kvcache_seq_open(kv, &s1), DUET_OK);
    assert_int_equal(duet_kvcache_seq_open(kv, &s2), DUET_OK);
    duet_seq_input_t in1 = {s1, big->n, big->ids, DUET_LOGITS_ALL};
    assert_int_equal(duet_engine_step(e, 1, &in1, logits, NULL), DUET_OK);
    assert_true(max_abs_diff(logits, big->logits, (int64_t)big->n * r.vocab) <= REF_LOGIT_TOL);
    assert_int_equal(duet_kvcache_free_blocks(kv), 2);

    duet_seq_input_t in2 = {s2, big->n, big->ids, DUET_LOGITS_ALL};
    assert_int_equal(duet_engine_step(e, 1, &in2, logits, NULL), DUET_ERR_CAPACITY);
    printf("  capacity error: %s\n", duet_error());
    assert_int_equal(duet_kvcache_free_blocks(kv), 2);
    assert_int_equal(duet_kvcache_seq_len(kv, s2), 0);

    /* free s1: its blocks (with its K/V still in them) go to s2 */
    duet_kvcache_seq_close(kv, s1);
    const ref_prompt_t *p3 = &r.p[3];
    duet_seq_input_t in3 = {s2, p3->n, p3->ids, DUET_LOGITS_ALL};
    assert_int_equal(duet_engine_step(e, 1, &in3, logits, NULL), DUET_OK);
    float d = max_abs_diff(logits, p3->logits, (int64_t)p3->n * r.vocab);
    printf("  after reuse: max |diff| %.3g\n", (double)d);
    assert_true(d <= REF_LOGIT_TOL);

    /* too many tokens for the micro-batch: CAPACITY too, not a crash */
    int32_t s3;
    assert_int_equal(duet_kvcache_seq_open(kv, &s3), DUET_OK);
    int32_t many[200] = {0};
    duet_seq_input_t in4 = {s3, 200, many, DUET_LOGITS_LAST};
    assert_int_equal(duet_engine_step(e, 1, &in4, NULL, NULL), DUET_ERR_CAPACITY);
    /* an out-of-vocabulary id is INVALID */
    int32_t oov = g_model->cfg.vocab;
    duet_seq_input_t in5 = {s3, 1, &oov, DUET_LOGITS_LAST};
    assert_int_equal(duet_engine_step(e, 1, &in5, NULL, NULL), DUET_ERR_INVALID);
    assert_int_equal(duet_kvcache_seq_len(kv, s3), 0);

    free(logits);
    duet_engine_destroy(&e);
    ref_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_and_capacity),
        cmocka_unit_test(test_seq_slots_and_length),
        cmocka_unit_test(test_engine_capacity_and_reuse),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
