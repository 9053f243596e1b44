/* Simulation and faults: the same seed gives the same message order and
 * outcome (trace hash), different seeds differ; request/reply with retry
 * and de-duplication delivers exactly once to the handler while the plan
 * drops, duplicates and reorders messages; a partition turns into DOWN
 * "noconnection" through missed heartbeats; crash and stall rules from a
 * plan file act on the named actors at their times. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "../mailbox/test_msgs.h"
#include "harness.h"

/* ---- server: counts handler invocations per request id ------------------ */

#define NREQ 300
#define INFLIGHT 16

typedef struct server {
    int calls[NREQ];
    int handled;
    bool async;          /* reply 1 ms later from a kept copy of the envelope */
    duet_env_t held[NREQ];
    int nheld;
} server_t;

static duet_status_t srv_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    return DUET_OK;
}

static duet_status_t srv_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    server_t *s = state;
    const t_ping_t *p = t_msg_ping_body(m);
    if (!p || p->n >= NREQ)
        return DUET_OK;
    s->calls[p->n]++;
    s->handled++;
    t_ping_t r = {p->n * 2, "ok"};
    if (s->async) {
        s->held[p->n] = m->env;
        return duet_timer_start_ns(self, 1000000, 0, p->n, NULL);
    }
    return duet_reply(self, &m->env, &t_msg_pong, &r);
}

static duet_status_t asrv_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    server_t *s = state;
    const duet_sys_timer_t *t = duet_msg_body(m, &duet_msg_sys_timer);
    if (t && t->tag < NREQ) {
        t_ping_t r = {t->tag * 2, "ok"};
        return duet_reply(self, &s->held[t->tag], &t_msg_pong, &r);
    }
    return srv_handle(self, state, m);
}

static const duet_actor_ops_t asrv_ops = {"async-server", srv_start, asrv_handle, NULL};

static const duet_actor_ops_t srv_ops = {"server", srv_start, srv_handle, NULL};

typedef struct client {
    int next, done, timeouts, bad;
    int replies[NREQ];
    uint64_t seqs[NREQ];
    char order[NREQ * 6];
    size_t olen;
    uint32_t retries, timeout_ms;
} client_t;

static duet_status_t cli_issue(duet_actor_t *self, client_t *c)
{
    t_ping_t q = {(uint64_t)c->next, "q"};
    duet_call_opts_t o = {
        .timeout_ms = c->timeout_ms, .retries = c->retries, .cookie = (uint64_t)c->next};
    duet_status_t st = duet_call(self, "server", &t_msg_ping, &q, &o, &c->seqs[c->next]);
    if (st == DUET_ERR_AGAIN)
        return DUET_OK; /* resumed on sys.writable */
    if (!st)
        c->next++;
    return st;
}

static duet_status_t cli_fill(duet_actor_t *self, client_t *c)
{
    while (c->next < NREQ && c->next - c->done < INFLIGHT) {
        int before = c->next;
        duet_status_t st = cli_issue(self, c);
        if (st)
            return st;
        if (c->next == before)
            break;
    }
    return DUET_OK;
}

static duet_status_t cli_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    return cli_fill(self, arg);
}

static duet_status_t cli_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    client_t *c = state;
    const t_ping_t *r = t_msg_pong_body(m);
    if (r) {
        int n = (int)(r->n / 2);
        if (n < 0 || n >= NREQ || c->seqs[n] != m->env.reply_to)
            c->bad++;
        else
            c->replies[n]++;
        c->done++;
        c->olen += (size_t)snprintf(c->order + c->olen, sizeof(c->order) - c->olen, "%d,", n);
    }
    if (duet_msg_body(m, &duet_msg_sys_timeout)) {
        c->timeouts++;
        c->done++;
    }
    return cli_fill(self, c);
}

static const duet_actor_ops_t cli_ops = {"client", cli_start, cli_handle, NULL};

static bool cli_finished(void *arg)
{
    return ((client_t *)arg)->done >= NREQ;
}

