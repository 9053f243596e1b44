/* rdma/shm — same-host provider over POSIX shared memory.
 *
 * Each context publishes a control segment /duet-rdma.<pid>.<nonce> holding
 * its table of writable regions and a lock-free multi-producer ring of
 * receive completions (bounded MPMC ring with per-cell sequence numbers).
 * Every region peers may write into is its own segment
 * /duet-rdma.<pid>.<nonce>.<key>. A writer maps the target region once,
 * checks (key, offset, len) against the owner's table, copies the bytes
 * (the only copy), publishes the completion in the owner's ring and rings its
 * eventfd doorbell when the owner armed it. The doorbell fd and the owner's
 * liveness come from a pidfd of the owner (pidfd_open/pidfd_getfd).
 * Writes are synchronous, so the SEND completion is queued locally at once.
 *
 * GPU memory (built with CUDA: DUET_RDMA_CUDA). duet_rdma_mr_alloc(..,
 * DUET_RDMA_MEM_DEVICE | REMOTE_WRITE) takes device memory with cudaMalloc
 * on the calling thread's current device and publishes its CUDA IPC handle
 * (cudaIpcGetMemHandle) in the region table instead of a segment; a writer
 * opens it once (cudaIpcOpenMemHandle) and copies with cudaMemcpyAsync on
 * its own stream, waiting for that copy before it publishes the completion,
 * so device-to-device transfers between processes on one host (one GPU or
 * two with peer access) never touch host memory. Sources may be host or
 * device memory (duet_rdma_mr_reg(.., DUET_RDMA_MEM_DEVICE) registers a
 * device source); the writer must make sure the source is complete (its
 * compute stream synchronised or its event passed) before writing.
 */
#include "rdma/rdma_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(DUET_RDMA_CUDA)
#include <cuda_runtime_api.h>
#endif

#define SHM_MAGIC 0x6d687364u /* "dshm" */
#define SHM_VERSION 2 /* 2: region entries carry a CUDA IPC handle */
#define SHM_MAX_MR 256
#define SHM_BLOB_LEN 24
#define SHM_MAX_MAPS 64

typedef struct shm_cell {
    _Atomic uint64_t seq;
    uint32_t conn_id;
    uint32_t imm;
    uint64_t len;
} shm_cell_t;

typedef struct shm_ctl {
    uint32_t magic, version;
    int32_t pid;
    int32_t efd;
    uint32_t ring_cap; /* power of two */
    uint32_t pad;
    _Atomic uint32_t armed;
    _Alignas(64) _Atomic uint64_t tail;
    _Alignas(64) uint64_t head;
    struct {
        _Atomic uint64_t key; /* 0 = free */
        uint64_t len;
        uint32_t device;  /* 1: GPU memory, reached through ipc[] */
        int32_t gpu;      /* its device ordinal in the owner */
        uint8_t ipc[64];  /* cudaIpcMemHandle_t */
    } mrs[SHM_MAX_MR];
    _Alignas(64) shm_cell_t ring[];
} shm_ctl_t;

typedef struct shm_ctx {
    uint64_t nonce;
    char name[64];
    shm_ctl_t *ctl;
    size_t ctl_size;
    int efd;
    bool local_armed;
    duet__cq_t local; /* SEND completions */
    void *stream;     /* cudaStream_t for device copies, made on first use */
} shm_ctx_t;

typedef struct shm_map {
    uint64_t key;
    uint8_t *base;
    size_t len;
    bool device; /* an opened CUDA IPC handle, not a mapping */
} shm_map_t;

typedef struct shm_conn {
    int pid;
    uint64_t nonce;
    uint32_t peer_conn;
    shm_ctl_t *ctl;
    size_t ctl_size;
    int pidfd;
    int bell; /* the peer's eventfd, duplicated into this process */
    duet_status_t dead;
    shm_map_t maps[SHM_MAX_MAPS];
    size_t n_maps;
} shm_conn_t;

typedef struct shm_mr {
    char name[80];
    bool shared;
    bool device; /* cudaMalloc'd */
} shm_mr_t;

#if defined(DUET_RDMA_CUDA)
static duet_status_t cuda_err(cudaError_t e, const char *call)
{
    return duet_errorf(e == cudaErrorMemoryAllocation ? DUET_ERR_NOMEM : DUET_ERR_DEVICE,
                       "rdma/shm: %s: %s (%s)", call, cudaGetErrorName(e), cudaGetErrorString(e));
}

