/* Actor behaviour tests, run over every transport (argv[1]: inproc, ipc,
 * tcp, sim): ping-pong across nodes, fan-out/fan-in between many actors
 * (shared-loop and own-thread), request/reply with timeout and noproc,
 * monitors (DOWN on stop and on crash), links, supervision (one-for-one,
 * one-for-all, intensity escalation, nesting), credits stopping a fast
 * sender, timers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <poll.h>
#include <sys/resource.h>

#include "../mailbox/test_msgs.h"
#include "harness.h"

static transport_t TR;

/* ---- probe: answers pings; n == 666 makes it crash -------------------------- */

typedef struct probe_stats {
    atomic_int handled;
    atomic_int starts;
} probe_stats_t;

static duet_status_t probe_start(duet_actor_t *self, void *arg, void **st)
{
    probe_stats_t *ps = arg;
    if (ps)
        atomic_fetch_add(&ps->starts, 1);
    *st = arg;
    return DUET_OK;
}

static duet_status_t probe_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    probe_stats_t *ps = state;
    const t_ping_t *p = t_msg_ping_body(m);
    if (!p)
        return DUET_OK;
    if (ps)
        atomic_fetch_add(&ps->handled, 1);
    if (p->n == 666)
        return duet_errorf(DUET_ERR_INTERNAL, "asked to crash");
    t_ping_t r = {p->n, "pong"};
    if (m->env.flags & DUET_ENV_F_REQUEST)
        return duet_reply(self, &m->env, &t_msg_pong, &r);
    if (m->env.from[0])
        return duet_send(self, m->env.from, &t_msg_pong, &r);
    return DUET_OK;
}

static const duet_actor_ops_t probe_ops = {"probe", probe_start, probe_handle, NULL};

/* ---- pinger: N round trips, checks order -------------------------------------- */

typedef struct pinger {
    const char *target;
    int n;
    int next;
    atomic_int got;
    atomic_int errors;
} pinger_t;

static duet_status_t pinger_start(duet_actor_t *self, void *arg, void **st)
{
    pinger_t *p = arg;
    *st = p;
    p->next = 0;
    t_ping_t m = {0, "ping"};
    return duet_send(self, p->target, &t_msg_ping, &m);
}

static duet_status_t pinger_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    pinger_t *p = state;
    const t_ping_t *r = t_msg_pong_body(m);
    if (!r)
        return DUET_OK;
    if ((int)r->n != p->next || strcmp(r->text, "pong") != 0)
        atomic_fetch_add(&p->errors, 1);
    p->next++;
    atomic_fetch_add(&p->got, 1);
    if (p->next < p->n) {
        t_ping_t q = {(uint64_t)p->next, "ping"};
        return duet_send(self, p->target, &t_msg_ping, &q);
    }
    return DUET_OK;
}

static const duet_actor_ops_t pinger_ops = {"pinger", pinger_start, pinger_handle, NULL};

static bool got_all(void *arg)
{
    pinger_t *p = arg;
    return atomic_load(&p->got) >= p->n;
}

static world_t W;

static int setup(void **state)
{
    (void)state;
    world_opts_t o = {.credit_window = 8, .heartbeat_ms = 50};
    return world_create(&W, TR, &o) == DUET_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    world_destroy(&W);
    return 0;
}

static void test_ping_pong(void **state)
{
    (void)state;
    probe_stats_t ps = {0};
    assert_int_equal(duet_spawn(W.b, "pong", &probe_ops, &ps, NULL), DUET_OK);
    static pinger_t p;
    memset(&p, 0, sizeof(p));
    p.target = "pong";
    p.n = 300;
    assert_int_equal(duet_spawn(W.a, "ping", &pinger_ops, &p, NULL), DUET_OK);
    assert_true(world_wait(&W, got_all, &p, 10000));
    assert_int_equal(atomic_load(&p.got), 300);
    assert_int_equal(atomic_load(&p.errors), 0);
    assert_int_equal(atomic_load(&ps.handled), 300);
    /* and within one node, to an own-thread actor */
    static pinger_t p2;
    memset(&p2, 0, sizeof(p2));
    p2.target = "pong-local";
    p2.n = 100;
    duet_spawn_opts_t th = {.mode = DUET_RUN_THREAD};
    assert_int_equal(duet_spawn(W.a, "pong-local", &probe_ops, NULL, &th), DUET_OK);
    assert_int_equal(duet_spawn(W.a, "ping2", &pinger_ops, &p2, NULL), DUET_OK);
    assert_true(world_wait(&W, got_all, &p2, 10000));
    assert_int_equal(atomic_load(&p2.errors), 0);
    /* duplicate names are refused; unknown names are NOT_FOUND */
    assert_int_equal(duet_spawn(W.a, "ping2", &pinger_ops, &p2, NULL), DUET_ERR_INVALID);
    t_ping_t m = {1, "x"};
    assert_int_equal(duet_node_send(W.a, "t", "nobody", &t_msg_ping, &m), DUET_ERR_NOT_FOUND);
}

/* Compute actors spin (poll without sleeping) for a while after their last
 * message: the ping-pong between two of them still arrives whole and in
 * order, the spin phases are counted on real threads (never under the
 * simnet), and once the traffic stops the threads sleep: an idle node
 * burns no CPU. */
static double proc_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static void test_spin_ping_pong(void **state)
{
    (void)state;
    probe_stats_t ps = {0};
    duet_spawn_opts_t spin = {.mode = DUET_RUN_THREAD, .spin_us = 2000};
    assert_int_equal(duet_spawn(W.b, "pong", &probe_ops, &ps, &spin), DUET_OK);
    static pinger_t p;
    memset(&p, 0, sizeof(p));
    p.target = "pong";
    p.n = 300;
    assert_int_equal(duet_spawn(W.a, "ping", &pinger_ops, &p, &spin), DUET_OK);
    assert_true(world_wait(&W, got_all, &p, 10000));
    assert_int_equal(atomic_load(&p.got), 300);
    assert_int_equal(atomic_load(&p.errors), 0);
    assert_int_equal(atomic_load(&ps.handled), 300);
    duet_node_stats_t sa, sb;
    duet_node_stats(W.a, &sa);
    duet_node_stats(W.b, &sb);
    print_message("  spins a %llu (found work %llu), b %llu (%llu)\n", (unsigned long long)sa.spins,
                  (unsigned long long)sa.spin_hits, (unsigned long long)sb.spins,
                  (unsigned long long)sb.spin_hits);
    assert_true(sa.spin_hits <= sa.spins && sb.spin_hits <= sb.spins);
    if (TR == TR_SIM) {
        assert_int_equal(sa.spins + sb.spins, 0);
        return;
    }
    assert_true(sa.spins > 0 && sb.spins > 0);
    /* idle: the spins end within 2 ms of the last message, then the loops
     * sleep (heartbeats are the I/O threads' work) */
    usleep(50000);
    double c0 = proc_cpu_s(), t0 = duet_now_s();
    usleep(300000);
    double cpu = proc_cpu_s() - c0, wall = duet_now_s() - t0;
    print_message("  idle: %.1f ms CPU in %.1f ms\n", cpu * 1e3, wall * 1e3);
    assert_true(cpu < 0.25 * wall);
}

