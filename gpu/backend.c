/* cuda backend — host side: the ops table, weights on the device, cuBLAS
 * GEMMs, staging of host index arrays, error reporting. Kernels are in
 * kernels.cu; the contract is in cuda_backend.h and model/backend.h. */
#include "gpu/cuda_backend.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "gpu/kernels.h"
#include "model/sampling.h"

#define N_SIDE 4           /* side streams for per-GEMM launches */
#ifndef STG_SEG
#define STG_SEG (4u << 20) /* pinned staging: segments of 4 MiB (tests shrink it) */
#endif
#define STG_NSEG 4

typedef enum { W_RAW = 0, W_GEMM = 1 } wkind_t;

typedef struct wentry {
    const void *key; /* host data address; NULL = empty slot */
    int kind;
    void *dev;
    int dt; /* CUK_* of what dev holds */
    size_t bytes;
} wentry_t;

typedef struct bufrec {
    void *p;
    size_t bytes;
} bufrec_t;

typedef struct dscratch {
    void *p;
    size_t cap;
} dscratch_t;

typedef struct cuda_backend {
    duet_backend_t base;
    int device;
    duet_backend_precision_t prec;
    duet_backend_grouped_t grouped;
    bool grouped_failed; /* AUTO: the library refused grouped GEMM once */
    int n_sm;
    char name[128];
    cudaStream_t st;
    cublasHandle_t blas;
    cudaStream_t side[N_SIDE];
    cublasHandle_t side_blas[N_SIDE];
    cudaEvent_t ev_fork, ev_join[N_SIDE], ev_done;
    /* staging ring */
    uint8_t *stg_h, *stg_d;
    cudaEvent_t stg_ev[STG_NSEG];
    bool stg_used[STG_NSEG];
    int stg_seg;
    size_t stg_off, stg_flushed;
    /* host results */
    void *pin_out;
    size_t pin_out_cap;
    /* device scratch */
    dscratch_t s_act16, s_part, s_route, s_sample_p, s_sample_i, s_out, s_gemm_ptrs;
    /* weights */
    wentry_t *w;
    size_t w_cap, w_count, w_bytes;
    /* buffers */
    bufrec_t *bufs;
    size_t n_bufs, bufs_cap, buf_bytes;
    /* per-op temporaries (unprepared tensors), freed stream-ordered */
    void *tmp[64];
    int n_tmp;
    /* host scratch for scatter_add */
    int32_t *h_i32;
    size_t h_i32_cap;
} cuda_backend_t;

static cuda_backend_t *cu(duet_backend_t *be)
{
    return be->impl;
}

/* ---- error helpers ------------------------------------------------------------ */

static duet_status_t cuda_fail(cudaError_t e, const char *call)
{
    duet_status_t st = e == cudaErrorMemoryAllocation ? DUET_ERR_NOMEM : DUET_ERR_DEVICE;
    return duet_errorf(st, "cuda backend: %s failed: %s (%s)", call, cudaGetErrorName(e),
                       cudaGetErrorString(e));
}

static const char *cublas_name(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_(unknown)";
    }
}

static duet_status_t blas_fail(cublasStatus_t s, const char *call)
{
    duet_status_t st = s == CUBLAS_STATUS_ALLOC_FAILED    ? DUET_ERR_NOMEM
                       : s == CUBLAS_STATUS_NOT_SUPPORTED ? DUET_ERR_UNSUPPORTED
                                                          : DUET_ERR_DEVICE;
    return duet_errorf(st, "cuda backend: %s failed: %s (%s)", call, cublas_name(s),
                       cublasGetStatusString(s));
}

#define CU(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            return cuda_fail(e_, #call);                                                           \
    } while (0)
#define BL(call)                                                                                   \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return blas_fail(s_, #call);                                                           \
    } while (0)
#define TRY(expr)                                                                                  \
    do {                                                                                           \
        duet_status_t t_ = (expr);                                                                 \
        if (t_)                                                                                    \
            return t_;                                                                             \
    } while (0)

static duet_status_t enter(cuda_backend_t *c)
{
    CU(cudaSetDevice(c->device));
    return DUET_OK;
}

static int cuk_dt(duet_dtype_t dt)
{
    return dt == DUET_DTYPE_BF16 ? CUK_BF16 : dt == DUET_DTYPE_F16 ? CUK_F16 : CUK_F32;
}

static size_t cuk_size(int dt)
{
    return dt == CUK_F32 ? 4 : 2;
}

static bool float_dtype(duet_dtype_t dt)
{
    return dt == DUET_DTYPE_F32 || dt == DUET_DTYPE_F16 || dt == DUET_DTYPE_BF16;
}

/* ---- device scratch (stream-ordered growth) ------------------------------------- */

static duet_status_t scratch(cuda_backend_t *c, dscratch_t *s, size_t bytes, void **out)
{
    if (bytes == 0)
        bytes = 16;
    if (s->cap < bytes) {
        size_t cap = bytes + bytes / 4;
        if (s->p)
            CU(cudaFreeAsync(s->p, c->st));
        s->p = NULL;
        s->cap = 0;
        void *p = NULL;
        cudaError_t e = cudaMallocAsync(&p, cap, c->st);
        if (e != cudaSuccess)
            return duet_errorf(e == cudaErrorMemoryAllocation ? DUET_ERR_NOMEM : DUET_ERR_DEVICE,
                               "cuda backend: cudaMallocAsync of %zu bytes of scratch failed: "
                               "%s (%s)",
                               cap, cudaGetErrorName(e), cudaGetErrorString(e));
        s->p = p;
        s->cap = cap;
    }
    *out = s->p;
    return DUET_OK;
}

static size_t scratch_bytes(const cuda_backend_t *c)
{
    return c->s_act16.cap + c->s_part.cap + c->s_route.cap + c->s_sample_p.cap + c->s_sample_i.cap +
           c->s_out.cap + c->s_gemm_ptrs.cap;
}

/* ---- staging of host arrays ------------------------------------------------------- */

/* Room for `bytes` of host data bound for the device: returns the pinned
 * host address to fill and the device address the kernels will read.
 * stage_flush queues one copy for everything reserved since the last one. */
static duet_status_t stage_flush(cuda_backend_t *c)
{
    if (c->stg_off > c->stg_flushed) {
        size_t base = (size_t)c->stg_seg * STG_SEG;
        CU(cudaMemcpyAsync(c->stg_d + base + c->stg_flushed, c->stg_h + base + c->stg_flushed,
                           c->stg_off - c->stg_flushed, cudaMemcpyHostToDevice, c->st));
        c->stg_flushed = c->stg_off;
    }
    return DUET_OK;
}

static size_t stage_size(size_t bytes)
{
    size_t need = (bytes + 15) & ~(size_t)15;
    return need ? need : 16;
}

/* Make room for `total` bytes (the sum of stage_size of an op's arrays) in
 * the current segment, moving to the next one if needed. An op that fills
 * reserved arrays after reserving them calls this first with all of them,
 * so that no reservation moves segments (and flushes) before they are
 * filled. */
