/* One-sided writes over one provider (argv[1]): sizes 0 B .. 8 MiB land
 * intact at the right offsets with the right immediates, order holds, keys
 * and bounds are enforced, blobs are validated, the fd wakes a poll loop,
 * and a dead peer fails its writes while another peer keeps working. */
#include "harness.h"

#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define SEC 1000000000ll
#define BIG (8u << 20)

typedef struct pair {
    duet_rdma_ctx_t *a, *b;
    duet_rdma_conn_t *ab, *ba; /* a's connection to b, b's to a */
    duet_rdma_mr_t *src, *dst;
} pair_t;

static void connect_pair(duet_rdma_conn_t *x, duet_rdma_conn_t *y)
{
    uint8_t bx[DUET_RDMA_BLOB_MAX], by[DUET_RDMA_BLOB_MAX];
    size_t lx, ly;
    assert_int_equal(duet_rdma_conn_blob(x, bx, sizeof(bx), &lx), DUET_OK);
    assert_int_equal(duet_rdma_conn_blob(y, by, sizeof(by), &ly), DUET_OK);
    assert_true(lx <= DUET_RDMA_BLOB_MAX && ly <= DUET_RDMA_BLOB_MAX);
    assert_int_equal(duet_rdma_conn_connect(x, by, ly), DUET_OK);
    assert_int_equal(duet_rdma_conn_connect(y, bx, lx), DUET_OK);
}

static int setup(void **state)
{
    pair_t *p = calloc(1, sizeof(*p));
    th_stash_reset();
    p->a = th_ctx();
    p->b = th_ctx();
    assert_non_null(p->a);
    assert_non_null(p->b);
    assert_int_equal(duet_rdma_conn_create(p->a, 0xA, &p->ab), DUET_OK);
    assert_int_equal(duet_rdma_conn_create(p->b, 0xB, &p->ba), DUET_OK);
    connect_pair(p->ab, p->ba);
    assert_int_equal(duet_rdma_mr_alloc(p->a, BIG, DUET_RDMA_ACCESS_LOCAL, &p->src), DUET_OK);
    assert_int_equal(duet_rdma_mr_alloc(p->b, BIG + 4096, DUET_RDMA_ACCESS_REMOTE_WRITE, &p->dst),
                     DUET_OK);
    th_fill(duet_rdma_mr_ptr(p->src), BIG, 42);
    *state = p;
    return 0;
}

static int teardown(void **state)
{
    pair_t *p = *state;
    duet_rdma_ctx_destroy(&p->a);
    duet_rdma_ctx_destroy(&p->b);
    assert_null(p->a);
    free(p);
    return 0;
}

static void test_sizes(void **state)
{
    pair_t *p = *state;
    static const size_t sizes[] = {0, 1, 7, 4096, 65537, 256 * 1024, (1u << 20) + 3, BIG};
    duet_rdma_rkey_t rk = duet_rdma_mr_rkey(p->dst);
    uint8_t *dst = duet_rdma_mr_ptr(p->dst);
    for (size_t i = 0; i < DUET_ARRAY_LEN(sizes); i++) {
        size_t len = sizes[i], soff = (i * 13) % 64, doff = (i * 131) % 4096;
        if (len + soff > BIG)
            soff = 0;
        memset(dst, 0xEE, BIG + 4096);
        uint32_t imm = 0xC0DE0000u + (uint32_t)i;
        assert_int_equal(duet_rdma_write(p->ab, p->src, soff, &rk, doff, len, imm, 0, 100 + i),
                         DUET_OK);
        duet_rdma_cqe_t e;
        assert_true(th_wait_cqe(p->b, DUET_RDMA_CQE_RECV, &e, 10 * SEC));
        assert_int_equal(e.status, DUET_OK);
        assert_int_equal(e.imm, imm);
        assert_int_equal(e.len, len);
        assert_ptr_equal(e.conn, p->ba);
        assert_int_equal(e.conn_user, 0xB);
        /* exact bytes, and nothing written around them */
        const uint8_t *want = (const uint8_t *)duet_rdma_mr_ptr(p->src) + soff;
        assert_int_equal(duet_hash_bytes(dst + doff, len), duet_hash_bytes(want, len));
        assert_memory_equal(dst + doff, want, len);
        if (doff)
            assert_int_equal(dst[doff - 1], 0xEE);
        assert_int_equal(dst[doff + len], 0xEE);
        assert_true(th_wait_cqe(p->a, DUET_RDMA_CQE_SEND, &e, 10 * SEC));
        assert_int_equal(e.status, DUET_OK);
        assert_int_equal(e.wr_id, 100 + i);
        assert_int_equal(e.imm, imm);
        assert_int_equal(e.len, len);
        assert_ptr_equal(e.conn, p->ab);
        assert_int_equal(e.conn_user, 0xA);
    }
}

