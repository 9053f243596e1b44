/* cuda backend — model/backend.h's ops table on one NVIDIA GPU.
 *
 * Open it with duet_backend_open("cuda", &opts) (opts.device picks the GPU,
 * opts.precision the GEMM precision, opts.grouped how matmul_batch runs).
 *
 * Memory. Buffers (activations, KV cache) are plain cudaMalloc memory;
 * weights_prepare uploads every tensor the model holds (GEMM weights in the
 * precision's type: f32 in FP32 mode, bf16/f16 in BF16 mode; norms, biases
 * and the embedding table as stored) and finds them later by the tensor's
 * data address. A tensor that was not prepared is uploaded for the one op
 * that uses it (stream-ordered temporary). Managed memory is never used.
 * Index arrays handed in host memory go through a pinned staging ring.
 *
 * Ordering. Every op is queued on the backend's stream and returns without
 * waiting, except those whose results the op contract puts in host memory
 * (route: ids and weights; sample: tokens; buf_download), which wait for
 * the stream (not the device), and buf_upload, which waits so that the
 * caller may reuse its source at once. No op calls cudaDeviceSynchronize
 * (buf_free's cudaFree waits for the device, as cudaFree does).
 * An actor loop that must not block records the completion event after
 * queueing a step and polls it together with its mailbox:
 *
 *     duet_cuda_backend_event_record(be);
 *     while (duet_cuda_backend_event_query(be) == 0) { poll mailbox ... }
 *
 * Errors. Every CUDA and cuBLAS call is checked; the detail (duet_error())
 * names the call, its status name and string. A kernel fault surfaces at
 * the next call that waits (sync, download, route, sample, event query). */
#ifndef DUET_GPU_CUDA_BACKEND_H
#define DUET_GPU_CUDA_BACKEND_H

#include "base/base.h"
#include "model/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 with `why` (may be NULL) filled when
 * there is none or the runtime cannot start ("no CUDA device: ..."). */
DUET_API int duet_cuda_device_count(char *why, size_t why_len);

/* Record the backend's completion event after all work queued so far. */
DUET_API duet_status_t duet_cuda_backend_event_record(duet_backend_t *be);
/* 1: everything before the last record is done (or nothing was recorded);
 * 0: still running; < 0: a duet_status_t error (a kernel fault, say). */
DUET_API int duet_cuda_backend_event_query(duet_backend_t *be);

/* The backend's cudaStream_t (as void *), for callers that queue their own
 * work (the data plane's device copies) in order with the ops. */
DUET_API void *duet_cuda_backend_stream(duet_backend_t *be);

typedef struct duet_cuda_mem {
    size_t weights; /* bytes of prepared weights on the device */
    size_t buffers; /* bytes of live buf_alloc buffers */
    size_t scratch; /* bytes of the backend's own scratch */
    size_t free_b;  /* cudaMemGetInfo */
    size_t total_b;
    char name[128]; /* device name */
} duet_cuda_mem_t;
DUET_API duet_status_t duet_cuda_backend_mem(duet_backend_t *be, duet_cuda_mem_t *out);

/* Switch how matmul_batch runs (benchmarks measure both). */
DUET_API duet_status_t duet_cuda_backend_set_grouped(duet_backend_t *be,
                                                     duet_backend_grouped_t mode);
/* Whether this build's cuBLAS has the grouped batched GEMM. */
DUET_API bool duet_cuda_have_grouped_gemm(void);

#ifdef __cplusplus
}
#endif
#endif
