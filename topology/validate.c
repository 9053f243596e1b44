/* topology validation — one pass over a composed or loaded deployment that
 * reports every problem with what and where (file:line:col and key). The
 * same checks run for API-composed deployments (no line, same keys). */
#include "topology/topo_int.h"
#include "model/model.h"

#include <stdio.h>
#include <string.h>

#define MAX_MICRO_BATCHES 64
#define MAX_THREADS 1024
#define MAX_CUDA_DEVICE 1023

typedef struct vctx {
    const duet_topology_t *t;
    duet_topo_report_t *r;
    duet_status_t st; /* DUET_ERR_NOMEM if the report could not grow */
    size_t n_issues;
} vctx_t;

static void issue(vctx_t *v, topo_loc_t at, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void issue(vctx_t *v, topo_loc_t at, const char *key, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    v->n_issues++;
    if (duet__topo_issue(v->r, v->t->file, at, key, "%s", msg))
        v->st = DUET_ERR_NOMEM;
}

/* The first non-zero location, so API-composed issues stay 0:0. */
static topo_loc_t pick(topo_loc_t a, topo_loc_t b)
{
    return a.line ? a : b;
}

static bool name_ok(const char *s, bool allow_slash)
{
    size_t n = strlen(s);
    if (n == 0 || n > DUET_TOPO_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.' || (allow_slash && c == '/');
        if (!ok)
            return false;
    }
    return true;
}

static bool has_control_char(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

/* "host:port" with a non-empty host and port 1..65535 ("[v6]:port" too). */
static bool hostport_ok(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || colon[1] == '\0')
        return false;
    long port = 0;
    for (const char *p = colon + 1; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        port = port * 10 + (*p - '0');
        if (port > 65535)
            return false;
    }
    return port >= 1;
}

static bool z85_key_ok(const char *s)
{
    static const char z85[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              ".-:+=^!/*?&<>()[]{}@%$#";
    if (strlen(s) != 40)
        return false;
    for (; *s; s++)
        if (!strchr(z85, *s))
            return false;
    return true;
}

static bool is_local(const char *host)
{
    return !host || strcmp(host, "localhost") == 0 || strcmp(host, "127.0.0.1") == 0 ||
           strcmp(host, "::1") == 0;
}

static bool same_host(const char *a, const char *b)
{
    if (is_local(a) || is_local(b))
        return is_local(a) && is_local(b);
    return strcmp(a, b) == 0;
}

static const char *process_of(const topo_node_t *n)
{
    return n->pub.process ? n->pub.process : n->pub.name;
}

static void check_settings(vctx_t *v, int *n_experts_out, const duet_topo_validate_opts_t *opts)
{
    const duet_topology_t *t = v->t;
    const duet_topo_settings_t *s = &t->set;
    *n_experts_out = opts && opts->n_experts > 0 ? opts->n_experts : 0;
    if (s->name && (!name_ok(s->name, false)))
        issue(v, t->at_root, "name",
              "deployment name '%s' must be 1..%d characters of A-Z a-z 0-9 _ - .", s->name,
              DUET_TOPO_NAME_MAX);
    if (!s->model_dir || !s->model_dir[0]) {
        issue(v, pick(t->at_model, t->at_root), "model",
              "missing: the model directory (Hugging Face layout with config.json)");
    } else if (!(opts && opts->n_experts > 0)) {
        char *path = NULL;
        duet_buf_t b = {0};
        if (duet_buf_printf(&b, "%s/config.json", s->model_dir) == DUET_OK)
            path = (char *)b.data;
        duet_config_t cfg;
        memset(&cfg, 0, sizeof(cfg));
        duet_status_t st = path ? duet_config_load(path, &cfg) : DUET_ERR_NOMEM;
        if (st) {
            issue(v, t->at_model, "model", "cannot read the model's config.json: %s",
                  duet_error()[0] ? duet_error() : duet_status_str(st));
        } else {
            *n_experts_out = cfg.n_experts;
            if (cfg.n_experts < 1)
                issue(v, t->at_model, "model", "the model at '%s' has no experts (not an MoE)",
                      s->model_dir);
            duet_config_cleanup(&cfg);
        }
        duet_buf_cleanup(&b);
    }
    if (s->micro_batches < 1 || s->micro_batches > MAX_MICRO_BATCHES)
        issue(v, pick(t->at_m, t->at_root), "pipeline.micro_batches",
              "m must be between 1 and %d (got %d)", MAX_MICRO_BATCHES, s->micro_batches);
    if (s->token_budget < 1)
        issue(v, pick(t->at_budget, t->at_root), "pipeline.token_budget",
              "token budget per step must be positive (got %d)", s->token_budget);
    if (s->kv_blocks < 1)
        issue(v, pick(t->at_blocks, t->at_root), "kv_cache.blocks",
              "KV blocks must be positive (got %d)", s->kv_blocks);
    if (s->kv_block_size < 1)
        issue(v, pick(t->at_block_size, t->at_root), "kv_cache.block_size",
              "KV block size must be positive (got %d)", s->kv_block_size);
    if ((unsigned)s->data > DUET_DATA_SIM)
        issue(v, t->at_data, "transport.data", "unknown data-plane provider %d", (int)s->data);
    if ((unsigned)s->control > DUET_CONTROL_TCP)
        issue(v, t->at_control, "transport.control", "unknown control transport %d",
              (int)s->control);
    if (s->curve && s->control == DUET_CONTROL_INPROC)
        issue(v, pick(t->at_curve, t->at_control), "transport.curve",
              "CURVE needs control transport ipc or tcp, not inproc");
}

static void check_nodes(vctx_t *v)
{
    const duet_topology_t *t = v->t;
    const duet_topo_settings_t *s = &t->set;
    char key[64];
    if (t->n_nodes == 0) {
        issue(v, pick(t->at_nodes, t->at_root), "nodes",
              "no nodes: a deployment needs at least one");
        return;
    }
    /* How many processes and hosts, to know which addresses are needed;
     * maps keep this linear in the number of nodes. */
    duet_strmap_t *names = duet_strmap_create(t->n_nodes);
    duet_strmap_t *procs = duet_strmap_create(t->n_nodes);
    duet_strmap_t *hosts = duet_strmap_create(t->n_nodes);
    if (!names || !procs || !hosts) {
        v->st = DUET_ERR_NOMEM;
        goto out_free;
    }
    for (size_t i = 0; i < t->n_nodes; i++) {
        const char *proc = process_of(&t->nodes[i]);
        const char *host = is_local(t->nodes[i].pub.host) ? "" : t->nodes[i].pub.host;
        int64_t first;
        if (!duet_strmap_get(procs, proc, strlen(proc), &first) &&
            duet_strmap_put(procs, proc, strlen(proc), (int64_t)i))
            v->st = DUET_ERR_NOMEM;
        if (duet_strmap_put(hosts, host, strlen(host), 0))
            v->st = DUET_ERR_NOMEM;
    }
    size_t n_procs = duet_strmap_count(procs), n_hosts = duet_strmap_count(hosts);
    for (size_t i = 0; i < t->n_nodes; i++) {
        const topo_node_t *n = &t->nodes[i];
        const duet_topo_node_t *p = &n->pub;
        snprintf(key, sizeof(key), "nodes[%zu].name", i);
        if (!name_ok(p->name, false))
            issue(v, pick(n->at_name, n->at), key,
                  "node name '%s' must be 1..%d characters of A-Z a-z 0-9 _ - .", p->name,
                  DUET_TOPO_NAME_MAX);
        int64_t j;
        if (duet_strmap_get(names, p->name, strlen(p->name), &j)) {
            if (t->nodes[j].at_name.line)
                issue(v, pick(n->at_name, n->at), key,
                      "duplicate node name '%s' (first defined at line %d)", p->name,
                      t->nodes[j].at_name.line);
            else
                issue(v, n->at_name, key, "duplicate node name '%s' (also nodes[%lld])", p->name,
                      (long long)j);
        } else if (duet_strmap_put(names, p->name, strlen(p->name), (int64_t)i)) {
            v->st = DUET_ERR_NOMEM;
        }
        /* nodes of one process share a host */
        const char *proc = process_of(n);
        if (duet_strmap_get(procs, proc, strlen(proc), &j) && (size_t)j != i &&
            !same_host(t->nodes[j].pub.host, p->host)) {
            snprintf(key, sizeof(key), "nodes[%zu].host", i);
            issue(v, pick(n->at_host, n->at), key,
                  "node '%s' shares process '%s' with node '%s' but not its host", p->name, proc,
                  t->nodes[j].pub.name);
        }
        const char *strs[] = {p->host, p->address, p->process, p->curve_secret_file};
        const char *keys[] = {"host", "address", "process", "curve_secret_file"};
        for (size_t k = 0; k < DUET_ARRAY_LEN(strs); k++) {
            if (strs[k] && (!strs[k][0] || has_control_char(strs[k]))) {
                snprintf(key, sizeof(key), "nodes[%zu].%s", i, keys[k]);
                issue(v, n->at, key, "must be a non-empty string without control characters");
            }
        }
        /* control-plane address */
        snprintf(key, sizeof(key), "nodes[%zu].address", i);
        const char *scheme = s->control == DUET_CONTROL_TCP   ? "tcp://"
                             : s->control == DUET_CONTROL_IPC ? "ipc://"
                                                              : "inproc://";
        if (p->address) {
            size_t sl = strlen(scheme);
            if (strncmp(p->address, scheme, sl) != 0 || p->address[sl] == '\0')
                issue(v, pick(n->at_address, n->at), key,
                      "address '%s' does not fit control transport %s (expected %s...)", p->address,
                      duet_control_transport_name(s->control), scheme);
            else if (s->control == DUET_CONTROL_TCP && !hostport_ok(p->address + sl))
                issue(v, pick(n->at_address, n->at), key,
                      "address '%s' needs a host and a port 1..65535 (tcp://HOST:PORT)",
                      p->address);
        } else if (s->control == DUET_CONTROL_TCP && n_procs > 1) {
            issue(v, n->at, key,
                  "node '%s' has no address: control transport tcp between %zu processes needs "
                  "one (e.g. address: tcp://10.0.0.2:7000)",
                  p->name, n_procs);
        }
        if ((s->data == DUET_DATA_TCP || s->data == DUET_DATA_VERBS) && n_hosts > 1 && !p->host) {
            snprintf(key, sizeof(key), "nodes[%zu].host", i);
            issue(v, n->at, key,
                  "node '%s' has no host: data provider %s across %zu hosts needs each node's "
                  "address (host: 10.0.0.2)",
                  p->name, duet_data_provider_name(s->data), n_hosts);
        }
        if (s->curve) {
            snprintf(key, sizeof(key), "nodes[%zu].curve_public", i);
            if (!p->curve_public)
                issue(v, n->at, key, "node '%s' has no CURVE public key (transport.curve is on)",
                      p->name);
            else if (!z85_key_ok(p->curve_public))
                issue(v, pick(n->at_curve_public, n->at), key,
                      "CURVE public key must be 40 z85 characters");
            snprintf(key, sizeof(key), "nodes[%zu].curve_secret_file", i);
            if (!p->curve_secret_file)
                issue(v, n->at, key,
                      "node '%s' has no CURVE secret key file (transport.curve is on)", p->name);
        }
    }
    /* transports that cannot cross a process or host boundary */
    if (s->control == DUET_CONTROL_INPROC && n_procs > 1)
        issue(v, pick(t->at_control, t->at_root), "transport.control",
              "control transport inproc needs every node in one process, but the nodes are in "
              "%zu processes (give them the same `process:` or use ipc/tcp)",
              n_procs);
    if (s->control == DUET_CONTROL_IPC && n_hosts > 1)
        issue(v, pick(t->at_control, t->at_root), "transport.control",
              "control transport ipc works on one host, but the nodes are on %zu hosts (use tcp)",
              n_hosts);
    if (s->data == DUET_DATA_SHM && n_hosts > 1)
        issue(v, pick(t->at_data, t->at_root), "transport.data",
              "data provider shm works on one host, but the nodes are on %zu hosts (use tcp or "
              "verbs)",
              n_hosts);
    if (s->data == DUET_DATA_SIM && n_procs > 1)
        issue(v, pick(t->at_data, t->at_root), "transport.data",
              "data provider sim needs every node in one process, but the nodes are in %zu "
              "processes",
              n_procs);
out_free:
    duet_strmap_destroy(&names);
    duet_strmap_destroy(&procs);
    duet_strmap_destroy(&hosts);
}

static void check_compute(vctx_t *v, const topo_actor_t *a, const char *base)
{
    char key[80];
    const duet_compute_t *c = &a->pub.compute;
    if ((unsigned)c->backend > DUET_COMPUTE_CUDA) {
        snprintf(key, sizeof(key), "%s.backend", base);
        issue(v, pick(a->at_backend, a->at), key, "unknown compute backend %d", (int)c->backend);
    }
    if (c->backend == DUET_COMPUTE_CUDA && (c->device < 0 || c->device > MAX_CUDA_DEVICE)) {
        snprintf(key, sizeof(key), "%s.device", base);
        issue(v, pick(a->at_backend, a->at), key, "CUDA device index %d is out of range",
              c->device);
    }
    if (c->threads < 1 || c->threads > MAX_THREADS) {
        snprintf(key, sizeof(key), "%s.threads", base);
        issue(v, pick(a->at_threads, a->at), key, "threads must be between 1 and %d (got %d)",
              MAX_THREADS, c->threads);
    }
}

/* Per expert: the shard (stamp) and list position where it was last seen. */
typedef struct expert_seen {
    size_t stamp;
    size_t pos;
} expert_seen_t;

static void check_experts(vctx_t *v, const topo_actor_t *a, const char *base, int n_experts,
                          expert_seen_t *seen, size_t stamp)
{
    char key[96];
    const duet_topo_actor_t *p = &a->pub;
    if (p->n_experts == 0) {
        snprintf(key, sizeof(key), "%s.experts", base);
        issue(v, pick(a->at_experts, a->at), key, "expert shard '%s' holds no experts", p->name);
        return;
    }
    for (size_t j = 0; j < p->n_experts; j++) {
        topo_loc_t at = a->at_expert ? a->at_expert[j] : pick(a->at_experts, a->at);
        snprintf(key, sizeof(key), "%s.experts[%zu]", base, j);
        int e = p->experts[j];
        if (e < 0 || (n_experts > 0 && e >= n_experts)) {
            if (n_experts > 0)
                issue(v, at, key, "expert %d is out of range: the model has %d experts (0..%d)", e,
                      n_experts, n_experts - 1);
            else
                issue(v, at, key, "expert id %d is negative", e);
            continue;
        }
        /* twice on this shard: stamps when the expert count is known, else
         * a scan of the (then short or already reported) list */
        size_t prev = SIZE_MAX;
        if (seen) {
            if (seen[e].stamp == stamp)
                prev = seen[e].pos;
            seen[e].stamp = stamp;
            seen[e].pos = j;
        } else {
            for (size_t k = 0; k < j && k < 4096; k++)
                if (p->experts[k] == e) {
                    prev = k;
                    break;
                }
        }
        if (prev != SIZE_MAX)
            issue(v, at, key,
                  "expert %d is placed twice on expert shard '%s' (also %s.experts[%zu])", e,
                  p->name, base, prev);
    }
}

static void check_actors(vctx_t *v, int n_experts)
{
    const duet_topology_t *t = v->t;
    char base[48], key[96];
    expert_seen_t *seen_at =
        n_experts > 0 ? duet_calloc((size_t)n_experts, sizeof(*seen_at)) : NULL;
    duet_strmap_t *nodes = duet_strmap_create(t->n_nodes);
    duet_strmap_t *names = duet_strmap_create(t->n_actors);
    if ((n_experts > 0 && !seen_at) || !nodes || !names) {
        v->st = DUET_ERR_NOMEM;
        goto out_free;
    }
    for (size_t i = 0; i < t->n_nodes; i++)
        if (duet_strmap_put(nodes, t->nodes[i].pub.name, strlen(t->nodes[i].pub.name), (int64_t)i))
            v->st = DUET_ERR_NOMEM;
    const topo_actor_t *first[DUET_ACTOR_KIND_COUNT] = {0};
    int seen[DUET_ACTOR_KIND_COUNT] = {0};
    if (t->n_actors == 0)
        issue(v, pick(t->at_actors, t->at_root), "actors", "no actors");
    for (size_t i = 0; i < t->n_actors; i++) {
        const topo_actor_t *a = &t->actors[i];
        const duet_topo_actor_t *p = &a->pub;
        /* an attention group shares one entry: report its entry once */
        bool group_repeat = i > 0 && t->actors[i - 1].entry == a->entry;
        snprintf(base, sizeof(base), "actors[%d]", a->entry);
        if ((unsigned)p->kind >= DUET_ACTOR_KIND_COUNT) {
            snprintf(key, sizeof(key), "%s.kind", base);
            issue(v, a->at, key, "unknown actor kind %d", (int)p->kind);
            continue;
        }
        if (!group_repeat) {
            snprintf(key, sizeof(key), "%s.node", base);
            if (!p->node)
                issue(v, a->at, key, "missing: the node this %s runs on",
                      duet_actor_kind_name(p->kind));
            else if (!duet_strmap_get(nodes, p->node, strlen(p->node), NULL))
                issue(v, pick(a->at_node, a->at), key, "node '%s' is not defined in `nodes`",
                      p->node);
        }
        snprintf(key, sizeof(key), "%s.name", base);
        if (!name_ok(p->name, true)) {
            issue(v, pick(a->at_name, a->at), key,
                  "actor name '%s' must be 1..%d characters of A-Z a-z 0-9 _ - . /", p->name,
                  DUET_TOPO_NAME_MAX);
        } else {
            int64_t j;
            if (duet_strmap_get(names, p->name, strlen(p->name), &j))
                issue(v, pick(a->at_name, a->at), key,
                      "duplicate actor name '%s' (also actors[%d])", p->name, t->actors[j].entry);
            else if (duet_strmap_put(names, p->name, strlen(p->name), (int64_t)i))
                v->st = DUET_ERR_NOMEM;
        }
        seen[p->kind]++;
        switch (p->kind) {
        case DUET_ACTOR_ATTENTION:
            if (!group_repeat)
                check_compute(v, a, base);
            break;
        case DUET_ACTOR_EXPERT:
            check_compute(v, a, base);
            check_experts(v, a, base, n_experts, seen_at, i + 1);
            break;
        case DUET_ACTOR_GATEWAY:
            snprintf(key, sizeof(key), "%s.listen", base);
            if (!p->listen || has_control_char(p->listen) || !hostport_ok(p->listen))
                issue(v, pick(a->at_listen, a->at), key,
                      "gateway listen address '%s' must be HOST:PORT with port 1..65535",
                      p->listen ? p->listen : "");
            /* fall through */
        case DUET_ACTOR_ROUTER:
        case DUET_ACTOR_SCHEDULER:
            if (first[p->kind]) {
                snprintf(key, sizeof(key), "%s.kind", base);
                if (first[p->kind]->at.line)
                    issue(v, a->at, key,
                          "a second %s (the first is at line %d); a deployment has one",
                          duet_actor_kind_name(p->kind), first[p->kind]->at.line);
                else
                    issue(v, a->at, key,
                          "a second %s (the first is actors[%d]); a deployment has one",
                          duet_actor_kind_name(p->kind), first[p->kind]->entry);
            }
            break;
        }
        if (!first[p->kind])
            first[p->kind] = a;
    }
    topo_loc_t at = pick(t->at_actors, t->at_root);
    if (t->n_actors) {
        if (!seen[DUET_ACTOR_ATTENTION])
            issue(v, at, "actors", "no attention shard (kind: attention)");
        if (!seen[DUET_ACTOR_EXPERT])
            issue(v, at, "actors", "no expert shard (kind: expert)");
        if (!seen[DUET_ACTOR_ROUTER])
            issue(v, at, "actors", "no router (kind: router)");
        if (!seen[DUET_ACTOR_SCHEDULER])
            issue(v, at, "actors", "no scheduler (kind: scheduler)");
    }
    if (seen_at && seen[DUET_ACTOR_EXPERT]) {
        duet_buf_t b = {0};
        int missing = 0;
        for (int e = 0; e < n_experts; e++) {
            if (seen_at[e].stamp)
                continue;
            if (missing < 16)
                duet_buf_printf(&b, "%s%d", missing ? ", " : "", e);
            missing++;
        }
        if (missing)
            issue(v, at, "actors",
                  "%s %.*s%s %s not placed on any expert shard (the model has %d experts)",
                  missing == 1 ? "expert" : "experts", (int)b.len,
                  b.data ? (const char *)b.data : "", missing > 16 ? ", ..." : "",
                  missing == 1 ? "is" : "are", n_experts);
        duet_buf_cleanup(&b);
    }
out_free:
    duet_strmap_destroy(&nodes);
    duet_strmap_destroy(&names);
    duet_free(seen_at);
}

duet_status_t duet_topology_validate(const duet_topology_t *topo,
                                     const duet_topo_validate_opts_t *opts,
                                     duet_topo_report_t *report)
{
    if (!topo)
        return duet_errorf(DUET_ERR_INVALID, "duet_topology_validate: NULL topology");
    duet_topo_report_t local = {0};
    duet_topo_report_t *r = report ? report : &local;
    vctx_t v = {.t = topo, .r = r};
    int n_experts = 0;
    check_settings(&v, &n_experts, opts);
    check_nodes(&v);
    check_actors(&v, n_experts);
    duet_status_t st = DUET_OK;
    if (v.st)
        st = duet_errorf(v.st, "out of memory validating a deployment");
    else if (v.n_issues)
        st = duet__topo_report_fail(r);
    duet_topo_report_cleanup(&local);
    return st;
}
