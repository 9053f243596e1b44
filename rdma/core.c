/* rdma core: the provider registry, argument checks shared by every
 * provider, bookkeeping of regions and connections, and rkey/blob encoding.
 * The only place where provider #ifdefs appear outside their own files. */
#include "rdma/rdma_int.h"

#include <errno.h>
#include <poll.h>
#include <string.h>

static const duet_rdma_ops_t *const providers[] = {
    &duet__rdma_shm_ops,
    &duet__rdma_tcp_ops,
#ifdef DUET_HAVE_VERBS
    &duet__rdma_verbs_ops,
#endif
    &duet__rdma_sim_ops,
};

static const char *const provider_names[] = {
    "shm",   "tcp",
#ifdef DUET_HAVE_VERBS
    "verbs",
#endif
    "sim",   NULL,
};

const char *const *duet_rdma_providers(void)
{
    return provider_names;
}

static const duet_rdma_ops_t *find_provider(const char *name)
{
    for (size_t i = 0; name && i < DUET_ARRAY_LEN(providers); i++)
        if (strcmp(providers[i]->name, name) == 0)
            return providers[i];
    return NULL;
}

bool duet_rdma_provider_exists(const char *name)
{
    return find_provider(name) != NULL;
}

duet_status_t duet__rdma_unsupported_reg(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr)
{
    return duet_errorf(DUET_ERR_UNSUPPORTED,
                       "rdma/%s: registering caller memory for remote writes"
                       " is not supported (use duet_rdma_mr_alloc)",
                       ctx->ops->name);
}

duet_status_t duet__rdma_unsupported_dmabuf(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr, int fd,
                                            uint64_t offset, uint64_t iova)
{
    return duet_errorf(DUET_ERR_UNSUPPORTED, "rdma/%s: dma-buf registration is not supported",
                       ctx->ops->name);
}

duet_status_t duet_rdma_ctx_create(const duet_rdma_ctx_params_t *params, duet_rdma_ctx_t **ctx_out)
{
    if (!params || !ctx_out)
        return duet_errorf(DUET_ERR_INVALID, "rdma: ctx_create: NULL argument");
    const duet_rdma_ops_t *ops = find_provider(params->provider);
    if (!ops)
        return duet_errorf(DUET_ERR_NOT_FOUND, "rdma: provider '%s' is not built in",
                           params->provider ? params->provider : "(null)");
    duet_rdma_ctx_t *ctx = duet_calloc(1, sizeof(*ctx));
    if (!ctx)
        return duet_errorf(DUET_ERR_NOMEM, "rdma: out of memory");
    ctx->ops = ops;
    ctx->params = *params;
    if (!ctx->params.cq_depth)
        ctx->params.cq_depth = 32768;
    if (!ctx->params.max_write)
        ctx->params.max_write = 256;
    duet_status_t st = ops->ctx_open(ctx);
    if (st) {
        duet_free(ctx);
        return st;
    }
    *ctx_out = ctx;
    return DUET_OK;
}

void duet_rdma_ctx_destroy(duet_rdma_ctx_t **ctx_p)
{
    if (!ctx_p || !*ctx_p)
        return;
    duet_rdma_ctx_t *ctx = *ctx_p;
    for (size_t i = 0; i < ctx->n_conns; i++) {
        duet_rdma_conn_t *c = ctx->conns[i];
        duet_rdma_conn_destroy(&c);
    }
    for (size_t i = 0; i < ctx->n_mrs; i++) {
        duet_rdma_mr_t *m = ctx->mrs[i];
        duet_rdma_mr_dereg(&m);
    }
    ctx->ops->ctx_close(ctx);
    duet_free(ctx->conns);
    duet_free(ctx->mrs);
    duet_free(ctx);
    *ctx_p = NULL;
}

const char *duet_rdma_ctx_provider(const duet_rdma_ctx_t *ctx)
{
    return ctx->ops->name;
}

/* ---- memory ------------------------------------------------------------ */

