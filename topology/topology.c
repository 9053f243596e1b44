/* topology — the deployment structure: create/destroy, composing in code,
 * read-only queries for the launcher, equality, and the issue report that
 * validation and the YAML loader fill. */
#include "topology/topo_int.h"

#include <stdio.h>
#include <string.h>

/* ---- names --------------------------------------------------------------- */

static const char *const kind_names[DUET_ACTOR_KIND_COUNT] = {
    "attention", "expert", "router", "scheduler", "gateway",
};
static const char *const data_names[] = {"shm", "tcp", "verbs", "sim"};
static const char *const control_names[] = {"inproc", "ipc", "tcp"};

static bool parse_word(const char *s, const char *const *names, size_t n, int *out)
{
    if (!s)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (int)i;
            return true;
        }
    }
    return false;
}

const char *duet_actor_kind_name(duet_actor_kind_t kind)
{
    return (unsigned)kind < DUET_ACTOR_KIND_COUNT ? kind_names[kind] : "?";
}

bool duet_actor_kind_parse(const char *s, duet_actor_kind_t *out)
{
    int v;
    if (!parse_word(s, kind_names, DUET_ARRAY_LEN(kind_names), &v))
        return false;
    *out = (duet_actor_kind_t)v;
    return true;
}

const char *duet_compute_backend_name(duet_compute_backend_t b)
{
    switch (b) {
    case DUET_COMPUTE_CPU: return "cpu";
    case DUET_COMPUTE_CUDA: return "cuda";
    }
    return "?";
}

const char *duet_data_provider_name(duet_data_provider_t p)
{
    return (unsigned)p < DUET_ARRAY_LEN(data_names) ? data_names[p] : "?";
}

bool duet_data_provider_parse(const char *s, duet_data_provider_t *out)
{
    int v;
    if (!parse_word(s, data_names, DUET_ARRAY_LEN(data_names), &v))
        return false;
    *out = (duet_data_provider_t)v;
    return true;
}

const char *duet_control_transport_name(duet_control_transport_t c)
{
    return (unsigned)c < DUET_ARRAY_LEN(control_names) ? control_names[c] : "?";
}

bool duet_control_transport_parse(const char *s, duet_control_transport_t *out)
{
    int v;
    if (!parse_word(s, control_names, DUET_ARRAY_LEN(control_names), &v))
        return false;
    *out = (duet_control_transport_t)v;
    return true;
}

/* ---- report -------------------------------------------------------------- */

duet_status_t duet__topo_issue(duet_topo_report_t *r, const char *file, topo_loc_t at,
                               const char *key, const char *fmt, ...)
{
    if (!r || r->n_issues > TOPO_MAX_ISSUES)
        return DUET_OK;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r->n_issues == TOPO_MAX_ISSUES) { /* one last entry says the rest were left out */
        file = NULL;
        at = (topo_loc_t){0};
        key = "";
        snprintf(msg, sizeof(msg), "more than %d problems: the rest are not shown",
                 TOPO_MAX_ISSUES);
    }
    if (duet_vec_reserve((void **)&r->issues, &r->cap_issues, r->n_issues + 1, sizeof(*r->issues)))
        return DUET_ERR_NOMEM;
    duet_topo_issue_t *is = &r->issues[r->n_issues];
    memset(is, 0, sizeof(*is));
    is->file = file ? duet_strdup(file) : NULL;
    is->key = duet_strdup(key ? key : "");
    is->message = duet_strdup(msg);
    if ((file && !is->file) || !is->key || !is->message) {
        duet_free(is->file);
        duet_free(is->key);
        duet_free(is->message);
        return DUET_ERR_NOMEM;
    }
    is->line = at.line;
    is->column = at.col;
    r->n_issues++;
    return DUET_OK;
}

void duet_topo_report_cleanup(duet_topo_report_t *report)
{
    if (!report)
        return;
    for (size_t i = 0; i < report->n_issues; i++) {
        duet_free(report->issues[i].file);
        duet_free(report->issues[i].key);
        duet_free(report->issues[i].message);
    }
    duet_free(report->issues);
    memset(report, 0, sizeof(*report));
}

