/* Forward pass of tests/fixtures/mixtral-tiny against HF transformers'
 * float32 reference: logits at every prompt position within 2e-4 (alone,
 * batched, mixed prefill/decode schedule) and greedy continuations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "forward_ref.h"

#define DIR DUET_FIXTURES "/mixtral-tiny"

static duet_model_t *g_model;
static duet_backend_t *g_be;
static ref_set_t g_ref;

static int setup(void **state)
{
    (void)state;
    if (duet_model_load(DIR, NULL, &g_model)) {
        fprintf(stderr, "load %s: %s\n", DIR, duet_error());
        return -1;
    }
    duet_backend_opts_t bo = {.n_threads = 2};
    if (duet_backend_open("cpu", &bo, &g_be)) {
        fprintf(stderr, "backend: %s\n", duet_error());
        return -1;
    }
    return ref_load(DIR, &g_ref);
}

static int teardown(void **state)
{
    (void)state;
    ref_free(&g_ref);
    duet_backend_close(&g_be);
    duet_model_destroy(&g_model);
    return 0;
}

static void test_prefill_alone(void **state)
{
    (void)state;
    assert_true(g_ref.n >= 2);
    assert_int_equal(g_ref.vocab, g_model->cfg.vocab);
    float d = ref_check_prefill(g_be, g_model, &g_ref, false);
    assert_true(d <= REF_LOGIT_TOL);
}

static void test_prefill_batched(void **state)
{
    (void)state;
    float d = ref_check_prefill(g_be, g_model, &g_ref, true);
    assert_true(d <= REF_LOGIT_TOL);
}

static void test_mixed_prefill_decode(void **state)
{
    (void)state;
    float d = ref_check_mixed(g_be, g_model, &g_ref);
    assert_true(d <= REF_LOGIT_TOL);
}

static void test_greedy(void **state)
{
    (void)state;
    assert_int_equal(ref_check_greedy(g_be, g_model, &g_ref), 0);
}

/* Prompts joining while others decode (continuous batching). */
static void test_staggered_prefill_and_decode(void **state)
{
    (void)state;
    assert_int_equal(ref_check_staggered(g_be, g_model, &g_ref), 0);
}

/* One thread must give the same answers (the pool split is not numerics). */
static void test_single_thread(void **state)
{
    (void)state;
    duet_backend_t *be1 = NULL;
    duet_backend_opts_t bo = {.n_threads = 1};
    assert_int_equal(duet_backend_open("cpu", &bo, &be1), DUET_OK);
    float d = ref_check_prefill(be1, g_model, &g_ref, true);
    duet_backend_close(&be1);
    assert_null(be1);
    assert_true(d <= REF_LOGIT_TOL);
}

/* Another KV block size (the portable block kernel, other block edges). */
static void test_block_size_5(void **state)
{
    (void)state;
    g_ref_block_size = 5;
    float d = ref_check_mixed(g_be, g_model, &g_ref);
    g_ref_block_size = 16;
    assert_true(d <= REF_LOGIT_TOL);
}

/* The pipeline's cut, by hand: an attention-role model runs the attention
 * halves and the combine; two expert-role models (experts 0-3 and 4-7)
 * run the expert FFNs of the rows dispatched to them. Logits must match the
 * reference as in one process. */
