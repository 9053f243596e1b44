/* router actor ("router") — the routing table and expert load.
 *
 * Holds expert -> expert shards (replicas listed in placement order) with a
 * version; pushes pipe.table to every attention shard when it starts (and
 * again, with a new version, whenever the table changes). Attention shards
 * spread the rows of a replicated expert over its replicas. Takes pipe.load
 * (rows per expert since the last report) and keeps per-expert totals, the
 * input of future rebalancing of hot experts. */
#include <stdio.h>
#include <string.h>

#include "actors/pipe_int.h"

typedef struct router {
    duet_pipe_router_arg_t a;
    uint64_t version;
    uint64_t *load; /* [n_experts] rows routed, all shards */
} router_t;

static duet_status_t push_table(duet_actor_t *self, router_t *s)
{
    duet_pipe_table_t t = {
        .version = s->version,
        .offsets = {s->a.offsets, (size_t)s->a.n_experts + 1},
        .shards = {s->a.shards, (size_t)s->a.offsets[s->a.n_experts]},
    };
    for (int i = 0; i < s->a.n_attention; i++) {
        char to[32];
        snprintf(to, sizeof(to), "attn/%d", i);
        duet_status_t st = duet_send(self, to, &duet_pipe_msg_table, &t);
        if (st)
            return duet_error_wrap(st, "pipe.table to %s", to);
    }
    return DUET_OK;
}

static duet_status_t router_start(duet_actor_t *self, void *arg, void **state_out)
{
    router_t *s = duet_calloc(1, sizeof(*s));
    if (!s)
        return DUET_ERR_NOMEM;
    *state_out = s;
    s->a = *(const duet_pipe_router_arg_t *)arg;
    s->version = 1;
    s->load = duet_calloc((size_t)s->a.n_experts, sizeof(uint64_t));
    if (!s->load)
        return DUET_ERR_NOMEM;
    return push_table(self, s);
}

static duet_status_t router_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    (void)self;
    router_t *s = state;
    const duet_pipe_load_t *l = duet_pipe_msg_load_body(msg);
    if (l && l->rows.count == (size_t)s->a.n_experts) {
        const uint64_t *r = l->rows.data;
        for (int e = 0; e < s->a.n_experts; e++)
            s->load[e] += r[e];
    }
    return DUET_OK;
}

static void router_stop(duet_actor_t *self, void *state, const char *reason)
{
    (void)reason;
    router_t *s = state;
    if (!s)
        return;
    if (duet_log_level() >= DUET_LOG_INFO) {
        char line[1024];
        int n = snprintf(line, sizeof(line), "rows per expert:");
        for (int e = 0; e < s->a.n_experts && n > 0 && (size_t)n < sizeof(line); e++)
            n += snprintf(line + n, sizeof(line) - (size_t)n, " %llu",
                          (unsigned long long)s->load[e]);
        DUET_LOG_I("router", "%s: %s", duet_actor_name(self), line);
    }
    duet_free(s->load);
    duet_free(s);
}

const duet_actor_ops_t duet__pipe_router_ops = {
    .kind = "router",
    .start = router_start,
    .handle = router_handle,
    .stop = router_stop,
};
