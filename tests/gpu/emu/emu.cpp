// CUDA emulator (tests only): runs gpu/backend.c and gpu/kernels.cu on the
// host so that their logic (indexing, staging, GEMM layouts, barriers,
// shuffles, the split attention merge, sampling) is tested where there is
// no GPU. Not a performance model; see README.md for what it does and does
// not check.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <functional>
#include <map>
#include <vector>

#include "cublas_v2.h"
#include "cuda_runtime_api.h"
#include "emu_device.h"

extern "C" {
float duet_f16_to_f32(uint16_t h);
uint16_t duet_f32_to_f16(float f);
}

float emu_half_to_float(uint16_t h)
{
    return duet_f16_to_f32(h);
}
uint16_t emu_float_to_half(float f)
{
    return duet_f32_to_f16(f);
}

[[noreturn]] static void emu_die(const char *what)
{
    fprintf(stderr, "CUDA emulator: %s\n", what);
    abort();
}

// ---- the deferred stream -------------------------------------------------------

static std::vector<std::function<void()>> g_queue;
static std::map<uintptr_t, size_t> g_pinned; // cudaHostAlloc ranges
static std::map<uintptr_t, size_t> g_device; // cudaMalloc ranges

// Device memory is mapped PROT_NONE except while the queue runs, so host
// code that dereferences a device pointer crashes here as it would on a GPU.
static size_t page_round(size_t n)
{
    const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) / pg * pg;
}

static void dev_protect(int prot)
{
    for (auto &kv : g_device)
        if (mprotect((void *)kv.first, page_round(kv.second), prot) != 0)
            emu_die("mprotect failed");
}

static void flush()
{
    if (g_queue.empty())
        return;
    // ops may not enqueue more ops while running
    std::vector<std::function<void()>> q;
    q.swap(g_queue);
    dev_protect(PROT_READ | PROT_WRITE);
    for (auto &f : q)
        f();
    dev_protect(PROT_NONE);
}