static duet_status_t format_issue(const duet_topo_issue_t *is, duet_buf_t *out)
{
    duet_status_t st = DUET_OK;
    if (is->file)
        st = duet_buf_printf(out, "%s:", is->file);
    if (!st && is->line > 0)
        st = duet_buf_printf(out, "%d:%d:", is->line, is->column);
    if (!st && (is->file || is->line > 0))
        st = duet_buf_printf(out, " ");
    if (!st && is->key && is->key[0])
        st = duet_buf_printf(out, "%s: ", is->key);
    if (!st)
        st = duet_buf_printf(out, "%s", is->message);
    return st;
}

duet_status_t duet_topo_report_format(const duet_topo_report_t *report, duet_buf_t *out)
{
    for (size_t i = 0; report && i < report->n_issues; i++) {
        duet_status_t st = format_issue(&report->issues[i], out);
        if (!st)
            st = duet_buf_printf(out, "\n");
        if (st)
            return st;
    }
    return DUET_OK;
}

duet_status_t duet__topo_report_fail(const duet_topo_report_t *r)
{
    if (!r || r->n_issues == 0)
        return duet_errorf(DUET_ERR_INVALID, "invalid deployment");
    duet_buf_t b = {0};
    size_t shown = DUET_MIN(r->n_issues, (size_t)4);
    for (size_t i = 0; i < shown; i++) {
        if (i)
            duet_buf_printf(&b, "\n");
        format_issue(&r->issues[i], &b);
    }
    if (r->n_issues > shown)
        duet_buf_printf(&b, "\n(%zu more problem%s)", r->n_issues - shown,
                        r->n_issues - shown == 1 ? "" : "s");
    duet_status_t st = duet_errorf(DUET_ERR_INVALID, "%.*s", (int)b.len,
                                   b.data ? (const char *)b.data : "invalid deployment");
    duet_buf_cleanup(&b);
    return st;
}

/* ---- create / destroy ---------------------------------------------------- */

duet_status_t duet_topology_create(duet_topology_t **topo_out)
{
    if (!topo_out)
        return duet_errorf(DUET_ERR_INVALID, "duet_topology_create: NULL output");
    duet_topology_t *t = duet_calloc(1, sizeof(*t));
    if (!t)
        return duet_errorf(DUET_ERR_NOMEM, "out of memory creating a topology");
    t->set.micro_batches = 1;
    t->set.token_budget = 256;
    t->set.kv_blocks = 512;
    t->set.kv_block_size = 16;
    t->set.data = DUET_DATA_SHM;
    t->set.control = DUET_CONTROL_IPC;
    *topo_out = t;
    return DUET_OK;
}

void duet__topo_node_cleanup(topo_node_t *n)
{
    if (!n)
        return;
    duet_free((void *)n->pub.name);
    duet_free((void *)n->pub.host);
    duet_free((void *)n->pub.address);
    duet_free((void *)n->pub.process);
    duet_free((void *)n->pub.curve_public);
    duet_free((void *)n->pub.curve_secret_file);
    memset(n, 0, sizeof(*n));
}

void duet__topo_actor_cleanup(topo_actor_t *a)
{
    if (!a)
        return;
    duet_free((void *)a->pub.name);
    duet_free((void *)a->pub.node);
    duet_free((void *)a->pub.experts);
    duet_free((void *)a->pub.listen);
    duet_free(a->at_expert);
    memset(a, 0, sizeof(*a));
}

void duet_topology_destroy(duet_topology_t **topo_p)
{
    if (!topo_p || !*topo_p)
        return;
    duet_topology_t *t = *topo_p;
    for (size_t i = 0; i < t->n_nodes; i++)
        duet__topo_node_cleanup(&t->nodes[i]);
    for (size_t i = 0; i < t->n_actors; i++)
        duet__topo_actor_cleanup(&t->actors[i]);
    duet_free(t->nodes);
    duet_free(t->actors);
    duet_free((void *)t->set.name);
    duet_free((void *)t->set.model_dir);
    duet_free(t->file);
    duet_free(t);
    *topo_p = NULL;
}