static void test_order_and_urgent(void **state)
{
    pair_t *p = *state;
    duet_rdma_rkey_t rk = duet_rdma_mr_rkey(p->dst);
    const int n = 100;
    for (int i = 0; i < n; i++) {
        duet_status_t st;
        while ((st = duet_rdma_write(p->ab, p->src, (size_t)i * 1000, &rk, (size_t)i * 1000, 1000,
                                     (uint32_t)i, 0, (uint64_t)i)) == DUET_ERR_AGAIN) {
            duet_rdma_cqe_t e;
            assert_true(th_wait_cqe(p->a, DUET_RDMA_CQE_SEND, &e, 10 * SEC));
        }
        assert_int_equal(st, DUET_OK);
    }
    for (int i = 0; i < n; i++) {
        duet_rdma_cqe_t e;
        assert_true(th_wait_cqe(p->b, DUET_RDMA_CQE_RECV, &e, 10 * SEC));
        assert_int_equal(e.imm, (uint32_t)i); /* in posting order */
    }
    assert_memory_equal(duet_rdma_mr_ptr(p->dst), duet_rdma_mr_ptr(p->src), (size_t)n * 1000);
    /* an urgent write behind a big one still arrives, intact */
    assert_int_equal(duet_rdma_write(p->ab, p->src, 0, &rk, 0, BIG, 1, 0, 1), DUET_OK);
    assert_int_equal(duet_rdma_write(p->ab, NULL, 0, NULL, 0, 0, 2, DUET_RDMA_WRITE_URGENT, 2),
                     DUET_OK);
    bool got1 = false, got2 = false;
    for (int k = 0; k < 2; k++) {
        duet_rdma_cqe_t e;
        assert_true(th_wait_cqe(p->b, DUET_RDMA_CQE_RECV, &e, 10 * SEC));
        got1 |= e.imm == 1 && e.len == BIG;
        got2 |= e.imm == 2 && e.len == 0;
    }
    assert_true(got1 && got2);
    assert_memory_equal(duet_rdma_mr_ptr(p->dst), duet_rdma_mr_ptr(p->src), BIG);
}

/* Expect the write to be refused: synchronously, or by a failed SEND
 * completion; either way nothing arrives and the memory is untouched. */
static void expect_refused(pair_t *p, const duet_rdma_rkey_t *rk, uint64_t off, size_t len)
{
    uint8_t *dst = duet_rdma_mr_ptr(p->dst);
    memset(dst, 0x11, BIG + 4096);
    duet_status_t st = duet_rdma_write(p->ab, p->src, 0, rk, off, len, 77, 0, 77);
    if (st == DUET_OK) {
        duet_rdma_cqe_t e;
        assert_true(th_wait_cqe(p->a, DUET_RDMA_CQE_SEND, &e, 10 * SEC));
        st = e.status;
        assert_int_equal(e.wr_id, 77);
    }
    assert_true(st == DUET_ERR_RANGE || st == DUET_ERR_NOT_FOUND);
    duet_rdma_cqe_t e;
    assert_false(th_wait_cqe(p->b, DUET_RDMA_CQE_RECV, &e, SEC / 20));
    for (size_t i = 0; i < BIG + 4096; i += 4093)
        assert_int_equal(dst[i], 0x11);
}

