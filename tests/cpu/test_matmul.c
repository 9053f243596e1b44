/* test_matmul — the CPU thread pool and every matmul kernel family on this
 * machine against a double-precision reference.
 *
 * Tolerance: |y - ref| <= 1e-5 * (sum over k of |x·w| terms, plus |y0| when
 * accumulating) + 1e-30. f32 accumulation of up to ~2000 terms in any order
 * stays well inside that; a wrong index, a dropped tail element or a missed
 * accumulate is off by a whole term and fails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_kernels.h"

/* ---- pool ---------------------------------------------------------------- */

typedef struct count_ctx {
    _Atomic int *hits;
    _Atomic int bad;
} count_ctx_t;

static void count_task(void *ctx, int task, int n_tasks)
{
    count_ctx_t *c = ctx;
    if (task < 0 || task >= n_tasks)
        atomic_fetch_add(&c->bad, 1);
    else
        atomic_fetch_add(&c->hits[task], 1);
}

static void pool_check(duet_cpu_pool_t *pool, int runs)
{
    enum { MAX_TASKS = 97 };
    _Atomic int hits[MAX_TASKS];
    count_ctx_t c = {.hits = hits};
    atomic_init(&c.bad, 0);
    for (int run = 0; run < runs; run++) {
        int n_tasks = run % MAX_TASKS; /* includes 0 and 1 */
        for (int i = 0; i < MAX_TASKS; i++)
            atomic_init(&hits[i], 0);
        duet_cpu_pool_run(pool, n_tasks, count_task, &c);
        for (int i = 0; i < MAX_TASKS; i++) {
            int h = atomic_load(&hits[i]);
            if (h != (i < n_tasks ? 1 : 0))
                fail_msg("run %d: task %d of %d ran %d times", run, i, n_tasks, h);
        }
    }
    assert_int_equal(atomic_load(&c.bad), 0);
}

static void test_pool_every_task_once(void **state)
{
    (void)state;
    for (int threads = 1; threads <= 4; threads++) {
        duet_cpu_pool_t *pool = duet_cpu_pool_create(threads);
        assert_non_null(pool);
        assert_int_equal(duet_cpu_pool_size(pool), threads);
        pool_check(pool, 3000);
        duet_cpu_pool_destroy(&pool);
        assert_null(pool);
    }
    duet_cpu_pool_destroy(NULL);
    pool_check(NULL, 50); /* a NULL pool runs everything on the caller */
}

/* Workers that fall asleep between runs must be woken, never lost. */
static void test_pool_sleeping_workers(void **state)
{
    (void)state;
    setenv("DUET_CPU_SPIN_US", "0", 1);
    duet_cpu_pool_t *pool = duet_cpu_pool_create(3);
    unsetenv("DUET_CPU_SPIN_US");
    assert_non_null(pool);
    pool_check(pool, 500);
    duet_cpu_pool_destroy(&pool);
}

static void test_pool_default_size(void **state)
{
    (void)state;
    duet_cpu_pool_t *pool = duet_cpu_pool_create(0);
    assert_non_null(pool);
    assert_true(duet_cpu_pool_size(pool) >= 1);
    pool_check(pool, 100);
    duet_cpu_pool_destroy(&pool);
}

/* ---- matmul ---------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Random weights of dtype dt, and their exact f32 values. */
static void *make_weights(duet_dtype_t dt, int64_t count, float *exact)
{
    size_t es = dt == DUET_DTYPE_F32 ? 4 : 2;
    void *w = malloc((size_t)count * es + 1);
    assert_non_null(w);
    for (int64_t i = 0; i < count; i++) {
        float v = frand() * (i % 5 == 0 ? 4.0f : 1.0f);
        if (i % 97 == 3)
            v = 0.0f;
        if (dt == DUET_DTYPE_F32) {
            ((float *)w)[i] = v;
            exact[i] = v;
        } else if (dt == DUET_DTYPE_BF16) {
            uint16_t h = duet_f32_to_bf16(v);
            ((uint16_t *)w)[i] = h;
            exact[i] = duet_bf16_to_f32(h);
        } else {
            uint16_t h = duet_f32_to_f16(i % 89 == 7 ? v * 1e-5f : v); /* some subnormals */
            ((uint16_t *)w)[i] = h;
            exact[i] = duet_f16_to_f32(h);
        }
    }
    return w;
}