/* Copy len bytes between any two of host and device memory and wait. */
static duet_status_t cuda_copy(shm_ctx_t *s, void *dst, const void *src, size_t len)
{
    cudaError_t e;
    if (!s->stream) {
        cudaStream_t st;
        if ((e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking)) != cudaSuccess)
            return cuda_err(e, "cudaStreamCreateWithFlags");
        s->stream = st;
    }
    if ((e = cudaMemcpyAsync(dst, src, len, cudaMemcpyDefault, (cudaStream_t)s->stream)) !=
        cudaSuccess)
        return cuda_err(e, "cudaMemcpyAsync");
    if ((e = cudaStreamSynchronize((cudaStream_t)s->stream)) != cudaSuccess)
        return cuda_err(e, "cudaStreamSynchronize");
    return DUET_OK;
}
#endif

static void map_release(shm_map_t *m)
{
#if defined(DUET_RDMA_CUDA)
    if (m->device) {
        cudaIpcCloseMemHandle(m->base);
        return;
    }
#endif
    munmap(m->base, m->len);
}

static void seg_name(char *out, size_t cap, int pid, uint64_t nonce, uint64_t key)
{
    if (key)
        snprintf(out, cap, "/duet-rdma.%d.%016llx.%016llx", pid, (unsigned long long)nonce,
                 (unsigned long long)key);
    else
        snprintf(out, cap, "/duet-rdma.%d.%016llx", pid, (unsigned long long)nonce);
}

static duet_status_t shm_ctx_open(duet_rdma_ctx_t *ctx)
{
    shm_ctx_t *s = duet_calloc(1, sizeof(*s));
    if (!s)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/shm: out of memory");
    duet_status_t st;
    uint32_t cap = 1;
    while (cap < ctx->params.cq_depth)
        cap <<= 1;
    if (getrandom(&s->nonce, sizeof(s->nonce), 0) != sizeof(s->nonce))
        s->nonce = duet_now_ns();
    seg_name(s->name, sizeof(s->name), getpid(), s->nonce, 0);
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        st = duet_errorf(DUET_ERR_IO, "rdma/shm: eventfd: %s", strerror(errno));
        goto err_free;
    }
    s->ctl_size = sizeof(shm_ctl_t) + (size_t)cap * sizeof(shm_cell_t);
    int fd = shm_open(s->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        st = duet_errorf(DUET_ERR_IO, "rdma/shm: shm_open %s: %s", s->name, strerror(errno));
        goto err_close_efd;
    }
    if (ftruncate(fd, (off_t)s->ctl_size) != 0) {
        st = duet_errorf(DUET_ERR_IO, "rdma/shm: ftruncate %s: %s", s->name, strerror(errno));
        close(fd);
        goto err_unlink;
    }
    s->ctl = mmap(NULL, s->ctl_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (s->ctl == MAP_FAILED) {
        st = duet_errorf(DUET_ERR_IO, "rdma/shm: mmap %s: %s", s->name, strerror(errno));
        goto err_unlink;
    }
    s->ctl->version = SHM_VERSION;
    s->ctl->pid = getpid();
    s->ctl->efd = s->efd;
    s->ctl->ring_cap = cap;
    for (uint32_t i = 0; i < cap; i++)
        atomic_store_explicit(&s->ctl->ring[i].seq, i, memory_order_relaxed);
    atomic_store(&s->ctl->tail, 0);
    __atomic_store_n(&s->ctl->magic, SHM_MAGIC, __ATOMIC_RELEASE);
    ctx->priv = s;
    return DUET_OK;

err_unlink:
    shm_unlink(s->name);
err_close_efd:
    close(s->efd);
err_free:
    duet_free(s);
    return st;
}

static void shm_ctx_close(duet_rdma_ctx_t *ctx)
{
    shm_ctx_t *s = ctx->priv;
    /* Writers that still map it see the context gone (DUET_ERR_CLOSED). */
    __atomic_store_n(&s->ctl->magic, 0, __ATOMIC_RELEASE);
    munmap(s->ctl, s->ctl_size);
    shm_unlink(s->name);
    close(s->efd);
    duet__cq_cleanup(&s->local);
#if defined(DUET_RDMA_CUDA)
    if (s->stream)
        cudaStreamDestroy((cudaStream_t)s->stream);
#endif
    duet_free(s);
}

#if defined(DUET_RDMA_CUDA)
/* Device memory on the current device; published by IPC handle when peers
 * may write into it. */
