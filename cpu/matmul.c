/* matmul — y[n,out] (+)= x[n,in] · W[out,in]^T: kernel family selection and
 * the portable C kernel that every other family is tested against.
 *
 * The portable kernel widens one weight row at a time into f32 (exactly) and
 * takes its dot product with every activation row, with eight independent
 * f32 partial sums so the compiler can keep several FMAs in flight. */
#include "cpu/matmul_impl.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- family selection --------------------------------------------------- */

static const char *const isa_names[DUET_CPU_ISA_COUNT] = {"portable", "avx2", "avx512"};
static _Atomic int isa_current = -1;

#if defined(__x86_64__) && defined(__GNUC__)
/* F16C through CPUID (leaf 1, ECX bit 29): clang's __builtin_cpu_supports
 * does not know "f16c". */
static bool cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
#endif

bool duet_cpu_isa_supported(duet_cpu_isa_t isa)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    switch (isa) {
    case DUET_CPU_ISA_PORTABLE: return true;
    case DUET_CPU_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    case DUET_CPU_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("fma") && cpu_has_f16c();
    default: return false;
    }
#else
    return isa == DUET_CPU_ISA_PORTABLE;
#endif
}

static duet_cpu_isa_t isa_detect(void)
{
    const char *env = getenv("DUET_CPU_ISA");
    if (env && *env) {
        for (int i = 0; i < DUET_CPU_ISA_COUNT; i++) {
            if (strcmp(env, isa_names[i]) == 0) {
                if (duet_cpu_isa_supported((duet_cpu_isa_t)i))
                    return (duet_cpu_isa_t)i;
                DUET_LOG_W("cpu", "DUET_CPU_ISA=%s: this CPU lacks it; choosing automatically",
                           env);
                goto best;
            }
        }
        DUET_LOG_W("cpu", "DUET_CPU_ISA=%s: not one of portable, avx2, avx512; ignored", env);
    }
best:
    for (int i = DUET_CPU_ISA_COUNT - 1; i > 0; i--)
        if (duet_cpu_isa_supported((duet_cpu_isa_t)i))
            return (duet_cpu_isa_t)i;
    return DUET_CPU_ISA_PORTABLE;
}

duet_cpu_isa_t duet_cpu_isa(void)
{
    int cur = atomic_load_explicit(&isa_current, memory_order_relaxed);
    if (cur < 0) {
        cur = (int)isa_detect();
        atomic_store_explicit(&isa_current, cur, memory_order_relaxed);
    }
    return (duet_cpu_isa_t)cur;
}

duet_status_t duet_cpu_isa_select(duet_cpu_isa_t isa)
{
    if ((int)isa < 0 || isa >= DUET_CPU_ISA_COUNT || !duet_cpu_isa_supported(isa))
        return duet_errorf(DUET_ERR_UNSUPPORTED, "cpu kernel family %d not supported here",
                           (int)isa);
    atomic_store_explicit(&isa_current, (int)isa, memory_order_relaxed);
    return DUET_OK;
}

const char *duet_cpu_isa_name(void)
{
    duet_cpu_isa_t isa = duet_cpu_isa();
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == DUET_CPU_ISA_AVX512 && __builtin_cpu_supports("avx512bf16"))
        return "avx512-bf16";
#endif
    return isa_names[isa];
}

/* ---- algorithm override ------------------------------------------------------ */

static _Atomic int64_t gemm_min_rows = -1;

int64_t duet__cpu_gemm_min_rows(void)
{
    int64_t v = atomic_load_explicit(&gemm_min_rows, memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv("DUET_CPU_GEMM_MIN_ROWS");
        v = e && *e ? strtoll(e, NULL, 10) : 0;
        v = v < 0 ? 0 : v;
        atomic_store_explicit(&gemm_min_rows, v, memory_order_relaxed);
    }
    return v;
}

void duet_cpu_set_gemm_min_rows(int64_t rows)
{
    atomic_store_explicit(&gemm_min_rows, rows < 0 ? 0 : rows, memory_order_relaxed);
}

/* ---- per-thread scratch ------------------------------------------------------ */

typedef struct scratch {
    void *p[DUET__SCRATCH_SLOTS];
    size_t size[DUET__SCRATCH_SLOTS];
} scratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *arg)
{
    scratch_t *s = arg;
    for (int i = 0; i < DUET__SCRATCH_SLOTS; i++)
        duet_free(s->p[i]);
    duet_free(s);
}