static void test_bounds(void **state)
{
    pair_t *p = *state;
    duet_rdma_rkey_t rk = duet_rdma_mr_rkey(p->dst);
    /* honest key, range past the end: the sender refuses at once */
    assert_int_equal(duet_rdma_write(p->ab, p->src, 0, &rk, rk.len - 10, 11, 0, 0, 0),
                     DUET_ERR_RANGE);
    assert_int_equal(duet_rdma_write(p->ab, p->src, BIG - 1, &rk, 0, 2, 0, 0, 0), DUET_ERR_RANGE);
    /* a key that lies about its length: the receiver side refuses */
    duet_rdma_rkey_t big = rk;
    big.len = rk.len * 4;
    expect_refused(p, &big, rk.len - 100, 4096);
}

static void test_bad_key(void **state)
{
    pair_t *p = *state;
    duet_rdma_rkey_t rk = duet_rdma_mr_rkey(p->dst);
    rk.key ^= 0x5500;
    expect_refused(p, &rk, 0, 4096);
    /* a deregistered region is a bad key too */
    pair_t q = *p;
    duet_rdma_mr_t *gone;
    assert_int_equal(duet_rdma_mr_alloc(p->b, 8192, DUET_RDMA_ACCESS_REMOTE_WRITE, &gone), DUET_OK);
    duet_rdma_rkey_t gk = duet_rdma_mr_rkey(gone);
    duet_rdma_mr_dereg(&gone);
    assert_null(gone);
    if (strcmp(th_prov.name, "verbs-emu") == 0) {
        /* the first refusal moved this QP to the error state, as on an HCA */
        assert_int_not_equal(duet_rdma_conn_status(p->ab), DUET_OK);
        return;
    }
    expect_refused(&q, &gk, 0, 100);
}

static void test_rkey_and_blobs(void **state)
{
    pair_t *p = *state;
    duet_rdma_rkey_t rk = duet_rdma_mr_rkey(p->dst), back;
    uint8_t w[DUET_RDMA_RKEY_WIRE];
    duet_rdma_rkey_pack(&rk, w);
    assert_int_equal(duet_rdma_rkey_unpack(w, sizeof(w), &back), DUET_OK);
    assert_memory_equal(&rk, &back, sizeof(rk));
    assert_int_equal(duet_rdma_rkey_unpack(w, sizeof(w) - 1, &back), DUET_ERR_INVALID);
    w[0] ^= 1;
    assert_int_equal(duet_rdma_rkey_unpack(w, sizeof(w), &back), DUET_ERR_INVALID);

    duet_rdma_conn_t *c;
    assert_int_equal(duet_rdma_conn_create(p->a, 1, &c), DUET_OK);
    uint8_t blob[DUET_RDMA_BLOB_MAX];
    size_t len;
    assert_int_equal(duet_rdma_conn_blob(p->ba, blob, sizeof(blob), &len), DUET_OK);
    uint8_t bad[DUET_RDMA_BLOB_MAX];
    memcpy(bad, blob, len);
    assert_int_equal(duet_rdma_conn_connect(c, bad, len - 1), DUET_ERR_INVALID);
    bad[0] ^= 0xff;
    assert_int_equal(duet_rdma_conn_connect(c, bad, len), DUET_ERR_INVALID);
    memcpy(bad, blob, len);
    bad[5] = bad[5] == 2 ? 1 : 2; /* another provider's blob */
    assert_int_equal(duet_rdma_conn_connect(c, bad, len), DUET_ERR_INVALID);
    assert_int_equal(duet_rdma_conn_connect(c, "garbage", 7), DUET_ERR_INVALID);
    /* writing before connecting is refused */
    assert_int_equal(duet_rdma_write(c, NULL, 0, NULL, 0, 0, 0, 0, 0), DUET_ERR_INVALID);
    duet_rdma_conn_destroy(&c);
    assert_null(c);
    duet_rdma_conn_destroy(&c); /* NULL is fine */
    assert_int_equal(duet_rdma_mr_reg_dmabuf(p->a, -1, 0, 4096, 0, 0, &p->src), DUET_ERR_INVALID);
}

