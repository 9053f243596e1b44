/* test_matmul_bf16 — the opt-in bf16-activation precision of the CPU
 * backend (DUET_CPU_PREC_BF16: activations rounded to bf16, vdpbf16ps with
 * f32 accumulation), on CPUs with AVX512-BF16; elsewhere it exits 77.
 *
 * Tolerances:
 *  - against a double-precision reference computed from the same
 *    bf16-rounded activations and the bf16 weights (tight): per output
 *    |y - ref| <= (in + 32) * 2^-24 * Σ_k |xb_k w_k| (+ 2^-24 |y0| when
 *    accumulating) — f32 accumulation in any order. Rounding the
 *    activations differently (truncation, no rounding) is off by up to
 *    2^-8 of a term and fails; the kernel is also required to be far closer
 *    to this reference than to the unrounded-activation one, so a silent
 *    fall back to the exact path fails too;
 *  - against the exact f32 path (loose, what the mode costs): per output
 *    |y - y_f32| <= 2^-8 * Σ|x_k w_k| + the tight bound, and over a call
 *    max |y - y_f32| <= 1e-2 * max |y_f32|;
 *  - end to end on tests/fixtures/mixtral-tiny: greedy tokens equal HF's up
 *    to the first step whose HF top-1/top-2 logit margin is below 0.1 (the
 *    activation rounding moves logits by ~1e-2 here); prefill logits of all
 *    prompts in one batch: the median position within 0.05 of HF's (and
 *    above exact fp32's 2e-4: the mode is on), at most 2% of positions off
 *    by more than 0.1 (a near-tied top-2 routing tipped by the rounding
 *    sends that token to another expert; one such position on this
 *    fixture). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/forward_ref.h"
#include "cpu/cpu_kernels.h"
#include "model/backend.h"

#define BF16_MARGIN_MIN 0.1f
#define FIXTURE DUET_FIXTURES "/mixtral-tiny"

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static double urand(void) /* [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

/* What vcvtne2ps2bf16 does: RNE, denormals to (signed) zero. */
static float round_bf16(float f)
{
    if (fpclassify(f) == FP_SUBNORMAL)
        return copysignf(0.0f, f);
    return duet_bf16_to_f32(duet_f32_to_bf16(f));
}

typedef struct shape {
    int64_t n, in, out;
} shape_t;

/* Tails everywhere: n not a multiple of the 4-row tile, in not a multiple
 * of 32 (masked K tail) or past the 2048 K chunk, out not a multiple of the
 * 4-row weight block or of a task. */
static const shape_t shapes[] = {
    {1, 64, 32},     {2, 31, 35},    {3, 37, 37},    {4, 1024, 64},   {5, 1000, 33},
    {7, 33, 39},     {16, 2816, 50}, {17, 100, 41},  {64, 1024, 67},  {33, 2100, 34},
    {64, 2049, 36},  {65, 96, 130},  {130, 64, 33},  {64, 1024, 8},   {9, 200, 31},
    {200, 1000, 70}, {97, 2049, 45}, {129, 777, 33}, {300, 513, 100},
};

typedef struct problem {
    shape_t s;
    float *x, *y0;
    uint16_t *w;
    double *ref_b, *ref_f, *mag_b, *mag_f; /* per output: Σ x·w and Σ|x·w| */
} problem_t;