typedef struct shape {
    int64_t n, in, out;
} shape_t;

static int check_one(duet_cpu_pool_t *pool, const shape_t *s, duet_dtype_t dt, const float *x,
                     const void *w, const double *ref, const double *mag, const float *y0,
                     bool accumulate, const char *what)
{
    int64_t ny = s->n * s->out;
    float *y = malloc((size_t)ny * sizeof(float));
    assert_non_null(y);
    if (accumulate)
        memcpy(y, y0, (size_t)ny * sizeof(float));
    else
        for (int64_t i = 0; i < ny; i++)
            y[i] = NAN; /* must be overwritten */
    duet_cpu_matmul(pool, x, s->n, s->in, w, dt, s->out, y, accumulate);
    int bad = 0;
    for (int64_t i = 0; i < ny && bad < 5; i++) {
        double want = ref[i] + (accumulate ? (double)y0[i] : 0.0);
        double tol = 1e-5 * (mag[i] + (accumulate ? fabs((double)y0[i]) : 0.0)) + 1e-30;
        if (!(fabs((double)y[i] - want) <= tol)) {
            print_error("%s: n=%lld in=%lld out=%lld dt=%s acc=%d threads=%d: y[%lld,%lld]=%.9g "
                        "want %.9g (tol %.3g)\n",
                        what, (long long)s->n, (long long)s->in, (long long)s->out,
                        duet_dtype_name(dt), accumulate, duet_cpu_pool_size(pool),
                        (long long)(i / s->out), (long long)(i % s->out), (double)y[i], want, tol);
            bad++;
        }
    }
    free(y);
    return bad;
}

static void run_matmul_suite(const shape_t *shapes, size_t n_shapes, const int *threads,
                             size_t n_threads)
{
    duet_cpu_pool_t *pools[4] = {0};
    for (size_t p = 0; p < n_threads; p++) {
        pools[p] = duet_cpu_pool_create(threads[p]);
        assert_non_null(pools[p]);
    }
    const duet_dtype_t dts[] = {DUET_DTYPE_F32, DUET_DTYPE_F16, DUET_DTYPE_BF16};
    int failures = 0, checked = 0;
    for (size_t si = 0; si < n_shapes; si++) {
        const shape_t *s = &shapes[si];
        for (size_t di = 0; di < 3; di++) {
            duet_dtype_t dt = dts[di];
            float *x = malloc((size_t)(s->n * s->in) * sizeof(float));
            float *wx = malloc((size_t)(s->out * s->in) * sizeof(float));
            double *ref = malloc((size_t)(s->n * s->out) * sizeof(double));
            double *mag = malloc((size_t)(s->n * s->out) * sizeof(double));
            float *y0 = malloc((size_t)(s->n * s->out) * sizeof(float));
            assert_true(x && wx && ref && mag && y0);
            for (int64_t i = 0; i < s->n * s->in; i++)
                x[i] = frand();
            void *w = make_weights(dt, s->out * s->in, wx);
            for (int64_t i = 0; i < s->n * s->out; i++)
                y0[i] = frand() * 3.0f;
            for (int64_t r = 0; r < s->n; r++) {
                for (int64_t o = 0; o < s->out; o++) {
                    double acc = 0, m = 0;
                    for (int64_t k = 0; k < s->in; k++) {
                        double t = (double)x[r * s->in + k] * (double)wx[o * s->in + k];
                        acc += t;
                        m += fabs(t);
                    }
                    ref[r * s->out + o] = acc;
                    mag[r * s->out + o] = m;
                }
            }
            for (int isa = 0; isa < DUET_CPU_ISA_COUNT; isa++) {
                if (!duet_cpu_isa_supported((duet_cpu_isa_t)isa))
                    continue;
                assert_int_equal(duet_cpu_isa_select((duet_cpu_isa_t)isa), DUET_OK);
                /* AVX-512: the algorithm chosen by shape, and the packed GEMM forced */
                for (int algo = 0; algo < (isa == DUET_CPU_ISA_AVX512 ? 2 : 1); algo++) {
                    duet_cpu_set_gemm_min_rows(algo ? 1 : 0);
                    for (size_t p = 0; p < n_threads; p++) {
                        for (int acc = 0; acc < 2; acc++) {
                            failures += check_one(pools[p], s, dt, x, w, ref, mag, y0, acc,
                                                  algo ? "avx512 gemm" : duet_cpu_isa_name());
                            checked++;
                        }
                    }
                }
                duet_cpu_set_gemm_min_rows(0);
            }
            free(w);
            free(x);
            free(wx);
            free(ref);
            free(mag);
            free(y0);
        }
    }
    for (size_t p = 0; p < n_threads; p++)
        duet_cpu_pool_destroy(&pools[p]);
    print_message("%d matmul configurations checked\n", checked);
    assert_int_equal(failures, 0);
}

