/* The other architectures against HF transformers' float32 references in
 * tests/fixtures/{qwen2moe,qwen3moe,olmoe}-tiny (same reference layout as
 * mixtral-tiny): qwen2_moe (shared expert with sigmoid gate, q/k/v biases,
 * no top-k renormalisation), qwen3_moe (per-head q/k RMSNorm, explicit
 * head_dim, a dense mlp_only layer, renormalised top-k), olmoe (q/k
 * RMSNorm over the whole projection, tied embeddings). A missing fixture is
 * a failure: these fixtures are part of the repository. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "forward_ref.h"

static duet_backend_t *g_be;

static int setup(void **state)
{
    (void)state;
    /* gen_arch_fixtures.py computes its references with a fresh
     * from_pretrained(dtype=float32): float32 RoPE frequencies. */
    g_ref_rope_freq = DUET_ROPE_FREQ_F32;
    duet_backend_opts_t bo = {.n_threads = 2};
    return duet_backend_open("cpu", &bo, &g_be) ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    duet_backend_close(&g_be);
    return 0;
}

static void check_arch(const char *name, duet_arch_t arch)
{
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/%s", DUET_FIXTURES, name);
    duet_model_t *m = NULL;
    duet_status_t st = duet_model_load(dir, NULL, &m);
    if (st)
        fprintf(stderr, "load %s: %s\n", dir, duet_error());
    assert_int_equal(st, DUET_OK);
    assert_int_equal(m->cfg.arch, arch);
    ref_set_t r;
    assert_int_equal(ref_load(dir, &r), 0);
    assert_int_equal(r.vocab, m->cfg.vocab);
    printf(" %s:\n", name);
    assert_true(ref_check_prefill(g_be, m, &r, false) <= REF_LOGIT_TOL);
    assert_true(ref_check_prefill(g_be, m, &r, true) <= REF_LOGIT_TOL);
    assert_true(ref_check_mixed(g_be, m, &r) <= REF_LOGIT_TOL);
    assert_int_equal(ref_check_greedy(g_be, m, &r), 0);
    assert_int_equal(ref_check_staggered(g_be, m, &r), 0);
    ref_free(&r);
    duet_model_destroy(&m);
}

static void test_qwen2_moe(void **state)
{
    (void)state;
    check_arch("qwen2moe-tiny", DUET_ARCH_QWEN2_MOE);
}

static void test_qwen3_moe(void **state)
{
    (void)state;
    check_arch("qwen3moe-tiny", DUET_ARCH_QWEN3_MOE);
}

static void test_olmoe(void **state)
{
    (void)state;
    check_arch("olmoe-tiny", DUET_ARCH_OLMOE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen2_moe),
        cmocka_unit_test(test_qwen3_moe),
        cmocka_unit_test(test_olmoe),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
