/* deploy — a whole pipeline deployment in one process: models loaded by
 * role, one data-plane context per shard with its M2N (dispatch) and N2M
 * (combine) groups wired up directly, one node per actor (ZeroMQ inproc on
 * real threads, or a simnet on virtual time), and a "client" actor that
 * collects the streamed tokens for duet_pipe_wait / duet_pipe_result.
 *
 * Nodes: "ctl" (client, scheduler, router), "a<i>" (attn/<i>), "e<s>"
 * (expert/<s>). Spawn order: client and scheduler, expert shards,
 * attention shards (they monitor the expert shards), router (its first
 * table makes the attention shards ready). Unless no_restart, the shards
 * and the router of a node run under a one-for-one supervisor
 * ("sup/<node>") that restarts them when they stop; a restarted expert
 * shard maps its weights again from the model files (the model object of
 * its role stays loaded), a restarted attention shard starts with an empty
 * KV cache. */
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "actors/pipe_int.h"

#define MOD "pipe"

typedef struct pres {
    uint64_t req;
    int32_t *tok;
    int32_t n, cap;
    bool done;
    char error[256];
} pres_t;

/* The client's side of a request's stream: pipe.submit is repeated until
 * acknowledged; tokens are taken in index order (duplicates dropped, a gap
 * asks for a resend) and acknowledged (pipe.ack). */
typedef struct cstream {
    uint64_t req;
    int32_t next;        /* stream messages taken in order */
    int32_t asked;       /* `next` a resend was last asked at (-1: none) */
    bool acked, done;    /* the submit arrived; the stream ended */
    bool again;          /* the scheduler restarted: submit every tick until acknowledged */
    uint64_t sent_ns;    /* last pipe.submit (0: not yet stamped) */
    duet_pipe_submit_t m; /* a copy (prompt, eos_ids owned; reply_to static) */
    int32_t *gen;         /* [max_new] the tokens taken (a re-submission carries them) */
} cstream_t;

struct duet_pipe {
    duet_pipe_config_t cfg;
    duet_pipe_geom_t geom;
    duet_pipe_counters_t counters;
    int A, S;
    duet_model_t *amodel;
    duet_model_t **emodel;
    duet_backend_t **be; /* A + S */
    duet_rdma_sim_t *rsim;
    duet_pipe_attn_arg_t *aarg;
    duet_pipe_expert_arg_t *earg;
    duet_pipe_router_arg_t rarg;
    duet_pipe_sched_arg_t sarg;
    int **experts; /* copies of the placement */
    duet_registry_t *reg;
    void *zctx;
    duet_simnet_t *sim;
    duet_fault_plan_t *faults;
    duet_node_t **nodes; /* NULL where the node runs in another process */
    int n_nodes;
    char (*names)[DUET_NAME_MAX];
    int *attn_ni, *exp_ni; /* node index of each shard */
    int sched_ni, router_ni;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t t_nodes; /* CLOCK_MONOTONIC when the nodes were created */
    pres_t *res;
    size_t n_res, cap_res;
    cstream_t *cs;
    size_t n_cs, cap_cs;
    bool client_mon;     /* the client actor monitors the scheduler */
    uint64_t sched_inc;  /* newest scheduler incarnation heard from */
    uint64_t sched_dead; /* incarnations up to this one are down: their late
                            acks and tokens do not acknowledge a re-submission */
    /* observability: [A] attention, [S] expert shards, scheduler */
    duet_obs_t *obs;
    int n_obs;
    /* supervision: one supervisor per node, children in spawn order */
    duet_child_spec_t *children;
    duet_sup_spec_t *sups;
    duet_sup_stats_t sup_stats;
    atomic_int fail_countdown, corrupt_countdown;
    uint64_t stats_seq;
    duet_pipe_actor_stats_t stats_got; /* the last reply (cookie, counters) */
};

#define DUET_PIPE_MSG_DEFINE(var, type_id, type_name, T, fields)                                   \
    DUET_MSG_INSTANCE(var, type_id, type_name, T, fields);
DUET_PIPE_MESSAGES(DUET_PIPE_MSG_DEFINE)

void duet_pipe_register_types(void)
{
#define DUET_PIPE_MSG_REGISTER(var, type_id, type_name, T, fields) duet_msg_type_register(&var);
    DUET_PIPE_MESSAGES(DUET_PIPE_MSG_REGISTER)
}

/* ---- client actor ----------------------------------------------------------- */

static pres_t *res_find(duet_pipe_t *p, uint64_t req)
{
    for (size_t i = 0; i < p->n_res; i++)
        if (p->res[i].req == req)
            return &p->res[i];
    return NULL;
}

#define CLIENT_TICK 11
#define CLIENT_TICK_SOON 12 /* once, just after the scheduler went down */
#define CLIENT_SOON_MS 2    /* its supervisor has started it again by then */
#define CLIENT_RESUBMIT_NS 300000000ull

static duet_status_t client_start(duet_actor_t *self, void *arg, void **state_out)
{
    *state_out = arg;
    return duet_timer_start(self, 100, 100, CLIENT_TICK, NULL);
}

static void cs_drop(duet_pipe_t *p, size_t i)
{
    duet_free(p->cs[i].m.prompt.data);
    duet_free(p->cs[i].m.eos_ids.data);
    duet_free(p->cs[i].gen);
    p->cs[i] = p->cs[--p->n_cs];
}

static void client_ack(duet_actor_t *self, uint64_t req, int32_t next, bool resend)
{
    duet_pipe_ack_t a = {req, next, resend};
    if (duet_send(self, "scheduler", &duet_pipe_msg_ack, &a))
        DUET_LOG_D(MOD, "pipe.ack to the scheduler: %s", duet_error());
}

/* Stream bookkeeping of a pipe.token; false: not to be taken (a duplicate,
 * out of order, or of a finished stream). Under p->mu. */
static bool client_take(duet_actor_t *self, duet_pipe_t *p, const duet_pipe_token_t *t, bool live)
{
    size_t i = 0;
    for (; i < p->n_cs && p->cs[i].req != t->req; i++)
        ;
    if (i == p->n_cs) { /* finished (or unknown): it has all of it */
        client_ack(self, t->req, INT32_MAX, false);
        return false;
    }
    cstream_t *c = &p->cs[i];
    if (live)
        c->acked = true;
    if (t->index < c->next || c->done) { /* a duplicate: the scheduler is behind */
        client_ack(self, t->req, c->next, false);
        return false;
    }
    if (t->index > c->next) { /* a gap: ask once per position */
        if (c->asked != c->next) {
            c->asked = c->next;
            client_ack(self, t->req, c->next, true);
        }
        return false;
    }
    if (!(t->error && t->error[0]) && c->gen && c->next < c->m.max_new)
        c->gen[c->next] = t->token;
    c->next++;
    c->done = t->done || (t->error && t->error[0]);
    if (c->done) {
        client_ack(self, t->req, INT32_MAX, false);
        cs_drop(p, i);
    } else if (c->next % 8 == 0) {
        client_ack(self, t->req, c->next, false);
    }
    return true;
}

static void client_tick(duet_actor_t *self, duet_pipe_t *p)
{
    uint64_t now = duet_actor_now_ns(self);
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n_cs; i++) {
        cstream_t *c = &p->cs[i];
        if (c->acked)
            continue;
        if (!c->sent_ns) {
            c->sent_ns = now ? now : 1;
        } else if (c->again || now > c->sent_ns + CLIENT_RESUBMIT_NS) {
            /* after a scheduler restart: every tick until acknowledged, with
             * the tokens we have, so that it goes on from there */
            c->sent_ns = now ? now : 1;
            c->m.generated = (duet_array_t){c->gen, c->gen ? (size_t)c->next : 0};
            if (duet_send(self, "scheduler", &duet_pipe_msg_submit, &c->m))
                DUET_LOG_D(MOD, "pipe.submit again: %s", duet_error());
        }
    }
    pthread_mutex_unlock(&p->mu);
}