/* ---- building ------------------------------------------------------------- */

duet_status_t duet__topo_set_str(const char **field, const char *value)
{
    char *copy = NULL;
    if (value) {
        copy = duet_strdup(value);
        if (!copy)
            return duet_errorf(DUET_ERR_NOMEM, "out of memory copying a string");
    }
    duet_free((void *)*field);
    *field = copy;
    return DUET_OK;
}

duet_status_t duet__topo_push_node(duet_topology_t *t, const topo_node_t *tmpl)
{
    if (t->n_nodes >= TOPO_MAX_NODES)
        return duet_errorf(DUET_ERR_CAPACITY, "more than %d nodes", TOPO_MAX_NODES);
    if (duet_vec_reserve((void **)&t->nodes, &t->cap_nodes, t->n_nodes + 1, sizeof(*t->nodes)))
        return DUET_ERR_NOMEM;
    topo_node_t *n = &t->nodes[t->n_nodes];
    *n = *tmpl;
    memset(&n->pub, 0, sizeof(n->pub));
    if (duet__topo_set_str(&n->pub.name, tmpl->pub.name) ||
        duet__topo_set_str(&n->pub.host, tmpl->pub.host) ||
        duet__topo_set_str(&n->pub.address, tmpl->pub.address) ||
        duet__topo_set_str(&n->pub.process, tmpl->pub.process) ||
        duet__topo_set_str(&n->pub.curve_public, tmpl->pub.curve_public) ||
        duet__topo_set_str(&n->pub.curve_secret_file, tmpl->pub.curve_secret_file)) {
        duet__topo_node_cleanup(n);
        return DUET_ERR_NOMEM;
    }
    t->n_nodes++;
    return DUET_OK;
}

static duet_status_t copy_experts(topo_actor_t *a, const int *experts, size_t n,
                                  const topo_loc_t *locs)
{
    int *e = NULL;
    topo_loc_t *l = NULL;
    if (n) {
        e = duet_calloc(n, sizeof(*e));
        if (!e)
            return duet_errorf(DUET_ERR_NOMEM, "out of memory copying %zu expert ids", n);
        memcpy(e, experts, n * sizeof(*e));
        if (locs) {
            l = duet_calloc(n, sizeof(*l));
            if (!l) {
                duet_free(e);
                return duet_errorf(DUET_ERR_NOMEM, "out of memory copying %zu expert ids", n);
            }
            memcpy(l, locs, n * sizeof(*l));
        }
    }
    duet_free((void *)a->pub.experts);
    duet_free(a->at_expert);
    a->pub.experts = e;
    a->pub.n_experts = n;
    a->at_expert = l;
    return DUET_OK;
}

duet_status_t duet__topo_push_actors(duet_topology_t *t, const topo_actor_t *tmpl, int count)
{
    if (count < 1)
        return duet_errorf(DUET_ERR_INVALID, "actor count %d < 1", count);
    if (t->n_actors + (size_t)count > TOPO_MAX_ACTORS)
        return duet_errorf(DUET_ERR_CAPACITY, "more than %d actors", TOPO_MAX_ACTORS);
    if (duet_vec_reserve((void **)&t->actors, &t->cap_actors, t->n_actors + (size_t)count,
                         sizeof(*t->actors)))
        return DUET_ERR_NOMEM;
    for (int i = 0; i < count; i++) {
        topo_actor_t *a = &t->actors[t->n_actors];
        *a = *tmpl;
        a->pub.name = a->pub.node = a->pub.listen = NULL;
        a->pub.experts = NULL;
        a->pub.n_experts = 0;
        a->at_expert = NULL;
        a->entry = t->n_entries;
        a->pub.shard = 0;
        if (a->pub.kind == DUET_ACTOR_ATTENTION)
            a->pub.shard = t->n_attention;
        else if (a->pub.kind == DUET_ACTOR_EXPERT)
            a->pub.shard = t->n_expert;
        char defname[32];
        const char *name = tmpl->named ? tmpl->pub.name : NULL;
        if (!name) {
            if (a->pub.kind == DUET_ACTOR_ATTENTION)
                snprintf(defname, sizeof(defname), "attn/%d", a->pub.shard);
            else if (a->pub.kind == DUET_ACTOR_EXPERT)
                snprintf(defname, sizeof(defname), "expert/%d", a->pub.shard);
            else
                snprintf(defname, sizeof(defname), "%s", duet_actor_kind_name(a->pub.kind));
            name = defname;
        }
        if (duet__topo_set_str(&a->pub.name, name) ||
            duet__topo_set_str(&a->pub.node, tmpl->pub.node) ||
            duet__topo_set_str(&a->pub.listen, tmpl->pub.listen) ||
            copy_experts(a, tmpl->pub.experts, tmpl->pub.n_experts, tmpl->at_expert)) {
            duet__topo_actor_cleanup(a);
            return DUET_ERR_NOMEM;
        }
        t->n_actors++;
        if (a->pub.kind == DUET_ACTOR_ATTENTION)
            t->n_attention++;
        else if (a->pub.kind == DUET_ACTOR_EXPERT)
            t->n_expert++;
    }
    t->n_entries++;
    return DUET_OK;
}