/* ---- fan-out / fan-in ------------------------------------------------------------ */

#define NW 12
#define NM 40

typedef struct hub {
    atomic_int got;
    atomic_int errors;
    atomic_int blocked;
    int next[NW];
    int sent[NW];
} hub_t;

/* Send worker w its remaining messages until credit runs out. */
static duet_status_t hub_pump(duet_actor_t *self, hub_t *h, int w)
{
    char to[32];
    snprintf(to, sizeof(to), "w/%d", w);
    while (h->sent[w] < NM) {
        t_ping_t m = {(uint64_t)h->sent[w], "ping"};
        duet_status_t s = duet_send(self, to, &t_msg_ping, &m);
        if (s == DUET_ERR_AGAIN) {
            atomic_fetch_add(&h->blocked, 1);
            return DUET_OK; /* sys.writable will resume */
        }
        if (s)
            return s;
        h->sent[w]++;
    }
    return DUET_OK;
}

static duet_status_t hub_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    for (int i = 0; i < NW; i++) {
        duet_status_t s = hub_pump(self, arg, i);
        if (s)
            return s;
    }
    return DUET_OK;
}

static duet_status_t hub_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    hub_t *h = state;
    const duet_sys_writable_t *wr = duet_msg_body(m, &duet_msg_sys_writable);
    if (wr)
        return hub_pump(self, h, atoi(wr->to + 2));
    const t_ping_t *r = t_msg_pong_body(m);
    if (!r)
        return DUET_OK;
    int w = atoi(m->env.from + 2);
    if (w < 0 || w >= NW || (int)r->n != h->next[w])
        atomic_fetch_add(&h->errors, 1);
    else
        h->next[w]++;
    atomic_fetch_add(&h->got, 1);
    return DUET_OK;
}

static const duet_actor_ops_t hub_ops = {"hub", hub_start, hub_handle, NULL};

static bool hub_done(void *arg)
{
    hub_t *h = arg;
    return atomic_load(&h->got) >= NW * NM;
}

static void test_fan_out_fan_in(void **state)
{
    (void)state;
    duet_registry_add_actor(W.reg, "w/*", "b"); /* glob entry */
    for (int i = 0; i < NW; i++) {
        char name[32];
        snprintf(name, sizeof(name), "w/%d", i);
        duet_spawn_opts_t o = {.mode = i % 3 == 0 ? DUET_RUN_THREAD : DUET_RUN_SHARED};
        assert_int_equal(duet_spawn(W.b, name, &probe_ops, NULL, &o), DUET_OK);
    }
    static hub_t h;
    memset(&h, 0, sizeof(h));
    assert_int_equal(duet_spawn(W.a, "hub", &hub_ops, &h, NULL), DUET_OK);
    assert_true(world_wait(&W, hub_done, &h, 15000));
    world_idle(&W, 20);
    assert_int_equal(atomic_load(&h.got), NW * NM); /* exactly: none lost, none doubled */
    assert_int_equal(atomic_load(&h.errors), 0);
    assert_true(atomic_load(&h.blocked) >= NW); /* NM > window: every worker pushed back */
}

/* ---- request/reply, timeouts, noproc -------------------------------------------- */

typedef struct caller {
    atomic_int phase; /* 1 timeout seen, 2 reply seen, 3 noproc seen */
    atomic_int errors;
    uint64_t seq_bh, seq_pong, seq_ghost;
    uint64_t t0, elapsed_ns;
} caller_t;

static duet_status_t sink_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    return DUET_OK; /* never replies */
}
static const duet_actor_ops_t sink_ops = {"sink", NULL, sink_handle, NULL};

static duet_status_t caller_start(duet_actor_t *self, void *arg, void **st)
{
    caller_t *c = arg;
    *st = c;
    t_ping_t m = {5, "req"};
    duet_call_opts_t o = {.timeout_ms = 40, .cookie = 77};
    c->t0 = duet_actor_now_ns(self);
    return duet_call(self, "blackhole", &t_msg_ping, &m, &o, &c->seq_bh);
}

static duet_status_t caller_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    caller_t *c = state;
    const duet_sys_timeout_t *to = duet_msg_body(m, &duet_msg_sys_timeout);
    t_ping_t q = {9, "req"};
    duet_call_opts_t o = {.timeout_ms = 2000};
    if (to) {
        c->elapsed_ns = duet_actor_now_ns(self) - c->t0;
        if (to->seq != c->seq_bh || to->cookie != 77 || strcmp(to->to, "blackhole") != 0 ||
            to->type != t_msg_ping.id)
            atomic_fetch_add(&c->errors, 1);
        atomic_store(&c->phase, 1);
        return duet_call(self, "pong", &t_msg_ping, &q, &o, &c->seq_pong);
    }
    const t_ping_t *r = t_msg_pong_body(m);
    if (r) {
        if (m->env.reply_to != c->seq_pong || r->n != 9 || m->env.trace == 0)
            atomic_fetch_add(&c->errors, 1);
        atomic_store(&c->phase, 2);
        return duet_call(self, "ghost", &t_msg_ping, &q, &o, &c->seq_ghost);
    }
    const duet_sys_noproc_t *np = duet_msg_body(m, &duet_msg_sys_noproc);
    if (np) {
        if (m->env.reply_to != c->seq_ghost || strcmp(np->actor, "ghost") != 0)
            atomic_fetch_add(&c->errors, 1);
        atomic_store(&c->phase, 3);
    }
    return DUET_OK;
}

static const duet_actor_ops_t caller_ops = {"caller", caller_start, caller_handle, NULL};