static duet_status_t client_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    duet_pipe_t *p = state;
    const duet_sys_timer_t *tm = duet_msg_body(msg, &duet_msg_sys_timer);
    if (tm && (tm->tag == CLIENT_TICK || tm->tag == CLIENT_TICK_SOON)) {
        client_tick(self, p);
        return DUET_OK;
    }
    const duet_sys_down_t *dn = duet_msg_body(msg, &duet_msg_sys_down);
    if (dn) {
        if (strcmp(dn->actor, "scheduler"))
            return DUET_OK;
        /* the scheduler stopped (its supervisor starts it again, with no
         * requests): every open stream goes to it again at the next tick,
         * with the tokens already here, until acknowledged */
        pthread_mutex_lock(&p->mu);
        p->client_mon = false;
        p->sched_dead = p->sched_inc;
        int n = 0;
        for (size_t i = 0; i < p->n_cs; i++)
            if (!p->cs[i].done) {
                p->cs[i].acked = false;
                p->cs[i].again = true;
                if (!p->cs[i].sent_ns)
                    p->cs[i].sent_ns = 1;
                n++;
            }
        pthread_mutex_unlock(&p->mu);
        if (n && duet_timer_start(self, CLIENT_SOON_MS, 0, CLIENT_TICK_SOON, NULL))
            DUET_LOG_D(MOD, "timer: %s", duet_error()); /* the 100 ms tick does it */
        DUET_LOG_I(MOD, "the scheduler is down (%s): %d requests submitted again", dn->reason, n);
        return DUET_OK;
    }
    bool from_sched = duet_pipe_msg_ack_body(msg) || duet_pipe_msg_token_body(msg);
    bool live = !from_sched || msg->env.epoch > p->sched_dead; /* not a dead one's */
    if (from_sched && live && msg->env.epoch > p->sched_inc)
        p->sched_inc = msg->env.epoch;
    if (!p->client_mon && from_sched && live) {
        /* it answers: watch it from now on (a restart re-submits) */
        if (duet_monitor(self, "scheduler", NULL) == DUET_OK)
            p->client_mon = true;
    }
    const duet_pipe_ack_t *ak = duet_pipe_msg_ack_body(msg);
    if (ak) { /* the scheduler has the submit */
        pthread_mutex_lock(&p->mu);
        for (size_t i = 0; i < p->n_cs && live; i++)
            if (p->cs[i].req == ak->req)
                p->cs[i].acked = true;
        pthread_mutex_unlock(&p->mu);
        return DUET_OK;
    }
    const duet_pipe_actor_stats_t *as = duet_pipe_msg_actor_stats_body(msg);
    if (as) {
        pthread_mutex_lock(&p->mu);
        p->stats_got = *as;
        p->stats_got.actor = NULL;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        return DUET_OK;
    }
    const duet_pipe_token_t *t = duet_pipe_msg_token_body(msg);
    if (!t)
        return DUET_OK;
    pthread_mutex_lock(&p->mu);
    bool take = client_take(self, p, t, live);
    pthread_mutex_unlock(&p->mu);
    if (!take)
        return DUET_OK;
    if (p->cfg.on_token) {
        p->cfg.on_token(p->cfg.on_token_user, t);
        return DUET_OK;
    }
    pthread_mutex_lock(&p->mu);
    pres_t *r = res_find(p, t->req);
    if (r && !r->done) {
        if (t->error[0]) {
            snprintf(r->error, sizeof(r->error), "%s", t->error);
        } else if (t->index == r->n && r->n < r->cap) {
            r->tok[r->n++] = t->token;
        } else {
            snprintf(r->error, sizeof(r->error), "token %d out of order (have %d)", t->index, r->n);
        }
        r->done = t->done || r->error[0];
    }
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return DUET_OK;
}

static const duet_actor_ops_t client_ops = {
    .kind = "client",
    .start = client_start,
    .handle = client_handle,
};

/* ---- bring-up ------------------------------------------------------------- */

int duet__pipe_grank(const uint32_t *alive, int i)
{
    if (!alive)
        return i;
    int r = 0;
    for (int k = 0; k < i; k++)
        r += alive[k] != 0;
    return r;
}

int duet__pipe_count(const uint32_t *alive, int n)
{
    return duet__pipe_grank(alive, n);
}

duet_status_t duet__pipe_data_wait(duet_actor_t *self, duet_m2n_t *g, uint64_t round,
                                   uint64_t *since, uint32_t timeout_ms, bool *armed, uint64_t tag)
{
    uint64_t now = duet_actor_now_ns(self), limit = (uint64_t)timeout_ms * 1000000ull;
    if (!*since)
        *since = now ? now : 1;
    uint64_t waited = now > *since ? now - *since : 0;
    if (waited >= limit)
        return DUET_OK;
    uint64_t slice = limit - waited < DUET_PIPE_DATA_SLICE_NS ? limit - waited
                                                               : DUET_PIPE_DATA_SLICE_NS;
    duet_status_t st = duet_m2n_recv(g, round, (int64_t)slice);
    duet_error_clear();
    if (st != DUET_ERR_TIMEOUT)
        return DUET_OK;
    if (!*armed && duet_timer_start_ns(self, DUET_PIPE_DATA_RETRY_NS, 0, tag, NULL) == DUET_OK)
        *armed = true;
    return *armed ? DUET_ERR_AGAIN : DUET_OK; /* no timer: the caller's recv says what is missing */
}

duet_status_t duet__pipe_dp_open(const char *provider, const char *host, duet_rdma_sim_t *rsim,
                                 const duet_pipe_geom_t *g, bool attention, int rank,
                                 const uint32_t *alive_a, const uint32_t *alive_e,
                                 duet_rdma_ctx_t **ctx, duet_m2n_t **disp, duet_m2n_t **comb,
                                 duet_rdma_mr_t **mr)
{
    const int A = duet__pipe_count(alive_a, g->n_attention),
              S = duet__pipe_count(alive_e, g->n_expert_shards);
    const int full = attention ? g->n_expert_shards : g->n_attention;
    rank = duet__pipe_grank(attention ? alive_a : alive_e, rank);
    if (A < 1 || S < 1)
        return duet_errorf(DUET_ERR_INVALID, "data plane: an epoch without %s shards",
                           A < 1 ? "attention" : "expert");
    duet_status_t st;
    duet_rdma_ctx_params_t cp = {.provider = provider ? provider : "sim", .sim = rsim};
    if (!strcmp(cp.provider, "tcp"))
        cp.device = host; /* the address its peers connect to */
    if ((st = duet_rdma_ctx_create(&cp, ctx)))
        return duet_error_wrap(st, "data plane %s", cp.provider);
    duet_m2n_params_t dp = {.ctx = *ctx,
                            .n_senders = (uint32_t)A,
                            .n_receivers = (uint32_t)S,
                            .is_sender = attention,
                            .rank = (uint32_t)rank,
                            .slots = (uint32_t)g->ring,
                            .slot_size = g->slot_size,
                            .group_id = 1};
    duet_m2n_params_t cp2 = dp;
    cp2.n_senders = (uint32_t)S;
    cp2.n_receivers = (uint32_t)A;
    cp2.is_sender = !attention;
    cp2.group_id = 2;
    if ((st = duet_m2n_create(&dp, disp)) || (st = duet_m2n_create(&cp2, comb)))
        return st;
    size_t len = (size_t)g->ring * (size_t)full * g->slot_size; /* by global index */
    return duet_rdma_mr_alloc(*ctx, len, DUET_RDMA_ACCESS_LOCAL, mr);
}