static void test_fd_wakes(void **state)
{
    pair_t *p = *state;
    duet_rdma_cqe_t e[8];
    while (duet_rdma_poll(p->b, e, 8) > 0) {
    }
    assert_int_equal(duet_rdma_arm(p->b), DUET_OK);
    assert_int_equal(duet_rdma_poll(p->b, e, 8), 0);
    struct pollfd pfd = {.fd = duet_rdma_fd(p->b), .events = POLLIN};
    assert_true(pfd.fd >= 0);
    assert_int_equal(poll(&pfd, 1, 0), 0); /* nothing yet */
    duet_rdma_rkey_t rk = duet_rdma_mr_rkey(p->dst);
    assert_int_equal(duet_rdma_write(p->ab, p->src, 0, &rk, 0, 64, 9, 0, 9), DUET_OK);
    if (strcmp(th_prov.name, "sim") == 0)
        duet_rdma_sim_progress(th_sim); /* nobody polls: deliver by hand */
    assert_int_equal(poll(&pfd, 1, 5000), 1);
    assert_true(pfd.revents & POLLIN);
    duet_rdma_cqe_t r;
    assert_true(th_wait_cqe(p->b, DUET_RDMA_CQE_RECV, &r, SEC));
    assert_int_equal(r.imm, 9);
}

/* a is connected to b and to c; c goes away. */
static void test_dead_peer(void **state)
{
    pair_t *p = *state;
    duet_rdma_ctx_t *c = th_ctx();
    assert_non_null(c);
    duet_rdma_conn_t *ac, *ca;
    assert_int_equal(duet_rdma_conn_create(p->a, 0xAC, &ac), DUET_OK);
    assert_int_equal(duet_rdma_conn_create(c, 0xCA, &ca), DUET_OK);
    connect_pair(ac, ca);
    duet_rdma_mr_t *cdst;
    assert_int_equal(duet_rdma_mr_alloc(c, 4096, DUET_RDMA_ACCESS_REMOTE_WRITE, &cdst), DUET_OK);
    duet_rdma_rkey_t crk = duet_rdma_mr_rkey(cdst), brk = duet_rdma_mr_rkey(p->dst);
    duet_rdma_cqe_t e;
    assert_int_equal(duet_rdma_write(ac, p->src, 0, &crk, 0, 4096, 5, 0, 5), DUET_OK);
    assert_true(th_wait_cqe(c, DUET_RDMA_CQE_RECV, &e, 5 * SEC));
    assert_true(th_wait_cqe(p->a, DUET_RDMA_CQE_SEND, &e, 5 * SEC));
    assert_int_equal(e.status, DUET_OK);

    duet_rdma_ctx_destroy(&c);
    /* writes to c fail (now or in their completion) with CLOSED */
    duet_status_t st = DUET_OK;
    uint64_t deadline = duet_now_ns() + 5 * SEC;
    while (st == DUET_OK && duet_now_ns() < deadline) {
        st = duet_rdma_write(ac, p->src, 0, &crk, 0, 4096, 6, 0, 6);
        if (st == DUET_OK) {
            assert_true(th_wait_cqe(p->a, DUET_RDMA_CQE_SEND, &e, 5 * SEC));
            assert_int_equal(e.wr_id, 6);
            st = e.status;
        }
    }
    assert_int_equal(st, DUET_ERR_CLOSED);
    assert_int_equal(duet_rdma_conn_status(ac), DUET_ERR_CLOSED);
    /* ... and b is unaffected */
    assert_int_equal(duet_rdma_conn_status(p->ab), DUET_OK);
    assert_int_equal(duet_rdma_write(p->ab, p->src, 0, &brk, 0, 4096, 7, 0, 7), DUET_OK);
    assert_true(th_wait_cqe(p->b, DUET_RDMA_CQE_RECV, &e, 5 * SEC));
    assert_int_equal(e.imm, 7);
    assert_memory_equal(duet_rdma_mr_ptr(p->dst), duet_rdma_mr_ptr(p->src), 4096);
    assert_true(th_wait_cqe(p->a, DUET_RDMA_CQE_SEND, &e, 5 * SEC));
    assert_int_equal(e.status, DUET_OK);
    assert_int_equal(e.wr_id, 7);

    /* connecting with the blob of a context that is gone fails with CLOSED
     * (verbs only finds out on the first write, as RC does) */
    duet_rdma_ctx_t *d = th_ctx();
    duet_rdma_conn_t *dc, *ad;
    uint8_t blob[DUET_RDMA_BLOB_MAX];
    size_t len;
    assert_int_equal(duet_rdma_conn_create(d, 0, &dc), DUET_OK);
    assert_int_equal(duet_rdma_conn_blob(dc, blob, sizeof(blob), &len), DUET_OK);
    duet_rdma_ctx_destroy(&d);
    assert_int_equal(duet_rdma_conn_create(p->a, 0xAD, &ad), DUET_OK);
    st = duet_rdma_conn_connect(ad, blob, len);
    if (st == DUET_OK) {
        st = duet_rdma_write(ad, NULL, 0, NULL, 0, 0, 1, 0, 1);
        if (st == DUET_OK) {
            assert_true(th_wait_cqe(p->a, DUET_RDMA_CQE_SEND, &e, 5 * SEC));
            st = e.status;
        }
    }
    assert_int_equal(st, DUET_ERR_CLOSED);
}

