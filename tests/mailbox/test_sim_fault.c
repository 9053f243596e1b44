/* Simulated network and fault plans: virtual time, seeded order, traces
 * equal for equal seeds and different for different seeds; plan parsing
 * with errors that name the line; drop/dup/delay/partition verdicts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mailbox/mailbox.h"

typedef struct rx {
    int count;
    char order[4096];
    size_t olen;
} rx_t;

static void on_rx(void *ctx, const char *from, const uint8_t *data, size_t len)
{
    rx_t *r = ctx;
    r->count++;
    r->olen += (size_t)snprintf(r->order + r->olen, sizeof(r->order) - r->olen, "%s:%.*s,", from,
                                (int)len, (const char *)data);
}

static uint64_t run_sim(uint64_t seed, rx_t *r, char *trace_out, size_t cap)
{
    duet_simnet_t *net;
    duet_simnet_config_t cfg = {.seed = seed, .latency_min_ns = 1000, .latency_max_ns = 50000};
    assert_int_equal(duet_simnet_create(&cfg, &net), DUET_OK);
    duet_simnet_keep_trace_text(net, true);
    memset(r, 0, sizeof(*r));
    assert_int_equal(duet_simnet_attach(net, "a", on_rx, r), DUET_OK);
    assert_int_equal(duet_simnet_attach(net, "b", on_rx, r), DUET_OK);
    assert_int_equal(duet_simnet_attach(net, "c", on_rx, r), DUET_OK);
    for (int i = 0; i < 20; i++) {
        char m[8];
        snprintf(m, sizeof(m), "%d", i);
        assert_int_equal(duet_simnet_send(net, i % 2 ? "a" : "c", "b", m, strlen(m), 0), DUET_OK);
    }
    assert_int_equal(duet_simnet_send(net, "a", "nobody", "x", 1, 0), DUET_ERR_NOT_FOUND);
    duet_simnet_run(net, UINT64_MAX, 0);
    assert_int_equal(duet_simnet_delivered(net), 20);
    assert_true(duet_simnet_now(net) >= 1000 && duet_simnet_now(net) <= 50000 + 40);
    snprintf(trace_out, cap, "%s", duet_simnet_trace_text(net));
    uint64_t h = duet_simnet_trace_hash(net);
    duet_simnet_destroy(&net);
    return h;
}

static void test_sim_reproducible(void **state)
{
    (void)state;
    static rx_t r1, r2, r3;
    static char t1[16384], t2[16384], t3[16384];
    uint64_t h1 = run_sim(42, &r1, t1, sizeof(t1));
    uint64_t h2 = run_sim(42, &r2, t2, sizeof(t2));
    uint64_t h3 = run_sim(43, &r3, t3, sizeof(t3));
    assert_int_equal(r1.count, 20);
    assert_int_equal(h1, h2);
    assert_string_equal(t1, t2);
    assert_string_equal(r1.order, r2.order);
    assert_int_not_equal(h1, h3);
    assert_string_not_equal(r1.order, r3.order); /* interleaving of a and c differs */
    /* per-link FIFO holds: a's messages arrive in send order */
    int last = -1;
    for (const char *p = r1.order; (p = strstr(p, "a:")); p += 2) {
        int v = atoi(p + 2);
        assert_true(v > last);
        last = v;
    }
}

static int fired[8];
static void ev(void *arg)
{
    fired[(intptr_t)arg]++;
}

static void test_sim_timers(void **state)
{
    (void)state;
    duet_simnet_t *net;
    duet_simnet_config_t cfg = {.seed = 1};
    assert_int_equal(duet_simnet_create(&cfg, &net), DUET_OK);
    memset(fired, 0, sizeof(fired));
    uint64_t e1 = duet_simnet_at(net, 100, ev, (void *)1);
    duet_simnet_at(net, 200, ev, (void *)2);
    assert_true(duet_simnet_cancel(net, e1));
    assert_false(duet_simnet_cancel(net, e1));
    assert_int_equal(duet_simnet_run(net, 150, 0), 0);
    assert_int_equal(duet_simnet_now(net), 150);
    assert_int_equal(duet_simnet_run(net, UINT64_MAX, 0), 1);
    assert_int_equal(fired[1], 0);
    assert_int_equal(fired[2], 1);
    assert_int_equal(duet_simnet_now(net), 200);
    duet_simnet_destroy(&net);
}

static const char *plan_text =
    "# a plan\n"
    "drop p=0.5 from=gw/* type=test.*   # half of the gateway's test messages\n"
    "delay min=1ms max=3ms to=expert/*\n"
    "dup p=1 to=router\n"
    "reorder p=1 window=10ms to=sched\n"
    "partition nodes=n1,n2|n3 at=100ms for=50ms\n"
    "crash actor=expert/3 at=150ms\n"
    "stall actor=router at=1s for=200us\n";