void duet__pipe_dp_close(duet_rdma_ctx_t **ctx, duet_m2n_t **disp, duet_m2n_t **comb,
                         duet_rdma_mr_t **mr)
{
    duet_m2n_destroy(disp);
    duet_m2n_destroy(comb);
    duet_rdma_mr_dereg(mr);
    duet_rdma_ctx_destroy(ctx);
}

duet_status_t duet__pipe_dp_connect(duet_m2n_t *disp, duet_m2n_t *comb, int peer,
                                    const duet_pipe_wire_t *w)
{
    duet_status_t st;
    if ((st = duet_m2n_connect(disp, (uint32_t)peer, w->disp.data, w->disp.len)) ||
        (st = duet_m2n_connect(comb, (uint32_t)peer, w->comb.data, w->comb.len)))
        return duet_error_wrap(st, "data plane to shard %d", peer);
    return DUET_OK;
}

void duet__pipe_reply_stats(duet_actor_t *self, const duet_obs_t *obs,
                            const duet_pipe_stats_req_t *req, uint64_t kv_seqs,
                            uint64_t kv_blocks_used, uint64_t epoch, duet_m2n_t *disp,
                            duet_m2n_t *comb, uint64_t ctl_queued)
{
    duet_m2n_usage_t u[2] = {{0}};
    duet_m2n_t *gs[2] = {disp, comb};
    for (int k = 0; k < 2; k++)
        if (gs[k]) {
            /* credits that arrived count as returned; a failure is the
             * round's business, not this report's */
            if (duet_m2n_progress(gs[k]))
                DUET_LOG_D(MOD, "%s: data-plane progress: %s", duet_actor_name(self),
                           duet_error());
            duet_m2n_usage(gs[k], &u[k]);
        }
    duet_pipe_actor_stats_t r = {.cookie = req->cookie,
                                 .dp_slots_held = u[0].slots_held + u[1].slots_held,
                                 .dp_credits_out = u[0].credits_out + u[1].credits_out,
                                 .dp_inflight = (uint64_t)u[0].inflight + u[1].inflight,
                                 .ctl_queued = ctl_queued,
                                 .actor = (char *)duet_actor_name(self),
                                 .busy_ns = obs->busy_ns,
                                 .rounds = obs->rounds,
                                 .tokens = obs->tokens,
                                 .bytes = obs->bytes,
                                 .steps = obs->steps,
                                 .kv_seqs = kv_seqs,
                                 .kv_blocks_used = kv_blocks_used,
                                 .epoch = epoch};
    if (duet_send(self, req->reply_to, &duet_pipe_msg_actor_stats, &r))
        DUET_LOG_D(MOD, "%s: pipe.actor_stats to %s: %s", duet_actor_name(self), req->reply_to,
                   duet_error());
}

duet_status_t duet__pipe_dp_send_wire(duet_actor_t *self, const char *to, uint64_t epoch,
                                      int my_rank, int peer, duet_m2n_t *disp, duet_m2n_t *comb)
{
    uint8_t di[DUET_M2N_INFO_MAX], ci[DUET_M2N_INFO_MAX];
    size_t dn, cn;
    duet_status_t st;
    if ((st = duet_m2n_info(disp, (uint32_t)peer, di, sizeof(di), &dn)) ||
        (st = duet_m2n_info(comb, (uint32_t)peer, ci, sizeof(ci), &cn)))
        return st;
    duet_pipe_wire_t w = {.epoch = epoch,
                          .incarnation = duet_actor_epoch(self),
                          .rank = my_rank,
                          .disp = {di, dn},
                          .comb = {ci, cn}};
    return duet_send(self, to, &duet_pipe_msg_wire, &w);
}

static bool local(const duet_pipe_t *p, const char *node)
{
    return !p->cfg.only_node || !strcmp(p->cfg.only_node, node);
}

static void node_addr(const duet_pipe_t *p, unsigned id, int i, char *buf, size_t cap)
{
    const char *node = p->names[i];
    if (p->cfg.n_nodes > 0 && p->cfg.node_addrs && p->cfg.node_addrs[i] &&
        p->cfg.control != DUET_PIPE_CONTROL_INPROC)
        snprintf(buf, cap, "%s", p->cfg.node_addrs[i]);
    else if (p->cfg.control == DUET_PIPE_CONTROL_IPC)
        snprintf(buf, cap, "ipc:///tmp/duet-pipe-%s-%s.sock", p->cfg.ipc_tag ? p->cfg.ipc_tag : "0",
                 node);
    else
        snprintf(buf, cap, "inproc://duet-pipe-%d-%u-%s", (int)getpid(), id, node);
}

static duet_status_t make_nodes(duet_pipe_t *p)
{
    const int A = p->A, S = p->S;
    const duet_pipe_config_t *c = &p->cfg;
    duet_status_t st;
    static atomic_uint seq;
    unsigned id = atomic_fetch_add(&seq, 1);
    bool custom = c->n_nodes > 0;
    p->n_nodes = custom ? c->n_nodes : 1 + A + S;
    p->nodes = duet_calloc((size_t)p->n_nodes, sizeof(duet_node_t *));
    p->names = duet_calloc((size_t)p->n_nodes, DUET_NAME_MAX);
    p->attn_ni = duet_calloc((size_t)A, sizeof(int));
    p->exp_ni = duet_calloc((size_t)S, sizeof(int));
    if (!p->nodes || !p->names || !p->attn_ni || !p->exp_ni)
        return DUET_ERR_NOMEM;
    for (int i = 0; i < p->n_nodes; i++) {
        if (custom &&
            (!c->node_names || !c->node_names[i] || strlen(c->node_names[i]) >= DUET_NAME_MAX))
            return duet_errorf(DUET_ERR_INVALID, "pipeline: node %d has no usable name", i);
        if (custom)
            snprintf(p->names[i], DUET_NAME_MAX, "%s", c->node_names[i]);
        else if (i == 0)
            snprintf(p->names[i], DUET_NAME_MAX, "ctl");
        else if (i <= A)
            snprintf(p->names[i], DUET_NAME_MAX, "a%d", i - 1);
        else
            snprintf(p->names[i], DUET_NAME_MAX, "e%d", i - 1 - A);
    }
    for (int a = 0; a < A; a++)
        p->attn_ni[a] = custom && c->attention_node ? c->attention_node[a] : 1 + a;
    for (int e = 0; e < S; e++)
        p->exp_ni[e] = custom && c->expert_node ? c->expert_node[e] : 1 + A + e;
    p->sched_ni = custom ? c->scheduler_node : 0;
    p->router_ni = custom ? c->router_node : 0;
    bool bad = p->sched_ni < 0 || p->sched_ni >= p->n_nodes || p->router_ni < 0 ||
               p->router_ni >= p->n_nodes;
    for (int a = 0; a < A; a++)
        bad |= p->attn_ni[a] < 0 || p->attn_ni[a] >= p->n_nodes;
    for (int e = 0; e < S; e++)
        bad |= p->exp_ni[e] < 0 || p->exp_ni[e] >= p->n_nodes;
    if (bad)
        return duet_errorf(DUET_ERR_INVALID, "pipeline: an actor is placed on no node");
    if ((st = duet_registry_create(&p->reg)))
        return st;
    if (c->faults) {
        if ((st = duet_fault_plan_create(c->sim_seed, &p->faults)) ||
            (st = duet_fault_plan_parse(p->faults, c->faults, "faults")))
            return duet_error_wrap(st, "fault plan");
    }
    bool sim = c->control == DUET_PIPE_CONTROL_SIM;
    bool ipc = c->control == DUET_PIPE_CONTROL_IPC;
    if (sim) {
        duet_simnet_config_t sc = {
            .seed = c->sim_seed, .latency_min_ns = 0, .latency_max_ns = c->sim_latency_max_ns};
        if ((st = duet_simnet_create(&sc, &p->sim)))
            return st;
    } else if (!ipc) {
        p->zctx = zmq_ctx_new();
        if (!p->zctx)
            return duet_errorf(DUET_ERR_IO, "zmq_ctx_new failed");
    }
    char addr[256];
    for (int i = 0; i < p->n_nodes; i++) {
        node_addr(p, id, i, addr, sizeof(addr));
        if ((st = duet_registry_add_node(p->reg, p->names[i], sim ? NULL : addr, NULL)))
            return st;
    }
    for (int a = 0; a < A; a++) {
        snprintf(addr, sizeof(addr), "attn/%d", a);
        duet_registry_add_actor(p->reg, addr, p->names[p->attn_ni[a]]);
    }
    for (int e = 0; e < S; e++) {
        snprintf(addr, sizeof(addr), "expert/%d", e);
        duet_registry_add_actor(p->reg, addr, p->names[p->exp_ni[e]]);
    }
    duet_registry_add_actor(p->reg, "scheduler", p->names[p->sched_ni]);
    duet_registry_add_actor(p->reg, "client", p->names[p->sched_ni]);
    duet_registry_add_actor(p->reg, "router", p->names[p->router_ni]);
    for (int i = 0; i < p->n_nodes; i++) {
        if (!local(p, p->names[i]))
            continue;
        node_addr(p, id, i, addr, sizeof(addr));
        duet_node_config_t nc = {.name = p->names[i],
                                 .registry = p->reg,
                                 .faults = p->faults,
                                 .heartbeat_ms = c->heartbeat_ms,
                                 /* 0: the runtime's 3 (a silent peer is down after
                                  * 3 missed heartbeats, simulated or not) */
                                 .heartbeat_misses = c->heartbeat_misses,
                                 /* credits lent to a shard that crashed do not
                                  * come back: give up on them soon */
                                 .credit_timeout_ms = 50};
        if (sim)
            nc.sim = p->sim;
        else {
            nc.bind = addr;
            nc.zmq_ctx = ipc ? NULL : p->zctx;
        }
        if ((st = duet_node_create(&nc, &p->nodes[i])))
            return duet_error_wrap(st, "node %s", p->names[i]);
    }
    return DUET_OK;
}

