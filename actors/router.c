/* router actor ("router") — the routing table, membership and expert load.
 *
 * Holds expert -> expert shards (replicas listed in placement order) and,
 * per data-plane epoch, which attention and expert shards take part. Every
 * change of membership starts a new epoch: pipe.reset{epoch, members,
 * table of the live expert shards} to every shard. Attention shards spread
 * the rows of a replicated expert over its live replicas. Takes pipe.load
 * (rows per expert since the last report) and keeps per-expert totals, the
 * input of future rebalancing of hot experts.
 *
 * Liveness: expert shards repeat pipe.up{incarnation, epoch, member} and
 * attention shards pipe.hello{incarnation, epoch, member} every 100 ms; the
 * router monitors both. A new epoch starts when
 *   - a shard dies (sys.down, or an attention shard's pipe.down about an
 *     expert shard): it leaves the membership (its expert rows go to the
 *     replicas; an expert with no live shard makes attention shards wait);
 *   - a shard not in the membership, or in a new incarnation (a restart),
 *     reports: it joins;
 *   - pipe.resync{epoch} for the current epoch (a step failed: the data
 *     plane is out of step), once per epoch.
 * A shard behind (an older epoch, or not a member though it is one) gets
 * the current pipe.reset on its next report.
 *
 * Restart of the router itself: its state is rebuilt from the reports.
 * Epoch 0 assumes every shard is a member. A report of an epoch newer than
 * the router's means the router restarted: it takes epoch (newest + 1),
 * gathers the shards that report within 300 ms as members and then
 * broadcasts that epoch. */
#include <stdio.h>
#include <string.h>

#include "actors/pipe_int.h"

#define MOD "router"
#define TAG_GATHER 3
#define GATHER_MS 300

typedef struct router {
    duet_pipe_router_arg_t a;
    uint64_t *load;          /* [n_experts] rows routed, all shards */
    uint64_t epoch;          /* data-plane epoch */
    uint32_t *alive_a;       /* [n_attention] member of the epoch */
    uint32_t *alive_e;       /* [n_expert_shards] */
    uint64_t *inc_a, *inc_e; /* incarnation known for each (0: unknown) */
    uint8_t *watched_a, *watched_e;
    uint32_t *off;   /* live table: n_experts + 1 */
    int32_t *shards; /* live table */
    bool gathering;
} router_t;

static void build_table(router_t *s)
{
    const int E = s->a.n_experts;
    uint32_t n = 0;
    s->off[0] = 0;
    for (int e = 0; e < E; e++) {
        for (uint32_t k = s->a.offsets[e]; k < s->a.offsets[e + 1]; k++)
            if (s->alive_e[s->a.shards[k]])
                s->shards[n++] = s->a.shards[k];
        s->off[e + 1] = n;
    }
}

static void send_reset(duet_actor_t *self, router_t *s, const char *to)
{
    duet_pipe_reset_t r = {
        .epoch = s->epoch,
        .attn_live = {s->alive_a, (size_t)s->a.n_attention},
        .expert_live = {s->alive_e, (size_t)s->a.n_expert_shards},
        .offsets = {s->off, (size_t)s->a.n_experts + 1},
        .shards = {s->shards, (size_t)s->off[s->a.n_experts]},
    };
    if (duet_send(self, to, &duet_pipe_msg_reset, &r))
        DUET_LOG_D(MOD, "pipe.reset to %s: %s", to, duet_error());
}

/* A new epoch with the current membership, to every shard. */
static void new_epoch(duet_actor_t *self, router_t *s, const char *why)
{
    s->epoch++;
    uint64_t k = atomic_fetch_add(&s->a.counters->epochs, 1);
    if (k < 32)
        atomic_store(&s->a.counters->epoch_ns[k], duet_actor_now_ns(self));
    build_table(s);
    char members[256];
    int n = 0;
    members[0] = 0;
    for (int i = 0; i < s->a.n_attention && n < 200; i++)
        if (!s->alive_a[i])
            n += snprintf(members + n, sizeof(members) - (size_t)n, " attn/%d", i);
    for (int i = 0; i < s->a.n_expert_shards && n < 200; i++)
        if (!s->alive_e[i])
            n += snprintf(members + n, sizeof(members) - (size_t)n, " expert/%d", i);
    DUET_LOG_I(MOD, "data-plane epoch %llu (%s); out:%s", (unsigned long long)s->epoch, why,
               n ? members : " none");
    if (s->gathering)
        return;
    char to[32];
    for (int i = 0; i < s->a.n_expert_shards; i++) {
        snprintf(to, sizeof(to), "expert/%d", i);
        send_reset(self, s, to);
    }
    for (int i = 0; i < s->a.n_attention; i++) {
        snprintf(to, sizeof(to), "attn/%d", i);
        send_reset(self, s, to);
    }
    send_reset(self, s, "scheduler"); /* for its error messages */
}