static duet_status_t stage_room(cuda_backend_t *c, size_t total)
{
    if (total > STG_SEG)
        return duet_errorf(DUET_ERR_CAPACITY,
                           "cuda backend: %zu bytes of index data in one op (staging holds %u)",
                           total, STG_SEG);
    if (c->stg_off + total > STG_SEG) {
        TRY(stage_flush(c));
        /* leave this segment: its data is read by work queued up to now */
        CU(cudaEventRecord(c->stg_ev[c->stg_seg], c->st));
        c->stg_used[c->stg_seg] = true;
        c->stg_seg = (c->stg_seg + 1) % STG_NSEG;
        if (c->stg_used[c->stg_seg])
            CU(cudaEventSynchronize(c->stg_ev[c->stg_seg])); /* a full ring behind: wait */
        c->stg_off = c->stg_flushed = 0;
    }
    return DUET_OK;
}

static duet_status_t stage(cuda_backend_t *c, const void *src, size_t bytes, void **host,
                           void **dev)
{
    const size_t need = stage_size(bytes);
    if (c->stg_off + need > STG_SEG)
        TRY(stage_room(c, need)); /* only single-array ops get here (see stage_room) */
    size_t off = (size_t)c->stg_seg * STG_SEG + c->stg_off;
    if (src && bytes)
        memcpy(c->stg_h + off, src, bytes);
    if (host)
        *host = c->stg_h + off;
    *dev = c->stg_d + off;
    c->stg_off += need;
    return DUET_OK;
}

static duet_status_t pin_reserve(cuda_backend_t *c, size_t bytes)
{
    if (c->pin_out_cap < bytes) {
        if (c->pin_out) {
            CU(cudaStreamSynchronize(c->st));
            CU(cudaFreeHost(c->pin_out));
        }
        c->pin_out = NULL;
        c->pin_out_cap = 0;
        size_t cap = DUET_MAX(bytes, (size_t)65536);
        CU(cudaHostAlloc(&c->pin_out, cap, cudaHostAllocDefault));
        c->pin_out_cap = cap;
    }
    return DUET_OK;
}

/* Copy device results to host: via pinned memory, waiting for the stream. */
static duet_status_t fetch(cuda_backend_t *c, void *host, const void *dev, size_t bytes)
{
    TRY(pin_reserve(c, bytes));
    CU(cudaMemcpyAsync(c->pin_out, dev, bytes, cudaMemcpyDeviceToHost, c->st));
    CU(cudaStreamSynchronize(c->st));
    memcpy(host, c->pin_out, bytes);
    return DUET_OK;
}

/* ---- weights on the device ----------------------------------------------------------- */

static size_t whash(const void *key, int kind, size_t cap)
{
    uint64_t h = (uint64_t)(uintptr_t)key * 0x9e3779b97f4a7c15ull + (uint64_t)kind;
    h ^= h >> 29;
    return (size_t)h & (cap - 1);
}

static wentry_t *wfind(cuda_backend_t *c, const void *key, int kind)
{
    if (!c->w_cap)
        return NULL;
    for (size_t i = whash(key, kind, c->w_cap);; i = (i + 1) & (c->w_cap - 1)) {
        wentry_t *e = &c->w[i];
        if (!e->key)
            return NULL;
        if (e->key == key && e->kind == kind)
            return e;
    }
}

static duet_status_t wput(cuda_backend_t *c, const wentry_t *ne)
{
    if ((c->w_count + 1) * 2 > c->w_cap) {
        size_t cap = c->w_cap ? c->w_cap * 2 : 256;
        wentry_t *w = duet_calloc(cap, sizeof(*w));
        if (!w)
            return duet_errorf(DUET_ERR_NOMEM, "cuda backend: out of memory for the weight map");
        for (size_t i = 0; i < c->w_cap; i++)
            if (c->w[i].key) {
                size_t j = whash(c->w[i].key, c->w[i].kind, cap);
                while (w[j].key)
                    j = (j + 1) & (cap - 1);
                w[j] = c->w[i];
            }
        duet_free(c->w);
        c->w = w;
        c->w_cap = cap;
    }
    size_t j = whash(ne->key, ne->kind, c->w_cap);
    while (c->w[j].key)
        j = (j + 1) & (c->w_cap - 1);
    c->w[j] = *ne;
    c->w_count++;
    c->w_bytes += ne->bytes;
    return DUET_OK;
}

/* The element type a tensor of dtype dt has on the device as `kind`. */
static int dev_type(const cuda_backend_t *c, duet_dtype_t dt, int kind)
{
    if (kind == W_RAW)
        return cuk_dt(dt);
    if (c->prec == DUET_PRECISION_FP32)
        return CUK_F32;
    return dt == DUET_DTYPE_F16 ? CUK_F16 : CUK_BF16;
}

static duet_status_t alloc_fail(cuda_backend_t *c, cudaError_t e, size_t bytes, const char *what)
{
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    return duet_errorf(e == cudaErrorMemoryAllocation ? DUET_ERR_NOMEM : DUET_ERR_DEVICE,
                       "cuda backend: cannot allocate %zu MiB for %s on device %d (%s): %s; "
                       "%zu MiB free of %zu, %zu MiB of weights already there",
                       bytes >> 20, what, c->device, c->name, cudaGetErrorString(e), fr >> 20,
                       tot >> 20, c->w_bytes >> 20);
}

/* Upload tensor t as `kind` into *dev (allocated here; temporary: stream-
 * ordered allocation the caller frees with cudaFreeAsync). */
static duet_status_t upload_tensor(cuda_backend_t *c, const duet_tensor_t *t, int kind,
                                   bool temporary, void **dev, int *dt_out, size_t *bytes_out)
{
    const int st_dt = cuk_dt(t->dtype);
    const int dt = dev_type(c, t->dtype, kind);
    const int64_t count = duet_tensor_numel(t);
    const size_t raw = (size_t)count * cuk_size(st_dt);
    const size_t bytes = (size_t)count * cuk_size(dt);
    void *p = NULL;
    cudaError_t e = temporary ? cudaMallocAsync(&p, bytes ? bytes : 16, c->st)
                              : cudaMalloc(&p, bytes ? bytes : 16);
    if (e != cudaSuccess)
        return alloc_fail(c, e, bytes, "a weight tensor");
    if (dt == st_dt) {
        e = cudaMemcpyAsync(p, t->data, raw, cudaMemcpyHostToDevice, c->st);
        if (e != cudaSuccess) {
            temporary ? cudaFreeAsync(p, c->st) : cudaFree(p);
            return cuda_fail(e, "cudaMemcpyAsync(weights)");
        }
    } else {
        void *tmp = NULL;
        e = cudaMallocAsync(&tmp, raw ? raw : 16, c->st);
        if (e != cudaSuccess) {
            temporary ? cudaFreeAsync(p, c->st) : cudaFree(p);
            return alloc_fail(c, e, raw, "widening a weight tensor");
        }
        e = cudaMemcpyAsync(tmp, t->data, raw, cudaMemcpyHostToDevice, c->st);
        if (e == cudaSuccess)
            e = dt == CUK_F32      ? duet_cuk_to_f32(c->st, tmp, st_dt, count, p)
                : st_dt == CUK_F32 ? duet_cuk_f32_to_16(c->st, tmp, count, dt, p)
                                   : duet_cuk_bf16_from_16(c->st, tmp, st_dt, count, p);
        cudaError_t e2 = cudaFreeAsync(tmp, c->st);
        if (e == cudaSuccess)
            e = e2;
        if (e != cudaSuccess) {
            temporary ? cudaFreeAsync(p, c->st) : cudaFree(p);
            return cuda_fail(e, "converting weights on the device");
        }
    }
    *dev = p;
    *dt_out = dt;
    if (bytes_out)
        *bytes_out = bytes;
    return DUET_OK;
}