/* Where the scheduler runs: wait until every attention shard is ready (or
 * start_timeout_ms). None ready: an error naming what is missing; some: a
 * warning, and the deployment serves on those. */
static duet_status_t wait_ready(duet_pipe_t *p)
{
    if (!p->nodes[p->sched_ni])
        return DUET_OK;
    uint32_t to = p->cfg.start_timeout_ms ? p->cfg.start_timeout_ms : 30000;
    const uint64_t want = (uint64_t)p->A;
    if (p->sim) {
        uint64_t until = duet_simnet_now(p->sim) + (uint64_t)to * 1000000ull;
        while (atomic_load(&p->counters.shards_ready) < want && duet_simnet_now(p->sim) <= until)
            if (!duet_simnet_step(p->sim))
                break;
    } else {
        uint64_t until = duet_now_ns() + (uint64_t)to * 1000000ull, poll = 0;
        while (atomic_load(&p->counters.shards_ready) < want && duet_now_ns() < until) {
            usleep(2000);
            if (p->cfg.start_poll && ++poll % 5 == 0 && !p->cfg.start_poll(p->cfg.start_poll_user))
                return duet_errorf(DUET_ERR_CLOSED,
                                   "deployment start: given up while waiting for the attention "
                                   "shards (a node process ended)");
        }
    }
    uint64_t got = atomic_load(&p->counters.shards_ready);
    if (got >= want)
        return DUET_OK;
    uint64_t mask = atomic_load(&p->counters.ready_mask);
    char miss[512];
    int n = 0;
    miss[0] = 0;
    for (int a = 0; a < p->A && n < 400; a++)
        if (a >= 64 || !(mask & (1ull << a)))
            n += snprintf(miss + n, sizeof(miss) - (size_t)n, "%s attn/%d (node %s)", n ? "," : "",
                          a, p->names[p->attn_ni[a]]);
    if (got > 0) {
        DUET_LOG_W(MOD, "deployment start: after %u ms%s not ready; serving on %llu of %d", to,
                   miss, (unsigned long long)got, p->A);
        return DUET_OK;
    }
    char exp[512];
    n = 0;
    exp[0] = 0;
    for (int e = 0; e < p->S && n < 400; e++)
        n += snprintf(exp + n, sizeof(exp) - (size_t)n, "%s expert/%d (node %s)", n ? "," : "", e,
                      p->names[p->exp_ni[e]]);
    return duet_errorf(
        DUET_ERR_TIMEOUT,
        "deployment start: no attention shard became ready in %u ms (start_timeout_ms)"
        "; not ready:%s. An attention shard is ready once it has the router's table "
        "(router on node %s) and has wired every expert shard:%s. Check that those "
        "nodes run and can reach each other.",
        to, miss, p->names[p->router_ni], exp);
}