duet_status_t duet_topology_add_node(duet_topology_t *topo, const duet_topo_node_spec_t *spec)
{
    if (!topo || !spec || !spec->name)
        return duet_errorf(DUET_ERR_INVALID, "duet_topology_add_node: NULL topology, spec or name");
    topo_node_t tmpl = {0};
    tmpl.pub.name = spec->name;
    tmpl.pub.host = spec->host;
    tmpl.pub.address = spec->address;
    tmpl.pub.process = spec->process;
    tmpl.pub.curve_public = spec->curve_public;
    tmpl.pub.curve_secret_file = spec->curve_secret_file;
    return duet__topo_push_node(topo, &tmpl);
}

static duet_status_t add_actor(duet_topology_t *topo, duet_actor_kind_t kind, const char *node,
                               int n, const duet_compute_t *compute, const int *experts,
                               size_t n_experts, const char *listen)
{
    if (!topo || !node)
        return duet_errorf(DUET_ERR_INVALID, "adding a %s: NULL topology or node",
                           duet_actor_kind_name(kind));
    if (n_experts && !experts)
        return duet_errorf(DUET_ERR_INVALID, "adding an expert shard: NULL expert list");
    topo_actor_t tmpl = {0};
    tmpl.pub.kind = kind;
    tmpl.pub.node = node;
    tmpl.pub.compute.backend = DUET_COMPUTE_CPU;
    tmpl.pub.compute.threads = 1;
    if (compute)
        tmpl.pub.compute = *compute;
    tmpl.pub.experts = experts;
    tmpl.pub.n_experts = n_experts;
    tmpl.pub.listen = listen;
    return duet__topo_push_actors(topo, &tmpl, n);
}

duet_status_t duet_topology_add_attention(duet_topology_t *topo, const char *node, int n,
                                          const duet_compute_t *compute)
{
    if (n < 1)
        return duet_errorf(DUET_ERR_INVALID, "duet_topology_add_attention: n = %d < 1", n);
    return add_actor(topo, DUET_ACTOR_ATTENTION, node, n, compute, NULL, 0, NULL);
}

duet_status_t duet_topology_add_expert_shard(duet_topology_t *topo, const char *node,
                                             const duet_compute_t *compute, const int *experts,
                                             size_t n_experts, int *shard_out)
{
    duet_status_t st =
        add_actor(topo, DUET_ACTOR_EXPERT, node, 1, compute, experts, n_experts, NULL);
    if (!st && shard_out)
        *shard_out = topo->n_expert - 1;
    return st;
}

duet_status_t duet_topology_set_shard_experts(duet_topology_t *topo, int shard, const int *experts,
                                              size_t n_experts)
{
    if (!topo || (n_experts && !experts))
        return duet_errorf(DUET_ERR_INVALID, "duet_topology_set_shard_experts: NULL argument");
    for (size_t i = 0; i < topo->n_actors; i++) {
        topo_actor_t *a = &topo->actors[i];
        if (a->pub.kind == DUET_ACTOR_EXPERT && a->pub.shard == shard)
            return copy_experts(a, experts, n_experts, NULL);
    }
    return duet_errorf(DUET_ERR_NOT_FOUND, "no expert shard %d (the deployment has %d)", shard,
                       topo->n_expert);
}