static duet_status_t shm_mr_alloc_device(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    shm_ctx_t *s = ctx->priv;
    const bool remote = mr->access & DUET_RDMA_ACCESS_REMOTE_WRITE;
    uint32_t idx = (uint32_t)(mr->rkey.key & 0xffffffffu) - 1;
    if (remote && idx >= SHM_MAX_MR)
        return duet_errorf(DUET_ERR_CAPACITY, "rdma/shm: more than %d writable regions",
                           SHM_MAX_MR);
    shm_mr_t *m = duet_calloc(1, sizeof(*m));
    if (!m)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/shm: out of memory");
    int dev = 0;
    void *p = NULL;
    cudaIpcMemHandle_t h;
    duet_status_t st = DUET_OK;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) {
        st = cuda_err(e, "cudaGetDevice");
        goto fail;
    }
    if ((e = cudaMalloc(&p, mr->len ? mr->len : 1)) != cudaSuccess) {
        st = duet_errorf(DUET_ERR_NOMEM, "rdma/shm: cudaMalloc of %zu bytes on device %d: %s",
                         mr->len, dev, cudaGetErrorString(e));
        goto fail;
    }
    if ((e = cudaMemset(p, 0, mr->len)) != cudaSuccess ||
        (e = cudaDeviceSynchronize()) != cudaSuccess) { /* set-up, not a hot path */
        st = cuda_err(e, "cudaMemset");
        goto fail;
    }
    if (remote) {
        if ((e = cudaIpcGetMemHandle(&h, p)) != cudaSuccess) {
            st = cuda_err(e, "cudaIpcGetMemHandle");
            goto fail;
        }
        _Static_assert(sizeof(h) == sizeof(s->ctl->mrs[0].ipc), "IPC handle size");
        s->ctl->mrs[idx].len = mr->len;
        s->ctl->mrs[idx].device = 1;
        s->ctl->mrs[idx].gpu = dev;
        memcpy(s->ctl->mrs[idx].ipc, &h, sizeof(h));
        m->shared = true;
    }
    m->device = true;
    mr->addr = p;
    mr->priv = m;
    if (remote)
        atomic_store_explicit(&s->ctl->mrs[idx].key, mr->rkey.key, memory_order_release);
    return DUET_OK;
fail:
    if (p)
        cudaFree(p);
    duet_free(m);
    return st;
}
#endif