duet_status_t duet_pipe_create(const duet_pipe_config_t *cfg, duet_pipe_t **out)
{
    duet_status_t st;
    if (!cfg || !cfg->model_dir || cfg->n_attention < 1 || cfg->n_expert_shards < 1 ||
        cfg->micro_batches < 1 || cfg->micro_batches > 64 || !cfg->shard_experts ||
        !cfg->shard_n_experts)
        return duet_errorf(DUET_ERR_INVALID,
                           "pipeline: need a model, >= 1 attention and expert shard, "
                           "1 <= m <= 64 and an expert placement");
    if (cfg->only_node && cfg->control != DUET_PIPE_CONTROL_IPC)
        return duet_errorf(DUET_ERR_INVALID, "pipeline: only_node needs the ipc control plane");
    if (cfg->control == DUET_PIPE_CONTROL_IPC && cfg->only_node &&
        (!cfg->provider || !strcmp(cfg->provider, "sim")))
        return duet_errorf(DUET_ERR_INVALID,
                           "pipeline: the sim data plane does not cross processes; use shm or tcp");
    duet_pipe_t *p = duet_calloc(1, sizeof(*p));
    if (!p)
        return DUET_ERR_NOMEM;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->cfg = *cfg;
    p->A = cfg->n_attention;
    p->S = cfg->n_expert_shards;
    const int A = p->A, S = p->S;
    duet_pipe_register_types();

    duet_load_opts_t ao = {.role = DUET_ROLE_ATTENTION};
    if ((st = duet_model_load(cfg->model_dir, &ao, &p->amodel)))
        goto err;
    const duet_config_t *mc = &p->amodel->cfg;
    /* placement: every expert somewhere, ids in range, none twice on a shard */
    uint32_t *offsets = duet_calloc((size_t)mc->n_experts + 1, sizeof(uint32_t));
    p->rarg.offsets = offsets;
    p->experts = duet_calloc((size_t)S, sizeof(int *));
    if (!offsets || !p->experts) {
        st = DUET_ERR_NOMEM;
        goto err;
    }
    size_t total = 0;
    for (int s = 0; s < S; s++) {
        for (int k = 0; k < cfg->shard_n_experts[s]; k++) {
            int e = cfg->shard_experts[s][k];
            if (e < 0 || e >= mc->n_experts) {
                st = duet_errorf(DUET_ERR_INVALID, "expert shard %d: expert %d out of range 0..%d",
                                 s, e, mc->n_experts - 1);
                goto err;
            }
            offsets[e + 1]++;
            total++;
        }
    }
    for (int e = 0; e < mc->n_experts; e++) {
        if (!offsets[e + 1]) {
            st = duet_errorf(DUET_ERR_INVALID, "expert %d is not placed on any expert shard", e);
            goto err;
        }
        offsets[e + 1] += offsets[e];
    }
    p->rarg.shards = duet_calloc(total, sizeof(int32_t));
    uint32_t *fill = duet_calloc((size_t)mc->n_experts, sizeof(uint32_t));
    if (!p->rarg.shards || !fill) {
        duet_free(fill);
        st = DUET_ERR_NOMEM;
        goto err;
    }
    for (int s = 0; s < S; s++)
        for (int k = 0; k < cfg->shard_n_experts[s]; k++) {
            int e = cfg->shard_experts[s][k];
            p->rarg.shards[offsets[e] + fill[e]++] = s;
        }
    duet_free(fill);
    p->rarg.n_attention = A;
    p->rarg.n_expert_shards = S;
    p->rarg.n_experts = mc->n_experts;
    p->rarg.counters = &p->counters;

    int budget = cfg->token_budget > 0 ? cfg->token_budget : 256;
    duet_pipe_geom_t *g = &p->geom;
    g->n_attention = A;
    g->n_expert_shards = S;
    g->m = cfg->micro_batches;
    g->max_tokens_ub = (budget + g->m - 1) / g->m;
    if (g->max_tokens_ub < 16)
        g->max_tokens_ub = budget < 16 ? budget : 16;
    g->max_seqs_ub = cfg->max_seqs > 0 ? cfg->max_seqs : 32;
    for (int l = 0; l < mc->n_layers; l++)
        g->n_sparse += mc->sparse_layer[l] ? 1 : 0;
    g->slot_size = sizeof(duet_pipe_hdr_t) + (size_t)g->max_tokens_ub * (size_t)mc->top_k *
                                                 sizeof(float) * (size_t)mc->hidden;
    g->ring = 2 * g->m;
    g->round_timeout_ms = cfg->round_timeout_ms ? cfg->round_timeout_ms : 5000;
    g->checksum = cfg->checksum;
    {
        const char *ce = getenv("DUET_EXPERT_COALESCE");
        g->coalesce = cfg->expert_coalesce;
        if (!g->coalesce && ce && strcmp(ce, "0") == 0)
            g->coalesce = -1;
        else if (!g->coalesce && ce && strcmp(ce, "1") == 0)
            g->coalesce = 1;
    }

    p->t_nodes = duet_now_ns();
    if ((st = make_nodes(p)))
        goto err;
    p->n_obs = A + S + 1;
    p->obs = duet_calloc((size_t)p->n_obs, sizeof(duet_obs_t));
    if (!p->obs) {
        st = DUET_ERR_NOMEM;
        goto err;
    }
    for (int i = 0; i < p->n_obs; i++) {
        char an[32];
        int ni;
        if (i < A) {
            snprintf(an, sizeof(an), "attn/%d", i);
            ni = p->attn_ni[i];
        } else if (i < A + S) {
            snprintf(an, sizeof(an), "expert/%d", i - A);
            ni = p->exp_ni[i - A];
        } else {
            snprintf(an, sizeof(an), "scheduler");
            ni = p->sched_ni;
        }
        /* tracks: scheduler 1, attention 2.., expert shards after them */
        int tid = i < A + S ? 2 + i : 1;
        size_t cap = 0;
        if (cfg->trace_path && p->nodes[ni])
            cap = cfg->trace_events ? cfg->trace_events : 262144;
        if ((st = duet__obs_init(&p->obs[i], an, tid, cap)))
            goto err;
    }
    p->emodel = duet_calloc((size_t)S, sizeof(duet_model_t *));
    p->be = duet_calloc((size_t)(A + S), sizeof(duet_backend_t *));
    p->aarg = duet_calloc((size_t)A, sizeof(*p->aarg));
    p->earg = duet_calloc((size_t)S, sizeof(*p->earg));
    if (!p->emodel || !p->be || !p->aarg || !p->earg) {
        st = DUET_ERR_NOMEM;
        goto err;
    }
    for (int s = 0; s < S; s++) {
        p->experts[s] = duet_calloc((size_t)cfg->shard_n_experts[s] + 1, sizeof(int));
        if (!p->experts[s]) {
            st = DUET_ERR_NOMEM;
            goto err;
        }
        memcpy(p->experts[s], cfg->shard_experts[s], sizeof(int) * (size_t)cfg->shard_n_experts[s]);
        duet_load_opts_t eo = {.role = DUET_ROLE_EXPERT,
                               .experts = p->experts[s],
                               .n_experts = cfg->shard_n_experts[s]};
        if (p->nodes[p->exp_ni[s]] && (st = duet_model_load(cfg->model_dir, &eo, &p->emodel[s])))
            goto err;
    }
    duet_backend_opts_t bo = {.n_threads = cfg->threads > 0 ? cfg->threads : 1};
    for (int i = 0; i < A + S; i++) {
        duet_node_t *nd = p->nodes[i < A ? p->attn_ni[i] : p->exp_ni[i - A]];
        const char *const *names = i < A ? cfg->attention_backend : cfg->expert_backend;
        const char *bn = names && names[i < A ? i : i - A] ? names[i < A ? i : i - A] : "cpu";
        const int *devs = i < A ? cfg->attention_device : cfg->expert_device;
        bo.device = devs ? devs[i < A ? i : i - A] : 0;
        if (nd && (st = duet_backend_open(bn, &bo, &p->be[i]))) {
            duet_error_wrap(st, "%s/%d: backend \"%s\"", i < A ? "attn" : "expert",
                            i < A ? i : i - A, bn);
            goto err;
        }
    }
    const char *prov = cfg->provider ? cfg->provider : "sim";
    if (!strcmp(prov, "sim") && (st = duet_rdma_sim_create(&p->rsim)))
        goto err;

    int kvb = cfg->kv_blocks > 0 ? cfg->kv_blocks : 512;
    int kvbs = cfg->kv_block_size > 0 ? cfg->kv_block_size : 16;
    p->sarg = (duet_pipe_sched_arg_t){.geom = g,
                                      .token_budget = budget,
                                      .kv_blocks = kvb,
                                      .kv_block_size = kvbs,
                                      .max_seq_len = mc->max_pos,
                                      .recover_timeout_ms = cfg->recover_timeout_ms,
                                      .counters = &p->counters,
                                      .obs = &p->obs[A + S]};
    duet_spawn_opts_t thr = {.mode = DUET_RUN_THREAD};
    duet_node_t *sn = p->nodes[p->sched_ni];
    if (sn && (st = duet_spawn(sn, "client", &client_ops, p, NULL)))
        goto err;
    for (int s = 0; s < S; s++)
        p->earg[s] = (duet_pipe_expert_arg_t){
            .shard = s,
            .geom = g,
            .model = p->emodel[s],
            .be = p->be[A + s],
            .experts = p->experts[s],
            .n_experts = cfg->shard_n_experts[s],
            .provider = prov,
            .dp_host = cfg->node_hosts && cfg->n_nodes > 0 ? cfg->node_hosts[p->exp_ni[s]] : NULL,
            .rsim = p->rsim,
            .counters = &p->counters,
            .obs = &p->obs[A + s],
            .fail_countdown = cfg->fail_round && cfg->fail_expert == s ? &p->fail_countdown : NULL,
            .fail_every = (int)DUET_MIN(cfg->fail_every, (uint32_t)INT32_MAX)};
    atomic_store(&p->fail_countdown, (int)cfg->fail_round);
    for (int a = 0; a < A; a++)
        p->aarg[a] = (duet_pipe_attn_arg_t){
            .shard = a,
            .geom = g,
            .model = p->amodel,
            .be = p->be[a],
            .kv_blocks = kvb,
            .kv_block_size = kvbs,
            .provider = prov,
            .dp_host = cfg->node_hosts && cfg->n_nodes > 0 ? cfg->node_hosts[p->attn_ni[a]] : NULL,
            .rsim = p->rsim,
            .counters = &p->counters,
            .obs = &p->obs[a],
            .corrupt_countdown = cfg->corrupt_write && a == 0 ? &p->corrupt_countdown : NULL};
    atomic_store(&p->corrupt_countdown, (int)cfg->corrupt_write);
    /* children per node in spawn order: expert shards, attention shards,
     * scheduler, router (its first table makes the attention shards ready) */
    const int NC = A + S + 2;
    p->children = duet_calloc((size_t)NC, sizeof(duet_child_spec_t));
    p->sups = duet_calloc((size_t)p->n_nodes, sizeof(duet_sup_spec_t));
    if (!p->children || !p->sups) {
        st = DUET_ERR_NOMEM;
        goto err;
    }
    for (int i = 0; i < NC; i++) {
        duet_child_spec_t *c = &p->children[i];
        char *nm = duet_calloc(1, 32);
        if (!nm) {
            st = DUET_ERR_NOMEM;
            goto err;
        }
        c->restart = DUET_RESTART_PERMANENT;
        if (i < S) {
            snprintf(nm, 32, "expert/%d", i);
            *c = (duet_child_spec_t){nm, &duet__pipe_expert_ops, &p->earg[i], thr,
                                     DUET_RESTART_PERMANENT};
        } else if (i < S + A) {
            snprintf(nm, 32, "attn/%d", i - S);
            *c = (duet_child_spec_t){nm, &duet__pipe_attention_ops, &p->aarg[i - S], thr,
                                     DUET_RESTART_PERMANENT};
        } else if (i == S + A) {
            snprintf(nm, 32, "scheduler");
            *c = (duet_child_spec_t){nm, &duet__pipe_scheduler_ops, &p->sarg,
                                     (duet_spawn_opts_t){0}, DUET_RESTART_PERMANENT};
        } else {
            snprintf(nm, 32, "router");
            *c = (duet_child_spec_t){nm, &duet__pipe_router_ops, &p->rarg, (duet_spawn_opts_t){0},
                                     DUET_RESTART_PERMANENT};
        }
    }
    {
        /* group the children by node: sort a copy so each node's run is contiguous */
        duet_child_spec_t *sorted = duet_calloc((size_t)NC, sizeof(duet_child_spec_t));
        if (!sorted) {
            st = DUET_ERR_NOMEM;
            goto err;
        }
        int k = 0;
        for (int ni = 0; ni < p->n_nodes; ni++) {
            int first = k;
            for (int i = 0; i < NC; i++) {
                int at = i < S       ? p->exp_ni[i]
                         : i < S + A ? p->attn_ni[i - S]
                         : i == S + A ? p->sched_ni
                                      : p->router_ni;
                if (at == ni)
                    sorted[k++] = p->children[i];
            }
            p->sups[ni] = (duet_sup_spec_t){.strategy = DUET_SUP_ONE_FOR_ONE,
                                            .intensity = 50,
                                            .period_ms = 10000,
                                            .children = sorted + first,
                                            .nchildren = (size_t)(k - first),
                                            .stats = &p->sup_stats};
        }
        duet_free(p->children);
        p->children = sorted;
    }
    /* nodes with expert shards first, then attention shards, then the rest:
     * each message of the start-up then finds its receiver at once */
    int *order = duet_calloc((size_t)p->n_nodes, sizeof(int));
    if (!order) {
        st = DUET_ERR_NOMEM;
        goto err;
    }
    int no = 0;
    for (int pass = 0; pass < 3; pass++)
        for (int ni = 0; ni < p->n_nodes; ni++) {
            bool has_e = false, has_a = false;
            for (int e = 0; e < S; e++)
                has_e |= p->exp_ni[e] == ni;
            for (int a = 0; a < A; a++)
                has_a |= p->attn_ni[a] == ni;
            if ((pass == 0 && has_e) || (pass == 1 && has_a && !has_e) ||
                (pass == 2 && !has_a && !has_e))
                order[no++] = ni;
        }
    for (int oi = 0; oi < no; oi++) {
        int ni = order[oi];
        duet_node_t *nd = p->nodes[ni];
        if (!nd || !p->sups[ni].nchildren)
            continue;
        if (!cfg->no_restart) {
            char sname[DUET_NAME_MAX + 8];
            snprintf(sname, sizeof(sname), "sup/%s", p->names[ni]);
            if ((st = duet_spawn(nd, sname, &duet_supervisor_ops, &p->sups[ni], NULL))) {
                duet_free(order);
                goto err;
            }
            continue;
        }
        for (size_t c = 0; c < p->sups[ni].nchildren; c++) {
            const duet_child_spec_t *cs = &p->sups[ni].children[c];
            if ((st = duet_spawn(nd, cs->name, cs->ops, cs->arg, &cs->opts))) {
                duet_free(order);
                goto err;
            }
        }
    }
    duet_free(order);
    if ((st = wait_ready(p)))
        goto err;
    *out = p;
    return DUET_OK;
err:
    duet_error_wrap(st, "pipeline");
    {
        duet_pipe_t *q = p;
        char keep[1024];
        snprintf(keep, sizeof(keep), "%s", duet_error());
        duet_pipe_destroy(&q);
        return duet_errorf(st, "%s", keep);
    }
}