static duet_status_t prepare_one(cuda_backend_t *c, const duet_tensor_t *t, int kind)
{
    if (!t->data || !float_dtype(t->dtype) || wfind(c, t->data, kind))
        return DUET_OK;
    wentry_t e = {t->data, kind, NULL, 0, 0};
    TRY(upload_tensor(c, t, kind, false, &e.dev, &e.dt, &e.bytes));
    duet_status_t st = wput(c, &e);
    if (st)
        cudaFree(e.dev);
    return st;
}

/* The device copy of t as kind: prepared, or a temporary for this op. */
static duet_status_t tensor_dev(cuda_backend_t *c, const duet_tensor_t *t, int kind,
                                const void **dev, int *dt)
{
    if (!float_dtype(t->dtype))
        return duet_errorf(DUET_ERR_UNSUPPORTED, "cuda backend: tensor of %s",
                           duet_dtype_name(t->dtype));
    if (!t->data)
        return duet_errorf(DUET_ERR_NOT_FOUND, "cuda backend: a tensor this role does not hold");
    wentry_t *e = wfind(c, t->data, kind);
    if (e) {
        *dev = e->dev;
        *dt = e->dt;
        return DUET_OK;
    }
    if (c->n_tmp == (int)DUET_ARRAY_LEN(c->tmp))
        return duet_errorf(DUET_ERR_INTERNAL,
                           "cuda backend: too many unprepared tensors in one op");
    void *p;
    TRY(upload_tensor(c, t, kind, true, &p, dt, NULL));
    c->tmp[c->n_tmp++] = p;
    *dev = p;
    return DUET_OK;
}

/* End of an op: free its temporaries in stream order. */
static duet_status_t op_end(cuda_backend_t *c, duet_status_t st)
{
    for (int i = 0; i < c->n_tmp; i++) {
        cudaError_t e = cudaFreeAsync(c->tmp[i], c->st);
        if (e != cudaSuccess && !st)
            st = cuda_fail(e, "cudaFreeAsync(temporary weights)");
    }
    c->n_tmp = 0;
    return st;
}

/* ---- lifecycle ------------------------------------------------------------------------- */

static void cuda_destroy(duet_backend_t *be)
{
    cuda_backend_t *c = cu(be);
    cudaSetDevice(c->device);
    if (c->st)
        cudaStreamSynchronize(c->st);
    dscratch_t *ss[] = {&c->s_act16,    &c->s_part, &c->s_route,    &c->s_sample_p,
                        &c->s_sample_i, &c->s_out,  &c->s_gemm_ptrs};
    for (size_t i = 0; i < DUET_ARRAY_LEN(ss); i++)
        if (ss[i]->p)
            cudaFreeAsync(ss[i]->p, c->st);
    for (size_t i = 0; i < c->w_cap; i++)
        if (c->w[i].key)
            cudaFree(c->w[i].dev);
    duet_free(c->w);
    for (size_t i = 0; i < c->n_bufs; i++)
        cudaFree(c->bufs[i].p);
    duet_free(c->bufs);
    duet_free(c->h_i32);
    if (c->st)
        cudaStreamSynchronize(c->st);
    if (c->pin_out)
        cudaFreeHost(c->pin_out);
    if (c->stg_h)
        cudaFreeHost(c->stg_h);
    if (c->stg_d)
        cudaFree(c->stg_d);
    for (int i = 0; i < STG_NSEG; i++)
        if (c->stg_ev[i])
            cudaEventDestroy(c->stg_ev[i]);
    for (int i = 0; i < N_SIDE; i++) {
        if (c->side_blas[i])
            cublasDestroy(c->side_blas[i]);
        if (c->side[i])
            cudaStreamDestroy(c->side[i]);
        if (c->ev_join[i])
            cudaEventDestroy(c->ev_join[i]);
    }
    if (c->ev_fork)
        cudaEventDestroy(c->ev_fork);
    if (c->ev_done)
        cudaEventDestroy(c->ev_done);
    if (c->blas)
        cublasDestroy(c->blas);
    if (c->st)
        cudaStreamDestroy(c->st);
    duet_free(c);
}

/* ---- memory ops -------------------------------------------------------------------------- */

static duet_status_t cuda_buf_alloc(duet_backend_t *be, size_t bytes, void **out)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    if (c->n_bufs == c->bufs_cap) {
        size_t cap = c->bufs_cap ? c->bufs_cap * 2 : 64;
        bufrec_t *b = duet_realloc_array(c->bufs, cap, sizeof(*b));
        if (!b)
            return duet_errorf(DUET_ERR_NOMEM, "cuda backend: out of memory");
        c->bufs = b;
        c->bufs_cap = cap;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);
    if (e != cudaSuccess)
        return alloc_fail(c, e, bytes, "a buffer");
    c->bufs[c->n_bufs++] = (bufrec_t){p, bytes};
    c->buf_bytes += bytes;
    *out = p;
    return DUET_OK;
}

static void cuda_buf_free(duet_backend_t *be, void *buf)
{
    cuda_backend_t *c = cu(be);
    if (!buf)
        return;
    cudaSetDevice(c->device);
    for (size_t i = 0; i < c->n_bufs; i++)
        if (c->bufs[i].p == buf) {
            c->buf_bytes -= c->bufs[i].bytes;
            c->bufs[i] = c->bufs[--c->n_bufs];
            break;
        }
    cudaError_t e = cudaFree(buf); /* waits for work using it */
    if (e != cudaSuccess)
        duet_log_write(DUET_LOG_WARN, "cuda", "cudaFree failed: %s", cudaGetErrorString(e));
}

static duet_status_t cuda_buf_upload(duet_backend_t *be, void *dst, const void *src, size_t n)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    if (n)
        CU(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c->st));
    /* the caller may reuse src at once: wait (uploads are set-up and test
     * traffic; the forward pass moves no activations through the host) */
    CU(cudaStreamSynchronize(c->st));
    return DUET_OK;
}

static duet_status_t cuda_buf_download(duet_backend_t *be, void *dst, const void *src, size_t n)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    if (n)
        CU(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, c->st));
    CU(cudaStreamSynchronize(c->st));
    return DUET_OK;
}

static duet_status_t cuda_buf_zero(duet_backend_t *be, void *dst, size_t n)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    if (n)
        CU(cudaMemsetAsync(dst, 0, n, c->st));
    return DUET_OK;
}

static duet_status_t cuda_sync(duet_backend_t *be)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    CU(cudaStreamSynchronize(c->st));
    return DUET_OK;
}

