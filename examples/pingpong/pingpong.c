/* pingpong — two duet nodes in two processes, over ipc or tcp.
 *
 *   pingpong serve ADDR_SRV ADDR_CLI           node "srv": actor "pong" answers pings
 *   pingpong ping  ADDR_SRV ADDR_CLI [N]       node "cli": actor "pinger" makes N calls
 *   pingpong selftest ipc|tcp [N]              forks a server, pings it, kills it with
 *                                              SIGKILL and waits for DOWN "noconnection"
 *
 * Contract: pinger monitors "pong", then calls it N times (request/reply
 * with timeout and retries) and prints round-trip p50/p99. pong replies to
 * every ping with a pong carrying the same n. */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "actors/actors.h"

typedef struct ex_ping {
    uint64_t n;
    uint64_t sent_ns;
} ex_ping_t;

static const duet_field_t ex_ping_fields[] = {
    DUET_FIELD(ex_ping_t, n, DUET_F_U64),
    DUET_FIELD(ex_ping_t, sent_ns, DUET_F_U64),
};
DUET_MSG_DEFINE(ex_msg_ping, 0xe01, "example.ping", ex_ping_t, ex_ping_fields)
DUET_MSG_DEFINE(ex_msg_pong, 0xe02, "example.pong", ex_ping_t, ex_ping_fields)

/* ---- pong ---- */
static duet_status_t pong_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    const ex_ping_t *p = ex_msg_ping_body(m);
    if (p)
        return duet_reply(self, &m->env, &ex_msg_pong, p);
    return DUET_OK;
}
static const duet_actor_ops_t pong_ops = {"pong", NULL, pong_handle, NULL};

/* ---- pinger ---- */
typedef struct pinger {
    uint64_t n, next;
    uint64_t *rtt;
    atomic_int done; /* 1: all replies in */
    atomic_int down; /* 1: DOWN seen */
    atomic_int failed;
    char down_reason[128];
    uint64_t ref;
    uint64_t start_deadline; /* the server may still be starting until then */
} pinger_t;

static duet_status_t pinger_next(duet_actor_t *self, pinger_t *p)
{
    ex_ping_t q = {p->next, duet_now_ns()};
    duet_call_opts_t o = {.timeout_ms = 2000, .retries = 3};
    return duet_call(self, "pong", &ex_msg_ping, &q, &o, NULL);
}

static duet_status_t pinger_start(duet_actor_t *self, void *arg, void **st)
{
    pinger_t *p = arg;
    *st = p;
    p->start_deadline = duet_now_ns() + 5000000000ull;
    return pinger_next(self, p);
}

static duet_status_t pinger_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    pinger_t *p = state;
    const ex_ping_t *r = ex_msg_pong_body(m);
    if (r) {
        if (r->n != p->next)
            atomic_store(&p->failed, 1);
        if (p->next == 0) { /* pong exists now: watch it from here on */
            duet_status_t s = duet_monitor(self, "pong", &p->ref);
            if (s)
                return s;
        }
        p->rtt[p->next++] = duet_now_ns() - r->sent_ns;
        if (p->next < p->n)
            return pinger_next(self, p);
        atomic_store(&p->done, 1);
        return DUET_OK;
    }
    if (duet_msg_body(m, &duet_msg_sys_noproc) && p->next == 0 &&
        duet_now_ns() < p->start_deadline) {
        usleep(10000); /* the server process has not spawned pong yet: ask again */
        return pinger_next(self, p);
    }
    if (duet_msg_body(m, &duet_msg_sys_timeout) || duet_msg_body(m, &duet_msg_sys_noproc)) {
        atomic_store(&p->failed, 1);
        return DUET_OK;
    }
    const duet_sys_down_t *d = duet_msg_body(m, &duet_msg_sys_down);
    if (d && d->ref == p->ref) {
        snprintf(p->down_reason, sizeof(p->down_reason), "%s", d->reason);
        atomic_store(&p->down, 1);
    }
    return DUET_OK;
}
static const duet_actor_ops_t pinger_ops = {"pinger", pinger_start, pinger_handle, NULL};

static duet_registry_t *make_registry(const char *srv, const char *cli)
{
    duet_registry_t *reg;
    if (duet_registry_create(&reg))
        return NULL;
    duet_registry_add_node(reg, "srv", srv, NULL);
    duet_registry_add_node(reg, "cli", cli, NULL);
    duet_registry_add_actor(reg, "pong", "srv");
    duet_registry_add_actor(reg, "pinger", "cli");
    return reg;
}