/* Odd shapes: every n, in, out tail of the register blocks. */
static void test_matmul_odd_shapes(void **state)
{
    (void)state;
    static const int64_t ns[] = {1, 3, 17, 64, 130};
    static const int64_t dims[] = {1, 7, 33, 257};
    shape_t shapes[5 * 4 * 4];
    size_t k = 0;
    for (size_t a = 0; a < 5; a++)
        for (size_t b = 0; b < 4; b++)
            for (size_t c = 0; c < 4; c++)
                shapes[k++] = (shape_t){ns[a], dims[b], dims[c]};
    static const int threads[] = {1, 2, 3};
    run_matmul_suite(shapes, k, threads, 3);
}

/* Model-like and blocking-boundary shapes: several K blocks, many tasks,
 * n just around the GEMV/GEMM switch. */
static void test_matmul_model_shapes(void **state)
{
    (void)state;
    static const shape_t shapes[] = {
        {1, 1024, 640}, {2, 1000, 300},  {8, 1024, 352}, {9, 600, 100},
        {15, 520, 96},  {16, 1024, 130}, {24, 700, 70},  {32, 1030, 64},
        {48, 513, 200}, {100, 1100, 97}, {20, 2100, 40}, {200, 700, 33},
    };
    static const int threads[] = {1, 2, 3};
    run_matmul_suite(shapes, sizeof(shapes) / sizeof(shapes[0]), threads, 3);
}

/* A batch gives bitwise the results of lone calls, for every family, with
 * GEMV- and GEMM-sized members, shared activations and mixed dtypes. */
static void test_matmul_batch(void **state)
{
    (void)state;
    enum { COUNT = 7 };
    static const shape_t shapes[COUNT] = {{1, 64, 40}, {1, 64, 300}, {5, 100, 33}, {20, 257, 70},
                                          {64, 33, 7}, {3, 1, 5},    {0, 10, 10}};
    static const duet_dtype_t dts[COUNT] = {DUET_DTYPE_BF16, DUET_DTYPE_BF16, DUET_DTYPE_F16,
                                            DUET_DTYPE_BF16, DUET_DTYPE_F32,  DUET_DTYPE_F32,
                                            DUET_DTYPE_BF16};
    duet_cpu_mm_t mms[COUNT];
    float *want[COUNT];
    void *ws[COUNT];
    float *xs[COUNT];
    for (int i = 0; i < COUNT; i++) {
        const shape_t *s = &shapes[i];
        size_t ny = (size_t)(s->n * s->out) + 1;
        float *wx = malloc((size_t)(s->out * s->in) * sizeof(float));
        /* ops 0 and 1 share x, like the gate and up projections */
        xs[i] = i == 1 ? xs[0] : malloc((size_t)(s->n * s->in) * sizeof(float) + 4);
        if (i != 1)
            for (int64_t k = 0; k < s->n * s->in; k++)
                xs[i][k] = frand();
        ws[i] = make_weights(dts[i], s->out * s->in, wx);
        free(wx);
        want[i] = malloc(ny * sizeof(float));
        mms[i] = (duet_cpu_mm_t){.x = xs[i],
                                 .n = s->n,
                                 .in = s->in,
                                 .w = ws[i],
                                 .wdt = dts[i],
                                 .out = s->out,
                                 .y = malloc(ny * sizeof(float)),
                                 .accumulate = i % 2 == 1};
    }
    duet_cpu_pool_t *pool = duet_cpu_pool_create(2);
    for (int isa = 0; isa < DUET_CPU_ISA_COUNT; isa++) {
        if (!duet_cpu_isa_supported((duet_cpu_isa_t)isa))
            continue;
        assert_int_equal(duet_cpu_isa_select((duet_cpu_isa_t)isa), DUET_OK);
        duet_cpu_set_gemm_min_rows(isa == DUET_CPU_ISA_AVX512 ? 16 : 0); /* both algorithms */
        for (int i = 0; i < COUNT; i++) {
            const shape_t *s = &shapes[i];
            for (int64_t k = 0; k < s->n * s->out; k++)
                want[i][k] = mms[i].y[k] = (float)k * 0.25f;
            duet_cpu_matmul(pool, mms[i].x, s->n, s->in, mms[i].w, mms[i].wdt, s->out, want[i],
                            mms[i].accumulate);
        }
        duet_cpu_matmul_batch(pool, mms, COUNT);
        for (int i = 0; i < COUNT; i++) {
            int64_t ny = shapes[i].n * shapes[i].out;
            if (ny)
                assert_memory_equal(mms[i].y, want[i], (size_t)ny * sizeof(float));
        }
    }
    duet_cpu_set_gemm_min_rows(0);
    duet_cpu_pool_destroy(&pool);
    for (int i = 0; i < COUNT; i++) {
        if (i != 1)
            free(xs[i]);
        free(ws[i]);
        free(want[i]);
        free(mms[i].y);
    }
}