static duet_status_t cuda_weights_prepare(duet_backend_t *be, const duet_model_t *m)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    const size_t before = c->w_bytes;
    TRY(prepare_one(c, &m->embed, W_RAW));
    TRY(prepare_one(c, &m->final_norm, W_RAW));
    TRY(prepare_one(c, &m->lm_head, W_GEMM));
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const duet_layer_weights_t *L = &m->layers[l];
        const duet_tensor_t *raw[] = {&L->attn_norm, &L->bq,     &L->bk,      &L->bv,
                                      &L->q_norm,    &L->k_norm, &L->ffn_norm};
        const duet_tensor_t *gemm[] = {&L->wq,         &L->wk,          &L->wv,
                                       &L->wo,         &L->router,      &L->shared.gate,
                                       &L->shared.up,  &L->shared.down, &L->shared_gate,
                                       &L->dense.gate, &L->dense.up,    &L->dense.down};
        for (size_t i = 0; i < DUET_ARRAY_LEN(raw); i++)
            TRY(prepare_one(c, raw[i], W_RAW));
        for (size_t i = 0; i < DUET_ARRAY_LEN(gemm); i++)
            TRY(prepare_one(c, gemm[i], W_GEMM));
        if (L->experts)
            for (int e = 0; e < m->cfg.n_experts; e++) {
                TRY(prepare_one(c, &L->experts[e].gate, W_GEMM));
                TRY(prepare_one(c, &L->experts[e].up, W_GEMM));
                TRY(prepare_one(c, &L->experts[e].down, W_GEMM));
            }
    }
    CU(cudaStreamSynchronize(c->st));
    size_t fr = 0, tot = 0;
    CU(cudaMemGetInfo(&fr, &tot));
    duet_log_write(DUET_LOG_INFO, "cuda",
                   "device %d (%s): %zu MiB of weights uploaded (%zu MiB in all, %s GEMMs), "
                   "%zu MiB of buffers, %zu MiB free of %zu",
                   c->device, c->name, (c->w_bytes - before) >> 20, c->w_bytes >> 20,
                   c->prec == DUET_PRECISION_FP32 ? "fp32" : "bf16", c->buf_bytes >> 20, fr >> 20,
                   tot >> 20);
    return DUET_OK;
}

/* ---- GEMMs ------------------------------------------------------------------------------- */

static cudaDataType_t cuda_type(int dt)
{
    return dt == CUK_BF16 ? CUDA_R_16BF : dt == CUK_F16 ? CUDA_R_16F : CUDA_R_32F;
}

typedef struct gemm {
    const void *w; /* device [out, in] */
    int wdt;
    const void *x; /* device [n, in], of type wdt */
    float *y;
    int64_t n, in, out;
    bool acc;
    const void *bias;
    int bdt;
} gemm_t;

/* Resolve a matmul's operands: weights, activations in the GEMM type. */
static duet_status_t gemm_setup(cuda_backend_t *c, const float *x, int64_t n, int64_t in,
                                const duet_tensor_t *w, const duet_tensor_t *bias, float *y,
                                bool acc, gemm_t *g, void *x16, const void *x_done)
{
    if (w->ndim != 2 || w->shape[1] != in)
        return duet_errorf(
            DUET_ERR_INVALID, "cuda backend: matmul of width %lld with a [%lld, %lld] weight",
            (long long)in, (long long)w->shape[0], (long long)(w->ndim > 1 ? w->shape[1] : 0));
    if (n > INT32_MAX || in > INT32_MAX || w->shape[0] > INT32_MAX)
        return duet_errorf(DUET_ERR_RANGE, "cuda backend: matmul dimensions over 2^31");
    g->n = n;
    g->in = in;
    g->out = w->shape[0];
    g->y = y;
    g->acc = acc;
    TRY(tensor_dev(c, w, W_GEMM, &g->w, &g->wdt));
    g->bias = NULL;
    if (bias && bias->data)
        TRY(tensor_dev(c, bias, W_RAW, &g->bias, &g->bdt));
    if (g->wdt == CUK_F32) {
        g->x = x;
    } else if (x_done) {
        g->x = x_done; /* converted already for an earlier GEMM of the batch */
    } else {
        cudaError_t e = duet_cuk_f32_to_16(c->st, x, n * in, g->wdt, x16);
        if (e != cudaSuccess)
            return cuda_fail(e, "f32->16-bit activation conversion kernel");
        g->x = x16;
    }
    return DUET_OK;
}

static duet_status_t gemm_run(cuda_backend_t *c, cublasHandle_t h, cudaStream_t s, const gemm_t *g)
{
    if (g->n == 0 || g->out == 0)
        return DUET_OK;
    const float alpha = 1.0f, beta = g->acc ? 1.0f : 0.0f;
    /* row-major y[n,out] = x[n,in] W[out,in]^T is column-major
     * y^T[out,n] = W^T... : A = W (col-major [in,out], op T), B = x (col-major [in,n]) */
    BL(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)g->out, (int)g->n, (int)g->in, &alpha, g->w,
                    cuda_type(g->wdt), (int)g->in, g->x, cuda_type(g->wdt), (int)g->in, &beta, g->y,
                    CUDA_R_32F, (int)g->out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (g->bias) {
        cudaError_t e = duet_cuk_add_bias(s, g->y, g->n, g->out, g->bias, g->bdt);
        if (e != cudaSuccess)
            return cuda_fail(e, "bias kernel");
    }
    return DUET_OK;
}

static duet_status_t cuda_matmul(duet_backend_t *be, const float *x, int64_t n, int64_t in,
                                 const duet_tensor_t *w, const duet_tensor_t *bias, float *y,
                                 bool accumulate)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    if (!float_dtype(w->dtype))
        return duet_errorf(DUET_ERR_UNSUPPORTED, "cuda backend: matmul with %s weights",
                           duet_dtype_name(w->dtype));
    void *x16 = NULL;
    if (c->prec == DUET_PRECISION_BF16)
        TRY(scratch(c, &c->s_act16, (size_t)(n * in) * 2, &x16));
    gemm_t g;
    duet_status_t st = gemm_setup(c, x, n, in, w, bias, y, accumulate, &g, x16, NULL);
    if (!st)
        st = gemm_run(c, c->blas, c->st, &g);
    return op_end(c, st);
}

bool duet_cuda_have_grouped_gemm(void)
{
#if CUBLAS_VERSION >= 120500
    return true;
#else
    return false;
#endif
}