static bool in_map(const std::map<uintptr_t, size_t> &m, const void *p, size_t n)
{
    uintptr_t a = (uintptr_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin())
        return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

// ---- fibers ------------------------------------------------------------------------

uint3 emu_block_idx;
dim3 emu_block_dim, emu_grid_dim;

// Context switch: a few instructions on x86-64 (callee-saved registers and
// the stack pointer), ucontext elsewhere (it makes a system call per switch).
#if defined(__x86_64__)
extern "C" void emu_switch(void **save_sp, void *load_sp);
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
#endif

namespace
{
constexpr size_t kStack = 96 * 1024;
struct Fiber {
#if defined(__x86_64__)
    void *sp;
#else
    ucontext_t ctx;
#endif
    uint3 tid;
    int lin;
    bool done;
    int wait; // 0: runnable, 1: block barrier, 2: warp barrier
    uint64_t gen;
};
struct Barrier {
    int arrived = 0;
    int live = 0;
    uint64_t gen = 0;
};
std::vector<Fiber> fibers;
std::vector<char *> stacks;
#if defined(__x86_64__)
void *sched_sp;
#else
ucontext_t sched_ctx;
#endif
Fiber *cur;

void to_scheduler(Fiber *f)
{
#if defined(__x86_64__)
    emu_switch(&f->sp, sched_sp);
#else
    swapcontext(&f->ctx, &sched_ctx);
#endif
}

void to_fiber(Fiber *f)
{
#if defined(__x86_64__)
    emu_switch(&sched_sp, f->sp);
#else
    swapcontext(&sched_ctx, &f->ctx);
#endif
}
Barrier block_bar;
std::vector<Barrier> warp_bar;
std::vector<float> warp_buf;
const std::function<void()> *g_fn;

void fiber_main()
{
    (*g_fn)();
    Fiber *f = cur;
    f->done = true;
    // an exited thread counts as arrived (as on the GPU)
    block_bar.live--;
    if (block_bar.live > 0 && block_bar.arrived == block_bar.live) {
        block_bar.arrived = 0;
        block_bar.gen++;
    }
    Barrier &wb = warp_bar[f->lin / 32];
    wb.live--;
    if (wb.live > 0 && wb.arrived == wb.live) {
        wb.arrived = 0;
        wb.gen++;
    }
    to_scheduler(f);
    abort(); /* never resumed */
}

void arrive(Barrier &b, int kind)
{
    Fiber *f = cur;
    b.arrived++;
    if (b.arrived == b.live) {
        b.arrived = 0;
        b.gen++;
        return;
    }
    f->wait = kind;
    f->gen = b.gen;
    to_scheduler(f);
}

void run_block(int nthreads)
{
    fibers.assign((size_t)nthreads, Fiber{});
    while (stacks.size() < (size_t)nthreads)
        stacks.push_back((char *)malloc(kStack));
    block_bar = Barrier{};
    block_bar.live = nthreads;
    warp_bar.assign((size_t)(nthreads + 31) / 32, Barrier{});
    for (int w = 0; w < (int)warp_bar.size(); w++)
        warp_bar[(size_t)w].live = std::min(32, nthreads - 32 * w);
    warp_buf.assign(warp_bar.size() * 32, 0.0f);
    for (int i = 0; i < nthreads; i++) {
        Fiber &f = fibers[(size_t)i];
        f.lin = i;
        f.tid = {(unsigned)i % emu_block_dim.x, (unsigned)(i / emu_block_dim.x) % emu_block_dim.y,
                 (unsigned)(i / (emu_block_dim.x * emu_block_dim.y))};
#if defined(__x86_64__)
        /* a fresh stack that emu_switch "returns" into fiber_main from */
        uintptr_t top = ((uintptr_t)stacks[(size_t)i] + kStack) & ~(uintptr_t)15;
        void **sp = (void **)top - 8;
        for (int r = 0; r < 6; r++)
            sp[r] = nullptr;         /* r15 r14 r13 r12 rbx rbp */
        sp[6] = (void *)&fiber_main; /* ret target */
        sp[7] = nullptr;             /* fiber_main's return address: never used */
        f.sp = sp;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks[(size_t)i];
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
#endif
    }
    int left = nthreads;
    while (left > 0) {
        bool progress = false;
        for (auto &f : fibers) {
            if (f.done)
                continue;
            if (f.wait == 1 && block_bar.gen == f.gen)
                continue;
            if (f.wait == 2 && warp_bar[(size_t)f.lin / 32].gen == f.gen)
                continue;
            f.wait = 0;
            cur = &f;
            to_fiber(&f);
            progress = true;
            if (f.done)
                left--;
        }
        if (!progress)
            emu_die("deadlock: threads wait at a barrier others never reach");
    }
}
} // namespace

uint3 emu_thread_idx()
{
    return cur->tid;
}

void __syncthreads()
{
    arrive(block_bar, 1);
}

float emu_shfl_xor(float v, int o)
{
    Fiber *f = cur;
    const int w = f->lin / 32, lane = f->lin % 32, src = lane ^ o;
    Barrier &b = warp_bar[(size_t)w];
    if (b.live != 32 || src >= 32)
        emu_die("shuffle in a partial warp");
    warp_buf[(size_t)w * 32 + (size_t)lane] = v;
    arrive(b, 2);
    float r = warp_buf[(size_t)w * 32 + (size_t)src];
    arrive(b, 2);
    return r;
}

cudaError_t emu_launch(dim3 grid, dim3 block, std::function<void()> fn)
{
    const uint64_t nt = (uint64_t)block.x * block.y * block.z;
    if (nt == 0 || nt > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
        grid.z > 65535 || grid.x > 2147483647u)
        return cudaErrorInvalidConfiguration;
    g_queue.push_back([=] {
        const std::function<void()> f = fn;
        g_fn = &f;
        emu_grid_dim = grid;
        emu_block_dim = block;
        for (unsigned z = 0; z < grid.z; z++)
            for (unsigned y = 0; y < grid.y; y++)
                for (unsigned x = 0; x < grid.x; x++) {
                    emu_block_idx = {x, y, z};
                    run_block((int)nt);
                }
    });
    return cudaSuccess;
}

// ---- runtime -------------------------------------------------------------------------

struct emu_stream {
    int dummy;
};
struct emu_event {
    int dummy;
};

extern "C" {

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    default: return "cudaErrorInvalidValue";
    }
}
const char *cudaGetErrorString(cudaError_t e)
{
    return cudaGetErrorName(e);
}
cudaError_t cudaGetLastError(void)
{
    return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d)
{
    return d == 0 ? cudaSuccess : cudaErrorInvalidValue;
}
cudaError_t cudaGetDevice(int *d)
{
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d)
{
    (void)d;
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "CUDA emulator (host)");
    p->multiProcessorCount = 132; /* an H100's: the attention split path runs */
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned)
{
    *s = new emu_stream{};
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    flush();
    delete s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t)
{
    flush();
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned)
{
    return cudaSuccess; /* one FIFO: already ordered */
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned)
{
    *e = new emu_event{};
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t)
{
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t)
{
    flush();
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t)
{
    if (!g_queue.empty()) { /* "not ready" once, then done: pollers see both */
        flush();
        return cudaErrorNotReady;
    }
    return cudaSuccess;
}
cudaError_t cudaMalloc(void **p, size_t n)
{
    if (n > ((size_t)1 << 40))
        return cudaErrorMemoryAllocation;
    void *m = mmap(nullptr, page_round(n ? n : 1), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return cudaErrorMemoryAllocation;
    memset(m, 0xff, n); /* NaN: reads of unwritten device memory show */
    if (mprotect(m, page_round(n ? n : 1), PROT_NONE) != 0)
        emu_die("mprotect failed");
    g_device[(uintptr_t)m] = n ? n : 1;
    *p = m;
    return cudaSuccess;
}

static void dev_free(void *p)
{
    auto it = g_device.find((uintptr_t)p);
    if (it == g_device.end())
        emu_die("freeing a pointer cudaMalloc did not return");
    munmap(p, page_round(it->second));
    g_device.erase(it);
}
cudaError_t cudaFree(void *p)
{
    flush(); /* cudaFree waits for the device */
    if (p)
        dev_free(p);
    return cudaSuccess;
}
cudaError_t cudaMallocAsync(void **p, size_t n, cudaStream_t)
{
    return cudaMalloc(p, n);
}
cudaError_t cudaFreeAsync(void *p, cudaStream_t)
{
    if (!g_device.count((uintptr_t)p))
        emu_die("cudaFreeAsync of a pointer cudaMalloc did not return");
    g_queue.push_back([p] { dev_free(p); });
    return cudaSuccess;
}
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned)
{
    void *m = malloc(n ? n : 1);
    if (!m)
        return cudaErrorMemoryAllocation;
    g_pinned[(uintptr_t)m] = n;
    *p = m;
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *p)
{
    flush();
    g_pinned.erase((uintptr_t)p);
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind, cudaStream_t)
{
    const bool src_dev = in_map(g_device, src, n), dst_dev = in_map(g_device, dst, n);
    const bool src_pin = in_map(g_pinned, src, n), dst_pin = in_map(g_pinned, dst, n);
    if (!src_dev && !dst_dev)
        emu_die("cudaMemcpyAsync between two host buffers");
    if (!src_dev && !src_pin) { /* pageable source: consumed at the call */
        std::vector<char> copy((const char *)src, (const char *)src + n);
        g_queue.push_back([dst, copy] { memcpy(dst, copy.data(), copy.size()); });
        return cudaSuccess;
    }
    if (!dst_dev && !dst_pin) { /* pageable destination: the host waits */
        g_queue.push_back([=] { memcpy(dst, src, n); });
        flush();
        return cudaSuccess;
    }
    g_queue.push_back([=] { memcpy(dst, src, n); }); /* pinned or device: read when it runs */
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *dst, int v, size_t n, cudaStream_t)
{
    g_queue.push_back([=] { memset(dst, v, n); });
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
    *free_b = (size_t)80 << 30;
    *total_b = (size_t)80 << 30;
    return cudaSuccess;
}

