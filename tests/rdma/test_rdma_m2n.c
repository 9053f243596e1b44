/* M2N / N2M rounds over one provider (argv[1]), ranks as processes (shm,
 * tcp) or threads (sim, emulated verbs): M attention ranks dispatch every
 * round to N expert ranks (M2N group 0), experts answer each attention rank
 * with a digest of what they gathered (N2M group 1, same contexts).
 * Checks exact bytes and lengths (empty dispatches included), credit
 * blocking and resumption, round time-outs naming the missing senders, and
 * loss of a sender that leaves the others working. */
#include "harness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define SEC 1000000000ll

typedef struct shape {
    uint32_t m, n, rounds, slots;
    size_t slot;
    int die_sender; /* sender rank that is lost after round 0, or -1 */
} shape_t;

static uint64_t seed_of(uint32_t a, uint32_t e, uint64_t k)
{
    return ((uint64_t)a << 48) ^ ((uint64_t)e << 32) ^ k ^ 0x9e3779b97f4a7c15ull;
}

static size_t plen(const shape_t *s, uint32_t a, uint32_t e, uint64_t k)
{
    if ((a * 7 + e * 13 + k * 31) % 5 == 0)
        return 0; /* an empty dispatch still counts */
    return 1 + (size_t)((seed_of(a, e, k) * 2654435761u) >> 7) % s->slot;
}

static int exchange(th_board_t *b, int rank, duet_m2n_t *g, int peer_base)
{
    uint32_t n = duet_m2n_peers(g);
    for (uint32_t i = 0; i < n; i++) {
        size_t len;
        int pr = peer_base + (int)i;
        TH_CHECK(duet_m2n_info(g, i, b->info[rank][pr], TH_INFO_MAX, &len) == DUET_OK);
        b->info_len[rank][pr] = (uint32_t)len;
    }
    th_barrier(b);
    for (uint32_t i = 0; i < n; i++) {
        int pr = peer_base + (int)i;
        TH_CHECK(duet_m2n_connect(g, i, b->info[pr][rank], b->info_len[pr][rank]) == DUET_OK);
    }
    th_barrier(b);
    return 0;
}

static duet_m2n_t *group(duet_rdma_ctx_t *ctx, const shape_t *s, bool sender, bool reverse,
                         uint32_t rank, size_t slot)
{
    duet_m2n_params_t p = {.ctx = ctx,
                           .n_senders = reverse ? s->n : s->m,
                           .n_receivers = reverse ? s->m : s->n,
                           .is_sender = sender,
                           .rank = rank,
                           .slots = s->slots,
                           .slot_size = slot,
                           .group_id = reverse ? 1 : 0};
    duet_m2n_t *g = NULL;
    if (duet_m2n_create(&p, &g) != DUET_OK)
        fprintf(stderr, "m2n_create: %s\n", duet_error());
    return g;
}

static uint64_t digest(const uint8_t *p, size_t n, uint32_t from)
{
    return duet_hash_bytes(p, n) ^ ((uint64_t)n << 1) ^ ((uint64_t)from * 0x100000001b3ull);
}

/* End of a run: wait for every rank still alive (no barrier: a rank died). */
static void survivors_done(th_board_t *b, const shape_t *s)
{
    if (s->die_sender < 0) {
        th_barrier(b);
        return;
    }
    __atomic_add_fetch(&b->values[1], 1, __ATOMIC_ACQ_REL);
    while (__atomic_load_n(&b->values[1], __ATOMIC_ACQUIRE) < s->m + s->n - 1)
        usleep(1000);
}