#if CUBLAS_VERSION >= 120500
static duet_status_t grouped_run(cuda_backend_t *c, const gemm_t *g, int count)
{
    enum { MAXG = 256 };
    cublasOperation_t ta[MAXG], tb[MAXG];
    int m[MAXG], nn[MAXG], k[MAXG], lda[MAXG], ldc[MAXG], gs[MAXG];
    float alpha[MAXG], beta[MAXG];
    const void *hp[3 * MAXG];
    int ng = 0;
    int wdt = -1;
    for (int i = 0; i < count; i++) {
        if (g[i].n == 0 || g[i].out == 0)
            continue;
        if (wdt >= 0 && g[i].wdt != wdt)
            return DUET_ERR_AGAIN; /* mixed types: per-GEMM path */
        wdt = g[i].wdt;
        ta[ng] = CUBLAS_OP_T;
        tb[ng] = CUBLAS_OP_N;
        m[ng] = (int)g[i].out;
        nn[ng] = (int)g[i].n;
        k[ng] = (int)g[i].in;
        lda[ng] = (int)g[i].in;
        ldc[ng] = (int)g[i].out;
        gs[ng] = 1;
        alpha[ng] = 1.0f;
        beta[ng] = g[i].acc ? 1.0f : 0.0f;
        ng++;
    }
    if (ng == 0)
        return DUET_OK;
    if (ng > MAXG)
        return DUET_ERR_AGAIN;
    /* pointer arrays live on the device: A[], B[], C[] */
    int j = 0;
    for (int i = 0; i < count; i++)
        if (g[i].n && g[i].out) {
            hp[j] = g[i].w;
            hp[ng + j] = g[i].x;
            hp[2 * ng + j] = g[i].y;
            j++;
        }
    void *dptr = NULL;
    TRY(stage(c, hp, sizeof(void *) * 3 * (size_t)ng, NULL, &dptr));
    TRY(stage_flush(c));
    const void *const *A = (const void *const *)dptr;
    const void *const *B = A + ng;
    void *const *C = (void *const *)(A + 2 * ng);
    cublasStatus_t s = cublasGemmGroupedBatchedEx(c->blas, ta, tb, m, nn, k, alpha, A,
                                                  cuda_type(wdt), lda, B, cuda_type(wdt), k, beta,
                                                  C, CUDA_R_32F, ldc, ng, gs, CUBLAS_COMPUTE_32F);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED && c->grouped == DUET_GROUPED_AUTO) {
        c->grouped_failed = true; /* this type combination: per-GEMM from now on */
        return DUET_ERR_AGAIN;
    }
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_fail(s, "cublasGemmGroupedBatchedEx");
    for (int i = 0; i < count; i++)
        if (g[i].bias && g[i].n) {
            cudaError_t e = duet_cuk_add_bias(c->st, g[i].y, g[i].n, g[i].out, g[i].bias, g[i].bdt);
            if (e != cudaSuccess)
                return cuda_fail(e, "bias kernel");
        }
    return DUET_OK;
}
#endif

static duet_status_t streams_run(cuda_backend_t *c, const gemm_t *g, int count)
{
    int live = 0;
    for (int i = 0; i < count; i++)
        live += g[i].n && g[i].out;
    if (live <= 1) {
        for (int i = 0; i < count; i++)
            TRY(gemm_run(c, c->blas, c->st, &g[i]));
        return DUET_OK;
    }
    CU(cudaEventRecord(c->ev_fork, c->st));
    int used = DUET_MIN(live, N_SIDE);
    for (int s = 0; s < used; s++)
        CU(cudaStreamWaitEvent(c->side[s], c->ev_fork, 0));
    duet_status_t st = DUET_OK;
    int j = 0;
    for (int i = 0; i < count && !st; i++) {
        if (!(g[i].n && g[i].out))
            continue;
        int s = j++ % used;
        st = gemm_run(c, c->side_blas[s], c->side[s], &g[i]);
    }
    /* join even after a failure, so the main stream stays ordered */
    for (int s = 0; s < used; s++) {
        cudaError_t e = cudaEventRecord(c->ev_join[s], c->side[s]);
        if (e == cudaSuccess)
            e = cudaStreamWaitEvent(c->st, c->ev_join[s], 0);
        if (e != cudaSuccess && !st)
            st = cuda_fail(e, "joining the side streams");
    }
    return st;
}

static duet_status_t cuda_matmul_batch(duet_backend_t *be, const duet_matmul_desc_t *mms, int count)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    enum { CHUNK = 256 };
    gemm_t g[CHUNK];
    duet_status_t st = DUET_OK;
    for (int i0 = 0; i0 < count && !st; i0 += CHUNK) {
        int cn = DUET_MIN(CHUNK, count - i0);
        const duet_matmul_desc_t *d = mms + i0;
        /* activation conversions: one per distinct x */
        size_t need = 0;
        for (int i = 0; i < cn; i++) {
            if (!float_dtype(d[i].w->dtype))
                return op_end(c, duet_errorf(DUET_ERR_UNSUPPORTED,
                                             "cuda backend: matmul with %s weights",
                                             duet_dtype_name(d[i].w->dtype)));
            need += (size_t)(d[i].n * d[i].in) * 2;
        }
        uint8_t *x16 = NULL;
        if (c->prec == DUET_PRECISION_BF16)
            TRY(scratch(c, &c->s_act16, need, (void **)&x16));
        size_t off = 0;
        for (int i = 0; i < cn && !st; i++) {
            /* an x shared with an earlier GEMM of the same 16-bit type is
             * converted once (gate and up of an MLP read the same rows) */
            const void *done = NULL;
            const int wdt = dev_type(c, d[i].w->dtype, W_GEMM);
            for (int j = 0; j < i && wdt != CUK_F32; j++)
                if (d[j].x == d[i].x && d[j].n == d[i].n && d[j].in == d[i].in && g[j].wdt == wdt) {
                    done = g[j].x;
                    break;
                }
            st = gemm_setup(c, d[i].x, d[i].n, d[i].in, d[i].w, d[i].bias, d[i].y, d[i].accumulate,
                            &g[i], x16 ? x16 + off : NULL, done);
            if (!done)
                off += (size_t)(d[i].n * d[i].in) * 2;
        }
        if (st)
            break;
        bool grouped = c->grouped == DUET_GROUPED_CUBLAS ||
                       (c->grouped == DUET_GROUPED_AUTO && !c->grouped_failed);
#if CUBLAS_VERSION >= 120500
        if (grouped) {
            st = grouped_run(c, g, cn);
            if (st == DUET_ERR_AGAIN)
                st = streams_run(c, g, cn);
            continue;
        }
#else
        if (c->grouped == DUET_GROUPED_CUBLAS) {
            st = duet_errorf(DUET_ERR_UNSUPPORTED,
                             "cuda backend: this cuBLAS has no grouped batched GEMM (12.5+)");
            break;
        }
        (void)grouped;
#endif
        st = streams_run(c, g, cn);
    }
    return op_end(c, st);
}

static duet_status_t cuda_lm_head(duet_backend_t *be, const float *x, int64_t n, int64_t in,
                                  const duet_tensor_t *w, float *logits)
{
    return cuda_matmul(be, x, n, in, w, NULL, logits, false);
}

/* ---- the other ops -------------------------------------------------------------------------- */

#define KERNEL(expr, what)                                                                         \
    do {                                                                                           \
        cudaError_t e_ = (expr);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            return op_end(c, cuda_fail(e_, what));                                                 \
    } while (0)

static duet_status_t cuda_rmsnorm(duet_backend_t *be, const float *x, int64_t rows, int64_t dim,
                                  const duet_tensor_t *weight, float eps, float *y)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    const void *w;
    int wdt;
    TRY(tensor_dev(c, weight, W_RAW, &w, &wdt));
    KERNEL(duet_cuk_rmsnorm(c->st, x, rows, dim, w, wdt, eps, y), "rmsnorm kernel");
    return op_end(c, DUET_OK);
}