static void problem_make(problem_t *p, shape_t s)
{
    p->s = s;
    p->x = malloc(sizeof(float) * (size_t)(s.n * s.in));
    p->y0 = malloc(sizeof(float) * (size_t)(s.n * s.out));
    p->w = malloc(sizeof(uint16_t) * (size_t)(s.out * s.in));
    p->ref_b = malloc(sizeof(double) * (size_t)(s.n * s.out));
    p->ref_f = malloc(sizeof(double) * (size_t)(s.n * s.out));
    p->mag_b = malloc(sizeof(double) * (size_t)(s.n * s.out));
    p->mag_f = malloc(sizeof(double) * (size_t)(s.n * s.out));
    for (int64_t i = 0; i < s.n * s.in; i++) /* activations of varied scale, not bf16 values */
        p->x[i] = (float)(urand() * (1.0 + 3.0 * (double)(i % 7)));
    for (int64_t i = 0; i < s.out * s.in; i++)
        p->w[i] = duet_f32_to_bf16((float)(urand() * 0.25));
    for (int64_t i = 0; i < s.n * s.out; i++)
        p->y0[i] = (float)urand();
    for (int64_t r = 0; r < s.n; r++)
        for (int64_t o = 0; o < s.out; o++) {
            double sb = 0, sf = 0, mb = 0, mf = 0;
            for (int64_t k = 0; k < s.in; k++) {
                double w = duet_bf16_to_f32(p->w[o * s.in + k]);
                double xf = p->x[r * s.in + k], xb = round_bf16(p->x[r * s.in + k]);
                sb += xb * w;
                sf += xf * w;
                mb += fabs(xb * w);
                mf += fabs(xf * w);
            }
            p->ref_b[r * s.out + o] = sb;
            p->ref_f[r * s.out + o] = sf;
            p->mag_b[r * s.out + o] = mb;
            p->mag_f[r * s.out + o] = mf;
        }
}

static void problem_free(problem_t *p)
{
    free(p->x);
    free(p->y0);
    free(p->w);
    free(p->ref_b);
    free(p->ref_f);
    free(p->mag_b);
    free(p->mag_f);
}

/* Check y (from bf16 mode) against the tight reference; acc: y started as
 * y0 and was accumulated into. Returns how much closer to the bf16-input
 * reference than to the f32-input one it is (sum of errors ratio). */
static double check_tight(const problem_t *p, const float *y, bool acc, const char *what)
{
    const shape_t s = p->s;
    const double u = ldexp(1.0, -24);
    double err_b = 0, err_f = 0;
    for (int64_t i = 0; i < s.n * s.out; i++) {
        double y0 = acc ? p->y0[i] : 0.0;
        double want = y0 + p->ref_b[i];
        double tol = (double)(s.in + 32) * u * p->mag_b[i] + u * fabs(y0) + 1e-30;
        double d = fabs((double)y[i] - want);
        if (!(d <= tol))
            fail_msg("%s n=%lld in=%lld out=%lld: y[%lld][%lld] = %.9g, bf16-input reference "
                     "%.9g (|diff| %.3g > tol %.3g)",
                     what, (long long)s.n, (long long)s.in, (long long)s.out,
                     (long long)(i / s.out), (long long)(i % s.out), (double)y[i], want, d, tol);
        err_b += d;
        err_f += fabs((double)y[i] - (y0 + p->ref_f[i]));
    }
    return err_f / (err_b + 1e-300);
}

/* Loose: bf16 mode against the exact f32 kernel's output. */
static void check_loose(const problem_t *p, const float *y, const float *y_exact, const char *what)
{
    const shape_t s = p->s;
    const double u = ldexp(1.0, -24);
    double maxd = 0, maxy = 0;
    for (int64_t i = 0; i < s.n * s.out; i++) {
        double d = fabs((double)y[i] - (double)y_exact[i]);
        double tol = ldexp(p->mag_f[i], -8) + 2.0 * (double)(s.in + 32) * u * p->mag_f[i] + 1e-30;
        if (!(d <= tol))
            fail_msg("%s n=%lld in=%lld out=%lld: output %lld differs from the exact path by "
                     "%.3g (> 2^-8 of Σ|x·w| = %.3g)",
                     what, (long long)s.n, (long long)s.in, (long long)s.out, (long long)i, d, tol);
        maxd = fmax(maxd, d);
        maxy = fmax(maxy, fabs((double)y_exact[i]));
    }
    if (!(maxd <= 1e-2 * maxy))
        fail_msg("%s n=%lld in=%lld out=%lld: max |y - y_f32| %.3g > 1e-2 * max |y_f32| %.3g", what,
                 (long long)s.n, (long long)s.in, (long long)s.out, maxd, 1e-2 * maxy);
}

