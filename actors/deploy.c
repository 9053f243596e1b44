/* deploy — a whole pipeline deployment in one process: models loaded by
 * role, one data-plane context per shard with its M2N (dispatch) and N2M
 * (combine) groups wired up directly, one node per actor (ZeroMQ inproc on
 * real threads, or a simnet on virtual time), and a "client" actor that
 * collects the streamed tokens for duet_pipe_wait / duet_pipe_result.
 *
 * Nodes: "ctl" (client, scheduler, router), "a<i>" (attn/<i>), "e<s>"
 * (expert/<s>). Spawn order: client and scheduler, expert shards,
 * attention shards (they monitor the expert shards), router (its first
 * table makes the attention shards ready). */
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
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
    pres_t *res;
    size_t n_res, cap_res;
    /* observability: [A] attention, [S] expert shards, scheduler */
    duet_obs_t *obs;
    int n_obs;
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

static duet_status_t client_start(duet_actor_t *self, void *arg, void **state_out)
{
    (void)self;
    *state_out = arg;
    return DUET_OK;
}

static duet_status_t client_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    (void)self;
    duet_pipe_t *p = state;
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

duet_status_t duet__pipe_dp_open(const char *provider, duet_rdma_sim_t *rsim,
                                 const duet_pipe_geom_t *g, bool attention, int rank,
                                 duet_rdma_ctx_t **ctx, duet_m2n_t **disp, duet_m2n_t **comb,
                                 duet_rdma_mr_t **mr)
{
    const int A = g->n_attention, S = g->n_expert_shards;
    duet_status_t st;
    duet_rdma_ctx_params_t cp = {.provider = provider ? provider : "sim", .sim = rsim};
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
    size_t len = (size_t)g->ring * (size_t)(attention ? S : A) * g->slot_size;
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
                            const duet_pipe_stats_req_t *req)
{
    duet_pipe_actor_stats_t r = {.cookie = req->cookie,
                                 .actor = (char *)duet_actor_name(self),
                                 .busy_ns = obs->busy_ns,
                                 .rounds = obs->rounds,
                                 .tokens = obs->tokens,
                                 .bytes = obs->bytes,
                                 .steps = obs->steps};
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
        duet_node_config_t nc = {.name = p->names[i], .registry = p->reg, .faults = p->faults};
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
        if (nd && (st = duet_backend_open("cpu", &bo, &p->be[i])))
            goto err;
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
                                      .counters = &p->counters,
                                      .obs = &p->obs[A + S]};
    duet_spawn_opts_t thr = {.mode = DUET_RUN_THREAD};
    duet_node_t *sn = p->nodes[p->sched_ni];
    if (sn && ((st = duet_spawn(sn, "client", &client_ops, p, NULL)) ||
               (st = duet_spawn(sn, "scheduler", &duet__pipe_scheduler_ops, &p->sarg, NULL))))
        goto err;
    char name[32];
    for (int s = 0; s < S; s++) {
        p->earg[s] = (duet_pipe_expert_arg_t){.shard = s,
                                              .geom = g,
                                              .model = p->emodel[s],
                                              .be = p->be[A + s],
                                              .experts = p->experts[s],
                                              .n_experts = cfg->shard_n_experts[s],
                                              .provider = prov,
                                              .rsim = p->rsim,
                                              .counters = &p->counters,
                                              .obs = &p->obs[A + s]};
        snprintf(name, sizeof(name), "expert/%d", s);
        if (p->nodes[p->exp_ni[s]] && (st = duet_spawn(p->nodes[p->exp_ni[s]], name,
                                                       &duet__pipe_expert_ops, &p->earg[s], &thr)))
            goto err;
    }
    for (int a = 0; a < A; a++) {
        p->aarg[a] = (duet_pipe_attn_arg_t){.shard = a,
                                            .geom = g,
                                            .model = p->amodel,
                                            .be = p->be[a],
                                            .kv_blocks = kvb,
                                            .kv_block_size = kvbs,
                                            .provider = prov,
                                            .rsim = p->rsim,
                                            .counters = &p->counters,
                                            .obs = &p->obs[a]};
        snprintf(name, sizeof(name), "attn/%d", a);
        if (p->nodes[p->attn_ni[a]] &&
            (st = duet_spawn(p->nodes[p->attn_ni[a]], name, &duet__pipe_attention_ops, &p->aarg[a],
                             &thr)))
            goto err;
    }
    duet_node_t *rn = p->nodes[p->router_ni];
    if (rn && (st = duet_spawn(rn, "router", &duet__pipe_router_ops, &p->rarg, NULL)))
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
    for (size_t i = 0; i < p->n_res; i++)
        duet_free(p->res[i].tok);
    duet_free(p->res);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    duet_free(p);
}

/* ---- requests -------------------------------------------------------------- */

duet_status_t duet_pipe_submit(duet_pipe_t *p, uint64_t req, const int32_t *prompt, int32_t n,
                               int32_t max_new, int32_t eos)
{
    duet_pipe_sampling_t greedy = {0.0f, 0, 1.0f, 0};
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
                            .seed = sp->seed};
    duet_node_t *sn = p->nodes[p->sched_ni];
    if (!sn)
        return duet_errorf(DUET_ERR_INVALID, "the scheduler does not run in this process");
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

duet_status_t duet_pipe_restart_expert(duet_pipe_t *p, int shard)
{
    if (shard < 0 || shard >= p->S)
        return duet_errorf(DUET_ERR_RANGE, "no expert shard %d", shard);
    duet_node_t *nd = p->nodes[p->exp_ni[shard]];
    if (!nd)
        return duet_errorf(DUET_ERR_INVALID, "expert/%d does not run in this process", shard);
    char name[32];
    snprintf(name, sizeof(name), "expert/%d", shard);
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
}