static int attention(int a, th_board_t *b, const shape_t *s)
{
    int rc = 1;
    duet_rdma_ctx_t *ctx = th_ctx();
    TH_CHECK(ctx);
    duet_m2n_t *g0 = group(ctx, s, true, false, (uint32_t)a, s->slot);
    duet_m2n_t *g1 = group(ctx, s, false, true, (uint32_t)a, 16);
    TH_CHECK(g0 && g1);
    duet_rdma_mr_t *src, *tmp;
    TH_CHECK(duet_rdma_mr_alloc(ctx, s->n * s->slot, 0, &src) == DUET_OK);
    TH_CHECK(duet_rdma_mr_alloc(ctx, s->slot, 0, &tmp) == DUET_OK);
    if (exchange(b, a, g0, (int)s->m) || exchange(b, a, g1, (int)s->m))
        return 1;
    for (uint64_t k = 0; k < s->rounds; k++) {
        TH_CHECK(duet_m2n_flush(g0, 10 * SEC) == DUET_OK); /* src may be refilled */
        for (uint32_t e = 0; e < s->n; e++) {
            uint8_t *p = (uint8_t *)duet_rdma_mr_ptr(src) + e * s->slot;
            size_t len = plen(s, (uint32_t)a, e, k);
            th_fill(p, len, seed_of((uint32_t)a, e, k));
            TH_CHECK(duet_m2n_send(g0, k, e, src, e * s->slot, len, 10 * SEC) == DUET_OK);
        }
        if (s->die_sender >= 0) {
            /* peer-loss mode: dispatch only; the lost sender goes after round 0 */
            if (s->die_sender == a && k == 0) {
                TH_CHECK(duet_m2n_flush(g0, 10 * SEC) == DUET_OK);
                while (__atomic_load_n(&b->values[0], __ATOMIC_ACQUIRE) < s->n)
                    duet_m2n_progress(g0);
                th_die(b, a);
                b->dead[a] = 1;
                duet_m2n_destroy(&g0);
                duet_m2n_destroy(&g1);
                duet_rdma_ctx_destroy(&ctx);
                return 0;
            }
            continue;
        }
        TH_CHECK(duet_m2n_recv(g1, k, 10 * SEC) == DUET_OK);
        for (uint32_t e = 0; e < s->n; e++) {
            const void *d;
            size_t len;
            TH_CHECK(duet_m2n_data(g1, k, e, &d, &len) == DUET_OK);
            TH_CHECK(len == 16);
            uint64_t want = 0;
            for (uint32_t a2 = 0; a2 < s->m; a2++) {
                size_t l2 = plen(s, a2, e, k);
                th_fill(duet_rdma_mr_ptr(tmp), l2, seed_of(a2, e, k));
                want ^= digest(duet_rdma_mr_ptr(tmp), l2, a2);
            }
            uint64_t got[2];
            memcpy(got, d, 16);
            TH_CHECK(got[0] == k && got[1] == want);
        }
        TH_CHECK(duet_m2n_release(g1, k) == DUET_OK);
    }
    TH_CHECK(duet_m2n_flush(g0, 10 * SEC) == DUET_OK);
    rc = 0;
    survivors_done(b, s); /* nobody leaves while others still talk to it */
    duet_m2n_destroy(&g0);
    duet_m2n_destroy(&g1);
    duet_rdma_ctx_destroy(&ctx);
    return rc;
}