static void run_shapes(duet_cpu_pool_t *pool)
{
    duet_cpu_set_bf16_min_rows(1); /* every row count takes the bf16 path */
    for (size_t si = 0; si < DUET_ARRAY_LEN(shapes); si++) {
        problem_t p;
        problem_make(&p, shapes[si]);
        const shape_t s = p.s;
        size_t ny = (size_t)(s.n * s.out);
        float *y = malloc(sizeof(float) * ny), *ye = malloc(sizeof(float) * ny);
        /* overwrite */
        memset(y, 0x7f, sizeof(float) * ny); /* garbage that must be overwritten */
        duet_cpu_matmul_prec(pool, DUET_CPU_PREC_BF16, p.x, s.n, s.in, p.w, DUET_DTYPE_BF16, s.out,
                             y, false);
        duet_cpu_matmul(pool, p.x, s.n, s.in, p.w, DUET_DTYPE_BF16, s.out, ye, false);
        if (s.out < 32) { /* router-sized: stays exact, bitwise */
            assert_memory_equal(y, ye, sizeof(float) * ny);
            goto next;
        }
        double closer = check_tight(&p, y, false, "bf16");
        /* the activations were rounded (a silent exact fall back fails here);
         * with in == 1-ish problems rounding errors could cancel, not here */
        if (!(closer > 10.0))
            fail_msg("n=%lld in=%lld out=%lld: bf16 mode is not closer to the bf16-input "
                     "reference than to the f32 one (ratio %.3g): were activations rounded?",
                     (long long)s.n, (long long)s.in, (long long)s.out, closer);
        check_loose(&p, y, ye, "bf16 vs f32");
        /* accumulate */
        memcpy(y, p.y0, sizeof(float) * ny);
        duet_cpu_matmul_prec(pool, DUET_CPU_PREC_BF16, p.x, s.n, s.in, p.w, DUET_DTYPE_BF16, s.out,
                             y, true);
        check_tight(&p, y, true, "bf16 accumulate");
    next:
        free(y);
        free(ye);
        problem_free(&p);
    }
    duet_cpu_set_bf16_min_rows(4);
}

/* Both algorithms (streaming dot products for few rows, the packed GEMM
 * for many) on every shape: by shape, then the GEMM forced from 1 row. */
static void test_kernel_shapes_two_threads(void **state)
{
    (void)state;
    duet_cpu_pool_t *pool = duet_cpu_pool_create(2);
    assert_non_null(pool);
    run_shapes(pool);
    duet_cpu_set_gemm_min_rows(1);
    run_shapes(pool);
    duet_cpu_set_gemm_min_rows(0);
    duet_cpu_pool_destroy(&pool);
}

static void test_kernel_shapes_caller_only(void **state)
{
    (void)state;
    run_shapes(NULL);
    duet_cpu_set_gemm_min_rows(1);
    run_shapes(NULL);
    duet_cpu_set_gemm_min_rows(0);
}

/* A batch mixing what the engine sends: gate and up sharing x (rounded
 * once), an F32-weight op and a small one (exact path), accumulate. Every
 * result must be what a lone call in the same precision gives, bitwise. */