static bool phase3(void *arg)
{
    return atomic_load(&((caller_t *)arg)->phase) >= 3;
}

static void test_request_reply_timeout(void **state)
{
    (void)state;
    assert_int_equal(duet_spawn(W.b, "blackhole", &sink_ops, NULL, NULL), DUET_OK);
    assert_int_equal(duet_spawn(W.b, "pong", &probe_ops, NULL, NULL), DUET_OK);
    duet_registry_add_actor(W.reg, "ghost", "b"); /* named by the deployment, not running */
    static caller_t c;
    memset(&c, 0, sizeof(c));
    assert_int_equal(duet_spawn(W.a, "caller", &caller_ops, &c, NULL), DUET_OK);
    assert_true(world_wait(&W, phase3, &c, 10000));
    assert_int_equal(atomic_load(&c.errors), 0);
    assert_true(c.elapsed_ns >= 40000000ull);
    assert_true(c.elapsed_ns < 2000000000ull);
}

/* ---- monitors and links ------------------------------------------------------------- */

typedef struct watch {
    const char *targets[4];
    int ntargets;
    atomic_int armed;
    atomic_int downs;
    char reasons[4][256];
    uint64_t refs[4];
    atomic_int reason_set[4];
} watch_t;

static duet_status_t watch_start(duet_actor_t *self, void *arg, void **st)
{
    watch_t *w = arg;
    *st = w;
    for (int i = 0; i < w->ntargets; i++) {
        duet_status_t s = duet_monitor(self, w->targets[i], &w->refs[i]);
        if (s)
            return s;
        /* a call behind the MONITOR on the same link: its reply means armed */
        t_ping_t m = {(uint64_t)i, "arm"};
        duet_call_opts_t o = {.timeout_ms = 5000};
        if ((s = duet_call(self, w->targets[i], &t_msg_ping, &m, &o, NULL)))
            return s;
    }
    return DUET_OK;
}

static duet_status_t watch_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    watch_t *w = state;
    if (t_msg_pong_body(m)) {
        atomic_fetch_add(&w->armed, 1);
        return DUET_OK;
    }
    const duet_sys_down_t *d = duet_msg_body(m, &duet_msg_sys_down);
    if (d) {
        for (int i = 0; i < w->ntargets; i++)
            if (d->ref == w->refs[i] && strcmp(d->actor, w->targets[i]) == 0) {
                snprintf(w->reasons[i], sizeof(w->reasons[i]), "%s", d->reason);
                atomic_store(&w->reason_set[i], 1);
            }
        atomic_fetch_add(&w->downs, 1);
    }
    return DUET_OK;
}

static const duet_actor_ops_t watch_ops = {"watch", watch_start, watch_handle, NULL};

static duet_status_t linker_start(duet_actor_t *self, void *arg, void **st)
{
    return duet_link(self, (const char *)arg);
}
static const duet_actor_ops_t linker_ops = {"linker", linker_start, probe_handle, NULL};

typedef struct trapper {
    atomic_int exits;
    char reason[256];
} trapper_t;

static duet_status_t trap_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    return duet_link(self, "l1");
}
static duet_status_t trap_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    trapper_t *t = state;
    const duet_sys_down_t *d = duet_msg_body(m, &duet_msg_sys_exit);
    if (d) {
        snprintf(t->reason, sizeof(t->reason), "%s", d->reason);
        atomic_fetch_add(&t->exits, 1);
    }
    return probe_handle(self, NULL, m);
}
static const duet_actor_ops_t trap_ops = {"trapper", trap_start, trap_handle, NULL};

static bool armed_n(void *arg)
{
    watch_t *w = arg;
    return atomic_load(&w->armed) >= w->ntargets;
}

static bool downs3(void *arg)
{
    return atomic_load(&((watch_t *)arg)->downs) >= 3;
}

static void test_monitors_and_links(void **state)
{
    (void)state;
    assert_int_equal(duet_spawn(W.b, "victim", &probe_ops, NULL, NULL), DUET_OK);
    duet_spawn_opts_t th = {.mode = DUET_RUN_THREAD};
    assert_int_equal(duet_spawn(W.b, "crasher", &probe_ops, NULL, &th), DUET_OK);
    assert_int_equal(duet_spawn(W.a, "l1", &probe_ops, NULL, NULL), DUET_OK);
    assert_int_equal(duet_spawn(W.b, "l2", &linker_ops, (void *)"l1", NULL), DUET_OK);
    static trapper_t tp;
    memset(&tp, 0, sizeof(tp));
    duet_spawn_opts_t trap = {.trap_exit = true};
    assert_int_equal(duet_spawn(W.b, "trapper", &trap_ops, &tp, &trap), DUET_OK);
    static watch_t w;
    memset(&w, 0, sizeof(w));
    w.targets[0] = "victim";
    w.targets[1] = "crasher";
    w.targets[2] = "l2";
    w.targets[3] = "trapper";
    w.ntargets = 4;
    assert_int_equal(duet_spawn(W.a, "watcher", &watch_ops, &w, NULL), DUET_OK);
    assert_true(world_wait(&W, armed_n, &w, 10000));
    world_idle(&W, 20); /* links set up from l2/trapper's start have reached l1 */
    assert_int_equal(duet_stop(W.b, "victim", "normal"), DUET_OK);
    t_ping_t boom = {666, "boom"};
    assert_int_equal(duet_node_send(W.b, "test", "crasher", &t_msg_ping, &boom), DUET_OK);
    assert_int_equal(duet_node_send(W.a, "test", "l1", &t_msg_ping, &boom), DUET_OK);
    assert_true(world_wait(&W, downs3, &w, 10000)); /* trapper survives */
    world_idle(&W, 50);
    assert_int_equal(atomic_load(&w.downs), 3);
    assert_string_equal(w.reasons[0], "normal");
    assert_non_null(strstr(w.reasons[1], "error:"));
    assert_non_null(strstr(w.reasons[1], "asked to crash"));
    assert_non_null(strstr(w.reasons[2], "linked: l1: error"));
    assert_int_equal(atomic_load(&tp.exits), 1);
    assert_non_null(strstr(tp.reason, "asked to crash"));
    assert_true(duet_node_has_actor(W.b, "trapper"));
    assert_false(duet_node_has_actor(W.b, "l2"));
    assert_false(duet_node_has_actor(W.b, "crasher"));
}