duet_rdma_mr_t *duet__rdma_mr_get(const duet_rdma_ctx_t *ctx, uint64_t key)
{
    uint64_t idx = (key & 0xffffffffu);
    if (idx == 0 || idx > ctx->n_mrs)
        return NULL;
    duet_rdma_mr_t *mr = ctx->mrs[idx - 1];
    if (!mr || mr->rkey.key != key)
        return NULL;
    return mr;
}

static duet_status_t mr_new(duet_rdma_ctx_t *ctx, void *addr, size_t len, unsigned access,
                            duet_rdma_mr_t **mr_out)
{
    if (access & ~(unsigned)(DUET_RDMA_ACCESS_REMOTE_WRITE | DUET_RDMA_MEM_DEVICE))
        return duet_errorf(DUET_ERR_INVALID, "rdma: unknown access flags 0x%x", access);
    if (len == 0)
        return duet_errorf(DUET_ERR_INVALID, "rdma: cannot register 0 bytes");
    size_t slot = ctx->n_mrs;
    for (size_t i = 0; i < ctx->n_mrs; i++)
        if (!ctx->mrs[i]) {
            slot = i;
            break;
        }
    if (slot == ctx->n_mrs) {
        if (duet_vec_reserve((void **)&ctx->mrs, &ctx->cap_mrs, ctx->n_mrs + 1, sizeof(*ctx->mrs)))
            return duet_errorf(DUET_ERR_NOMEM, "rdma: out of memory");
        ctx->mrs[ctx->n_mrs++] = NULL;
    }
    duet_rdma_mr_t *mr = duet_calloc(1, sizeof(*mr));
    if (!mr)
        return duet_errorf(DUET_ERR_NOMEM, "rdma: out of memory");
    static uint32_t gen;
    mr->ctx = ctx;
    mr->addr = addr;
    mr->len = len;
    mr->access = access;
    mr->slot = (uint32_t)slot;
    mr->rkey.key = ((uint64_t)(__atomic_add_fetch(&gen, 1, __ATOMIC_RELAXED)) << 32) | (slot + 1);
    mr->rkey.len = len;
    *mr_out = mr;
    return DUET_OK;
}

static duet_status_t mr_finish(duet_rdma_ctx_t *ctx, duet_rdma_mr_t *mr, duet_status_t st,
                               duet_rdma_mr_t **mr_out)
{
    if (st) {
        duet_free(mr);
        return st;
    }
    ctx->mrs[mr->slot] = mr;
    *mr_out = mr;
    return DUET_OK;
}

duet_status_t duet_rdma_mr_alloc(duet_rdma_ctx_t *ctx, size_t len, unsigned access,
                                 duet_rdma_mr_t **mr_out)
{
    duet_rdma_mr_t *mr;
    duet_status_t st = mr_new(ctx, NULL, len, access, &mr);
    if (st)
        return st;
    return mr_finish(ctx, mr, ctx->ops->mr_alloc(ctx, mr), mr_out);
}

duet_status_t duet_rdma_mr_reg(duet_rdma_ctx_t *ctx, void *addr, size_t len, unsigned access,
                               duet_rdma_mr_t **mr_out)
{
    if (!addr)
        return duet_errorf(DUET_ERR_INVALID, "rdma: mr_reg: NULL address");
    duet_rdma_mr_t *mr;
    duet_status_t st = mr_new(ctx, addr, len, access, &mr);
    if (st)
        return st;
    return mr_finish(ctx, mr, ctx->ops->mr_reg(ctx, mr), mr_out);
}

duet_status_t duet_rdma_mr_reg_dmabuf(duet_rdma_ctx_t *ctx, int fd, uint64_t offset, size_t len,
                                      uint64_t iova, unsigned access, duet_rdma_mr_t **mr_out)
{
    if (fd < 0)
        return duet_errorf(DUET_ERR_INVALID, "rdma: mr_reg_dmabuf: bad fd %d", fd);
    duet_rdma_mr_t *mr;
    duet_status_t st = mr_new(ctx, NULL, len, access | DUET_RDMA_MEM_DEVICE, &mr);
    if (st)
        return st;
    return mr_finish(ctx, mr, ctx->ops->mr_reg_dmabuf(ctx, mr, fd, offset, iova), mr_out);
}