static void scratch_init(void)
{
    if (pthread_key_create(&scratch_key, scratch_free) != 0)
        abort(); /* only fails when the process is out of keys */
}

void *duet__cpu_scratch(int slot, size_t bytes)
{
    pthread_once(&scratch_once, scratch_init);
    scratch_t *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = duet_calloc(1, sizeof(*s));
        if (!s || pthread_setspecific(scratch_key, s) != 0) {
            duet_free(s);
            return NULL;
        }
    }
    if (s->size[slot] < bytes) {
        size_t grow = bytes + bytes / 4; /* room for the next, slightly larger call */
        void *p = duet_aligned_alloc(64, grow);
        if (!p)
            return NULL;
        duet_free(s->p[slot]);
        s->p[slot] = p;
        s->size[slot] = grow;
    }
    return s->p[slot];
}

/* ---- portable kernel ------------------------------------------------------ */

typedef struct mm_job {
    const float *x;
    int64_t n, in, out;
    const void *w;
    duet_dtype_t wdt;
    float *y;
    bool accumulate;
    int64_t rows; /* output rows per task */
} mm_job_t;

static void widen_row(const void *w, duet_dtype_t wdt, int64_t row, int64_t in, float *dst)
{
    switch (wdt) {
    case DUET_DTYPE_F32:
        memcpy(dst, (const float *)w + row * in, (size_t)in * sizeof(float));
        break;
    case DUET_DTYPE_BF16: {
        const uint16_t *src = (const uint16_t *)w + row * in;
        for (int64_t k = 0; k < in; k++)
            dst[k] = duet_bf16_to_f32(src[k]);
        break;
    }
    case DUET_DTYPE_F16: {
        const uint16_t *src = (const uint16_t *)w + row * in;
        for (int64_t k = 0; k < in; k++)
            dst[k] = duet_f16_to_f32(src[k]);
        break;
    }
    default: abort(); /* checked by duet_cpu_matmul */
    }
}