void duet_pipe_destroy(duet_pipe_t **p_p)
{
    if (!p_p || !*p_p)
        return;
    duet_pipe_t *p = *p_p;
    *p_p = NULL;
    /* actors first (they borrow everything below), attention before experts */
    for (int i = 0; p->nodes && i < p->n_nodes; i++)
        duet_node_destroy(&p->nodes[i]);
    if (p->obs && p->cfg.trace_path) {
        /* the actors are gone: their blocks are ours to read */
        duet_obs_t **list = duet_calloc((size_t)p->n_obs, sizeof(duet_obs_t *));
        int n = 0;
        for (int i = 0; list && i < p->n_obs; i++)
            if (p->obs[i].ev)
                list[n++] = &p->obs[i];
        char path[1024];
        if (p->cfg.only_node)
            snprintf(path, sizeof(path), "%s.%s", p->cfg.trace_path, p->cfg.only_node);
        else
            snprintf(path, sizeof(path), "%s", p->cfg.trace_path);
        if (list && duet__trace_write(path, list, n))
            DUET_LOG_W(MOD, "%s", duet_error());
        duet_free(list);
    }
    for (int i = 0; p->obs && i < p->n_obs; i++)
        duet__obs_cleanup(&p->obs[i]);
    duet_free(p->obs);
    duet_free(p->nodes);
    duet_free(p->names);
    duet_free(p->attn_ni);
    duet_free(p->exp_ni);
    duet_registry_destroy(&p->reg);
    duet_simnet_destroy(&p->sim);
    duet_fault_plan_destroy(&p->faults);
    if (p->zctx)
        zmq_ctx_term(p->zctx);
    duet_rdma_sim_destroy(&p->rsim);
    for (int i = 0; p->be && i < p->A + p->S; i++)
        duet_backend_close(&p->be[i]);
    for (int s = 0; p->emodel && s < p->S; s++)
        duet_model_destroy(&p->emodel[s]);
    for (int s = 0; p->experts && s < p->S; s++)
        duet_free(p->experts[s]);
    duet_model_destroy(&p->amodel);
    duet_free(p->experts);
    duet_free(p->emodel);
    duet_free(p->be);
    duet_free(p->aarg);
    duet_free(p->earg);
    duet_free(p->rarg.offsets);
    duet_free(p->rarg.shards);
    while (p->n_cs)
        cs_drop(p, p->n_cs - 1);
    duet_free(p->cs);
    for (size_t i = 0; i < p->n_res; i++)
        duet_free(p->res[i].tok);
    for (int i = 0; p->children && i < p->A + p->S + 2; i++)
        duet_free((void *)p->children[i].name);
    duet_free(p->children);
    duet_free(p->sups);
    duet_free(p->res);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    duet_free(p);
}