duet_status_t duet_topology_add_router(duet_topology_t *topo, const char *node)
{
    return add_actor(topo, DUET_ACTOR_ROUTER, node, 1, NULL, NULL, 0, NULL);
}

duet_status_t duet_topology_add_scheduler(duet_topology_t *topo, const char *node)
{
    return add_actor(topo, DUET_ACTOR_SCHEDULER, node, 1, NULL, NULL, 0, NULL);
}

duet_status_t duet_topology_add_gateway(duet_topology_t *topo, const char *node, const char *listen)
{
    return add_actor(topo, DUET_ACTOR_GATEWAY, node, 1, NULL, NULL, 0,
                     listen ? listen : "127.0.0.1:8000");
}

duet_status_t duet_topology_name_last_actor(duet_topology_t *topo, const char *name)
{
    if (!topo || !name || topo->n_actors == 0)
        return duet_errorf(DUET_ERR_INVALID, "duet_topology_name_last_actor: no actor to name");
    topo_actor_t *a = &topo->actors[topo->n_actors - 1];
    if (topo->n_actors > 1 && topo->actors[topo->n_actors - 2].entry == a->entry)
        return duet_errorf(DUET_ERR_INVALID,
                           "duet_topology_name_last_actor: the last entry is a group of "
                           "attention shards; only single actors take a name");
    duet_status_t st = duet__topo_set_str(&a->pub.name, name);
    if (!st)
        a->named = true;
    return st;
}

duet_status_t duet_topology_set_name(duet_topology_t *topo, const char *name)
{
    return duet__topo_set_str(&topo->set.name, name);
}

duet_status_t duet_topology_set_model(duet_topology_t *topo, const char *model_dir)
{
    return duet__topo_set_str(&topo->set.model_dir, model_dir);
}

void duet_topology_set_micro_batches(duet_topology_t *topo, int m)
{
    topo->set.micro_batches = m;
}

void duet_topology_set_token_budget(duet_topology_t *topo, int tokens)
{
    topo->set.token_budget = tokens;
}

void duet_topology_set_kv_cache(duet_topology_t *topo, int blocks, int block_size)
{
    topo->set.kv_blocks = blocks;
    topo->set.kv_block_size = block_size;
}

void duet_topology_set_data_provider(duet_topology_t *topo, duet_data_provider_t data)
{
    topo->set.data = data;
}

void duet_topology_set_control(duet_topology_t *topo, duet_control_transport_t control, bool curve)
{
    topo->set.control = control;
    topo->set.curve = curve;
}

/* ---- queries ---------------------------------------------------------------- */

const duet_topo_settings_t *duet_topology_settings(const duet_topology_t *topo)
{
    return &topo->set;
}

size_t duet_topology_node_count(const duet_topology_t *topo)
{
    return topo->n_nodes;
}

const duet_topo_node_t *duet_topology_node(const duet_topology_t *topo, size_t i)
{
    return i < topo->n_nodes ? &topo->nodes[i].pub : NULL;
}

int duet_topology_node_find(const duet_topology_t *topo, const char *name)
{
    for (size_t i = 0; name && i < topo->n_nodes; i++)
        if (topo->nodes[i].pub.name && strcmp(topo->nodes[i].pub.name, name) == 0)
            return (int)i;
    return -1;
}

size_t duet_topology_actor_count(const duet_topology_t *topo)
{
    return topo->n_actors;
}

const duet_topo_actor_t *duet_topology_actor(const duet_topology_t *topo, size_t i)
{
    return i < topo->n_actors ? &topo->actors[i].pub : NULL;
}

size_t duet_topology_node_actors(const duet_topology_t *topo, const char *node, size_t *idx_out,
                                 size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; node && i < topo->n_actors; i++) {
        if (strcmp(topo->actors[i].pub.node, node) != 0)
            continue;
        if (n < cap && idx_out)
            idx_out[n] = i;
        n++;
    }
    return n;
}

