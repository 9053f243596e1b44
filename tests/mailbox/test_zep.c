/* ZeroMQ endpoints over inproc, ipc and tcp (loopback): ROUTER-to-ROUTER
 * both ways, ROUTER_MANDATORY turning an unknown peer into an error,
 * refused wildcard binds, the max message size, and CURVE with a ZAP
 * allow-list refusing an unknown key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include <cmocka.h>

#include "mailbox/mailbox.h"

static duet_status_t recv_wait(duet_zep_t *ep, char *peer, uint8_t **d, size_t *n, int ms)
{
    for (int i = 0; i < ms; i++) {
        duet_status_t st = duet_zep_recv(ep, peer, d, n);
        if (st != DUET_ERR_AGAIN)
            return st;
        usleep(1000);
    }
    return DUET_ERR_TIMEOUT;
}

static duet_status_t send_wait(duet_zep_t *ep, const char *peer, const char *s, int ms)
{
    for (int i = 0; i < ms; i++) {
        duet_status_t st = duet_zep_send(ep, peer, s, strlen(s));
        if (st != DUET_ERR_AGAIN)
            return st;
        usleep(1000);
    }
    return DUET_ERR_TIMEOUT;
}

static void pair_exchange(const char *addr, void *ctx)
{
    duet_zep_t *a, *b;
    duet_zep_config_t ca = {.node = "a", .zmq_ctx = ctx};
    duet_zep_config_t cb = {.node = "b", .bind = addr, .zmq_ctx = ctx};
    assert_int_equal(duet_zep_create(&cb, &b), DUET_OK);
    assert_int_equal(duet_zep_create(&ca, &a), DUET_OK);
    addr = duet_zep_endpoint(b); /* a ":*" port is resolved */
    assert_null(strchr(addr + 6, '*'));
    /* before any connection: unroutable is an error (AGAIN), never a silent drop */
    assert_int_equal(duet_zep_send(a, "b", "x", 1), DUET_ERR_AGAIN);
    assert_int_equal(duet_zep_send(b, "a", "x", 1), DUET_ERR_AGAIN);
    assert_int_equal(duet_zep_connect(a, "b", addr, NULL), DUET_OK);
    assert_int_equal(send_wait(a, "b", "hello", 3000), DUET_OK);
    char peer[DUET_NAME_MAX];
    uint8_t *d;
    size_t n;
    assert_int_equal(recv_wait(b, peer, &d, &n, 3000), DUET_OK);
    assert_string_equal(peer, "a");
    assert_int_equal(n, 5);
    assert_memory_equal(d, "hello", 5);
    duet_free(d);
    /* the same connection carries the reply */
    assert_int_equal(send_wait(b, "a", "world", 3000), DUET_OK);
    assert_int_equal(recv_wait(a, peer, &d, &n, 3000), DUET_OK);
    assert_string_equal(peer, "b");
    assert_memory_equal(d, "world", 5);
    duet_free(d);
    /* order of many messages is kept */
    for (int i = 0; i < 200; i++) {
        char m[16];
        snprintf(m, sizeof(m), "m%d", i);
        assert_int_equal(send_wait(a, "b", m, 1000), DUET_OK);
    }
    for (int i = 0; i < 200; i++) {
        char m[16];
        snprintf(m, sizeof(m), "m%d", i);
        assert_int_equal(recv_wait(b, peer, &d, &n, 3000), DUET_OK);
        assert_int_equal(n, strlen(m));
        assert_memory_equal(d, m, n);
        duet_free(d);
    }
    assert_int_equal(duet_zep_send(a, "nobody", "x", 1), DUET_ERR_AGAIN);
    duet_zep_destroy(&a);
    duet_zep_destroy(&b);
    assert_null(a);
}

static void test_inproc(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    pair_exchange("inproc://duet-test-zep", ctx);
    zmq_ctx_term(ctx);
}

static void test_ipc(void **state)
{
    (void)state;
    char addr[128];
    snprintf(addr, sizeof(addr), "ipc:///tmp/duet-test-zep-%d", (int)getpid());
    pair_exchange(addr, NULL);
}

static void test_tcp(void **state)
{
    (void)state;
    pair_exchange("tcp://127.0.0.1:*", NULL);
}

