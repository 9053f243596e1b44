/* router actor ("router") — the routing table and expert load.
 *
 * Holds expert -> expert shards (replicas listed in placement order) with a
 * version; pushes pipe.table to every attention shard when it starts (and
 * again, with a new version, whenever the table changes). Attention shards
 * spread the rows of a replicated expert over its replicas. Takes pipe.load
 * (rows per expert since the last report) and keeps per-expert totals, the
 * input of future rebalancing of hot experts.
 *
 * Liveness of expert shards: each announces itself with pipe.up{incarnation}
 * (answered with pipe.reset{current epoch}); attention shards report the
 * death of the incarnation they were wired with (pipe.down). When a shard is
 * up in an incarnation other than the wired or the dead one, the router
 * starts a new data-plane epoch: pipe.reset to every attention and expert
 * shard. */
#include <stdio.h>
#include <string.h>

#include "actors/pipe_int.h"

typedef struct router {
    duet_pipe_router_arg_t a;
    uint64_t version;
    uint64_t *load;          /* [n_experts] rows routed, all shards */
    uint64_t epoch;          /* data-plane epoch */
    uint8_t *watched, *down; /* [n_expert_shards] */
    uint64_t *up_inc;        /* [n_expert_shards] latest pipe.up's incarnation; 0 = none */
    uint64_t *handled_inc;   /* the incarnation the current epoch is wired with */
    uint64_t *dead_inc;      /* an incarnation reported down (pipe.down); 0 = none */
} router_t;

/* Every shard: data-plane epoch `epoch` begins. */
static void broadcast_reset(duet_actor_t *self, router_t *s)
{
    duet_pipe_reset_t r = {.epoch = s->epoch};
    char to[32];
    for (int i = 0; i < s->a.n_expert_shards; i++) {
        snprintf(to, sizeof(to), "expert/%d", i);
        duet_send(self, to, &duet_pipe_msg_reset, &r);
    }
    for (int i = 0; i < s->a.n_attention; i++) {
        snprintf(to, sizeof(to), "attn/%d", i);
        duet_send(self, to, &duet_pipe_msg_reset, &r);
    }
}

/* A new epoch is due when expert shard k is up in an incarnation other than
 * the one the deployment is wired with or one reported dead. */
static void check_restart(duet_actor_t *self, router_t *s, int k)
{
    uint64_t up = s->up_inc[k];
    if (!up)
        return;
    if (!s->handled_inc[k] && !s->dead_inc[k]) {
        s->handled_inc[k] = up; /* first sight */
        return;
    }
    if ((s->handled_inc[k] && up != s->handled_inc[k]) ||
        (s->dead_inc[k] && up != s->dead_inc[k])) {
        s->handled_inc[k] = up;
        s->dead_inc[k] = 0;
        s->epoch++;
        DUET_LOG_I("router", "expert/%d is back: data-plane epoch %llu", k,
                   (unsigned long long)s->epoch);
        broadcast_reset(self, s);
    }
}

static duet_status_t on_up(duet_actor_t *self, router_t *s, const duet_pipe_up_t *u)
{
    if (u->shard < 0 || u->shard >= s->a.n_expert_shards)
        return DUET_OK;
    char to[32];
    snprintf(to, sizeof(to), "expert/%d", u->shard);
    DUET_LOG_D("router", "%s up: incarnation %llu, epoch %llu", to,
               (unsigned long long)u->incarnation, (unsigned long long)u->epoch);
    if (!s->watched[u->shard]) {
        duet_status_t st = duet_monitor(self, to, NULL);
        if (st)
            return duet_error_wrap(st, "monitor %s", to);
        s->watched[u->shard] = 1;
    }
    s->up_inc[u->shard] = u->incarnation;
    uint64_t before = s->epoch;
    check_restart(self, s, u->shard);
    if (s->epoch != before)
        return DUET_OK;                        /* the broadcast answered it */
    duet_pipe_reset_t r = {.epoch = s->epoch}; /* the answer to pipe.up */
    return duet_send(self, to, &duet_pipe_msg_reset, &r);
}

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
        if (st) /* not up yet: it will ask with pipe.hello */
            DUET_LOG_D("router", "pipe.table to %s: %s", to, duet_error());
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
    s->watched = duet_calloc((size_t)s->a.n_expert_shards + 1, 1);
    s->down = duet_calloc((size_t)s->a.n_expert_shards + 1, 1);
    s->up_inc = duet_calloc((size_t)s->a.n_expert_shards + 1, sizeof(uint64_t));
    s->handled_inc = duet_calloc((size_t)s->a.n_expert_shards + 1, sizeof(uint64_t));
    s->dead_inc = duet_calloc((size_t)s->a.n_expert_shards + 1, sizeof(uint64_t));
    if (!s->load || !s->watched || !s->down || !s->up_inc || !s->handled_inc || !s->dead_inc)
        return DUET_ERR_NOMEM;
    return push_table(self, s);
}

static duet_status_t router_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    router_t *s = state;
    const duet_pipe_up_t *up = duet_pipe_msg_up_body(msg);
    if (up)
        return on_up(self, s, up);
    const duet_pipe_down_t *pd = duet_pipe_msg_down_body(msg);
    if (pd) {
        if (pd->shard >= 0 && pd->shard < s->a.n_expert_shards && pd->incarnation) {
            s->dead_inc[pd->shard] = pd->incarnation;
            if (s->handled_inc[pd->shard] == pd->incarnation)
                s->handled_inc[pd->shard] = 0; /* that wiring is gone */
            check_restart(self, s, pd->shard);
        }
        return DUET_OK;
    }
    const duet_sys_down_t *dn = duet_msg_body(msg, &duet_msg_sys_down);
    if (dn) {
        int k = -1;
        if (sscanf(dn->actor, "expert/%d", &k) == 1 && k >= 0 && k < s->a.n_expert_shards) {
            s->down[k] = 1;
            s->watched[k] = 0; /* monitors fire once */
        }
        return DUET_OK;
    }
    const duet_pipe_hello_t *h = duet_pipe_msg_hello_body(msg);
    if (h && h->shard >= 0 && h->shard < s->a.n_attention) {
        duet_pipe_table_t t = {
            .version = s->version,
            .offsets = {s->a.offsets, (size_t)s->a.n_experts + 1},
            .shards = {s->a.shards, (size_t)s->a.offsets[s->a.n_experts]},
        };
        char to[32];
        snprintf(to, sizeof(to), "attn/%d", h->shard);
        duet_status_t st = duet_send(self, to, &duet_pipe_msg_table, &t);
        if (st)
            DUET_LOG_W("router", "pipe.table to %s: %s", to, duet_error());
        return DUET_OK;
    }
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
    duet_free(s->watched);
    duet_free(s->down);
    duet_free(s->up_inc);
    duet_free(s->handled_inc);
    duet_free(s->dead_inc);
    duet_free(s);
}

const duet_actor_ops_t duet__pipe_router_ops = {
    .kind = "router",
    .start = router_start,
    .handle = router_handle,
    .stop = router_stop,
};