static duet_status_t shm_mr_alloc(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    shm_ctx_t *s = ctx->priv;
    if (mr->access & DUET_RDMA_MEM_DEVICE)
#if defined(DUET_RDMA_CUDA)
        return shm_mr_alloc_device(ctx, mr);
#else
        return duet_errorf(DUET_ERR_UNSUPPORTED,
                           "rdma/shm: GPU memory needs a build with CUDA (this one has none)");
#endif
    shm_mr_t *m = duet_calloc(1, sizeof(*m));
    if (!m)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/shm: out of memory");
    if (!(mr->access & DUET_RDMA_ACCESS_REMOTE_WRITE)) {
        mr->addr = duet_aligned_alloc(64, mr->len);
        if (!mr->addr) {
            duet_free(m);
            return duet_errorf(DUET_ERR_NOMEM, "rdma/shm: cannot allocate %zu bytes", mr->len);
        }
        memset(mr->addr, 0, mr->len);
        mr->priv = m;
        return DUET_OK;
    }
    uint32_t idx = (uint32_t)(mr->rkey.key & 0xffffffffu) - 1;
    if (idx >= SHM_MAX_MR) {
        duet_free(m);
        return duet_errorf(DUET_ERR_CAPACITY, "rdma/shm: more than %d writable regions",
                           SHM_MAX_MR);
    }
    seg_name(m->name, sizeof(m->name), getpid(), s->nonce, mr->rkey.key);
    int fd = shm_open(m->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        duet_status_t st =
            duet_errorf(DUET_ERR_IO, "rdma/shm: shm_open %s: %s", m->name, strerror(errno));
        duet_free(m);
        return st;
    }
    if (ftruncate(fd, (off_t)mr->len) != 0 ||
        (mr->addr = mmap(NULL, mr->len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
        duet_status_t st = duet_errorf(DUET_ERR_NOMEM, "rdma/shm: %zu bytes for %s: %s", mr->len,
                                       m->name, strerror(errno));
        close(fd);
        shm_unlink(m->name);
        duet_free(m);
        mr->addr = NULL;
        return st;
    }
    close(fd);
    m->shared = true;
    mr->priv = m;
    s->ctl->mrs[idx].len = mr->len;
    s->ctl->mrs[idx].device = 0;
    atomic_store_explicit(&s->ctl->mrs[idx].key, mr->rkey.key, memory_order_release);
    return DUET_OK;
}

static duet_status_t shm_mr_reg(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
#if defined(DUET_RDMA_CUDA)
    if (mr->access == DUET_RDMA_MEM_DEVICE) { /* a device write source */
        mr->priv = NULL;
        return DUET_OK;
    }
#endif
    if (mr->access != DUET_RDMA_ACCESS_LOCAL)
        return duet__rdma_unsupported_reg(ctx, mr);
    mr->priv = NULL;
    return DUET_OK;
}

static void shm_mr_dereg(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    shm_ctx_t *s = ctx->priv;
    shm_mr_t *m = mr->priv;
    if (!m)
        return;
    if (m->device) {
        if (m->shared) {
            uint32_t idx = (uint32_t)(mr->rkey.key & 0xffffffffu) - 1;
            atomic_store_explicit(&s->ctl->mrs[idx].key, 0, memory_order_release);
        }
#if defined(DUET_RDMA_CUDA)
        cudaFree(mr->addr);
#endif
    } else if (m->shared) {
        uint32_t idx = (uint32_t)(mr->rkey.key & 0xffffffffu) - 1;
        atomic_store_explicit(&s->ctl->mrs[idx].key, 0, memory_order_release);
        munmap(mr->addr, mr->len);
        shm_unlink(m->name);
    } else {
        duet_free(mr->addr);
    }
    duet_free(m);
}

static duet_status_t shm_conn_open(duet_rdma_ctx_t *ctx, duet_rdma_conn_t *conn)
{
    shm_conn_t *c = duet_calloc(1, sizeof(*c));
    if (!c)
        return duet_errorf(DUET_ERR_NOMEM, "rdma/shm: out of memory");
    c->pidfd = c->bell = -1;
    conn->priv = c;
    return DUET_OK;
}

static duet_status_t shm_conn_blob(const duet_rdma_conn_t *conn, uint8_t *buf, size_t *len)
{
    shm_ctx_t *s = conn->ctx->priv;
    duet__blob_header(buf, DUET__PROV_SHM, SHM_BLOB_LEN);
    duet__put32(buf + 8, (uint32_t)getpid());
    duet__put64(buf + 12, s->nonce);
    duet__put32(buf + 20, conn->id);
    *len = SHM_BLOB_LEN;
    return DUET_OK;
}

duet_status_t duet__shm_blob_decode(const void *blob, size_t len, int *pid, uint64_t *nonce,
                                    uint32_t *conn_id)
{
    duet_status_t st = duet__blob_check(blob, len, DUET__PROV_SHM, SHM_BLOB_LEN, "shm");
    if (st)
        return st;
    const uint8_t *p = blob;
    uint32_t v = duet__get32(p + 8);
    if (v == 0 || v > 0x3fffffff)
        return duet_errorf(DUET_ERR_INVALID, "rdma/shm: blob: bad pid %u at byte 8", v);
    *pid = (int)v;
    *nonce = duet__get64(p + 12);
    *conn_id = duet__get32(p + 20);
    return DUET_OK;
}

static bool pid_alive(int pidfd)
{
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    return poll(&p, 1, 0) == 0;
}

static duet_status_t shm_conn_connect(duet_rdma_conn_t *conn, const void *blob, size_t len)
{
    shm_conn_t *c = conn->priv;
    duet_status_t st = duet__shm_blob_decode(blob, len, &c->pid, &c->nonce, &c->peer_conn);
    if (st)
        return st;
    char name[64];
    seg_name(name, sizeof(name), c->pid, c->nonce, 0);
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0)
        return duet_errorf(errno == ENOENT ? DUET_ERR_CLOSED : DUET_ERR_IO,
                           "rdma/shm: peer segment %s: %s", name, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || (size_t)sb.st_size < sizeof(shm_ctl_t)) {
        close(fd);
        return duet_errorf(DUET_ERR_PROTOCOL, "rdma/shm: peer segment %s is too small", name);
    }
    c->ctl_size = (size_t)sb.st_size;
    c->ctl = mmap(NULL, c->ctl_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (c->ctl == MAP_FAILED) {
        c->ctl = NULL;
        return duet_errorf(DUET_ERR_IO, "rdma/shm: mmap %s: %s", name, strerror(errno));
    }
    uint32_t cap = c->ctl->ring_cap;
    if (__atomic_load_n(&c->ctl->magic, __ATOMIC_ACQUIRE) != SHM_MAGIC ||
        c->ctl->version != SHM_VERSION || c->ctl->pid != c->pid || cap == 0 || (cap & (cap - 1)) ||
        c->ctl_size < sizeof(shm_ctl_t) + (size_t)cap * sizeof(shm_cell_t)) {
        st = duet_errorf(DUET_ERR_PROTOCOL, "rdma/shm: peer segment %s has a bad header", name);
        goto err_unmap;
    }
    c->pidfd = (int)syscall(SYS_pidfd_open, c->pid, 0);
    if (c->pidfd < 0) {
        st = duet_errorf(DUET_ERR_CLOSED, "rdma/shm: peer pid %d: pidfd_open: %s", c->pid,
                         strerror(errno));
        goto err_unmap;
    }
    c->bell = (int)syscall(SYS_pidfd_getfd, c->pidfd, c->ctl->efd, 0);
    if (c->bell < 0) {
        st = duet_errorf(DUET_ERR_IO,
                         "rdma/shm: cannot borrow peer pid %d's doorbell (pidfd_getfd: %s); "
                         "shm peers must be allowed to ptrace each other",
                         c->pid, strerror(errno));
        goto err_close_pidfd;
    }
    return DUET_OK;

err_close_pidfd:
    close(c->pidfd);
    c->pidfd = -1;
err_unmap:
    munmap(c->ctl, c->ctl_size);
    c->ctl = NULL;
    return st;
}

static duet_status_t shm_conn_status(const duet_rdma_conn_t *conn)
{
    shm_conn_t *c = conn->priv;
    if (!c->dead && c->pidfd >= 0 && !pid_alive(c->pidfd))
        c->dead = duet_errorf(DUET_ERR_CLOSED, "rdma/shm: peer pid %d exited", c->pid);
    if (!c->dead && c->ctl && __atomic_load_n(&c->ctl->magic, __ATOMIC_ACQUIRE) != SHM_MAGIC)
        c->dead = duet_errorf(DUET_ERR_CLOSED, "rdma/shm: peer pid %d closed its context", c->pid);
    return c->dead;
}

static void shm_conn_close(duet_rdma_conn_t *conn)
{
    shm_conn_t *c = conn->priv;
    for (size_t i = 0; i < c->n_maps; i++)
        map_release(&c->maps[i]);
    if (c->ctl)
        munmap(c->ctl, c->ctl_size);
    if (c->bell >= 0)
        close(c->bell);
    if (c->pidfd >= 0)
        close(c->pidfd);
    duet_free(c);
}

/* The target of (key, off, len) in the peer, mapping its region once. */
static duet_status_t shm_target(shm_conn_t *c, uint64_t key, uint64_t off, size_t len,
                                uint8_t **out, bool *device)
{
    uint64_t idx = (key & 0xffffffffu) - 1;
    if (idx >= SHM_MAX_MR ||
        atomic_load_explicit(&c->ctl->mrs[idx].key, memory_order_acquire) != key)
        return duet_errorf(DUET_ERR_NOT_FOUND,
                           "rdma/shm: peer pid %d has no region with key 0x%llx", c->pid,
                           (unsigned long long)key);
    uint64_t rlen = c->ctl->mrs[idx].len;
    if (off > rlen || len > rlen - off)
        return duet_errorf(
            DUET_ERR_RANGE,
            "rdma/shm: write [%llu, +%zu) is outside peer region 0x%llx of %llu bytes",
            (unsigned long long)off, len, (unsigned long long)key, (unsigned long long)rlen);
    shm_map_t *m = NULL;
    for (size_t i = 0; i < c->n_maps; i++)
        if (c->maps[i].key == key)
            m = &c->maps[i];
    if (!m) {
        if (c->n_maps == SHM_MAX_MAPS) { /* evict the oldest mapping */
            map_release(&c->maps[0]);
            memmove(c->maps, c->maps + 1, (SHM_MAX_MAPS - 1) * sizeof(c->maps[0]));
            c->n_maps--;
        }
        if (c->ctl->mrs[idx].device) {
#if defined(DUET_RDMA_CUDA)
            cudaIpcMemHandle_t h;
            memcpy(&h, c->ctl->mrs[idx].ipc, sizeof(h));
            void *p = NULL;
            cudaError_t e = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
            if (e != cudaSuccess)
                return duet_errorf(DUET_ERR_DEVICE,
                                   "rdma/shm: cannot open peer pid %d's GPU region 0x%llx "
                                   "(device %d): cudaIpcOpenMemHandle: %s",
                                   c->pid, (unsigned long long)key, c->ctl->mrs[idx].gpu,
                                   cudaGetErrorString(e));
            m = &c->maps[c->n_maps++];
            *m = (shm_map_t){key, p, rlen, true};
            *out = m->base + off;
            *device = true;
            return DUET_OK;
#else
            return duet_errorf(DUET_ERR_UNSUPPORTED,
                               "rdma/shm: peer pid %d's region 0x%llx is GPU memory and this "
                               "build has no CUDA",
                               c->pid, (unsigned long long)key);
#endif
        }
        char name[80];
        seg_name(name, sizeof(name), c->pid, c->nonce, key);
        int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
        if (fd < 0)
            return duet_errorf(DUET_ERR_NOT_FOUND, "rdma/shm: peer region %s: %s", name,
                               strerror(errno));
        struct stat sb;
        void *p = MAP_FAILED;
        if (fstat(fd, &sb) == 0 && (uint64_t)sb.st_size >= rlen)
            p = mmap(NULL, rlen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (p == MAP_FAILED)
            return duet_errorf(DUET_ERR_PROTOCOL, "rdma/shm: cannot map peer region %s", name);
        m = &c->maps[c->n_maps++];
        *m = (shm_map_t){key, p, rlen, false};
    }
    *out = m->base + off;
    *device = m->device;
    return DUET_OK;
}

static void local_complete(duet_rdma_ctx_t *ctx, const duet_rdma_cqe_t *e)
{
    shm_ctx_t *s = ctx->priv;
    if (duet__cq_push(&s->local, e) != DUET_OK)
        DUET_LOG_E("rdma", "shm: lost a send completion (out of memory)");
    if (s->local_armed) {
        s->local_armed = false;
        uint64_t one = 1;
        if (write(s->efd, &one, sizeof(one)) < 0) { /* counter saturated: already readable */
        }
    }
}

static duet_status_t shm_write(duet_rdma_conn_t *conn, const duet_rdma_mr_t *src, size_t src_off,
                               const duet_rdma_rkey_t *dst, uint64_t dst_off, size_t len,
                               uint32_t imm, unsigned flags, uint64_t wr_id)
{
    shm_conn_t *c = conn->priv;
    duet_status_t st = shm_conn_status(conn);
    if (st)
        return duet_errorf(st, "rdma/shm: peer pid %d is gone", c->pid);
    duet_rdma_cqe_t done = {.kind = DUET_RDMA_CQE_SEND,
                            .imm = imm,
                            .len = len,
                            .wr_id = wr_id,
                            .conn = conn,
                            .conn_user = conn->user,
                            .conn_id = conn->id};
    uint8_t *target = NULL;
    bool dev_target = false;
    if (len && (st = shm_target(c, dst->key, dst_off, len, &target, &dev_target)) != DUET_OK) {
        done.status = st; /* the remote check failed: report it as RDMA would */
        local_complete(conn->ctx, &done);
        return DUET_OK;
    }
    /* Copy first, then reserve and publish the completion cell: a writer
     * that dies mid-copy (a large write takes a while) must not leave a
     * reserved, never-published cell that would stall the peer's ring for
     * every other writer. The window left is a few stores long. A full ring
     * refuses the write (AGAIN) after the copy; the retry copies again. */
    if (len && (dev_target || (src->access & DUET_RDMA_MEM_DEVICE))) {
#if defined(DUET_RDMA_CUDA)
        st = cuda_copy(conn->ctx->priv, target, (const uint8_t *)src->addr + src_off, len);
#else
        st = duet_errorf(DUET_ERR_UNSUPPORTED, "rdma/shm: a GPU copy in a build without CUDA");
#endif
        if (st) {
            done.status = st;
            local_complete(conn->ctx, &done);
            return DUET_OK;
        }
    } else if (len) {
        memcpy(target, (const uint8_t *)src->addr + src_off, len);
    }
    shm_ctl_t *ctl = c->ctl;
    uint64_t mask = ctl->ring_cap - 1;
    uint64_t pos = atomic_load_explicit(&ctl->tail, memory_order_relaxed);
    shm_cell_t *cell;
    for (;;) {
        cell = &ctl->ring[pos & mask];
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&ctl->tail, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed))
                break;
        } else if (dif < 0) {
            return duet_errorf(DUET_ERR_AGAIN, "rdma/shm: peer pid %d's completion ring is full",
                               c->pid);
        } else {
            pos = atomic_load_explicit(&ctl->tail, memory_order_relaxed);
        }
    }
    cell->conn_id = c->peer_conn;
    cell->imm = imm;
    cell->len = len;
    atomic_store_explicit(&cell->seq, pos + 1, memory_order_release);
    if (atomic_exchange_explicit(&ctl->armed, 0, memory_order_seq_cst)) {
        uint64_t one = 1;
        if (write(c->bell, &one, sizeof(one)) < 0) { /* saturated: already readable */
        }
    }
    local_complete(conn->ctx, &done);
    return DUET_OK;
}