// ---- cuBLAS ----------------------------------------------------------------------------

struct emu_blas {
    int dummy;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new emu_blas{};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t)
{
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t)
{
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_SUCCESS ? "success" : "error";
}

static float ld(const void *p, cudaDataType_t t, size_t i)
{
    switch (t) {
    case CUDA_R_16BF: {
        __nv_bfloat16 h = {((const uint16_t *)p)[i]};
        return __bfloat162float(h);
    }
    case CUDA_R_16F: return duet_f16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

/* C[m,n] (col-major, ldc) = alpha op(A)[m,k] op(B)[k,n] + beta C */
static void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                 const void *A, cudaDataType_t at, int lda, const void *B, cudaDataType_t bt,
                 int ldb, float beta, float *C, int ldc)
{
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float acc = 0.0f;
            for (int p = 0; p < k; p++) {
                float a = ta == CUBLAS_OP_N ? ld(A, at, (size_t)i + (size_t)p * lda)
                                            : ld(A, at, (size_t)p + (size_t)i * lda);
                float b = tb == CUBLAS_OP_N ? ld(B, bt, (size_t)p + (size_t)j * ldb)
                                            : ld(B, bt, (size_t)j + (size_t)p * ldb);
                acc += a * b;
            }
            float *c = &C[(size_t)i + (size_t)j * ldc];
            *c = beta == 0.0f ? alpha * acc : alpha * acc + beta * *c;
        }
}