static int expert(int e, th_board_t *b, const shape_t *s)
{
    duet_rdma_ctx_t *ctx = th_ctx();
    TH_CHECK(ctx);
    uint32_t me = (uint32_t)(e - (int)s->m);
    duet_m2n_t *g0 = group(ctx, s, false, false, me, s->slot);
    duet_m2n_t *g1 = group(ctx, s, true, true, me, 16);
    TH_CHECK(g0 && g1);
    duet_rdma_mr_t *src;
    TH_CHECK(duet_rdma_mr_alloc(ctx, s->m * 16, 0, &src) == DUET_OK);
    if (exchange(b, e, g0, 0) || exchange(b, e, g1, 0))
        return 1;
    for (uint64_t k = 0; k < s->rounds; k++) {
        duet_status_t st = duet_m2n_recv(g0, k, 10 * SEC);
        if (s->die_sender >= 0 && k >= 1) {
            /* every live sender delivered; the lost one is named */
            TH_CHECK(st == DUET_ERR_CLOSED);
            TH_CHECK(strstr(duet_error(), "missing senders") != NULL);
            uint32_t miss[8];
            TH_CHECK(duet_m2n_missing(g0, k, miss, 8) == 1 && miss[0] == (uint32_t)s->die_sender);
        } else {
            if (st)
                fprintf(stderr, "expert %u round %llu: %s\n", me, (unsigned long long)k,
                        duet_error());
            TH_CHECK(st == DUET_OK);
        }
        uint64_t h = 0;
        for (uint32_t a = 0; a < s->m; a++) {
            if (s->die_sender == (int)a && k > 0)
                continue;
            const void *d;
            size_t len;
            TH_CHECK(duet_m2n_data(g0, k, a, &d, &len) == DUET_OK);
            TH_CHECK(len == plen(s, a, me, k));
            TH_CHECK(th_check(d, len, seed_of(a, me, k)));
            h ^= digest(d, len, a);
        }
        TH_CHECK(duet_m2n_release(g0, k) == DUET_OK);
        if (s->die_sender >= 0) {
            if (k == 0)
                __atomic_add_fetch(&b->values[0], 1, __ATOMIC_ACQ_REL);
            continue;
        }
        TH_CHECK(duet_m2n_flush(g1, 10 * SEC) == DUET_OK);
        for (uint32_t a = 0; a < s->m; a++) {
            uint64_t r[2] = {k, h};
            memcpy((uint8_t *)duet_rdma_mr_ptr(src) + a * 16, r, 16);
            TH_CHECK(duet_m2n_send(g1, k, a, src, a * 16, 16, 10 * SEC) == DUET_OK);
        }
    }
    TH_CHECK(duet_m2n_flush(g1, 10 * SEC) == DUET_OK);
    survivors_done(b, s);
    duet_m2n_destroy(&g0);
    duet_m2n_destroy(&g1);
    duet_rdma_ctx_destroy(&ctx);
    return 0;
}

static int rank_main(int rank, th_board_t *b, void *arg)
{
    const shape_t *s = arg;
    return rank < (int)s->m ? attention(rank, b, s) : expert(rank, b, s);
}

static void run_shape(uint32_t m, uint32_t n)
{
    shape_t s = {.m = m, .n = n, .rounds = 12, .slots = 2, .slot = 64 * 1024, .die_sender = -1};
    if (m * n >= 64)
        s.rounds = 6;
    assert_int_equal(th_run_ranks((int)(m + n), rank_main, &s), 0);
}

static void test_m2n_1x1(void **state)
{
    run_shape(1, 1);
}
static void test_m2n_2x2(void **state)
{
    run_shape(2, 2);
}
static void test_m2n_4x4(void **state)
{
    run_shape(4, 4);
}
static void test_m2n_8x8(void **state)
{
    run_shape(8, 8);
}
static void test_m2n_1x8(void **state)
{
    run_shape(1, 8);
}
static void test_m2n_8x1(void **state)
{
    run_shape(8, 1);
}
static void test_m2n_2x4(void **state)
{
    run_shape(2, 4);
}

static void test_m2n_peer_loss(void **state)
{
    shape_t s = {.m = 3, .n = 2, .rounds = 4, .slots = 2, .slot = 4096, .die_sender = 2};
    assert_int_equal(th_run_ranks(5, rank_main, &s), 0);
}

/* ---- credit exhaustion: 1 sender, 1 receiver, 2 slots ------------------ */