void duet_rdma_mr_dereg(duet_rdma_mr_t **mr_p)
{
    if (!mr_p || !*mr_p)
        return;
    duet_rdma_mr_t *mr = *mr_p;
    duet_rdma_ctx_t *ctx = mr->ctx;
    ctx->ops->mr_dereg(ctx, mr);
    ctx->mrs[mr->slot] = NULL;
    duet_free(mr);
    *mr_p = NULL;
}

void *duet_rdma_mr_ptr(const duet_rdma_mr_t *mr)
{
    return mr->addr;
}

size_t duet_rdma_mr_len(const duet_rdma_mr_t *mr)
{
    return mr->len;
}

duet_rdma_rkey_t duet_rdma_mr_rkey(const duet_rdma_mr_t *mr)
{
    return mr->rkey;
}

#define RKEY_MAGIC 0x79656b72u /* "rkey" */

void duet_rdma_rkey_pack(const duet_rdma_rkey_t *rkey, uint8_t out[DUET_RDMA_RKEY_WIRE])
{
    duet__put32(out, RKEY_MAGIC);
    duet__put16(out + 4, 1);
    duet__put16(out + 6, 0);
    duet__put64(out + 8, rkey->key);
    duet__put64(out + 16, rkey->base);
    duet__put64(out + 24, rkey->len);
}

duet_status_t duet_rdma_rkey_unpack(const void *buf, size_t len, duet_rdma_rkey_t *out)
{
    const uint8_t *p = buf;
    if (!buf || len != DUET_RDMA_RKEY_WIRE)
        return duet_errorf(DUET_ERR_INVALID, "rdma: rkey is %zu bytes, expected %d", len,
                           DUET_RDMA_RKEY_WIRE);
    if (duet__get32(p) != RKEY_MAGIC)
        return duet_errorf(DUET_ERR_INVALID, "rdma: rkey: bad magic 0x%08x at byte 0",
                           duet__get32(p));
    if (duet__get16(p + 4) != 1 || duet__get16(p + 6) != 0)
        return duet_errorf(DUET_ERR_INVALID, "rdma: rkey: unsupported version %u at byte 4",
                           duet__get16(p + 4));
    duet_rdma_rkey_t k = {duet__get64(p + 8), duet__get64(p + 16), duet__get64(p + 24)};
    if (k.base + k.len < k.base)
        return duet_errorf(DUET_ERR_INVALID, "rdma: rkey: base+len overflows");
    *out = k;
    return DUET_OK;
}

void duet__blob_header(uint8_t *p, uint8_t prov, uint8_t len)
{
    duet__put32(p, DUET_RDMA_BLOB_MAGIC);
    p[4] = DUET_RDMA_BLOB_VERSION;
    p[5] = prov;
    p[6] = len;
    p[7] = 0;
}

duet_status_t duet__blob_check(const void *blob, size_t len, uint8_t prov, size_t want,
                               const char *who)
{
    const uint8_t *p = blob;
    if (!blob || len < 8)
        return duet_errorf(DUET_ERR_INVALID, "rdma/%s: blob of %zu bytes is too short", who, len);
    if (duet__get32(p) != DUET_RDMA_BLOB_MAGIC)
        return duet_errorf(DUET_ERR_INVALID, "rdma/%s: blob: bad magic at byte 0", who);
    if (p[4] != DUET_RDMA_BLOB_VERSION)
        return duet_errorf(DUET_ERR_INVALID, "rdma/%s: blob: version %u, expected %u (byte 4)", who,
                           p[4], DUET_RDMA_BLOB_VERSION);
    if (p[5] != prov)
        return duet_errorf(DUET_ERR_INVALID,
                           "rdma/%s: blob is from provider #%u, not this one (byte 5)", who, p[5]);
    if (p[6] != len || len != want || p[7] != 0)
        return duet_errorf(DUET_ERR_INVALID, "rdma/%s: blob: length %zu (stated %u), expected %zu",
                           who, len, p[6], want);
    return DUET_OK;
}

/* ---- connections ------------------------------------------------------- */

duet_rdma_conn_t *duet__rdma_conn_get(const duet_rdma_ctx_t *ctx, uint32_t id)
{
    return id < ctx->n_conns ? ctx->conns[id] : NULL;
}