static bool types_ok(cudaDataType_t at, cudaDataType_t bt, cudaDataType_t ct)
{
    return at == bt && ct == CUDA_R_32F;
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType_t at,
                            int lda, const void *B, cudaDataType_t bt, int ldb, const void *beta,
                            void *C, cudaDataType_t ct, int ldc, cublasComputeType_t,
                            cublasGemmAlgo_t)
{
    if (!types_ok(at, bt, ct))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    const int rows_a = ta == CUBLAS_OP_N ? m : k, rows_b = tb == CUBLAS_OP_N ? k : n;
    if (m < 0 || n < 0 || k < 0 || lda < std::max(1, rows_a) || ldb < std::max(1, rows_b) ||
        ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    g_queue.push_back(
        [=] { gemm(ta, tb, m, n, k, al, A, at, lda, B, bt, ldb, be, (float *)C, ldc); });
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t, const cublasOperation_t ta[],
                                          const cublasOperation_t tb[], const int m[],
                                          const int n[], const int k[], const void *alpha,
                                          const void *const A[], cudaDataType_t at, const int lda[],
                                          const void *const B[], cudaDataType_t bt, const int ldb[],
                                          const void *beta, void *const C[], cudaDataType_t ct,
                                          const int ldc[], int group_count, const int group_size[],
                                          cublasComputeType_t)
{
    if (!types_ok(at, bt, ct))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    /* the problem arrays are host memory read now; the pointer arrays are
     * device memory read when the queue runs */
    std::vector<int> M(m, m + group_count), N(n, n + group_count), K(k, k + group_count),
        LA(lda, lda + group_count), LB(ldb, ldb + group_count), LC(ldc, ldc + group_count),
        GS(group_size, group_size + group_count);
    std::vector<cublasOperation_t> TA(ta, ta + group_count), TB(tb, tb + group_count);
    std::vector<float> AL((const float *)alpha, (const float *)alpha + group_count),
        BE((const float *)beta, (const float *)beta + group_count);
    size_t total = 0;
    for (int g = 0; g < group_count; g++)
        total += (size_t)GS[(size_t)g];
    if (!in_map(g_device, A, total * sizeof(void *)) ||
        !in_map(g_device, B, total * sizeof(void *)) ||
        !in_map(g_device, C, total * sizeof(void *)))
        return CUBLAS_STATUS_INVALID_VALUE; /* pointer arrays must be device memory */
    g_queue.push_back([=] {
        size_t idx = 0;
        for (int g = 0; g < group_count; g++)
            for (int s = 0; s < GS[(size_t)g]; s++, idx++)
                gemm(TA[(size_t)g], TB[(size_t)g], M[(size_t)g], N[(size_t)g], K[(size_t)g],
                     AL[(size_t)g], A[idx], at, LA[(size_t)g], B[idx], bt, LB[(size_t)g],
                     BE[(size_t)g], (float *)C[idx], LC[(size_t)g]);
    });
    return CUBLAS_STATUS_SUCCESS;
}

} // extern "C"