static int credit_rank(int rank, th_board_t *b, void *arg)
{
    duet_rdma_ctx_t *ctx = th_ctx();
    TH_CHECK(ctx);
    shape_t s = {.m = 1, .n = 1, .slots = 2, .slot = 1024};
    duet_m2n_t *g = group(ctx, &s, rank == 0, false, 0, s.slot);
    TH_CHECK(g);
    if (exchange(b, rank, g, rank == 0 ? 1 : 0))
        return 1;
    if (rank == 0) {
        duet_rdma_mr_t *src;
        TH_CHECK(duet_rdma_mr_alloc(ctx, 1024, 0, &src) == DUET_OK);
        th_fill(duet_rdma_mr_ptr(src), 1024, 5);
        TH_CHECK(duet_m2n_send(g, 0, 0, src, 0, 1024, SEC) == DUET_OK);
        TH_CHECK(duet_m2n_send(g, 1, 0, src, 0, 512, SEC) == DUET_OK);
        /* both slots are taken: no credit for round 2 */
        TH_CHECK(duet_m2n_send(g, 2, 0, src, 0, 8, 0) == DUET_ERR_AGAIN);
        uint64_t t0 = duet_now_ns();
        TH_CHECK(duet_m2n_send(g, 2, 0, src, 0, 8, SEC / 5) == DUET_ERR_TIMEOUT);
        TH_CHECK(duet_now_ns() - t0 >= (uint64_t)SEC / 5);
        TH_CHECK(strstr(duet_error(), "no credit") != NULL);
        th_flag_set(b, 0, 1); /* let the receiver release round 0 */
        TH_CHECK(duet_m2n_send(g, 2, 0, src, 0, 8, 10 * SEC) == DUET_OK);
        TH_CHECK(th_flag_get(b, 1) == 1); /* only after the release */
        TH_CHECK(duet_m2n_flush(g, 10 * SEC) == DUET_OK);
    } else {
        TH_CHECK(duet_m2n_recv(g, 0, 10 * SEC) == DUET_OK);
        TH_CHECK(duet_m2n_recv(g, 1, 10 * SEC) == DUET_OK);
        TH_CHECK(duet_m2n_recv(g, 2, 0) == DUET_ERR_INVALID); /* outside the window */
        const void *d;
        size_t len;
        TH_CHECK(duet_m2n_data(g, 0, 0, &d, &len) == DUET_OK && len == 1024 &&
                 th_check(d, 1024, 5));
        TH_CHECK(duet_m2n_data(g, 1, 0, &d, &len) == DUET_OK && len == 512);
        TH_CHECK(duet_m2n_release(g, 1) == DUET_ERR_INVALID); /* out of order */
        while (!th_flag_get(b, 0))
            duet_m2n_progress(g);
        th_flag_set(b, 1, 1);
        TH_CHECK(duet_m2n_release(g, 0) == DUET_OK);
        TH_CHECK(duet_m2n_recv(g, 2, 10 * SEC) == DUET_OK);
        TH_CHECK(duet_m2n_data(g, 2, 0, &d, &len) == DUET_OK && len == 8 && th_check(d, 8, 5));
    }
    th_barrier(b);
    duet_m2n_destroy(&g);
    duet_rdma_ctx_destroy(&ctx);
    return 0;
}

static void test_m2n_credit(void **state)
{
    assert_int_equal(th_run_ranks(2, credit_rank, NULL), 0);
}

/* ---- a round times out naming the sender that did not deliver ---------- */