/* ---- supervision -------------------------------------------------------------------- */

typedef struct crashy {
    atomic_int starts;
    atomic_int crashes_left;
} crashy_t;

static duet_status_t crashy_start(duet_actor_t *self, void *arg, void **st)
{
    crashy_t *c = arg;
    atomic_fetch_add(&c->starts, 1);
    *st = c;
    return duet_timer_start(self, 3, 0, 1, NULL);
}

static duet_status_t crashy_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    crashy_t *c = state;
    if (duet_msg_body(m, &duet_msg_sys_timer) && atomic_load(&c->crashes_left) > 0) {
        atomic_fetch_sub(&c->crashes_left, 1);
        return duet_errorf(DUET_ERR_INTERNAL, "crashy crashed");
    }
    return DUET_OK;
}

static const duet_actor_ops_t crashy_ops = {"crashy", crashy_start, crashy_handle, NULL};

typedef struct starts_pred {
    crashy_t *c;
    int n;
} starts_pred_t;

static bool starts_reached(void *arg)
{
    starts_pred_t *p = arg;
    return atomic_load(&p->c->starts) >= p->n && atomic_load(&p->c->crashes_left) == 0;
}

static void test_sup_one_for_one(void **state)
{
    (void)state;
    static crashy_t c1, c2;
    memset(&c1, 0, sizeof(c1));
    memset(&c2, 0, sizeof(c2));
    atomic_store(&c1.crashes_left, 3);
    static duet_child_spec_t kids[2];
    kids[0] = (duet_child_spec_t){
        "k1", &crashy_ops, &c1, {.mode = DUET_RUN_THREAD}, DUET_RESTART_PERMANENT};
    kids[1] = (duet_child_spec_t){"k2", &crashy_ops, &c2, {0}, DUET_RESTART_PERMANENT};
    static duet_sup_stats_t stats;
    memset(&stats, 0, sizeof(stats));
    static duet_sup_spec_t spec;
    spec = (duet_sup_spec_t){DUET_SUP_ONE_FOR_ONE, 5, 10000, kids, 2, &stats};
    assert_int_equal(duet_spawn(W.a, "sup", &duet_supervisor_ops, &spec, NULL), DUET_OK);
    starts_pred_t p = {&c1, 4};
    assert_true(world_wait(&W, starts_reached, &p, 10000));
    world_idle(&W, 30);
    assert_int_equal(atomic_load(&c1.starts), 4);
    assert_int_equal(atomic_load(&c2.starts), 1);
    assert_int_equal(atomic_load(&stats.restarts), 3);
    assert_int_equal(atomic_load(&stats.escalations), 0);
    assert_true(duet_node_has_actor(W.a, "k1"));
    assert_true(duet_node_has_actor(W.a, "sup"));
}

static void test_sup_one_for_all(void **state)
{
    (void)state;
    static crashy_t c[3];
    memset(c, 0, sizeof(c));
    atomic_store(&c[1].crashes_left, 1);
    static duet_child_spec_t kids[3];
    for (int i = 0; i < 3; i++) {
        static const char *names[] = {"x0", "x1", "x2"};
        kids[i] = (duet_child_spec_t){names[i],
                                      &crashy_ops,
                                      &c[i],
                                      {.mode = i == 2 ? DUET_RUN_THREAD : DUET_RUN_SHARED},
                                      DUET_RESTART_PERMANENT};
    }
    static duet_sup_stats_t stats;
    memset(&stats, 0, sizeof(stats));
    static duet_sup_spec_t spec;
    spec = (duet_sup_spec_t){DUET_SUP_ONE_FOR_ALL, 5, 10000, kids, 3, &stats};
    assert_int_equal(duet_spawn(W.a, "sup-all", &duet_supervisor_ops, &spec, NULL), DUET_OK);
    starts_pred_t p = {&c[0], 2};
    assert_true(world_wait(&W, starts_reached, &p, 10000));
    starts_pred_t p2 = {&c[2], 2};
    assert_true(world_wait(&W, starts_reached, &p2, 10000));
    world_idle(&W, 30);
    for (int i = 0; i < 3; i++)
        assert_int_equal(atomic_load(&c[i].starts), 2);
    assert_int_equal(atomic_load(&stats.restarts), 3);
    for (int i = 0; i < 3; i++)
        assert_true(duet_node_has_actor(W.a, kids[i].name));
}

static bool escalated(void *arg)
{
    return atomic_load(&((duet_sup_stats_t *)arg)->escalations) >= 1;
}

static void test_sup_intensity_escalates(void **state)
{
    (void)state;
    /* mid (intensity 1) supervises c; c crashes twice quickly -> mid
     * escalates; top restarts mid once, then c is stable */
    static crashy_t c;
    memset(&c, 0, sizeof(c));
    atomic_store(&c.crashes_left, 2);
    static duet_child_spec_t mid_kids[1];
    mid_kids[0] = (duet_child_spec_t){"c", &crashy_ops, &c, {0}, DUET_RESTART_PERMANENT};
    static duet_sup_stats_t mid_stats, top_stats;
    memset(&mid_stats, 0, sizeof(mid_stats));
    memset(&top_stats, 0, sizeof(top_stats));
    static duet_sup_spec_t mid;
    mid = (duet_sup_spec_t){DUET_SUP_ONE_FOR_ONE, 1, 10000, mid_kids, 1, &mid_stats};
    static duet_child_spec_t top_kids[1];
    top_kids[0] =
        (duet_child_spec_t){"mid", &duet_supervisor_ops, &mid, {0}, DUET_RESTART_PERMANENT};
    static duet_sup_spec_t top;
    top = (duet_sup_spec_t){DUET_SUP_ONE_FOR_ONE, 3, 10000, top_kids, 1, &top_stats};
    static watch_t w;
    memset(&w, 0, sizeof(w));
    assert_int_equal(duet_spawn(W.a, "top", &duet_supervisor_ops, &top, NULL), DUET_OK);
    assert_true(world_wait(&W, escalated, &mid_stats, 10000));
    starts_pred_t p = {&c, 3};
    assert_true(world_wait(&W, starts_reached, &p, 10000));
    world_idle(&W, 50);
    assert_int_equal(atomic_load(&mid_stats.escalations), 1);
    assert_int_equal(atomic_load(&mid_stats.restarts), 1);
    assert_int_equal(atomic_load(&top_stats.restarts), 1);
    assert_int_equal(atomic_load(&top_stats.escalations), 0);
    assert_int_equal(atomic_load(&c.starts), 3);
    assert_true(duet_node_has_actor(W.a, "mid"));
    assert_true(duet_node_has_actor(W.a, "c"));

    /* a lone supervisor over a child that always crashes: 2 restarts, then
     * it gives up and its watcher sees why */
    static crashy_t bad;
    memset(&bad, 0, sizeof(bad));
    atomic_store(&bad.crashes_left, 1000);
    static duet_child_spec_t kids[1];
    kids[0] = (duet_child_spec_t){"bad", &crashy_ops, &bad, {0}, DUET_RESTART_TRANSIENT};
    static duet_sup_stats_t st;
    memset(&st, 0, sizeof(st));
    static duet_sup_spec_t lone;
    lone = (duet_sup_spec_t){DUET_SUP_ONE_FOR_ONE, 2, 10000, kids, 1, &st};
    assert_int_equal(duet_spawn(W.b, "lone", &duet_supervisor_ops, &lone, NULL), DUET_OK);
    assert_true(world_wait(&W, escalated, &st, 10000));
    world_idle(&W, 50);
    assert_int_equal(atomic_load(&st.restarts), 2);
    assert_int_equal(atomic_load(&bad.starts), 3);
    assert_false(duet_node_has_actor(W.b, "lone"));
    assert_false(duet_node_has_actor(W.b, "bad"));
}