static void test_batch_matches_single_calls(void **state)
{
    (void)state;
    duet_cpu_pool_t *pool = duet_cpu_pool_create(2);
    assert_non_null(pool);
    duet_cpu_set_bf16_min_rows(4);
    problem_t a, b, c, small;
    problem_make(&a, (shape_t){24, 300, 70});
    problem_make(&b, (shape_t){24, 300, 45}); /* same x as a (below) */
    problem_make(&c, (shape_t){9, 130, 41});
    problem_make(&small, (shape_t){3, 130, 41}); /* under the 4-row threshold: exact */
    float *wf = malloc(sizeof(float) * 41 * 130);
    for (int i = 0; i < 41 * 130; i++)
        wf[i] = duet_bf16_to_f32(c.w[i]) + 1e-3f * (float)urand(); /* not bf16 values */
    float *ya = malloc(sizeof(float) * 24 * 70), *yb = malloc(sizeof(float) * 24 * 45);
    float *yc = malloc(sizeof(float) * 9 * 41), *ys = malloc(sizeof(float) * 3 * 41);
    memcpy(yb, b.y0, sizeof(float) * 24 * 45);
    duet_cpu_mm_t mm[4] = {
        {a.x, 24, 300, a.w, DUET_DTYPE_BF16, 70, ya, false},
        {a.x, 24, 300, b.w, DUET_DTYPE_BF16, 45, yb, true},
        {c.x, 9, 130, wf, DUET_DTYPE_F32, 41, yc, false},
        {small.x, 3, 130, small.w, DUET_DTYPE_BF16, 41, ys, false},
    };
    duet_cpu_matmul_batch_prec(pool, DUET_CPU_PREC_BF16, mm, 4);
    float *r = malloc(sizeof(float) * 24 * 70);
    duet_cpu_matmul_prec(pool, DUET_CPU_PREC_BF16, a.x, 24, 300, a.w, DUET_DTYPE_BF16, 70, r,
                         false);
    assert_memory_equal(r, ya, sizeof(float) * 24 * 70);
    memcpy(r, b.y0, sizeof(float) * 24 * 45);
    duet_cpu_matmul_prec(pool, DUET_CPU_PREC_BF16, a.x, 24, 300, b.w, DUET_DTYPE_BF16, 45, r, true);
    assert_memory_equal(r, yb, sizeof(float) * 24 * 45);
    duet_cpu_matmul(pool, c.x, 9, 130, wf, DUET_DTYPE_F32, 41, r, false); /* F32 W: exact */
    assert_memory_equal(r, yc, sizeof(float) * 9 * 41);
    duet_cpu_matmul(pool, small.x, 3, 130, small.w, DUET_DTYPE_BF16, 41, r, false);
    assert_memory_equal(r, ys, sizeof(float) * 3 * 41);
    /* and the 9-row BF16 op of c does take the bf16 path at threshold 4 */
    duet_cpu_matmul_prec(pool, DUET_CPU_PREC_BF16, c.x, 9, 130, c.w, DUET_DTYPE_BF16, 41, r, false);
    assert_true(check_tight(&c, r, false, "threshold 4, 9 rows") > 10.0);
    free(r);
    free(ya);
    free(yb);
    free(yc);
    free(ys);
    free(wf);
    problem_free(&a);
    problem_free(&b);
    problem_free(&c);
    problem_free(&small);
    duet_cpu_pool_destroy(&pool);
}

/* The backend option: BF16 in opts, or DUET_PRECISION=bf16 in the
 * environment with the default opts, selects the mode; default is exact. */
static void backend_matmul(duet_backend_t *be, const problem_t *p, float *y)
{
    duet_tensor_t w = {0};
    w.dtype = DUET_DTYPE_BF16;
    w.ndim = 2;
    w.shape[0] = p->s.out;
    w.shape[1] = p->s.in;
    w.data = p->w;
    w.nbytes = (size_t)(p->s.out * p->s.in) * 2;
    assert_int_equal(be->ops->matmul(be, p->x, p->s.n, p->s.in, &w, NULL, y, false), DUET_OK);
}