static void test_bind_policy_and_maxsize(void **state)
{
    (void)state;
    duet_zep_t *e = NULL;
    duet_zep_config_t c = {.node = "w", .bind = "tcp://*:5999"};
    assert_int_equal(duet_zep_create(&c, &e), DUET_ERR_INVALID);
    assert_non_null(strstr(duet_error(), "all interfaces"));
    c.bind = "tcp://0.0.0.0:5999";
    assert_int_equal(duet_zep_create(&c, &e), DUET_ERR_INVALID);
    assert_null(e);
    /* max message size: a frame over the cap is refused by the receiver */
    void *ctx = zmq_ctx_new();
    duet_zep_t *a, *b;
    duet_zep_config_t ca = {.node = "a", .zmq_ctx = ctx};
    duet_zep_config_t cb = {
        .node = "b", .bind = "tcp://127.0.0.1:0", .zmq_ctx = ctx, .max_msg_size = 1024};
    cb.bind = "inproc://duet-maxsz"; /* inproc does not enforce MAXMSGSIZE; use tcp */
    cb.bind = "tcp://127.0.0.1:*";
    assert_int_equal(duet_zep_create(&cb, &b), DUET_OK);
    assert_int_equal(duet_zep_create(&ca, &a), DUET_OK);
    const char *addr = duet_zep_endpoint(b);
    assert_int_equal(duet_zep_connect(a, "b", addr, NULL), DUET_OK);
    assert_int_equal(send_wait(a, "b", "small", 3000), DUET_OK);
    char peer[DUET_NAME_MAX];
    uint8_t *d;
    size_t n;
    assert_int_equal(recv_wait(b, peer, &d, &n, 3000), DUET_OK);
    duet_free(d);
    static char big[4096];
    memset(big, 'x', sizeof(big) - 1);
    duet_zep_send(a, "b", big, sizeof(big) - 1);
    assert_int_equal(recv_wait(b, peer, &d, &n, 300), DUET_ERR_TIMEOUT);
    duet_zep_destroy(&a);
    duet_zep_destroy(&b);
    zmq_ctx_term(ctx);
}

static void test_curve_allow_list(void **state)
{
    (void)state;
    if (!duet_zep_has_curve()) {
        print_message("SKIP: libzmq has no CURVE (built without libsodium)\n");
        skip();
    }
    duet_curve_keys_t ks, kgood, kbad;
    assert_int_equal(duet_curve_keypair(&ks), DUET_OK);
    assert_int_equal(duet_curve_keypair(&kgood), DUET_OK);
    assert_int_equal(duet_curve_keypair(&kbad), DUET_OK);
    const char *allow[] = {kgood.public_z85, NULL};
    duet_zep_t *s, *good, *bad;
    duet_zep_config_t cs = {
        .node = "srv", .bind = "tcp://127.0.0.1:*", .curve = &ks, .allow_keys = allow};
    duet_zep_config_t cg = {.node = "good", .curve = &kgood};
    duet_zep_config_t cbad = {.node = "bad", .curve = &kbad};
    assert_int_equal(duet_zep_create(&cs, &s), DUET_OK);
    const char *addr = duet_zep_endpoint(s);
    assert_int_equal(duet_zep_create(&cg, &good), DUET_OK);
    assert_int_equal(duet_zep_create(&cbad, &bad), DUET_OK);
    assert_int_equal(duet_zep_connect(good, "srv", addr, ks.public_z85), DUET_OK);
    assert_int_equal(duet_zep_connect(bad, "srv", addr, ks.public_z85), DUET_OK);
    assert_int_equal(send_wait(good, "srv", "from-good", 3000), DUET_OK);
    /* the connecting side queues (its pipe exists from connect time) but the
     * server refuses the handshake: nothing from the unknown key arrives */
    assert_int_equal(send_wait(bad, "srv", "from-bad", 500), DUET_OK);
    char peer[DUET_NAME_MAX];
    uint8_t *d;
    size_t n;
    assert_int_equal(recv_wait(s, peer, &d, &n, 3000), DUET_OK);
    assert_string_equal(peer, "good");
    assert_memory_equal(d, "from-good", 9);
    duet_free(d);
    assert_int_equal(recv_wait(s, peer, &d, &n, 300), DUET_ERR_TIMEOUT);
    assert_true(duet_zep_refused(s) >= 1);
    /* and the server cannot route to it either */
    assert_int_equal(duet_zep_send(s, "bad", "x", 1), DUET_ERR_AGAIN);
    assert_int_equal(send_wait(s, "good", "welcome", 1000), DUET_OK);
    duet_zep_destroy(&bad);
    duet_zep_destroy(&good);
    duet_zep_destroy(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inproc),
        cmocka_unit_test(test_ipc),
        cmocka_unit_test(test_tcp),
        cmocka_unit_test(test_bind_policy_and_maxsize),
        cmocka_unit_test(test_curve_allow_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