/* ---- credits -------------------------------------------------------------------------- */

#define NCRED 100

typedef struct fast {
    int sent;
    atomic_int first_block; /* messages sent before the first AGAIN */
    atomic_int blocks;
    atomic_int writable;
    atomic_int total;
} fast_t;

static duet_status_t fast_pump(duet_actor_t *self, fast_t *f)
{
    while (f->sent < NCRED) {
        t_ping_t m = {(uint64_t)f->sent, "data"};
        duet_status_t s = duet_send(self, "slow", &t_msg_ping, &m);
        if (s == DUET_ERR_AGAIN) {
            if (atomic_fetch_add(&f->blocks, 1) == 0)
                atomic_store(&f->first_block, f->sent);
            return DUET_OK;
        }
        if (s)
            return s;
        f->sent++;
        atomic_store(&f->total, f->sent);
    }
    return DUET_OK;
}

static duet_status_t fast_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    return fast_pump(self, arg);
}

static duet_status_t fast_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    fast_t *f = state;
    const duet_sys_writable_t *wr = duet_msg_body(m, &duet_msg_sys_writable);
    if (wr && strcmp(wr->to, "slow") == 0) {
        atomic_fetch_add(&f->writable, 1);
        return fast_pump(self, f);
    }
    return DUET_OK;
}

static const duet_actor_ops_t fast_ops = {"fast", fast_start, fast_handle, NULL};

typedef struct slow {
    atomic_int got;
    atomic_int errors;
} slow_t;

static duet_status_t slow_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    slow_t *s = state;
    const t_ping_t *p = t_msg_ping_body(m);
    if (p) {
        if ((int)p->n != atomic_load(&s->got))
            atomic_fetch_add(&s->errors, 1);
        atomic_fetch_add(&s->got, 1);
    }
    return DUET_OK;
}

static duet_status_t slow_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    return DUET_OK;
}

static const duet_actor_ops_t slow_ops = {"slow", slow_start, slow_handle, NULL};

static bool slow_done(void *arg)
{
    return atomic_load(&((slow_t *)arg)->got) >= NCRED;
}

static bool fast_blocked(void *arg)
{
    return atomic_load(&((fast_t *)arg)->blocks) >= 1;
}

static void test_credits_stop_fast_sender(void **state)
{
    (void)state;
    static slow_t s;
    static fast_t f;
    memset(&s, 0, sizeof(s));
    memset(&f, 0, sizeof(f));
    assert_int_equal(duet_spawn(W.b, "slow", &slow_ops, &s, NULL), DUET_OK);
    assert_int_equal(duet_stall(W.b, "slow", 300000000ull), DUET_OK); /* 300 ms */
    assert_int_equal(duet_spawn(W.a, "fast", &fast_ops, &f, NULL), DUET_OK);
    assert_true(world_wait(&W, fast_blocked, &f, 5000));
    world_idle(&W, 50);
    /* the stalled receiver holds exactly one window; the sender is stopped */
    assert_int_equal(atomic_load(&f.first_block), 8);
    assert_int_equal(atomic_load(&f.total), 8);
    assert_int_equal(atomic_load(&s.got), 0);
    assert_true(world_wait(&W, slow_done, &s, 10000));
    world_idle(&W, 20);
    assert_int_equal(atomic_load(&s.got), NCRED);
    assert_int_equal(atomic_load(&s.errors), 0);
    assert_true(atomic_load(&f.writable) >= 1);
}

/* ---- timers ----------------------------------------------------------------------------- */

typedef struct ticker {
    atomic_int ticks;
    atomic_int oneshots;
    uint64_t periodic, cancelled;
} ticker_t;

static duet_status_t tick_start(duet_actor_t *self, void *arg, void **st)
{
    ticker_t *t = arg;
    *st = t;
    duet_status_t s = duet_timer_start(self, 5, 5, 1, &t->periodic);
    if (!s)
        s = duet_timer_start(self, 20, 0, 2, NULL);
    if (!s)
        s = duet_timer_start(self, 10, 0, 3, &t->cancelled);
    if (!s)
        s = duet_timer_cancel(self, t->cancelled);
    return s;
}

static duet_status_t tick_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    ticker_t *t = state;
    const duet_sys_timer_t *tm = duet_msg_body(m, &duet_msg_sys_timer);
    if (!tm)
        return DUET_OK;
    if (tm->tag == 1 && atomic_fetch_add(&t->ticks, 1) + 1 == 5)
        return duet_timer_cancel(self, t->periodic);
    if (tm->tag == 2)
        atomic_fetch_add(&t->oneshots, 1);
    if (tm->tag == 3)
        return duet_errorf(DUET_ERR_INTERNAL, "cancelled timer fired");
    return DUET_OK;
}

static const duet_actor_ops_t tick_ops = {"ticker", tick_start, tick_handle, NULL};

static bool ticks5(void *arg)
{
    ticker_t *t = arg;
    return atomic_load(&t->ticks) >= 5 && atomic_load(&t->oneshots) >= 1;
}