static void test_backend_option(void **state)
{
    (void)state;
    duet_cpu_set_bf16_min_rows(4);
    problem_t p;
    problem_make(&p, (shape_t){8, 200, 40});
    size_t ny = 8 * 40;
    float *y = malloc(sizeof(float) * ny), *ref = malloc(sizeof(float) * ny);
    duet_backend_t *be = NULL;

    unsetenv("DUET_PRECISION");
    duet_backend_opts_t bo = {.n_threads = 2, .precision = DUET_PRECISION_BF16};
    assert_int_equal(duet_backend_open("cpu", &bo, &be), DUET_OK);
    backend_matmul(be, &p, y);
    duet_backend_close(&be);
    duet_cpu_matmul_prec(NULL, DUET_CPU_PREC_BF16, p.x, 8, 200, p.w, DUET_DTYPE_BF16, 40, ref,
                         false);
    assert_memory_equal(y, ref, sizeof(float) * ny);
    assert_true(check_tight(&p, y, false, "backend bf16") > 10.0);

    bo.precision = DUET_PRECISION_FP32; /* the default: exact */
    assert_int_equal(duet_backend_open("cpu", &bo, &be), DUET_OK);
    backend_matmul(be, &p, y);
    duet_backend_close(&be);
    duet_cpu_matmul(NULL, p.x, 8, 200, p.w, DUET_DTYPE_BF16, 40, ref, false);
    assert_memory_equal(y, ref, sizeof(float) * ny);

    setenv("DUET_PRECISION", "bf16", 1); /* duet serve's switch */
    assert_int_equal(duet_backend_open("cpu", &bo, &be), DUET_OK);
    backend_matmul(be, &p, y);
    duet_backend_close(&be);
    assert_true(check_tight(&p, y, false, "DUET_PRECISION=bf16") > 10.0);

    /* where bf16 cannot run (here: the avx2 family forced), BF16 falls back
     * to the exact path with a notice */
    unsetenv("DUET_PRECISION");
    if (duet_cpu_isa_supported(DUET_CPU_ISA_AVX2)) {
        assert_int_equal(duet_cpu_isa_select(DUET_CPU_ISA_AVX2), DUET_OK);
        assert_false(duet_cpu_bf16_supported());
        bo.precision = DUET_PRECISION_BF16;
        assert_int_equal(duet_backend_open("cpu", &bo, &be), DUET_OK);
        backend_matmul(be, &p, y);
        duet_backend_close(&be);
        duet_cpu_matmul(NULL, p.x, 8, 200, p.w, DUET_DTYPE_BF16, 40, ref, false);
        assert_memory_equal(y, ref, sizeof(float) * ny);
        assert_int_equal(duet_cpu_isa_select(DUET_CPU_ISA_AVX512), DUET_OK);
        bo.precision = DUET_PRECISION_FP32;
    }

    setenv("DUET_PRECISION", "half", 1);
    assert_int_equal(duet_backend_open("cpu", &bo, &be), DUET_ERR_INVALID);
    assert_non_null(strstr(duet_error(), "DUET_PRECISION"));
    assert_null(be);
    unsetenv("DUET_PRECISION");

    free(y);
    free(ref);
    problem_free(&p);
}

/* ---- end to end on the HF fixture ----------------------------------------- */

static duet_model_t *g_model;
static ref_set_t g_ref;

/* Every prompt prefilled alone (worst |logit diff| vs HF printed and
 * bounded loosely), then all greedy-decoding together; tokens must equal
 * HF's up to the first step with an HF margin below BF16_MARGIN_MIN.
 * Returns mismatches, -1 on error. */
/* All prompts prefilled in one batch; per position the max |logit diff|
 * against HF. Returns how many positions are off by more than 0.1 (-1 on
 * error); *typical gets the median position's diff. */