static void test_plan_parse_and_decide(void **state)
{
    (void)state;
    duet_fault_plan_t *p;
    assert_int_equal(duet_fault_plan_create(7, &p), DUET_OK);
    assert_int_equal(duet_fault_plan_parse(p, plan_text, "plan.txt"), DUET_OK);
    assert_int_equal(duet_fault_plan_count(p), 7);
    const duet_fault_rule_t *r = duet_fault_plan_rule(p, 6);
    assert_int_equal(r->kind, DUET_FAULT_STALL);
    assert_int_equal(r->at_ns, 1000000000ull);
    assert_int_equal(r->for_ns, 200000ull);
    assert_string_equal(r->actor, "router");

    duet_fault_verdict_t v;
    int dropped = 0;
    for (int i = 0; i < 1000; i++) {
        duet_fault_decide(p, 0, "n1", "gw/0", "n2", "x", "test.ping", &v);
        dropped += v.copies == 0;
    }
    assert_true(dropped > 400 && dropped < 600);
    duet_fault_decide(p, 0, "n1", "gw/0", "n2", "x", "other", &v);
    assert_int_equal(v.copies, 1);
    duet_fault_decide(p, 0, "n1", "a", "n2", "expert/1", "t", &v);
    assert_int_equal(v.copies, 1);
    assert_true(v.delay_ns[0] >= 1000000 && v.delay_ns[0] <= 3000000);
    duet_fault_decide(p, 0, "n1", "a", "n2", "router", "t", &v);
    assert_int_equal(v.copies, 2);
    duet_fault_decide(p, 0, "n1", "a", "n2", "sched", "t", &v);
    assert_true(v.delay_ns[0] >= 1 && v.delay_ns[0] <= 10000000);
    /* partition: only inside its window and only across the bar */
    assert_false(duet_fault_partitioned(p, 99000000, "n1", "n3"));
    assert_true(duet_fault_partitioned(p, 100000000, "n1", "n3"));
    assert_true(duet_fault_partitioned(p, 120000000, "n3", "n2"));
    assert_false(duet_fault_partitioned(p, 120000000, "n1", "n2"));
    assert_false(duet_fault_partitioned(p, 150000000, "n1", "n3"));
    duet_fault_decide(p, 120000000, "n3", "x", "n1", "y", "t", &v);
    assert_int_equal(v.copies, 0);
    assert_true(duet_fault_count(p, DUET_FAULT_DROP) >= 400);
    assert_true(duet_fault_count(p, DUET_FAULT_PARTITION) == 1);
    duet_fault_plan_destroy(&p);
    assert_null(p);

    /* errors name the source, the line and the key */
    assert_int_equal(duet_fault_plan_create(7, &p), DUET_OK);
    assert_int_equal(duet_fault_plan_parse(p, "drop p=0.1\nexplode x=1\n", "f.plan"),
                     DUET_ERR_INVALID);
    assert_non_null(strstr(duet_error(), "f.plan:2"));
    assert_int_equal(duet_fault_plan_parse(p, "delay min=fast\n", "f.plan"), DUET_ERR_INVALID);
    assert_non_null(strstr(duet_error(), "'min'"));
    assert_int_equal(duet_fault_plan_parse(p, "drop p=2\n", "f.plan"), DUET_ERR_INVALID);
    assert_int_equal(duet_fault_plan_parse(p, "\n\npartition nodes=a,b\n", "f.plan"),
                     DUET_ERR_INVALID);
    assert_non_null(strstr(duet_error(), "f.plan:3"));
    assert_int_equal(duet_fault_plan_parse(p, "crash at=1s\n", "f.plan"), DUET_ERR_INVALID);
    assert_non_null(strstr(duet_error(), "actor="));
    duet_fault_plan_destroy(&p);
}

static void test_glob(void **state)
{
    (void)state;
    assert_true(duet_glob_match("expert/*", "expert/12"));
    assert_false(duet_glob_match("expert/*", "router"));
    assert_true(duet_glob_match("*", ""));
    assert_true(duet_glob_match("a*b*c", "a-b-x-c"));
    assert_false(duet_glob_match("a*b*c", "a-b-x-d"));
    assert_true(duet_glob_match(NULL, "anything"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sim_reproducible),
        cmocka_unit_test(test_sim_timers),
        cmocka_unit_test(test_plan_parse_and_decide),
        cmocka_unit_test(test_glob),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