static void test_timers(void **state)
{
    (void)state;
    static ticker_t t;
    memset(&t, 0, sizeof(t));
    duet_spawn_opts_t th = {.mode = DUET_RUN_THREAD};
    assert_int_equal(duet_spawn(W.a, "ticker", &tick_ops, &t, &th), DUET_OK);
    assert_true(world_wait(&W, ticks5, &t, 5000));
    world_idle(&W, 60);
    assert_int_equal(atomic_load(&t.ticks), 5);
    assert_int_equal(atomic_load(&t.oneshots), 1);
    assert_true(duet_node_has_actor(W.a, "ticker"));
}

/* ---- fds in the actor's poll; demonitor; remote stop ----------------------------- */

typedef struct fdact {
    int rfd;
    atomic_int bytes;
    atomic_int events;
    atomic_int downs;
    uint64_t ref;
} fdact_t;

static duet_status_t fd_start(duet_actor_t *self, void *arg, void **st)
{
    fdact_t *f = arg;
    *st = f;
    duet_status_t s = duet_actor_watch_fd(self, f->rfd, POLLIN, 42);
    if (s)
        return s;
    /* monitor and immediately demonitor "quiet": its stop must not reach us */
    if ((s = duet_monitor(self, "quiet", &f->ref)))
        return s;
    return duet_demonitor(self, f->ref);
}

static duet_status_t fd_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    fdact_t *f = state;
    const duet_sys_fd_t *e = duet_msg_body(m, &duet_msg_sys_fd);
    if (e && e->tag == 42 && e->fd == f->rfd && (e->revents & POLLIN)) {
        char buf[64];
        ssize_t n = read(f->rfd, buf, sizeof(buf));
        if (n > 0)
            atomic_fetch_add(&f->bytes, (int)n);
        atomic_fetch_add(&f->events, 1);
    }
    if (duet_msg_body(m, &duet_msg_sys_down))
        atomic_fetch_add(&f->downs, 1);
    return DUET_OK;
}

static const duet_actor_ops_t fd_ops = {"fdact", fd_start, fd_handle, NULL};

static bool fd_bytes(void *arg)
{
    return atomic_load(&((fdact_t *)arg)->bytes) >= 11;
}

static bool quiet_gone(void *arg)
{
    return !duet_node_has_actor((duet_node_t *)arg, "quiet");
}

static void test_fd_demonitor_remote_stop(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    static fdact_t f;
    memset(&f, 0, sizeof(f));
    f.rfd = p[0];
    assert_int_equal(duet_spawn(W.b, "quiet", &probe_ops, NULL, NULL), DUET_OK);
    duet_spawn_opts_t th = {.mode = DUET_RUN_THREAD};
    assert_int_equal(duet_spawn(W.a, "fdact", &fd_ops, &f, &th), DUET_OK);
    world_idle(&W, 20);
    if (TR == TR_SIM) {
        /* no fds under simulation: start fails with UNSUPPORTED and says so */
        assert_false(duet_node_has_actor(W.a, "fdact"));
    } else {
        assert_true(duet_node_has_actor(W.a, "fdact"));
        assert_int_equal(write(p[1], "hello world", 11), 11);
        assert_true(world_wait(&W, fd_bytes, &f, 5000));
        assert_int_equal(atomic_load(&f.bytes), 11);
    }
    /* stop "quiet" by name from node a although it runs on b */
    assert_int_equal(duet_stop(W.a, "quiet", "normal"), DUET_OK);
    assert_true(world_wait(&W, quiet_gone, W.b, 5000));
    world_idle(&W, 30);
    assert_int_equal(atomic_load(&f.downs), 0); /* demonitored: no DOWN */
    assert_int_equal(duet_stop(W.a, "never-heard-of", NULL), DUET_ERR_NOT_FOUND);
    duet_stop(W.a, "fdact", "normal");
    world_idle(&W, 20);
    close(p[0]);
    close(p[1]);
}

/* ---- the fault layer on real transports too ------------------------------------- */

typedef struct fcount {
    atomic_int n;
    atomic_uint_fast64_t first_ns;
} fcount_t;

static duet_status_t fc_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    return DUET_OK;
}

static duet_status_t fc_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    fcount_t *c = state;
    if (t_msg_ping_body(m) && atomic_fetch_add(&c->n, 1) == 0)
        atomic_store(&c->first_ns, duet_actor_now_ns(self));
    return DUET_OK;
}

static const duet_actor_ops_t fc_ops = {"fcount", fc_start, fc_handle, NULL};

static bool faults_seen(void *arg)
{
    fcount_t *c = arg;
    return atomic_load(&c[1].n) >= 2 && atomic_load(&c[2].n) >= 1;
}

static void test_fault_layer(void **state)
{
    (void)state;
    duet_fault_plan_t *plan;
    assert_int_equal(duet_fault_plan_create(1, &plan), DUET_OK);
    assert_int_equal(duet_fault_plan_parse(plan,
                                           "drop p=1 to=dropme\n"
                                           "dup p=1 to=dupme type=test.ping\n"
                                           "delay ms=40 to=slowme\n",
                                           "inline"),
                     DUET_OK);
    world_t w;
    world_opts_t o = {.faults = plan};
    assert_int_equal(world_create(&w, TR, &o), DUET_OK);
    static fcount_t c[3];
    memset(c, 0, sizeof(c));
    const char *names[3] = {"dropme", "dupme", "slowme"};
    for (int i = 0; i < 3; i++)
        assert_int_equal(duet_spawn(w.b, names[i], &fc_ops, &c[i], NULL), DUET_OK);
    world_idle(&w, 20);
    t_ping_t m = {1, "f"};
    uint64_t t0 = duet_node_now_ns(w.a);
    for (int i = 0; i < 3; i++)
        assert_int_equal(duet_node_send(w.a, "", names[i], &t_msg_ping, &m), DUET_OK);
    assert_true(world_wait(&w, faults_seen, c, 5000));
    world_idle(&w, 30);
    assert_int_equal(atomic_load(&c[0].n), 0);
    assert_int_equal(atomic_load(&c[1].n), 2);
    assert_int_equal(atomic_load(&c[2].n), 1);
    assert_true(atomic_load(&c[2].first_ns) - t0 >= 40000000ull);
    assert_int_equal(duet_fault_count(plan, DUET_FAULT_DROP), 1);
    assert_int_equal(duet_fault_count(plan, DUET_FAULT_DUP), 1);
    assert_int_equal(duet_fault_count(plan, DUET_FAULT_DELAY), 1);
    world_destroy(&w);
    duet_fault_plan_destroy(&plan);
}