/* Results do not depend on the number of threads (bitwise). */
static void test_matmul_thread_invariant(void **state)
{
    (void)state;
    static const shape_t shapes[] = {{1, 1000, 333}, {7, 300, 200},  {40, 2100, 70},
                                     {130, 257, 99}, {10, 2600, 50}, {200, 900, 40}};
    duet_cpu_pool_t *p1 = duet_cpu_pool_create(1), *p3 = duet_cpu_pool_create(3);
    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
        const shape_t *s = &shapes[si];
        float *x = malloc((size_t)(s->n * s->in) * sizeof(float));
        float *wx = malloc((size_t)(s->out * s->in) * sizeof(float));
        float *a = malloc((size_t)(s->n * s->out) * sizeof(float));
        float *b = malloc((size_t)(s->n * s->out) * sizeof(float));
        for (int64_t i = 0; i < s->n * s->in; i++)
            x[i] = frand();
        void *w = make_weights(DUET_DTYPE_BF16, s->out * s->in, wx);
        for (int isa = 0; isa < DUET_CPU_ISA_COUNT; isa++) {
            if (duet_cpu_isa_select((duet_cpu_isa_t)isa) != DUET_OK)
                continue;
            duet_cpu_matmul(p1, x, s->n, s->in, w, DUET_DTYPE_BF16, s->out, a, false);
            duet_cpu_matmul(p3, x, s->n, s->in, w, DUET_DTYPE_BF16, s->out, b, false);
            assert_memory_equal(a, b, (size_t)(s->n * s->out) * sizeof(float));
        }
        free(x);
        free(wx);
        free(a);
        free(b);
        free(w);
    }
    duet_cpu_pool_destroy(&p1);
    duet_cpu_pool_destroy(&p3);
}

static void test_isa_select(void **state)
{
    (void)state;
    assert_true(duet_cpu_isa_supported(DUET_CPU_ISA_PORTABLE));
    assert_int_equal(duet_cpu_isa_select(DUET_CPU_ISA_PORTABLE), DUET_OK);
    assert_string_equal(duet_cpu_isa_name(), "portable");
    assert_int_equal(duet_cpu_isa_select(DUET_CPU_ISA_COUNT), DUET_ERR_UNSUPPORTED);
    assert_int_equal(duet_cpu_isa(), DUET_CPU_ISA_PORTABLE);
    for (int i = 0; i < DUET_CPU_ISA_COUNT; i++)
        print_message("kernel family %d: %s\n", i,
                      duet_cpu_isa_supported((duet_cpu_isa_t)i) ? "supported" : "not supported");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_every_task_once), cmocka_unit_test(test_pool_sleeping_workers),
        cmocka_unit_test(test_pool_default_size),    cmocka_unit_test(test_isa_select),
        cmocka_unit_test(test_matmul_odd_shapes),    cmocka_unit_test(test_matmul_model_shapes),
        cmocka_unit_test(test_matmul_batch),         cmocka_unit_test(test_matmul_thread_invariant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