static int serve(const char *srv, const char *cli)
{
    duet_registry_t *reg = make_registry(srv, cli);
    duet_node_config_t c = {.name = "srv", .registry = reg, .bind = srv, .heartbeat_ms = 50};
    duet_node_t *node;
    if (!reg || duet_node_create(&c, &node) || duet_spawn(node, "pong", &pong_ops, NULL, NULL)) {
        fprintf(stderr, "serve: %s\n", duet_error());
        return 1;
    }
    for (;;)
        pause(); /* until killed */
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int ping(const char *srv, const char *cli, uint64_t n, pid_t child)
{
    duet_registry_t *reg = make_registry(srv, cli);
    duet_node_config_t c = {.name = "cli", .registry = reg, .bind = cli, .heartbeat_ms = 50};
    duet_node_t *node;
    pinger_t p = {.n = n};
    p.rtt = calloc(n, sizeof(uint64_t));
    if (!reg || !p.rtt || duet_node_create(&c, &node) ||
        duet_spawn(node, "pinger", &pinger_ops, &p, NULL)) {
        fprintf(stderr, "ping: %s\n", duet_error());
        return 1;
    }
    int rc = 0;
    uint64_t end = duet_now_ns() + 20000000000ull;
    while (!atomic_load(&p.done) && !atomic_load(&p.failed) && duet_now_ns() < end)
        usleep(1000);
    if (!atomic_load(&p.done)) {
        fprintf(stderr, "ping: only %llu of %llu replies\n", (unsigned long long)p.next,
                (unsigned long long)n);
        rc = 1;
    } else {
        qsort(p.rtt, n, sizeof(uint64_t), cmp_u64);
        printf("%llu round trips: p50 %.1f us, p99 %.1f us\n", (unsigned long long)n,
               p.rtt[n / 2] / 1e3, p.rtt[(n * 99) / 100] / 1e3);
    }
    if (child > 0 && rc == 0) {
        /* kill the server's process: DOWN must come from missed heartbeats */
        uint64_t t0 = duet_now_ns();
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        end = duet_now_ns() + 5000000000ull;
        while (!atomic_load(&p.down) && duet_now_ns() < end)
            usleep(1000);
        if (!atomic_load(&p.down) || strcmp(p.down_reason, "noconnection") != 0) {
            fprintf(stderr, "selftest: no DOWN noconnection after killing the server (got '%s')\n",
                    p.down_reason);
            rc = 1;
        } else {
            printf("DOWN pong: %s, %.0f ms after SIGKILL\n", p.down_reason,
                   (duet_now_ns() - t0) / 1e6);
        }
    }
    if (child > 0 && rc != 0) { /* never leave the server behind */
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
    duet_node_destroy(&node);
    duet_registry_destroy(&reg);
    free(p.rtt);
    return rc;
}

int main(int argc, char **argv)
{
    duet_msg_type_register(&ex_msg_ping);
    duet_msg_type_register(&ex_msg_pong);
    if (argc >= 4 && strcmp(argv[1], "serve") == 0)
        return serve(argv[2], argv[3]);
    if (argc >= 4 && strcmp(argv[1], "ping") == 0)
        return ping(argv[2], argv[3], argc > 4 ? strtoull(argv[4], NULL, 10) : 1000, 0);
    if (argc >= 3 && strcmp(argv[1], "selftest") == 0) {
        char srv[128], cli[128];
        int pid = (int)getpid();
        if (strcmp(argv[2], "ipc") == 0) {
            snprintf(srv, sizeof(srv), "ipc:///tmp/duet-pp-%d-srv", pid);
            snprintf(cli, sizeof(cli), "ipc:///tmp/duet-pp-%d-cli", pid);
        } else {
            /* below the usual ephemeral range (32768+), so no client port collides */
            snprintf(srv, sizeof(srv), "tcp://127.0.0.1:%d", 20000 + pid % 6000);
            snprintf(cli, sizeof(cli), "tcp://127.0.0.1:%d", 26000 + pid % 6000);
        }
        pid_t child = fork(); /* before any thread exists */
        if (child == 0)
            return serve(srv, cli);
        if (child < 0)
            return 1;
        int rc = ping(srv, cli, argc > 3 ? strtoull(argv[3], NULL, 10) : 500, child);
        return rc;
    }
    fprintf(stderr, "usage: %s serve|ping ADDR_SRV ADDR_CLI [N] | selftest ipc|tcp [N]\n", argv[0]);
    return 2;
}