/* ---- a rogue peer sending garbage to a node -------------------------------------- */

static bool one_msg(void *arg)
{
    return atomic_load(&((fcount_t *)arg)->n) >= 1;
}

static void test_rogue_peer(void **state)
{
    (void)state;
    if (TR == TR_SIM) {
        print_message("SKIP: needs a real socket\n");
        skip();
    }
    world_t w;
    assert_int_equal(world_create(&w, TR, NULL), DUET_OK);
    static fcount_t c;
    memset(&c, 0, sizeof(c));
    assert_int_equal(duet_spawn(w.b, "target", &fc_ops, &c, NULL), DUET_OK);
    duet_registry_add_actor(w.reg, "a-actor", "a");
    char addr[256];
    assert_int_equal(duet_registry_node_addr(w.reg, "b", addr, NULL), DUET_OK);
    void *ctx = w.ctx ? w.ctx : zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_ROUTING_ID, "rogue", 5);
    zmq_setsockopt(s, ZMQ_CONNECT_ROUTING_ID, "b", 1);
    assert_int_equal(zmq_connect(s, addr), 0);
    /* garbage, a bomb, an unknown type, a bad body, a forged sender, then one good frame */
    duet_buf_t frames[6];
    memset(frames, 0, sizeof(frames));
    static const char junk[] = "\xc1\xc1\xc1 not msgpack";
    duet_buf_append(&frames[0], junk, sizeof(junk) - 1);
    duet_buf_append(&frames[1], "\xdd\xff\xff\xff\xff", 5);
    duet_env_t env = {.type = 0x777};
    snprintf(env.from, sizeof(env.from), "rogue/1");
    snprintf(env.to, sizeof(env.to), "target");
    t_ping_t m = {1, "x"};
    env.type = t_msg_ping.id;
    assert_int_equal(duet_msg_encode(&env, &m, NULL, &frames[2]), DUET_OK);
    frames[2].data[2] = 0xcd; /* type 0xf02 -> 0xcd.. : breaks the type field's encoding */
    assert_int_equal(duet_msg_encode(&env, &m, NULL, &frames[3]), DUET_OK);
    frames[3].data[frames[3].len - 3] = 0xc1;        /* a reserved byte inside the body */
    snprintf(env.from, sizeof(env.from), "a-actor"); /* lives on node a, not "rogue" */
    assert_int_equal(duet_msg_encode(&env, &m, NULL, &frames[4]), DUET_OK);
    snprintf(env.from, sizeof(env.from), "rogue/1");
    assert_int_equal(duet_msg_encode(&env, &m, NULL, &frames[5]), DUET_OK);
    for (int i = 0; i < 6; i++) {
        zmq_send(s, "b", 1, ZMQ_SNDMORE);
        zmq_send(s, frames[i].data, frames[i].len, 0);
        duet_buf_cleanup(&frames[i]);
    }
    assert_true(world_wait(&w, one_msg, &c, 5000));
    world_idle(&w, 50);
    assert_int_equal(atomic_load(&c.n), 1);
    duet_node_stats_t st;
    duet_node_stats(w.b, &st);
    assert_true(st.decode_errors >= 5);
    assert_true(duet_node_has_actor(w.b, "target"));
    zmq_close(s);
    if (!w.ctx)
        zmq_ctx_term(ctx);
    world_destroy(&w);
}

/* ---- CURVE between nodes (tcp only) -------------------------------------------- */

typedef struct cpinger {
    atomic_int pongs, timeouts;
    atomic_bool quiet; /* stop calling */
} cpinger_t;

static duet_status_t cp_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    return duet_timer_start(self, 1, 5, 0, NULL);
}

static duet_status_t cp_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    cpinger_t *c = state;
    if (duet_msg_body(m, &duet_msg_sys_timer)) {
        if (atomic_load(&c->quiet))
            return DUET_OK;
        t_ping_t q = {1, "secret"};
        duet_call_opts_t o = {.timeout_ms = 100};
        return duet_call(self, "cpong", &t_msg_ping, &q, &o, NULL);
    }
    if (t_msg_pong_body(m))
        atomic_fetch_add(&c->pongs, 1);
    if (duet_msg_body(m, &duet_msg_sys_timeout) || duet_msg_body(m, &duet_msg_sys_noproc))
        atomic_fetch_add(&c->timeouts, 1);
    return DUET_OK;
}

static const duet_actor_ops_t cp_ops = {"cpinger", cp_start, cp_handle, NULL};

static bool curve_done(void *arg)
{
    cpinger_t *c = arg;
    return atomic_load(&c[0].pongs) >= 20 && atomic_load(&c[1].timeouts) >= 2;
}