typedef struct outcome {
    uint64_t trace;
    uint64_t vt_end;
    char order[NREQ * 6];
    int timeouts;
    uint64_t drops, dups, reorders;
    uint64_t dup_dropped;
} outcome_t;

static bool g_async;

static void run_rpc(uint64_t seed, const char *plan_text, outcome_t *out, server_t *s, client_t *c)
{
    world_t w;
    duet_fault_plan_t *plan = NULL;
    if (plan_text) {
        assert_int_equal(duet_fault_plan_create(seed, &plan), DUET_OK);
        assert_int_equal(duet_fault_plan_parse(plan, plan_text, "rpc.plan"), DUET_OK);
    }
    world_opts_t o = {.seed = seed, .faults = plan, .credit_window = 64};
    assert_int_equal(world_create(&w, TR_SIM, &o), DUET_OK);
    memset(s, 0, sizeof(*s));
    memset(c, 0, sizeof(*c));
    c->retries = plan ? 30 : 0;
    c->timeout_ms = 5;
    s->async = g_async;
    assert_int_equal(duet_spawn(w.b, "server", g_async ? &asrv_ops : &srv_ops, s, NULL), DUET_OK);
    assert_int_equal(duet_spawn(w.a, "client", &cli_ops, c, NULL), DUET_OK);
    assert_true(world_wait(&w, cli_finished, c, 60000));
    world_idle(&w, 50); /* late duplicates arrive and are dropped */
    memset(out, 0, sizeof(*out));
    out->trace = duet_simnet_trace_hash(w.sim);
    out->vt_end = duet_simnet_now(w.sim);
    snprintf(out->order, sizeof(out->order), "%s", c->order);
    out->timeouts = c->timeouts;
    if (plan) {
        out->drops = duet_fault_count(plan, DUET_FAULT_DROP);
        out->dups = duet_fault_count(plan, DUET_FAULT_DUP);
        out->reorders = duet_fault_count(plan, DUET_FAULT_REORDER);
    }
    duet_node_stats_t sa, sb;
    duet_node_stats(w.a, &sa);
    duet_node_stats(w.b, &sb);
    out->dup_dropped = sa.dup_dropped + sb.dup_dropped;
    world_destroy(&w);
    duet_fault_plan_destroy(&plan);
}

static server_t S1, S2;
static client_t C1, C2;
static outcome_t O1, O2, O3;

static void test_same_seed_same_run(void **state)
{
    (void)state;
    run_rpc(11, NULL, &O1, &S1, &C1);
    run_rpc(11, NULL, &O2, &S2, &C2);
    run_rpc(12, NULL, &O3, &S2, &C2);
    assert_int_equal(O1.timeouts, 0);
    assert_int_equal(S1.handled, NREQ);
    assert_int_equal(O1.trace, O2.trace);
    assert_int_equal(O1.vt_end, O2.vt_end);
    assert_string_equal(O1.order, O2.order);
    assert_int_not_equal(O1.trace, O3.trace);
    assert_int_not_equal(O1.vt_end, O3.vt_end);
}

static const char *lossy_plan = "# every kind of message-level fault at once\n"
                                "drop    p=0.15\n"
                                "dup     p=0.15\n"
                                "reorder p=0.25 window=3ms\n"
                                "delay   p=0.10 min=100us max=2ms\n";

