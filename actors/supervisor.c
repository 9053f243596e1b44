/* supervisor — an actor that starts its children, monitors them and
 * restarts them by policy:
 *   one-for-one: only the child that stopped is restarted;
 *   one-for-all: the others are stopped ("shutdown"), and once all of them
 *                are down, every child is started again in spec order.
 * Restart intensity as in Erlang/OTP: more than `intensity` restarts within
 * `period_ms` and the supervisor stops its children and itself with reason
 * "shutdown: restart intensity"; its own supervisor sees that as a child
 * failure (escalation).
 * Messages taken: sys.down (children), sys.timer (spawn retries while a
 * stopping child still holds its name). Sends: none (stop requests only). */
#include <string.h>

#include "actors/actors.h"

#define SPAWN_RETRY_NS 1000000ull /* 1 ms */
#define SPAWN_RETRIES 3000
#define TAG_ALL UINT64_MAX

typedef struct sup {
    const duet_sup_spec_t *spec;
    uint64_t *refs;
    bool *running;
    uint32_t *tries;
    uint64_t *times; /* ring of recent restart times */
    size_t ntimes;
    size_t waiting; /* one-for-all: children still to go down */
    bool restarting_all;
} sup_t;

static duet_status_t spawn_child(duet_actor_t *self, sup_t *s, size_t i)
{
    const duet_child_spec_t *c = &s->spec->children[i];
    duet_status_t st = duet_spawn(duet_actor_node(self), c->name, c->ops, c->arg, &c->opts);
    if (st == DUET_ERR_AGAIN) { /* the old incarnation is still stopping */
        if (++s->tries[i] > SPAWN_RETRIES)
            return duet_errorf(DUET_ERR_TIMEOUT, "supervisor %s: child %s never released its name",
                               duet_actor_name(self), c->name);
        return duet_timer_start_ns(self, SPAWN_RETRY_NS, 0, i, NULL);
    }
    if (st)
        return duet_error_wrap(st, "supervisor %s: child %s", duet_actor_name(self), c->name);
    s->tries[i] = 0;
    s->running[i] = true;
    return duet_monitor(self, c->name, &s->refs[i]);
}

static duet_status_t sup_start(duet_actor_t *self, void *arg, void **state_out)
{
    const duet_sup_spec_t *spec = arg;
    size_t n = spec->nchildren;
    sup_t *s = duet_calloc(1, sizeof(*s));
    if (!s)
        return duet_errorf(DUET_ERR_NOMEM, "supervisor");
    s->spec = spec;
    s->refs = duet_calloc(n + 1, sizeof(*s->refs));
    s->running = duet_calloc(n + 1, sizeof(*s->running));
    s->tries = duet_calloc(n + 1, sizeof(*s->tries));
    s->times = duet_calloc(spec->intensity + 1, sizeof(*s->times));
    *state_out = s; /* stop() frees it even if a child fails to start */
    if (!s->refs || !s->running || !s->tries || !s->times)
        return duet_errorf(DUET_ERR_NOMEM, "supervisor");
    for (size_t i = 0; i < n; i++) {
        duet_status_t st = spawn_child(self, s, i);
        if (st)
            return st;
    }
    return DUET_OK;
}

static bool wants_restart(const duet_child_spec_t *c, const char *reason)
{
    switch (c->restart) {
    case DUET_RESTART_PERMANENT: return true;
    case DUET_RESTART_TRANSIENT:
        return strcmp(reason, "normal") != 0 && strcmp(reason, "shutdown") != 0;
    default: return false;
    }
}

/* Record a restart; false when the intensity limit is exceeded. */
static bool note_restart(duet_actor_t *self, sup_t *s)
{
    uint64_t now = duet_actor_now_ns(self);
    uint64_t period = (uint64_t)s->spec->period_ms * 1000000ull;
    size_t k = 0;
    for (size_t i = 0; i < s->ntimes; i++)
        if (now - s->times[i] < period)
            s->times[k++] = s->times[i];
    s->ntimes = k;
    if (s->ntimes >= s->spec->intensity)
        return false;
    s->times[s->ntimes++] = now;
    return true;
}

static duet_status_t start_all(duet_actor_t *self, sup_t *s)
{
    for (size_t i = 0; i < s->spec->nchildren; i++)
        if (!s->running[i]) {
            duet_status_t st = spawn_child(self, s, i);
            if (st)
                return st;
        }
    return DUET_OK;
}

static duet_status_t sup_handle(duet_actor_t *self, void *state, const duet_msg_t *m)
{
    sup_t *s = state;
    const duet_sup_spec_t *spec = s->spec;
    duet_node_t *node = duet_actor_node(self);
    const duet_sys_timer_t *t = duet_msg_body(m, &duet_msg_sys_timer);
    if (t) {
        if (t->tag < spec->nchildren && !s->running[t->tag] && !s->restarting_all)
            return spawn_child(self, s, t->tag);
        return DUET_OK;
    }
    const duet_sys_down_t *d = duet_msg_body(m, &duet_msg_sys_down);
    if (!d)
        return DUET_OK;
    size_t i = spec->nchildren;
    for (size_t k = 0; k < spec->nchildren; k++)
        if (s->running[k] && s->refs[k] == d->ref)
            i = k;
    if (i == spec->nchildren)
        return DUET_OK;
    s->running[i] = false;
    if (s->restarting_all) {
        if (s->waiting && --s->waiting == 0) {
            s->restarting_all = false;
            return start_all(self, s);
        }
        return DUET_OK;
    }
    if (!wants_restart(&spec->children[i], d->reason))
        return DUET_OK;
    if (!note_restart(self, s)) {
        if (spec->stats)
            atomic_fetch_add(&spec->stats->escalations, 1);
        DUET_LOG_W("actors",
                   "supervisor %s: more than %u restarts in %u ms (last: %s: %s): escalating",
                   duet_actor_name(self), spec->intensity, spec->period_ms, d->actor, d->reason);
        duet_actor_exit(self, "shutdown: restart intensity");
        return DUET_OK;
    }
    if (spec->strategy == DUET_SUP_ONE_FOR_ONE) {
        if (spec->stats)
            atomic_fetch_add(&spec->stats->restarts, 1);
        return spawn_child(self, s, i);
    }
    /* one-for-all */
    if (spec->stats)
        atomic_fetch_add(&spec->stats->restarts, spec->nchildren);
    s->waiting = 0;
    for (size_t k = 0; k < spec->nchildren; k++)
        if (s->running[k] && duet_stop(node, spec->children[k].name, "shutdown") == DUET_OK)
            s->waiting++;
    if (!s->waiting)
        return start_all(self, s);
    s->restarting_all = true;
    return DUET_OK;
}

static void sup_stop(duet_actor_t *self, void *state, const char *reason)
{
    sup_t *s = state;
    if (!s)
        return;
    for (size_t i = 0; s->running && i < s->spec->nchildren; i++)
        if (s->running[i])
            duet_stop(duet_actor_node(self), s->spec->children[i].name, "shutdown");
    duet_free(s->refs);
    duet_free(s->running);
    duet_free(s->tries);
    duet_free(s->times);
    duet_free(s);
}

const duet_actor_ops_t duet_supervisor_ops = {
    .kind = "supervisor",
    .start = sup_start,
    .handle = sup_handle,
    .stop = sup_stop,
};
