/* Integration test of the verbs provider on a real RDMA device: two
 * contexts on the first device with an active port, connected over loopback
 * through their QPs, write 0 B .. 4 MiB with immediates and check the bytes.
 * Without a device it exits 77 (skipped) and says so. */
#include "rdma/rdma.h"

#include <infiniband/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, " (%s)\n", duet_error());                                                  \
        return 1;                                                                                  \
    } while (0)

static int wait_cqe(duet_rdma_ctx_t *ctx, duet_rdma_cqe_kind_t kind, duet_rdma_cqe_t *out)
{
    uint64_t deadline = duet_now_ns() + 5000000000ull;
    while (duet_now_ns() < deadline) {
        if (duet_rdma_poll(ctx, out, 1) == 1) {
            if (out->kind == kind)
                return 0;
            continue;
        }
        duet_rdma_wait(ctx, 10000000);
    }
    return -1;
}

int main(void)
{
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (list)
        ibv_free_device_list(list);
    duet_rdma_ctx_params_t p = {.provider = "verbs"};
    duet_rdma_ctx_t *a = NULL, *b = NULL;
    if (n == 0 || duet_rdma_ctx_create(&p, &a) != DUET_OK) {
        printf("no RDMA device found (ibv_get_device_list: %d devices, none with an active "
               "port): skipping\n",
               n);
        return 77;
    }
    if (duet_rdma_ctx_create(&p, &b) != DUET_OK)
        FAIL("second context");
    duet_rdma_conn_t *ab, *ba;
    uint8_t xa[DUET_RDMA_BLOB_MAX], xb[DUET_RDMA_BLOB_MAX];
    size_t la, lb;
    if (duet_rdma_conn_create(a, 1, &ab) || duet_rdma_conn_create(b, 2, &ba) ||
        duet_rdma_conn_blob(ab, xa, sizeof(xa), &la) ||
        duet_rdma_conn_blob(ba, xb, sizeof(xb), &lb) || duet_rdma_conn_connect(ab, xb, lb) ||
        duet_rdma_conn_connect(ba, xa, la))
        FAIL("connection set-up");
    const size_t big = 4u << 20;
    duet_rdma_mr_t *src, *dst;
    if (duet_rdma_mr_alloc(a, big, 0, &src) ||
        duet_rdma_mr_alloc(b, big, DUET_RDMA_ACCESS_REMOTE_WRITE, &dst))
        FAIL("registration");
    uint8_t *s = duet_rdma_mr_ptr(src);
    for (size_t i = 0; i < big; i++)
        s[i] = (uint8_t)(i * 31 + 7);
    duet_rdma_rkey_t rk = duet_rdma_mr_rkey(dst);
    for (size_t len = 0; len <= big; len = len ? len * 4 : 1) {
        duet_rdma_cqe_t e;
        if (duet_rdma_write(ab, src, 0, &rk, 0, len, (uint32_t)len, 0, len))
            FAIL("write %zu", len);
        if (wait_cqe(b, DUET_RDMA_CQE_RECV, &e) || e.imm != (uint32_t)len || e.len != len)
            FAIL("receive %zu", len);
        if (memcmp(duet_rdma_mr_ptr(dst), s, len) != 0)
            FAIL("bytes of %zu", len);
        if (wait_cqe(a, DUET_RDMA_CQE_SEND, &e) || e.status != DUET_OK)
            FAIL("send completion %zu", len);
    }
    duet_rdma_ctx_destroy(&a);
    duet_rdma_ctx_destroy(&b);
    printf("verbs device path OK\n");
    return 0;
}