static void test_exactly_once_under_faults(void **state)
{
    (void)state;
    run_rpc(21, lossy_plan, &O1, &S1, &C1);
    /* the plan did act */
    assert_true(O1.drops > 20);
    assert_true(O1.dups > 20);
    assert_true(O1.reorders > 20);
    /* and still: every request ran its handler exactly once, got one reply */
    assert_int_equal(O1.timeouts, 0);
    assert_int_equal(C1.bad, 0);
    for (int i = 0; i < NREQ; i++) {
        assert_int_equal(S1.calls[i], 1);
        assert_int_equal(C1.replies[i], 1);
    }
    assert_int_equal(S1.handled, NREQ);
    assert_true(O1.dup_dropped > 0); /* duplicates were seen and suppressed */
    /* the same with replies sent later, from a kept envelope */
    g_async = true;
    run_rpc(22, lossy_plan, &O3, &S2, &C2);
    g_async = false;
    assert_int_equal(O3.timeouts, 0);
    for (int i = 0; i < NREQ; i++) {
        assert_int_equal(S2.calls[i], 1);
        assert_int_equal(C2.replies[i], 1);
    }
    /* the faulty run is reproducible too */
    run_rpc(21, lossy_plan, &O2, &S2, &C2);
    assert_int_equal(O1.trace, O2.trace);
    assert_string_equal(O1.order, O2.order);
    assert_int_equal(O1.drops, O2.drops);
    /* without retries the same faults do lose requests: the test can fail */
    static const char *drop_only = "drop p=0.3 type=test.*\n";
    world_t w;
    duet_fault_plan_t *plan;
    assert_int_equal(duet_fault_plan_create(5, &plan), DUET_OK);
    assert_int_equal(duet_fault_plan_parse(plan, drop_only, "x"), DUET_OK);
    world_opts_t o = {.seed = 5, .faults = plan, .credit_window = 64};
    assert_int_equal(world_create(&w, TR_SIM, &o), DUET_OK);
    memset(&S2, 0, sizeof(S2));
    memset(&C2, 0, sizeof(C2));
    C2.timeout_ms = 5;
    assert_int_equal(duet_spawn(w.b, "server", &srv_ops, &S2, NULL), DUET_OK);
    assert_int_equal(duet_spawn(w.a, "client", &cli_ops, &C2, NULL), DUET_OK);
    assert_true(world_wait(&w, cli_finished, &C2, 60000));
    assert_true(C2.timeouts > 0);
    world_destroy(&w);
    duet_fault_plan_destroy(&plan);
}

/* ---- partition, crash, stall ---------------------------------------------- */

typedef struct mon {
    const char *target;
    uint64_t ref;
    int downs;
    char reason[256];
    uint64_t down_at;
    int timeouts, replies;
} mon_t;

static duet_status_t mon_start(duet_actor_t *self, void *arg, void **st)
{
    mon_t *m = arg;
    *st = m;
    return duet_monitor(self, m->target, &m->ref);
}

static duet_status_t mon_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    mon_t *m = state;
    const duet_sys_down_t *d = duet_msg_body(msg, &duet_msg_sys_down);
    if (d && d->ref == m->ref) {
        m->downs++;
        m->down_at = duet_actor_now_ns(self);
        snprintf(m->reason, sizeof(m->reason), "%s", d->reason);
    }
    return DUET_OK;
}

static const duet_actor_ops_t mon_ops = {"mon", mon_start, mon_handle, NULL};

static duet_status_t echo_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    const t_ping_t *p = t_msg_ping_body(m);
    if (p && (m->env.flags & DUET_ENV_F_REQUEST))
        return duet_reply(self, &m->env, &t_msg_pong, p);
    return DUET_OK;
}
static const duet_actor_ops_t echo_ops = {"echo", NULL, echo_handle, NULL};

/* calls "stallee" every 10 ms with a 20 ms timeout, no retries */
static duet_status_t prober_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    return duet_timer_start(self, 10, 10, 0, NULL);
}
static duet_status_t prober_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    mon_t *m = state;
    if (duet_msg_body(msg, &duet_msg_sys_timer)) {
        t_ping_t q = {1, "?"};
        duet_call_opts_t o = {.timeout_ms = 20};
        return duet_call(self, "stallee", &t_msg_ping, &q, &o, NULL);
    }
    if (duet_msg_body(msg, &duet_msg_sys_timeout))
        m->timeouts++;
    if (t_msg_pong_body(msg))
        m->replies++;
    return DUET_OK;
}
static const duet_actor_ops_t prober_ops = {"prober", prober_start, prober_handle, NULL};