static int timeout_rank(int rank, th_board_t *b, void *arg)
{
    duet_rdma_ctx_t *ctx = th_ctx();
    TH_CHECK(ctx);
    shape_t s = {.m = 3, .n = 1, .slots = 2, .slot = 64};
    bool sender = rank < 3;
    duet_m2n_t *g = group(ctx, &s, sender, false, sender ? (uint32_t)rank : 0, s.slot);
    TH_CHECK(g);
    if (exchange(b, rank, g, sender ? 3 : 0))
        return 1;
    if (sender) {
        if (rank == 1)
            while (!th_flag_get(b, 0))
                duet_m2n_progress(g);
        TH_CHECK(duet_m2n_send(g, 0, 0, NULL, 0, 0, SEC) == DUET_OK);
        TH_CHECK(duet_m2n_flush(g, 10 * SEC) == DUET_OK);
    } else {
        duet_status_t st = duet_m2n_recv(g, 0, SEC / 5);
        TH_CHECK(st == DUET_ERR_TIMEOUT);
        TH_CHECK(strstr(duet_error(), "missing senders: 1") != NULL);
        uint32_t miss[4];
        TH_CHECK(duet_m2n_missing(g, 0, miss, 4) == 1 && miss[0] == 1);
        th_flag_set(b, 0, 1);
        TH_CHECK(duet_m2n_recv(g, 0, 10 * SEC) == DUET_OK);
        TH_CHECK(duet_m2n_missing(g, 0, miss, 4) == 0);
        TH_CHECK(duet_m2n_release(g, 0) == DUET_OK);
    }
    th_barrier(b);
    duet_m2n_destroy(&g);
    duet_rdma_ctx_destroy(&ctx);
    return 0;
}

static void test_m2n_timeout(void **state)
{
    assert_int_equal(th_run_ranks(4, timeout_rank, NULL), 0);
}

static void test_m2n_bad_info(void **state)
{
    duet_rdma_ctx_t *ctx = th_ctx();
    assert_non_null(ctx);
    shape_t s = {.m = 2, .n = 2, .slots = 2, .slot = 64};
    duet_m2n_t *snd = group(ctx, &s, true, false, 0, 64);
    duet_m2n_t *rcv = group(ctx, &s, false, false, 1, 64);
    duet_m2n_t *rcv0 = group(ctx, &s, false, false, 0, 64);
    assert_non_null(snd);
    assert_non_null(rcv);
    uint8_t info[DUET_M2N_INFO_MAX];
    size_t len;
    /* receiver 1's info given as if from receiver 0 */
    assert_int_equal(duet_m2n_info(rcv, 0, info, sizeof(info), &len), DUET_OK);
    assert_int_equal(duet_m2n_connect(snd, 0, info, len), DUET_ERR_INVALID);
    /* a sender's info to a sender */
    assert_int_equal(duet_m2n_info(snd, 0, info, sizeof(info), &len), DUET_OK);
    assert_int_equal(duet_m2n_connect(snd, 0, info, len), DUET_ERR_INVALID);
    assert_int_equal(duet_m2n_connect(snd, 0, info, 3), DUET_ERR_INVALID);
    assert_int_equal(duet_m2n_connect(snd, 7, info, len), DUET_ERR_INVALID);
    /* sending to an unconnected receiver, receiving on a sender */
    assert_int_equal(duet_m2n_send(snd, 0, 0, NULL, 0, 0, 0), DUET_ERR_INVALID);
    assert_int_equal(duet_m2n_recv(snd, 0, 0), DUET_ERR_INVALID);
    assert_int_equal(duet_m2n_send(snd, 0, 0, NULL, 0, 65, 0), DUET_ERR_RANGE);
    duet_m2n_destroy(&snd);
    duet_m2n_destroy(&rcv);
    duet_m2n_destroy(&rcv0);
    assert_null(snd);
    duet_rdma_ctx_destroy(&ctx);
}

int main(int argc, char **argv)
{
    th_init(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_m2n_bad_info),  cmocka_unit_test(test_m2n_1x1),
        cmocka_unit_test(test_m2n_2x2),       cmocka_unit_test(test_m2n_4x4),
        cmocka_unit_test(test_m2n_8x8),       cmocka_unit_test(test_m2n_1x8),
        cmocka_unit_test(test_m2n_8x1),       cmocka_unit_test(test_m2n_2x4),
        cmocka_unit_test(test_m2n_credit),    cmocka_unit_test(test_m2n_timeout),
        cmocka_unit_test(test_m2n_peer_loss),
    };
    int rc = cmocka_run_group_tests_name(th_prov.name, tests, NULL, NULL);
    duet_rdma_sim_destroy(&th_sim);
    return rc;
}