static void test_curve_nodes(void **state)
{
    (void)state;
    if (TR != TR_TCP) {
        print_message("SKIP: CURVE applies to tcp; transport is %s\n", transport_name(TR));
        skip();
    }
    if (!duet_zep_has_curve()) {
        print_message("SKIP: libzmq has no CURVE (built without libsodium)\n");
        skip();
    }
    duet_curve_keys_t ka, kb, ke;
    assert_int_equal(duet_curve_keypair(&ka), DUET_OK);
    assert_int_equal(duet_curve_keypair(&kb), DUET_OK);
    assert_int_equal(duet_curve_keypair(&ke), DUET_OK);
    const char *aa = "tcp://127.0.0.1:*", *ab = aa, *ae = aa; /* nodes record the real ports */
    duet_registry_t *reg;
    assert_int_equal(duet_registry_create(&reg), DUET_OK);
    /* "0evil" sorts first: it connects to b (and a) with its unknown key */
    duet_registry_add_actor(reg, "cpong", "b");
    const char *allow_a[] = {kb.public_z85, NULL};
    const char *allow_b[] = {ka.public_z85, NULL};
    const char *allow_e[] = {NULL};
    duet_node_config_t cb = {.name = "b",
                             .registry = reg,
                             .bind = ab,
                             .curve = &kb,
                             .allow_keys = allow_b,
                             .connect_timeout_ms = 300};
    duet_node_config_t ca = cb, ce = cb;
    ca.name = "a";
    ca.bind = aa;
    ca.curve = &ka;
    ca.allow_keys = allow_a;
    ce.name = "0evil";
    ce.bind = ae;
    ce.curve = &ke;
    ce.allow_keys = allow_e;
    duet_node_t *a, *b, *e;
    assert_int_equal(duet_node_create(&cb, &b), DUET_OK);
    assert_int_equal(duet_node_create(&ca, &a), DUET_OK);
    assert_int_equal(duet_node_create(&ce, &e), DUET_OK);
    probe_stats_t ps = {0};
    /* its own thread: reached on its loop's socket, which CURVE guards too */
    duet_spawn_opts_t th = {.mode = DUET_RUN_THREAD};
    assert_int_equal(duet_spawn(b, "cpong", &probe_ops, &ps, &th), DUET_OK);
    static cpinger_t c[2];
    memset(c, 0, sizeof(c));
    assert_int_equal(duet_spawn(a, "good", &cp_ops, &c[0], NULL), DUET_OK);
    assert_int_equal(duet_spawn(e, "intruder", &cp_ops, &c[1], NULL), DUET_OK);
    world_t w = {.tr = TR_TCP};
    assert_true(world_wait(&w, curve_done, c, 10000));
    duet_node_stats_t sb;
    duet_node_stats(b, &sb);
    assert_true(sb.refused >= 1);
    assert_int_equal(atomic_load(&c[1].pongs), 0); /* the unknown key got nothing */
    /* only a's pings ran: quiet it and let the calls in flight land first (a
     * reply later than the 100 ms timeout counts as a timeout, not a pong) */
    atomic_store(&c[0].quiet, true);
    world_idle(&w, 300);
    int handled = atomic_load(&ps.handled), pongs = atomic_load(&c[0].pongs);
    assert_true(handled >= pongs);
    assert_true(handled <= pongs + atomic_load(&c[0].timeouts));
    duet_node_destroy(&e);
    duet_node_destroy(&a);
    duet_node_destroy(&b);
    duet_registry_destroy(&reg);
}

/* ---- own-thread actors across nodes: stop and restart ------------------------ */

/* An own-thread actor on another node is reached on its loop's socket
 * (real transports). Its stop must still answer calls with noproc (its
 * address is withdrawn and the node answers), and a new incarnation on a
 * new thread must get the calls that follow, each exactly once. */
typedef struct rcaller {
    atomic_int pongs, noprocs, timeouts, errors;
    atomic_bool quiet; /* stop calling */
    uint64_t n;
} rcaller_t;

static duet_status_t rcaller_call(duet_actor_t *self, rcaller_t *c)
{
    t_ping_t q = {++c->n, "req"};
    duet_call_opts_t o = {.timeout_ms = 2000};
    duet_status_t st = duet_call(self, "worker", &t_msg_ping, &q, &o, NULL);
    return st == DUET_ERR_AGAIN ? DUET_OK : st; /* credits: the timer tries again */
}

static duet_status_t rcaller_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    return duet_timer_start(self, 1, 1, 0, NULL);
}

static duet_status_t rcaller_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    rcaller_t *c = state;
    if (duet_msg_body(m, &duet_msg_sys_timer))
        return atomic_load(&c->quiet) ? DUET_OK : rcaller_call(self, c);
    const t_ping_t *r = t_msg_pong_body(m);
    if (r) {
        if (r->n > c->n || strcmp(r->text, "pong") != 0)
            atomic_fetch_add(&c->errors, 1);
        atomic_fetch_add(&c->pongs, 1);
    } else if (duet_msg_body(m, &duet_msg_sys_noproc)) {
        atomic_fetch_add(&c->noprocs, 1);
    } else if (duet_msg_body(m, &duet_msg_sys_timeout)) {
        atomic_fetch_add(&c->timeouts, 1);
    }
    return DUET_OK;
}

static const duet_actor_ops_t rcaller_ops = {"rcaller", rcaller_start, rcaller_handle, NULL};

typedef struct count_at_least {
    atomic_int *v;
    int n;
} count_at_least_t;

static bool at_least(void *arg)
{
    count_at_least_t *c = arg;
    return atomic_load(c->v) >= c->n;
}

static void test_thread_actor_restart_remote(void **state)
{
    (void)state;
    static probe_stats_t ps1, ps2;
    memset(&ps1, 0, sizeof(ps1));
    memset(&ps2, 0, sizeof(ps2));
    duet_spawn_opts_t th = {.mode = DUET_RUN_THREAD};
    assert_int_equal(duet_spawn(W.b, "worker", &probe_ops, &ps1, &th), DUET_OK);
    static rcaller_t c;
    memset(&c, 0, sizeof(c));
    assert_int_equal(duet_spawn(W.a, "rcaller", &rcaller_ops, &c, &th), DUET_OK);
    count_at_least_t want = {&c.pongs, 30};
    assert_true(world_wait(&W, at_least, &want, 10000));
    assert_int_equal(duet_stop(W.b, "worker", "normal"), DUET_OK);
    count_at_least_t np = {&c.noprocs, 3};
    assert_true(world_wait(&W, at_least, &np, 10000));
    int before = atomic_load(&c.pongs);
    assert_int_equal(duet_spawn(W.b, "worker", &probe_ops, &ps2, &th), DUET_OK);
    count_at_least_t again = {&c.pongs, before + 30};
    assert_true(world_wait(&W, at_least, &again, 10000));
    atomic_store(&c.quiet, true);
    world_idle(&W, 300); /* the calls in flight are answered */
    /* every call that ran was answered once (none lost, none run twice) */
    assert_int_equal(atomic_load(&c.errors), 0);
    assert_int_equal(atomic_load(&ps1.handled) + atomic_load(&ps2.handled), atomic_load(&c.pongs));
    assert_true(atomic_load(&ps2.handled) >= 30);
}

int main(int argc, char **argv)
{
    TR = transport_from_arg(argc, argv);
    t_register_msgs();
    duet_actors_init();
    fprintf(stderr, "transport: %s\n", transport_name(TR));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ping_pong, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spin_ping_pong, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fan_out_fan_in, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_reply_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_monitors_and_links, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sup_one_for_one, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sup_one_for_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sup_intensity_escalates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_credits_stop_fast_sender, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fd_demonitor_remote_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thread_actor_restart_remote, setup, teardown),
        cmocka_unit_test(test_fault_layer),
        cmocka_unit_test(test_rogue_peer),
        cmocka_unit_test(test_curve_nodes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