static bool mon_down(void *arg)
{
    return ((mon_t *)arg)->downs > 0;
}

static void test_partition_crash_stall_plan(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof(path), "/tmp/duet-plan-%d.txt", (int)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("partition nodes=a|b at=200ms for=2s\n"
          "crash actor=doomed at=100ms\n"
          "stall actor=stallee at=500ms for=300ms\n",
          f);
    fclose(f);
    duet_fault_plan_t *plan;
    assert_int_equal(duet_fault_plan_create(3, &plan), DUET_OK);
    assert_int_equal(duet_fault_plan_load(plan, path), DUET_OK);
    unlink(path);
    world_t w;
    world_opts_t o = {.seed = 3, .faults = plan, .heartbeat_ms = 20};
    assert_int_equal(world_create(&w, TR_SIM, &o), DUET_OK);
    static mon_t remote, crash, stall;
    memset(&remote, 0, sizeof(remote));
    memset(&crash, 0, sizeof(crash));
    memset(&stall, 0, sizeof(stall));
    remote.target = "far";
    crash.target = "doomed";
    assert_int_equal(duet_spawn(w.b, "far", &echo_ops, NULL, NULL), DUET_OK);
    assert_int_equal(duet_spawn(w.a, "doomed", &echo_ops, NULL, NULL), DUET_OK);
    assert_int_equal(duet_spawn(w.a, "stallee", &echo_ops, NULL, NULL), DUET_OK);
    assert_int_equal(duet_spawn(w.a, "m1", &mon_ops, &remote, NULL), DUET_OK);
    assert_int_equal(duet_spawn(w.a, "m2", &mon_ops, &crash, NULL), DUET_OK);
    assert_int_equal(duet_spawn(w.a, "prober", &prober_ops, &stall, NULL), DUET_OK);
    assert_true(world_wait(&w, mon_down, &crash, 1000));
    assert_string_equal(crash.reason, "crash (fault injected)");
    assert_true(crash.down_at >= 100000000ull && crash.down_at < 110000000ull);
    int replies_before_stall = stall.replies;
    assert_true(replies_before_stall >= 5);
    assert_int_equal(stall.timeouts, 0);
    assert_true(world_wait(&w, mon_down, &remote, 2000));
    assert_string_equal(remote.reason, "noconnection");
    /* 3 missed 20 ms heartbeats (the default) after the cut at 200 ms */
    assert_true(remote.down_at >= 260000000ull && remote.down_at < 360000000ull);
    world_idle(&w, 1000);
    assert_true(stall.timeouts >= 5); /* the stalled actor did not answer in time */
    assert_true(stall.replies > replies_before_stall + 10); /* and answered again after */
    assert_int_equal(duet_fault_count(plan, DUET_FAULT_CRASH), 1);
    assert_int_equal(duet_fault_count(plan, DUET_FAULT_STALL), 1);
    assert_true(duet_fault_partitioned(plan, 300000000ull, "a", "b"));
    world_destroy(&w);
    duet_fault_plan_destroy(&plan);
}

/* ---- registries in separate "processes" follow restarts and moves ---------- */

static duet_status_t count_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    if (t_msg_ping_body(m))
        (*(int *)state)++;
    return DUET_OK;
}
static duet_status_t count_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    return DUET_OK;
}
static const duet_actor_ops_t count_ops = {"count", count_start, count_handle, NULL};