static int shm_poll(duet_rdma_ctx_t *ctx, duet_rdma_cqe_t *out, int max)
{
    shm_ctx_t *s = ctx->priv;
    int n = duet__cq_pop(&s->local, out, max);
    shm_ctl_t *ctl = s->ctl;
    uint64_t mask = ctl->ring_cap - 1;
    while (n < max) {
        shm_cell_t *cell = &ctl->ring[ctl->head & mask];
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        if (seq != ctl->head + 1)
            break;
        duet_rdma_conn_t *conn = duet__rdma_conn_get(ctx, cell->conn_id);
        duet_rdma_cqe_t e = {.kind = DUET_RDMA_CQE_RECV,
                             .imm = cell->imm,
                             .len = cell->len,
                             .conn = conn,
                             .conn_user = conn ? conn->user : 0,
                             .conn_id = cell->conn_id};
        uint32_t conn_id = cell->conn_id;
        atomic_store_explicit(&cell->seq, ctl->head + ctl->ring_cap, memory_order_release);
        ctl->head++;
        if (conn)
            out[n++] = e;
        else /* its connection was destroyed: nobody waits for it */
            DUET_LOG_D("rdma", "shm: dropped a write for closed connection %u", conn_id);
    }
    return n;
}

static int shm_fd(const duet_rdma_ctx_t *ctx)
{
    return ((const shm_ctx_t *)ctx->priv)->efd;
}