int duet_topology_attention_count(const duet_topology_t *topo)
{
    return topo->n_attention;
}

int duet_topology_expert_shard_count(const duet_topology_t *topo)
{
    return topo->n_expert;
}

static const duet_topo_actor_t *find_shard(const duet_topology_t *topo, duet_actor_kind_t kind,
                                           int shard)
{
    for (size_t i = 0; i < topo->n_actors; i++)
        if (topo->actors[i].pub.kind == kind && topo->actors[i].pub.shard == shard)
            return &topo->actors[i].pub;
    return NULL;
}

const duet_topo_actor_t *duet_topology_attention(const duet_topology_t *topo, int shard)
{
    return find_shard(topo, DUET_ACTOR_ATTENTION, shard);
}

const duet_topo_actor_t *duet_topology_expert_shard(const duet_topology_t *topo, int shard)
{
    return find_shard(topo, DUET_ACTOR_EXPERT, shard);
}

size_t duet_topology_expert_shards(const duet_topology_t *topo, int expert, int *shards_out,
                                   size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < topo->n_actors; i++) {
        const duet_topo_actor_t *a = &topo->actors[i].pub;
        if (a->kind != DUET_ACTOR_EXPERT)
            continue;
        for (size_t j = 0; j < a->n_experts; j++) {
            if (a->experts[j] != expert)
                continue;
            if (n < cap && shards_out)
                shards_out[n] = a->shard;
            n++;
            break; /* a shard counts once even if (invalidly) listed twice */
        }
    }
    return n;
}

const duet_topo_actor_t *duet_topology_find_kind(const duet_topology_t *topo,
                                                 duet_actor_kind_t kind)
{
    for (size_t i = 0; i < topo->n_actors; i++)
        if (topo->actors[i].pub.kind == kind)
            return &topo->actors[i].pub;
    return NULL;
}

/* ---- equality -------------------------------------------------------------- */

static bool str_eq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

bool duet_topology_equal(const duet_topology_t *a, const duet_topology_t *b)
{
    const duet_topo_settings_t *x = &a->set, *y = &b->set;
    if (!str_eq(x->name, y->name) || !str_eq(x->model_dir, y->model_dir) ||
        x->micro_batches != y->micro_batches || x->token_budget != y->token_budget ||
        x->kv_blocks != y->kv_blocks || x->kv_block_size != y->kv_block_size ||
        x->data != y->data || x->control != y->control || x->curve != y->curve)
        return false;
    if (a->n_nodes != b->n_nodes || a->n_actors != b->n_actors)
        return false;
    for (size_t i = 0; i < a->n_nodes; i++) {
        const duet_topo_node_t *p = &a->nodes[i].pub, *q = &b->nodes[i].pub;
        if (!str_eq(p->name, q->name) || !str_eq(p->host, q->host) ||
            !str_eq(p->address, q->address) || !str_eq(p->process, q->process) ||
            !str_eq(p->curve_public, q->curve_public) ||
            !str_eq(p->curve_secret_file, q->curve_secret_file))
            return false;
    }
    for (size_t i = 0; i < a->n_actors; i++) {
        const duet_topo_actor_t *p = &a->actors[i].pub, *q = &b->actors[i].pub;
        if (p->kind != q->kind || p->shard != q->shard || !str_eq(p->name, q->name) ||
            !str_eq(p->node, q->node) || !str_eq(p->listen, q->listen) ||
            p->n_experts != q->n_experts)
            return false;
        if (p->kind == DUET_ACTOR_ATTENTION || p->kind == DUET_ACTOR_EXPERT) {
            if (p->compute.backend != q->compute.backend ||
                p->compute.threads != q->compute.threads ||
                (p->compute.backend == DUET_COMPUTE_CUDA && p->compute.device != q->compute.device))
                return false;
        }
        if (p->n_experts && memcmp(p->experts, q->experts, p->n_experts * sizeof(int)) != 0)
            return false;
    }
    return true;
}