static void test_registry_follows_moves(void **state)
{
    (void)state;
    duet_simnet_t *sim;
    duet_simnet_config_t sc = {.seed = 9, .latency_min_ns = 10000, .latency_max_ns = 50000};
    assert_int_equal(duet_simnet_create(&sc, &sim), DUET_OK);
    duet_registry_t *reg[3];
    duet_node_t *node[3];
    const char *names[3] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(duet_registry_create(&reg[i]), DUET_OK);
        for (int k = 0; k < 3; k++) /* the deployment names the nodes, not the actors */
            duet_registry_add_node(reg[i], names[k], NULL, NULL);
    }
    for (int i = 0; i < 3; i++) {
        duet_node_config_t c = {.name = names[i], .registry = reg[i], .sim = sim};
        assert_int_equal(duet_node_create(&c, &node[i]), DUET_OK);
    }
    int on_b = 0, on_c = 0;
    char where[DUET_NAME_MAX];
    uint64_t e1 = 0, e2 = 0, e3 = 0;
    assert_int_equal(duet_spawn(node[1], "mover", &count_ops, &on_b, NULL), DUET_OK);
    duet_simnet_run(sim, duet_simnet_now(sim) + 50000000ull, 0);
    assert_int_equal(duet_registry_lookup(reg[0], "mover", where, &e1), DUET_OK);
    assert_string_equal(where, "b");
    t_ping_t m = {1, "x"};
    assert_int_equal(duet_node_send(node[0], "", "mover", &t_msg_ping, &m), DUET_OK);
    duet_simnet_run(sim, duet_simnet_now(sim) + 10000000ull, 0);
    assert_int_equal(on_b, 1);
    /* restart on b: a new incarnation */
    assert_int_equal(duet_stop(node[1], "mover", "normal"), DUET_OK);
    duet_simnet_run(sim, duet_simnet_now(sim) + 10000000ull, 0);
    assert_int_equal(duet_spawn(node[1], "mover", &count_ops, &on_b, NULL), DUET_OK);
    duet_simnet_run(sim, duet_simnet_now(sim) + 10000000ull, 0);
    assert_int_equal(duet_registry_lookup(reg[0], "mover", where, &e2), DUET_OK);
    assert_true(e2 > e1);
    /* move to c: a's registry follows, and a's messages go there */
    assert_int_equal(duet_stop(node[1], "mover", "normal"), DUET_OK);
    duet_simnet_run(sim, duet_simnet_now(sim) + 10000000ull, 0);
    assert_int_equal(duet_spawn(node[2], "mover", &count_ops, &on_c, NULL), DUET_OK);
    duet_simnet_run(sim, duet_simnet_now(sim) + 10000000ull, 0);
    assert_int_equal(duet_registry_lookup(reg[0], "mover", where, &e3), DUET_OK);
    assert_string_equal(where, "c");
    assert_int_equal(duet_node_send(node[0], "", "mover", &t_msg_ping, &m), DUET_OK);
    duet_simnet_run(sim, duet_simnet_now(sim) + 10000000ull, 0);
    assert_int_equal(on_c, 1);
    assert_int_equal(on_b, 1);
    /* a late node learns what already runs when it first hears from a peer */
    duet_registry_t *rd;
    assert_int_equal(duet_registry_create(&rd), DUET_OK);
    for (int k = 0; k < 3; k++)
        duet_registry_add_node(rd, names[k], NULL, NULL);
    duet_registry_add_node(rd, "d", NULL, NULL);
    for (int i = 0; i < 3; i++)
        duet_registry_add_node(reg[i], "d", NULL, NULL);
    duet_node_t *nd;
    duet_node_config_t cd = {.name = "d", .registry = rd, .sim = sim};
    assert_int_equal(duet_node_create(&cd, &nd), DUET_OK);
    duet_simnet_run(sim, duet_simnet_now(sim) + 300000000ull, 0);
    assert_int_equal(duet_registry_lookup(rd, "mover", where, NULL), DUET_OK);
    assert_string_equal(where, "c");
    duet_node_destroy(&nd);
    for (int i = 0; i < 3; i++)
        duet_node_destroy(&node[i]);
    duet_simnet_destroy(&sim);
    duet_registry_destroy(&rd);
    for (int i = 0; i < 3; i++)
        duet_registry_destroy(&reg[i]);
}

int main(void)
{
    t_register_msgs();
    duet_actors_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_seed_same_run),
        cmocka_unit_test(test_exactly_once_under_faults),
        cmocka_unit_test(test_partition_crash_stall_plan),
        cmocka_unit_test(test_registry_follows_moves),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