/* Connections come and go on long-lived contexts; ids are not reused, so a
 * late write for a destroyed connection never reaches a new one. */
static void test_reconnect(void **state)
{
    pair_t *p = *state;
    duet_rdma_rkey_t rk = duet_rdma_mr_rkey(p->dst);
    for (int round = 0; round < 3; round++) {
        assert_int_equal(duet_rdma_write(p->ab, p->src, 0, &rk, 0, 4096, 100 + round, 0, 1),
                         DUET_OK);
        duet_rdma_cqe_t e;
        assert_true(th_wait_cqe(p->b, DUET_RDMA_CQE_RECV, &e, 5 * SEC));
        assert_int_equal(e.imm, 100 + round);
        assert_ptr_equal(e.conn, p->ba);
        assert_true(th_wait_cqe(p->a, DUET_RDMA_CQE_SEND, &e, 5 * SEC));
        assert_int_equal(e.status, DUET_OK);
        /* b still returns a write on the old connection, then both go */
        assert_int_equal(duet_rdma_write(p->ba, NULL, 0, NULL, 0, 0, 7, 0, 2), DUET_OK);
        assert_true(th_wait_cqe(p->b, DUET_RDMA_CQE_SEND, &e, 5 * SEC));
        duet_rdma_conn_destroy(&p->ab);
        th_stash_reset();
        duet_rdma_conn_destroy(&p->ba);
        assert_int_equal(duet_rdma_conn_create(p->a, 0xA, &p->ab), DUET_OK);
        assert_int_equal(duet_rdma_conn_create(p->b, 0xB, &p->ba), DUET_OK);
        connect_pair(p->ab, p->ba);
    }
    duet_rdma_cqe_t e;
    assert_int_equal(duet_rdma_write(p->ab, p->src, 0, &rk, 0, 64, 5, 0, 5), DUET_OK);
    assert_true(th_wait_cqe(p->b, DUET_RDMA_CQE_RECV, &e, 5 * SEC));
    assert_int_equal(e.imm, 5);
    assert_ptr_equal(e.conn, p->ba);
    assert_int_equal(duet_rdma_conn_status(p->ab), DUET_OK);
    assert_int_equal(duet_rdma_conn_status(p->ba), DUET_OK);
}

/* Ranks: 0 writes to 1 and 2; 2 is killed (SIGKILL for process providers,
 * loss of its context for in-process ones). 0's writes to 2 fail with
 * CLOSED, its writes to 1 keep landing intact. */
