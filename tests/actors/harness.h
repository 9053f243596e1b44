/* Test harness: two nodes "a" and "b" over one transport (inproc, ipc,
 * tcp on loopback, or the simulated network), and a wait that either
 * sleeps (real transports) or advances virtual time (simulation). */
#ifndef DUET_TEST_HARNESS_H
#define DUET_TEST_HARNESS_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "actors/actors.h"

typedef enum { TR_INPROC, TR_IPC, TR_TCP, TR_SIM } transport_t;

typedef struct world {
    transport_t tr;
    duet_registry_t *reg;
    duet_simnet_t *sim;
    void *ctx;
    duet_node_t *a, *b;
} world_t;

typedef struct world_opts {
    uint64_t seed;
    duet_fault_plan_t *faults;
    uint32_t credit_window;
    uint32_t heartbeat_ms;
} world_opts_t;

static inline transport_t transport_from_arg(int argc, char **argv)
{
    const char *t = argc > 1 ? argv[1] : getenv("DUET_TEST_TRANSPORT");
    if (!t || strcmp(t, "sim") == 0)
        return TR_SIM;
    if (strcmp(t, "inproc") == 0)
        return TR_INPROC;
    if (strcmp(t, "ipc") == 0)
        return TR_IPC;
    return TR_TCP;
}

static inline const char *transport_name(transport_t t)
{
    static const char *n[] = {"inproc", "ipc", "tcp", "sim"};
    return n[t];
}

static inline duet_status_t world_create(world_t *w, transport_t tr, const world_opts_t *o)
{
    static int instance;
    memset(w, 0, sizeof(*w));
    w->tr = tr;
    duet_status_t st = duet_registry_create(&w->reg);
    if (st)
        return st;
    char addr_a[128] = "", addr_b[128] = "";
    int k = instance++;
    int pid = (int)getpid();
    switch (tr) {
    case TR_SIM: {
        duet_simnet_config_t sc = {
            .seed = o && o->seed ? o->seed : 1, .latency_min_ns = 10000, .latency_max_ns = 200000};
        if ((st = duet_simnet_create(&sc, &w->sim)))
            return st;
        break;
    }
    case TR_INPROC:
        w->ctx = zmq_ctx_new();
        snprintf(addr_a, sizeof(addr_a), "inproc://duet-a-%d", k);
        snprintf(addr_b, sizeof(addr_b), "inproc://duet-b-%d", k);
        break;
    case TR_IPC:
        snprintf(addr_a, sizeof(addr_a), "ipc:///tmp/duet-t-%d-%d-a", pid, k);
        snprintf(addr_b, sizeof(addr_b), "ipc:///tmp/duet-t-%d-%d-b", pid, k);
        break;
    case TR_TCP:
        /* the OS picks free ports; the nodes put the real ones in the registry */
        snprintf(addr_a, sizeof(addr_a), "tcp://127.0.0.1:*");
        snprintf(addr_b, sizeof(addr_b), "tcp://127.0.0.1:*");
        break;
    }
    duet_registry_add_node(w->reg, "a", addr_a[0] ? addr_a : NULL, NULL);
    duet_registry_add_node(w->reg, "b", addr_b[0] ? addr_b : NULL, NULL);
    duet_node_config_t ca = {.name = "a",
                             .registry = w->reg,
                             .sim = w->sim,
                             .zmq_ctx = w->ctx,
                             .bind = addr_a[0] ? addr_a : NULL};
    if (o) {
        ca.faults = o->faults;
        ca.credit_window = o->credit_window;
        ca.heartbeat_ms = o->heartbeat_ms;
    }
    duet_node_config_t cb = ca;
    cb.name = "b";
    cb.bind = addr_b[0] ? addr_b : NULL;
    if ((st = duet_node_create(&cb, &w->b)))
        return st;
    if ((st = duet_node_create(&ca, &w->a)))
        return st;
    return DUET_OK;
}

static inline void world_destroy(world_t *w)
{
    duet_node_destroy(&w->a);
    duet_node_destroy(&w->b);
    if (w->sim)
        duet_simnet_destroy(&w->sim);
    if (w->ctx)
        zmq_ctx_term(w->ctx);
    duet_registry_destroy(&w->reg);
}

/* Wait until pred(arg) holds: up to `ms` of real or virtual time. */
static inline bool world_wait(world_t *w, bool (*pred)(void *), void *arg, uint64_t ms)
{
    if (w->sim) {
        uint64_t end = duet_simnet_now(w->sim) + ms * 1000000ull;
        while (!pred(arg) && duet_simnet_now(w->sim) < end)
            duet_simnet_run(w->sim, duet_simnet_now(w->sim) + 200000ull, 0);
        return pred(arg);
    }
    uint64_t end = duet_now_ns() + ms * 1000000ull;
    while (!pred(arg) && duet_now_ns() < end)
        usleep(500);
    return pred(arg);
}

/* Let time pass (to show that something does NOT happen). */
static inline void world_idle(world_t *w, uint64_t ms)
{
    if (w->sim)
        duet_simnet_run(w->sim, duet_simnet_now(w->sim) + ms * 1000000ull, 0);
    else
        usleep((useconds_t)(ms * 1000));
}
#endif