static void test_disaggregated_roles(void **state)
{
    (void)state;
    duet_model_t *am = NULL, *em[2] = {NULL, NULL};
    duet_load_opts_t ao = {.role = DUET_ROLE_ATTENTION};
    assert_int_equal(duet_model_load(DIR, &ao, &am), DUET_OK);
    const int held[2][4] = {{0, 1, 2, 3}, {4, 5, 6, 7}};
    for (int s = 0; s < 2; s++) {
        duet_load_opts_t eo = {.role = DUET_ROLE_EXPERT, .experts = held[s], .n_experts = 4};
        assert_int_equal(duet_model_load(DIR, &eo, &em[s]), DUET_OK);
    }
    const duet_config_t *c = &am->cfg;
    int32_t total = 0;
    for (int i = 0; i < g_ref.n; i++)
        total += g_ref.p[i].n;
    duet_kvcache_opts_t ko = {.block_size = 16, .n_blocks = 64, .max_seqs = 8};
    duet_kvcache_t *kv = NULL;
    assert_int_equal(duet_kvcache_create(g_be, c, &ko, &kv), DUET_OK);
    duet_fwd_opts_t fo = {.max_tokens = total, .max_seqs = 8, .max_logits = total};
    duet_fwd_t *fwd = NULL;
    duet_ubatch_t *ub = NULL;
    assert_int_equal(duet_fwd_create(g_be, am, kv, &fo, &fwd), DUET_OK);
    assert_int_equal(duet_ubatch_create(fwd, &ub), DUET_OK);
    const int32_t max_rows = total * c->top_k;
    duet_experts_t *ex[2];
    for (int s = 0; s < 2; s++)
        assert_int_equal(duet_experts_create(g_be, em[s], max_rows, &ex[s]), DUET_OK);
    duet_dispatch_t d;
    assert_int_equal(duet_dispatch_init(&d, c->n_experts, max_rows), DUET_OK);

    duet_seq_input_t in[REF_MAX_PROMPTS];
    for (int i = 0; i < g_ref.n; i++) {
        int32_t seq;
        assert_int_equal(duet_kvcache_seq_open(kv, &seq), DUET_OK);
        in[i] = (duet_seq_input_t){seq, g_ref.p[i].n, g_ref.p[i].ids, DUET_LOGITS_ALL};
    }
    const size_t rowb = sizeof(float) * (size_t)c->hidden;
    float *xg = malloc(rowb * (size_t)max_rows), *yg = malloc(rowb * (size_t)max_rows);
    assert_int_equal(duet_fwd_begin(fwd, ub, g_ref.n, in), DUET_OK);
    for (int32_t l = 0; l < c->n_layers; l++) {
        assert_int_equal(duet_fwd_attention(fwd, ub, l), DUET_OK);
        const int32_t *ids;
        const float *w;
        int32_t k;
        assert_true(duet_ubatch_routes(ub, &ids, &w, &k));
        assert_int_equal(duet_dispatch_build(&d, ids, w, duet_ubatch_n_tokens(ub), k), DUET_OK);
        /* rows are grouped by expert, experts ascending: shard 0 owns the
         * first half of the rows, shard 1 the rest */
        const float *x = duet_ubatch_normed(ub);
        for (int32_t r = 0; r < d.n_rows; r++)
            memcpy(xg + (size_t)r * c->hidden, x + (size_t)d.row_token[r] * c->hidden, rowb);
        for (int s = 0; s < 2; s++) {
            int32_t e0 = s * 4, off = d.offset[e0];
            int32_t eids[4], cnt[4];
            for (int j = 0; j < 4; j++) {
                eids[j] = e0 + j;
                cnt[j] = d.count[e0 + j];
            }
            assert_int_equal(duet_experts_forward(ex[s], l, 4, eids, cnt,
                                                  xg + (size_t)off * c->hidden,
                                                  yg + (size_t)off * c->hidden),
                             DUET_OK);
        }
        /* a shard asked for an expert it does not hold says so */
        int32_t other = 7, one = 1;
        assert_int_equal(duet_experts_forward(ex[0], l, 1, &other, &one, xg, yg),
                         DUET_ERR_NOT_FOUND);
        assert_int_equal(duet_fwd_combine(fwd, ub, l, yg, d.row_token, d.row_weight, d.n_rows),
                         DUET_OK);
    }
    int32_t rows = 0;
    assert_int_equal(duet_fwd_logits(fwd, ub, &rows), DUET_OK);
    assert_int_equal(rows, total);
    float *logits = malloc(sizeof(float) * (size_t)total * (size_t)c->vocab);
    assert_int_equal(duet_fwd_logits_download(fwd, ub, logits), DUET_OK);
    float worst = 0;
    int64_t off = 0;
    for (int i = 0; i < g_ref.n; i++) {
        int64_t cnt = (int64_t)g_ref.p[i].n * c->vocab;
        worst = fmaxf(worst, max_abs_diff(logits + off, g_ref.p[i].logits, cnt));
        off += cnt;
    }
    printf("  attention role + 2 expert shards: max |diff| %.3g\n", (double)worst);
    assert_true(worst <= REF_LOGIT_TOL);
    /* the expert-role models hold only their experts' weights */
    assert_true(em[0]->held_bytes < am->held_bytes + em[1]->held_bytes);

    free(logits);
    free(xg);
    free(yg);
    duet_dispatch_cleanup(&d);
    for (int s = 0; s < 2; s++) {
        duet_experts_destroy(&ex[s]);
        duet_model_destroy(&em[s]);
    }
    duet_ubatch_destroy(&ub);
    duet_fwd_destroy(&fwd);
    duet_kvcache_destroy(&kv);
    duet_model_destroy(&am);
}