static float dot_f32(const float *a, const float *b, int64_t len)
{
    float s[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= len; k += 8)
        for (int j = 0; j < 8; j++)
            s[j] += a[k + j] * b[k + j];
    for (; k < len; k++)
        s[0] += a[k] * b[k];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static void portable_task(void *ctx, int task, int n_tasks)
{
    const mm_job_t *j = ctx;
    int64_t o0 = (int64_t)task * j->rows;
    int64_t o1 = o0 + j->rows < j->out ? o0 + j->rows : j->out;
    float stackbuf[1024];
    float *wrow = j->in <= 1024 ? stackbuf : malloc((size_t)j->in * sizeof(float));
    if (!wrow)
        abort(); /* out of memory inside a kernel: nothing sensible to return */
    for (int64_t o = o0; o < o1; o++) {
        widen_row(j->w, j->wdt, o, j->in, wrow);
        for (int64_t r = 0; r < j->n; r++) {
            float d = dot_f32(j->x + r * j->in, wrow, j->in);
            float *yo = j->y + r * j->out + o;
            *yo = j->accumulate ? *yo + d : d;
        }
    }
    if (wrow != stackbuf)
        free(wrow);
}

void duet__matmul_portable(duet_cpu_pool_t *pool, const float *x, int64_t n, int64_t in,
                           const void *w, duet_dtype_t wdt, int64_t out, float *y, bool accumulate)
{
    mm_job_t j = {
        .x = x, .n = n, .in = in, .out = out, .w = w, .wdt = wdt, .y = y, .accumulate = accumulate};
    j.rows = duet__mm_task_rows(pool, out, 1, 4, 4);
    duet_cpu_pool_run(pool, (int)((out + j.rows - 1) / j.rows), portable_task, &j);
}

/* ---- entry points ---------------------------------------------------------- */

static bool mm_trivial(const float *x, int64_t n, int64_t in, duet_dtype_t wdt, int64_t out,
                       float *y, bool accumulate)
{
    if (n <= 0 || out <= 0)
        return true;
    if (wdt != DUET_DTYPE_F32 && wdt != DUET_DTYPE_F16 && wdt != DUET_DTYPE_BF16) {
        DUET_LOG_E("cpu", "duet_cpu_matmul: weight dtype %d unsupported", (int)wdt);
        abort(); /* a programmer error: the loader only hands out F32/F16/BF16 */
    }
    if (in <= 0) {
        if (!accumulate)
            memset(y, 0, (size_t)(n * out) * sizeof(float));
        return true;
    }
    return false;
}

/* ---- bf16 precision ----------------------------------------------------------- */

static _Atomic int64_t bf16_min_rows = -1;

int64_t duet_cpu_bf16_min_rows(void)
{
    int64_t v = atomic_load_explicit(&bf16_min_rows, memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv("DUET_CPU_BF16_MIN_ROWS");
        v = e && *e ? strtoll(e, NULL, 10) : 4;
        v = v < 1 ? 1 : v;
        atomic_store_explicit(&bf16_min_rows, v, memory_order_relaxed);
    }
    return v;
}

void duet_cpu_set_bf16_min_rows(int64_t rows)
{
    atomic_store_explicit(&bf16_min_rows, rows < 1 ? 1 : rows, memory_order_relaxed);
}

bool duet_cpu_bf16_supported(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    return duet_cpu_isa() == DUET_CPU_ISA_AVX512 && __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

void duet_cpu_matmul_batch(duet_cpu_pool_t *pool, const duet_cpu_mm_t *mms, int count)
{
    duet_cpu_matmul_batch_prec(pool, DUET_CPU_PREC_EXACT, mms, count);
}

void duet_cpu_matmul_batch_prec(duet_cpu_pool_t *pool, duet_cpu_prec_t prec,
                                const duet_cpu_mm_t *mms, int count)
{
    const int64_t bf16_rows =
        prec == DUET_CPU_PREC_BF16 && duet_cpu_bf16_supported() ? duet_cpu_bf16_min_rows() : 0;
    if (duet_cpu_isa() != DUET_CPU_ISA_AVX512) {
        for (int i = 0; i < count; i++)
            duet_cpu_matmul(pool, mms[i].x, mms[i].n, mms[i].in, mms[i].w, mms[i].wdt, mms[i].out,
                            mms[i].y, mms[i].accumulate);
        return;
    }
    /* drop the trivial ones, in chunks so the copy stays on the stack */
    enum { CHUNK = 64 };
    duet_cpu_mm_t keep[CHUNK];
    int nk = 0;
    for (int i = 0; i < count; i++) {
        const duet_cpu_mm_t *m = &mms[i];
        if (mm_trivial(m->x, m->n, m->in, m->wdt, m->out, m->y, m->accumulate))
            continue;
        keep[nk++] = *m;
        if (nk == CHUNK) {
            duet__matmul_batch_avx512(pool, keep, nk, bf16_rows);
            nk = 0;
        }
    }
    if (nk)
        duet__matmul_batch_avx512(pool, keep, nk, bf16_rows);
}

void duet_cpu_matmul_prec(duet_cpu_pool_t *pool, duet_cpu_prec_t prec, const float *x, int64_t n,
                          int64_t in, const void *w, duet_dtype_t wdt, int64_t out, float *y,
                          bool accumulate)
{
    if (prec == DUET_CPU_PREC_EXACT) {
        duet_cpu_matmul(pool, x, n, in, w, wdt, out, y, accumulate);
        return;
    }
    duet_cpu_mm_t mm = {x, n, in, w, wdt, out, y, accumulate};
    duet_cpu_matmul_batch_prec(pool, prec, &mm, 1);
}

void duet_cpu_matmul(duet_cpu_pool_t *pool, const float *x, int64_t n, int64_t in, const void *w,
                     duet_dtype_t wdt, int64_t out, float *y, bool accumulate)
{
    if (mm_trivial(x, n, in, wdt, out, y, accumulate))
        return;
    switch (duet_cpu_isa()) {
    case DUET_CPU_ISA_AVX512:
        duet__matmul_avx512(pool, x, n, in, w, wdt, out, y, accumulate);
        return;
    case DUET_CPU_ISA_AVX2: duet__matmul_avx2(pool, x, n, in, w, wdt, out, y, accumulate); return;
    default: duet__matmul_portable(pool, x, n, in, w, wdt, out, y, accumulate); return;
    }
}