duet_status_t duet_rdma_conn_create(duet_rdma_ctx_t *ctx, uint64_t user,
                                    duet_rdma_conn_t **conn_out)
{
    /* Ids are never reused: a peer may still deliver into an id whose
     * connection was destroyed, and that must not reach a newer one. */
    size_t slot = ctx->n_conns;
    if (slot >= UINT32_MAX)
        return duet_errorf(DUET_ERR_CAPACITY, "rdma: connection ids exhausted");
    {
        if (duet_vec_reserve((void **)&ctx->conns, &ctx->cap_conns, ctx->n_conns + 1,
                             sizeof(*ctx->conns)))
            return duet_errorf(DUET_ERR_NOMEM, "rdma: out of memory");
        ctx->conns[ctx->n_conns++] = NULL;
    }
    duet_rdma_conn_t *c = duet_calloc(1, sizeof(*c));
    if (!c)
        return duet_errorf(DUET_ERR_NOMEM, "rdma: out of memory");
    c->ctx = ctx;
    c->id = (uint32_t)slot;
    c->user = user;
    duet_status_t st = ctx->ops->conn_open(ctx, c);
    if (st) {
        duet_free(c);
        return st;
    }
    ctx->conns[slot] = c;
    *conn_out = c;
    return DUET_OK;
}

duet_status_t duet_rdma_conn_blob(const duet_rdma_conn_t *conn, void *buf, size_t cap,
                                  size_t *len_out)
{
    uint8_t tmp[DUET_RDMA_BLOB_MAX];
    size_t len = 0;
    duet_status_t st = conn->ctx->ops->conn_blob(conn, tmp, &len);
    if (st)
        return st;
    if (len > cap)
        return duet_errorf(DUET_ERR_RANGE, "rdma: blob needs %zu bytes, buffer has %zu", len, cap);
    memcpy(buf, tmp, len);
    *len_out = len;
    return DUET_OK;
}

duet_status_t duet_rdma_conn_connect(duet_rdma_conn_t *conn, const void *blob, size_t len)
{
    if (conn->connected)
        return duet_errorf(DUET_ERR_INVALID, "rdma: connection %u is already connected", conn->id);
    duet_status_t st = conn->ctx->ops->conn_connect(conn, blob, len);
    if (st == DUET_OK)
        conn->connected = true;
    return st;
}

duet_status_t duet_rdma_conn_status(const duet_rdma_conn_t *conn)
{
    if (!conn->connected)
        return DUET_ERR_AGAIN;
    return conn->ctx->ops->conn_status(conn);
}

uint64_t duet_rdma_conn_user(const duet_rdma_conn_t *conn)
{
    return conn->user;
}

void duet_rdma_conn_destroy(duet_rdma_conn_t **conn_p)
{
    if (!conn_p || !*conn_p)
        return;
    duet_rdma_conn_t *c = *conn_p;
    c->ctx->ops->conn_close(c);
    c->ctx->conns[c->id] = NULL;
    duet_free(c);
    *conn_p = NULL;
}

/* ---- data path --------------------------------------------------------- */

duet_status_t duet__rdma_write_check(const duet_rdma_conn_t *conn, const duet_rdma_mr_t *src,
                                     size_t src_off, const duet_rdma_rkey_t *dst, uint64_t dst_off,
                                     size_t len)
{
    if (!conn->connected)
        return duet_errorf(DUET_ERR_INVALID, "rdma: write on connection %u before connect",
                           conn->id);
    if (len == 0)
        return DUET_OK;
    if (!src || !dst)
        return duet_errorf(DUET_ERR_INVALID, "rdma: write of %zu bytes needs a source and a key",
                           len);
    if (src->ctx != conn->ctx)
        return duet_errorf(DUET_ERR_INVALID,
                           "rdma: source region is registered on another context");
    if (src_off > src->len || len > src->len - src_off)
        return duet_errorf(DUET_ERR_RANGE,
                           "rdma: source [%zu, +%zu) is outside its %zu-byte region", src_off, len,
                           src->len);
    if (dst_off > dst->len || len > dst->len - dst_off)
        return duet_errorf(DUET_ERR_RANGE,
                           "rdma: write [%llu, +%zu) is outside the remote %llu-byte region",
                           (unsigned long long)dst_off, len, (unsigned long long)dst->len);
    return DUET_OK;
}