/* A backend op that is a stub (DUET_ERR_UNSUPPORTED) fails the step with
 * that status and leaves the KV cache as it was. Also checks that the
 * forward pass reaches compute only through the table: every op it uses
 * goes through the counting wrapper. */
static duet_backend_ops_t g_wrap;
static int g_calls;
static duet_status_t stub_route(duet_backend_t *be, const float *logits, int64_t n, int32_t e,
                                int32_t k, bool norm, int32_t *ids, float *w)
{
    (void)be, (void)logits, (void)n, (void)e, (void)k, (void)norm, (void)ids, (void)w;
    return duet_backend_unsupported("test", "route");
}
static duet_status_t count_matmul(duet_backend_t *be, const float *x, int64_t n, int64_t in,
                                  const duet_tensor_t *w, const duet_tensor_t *b, float *y,
                                  bool acc)
{
    g_calls++;
    return g_be->ops->matmul(be, x, n, in, w, b, y, acc);
}

static duet_status_t count_matmul_batch(duet_backend_t *be, const duet_matmul_desc_t *mms,
                                        int count)
{
    g_calls += count;
    return g_be->ops->matmul_batch(be, mms, count);
}

static void test_unsupported_op(void **state)
{
    (void)state;
    g_wrap = *g_be->ops;
    g_wrap.matmul = count_matmul;
    g_wrap.matmul_batch = count_matmul_batch;
    g_wrap.route = stub_route;
    duet_backend_t wrapped = {&g_wrap, g_be->impl};
    duet_engine_opts_t o = {0};
    o.fwd.max_tokens = 64;
    o.kv.n_blocks = 16;
    duet_engine_t *e = NULL;
    assert_int_equal(duet_engine_create(&wrapped, g_model, &o, &e), DUET_OK);
    int32_t seq;
    assert_int_equal(duet_kvcache_seq_open(duet_engine_kv(e), &seq), DUET_OK);
    duet_seq_input_t in = {seq, g_ref.p[1].n, g_ref.p[1].ids, DUET_LOGITS_LAST};
    g_calls = 0;
    assert_int_equal(duet_engine_step(e, 1, &in, NULL, NULL), DUET_ERR_UNSUPPORTED);
    assert_non_null(strstr(duet_error(), "route"));
    assert_true(g_calls >= 5); /* q, k, v, o, router of layer 0 */
    assert_int_equal(duet_kvcache_seq_len(duet_engine_kv(e), seq), 0);
    assert_int_equal(duet_kvcache_free_blocks(duet_engine_kv(e)), 16);
    duet_engine_destroy(&e);
}

/* An unknown backend name is a clear error, not a crash. */
static void test_backend_registry(void **state)
{
    (void)state;
    duet_backend_t *be = NULL;
    assert_int_equal(duet_backend_open("no-such", NULL, &be), DUET_ERR_NOT_FOUND);
    assert_non_null(strstr(duet_error(), "no-such"));
    assert_null(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_alone),
        cmocka_unit_test(test_prefill_batched),
        cmocka_unit_test(test_mixed_prefill_decode),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_staggered_prefill_and_decode),
        cmocka_unit_test(test_single_thread),
        cmocka_unit_test(test_block_size_5),
        cmocka_unit_test(test_disaggregated_roles),
        cmocka_unit_test(test_unsupported_op),
        cmocka_unit_test(test_backend_registry),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