static int kill_rank(int rank, th_board_t *b, void *arg)
{
    duet_rdma_ctx_t *ctx = th_ctx();
    TH_CHECK(ctx);
    duet_rdma_conn_t *conn[3] = {0};
    duet_rdma_mr_t *mr;
    TH_CHECK(duet_rdma_mr_alloc(ctx, 1 << 20, rank ? DUET_RDMA_ACCESS_REMOTE_WRITE : 0, &mr) ==
             DUET_OK);
    int peers[2] = {rank == 0 ? 1 : 0, 2};
    int np = rank == 0 ? 2 : 1;
    for (int i = 0; i < np; i++) {
        int pr = peers[i];
        TH_CHECK(duet_rdma_conn_create(ctx, (uint64_t)pr, &conn[pr]) == DUET_OK);
        size_t len;
        TH_CHECK(duet_rdma_conn_blob(conn[pr], b->info[rank][pr], TH_INFO_MAX, &len) == DUET_OK);
        b->info_len[rank][pr] = (uint32_t)len;
    }
    if (rank) { /* publish the region's key */
        duet_rdma_rkey_t k = duet_rdma_mr_rkey(mr);
        duet_rdma_rkey_pack(&k, b->info[rank][rank]);
    }
    th_barrier(b);
    for (int i = 0; i < np; i++) {
        int pr = peers[i];
        TH_CHECK(duet_rdma_conn_connect(conn[pr], b->info[pr][rank], b->info_len[pr][rank]) ==
                 DUET_OK);
    }
    th_barrier(b);
    if (rank == 2) {
        th_die(b, rank); /* processes end here */
        duet_rdma_ctx_destroy(&ctx);
        return 0;
    }
    if (rank == 1) {
        /* expect 3 writes from rank 0, intact */
        for (int k = 0; k < 3; k++) {
            duet_rdma_cqe_t e;
            TH_CHECK(th_wait_cqe(ctx, DUET_RDMA_CQE_RECV, &e, 10 * SEC));
            TH_CHECK(e.imm == (uint32_t)k && e.len == 65536);
            TH_CHECK(th_check((uint8_t *)duet_rdma_mr_ptr(mr) + k * 65536, 65536, (uint64_t)k));
        }
        while (!th_flag_get(b, 1)) /* rank 0 saw its writes complete (tcp: our ACKs) */
            usleep(1000);
        duet_rdma_ctx_destroy(&ctx);
        return 0;
    }
    duet_rdma_rkey_t k1, k2;
    TH_CHECK(duet_rdma_rkey_unpack(b->info[1][1], DUET_RDMA_RKEY_WIRE, &k1) == DUET_OK);
    TH_CHECK(duet_rdma_rkey_unpack(b->info[2][2], DUET_RDMA_RKEY_WIRE, &k2) == DUET_OK);
    uint8_t *src = duet_rdma_mr_ptr(mr);
    for (int k = 0; k < 3; k++)
        th_fill(src + k * 65536, 65536, (uint64_t)k);
    duet_rdma_cqe_t e;
    TH_CHECK(duet_rdma_write(conn[1], mr, 0, &k1, 0, 65536, 0, 0, 0) == DUET_OK);
    TH_CHECK(th_wait_cqe(ctx, DUET_RDMA_CQE_SEND, &e, 10 * SEC) && e.status == DUET_OK);
    /* rank 2 is gone (or going): writes to it fail, within a few seconds */
    duet_status_t st = DUET_OK;
    uint64_t deadline = duet_now_ns() + 10 * SEC;
    while (st == DUET_OK && duet_now_ns() < deadline) {
        st = duet_rdma_write(conn[2], mr, 0, &k2, 0, 4096, 9, 0, 9);
        if (st == DUET_OK) {
            TH_CHECK(th_wait_cqe(ctx, DUET_RDMA_CQE_SEND, &e, 10 * SEC));
            st = e.status;
            if (st == DUET_OK)
                usleep(1000); /* not dead yet */
        }
    }
    TH_CHECK(st == DUET_ERR_CLOSED);
    TH_CHECK(duet_rdma_conn_status(conn[2]) == DUET_ERR_CLOSED);
    TH_CHECK(duet_rdma_conn_status(conn[1]) == DUET_OK);
    for (int k = 1; k < 3; k++) {
        TH_CHECK(duet_rdma_write(conn[1], mr, (size_t)k * 65536, &k1, (uint64_t)k * 65536, 65536,
                                 (uint32_t)k, 0, (uint64_t)k) == DUET_OK);
        TH_CHECK(th_wait_cqe(ctx, DUET_RDMA_CQE_SEND, &e, 10 * SEC) && e.status == DUET_OK);
    }
    th_flag_set(b, 1, 1);
    duet_rdma_ctx_destroy(&ctx);
    return 0;
}

static void test_killed_peer(void **state)
{
    assert_int_equal(th_run_ranks(3, kill_rank, NULL), 0);
}

int main(int argc, char **argv)
{
    th_init(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_and_urgent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rkey_and_blobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fd_wakes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_peer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect, setup, teardown),
        cmocka_unit_test(test_killed_peer),
    };
    int rc = cmocka_run_group_tests_name(th_prov.name, tests, NULL, NULL);
    duet_rdma_sim_destroy(&th_sim);
    return rc;
}