static duet_status_t cuda_rope(duet_backend_t *be, float *q, float *k, int64_t n,
                               const int32_t *positions, int32_t n_heads, int32_t n_kv_heads,
                               int32_t head_dim, float theta, duet_dtype_t freq_dtype)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    if (head_dim > 1024 || head_dim % 2 || head_dim <= 0)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "cuda backend: rope with head_dim %d", head_dim);
    if (n <= 0)
        return DUET_OK;
    const int32_t half = head_dim / 2;
    float *hf;
    void *dfreq = NULL, *dpos = NULL;
    TRY(stage_room(c, stage_size(sizeof(float) * (size_t)half) +
                          stage_size(sizeof(int32_t) * (size_t)n)));
    TRY(stage(c, NULL, sizeof(float) * (size_t)half, (void **)&hf, &dfreq));
    for (int32_t i = 0; i < half; i++) { /* exactly cpu/ops.c */
        float e = (float)(2 * i) / (float)head_dim;
        hf[i] = 1.0f / powf(theta, e);
        if (freq_dtype == DUET_DTYPE_BF16)
            hf[i] = duet_bf16_to_f32(duet_f32_to_bf16(hf[i]));
        else if (freq_dtype == DUET_DTYPE_F16)
            hf[i] = duet_f16_to_f32(duet_f32_to_f16(hf[i]));
    }
    TRY(stage(c, positions, sizeof(int32_t) * (size_t)n, NULL, &dpos));
    TRY(stage_flush(c));
    KERNEL(duet_cuk_rope(c->st, q, k, n, dpos, n_heads, n_kv_heads, head_dim, dfreq),
           "rope kernel");
    return DUET_OK;
}

static duet_status_t cuda_attention(duet_backend_t *be, const duet_attn_batch_t *b,
                                    const duet_kv_layer_t *kv, const float *q, const float *k,
                                    const float *v, int32_t n_heads, float scale, float *out)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    const int32_t hd = kv->head_dim, bs = kv->block_size, nkv = kv->n_kv_heads;
    if (nkv <= 0 || n_heads % nkv || !duet_cuk_attn_supported(hd, n_heads / nkv) || bs <= 0)
        return duet_errorf(DUET_ERR_UNSUPPORTED,
                           "cuda backend: attention with head_dim %d, %d query heads per KV head "
                           "(needs head_dim a power of two in 8..256, at most %d per KV head)",
                           hd, nkv > 0 ? n_heads / nkv : 0, CUK_ATTN_MAX_G);
    const int64_t n = b->n_tokens;
    if (n <= 0)
        return DUET_OK;
    if (n > 65535)
        return duet_errorf(DUET_ERR_CAPACITY,
                           "cuda backend: %lld tokens in one attention call (max 65535)",
                           (long long)n);
    int64_t n_bt = 0;
    for (int32_t si = 0; si < b->n_seqs; si++) {
        const duet_attn_seq_t *s = &b->seqs[si];
        n_bt += (s->pos0 + s->n_tokens + bs - 1) / bs;
    }
    int32_t *slot, *ctx, *bt_off, *bt;
    void *d_slot = NULL, *d_ctx = NULL, *d_off = NULL, *d_bt = NULL;
    TRY(stage_room(c, 3 * stage_size(sizeof(int32_t) * (size_t)n) +
                          stage_size(sizeof(int32_t) * (size_t)(n_bt ? n_bt : 1))));
    TRY(stage(c, NULL, sizeof(int32_t) * (size_t)n, (void **)&slot, &d_slot));
    TRY(stage(c, NULL, sizeof(int32_t) * (size_t)n, (void **)&ctx, &d_ctx));
    TRY(stage(c, NULL, sizeof(int32_t) * (size_t)n, (void **)&bt_off, &d_off));
    TRY(stage(c, NULL, sizeof(int32_t) * (size_t)(n_bt ? n_bt : 1), (void **)&bt, &d_bt));
    int32_t max_ctx = 0, o = 0;
    int64_t covered = 0;
    for (int32_t si = 0; si < b->n_seqs; si++) {
        const duet_attn_seq_t *s = &b->seqs[si];
        const int32_t nb = (s->pos0 + s->n_tokens + bs - 1) / bs;
        for (int32_t i = 0; i < nb; i++) {
            if (s->block_table[i] < 0 || s->block_table[i] >= kv->n_blocks)
                return duet_errorf(DUET_ERR_RANGE,
                                   "cuda backend: sequence %d names KV block %d of %d", si,
                                   s->block_table[i], kv->n_blocks);
            bt[o + i] = s->block_table[i];
        }
        for (int32_t t = 0; t < s->n_tokens; t++) {
            const int32_t tok = s->tok0 + t, pos = s->pos0 + t;
            if (tok < 0 || tok >= n)
                return duet_errorf(DUET_ERR_RANGE, "cuda backend: attention token %d of %lld", tok,
                                   (long long)n);
            slot[tok] = bt[o + pos / bs] * bs + pos % bs;
            ctx[tok] = pos + 1;
            bt_off[tok] = o;
            max_ctx = DUET_MAX(max_ctx, pos + 1);
        }
        o += nb;
        covered += s->n_tokens;
    }
    if (covered != n)
        return duet_errorf(DUET_ERR_INVALID,
                           "cuda backend: attention batch of %lld tokens whose sequences hold %lld",
                           (long long)n, (long long)covered);
    TRY(stage_flush(c));
    /* Split long contexts when there are too few (token, KV head) items to
     * fill the device (flash-decoding); partials are merged by a second kernel. */
    const int64_t items = n * nkv;
    int32_t n_split = 1, chunk = max_ctx;
    if (items < 2 * (int64_t)c->n_sm && max_ctx > 256) {
        int64_t want = (2 * (int64_t)c->n_sm + items - 1) / items;
        int64_t by_len = (max_ctx + 127) / 128;
        n_split = (int32_t)DUET_MIN(DUET_MIN(want, by_len), 64);
        chunk = (max_ctx + n_split - 1) / n_split;
    }
    float *part = NULL;
    if (n_split > 1)
        TRY(scratch(c, &c->s_part,
                    sizeof(float) * (size_t)(n * n_heads) * (size_t)n_split * (size_t)(hd + 2),
                    (void **)&part));
    KERNEL(duet_cuk_kv_store(c->st, k, v, n, d_slot, nkv, hd, bs, kv->k, kv->v), "kv store kernel");
    KERNEL(duet_cuk_attention(c->st, q, kv->k, kv->v, n, d_ctx, d_off, d_bt, n_heads, nkv, hd, bs,
                              scale, n_split, chunk, part, out),
           "attention kernel");
    return DUET_OK;
}

static duet_status_t cuda_route(duet_backend_t *be, const float *logits, int64_t n,
                                int32_t n_experts, int32_t top_k, bool norm_topk, int32_t *ids,
                                float *weights)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    if (n_experts > CUK_ROUTE_MAX_E || top_k > n_experts || top_k < 1)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "cuda backend: routing top-%d of %d experts",
                           top_k, n_experts);
    if (n <= 0)
        return DUET_OK;
    const size_t cnt = (size_t)n * (size_t)top_k;
    uint8_t *d;
    TRY(scratch(c, &c->s_route, cnt * 8, (void **)&d));
    KERNEL(duet_cuk_route(c->st, logits, n, n_experts, top_k, norm_topk, (int32_t *)d,
                          (float *)(d + cnt * 4)),
           "route kernel");
    /* one copy back for both arrays */
    TRY(pin_reserve(c, cnt * 8));
    CU(cudaMemcpyAsync(c->pin_out, d, cnt * 8, cudaMemcpyDeviceToHost, c->st));
    CU(cudaStreamSynchronize(c->st));
    memcpy(ids, c->pin_out, cnt * 4);
    memcpy(weights, (uint8_t *)c->pin_out + cnt * 4, cnt * 4);
    return DUET_OK;
}