static void watch(duet_actor_t *self, uint8_t *watched, const char *name)
{
    if (*watched)
        return;
    if (duet_monitor(self, name, NULL) == DUET_OK)
        *watched = 1;
}

/* Someone reports epoch `epoch`, newer than ours: we restarted. */
static duet_status_t start_gather(duet_actor_t *self, router_t *s, uint64_t epoch)
{
    DUET_LOG_I(MOD, "a shard is in epoch %llu, ahead of the router: rebuilding membership",
               (unsigned long long)epoch);
    s->epoch = epoch; /* new_epoch after the window makes it epoch + 1 */
    memset(s->alive_a, 0, sizeof(uint32_t) * (size_t)s->a.n_attention);
    memset(s->alive_e, 0, sizeof(uint32_t) * (size_t)s->a.n_expert_shards);
    s->gathering = true;
    return duet_timer_start(self, GATHER_MS, 0, TAG_GATHER, NULL);
}

/* A report from shard `i` (attention or expert). */
static duet_status_t on_report(duet_actor_t *self, router_t *s, bool attn, int i, uint64_t inc,
                               uint64_t epoch, bool member)
{
    uint32_t *alive = attn ? s->alive_a : s->alive_e;
    uint64_t *known = attn ? s->inc_a : s->inc_e;
    char to[32];
    snprintf(to, sizeof(to), attn ? "attn/%d" : "expert/%d", i);
    if (epoch > s->epoch && !s->gathering) {
        duet_status_t st = start_gather(self, s, epoch);
        if (st)
            return st;
    }
    watch(self, attn ? &s->watched_a[i] : &s->watched_e[i], to);
    if (s->gathering) {
        alive[i] = 1;
        known[i] = inc;
        return DUET_OK;
    }
    if (alive[i] && (!known[i] || known[i] == inc)) {
        known[i] = inc; /* epoch 0: first sight of an assumed member */
        if (epoch < s->epoch || !member)
            send_reset(self, s, to); /* it missed the reset */
        return DUET_OK;
    }
    /* it joins: back after a death, or a new incarnation (a restart) */
    char why[64];
    snprintf(why, sizeof(why), "%s %s", to, alive[i] ? "restarted" : "is back");
    alive[i] = 1;
    known[i] = inc;
    new_epoch(self, s, why);
    return DUET_OK;
}

static void on_dead(duet_actor_t *self, router_t *s, bool attn, int i, const char *reason)
{
    uint32_t *alive = attn ? s->alive_a : s->alive_e;
    (attn ? s->watched_a : s->watched_e)[i] = 0; /* monitors fire once */
    if (!alive[i] || s->gathering) {
        alive[i] = 0;
        return;
    }
    alive[i] = 0;
    (attn ? s->inc_a : s->inc_e)[i] = 0;
    char why[200];
    snprintf(why, sizeof(why), "%s/%d down: %.150s", attn ? "attn" : "expert", i, reason);
    new_epoch(self, s, why);
}

