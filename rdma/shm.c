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

#define SHM_MAGIC 0x6d687364u /* "dshm" */
#define SHM_VERSION 1
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
} shm_ctx_t;

typedef struct shm_map {
    uint64_t key;
    uint8_t *base;
    size_t len;
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
} shm_mr_t;

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
    duet_free(s);
}

static duet_status_t shm_mr_alloc(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    shm_ctx_t *s = ctx->priv;
    if (mr->access & DUET_RDMA_MEM_DEVICE)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "rdma/shm: GPU memory is not supported");
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
    atomic_store_explicit(&s->ctl->mrs[idx].key, mr->rkey.key, memory_order_release);
    return DUET_OK;
}

static duet_status_t shm_mr_reg(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
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
    if (m->shared) {
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
        munmap(c->maps[i].base, c->maps[i].len);
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
                                uint8_t **out)
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
            munmap(c->maps[0].base, c->maps[0].len);
            memmove(c->maps, c->maps + 1, (SHM_MAX_MAPS - 1) * sizeof(c->maps[0]));
            c->n_maps--;
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
        *m = (shm_map_t){key, p, rlen};
    }
    *out = m->base + off;
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
    if (len && (st = shm_target(c, dst->key, dst_off, len, &target)) != DUET_OK) {
        done.status = st; /* the remote check failed: report it as RDMA would */
        local_complete(conn->ctx, &done);
        return DUET_OK;
    }
    /* Copy first, then reserve and publish the completion cell: a writer
     * that dies mid-copy (a large write takes a while) must not leave a
     * reserved, never-published cell that would stall the peer's ring for
     * every other writer. The window left is a few stores long. A full ring
     * refuses the write (AGAIN) after the copy; the retry copies again. */
    if (len)
        memcpy(target, (const uint8_t *)src->addr + src_off, len);
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