static duet_status_t cuda_swiglu(duet_backend_t *be, const float *gate, const float *up, int64_t n,
                                 int64_t dim, float *out)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    KERNEL(duet_cuk_swiglu(c->st, gate, up, n * dim, out), "swiglu kernel");
    return DUET_OK;
}

static duet_status_t cuda_gather_rows(duet_backend_t *be, const float *src, int64_t dim,
                                      const int32_t *idx, int64_t n, float *dst)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    if (n <= 0)
        return DUET_OK;
    void *d_idx = NULL;
    TRY(stage(c, idx, sizeof(int32_t) * (size_t)n, NULL, &d_idx));
    TRY(stage_flush(c));
    KERNEL(duet_cuk_gather_rows(c->st, src, dim, d_idx, n, dst), "gather kernel");
    return DUET_OK;
}

static duet_status_t cuda_scatter_add_rows(duet_backend_t *be, const float *src, int64_t dim,
                                           const int32_t *idx, const float *w, int64_t n,
                                           float *dst)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    if (n <= 0)
        return DUET_OK;
    /* Group the sources by destination row (stable), so each destination
     * row is summed by one thread per column in the CPU's order. */
    int32_t mx = 0;
    for (int64_t i = 0; i < n; i++) {
        if (idx[i] < 0)
            return duet_errorf(DUET_ERR_RANGE, "cuda backend: scatter to row %d", idx[i]);
        mx = DUET_MAX(mx, idx[i]);
    }
    const size_t rows = (size_t)mx + 1;
    const size_t need = rows + 1;
    if (c->h_i32_cap < need) {
        int32_t *p = duet_realloc_array(c->h_i32, need, sizeof(int32_t));
        if (!p)
            return duet_errorf(DUET_ERR_NOMEM, "cuda backend: out of memory");
        c->h_i32 = p;
        c->h_i32_cap = need;
    }
    int32_t *cnt = c->h_i32; /* [rows + 1] */
    memset(cnt, 0, sizeof(int32_t) * need);
    int64_t n_dst = 0;
    for (int64_t i = 0; i < n; i++)
        if (cnt[idx[i]]++ == 0)
            n_dst++;
    int32_t *dst_rows, *src_off, *src_list;
    void *d_rows = NULL, *d_off = NULL, *d_list = NULL, *d_w = NULL;
    TRY(stage_room(c, stage_size(sizeof(int32_t) * (size_t)n_dst) +
                          stage_size(sizeof(int32_t) * (size_t)(n_dst + 1)) +
                          stage_size(sizeof(int32_t) * (size_t)n) +
                          (w ? stage_size(sizeof(float) * (size_t)n) : 0)));
    TRY(stage(c, NULL, sizeof(int32_t) * (size_t)n_dst, (void **)&dst_rows, &d_rows));
    TRY(stage(c, NULL, sizeof(int32_t) * (size_t)(n_dst + 1), (void **)&src_off, &d_off));
    TRY(stage(c, NULL, sizeof(int32_t) * (size_t)n, (void **)&src_list, &d_list));
    if (w)
        TRY(stage(c, w, sizeof(float) * (size_t)n, NULL, &d_w));
    /* cnt -> start offset of each used destination row (in row order) */
    int64_t k = 0, acc = 0;
    for (size_t r = 0; r < rows; r++) {
        int32_t m = cnt[r];
        if (!m) {
            cnt[r] = -1;
            continue;
        }
        dst_rows[k] = (int32_t)r;
        src_off[k] = (int32_t)acc;
        cnt[r] = (int32_t)acc; /* fill cursor */
        acc += m;
        k++;
    }
    src_off[n_dst] = (int32_t)acc;
    for (int64_t i = 0; i < n; i++)
        src_list[cnt[idx[i]]++] = (int32_t)i;
    TRY(stage_flush(c));
    KERNEL(duet_cuk_scatter_add_rows(c->st, src, dim, d_rows, d_off, d_list, d_w, n_dst, dst),
           "scatter_add kernel");
    return DUET_OK;
}

static duet_status_t cuda_sigmoid_gate_add(duet_backend_t *be, const float *x, const float *g,
                                           int64_t rows, int64_t dim, float *y)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    KERNEL(duet_cuk_sigmoid_gate_add(c->st, x, g, rows, dim, y), "sigmoid_gate_add kernel");
    return DUET_OK;
}

static duet_status_t cuda_add(duet_backend_t *be, const float *x, int64_t n, float *y)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    KERNEL(duet_cuk_add(c->st, x, n, y), "add kernel");
    return DUET_OK;
}

static duet_status_t cuda_embed(duet_backend_t *be, const duet_tensor_t *table, const int32_t *ids,
                                int64_t n, float *out)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    if (!float_dtype(table->dtype) || table->ndim != 2)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "cuda backend: embedding table of %s",
                           duet_dtype_name(table->dtype));
    if (n <= 0)
        return DUET_OK;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= table->shape[0])
            return duet_errorf(DUET_ERR_RANGE,
                               "cuda backend: token id %d outside the table of %lld", ids[i],
                               (long long)table->shape[0]);
    const void *t;
    int tdt;
    TRY(tensor_dev(c, table, W_RAW, &t, &tdt));
    void *d_ids = NULL;
    duet_status_t st = stage(c, ids, sizeof(int32_t) * (size_t)n, NULL, &d_ids);
    if (!st)
        st = stage_flush(c);
    if (st)
        return op_end(c, st);
    KERNEL(duet_cuk_embed(c->st, t, tdt, table->shape[1], d_ids, n, out), "embed kernel");
    return op_end(c, DUET_OK);
}

static duet_status_t cuda_sample(duet_backend_t *be, const float *logits, int64_t n, int32_t vocab,
                                 const duet_sampling_params_t *params, const int64_t *positions,
                                 int32_t *out)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    if (n <= 0)
        return DUET_OK;
    if (vocab <= 0)
        return duet_errorf(DUET_ERR_INVALID, "sampler: vocabulary size %d must be positive", vocab);
    float *temp, *top_p;
    int32_t *top_k;
    double *u;
    void *d_temp = NULL, *d_k = NULL, *d_p = NULL, *d_u = NULL;
    TRY(stage_room(c, stage_size(sizeof(double) * (size_t)n) +
                          3 * stage_size(sizeof(float) * (size_t)n)));
    TRY(stage(c, NULL, sizeof(double) * (size_t)n, (void **)&u, &d_u));
    TRY(stage(c, NULL, sizeof(float) * (size_t)n, (void **)&temp, &d_temp));
    TRY(stage(c, NULL, sizeof(int32_t) * (size_t)n, (void **)&top_k, &d_k));
    TRY(stage(c, NULL, sizeof(float) * (size_t)n, (void **)&top_p, &d_p));
    bool all_greedy = true;
    for (int64_t i = 0; i < n; i++) {
        TRY(duet_sampling_params_check(&params[i]));
        temp[i] = params[i].temperature;
        top_k[i] = params[i].top_k;
        top_p[i] = params[i].top_p;
        u[i] = duet_sample_uniform(params[i].seed, positions[i]);
        all_greedy &= params[i].temperature <= 0.0f || params[i].top_k == 1;
    }
    TRY(stage_flush(c));
    float *sp = NULL;
    int32_t *si = NULL;
    if (!all_greedy) {
        TRY(scratch(c, &c->s_sample_p, sizeof(float) * (size_t)n * (size_t)vocab, (void **)&sp));
        TRY(scratch(c, &c->s_sample_i, sizeof(int32_t) * (size_t)n * (size_t)vocab, (void **)&si));
    }
    int32_t *d_out;
    TRY(scratch(c, &c->s_out, sizeof(int32_t) * (size_t)n, (void **)&d_out));
    KERNEL(duet_cuk_sample(c->st, logits, n, vocab, d_temp, d_k, d_p, d_u, sp, si, d_out),
           "sample kernel");
    return fetch(c, out, d_out, sizeof(int32_t) * (size_t)n);
}