static duet_status_t router_start(duet_actor_t *self, void *arg, void **state_out)
{
    router_t *s = duet_calloc(1, sizeof(*s));
    if (!s)
        return DUET_ERR_NOMEM;
    *state_out = s;
    s->a = *(const duet_pipe_router_arg_t *)arg;
    const int A = s->a.n_attention, S = s->a.n_expert_shards, E = s->a.n_experts;
    s->load = duet_calloc((size_t)E, sizeof(uint64_t));
    s->alive_a = duet_calloc((size_t)A, sizeof(uint32_t));
    s->alive_e = duet_calloc((size_t)S, sizeof(uint32_t));
    s->inc_a = duet_calloc((size_t)A, sizeof(uint64_t));
    s->inc_e = duet_calloc((size_t)S, sizeof(uint64_t));
    s->watched_a = duet_calloc((size_t)A, 1);
    s->watched_e = duet_calloc((size_t)S, 1);
    s->off = duet_calloc((size_t)E + 1, sizeof(uint32_t));
    s->shards = duet_calloc((size_t)s->a.offsets[E] + 1, sizeof(int32_t));
    if (!s->load || !s->alive_a || !s->alive_e || !s->inc_a || !s->inc_e || !s->watched_a ||
        !s->watched_e || !s->off || !s->shards)
        return DUET_ERR_NOMEM;
    for (int i = 0; i < A; i++)
        s->alive_a[i] = 1;
    for (int i = 0; i < S; i++)
        s->alive_e[i] = 1;
    build_table(s);
    /* epoch 0: every shard; the table goes out at once (and on each hello) */
    char to[32];
    for (int i = 0; i < A; i++) {
        snprintf(to, sizeof(to), "attn/%d", i);
        send_reset(self, s, to);
    }
    return DUET_OK;
}

static duet_status_t router_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    router_t *s = state;
    const duet_pipe_up_t *up = duet_pipe_msg_up_body(msg);
    if (up) {
        if (up->shard < 0 || up->shard >= s->a.n_expert_shards)
            return DUET_OK;
        return on_report(self, s, false, up->shard, up->incarnation, up->epoch, up->member);
    }
    const duet_pipe_hello_t *h = duet_pipe_msg_hello_body(msg);
    if (h) {
        if (h->shard < 0 || h->shard >= s->a.n_attention)
            return DUET_OK;
        return on_report(self, s, true, h->shard, h->incarnation, h->epoch, h->member);
    }
    const duet_pipe_resync_t *rs = duet_pipe_msg_resync_body(msg);
    if (rs) {
        /* later reports of the same epoch find it over */
        if (rs->epoch == s->epoch && !s->gathering) {
            char why[200];
            snprintf(why, sizeof(why), "resync from %d: %.150s", rs->shard, rs->why);
            new_epoch(self, s, why);
        }
        return DUET_OK;
    }
    const duet_pipe_down_t *pd = duet_pipe_msg_down_body(msg);
    if (pd) {
        if (pd->shard >= 0 && pd->shard < s->a.n_expert_shards && pd->incarnation &&
            s->inc_e[pd->shard] == pd->incarnation)
            on_dead(self, s, false, pd->shard, "reported by an attention shard");
        return DUET_OK;
    }
    const duet_sys_down_t *dn = duet_msg_body(msg, &duet_msg_sys_down);
    if (dn) {
        int k = -1;
        if (sscanf(dn->actor, "expert/%d", &k) == 1 && k >= 0 && k < s->a.n_expert_shards)
            on_dead(self, s, false, k, dn->reason);
        else if (sscanf(dn->actor, "attn/%d", &k) == 1 && k >= 0 && k < s->a.n_attention)
            on_dead(self, s, true, k, dn->reason);
        return DUET_OK;
    }
    const duet_sys_timer_t *tm = duet_msg_body(msg, &duet_msg_sys_timer);
    if (tm && tm->tag == TAG_GATHER && s->gathering) {
        s->gathering = false;
        new_epoch(self, s, "router restarted");
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
    if (s->load && duet_log_level() >= DUET_LOG_INFO) {
        char line[1024];
        int n = snprintf(line, sizeof(line), "rows per expert:");
        for (int e = 0; e < s->a.n_experts && n > 0 && (size_t)n < sizeof(line); e++)
            n += snprintf(line + n, sizeof(line) - (size_t)n, " %llu",
                          (unsigned long long)s->load[e]);
        DUET_LOG_I(MOD, "%s: %s", duet_actor_name(self), line);
    }
    duet_free(s->load);
    duet_free(s->alive_a);
    duet_free(s->alive_e);
    duet_free(s->inc_a);
    duet_free(s->inc_e);
    duet_free(s->watched_a);
    duet_free(s->watched_e);
    duet_free(s->off);
    duet_free(s->shards);
    duet_free(s);
}

const duet_actor_ops_t duet__pipe_router_ops = {
    .kind = "router",
    .start = router_start,
    .handle = router_handle,
    .stop = router_stop,
};