static int fixture_prefill(duet_backend_t *be, float *typical)
{
    const ref_set_t *r = &g_ref;
    int32_t total = 0;
    for (int i = 0; i < r->n; i++)
        total += r->p[i].n;
    duet_engine_t *e = ref_engine(be, g_model, total, total);
    if (!e)
        return -1;
    float *logits = malloc(sizeof(float) * (size_t)total * (size_t)r->vocab);
    double *d = malloc(sizeof(double) * (size_t)total);
    duet_seq_input_t in[REF_MAX_PROMPTS];
    int32_t seq, rows = 0;
    for (int i = 0; i < r->n; i++) {
        duet_kvcache_seq_open(duet_engine_kv(e), &seq);
        in[i] = (duet_seq_input_t){seq, r->p[i].n, r->p[i].ids, DUET_LOGITS_ALL};
    }
    int off_count = -1;
    if (duet_engine_step(e, r->n, in, logits, &rows) == DUET_OK && rows == total) {
        off_count = 0;
        int row = 0;
        for (int i = 0; i < r->n; i++)
            for (int32_t t = 0; t < r->p[i].n; t++, row++) {
                d[row] = max_abs_diff(logits + (size_t)row * (size_t)r->vocab,
                                      r->p[i].logits + (size_t)t * (size_t)r->vocab, r->vocab);
                if (!(d[row] <= 0.1)) {
                    printf("  bf16 prefill: prompt %d position %d: max |logit diff| %.3g (an "
                           "expert choice flipped by a near tie?)\n",
                           i, t, d[row]);
                    off_count++;
                }
            }
        for (int a = 1; a < total; a++) /* insertion sort: median */
            for (int b2 = a; b2 > 0 && d[b2 - 1] > d[b2]; b2--) {
                double tmp = d[b2];
                d[b2] = d[b2 - 1];
                d[b2 - 1] = tmp;
            }
        *typical = (float)d[total / 2];
    }
    free(d);
    free(logits);
    duet_engine_destroy(&e);
    return off_count;
}

static void fixture_run(int64_t min_rows)
{
    duet_cpu_set_bf16_min_rows(min_rows);
    unsetenv("DUET_PRECISION");
    duet_backend_t *be = NULL;
    duet_backend_opts_t bo = {.n_threads = 2, .precision = DUET_PRECISION_BF16};
    assert_int_equal(duet_backend_open("cpu", &bo, &be), DUET_OK);
    float typical = 0;
    int off = fixture_prefill(be, &typical);
    int32_t total = 0;
    for (int i = 0; i < g_ref.n; i++)
        total += g_ref.p[i].n;
    printf("  bf16 mode (from %lld rows): prefill logits vs HF: median position max |diff| "
           "%.3g, %d of %d positions above 0.1\n",
           (long long)min_rows, (double)typical, off, total);
    /* the mode is active (exact fp32 is within 2e-4 of HF everywhere) and
     * loosely right: typical errors ~1e-2, and at most 2% of positions off
     * by more than 0.1 (a rounding that tips a near-tied top-2 routing) */
    assert_true(off >= 0);
    assert_true(typical > REF_LOGIT_TOL && typical < 0.05f);
    assert_true(off * 50 <= total);
    assert_int_equal(
        ref_greedy_margin(be, g_model, &g_ref, BF16_MARGIN_MIN, g_ref.n, "bf16 greedy"), 0);
    duet_backend_close(&be);
    duet_cpu_set_bf16_min_rows(4);
}

static void test_fixture_every_gemm_bf16(void **state)
{
    (void)state;
    fixture_run(1);
}

static void test_fixture_default_threshold(void **state)
{
    (void)state;
    fixture_run(4);
}

static int fixture_setup(void **state)
{
    (void)state;
    if (duet_model_load(FIXTURE, NULL, &g_model)) {
        fprintf(stderr, "load %s: %s\n", FIXTURE, duet_error());
        return -1;
    }
    return ref_load(FIXTURE, &g_ref);
}

static int fixture_teardown(void **state)
{
    (void)state;
    ref_free(&g_ref);
    duet_model_destroy(&g_model);
    return 0;
}

int main(void)
{
    if (!duet_cpu_bf16_supported()) {
        printf("skipped: CPU lacks avx512_bf16 (or DUET_CPU_ISA forces kernels %s); the bf16 "
               "precision mode falls back to exact fp32 there\n",
               duet_cpu_isa_name());
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernel_shapes_two_threads),
        cmocka_unit_test(test_kernel_shapes_caller_only),
        cmocka_unit_test(test_batch_matches_single_calls),
        cmocka_unit_test(test_backend_option),
        cmocka_unit_test(test_fixture_every_gemm_bf16),
        cmocka_unit_test(test_fixture_default_threshold),
    };
    return cmocka_run_group_tests(tests, fixture_setup, fixture_teardown);
}