static const duet_backend_ops_t cuda_ops = {
    .name = "cuda",
    .device_memory = true,
    .destroy = cuda_destroy,
    .buf_alloc = cuda_buf_alloc,
    .buf_free = cuda_buf_free,
    .buf_upload = cuda_buf_upload,
    .buf_download = cuda_buf_download,
    .buf_zero = cuda_buf_zero,
    .sync = cuda_sync,
    .weights_prepare = cuda_weights_prepare,
    .matmul = cuda_matmul,
    .matmul_batch = cuda_matmul_batch,
    .lm_head = cuda_lm_head,
    .rmsnorm = cuda_rmsnorm,
    .rope = cuda_rope,
    .attention = cuda_attention,
    .route = cuda_route,
    .swiglu = cuda_swiglu,
    .gather_rows = cuda_gather_rows,
    .scatter_add_rows = cuda_scatter_add_rows,
    .sigmoid_gate_add = cuda_sigmoid_gate_add,
    .add = cuda_add,
    .embed = cuda_embed,
    .sample = cuda_sample,
};

/* ---- public entry points -----------------------------------------------------------------------
 */

int duet_cuda_device_count(char *why, size_t why_len)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        if (why && why_len)
            snprintf(why, why_len, "no CUDA device: %s",
                     e != cudaSuccess ? cudaGetErrorString(e) : "the runtime lists none");
        return 0;
    }
    return n;
}

#define CREATE_CU(call)                                                                            \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            st = cuda_fail(e_, #call);                                                             \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)
#define CREATE_BL(call)                                                                            \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            st = blas_fail(s_, #call);                                                             \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

duet_status_t duet_cuda_backend_create(const duet_backend_opts_t *opts, duet_backend_t **out)
{
    duet_backend_opts_t o = {0};
    if (opts)
        o = *opts;
    char why[256];
    int ndev = duet_cuda_device_count(why, sizeof(why));
    if (ndev == 0)
        return duet_errorf(DUET_ERR_DEVICE, "cuda backend: %s", why);
    if (o.device < 0 || o.device >= ndev)
        return duet_errorf(DUET_ERR_RANGE, "cuda backend: device %d of %d", o.device, ndev);
    if (o.precision != DUET_PRECISION_FP32 && o.precision != DUET_PRECISION_BF16)
        return duet_errorf(DUET_ERR_INVALID, "cuda backend: precision %d", (int)o.precision);
    cuda_backend_t *c = duet_calloc(1, sizeof(*c));
    if (!c)
        return duet_errorf(DUET_ERR_NOMEM, "cuda backend: out of memory");
    c->base.ops = &cuda_ops;
    c->base.impl = c;
    c->device = o.device;
    c->prec = o.precision;
    c->grouped = o.grouped;
    duet_status_t st = DUET_OK;
    CREATE_CU(cudaSetDevice(c->device));
    struct cudaDeviceProp prop;
    CREATE_CU(cudaGetDeviceProperties(&prop, c->device));
    snprintf(c->name, sizeof(c->name), "%.120s", prop.name);
    c->n_sm = prop.multiProcessorCount;
    CREATE_CU(cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking));
    CREATE_BL(cublasCreate(&c->blas));
    CREATE_BL(cublasSetStream(c->blas, c->st));
    CREATE_BL(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
    for (int i = 0; i < N_SIDE; i++) {
        CREATE_CU(cudaStreamCreateWithFlags(&c->side[i], cudaStreamNonBlocking));
        CREATE_BL(cublasCreate(&c->side_blas[i]));
        CREATE_BL(cublasSetStream(c->side_blas[i], c->side[i]));
        CREATE_BL(cublasSetMathMode(c->side_blas[i], CUBLAS_DEFAULT_MATH));
        CREATE_CU(cudaEventCreateWithFlags(&c->ev_join[i], cudaEventDisableTiming));
    }
    CREATE_CU(cudaEventCreateWithFlags(&c->ev_fork, cudaEventDisableTiming));
    CREATE_CU(cudaEventCreateWithFlags(&c->ev_done, cudaEventDisableTiming));
    for (int i = 0; i < STG_NSEG; i++)
        CREATE_CU(cudaEventCreateWithFlags(&c->stg_ev[i], cudaEventDisableTiming));
    {
        void *h = NULL, *d = NULL;
        CREATE_CU(cudaHostAlloc(&h, (size_t)STG_SEG * STG_NSEG, cudaHostAllocDefault));
        c->stg_h = h;
        cudaError_t e = cudaMalloc(&d, (size_t)STG_SEG * STG_NSEG);
        if (e != cudaSuccess) {
            st = alloc_fail(c, e, (size_t)STG_SEG * STG_NSEG, "the staging ring");
            goto fail;
        }
        c->stg_d = d;
    }
    *out = &c->base;
    return DUET_OK;
fail:
    cuda_destroy(&c->base);
    return st;
}

duet_status_t duet_cuda_backend_event_record(duet_backend_t *be)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    CU(cudaEventRecord(c->ev_done, c->st));
    return DUET_OK;
}

int duet_cuda_backend_event_query(duet_backend_t *be)
{
    cuda_backend_t *c = cu(be);
    duet_status_t st = enter(c);
    if (st)
        return st;
    cudaError_t e = cudaEventQuery(c->ev_done);
    if (e == cudaSuccess)
        return 1;
    if (e == cudaErrorNotReady)
        return 0;
    return cuda_fail(e, "cudaEventQuery(completion event)");
}

void *duet_cuda_backend_stream(duet_backend_t *be)
{
    return cu(be)->st;
}

duet_status_t duet_cuda_backend_mem(duet_backend_t *be, duet_cuda_mem_t *m)
{
    cuda_backend_t *c = cu(be);
    TRY(enter(c));
    memset(m, 0, sizeof(*m));
    m->weights = c->w_bytes;
    m->buffers = c->buf_bytes;
    m->scratch = scratch_bytes(c) + (size_t)STG_SEG * STG_NSEG;
    CU(cudaMemGetInfo(&m->free_b, &m->total_b));
    snprintf(m->name, sizeof(m->name), "%.120s", c->name);
    return DUET_OK;
}

duet_status_t duet_cuda_backend_set_grouped(duet_backend_t *be, duet_backend_grouped_t mode)
{
    cuda_backend_t *c = cu(be);
    if (mode == DUET_GROUPED_CUBLAS && !duet_cuda_have_grouped_gemm())
        return duet_errorf(DUET_ERR_UNSUPPORTED,
                           "cuda backend: this cuBLAS has no grouped batched GEMM (12.5+)");
    c->grouped = mode;
    c->grouped_failed = false;
    return DUET_OK;
}