static duet_status_t shm_arm(duet_rdma_ctx_t *ctx)
{
    shm_ctx_t *s = ctx->priv;
    uint64_t v;
    if (read(s->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        return duet_errorf(DUET_ERR_IO, "rdma/shm: eventfd read: %s", strerror(errno));
    s->local_armed = true;
    atomic_store_explicit(&s->ctl->armed, 1, memory_order_seq_cst);
    /* Completions that raced with arming: make the fd readable now. */
    shm_cell_t *cell = &s->ctl->ring[s->ctl->head & (s->ctl->ring_cap - 1)];
    if (s->local.count ||
        atomic_load_explicit(&cell->seq, memory_order_acquire) == s->ctl->head + 1) {
        uint64_t one = 1;
        if (write(s->efd, &one, sizeof(one)) < 0) {
        }
    }
    return DUET_OK;
}

void duet_rdma_shm_cleanup_pid(int pid)
{
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "duet-rdma.%d.", pid);
    DIR *d = opendir("/dev/shm");
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0) {
            char name[300];
            snprintf(name, sizeof(name), "/%s", de->d_name);
            shm_unlink(name);
        }
    }
    closedir(d);
}

const duet_rdma_ops_t duet__rdma_shm_ops = {
    .name = "shm",
    .ctx_open = shm_ctx_open,
    .ctx_close = shm_ctx_close,
    .mr_alloc = shm_mr_alloc,
    .mr_reg = shm_mr_reg,
    .mr_reg_dmabuf = duet__rdma_unsupported_dmabuf,
    .mr_dereg = shm_mr_dereg,
    .conn_open = shm_conn_open,
    .conn_blob = shm_conn_blob,
    .conn_connect = shm_conn_connect,
    .conn_status = shm_conn_status,
    .conn_close = shm_conn_close,
    .write = shm_write,
    .poll = shm_poll,
    .fd = shm_fd,
    .arm = shm_arm,
    .next_due_ns = NULL,
};