/* ---- requests -------------------------------------------------------------- */

duet_status_t duet_pipe_submit(duet_pipe_t *p, uint64_t req, const int32_t *prompt, int32_t n,
                               int32_t max_new, int32_t eos)
{
    duet_pipe_sampling_t greedy = {0.0f, 0, 1.0f, 0, NULL, 0};
    return duet_pipe_submit_sampled(p, req, prompt, n, max_new, eos, &greedy);
}

duet_status_t duet_pipe_submit_sampled(duet_pipe_t *p, uint64_t req, const int32_t *prompt,
                                       int32_t n, int32_t max_new, int32_t eos,
                                       const duet_pipe_sampling_t *sp)
{
    if (n < 0 || max_new < 0)
        return duet_errorf(DUET_ERR_INVALID, "request %llu: negative size",
                           (unsigned long long)req);
    pthread_mutex_lock(&p->mu);
    duet_status_t st = DUET_OK;
    if (p->cfg.on_token) {
        /* the hook gets the tokens: nothing kept here */
    } else if (res_find(p, req))
        st = duet_errorf(DUET_ERR_INVALID, "request id %llu already used", (unsigned long long)req);
    else if ((st = duet_vec_reserve((void **)&p->res, &p->cap_res, p->n_res + 1, sizeof(pres_t))) ==
             DUET_OK) {
        pres_t *r = &p->res[p->n_res];
        memset(r, 0, sizeof(*r));
        r->req = req;
        r->cap = max_new > 0 ? max_new : 1;
        r->tok = duet_calloc((size_t)r->cap, sizeof(int32_t));
        if (!r->tok)
            st = DUET_ERR_NOMEM;
        else
            p->n_res++;
    }
    pthread_mutex_unlock(&p->mu);
    if (st)
        return st;
    duet_pipe_submit_t m = {.req = req,
                            .prompt = {(void *)prompt, (size_t)n},
                            .max_new = max_new,
                            .eos = eos,
                            .reply_to = "client",
                            .temperature = sp->temperature,
                            .top_k = sp->top_k,
                            .top_p = sp->top_p,
                            .seed = sp->seed,
                            .eos_ids = {(void *)sp->eos_ids, sp->eos_ids && sp->n_eos_ids > 0
                                                                 ? (size_t)sp->n_eos_ids
                                                                 : 0}};
    if (m.eos_ids.count > 64)
        return duet_errorf(DUET_ERR_INVALID, "request %llu: %zu end ids, at most 64",
                           (unsigned long long)req, m.eos_ids.count);
    duet_node_t *sn = p->nodes[p->sched_ni];
    if (!sn)
        return duet_errorf(DUET_ERR_INVALID, "the scheduler does not run in this process");
    /* kept until the scheduler acknowledges it (the client repeats it) */
    pthread_mutex_lock(&p->mu);
    st = duet_vec_reserve((void **)&p->cs, &p->cap_cs, p->n_cs + 1, sizeof(cstream_t));
    if (st == DUET_OK) {
        cstream_t *c = &p->cs[p->n_cs];
        memset(c, 0, sizeof(*c));
        c->req = req;
        c->asked = -1;
        c->m = m;
        c->m.prompt.data = duet_malloc(sizeof(int32_t) * (n > 0 ? (size_t)n : 1));
        c->m.eos_ids.data = duet_malloc(sizeof(int32_t) * (m.eos_ids.count + 1));
        c->gen = duet_malloc(sizeof(int32_t) * (max_new > 0 ? (size_t)max_new : 1));
        if (!c->m.prompt.data || !c->m.eos_ids.data || !c->gen) {
            duet_free(c->m.prompt.data);
            duet_free(c->m.eos_ids.data);
            duet_free(c->gen);
            st = DUET_ERR_NOMEM;
        } else {
            if (n > 0)
                memcpy(c->m.prompt.data, prompt, sizeof(int32_t) * (size_t)n);
            if (m.eos_ids.count)
                memcpy(c->m.eos_ids.data, sp->eos_ids, sizeof(int32_t) * m.eos_ids.count);
            p->n_cs++;
        }
    }
    pthread_mutex_unlock(&p->mu);
    if (st)
        return st;
    return duet_node_send(sn, "client", "scheduler", &duet_pipe_msg_submit, &m);
}

duet_status_t duet_pipe_cancel(duet_pipe_t *p, uint64_t req)
{
    duet_node_t *sn = p->nodes[p->sched_ni];
    if (!sn)
        return duet_errorf(DUET_ERR_INVALID, "the scheduler does not run in this process");
    duet_pipe_cancel_t m = {.req = req};
    return duet_node_send(sn, "client", "scheduler", &duet_pipe_msg_cancel, &m);
}

duet_node_t *duet_pipe_sched_node(duet_pipe_t *p)
{
    return p->nodes[p->sched_ni];
}

const struct duet_model *duet_pipe_model(const duet_pipe_t *p)
{
    return p->amodel;
}

static bool reached(duet_pipe_t *p, uint64_t req, int32_t n_tokens)
{
    pres_t *r = res_find(p, req);
    return !r || r->done || r->n >= n_tokens;
}

