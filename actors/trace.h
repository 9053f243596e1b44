/* Private to actors/: pipeline observability — per-actor counters (always
 * on) and an optional per-actor event buffer for a Chrome/Perfetto trace.
 * Each block has exactly one writer (its actor's thread) and is
 * pre-allocated; nothing on the hot path locks or allocates. The bring-up
 * (deploy.c) owns the blocks and writes the trace after the actors stop. */
#ifndef DUET_ACTORS_TRACE_H
#define DUET_ACTORS_TRACE_H

#include <stdint.h>
#include <stdio.h>

#include "base/base.h"

enum {
    DUET_TR_ATTENTION = 0,
    DUET_TR_DISPATCH,
    DUET_TR_EXPERT,
    DUET_TR_COMBINE,
    DUET_TR_LOGITS,
    DUET_TR_FLOW_DISPATCH, /* attention dispatch -> expert compute */
    DUET_TR_FLOW_RESULT,   /* expert write-back -> combine */
    DUET_TR_C_QUEUE,       /* scheduler: requests queued / running */
    DUET_TR_C_KV,          /* scheduler: KV blocks used */
    DUET_TR_N_NAMES
};

typedef struct duet_trace_ev {
    uint64_t ts, dur; /* ns, CLOCK_MONOTONIC */
    uint64_t id;      /* flow id ('s'/'f') */
    int64_t v[4];     /* X: round, layer, micro-batch, rows; C: values */
    char ph;          /* 'X', 's', 'f', 'C' */
    uint8_t name;     /* DUET_TR_* */
} duet_trace_ev_t;

typedef struct duet_obs {
    char actor[32];
    int tid;
    /* counters (written by the actor only) */
    uint64_t busy_ns, rounds, tokens, bytes, steps;
    /* trace events; ev == NULL: tracing off */
    duet_trace_ev_t *ev;
    size_t n, cap;
    uint64_t dropped;
} duet_obs_t;

static inline bool duet_obs_tracing(const duet_obs_t *o)
{
    return o && o->ev;
}

static inline void duet_obs_ev(duet_obs_t *o, char ph, uint8_t name, uint64_t ts, uint64_t dur,
                               uint64_t id, int64_t v0, int64_t v1, int64_t v2, int64_t v3)
{
    if (!o || !o->ev)
        return;
    if (o->n >= o->cap) {
        o->dropped++;
        return;
    }
    duet_trace_ev_t *e = &o->ev[o->n++];
    e->ts = ts;
    e->dur = dur;
    e->id = id;
    e->v[0] = v0;
    e->v[1] = v1;
    e->v[2] = v2;
    e->v[3] = v3;
    e->ph = ph;
    e->name = name;
}

/* A data-plane transfer's flow id: round (low 32 bits), kind (0 dispatch,
 * 1 result), attention shard and expert shard (10 bits each), below 2^53
 * so that JSON readers keep it exact. Rounds restart at 0 in a new
 * data-plane epoch; the epoch goes into the round bits so that the flows of
 * one epoch do not pair with another's. */
static inline uint64_t duet_obs_flow_id(uint64_t epoch, int kind, uint64_t round, int a, int s)
{
    uint64_t r = (round + (epoch << 24)) & 0xffffffffu;
    return (r << 21) | ((uint64_t)(kind & 1) << 20) | ((uint64_t)(a & 0x3ff) << 10) |
           (uint64_t)(s & 0x3ff);
}

duet_status_t duet__obs_init(duet_obs_t *o, const char *actor, int tid, size_t cap);
void duet__obs_cleanup(duet_obs_t *o);
/* Write the blocks as a Chrome trace JSON ({"traceEvents":[...]}, one event
 * a line) to `path`. */
duet_status_t duet__trace_write(const char *path, duet_obs_t *const *obs, int n);

#endif
