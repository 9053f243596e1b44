/* The sim provider's fault injection on a virtual clock: delayed writes land
 * exactly when due and in order, a stalled receiver holds writes until
 * released, a lost peer fails pending and new writes while others work. */
#include "rdma/rdma.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static uint64_t vclock;
static uint64_t vnow(void *arg)
{
    return vclock;
}

typedef struct world {
    duet_rdma_sim_t *sim;
    duet_rdma_ctx_t *a, *b, *c;
    duet_rdma_conn_t *ab, *ba, *ac, *ca;
    duet_rdma_mr_t *src, *bdst, *cdst;
} world_t;

static void link2(duet_rdma_conn_t *x, duet_rdma_conn_t *y)
{
    uint8_t bx[DUET_RDMA_BLOB_MAX], by[DUET_RDMA_BLOB_MAX];
    size_t lx, ly;
    assert_int_equal(duet_rdma_conn_blob(x, bx, sizeof(bx), &lx), DUET_OK);
    assert_int_equal(duet_rdma_conn_blob(y, by, sizeof(by), &ly), DUET_OK);
    assert_int_equal(duet_rdma_conn_connect(x, by, ly), DUET_OK);
    assert_int_equal(duet_rdma_conn_connect(y, bx, lx), DUET_OK);
}

static int setup(void **state)
{
    static world_t w;
    memset(&w, 0, sizeof(w));
    vclock = 1000;
    assert_int_equal(duet_rdma_sim_create(&w.sim), DUET_OK);
    duet_rdma_sim_set_clock(w.sim, vnow, NULL);
    duet_rdma_ctx_params_t p = {.provider = "sim", .sim = w.sim};
    assert_int_equal(duet_rdma_ctx_create(&p, &w.a), DUET_OK);
    assert_int_equal(duet_rdma_ctx_create(&p, &w.b), DUET_OK);
    assert_int_equal(duet_rdma_ctx_create(&p, &w.c), DUET_OK);
    assert_int_equal(duet_rdma_conn_create(w.a, 1, &w.ab), DUET_OK);
    assert_int_equal(duet_rdma_conn_create(w.b, 2, &w.ba), DUET_OK);
    assert_int_equal(duet_rdma_conn_create(w.a, 3, &w.ac), DUET_OK);
    assert_int_equal(duet_rdma_conn_create(w.c, 4, &w.ca), DUET_OK);
    link2(w.ab, w.ba);
    link2(w.ac, w.ca);
    assert_int_equal(duet_rdma_mr_alloc(w.a, 4096, 0, &w.src), DUET_OK);
    assert_int_equal(duet_rdma_mr_alloc(w.b, 4096, DUET_RDMA_ACCESS_REMOTE_WRITE, &w.bdst),
                     DUET_OK);
    assert_int_equal(duet_rdma_mr_alloc(w.c, 4096, DUET_RDMA_ACCESS_REMOTE_WRITE, &w.cdst),
                     DUET_OK);
    memset(duet_rdma_mr_ptr(w.src), 0xAB, 4096);
    *state = &w;
    return 0;
}

static int teardown(void **state)
{
    world_t *w = *state;
    duet_rdma_ctx_destroy(&w->a);
    duet_rdma_ctx_destroy(&w->b);
    duet_rdma_ctx_destroy(&w->c);
    duet_rdma_sim_destroy(&w->sim);
    return 0;
}

static void test_delay(void **state)
{
    world_t *w = *state;
    duet_rdma_rkey_t rk = duet_rdma_mr_rkey(w->bdst);
    duet_rdma_sim_set_delay(w->sim, w->a, w->b, 500);
    assert_int_equal(duet_rdma_write(w->ab, w->src, 0, &rk, 0, 100, 1, 0, 1), DUET_OK);
    vclock += 100;
    duet_rdma_sim_set_delay(w->sim, w->a, w->b, 10); /* cannot overtake the first */
    assert_int_equal(duet_rdma_write(w->ab, w->src, 0, &rk, 100, 100, 2, 0, 2), DUET_OK);
    duet_rdma_cqe_t e[4];
    vclock += 300;
    assert_int_equal(duet_rdma_poll(w->b, e, 4), 0);
    assert_int_equal(((uint8_t *)duet_rdma_mr_ptr(w->bdst))[0], 0); /* not placed yet */
    vclock += 100;                                                  /* t = 1500: the first is due */
    assert_int_equal(duet_rdma_poll(w->b, e, 4), 2);
    assert_int_equal(e[0].imm, 1);
    assert_int_equal(e[1].imm, 2);
    assert_int_equal(((uint8_t *)duet_rdma_mr_ptr(w->bdst))[150], 0xAB);
    assert_int_equal(duet_rdma_poll(w->a, e, 4), 2);
    assert_int_equal(e[0].kind, DUET_RDMA_CQE_SEND);
    assert_int_equal(e[0].status, DUET_OK);
}

static void test_stall(void **state)
{
    world_t *w = *state;
    duet_rdma_rkey_t rk = duet_rdma_mr_rkey(w->bdst);
    duet_rdma_sim_stall(w->sim, w->b, true);
    assert_int_equal(duet_rdma_write(w->ab, w->src, 0, &rk, 0, 64, 7, 0, 7), DUET_OK);
    vclock += 1000000;
    duet_rdma_cqe_t e[4];
    assert_int_equal(duet_rdma_poll(w->b, e, 4), 0);
    assert_int_equal(duet_rdma_poll(w->a, e, 4), 0); /* no completion either */
    duet_rdma_sim_stall(w->sim, w->b, false);
    assert_int_equal(duet_rdma_poll(w->b, e, 4), 1);
    assert_int_equal(e[0].imm, 7);
    assert_int_equal(duet_rdma_poll(w->a, e, 4), 1);
    assert_int_equal(e[0].wr_id, 7);
}

static void test_kill(void **state)
{
    world_t *w = *state;
    duet_rdma_rkey_t rb = duet_rdma_mr_rkey(w->bdst), rc = duet_rdma_mr_rkey(w->cdst);
    duet_rdma_sim_set_delay(w->sim, NULL, NULL, 1000);
    assert_int_equal(duet_rdma_write(w->ac, w->src, 0, &rc, 0, 64, 1, 0, 11), DUET_OK);
    duet_rdma_sim_kill(w->sim, w->c);
    duet_rdma_cqe_t e[4];
    assert_int_equal(duet_rdma_poll(w->a, e, 4), 1); /* pending write failed */
    assert_int_equal(e[0].wr_id, 11);
    assert_int_equal(e[0].status, DUET_ERR_CLOSED);
    assert_int_equal(duet_rdma_write(w->ac, w->src, 0, &rc, 0, 64, 1, 0, 12), DUET_ERR_CLOSED);
    assert_int_equal(duet_rdma_conn_status(w->ac), DUET_ERR_CLOSED);
    assert_int_equal(duet_rdma_conn_status(w->ab), DUET_OK);
    assert_int_equal(duet_rdma_write(w->ab, w->src, 0, &rb, 0, 64, 2, 0, 13), DUET_OK);
    vclock += 1000;
    assert_int_equal(duet_rdma_poll(w->b, e, 4), 1);
    assert_int_equal(e[0].imm, 2);
    assert_int_equal(duet_rdma_poll(w->a, e, 4), 1);
    assert_int_equal(e[0].status, DUET_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_delay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stall, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