duet_status_t duet_pipe_wait(duet_pipe_t *p, uint64_t req, int32_t n_tokens, uint32_t timeout_ms)
{
    if (p->sim) {
        uint64_t until = duet_simnet_now(p->sim) + (uint64_t)timeout_ms * 1000000ull;
        for (;;) {
            if (reached(p, req, n_tokens))
                return DUET_OK;
            if (duet_simnet_now(p->sim) > until || !duet_simnet_step(p->sim))
                return duet_errorf(DUET_ERR_TIMEOUT, "request %llu: no result in %u ms (virtual)",
                                   (unsigned long long)req, timeout_ms);
        }
    }
    uint64_t deadline = duet_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    pthread_mutex_lock(&p->mu);
    duet_status_t st = DUET_OK;
    while (!reached(p, req, n_tokens)) {
        uint64_t now = duet_now_ns();
        if (now >= deadline) {
            st = duet_errorf(DUET_ERR_TIMEOUT, "request %llu: no result in %u ms",
                             (unsigned long long)req, timeout_ms);
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t left = deadline - now;
        if (left > 50000000ull)
            left = 50000000ull;
        ts.tv_nsec += (long)(left % 1000000000ull);
        ts.tv_sec += (time_t)(left / 1000000000ull) + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    return st;
}

int32_t duet_pipe_result(duet_pipe_t *p, uint64_t req, int32_t *out, int32_t cap, bool *done,
                         char *error, size_t error_cap)
{
    pthread_mutex_lock(&p->mu);
    pres_t *r = res_find(p, req);
    int32_t n = 0;
    if (r) {
        n = r->n < cap ? r->n : cap;
        if (out && n > 0)
            memcpy(out, r->tok, sizeof(int32_t) * (size_t)n);
    }
    if (done)
        *done = r ? r->done : false;
    if (error && error_cap)
        snprintf(error, error_cap, "%s", r ? r->error : "no such request");
    pthread_mutex_unlock(&p->mu);
    return n;
}

duet_status_t duet_pipe_kill_expert(duet_pipe_t *p, int shard)
{
    if (shard < 0 || shard >= p->S)
        return duet_errorf(DUET_ERR_RANGE, "no expert shard %d", shard);
    char name[32];
    snprintf(name, sizeof(name), "expert/%d", shard);
    duet_node_t *nd = p->nodes[p->exp_ni[shard]];
    if (!nd)
        return duet_errorf(DUET_ERR_INVALID, "expert/%d does not run in this process", shard);
    return duet_kill(nd, name, "killed");
}

duet_status_t duet_pipe_kill_attention(duet_pipe_t *p, int shard)
{
    if (shard < 0 || shard >= p->A)
        return duet_errorf(DUET_ERR_RANGE, "no attention shard %d", shard);
    char name[32];
    snprintf(name, sizeof(name), "attn/%d", shard);
    duet_node_t *nd = p->nodes[p->attn_ni[shard]];
    if (!nd)
        return duet_errorf(DUET_ERR_INVALID, "attn/%d does not run in this process", shard);
    return duet_kill(nd, name, "killed");
}

duet_status_t duet_pipe_kill_router(duet_pipe_t *p)
{
    duet_node_t *nd = p->nodes[p->router_ni];
    if (!nd)
        return duet_errorf(DUET_ERR_INVALID, "the router does not run in this process");
    return duet_kill(nd, "router", "killed");
}

duet_status_t duet_pipe_kill_scheduler(duet_pipe_t *p)
{
    duet_node_t *nd = p->nodes[p->sched_ni];
    if (!nd)
        return duet_errorf(DUET_ERR_INVALID, "the scheduler does not run in this process");
    return duet_kill(nd, "scheduler", "killed");
}

duet_status_t duet_pipe_restart_expert(duet_pipe_t *p, int shard)
{
    if (shard < 0 || shard >= p->S)
        return duet_errorf(DUET_ERR_RANGE, "no expert shard %d", shard);
    duet_node_t *nd = p->nodes[p->exp_ni[shard]];
    if (!nd)
        return duet_errorf(DUET_ERR_INVALID, "expert/%d does not run in this process", shard);
    char name[32];
    snprintf(name, sizeof(name), "expert/%d", shard);
    if (!p->cfg.no_restart) /* its supervisor restarts it */
        return duet_node_has_actor(nd, name) ? DUET_OK : DUET_ERR_AGAIN;
    duet_spawn_opts_t thr = {.mode = DUET_RUN_THREAD};
    return duet_spawn(nd, name, &duet__pipe_expert_ops, &p->earg[shard], &thr);
}

duet_status_t duet_pipe_stall_expert(duet_pipe_t *p, int shard, uint32_t ms)
{
    if (shard < 0 || shard >= p->S)
        return duet_errorf(DUET_ERR_RANGE, "no expert shard %d", shard);
    char name[32];
    snprintf(name, sizeof(name), "expert/%d", shard);
    duet_node_t *nd = p->nodes[p->exp_ni[shard]];
    if (!nd)
        return duet_errorf(DUET_ERR_INVALID, "expert/%d does not run in this process", shard);
    return duet_stall(nd, name, (uint64_t)ms * 1000000ull);
}

duet_pipe_counters_t *duet__pipe_counters(duet_pipe_t *p)
{
    return &p->counters;
}

uint64_t duet__pipe_time_base(duet_pipe_t *p)
{
    return p->sim ? 0 : p->t_nodes;
}

uint64_t duet_pipe_fault_count(duet_pipe_t *p, duet_fault_kind_t kind)
{
    return p->faults ? duet_fault_count(p->faults, kind) : 0;
}

uint64_t duet_pipe_now_ns(duet_pipe_t *p)
{
    if (p->sim)
        return duet_simnet_now(p->sim);
    return duet_now_ns() - p->t_nodes;
}

void duet_pipe_advance(duet_pipe_t *p, uint64_t ns)
{
    if (p->sim) {
        uint64_t until = duet_simnet_now(p->sim) + ns;
        while (duet_simnet_now(p->sim) < until)
            if (!duet_simnet_step(p->sim))
                break;
        return;
    }
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    nanosleep(&ts, NULL);
}

bool duet_pipe_sim_progress(duet_pipe_t *p, uint64_t *delivered, uint64_t *now_ns)
{
    if (!p->sim)
        return false;
    *delivered = duet_simnet_delivered(p->sim);
    *now_ns = duet_simnet_now(p->sim);
    return true;
}

duet_status_t duet_pipe_actor_stats(duet_pipe_t *p, const char *actor, duet_pipe_actor_stats_t *out,
                                    uint32_t timeout_ms)
{
    duet_node_t *sn = p->nodes[p->sched_ni];
    if (!sn)
        return duet_errorf(DUET_ERR_INVALID, "the scheduler does not run in this process");
    pthread_mutex_lock(&p->mu);
    uint64_t cookie = ++p->stats_seq;
    pthread_mutex_unlock(&p->mu);
    duet_pipe_stats_req_t q = {.cookie = cookie, .reply_to = "client"};
    duet_status_t st = duet_node_send(sn, "client", actor, &duet_pipe_msg_stats_req, &q);
    if (st)
        return duet_error_wrap(st, "pipe.stats_req to %s", actor);
    if (p->sim) {
        uint64_t until = duet_simnet_now(p->sim) + (uint64_t)timeout_ms * 1000000ull;
        while (p->stats_got.cookie != cookie)
            if (duet_simnet_now(p->sim) > until || !duet_simnet_step(p->sim))
                return duet_errorf(DUET_ERR_TIMEOUT, "%s: no pipe.actor_stats in %u ms (virtual)",
                                   actor, timeout_ms);
        *out = p->stats_got;
        return DUET_OK;
    }
    uint64_t deadline = duet_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    pthread_mutex_lock(&p->mu);
    while (p->stats_got.cookie != cookie) {
        uint64_t now = duet_now_ns();
        if (now >= deadline) {
            st = duet_errorf(DUET_ERR_TIMEOUT, "%s: no pipe.actor_stats in %u ms", actor,
                             timeout_ms);
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t left = deadline - now;
        if (left > 50000000ull)
            left = 50000000ull;
        ts.tv_nsec += (long)(left % 1000000000ull);
        ts.tv_sec += (time_t)(left / 1000000000ull) + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    if (!st)
        *out = p->stats_got;
    pthread_mutex_unlock(&p->mu);
    return st;
}

void duet_pipe_stats(duet_pipe_t *p, duet_pipe_stats_t *out)
{
    out->rounds_expert = atomic_load(&p->counters.rounds_expert);
    out->dropped_stray = atomic_load(&p->counters.dropped_stray);
    out->dropped_dup = atomic_load(&p->counters.dropped_dup);
    out->steps = atomic_load(&p->counters.steps);
    out->kv_waits = atomic_load(&p->counters.kv_waits);
    out->running = (uint32_t)atomic_load(&p->counters.running);
    out->waiting = (uint32_t)atomic_load(&p->counters.waiting);
    out->kv_blocks_used = atomic_load(&p->counters.kv_used);
    out->kv_blocks_total = (uint64_t)p->sarg.kv_blocks * (uint64_t)p->A;
    out->shards_ready = (uint32_t)atomic_load(&p->counters.shards_ready);
    out->n_attention = (uint32_t)p->A;
    out->canceled = atomic_load(&p->counters.canceled);
    out->replays = atomic_load(&p->counters.replays);
    out->epochs = atomic_load(&p->counters.epochs);
    out->restarts = atomic_load(&p->sup_stats.restarts);
    uint64_t e0 = out->epochs ? atomic_load(&p->counters.epoch_ns[0]) : 0;
    out->first_epoch_ns = e0 > duet__pipe_time_base(p) ? e0 - duet__pipe_time_base(p) : 0;
    out->rounds_coalesced = atomic_load(&p->counters.rounds_coalesced);
}