duet_status_t duet_rdma_write(duet_rdma_conn_t *conn, const duet_rdma_mr_t *src, size_t src_off,
                              const duet_rdma_rkey_t *dst, uint64_t dst_off, size_t len,
                              uint32_t imm, unsigned flags, uint64_t wr_id)
{
    duet_status_t st = duet__rdma_write_check(conn, src, src_off, dst, dst_off, len);
    if (st)
        return st;
    if (flags & ~(unsigned)DUET_RDMA_WRITE_URGENT)
        return duet_errorf(DUET_ERR_INVALID, "rdma: unknown write flags 0x%x", flags);
    return conn->ctx->ops->write(conn, src, src_off, dst, dst_off, len, imm, flags, wr_id);
}

int duet_rdma_poll(duet_rdma_ctx_t *ctx, duet_rdma_cqe_t *out, int max)
{
    if (max <= 0)
        return 0;
    for (;;) {
        int n = ctx->ops->poll(ctx, out, max);
        if (n <= 0)
            return n;
        /* Resolve the connection by id here, so a completion that outlived
         * its connection is dropped instead of naming freed memory. */
        int k = 0;
        for (int i = 0; i < n; i++) {
            duet_rdma_conn_t *c = duet__rdma_conn_get(ctx, out[i].conn_id);
            if (!c)
                continue;
            out[k] = out[i];
            out[k].conn = c;
            out[k].conn_user = c->user;
            k++;
        }
        if (k > 0 || n < max)
            return k;
    }
}

int duet_rdma_fd(const duet_rdma_ctx_t *ctx)
{
    return ctx->ops->fd(ctx);
}

duet_status_t duet_rdma_arm(duet_rdma_ctx_t *ctx)
{
    return ctx->ops->arm(ctx);
}

duet_status_t duet_rdma_wait(duet_rdma_ctx_t *ctx, int64_t timeout_ns)
{
    duet_status_t st = duet_rdma_arm(ctx);
    if (st)
        return st;
    int64_t due = ctx->ops->next_due_ns ? ctx->ops->next_due_ns(ctx) : -1;
    int64_t t = timeout_ns;
    if (due >= 0 && (t < 0 || due < t))
        t = due;
    int ms = t < 0 ? -1 : (int)((t + 999999) / 1000000);
    struct pollfd pfd = {.fd = duet_rdma_fd(ctx), .events = POLLIN};
    int rc;
    do
        rc = poll(&pfd, 1, ms);
    while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return duet_errorf(DUET_ERR_IO, "rdma: poll: %s", strerror(errno));
    return rc == 0 && t == timeout_ns ? DUET_ERR_TIMEOUT : DUET_OK;
}

/* ---- a process-local completion FIFO ------------------------------------ */

duet_status_t duet__cq_push(duet__cq_t *q, const duet_rdma_cqe_t *e)
{
    if (q->count == q->cap) {
        size_t ncap = q->cap ? q->cap * 2 : 64;
        duet_rdma_cqe_t *n = duet_calloc(ncap, sizeof(*n));
        if (!n)
            return DUET_ERR_NOMEM;
        for (size_t i = 0; i < q->count; i++)
            n[i] = q->e[(q->head + i) % q->cap];
        duet_free(q->e);
        q->e = n;
        q->cap = ncap;
        q->head = 0;
    }
    q->e[(q->head + q->count) % q->cap] = *e;
    q->count++;
    return DUET_OK;
}

int duet__cq_pop(duet__cq_t *q, duet_rdma_cqe_t *out, int max)
{
    int n = 0;
    while (n < max && q->count) {
        out[n++] = q->e[q->head];
        q->head = (q->head + 1) % q->cap;
        q->count--;
    }
    return n;
}

void duet__cq_cleanup(duet__cq_t *q)
{
    duet_free(q->e);
    memset(q, 0, sizeof(*q));
}
