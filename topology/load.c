/* topology YAML loader — reads a deployment file (topology/FORMAT.md) with
 * libyaml's event parser into a small tree that keeps every node's line
 * and column, then walks the tree against the schema: unknown keys (with
 * a "did you mean"), duplicate keys, wrong scalar types and unknown actor
 * kinds are reported where they are; then duet_topology_validate checks
 * the meaning. Anchors and aliases are refused (they would let a small file
 * expand into a huge deployment). */
#include "topology/topo_int.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define FILE_MAX_BYTES (4u << 20)
#define TREE_MAX_DEPTH 32
#define TREE_MAX_NODES 1000000
#define ACTOR_COUNT_MAX 4096

/* ---- tree -------------------------------------------------------------------- */

typedef enum ytype { Y_SCALAR, Y_SEQ, Y_MAP } ytype_t;

typedef struct ynode {
    ytype_t type;
    topo_loc_t at;
    char *value; /* scalar, NUL-terminated */
    size_t len;
    bool plain; /* scalar written without quotes */
    /* seq: items; map: key, value, key, value ... */
    struct ynode **kids;
    size_t n_kids, cap_kids;
} ynode_t;

static void ynode_free(ynode_t *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n_kids; i++)
        ynode_free(n->kids[i]);
    duet_free(n->kids);
    duet_free(n->value);
    duet_free(n);
}

typedef struct lctx {
    duet_topology_t *t;
    duet_topo_report_t *r;
    const char *file;
    size_t n_issues;
    duet_status_t st; /* NOMEM while building */
} lctx_t;

static void lissue(lctx_t *c, topo_loc_t at, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void lissue(lctx_t *c, topo_loc_t at, const char *key, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->n_issues++;
    if (duet__topo_issue(c->r, c->file, at, key, "%s", msg))
        c->st = DUET_ERR_NOMEM;
}

static topo_loc_t mark_loc(yaml_mark_t m)
{
    topo_loc_t at = {(int)DUET_MIN(m.line, (size_t)INT_MAX - 1) + 1,
                     (int)DUET_MIN(m.column, (size_t)INT_MAX - 1) + 1};
    return at;
}

static duet_status_t add_kid(ynode_t *parent, ynode_t *kid)
{
    if (duet_vec_reserve((void **)&parent->kids, &parent->cap_kids, parent->n_kids + 1,
                         sizeof(*parent->kids)))
        return DUET_ERR_NOMEM;
    parent->kids[parent->n_kids++] = kid;
    return DUET_OK;
}

/* Parse text into a tree. Returns the root (NULL with issues on failure). */
static ynode_t *parse_tree(lctx_t *c, const char *text, size_t len)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        c->st = DUET_ERR_NOMEM;
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    ynode_t *stack[TREE_MAX_DEPTH + 1];
    int depth = 0;
    ynode_t *root = NULL;
    size_t n_nodes = 0;
    int docs = 0;
    bool done = false, failed = false;
    while (!done && !failed) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            topo_loc_t at = mark_loc(parser.problem_mark);
            if (parser.error == YAML_MEMORY_ERROR)
                c->st = DUET_ERR_NOMEM;
            else if (parser.context)
                lissue(c, at, "", "YAML syntax error: %s %s", parser.problem ? parser.problem : "",
                       parser.context);
            else
                lissue(c, at, "", "YAML syntax error: %s",
                       parser.problem ? parser.problem : "unreadable input");
            failed = true;
            break;
        }
        topo_loc_t at = mark_loc(ev.start_mark);
        ynode_t *n = NULL;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = true; break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                lissue(c, at, "", "a deployment file holds one YAML document, this is a second");
                failed = true;
            }
            break;
        case YAML_ALIAS_EVENT:
            lissue(c, at, "", "YAML aliases (*name) are not supported in deployment files");
            failed = true;
            break;
        case YAML_SCALAR_EVENT:
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            if ((ev.type == YAML_SCALAR_EVENT && ev.data.scalar.anchor) ||
                (ev.type == YAML_SEQUENCE_START_EVENT && ev.data.sequence_start.anchor) ||
                (ev.type == YAML_MAPPING_START_EVENT && ev.data.mapping_start.anchor)) {
                lissue(c, at, "", "YAML anchors (&name) are not supported in deployment files");
                failed = true;
                break;
            }
            if (++n_nodes > TREE_MAX_NODES) {
                lissue(c, at, "", "too many YAML nodes (more than %d)", TREE_MAX_NODES);
                failed = true;
                break;
            }
            n = duet_calloc(1, sizeof(*n));
            if (!n) {
                c->st = DUET_ERR_NOMEM;
                failed = true;
                break;
            }
            n->at = at;
            if (ev.type == YAML_SCALAR_EVENT) {
                n->type = Y_SCALAR;
                n->len = ev.data.scalar.length;
                n->value = duet_strndup((const char *)ev.data.scalar.value, n->len);
                n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
                if (!n->value) {
                    duet_free(n);
                    c->st = DUET_ERR_NOMEM;
                    failed = true;
                    break;
                }
            } else {
                n->type = ev.type == YAML_SEQUENCE_START_EVENT ? Y_SEQ : Y_MAP;
            }
            if (depth == 0) {
                if (root) { /* cannot happen with one document; be safe */
                    ynode_free(n);
                    failed = true;
                    break;
                }
                root = n;
            } else if (add_kid(stack[depth - 1], n)) {
                ynode_free(n);
                c->st = DUET_ERR_NOMEM;
                failed = true;
                break;
            }
            if (n->type != Y_SCALAR) {
                if (depth >= TREE_MAX_DEPTH) {
                    lissue(c, at, "", "nesting deeper than %d levels", TREE_MAX_DEPTH);
                    failed = true;
                    break;
                }
                stack[depth++] = n;
            }
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (depth > 0)
                depth--;
            break;
        default: break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    if (failed) {
        ynode_free(root);
        return NULL;
    }
    return root;
}

/* ---- schema helpers ---------------------------------------------------------- */

static const char *type_word(const ynode_t *n)
{
    if (n->type == Y_SEQ)
        return "a list";
    if (n->type == Y_MAP)
        return "a mapping";
    if (n->plain && (n->len == 0 || strcmp(n->value, "~") == 0 || strcmp(n->value, "null") == 0))
        return "null";
    return n->plain ? "a word" : "a quoted string";
}

static bool is_null(const ynode_t *n)
{
    return n->type == Y_SCALAR && n->plain &&
           (n->len == 0 || strcmp(n->value, "~") == 0 || strcmp(n->value, "null") == 0 ||
            strcmp(n->value, "Null") == 0 || strcmp(n->value, "NULL") == 0);
}

static bool parse_int(const ynode_t *n, long long lo, long long hi, int *out)
{
    if (n->type != Y_SCALAR || !n->plain || n->len == 0 || strlen(n->value) != n->len)
        return false;
    const char *s = n->value;
    if (!((s[0] >= '0' && s[0] <= '9') ||
          ((s[0] == '-' || s[0] == '+') && s[1] >= '0' && s[1] <= '9')))
        return false;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno || !end || *end || v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

static bool want_int(lctx_t *c, const ynode_t *n, const char *key, int *out)
{
    if (parse_int(n, INT_MIN, INT_MAX, out))
        return true;
    if (n->type == Y_SCALAR && n->plain && n->len && strspn(n->value, "+-0123456789") == n->len)
        lissue(c, n->at, key, "integer '%s' is out of range", n->value);
    else if (n->type == Y_SCALAR)
        lissue(c, n->at, key, "expected an integer, got %s '%.40s'", type_word(n), n->value);
    else
        lissue(c, n->at, key, "expected an integer, got %s", type_word(n));
    return false;
}

static bool want_bool(lctx_t *c, const ynode_t *n, const char *key, bool *out)
{
    if (n->type == Y_SCALAR && n->plain) {
        const char *s = n->value;
        if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) {
            *out = true;
            return true;
        }
        if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) {
            *out = false;
            return true;
        }
    }
    if (n->type == Y_SCALAR)
        lissue(c, n->at, key, "expected true or false, got %s '%.40s'", type_word(n), n->value);
    else
        lissue(c, n->at, key, "expected true or false, got %s", type_word(n));
    return false;
}

/* A non-null scalar without NUL bytes; the result points into the tree. */
static const char *want_str(lctx_t *c, const ynode_t *n, const char *key)
{
    if (n->type != Y_SCALAR || is_null(n)) {
        lissue(c, n->at, key, "expected a string, got %s", type_word(n));
        return NULL;
    }
    if (strlen(n->value) != n->len) {
        lissue(c, n->at, key, "string holds a NUL character");
        return NULL;
    }
    return n->value;
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40)
        return 99;
    size_t row[41];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            best = DUET_MIN(best, up + 1);
            best = DUET_MIN(best, row[j - 1] + 1);
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static void path_join(char *out, size_t cap, const char *base, const char *key)
{
    if (base && base[0])
        snprintf(out, cap, "%s.%s", base, key);
    else
        snprintf(out, cap, "%s", key);
}

/* Resolve key i of a mapping against the allowed words. Returns its index,
 * or -1 after reporting an unknown, duplicate or non-scalar key. seen[]
 * holds the first location of each key. */
static int map_key(lctx_t *c, const ynode_t *map, size_t i, const char *const *keys, size_t n_keys,
                   const char *path, topo_loc_t *seen)
{
    const ynode_t *k = map->kids[2 * i];
    char key[128];
    if (k->type != Y_SCALAR) {
        lissue(c, k->at, path && path[0] ? path : "", "mapping keys must be words, got %s",
               type_word(k));
        return -1;
    }
    for (size_t j = 0; j < n_keys; j++) {
        if (strcmp(k->value, keys[j]) != 0)
            continue;
        path_join(key, sizeof(key), path, keys[j]);
        if (seen[j].line) {
            lissue(c, k->at, key, "duplicate key '%s' (first at line %d)", keys[j], seen[j].line);
            return -1;
        }
        seen[j] = k->at;
        return (int)j;
    }
    char shown[48];
    snprintf(shown, sizeof(shown), "%.40s", k->value);
    path_join(key, sizeof(key), path, shown);
    size_t best = 99, bj = 0;
    for (size_t j = 0; j < n_keys; j++) {
        size_t d = edit_distance(k->value, keys[j]);
        if (d < best) {
            best = d;
            bj = j;
        }
    }
    if (best <= 2 && best < strlen(keys[bj]))
        lissue(c, k->at, key, "unknown key '%s' (did you mean '%s'?)", shown, keys[bj]);
    else {
        duet_buf_t list = {0};
        for (size_t j = 0; j < n_keys; j++)
            if (duet_buf_printf(&list, "%s%s", j ? ", " : "", keys[j]))
                c->st = DUET_ERR_NOMEM;
        lissue(c, k->at, key, "unknown key '%s' (expected one of: %.*s)", shown, (int)list.len,
               list.data ? (const char *)list.data : "");
        duet_buf_cleanup(&list);
    }
    return -1;
}

static bool want_map(lctx_t *c, const ynode_t *n, const char *key)
{
    if (n->type == Y_MAP)
        return true;
    lissue(c, n->at, key, "expected a mapping (key: value lines), got %s", type_word(n));
    return false;
}

static bool want_seq(lctx_t *c, const ynode_t *n, const char *key)
{
    if (n->type == Y_SEQ)
        return true;
    lissue(c, n->at, key, "expected a list, got %s", type_word(n));
    return false;
}

static void set_str(lctx_t *c, const char **field, const ynode_t *n, const char *key)
{
    const char *s = want_str(c, n, key);
    if (s && duet__topo_set_str(field, s))
        c->st = DUET_ERR_NOMEM;
}

/* ---- sections ------------------------------------------------------------------ */

static void load_pipeline(lctx_t *c, const ynode_t *map)
{
    static const char *const keys[] = {"micro_batches", "token_budget"};
    topo_loc_t seen[DUET_ARRAY_LEN(keys)] = {0};
    if (!want_map(c, map, "pipeline"))
        return;
    for (size_t i = 0; i < map->n_kids / 2; i++) {
        const ynode_t *v = map->kids[2 * i + 1];
        switch (map_key(c, map, i, keys, DUET_ARRAY_LEN(keys), "pipeline", seen)) {
        case 0:
            c->t->at_m = v->at;
            want_int(c, v, "pipeline.micro_batches", &c->t->set.micro_batches);
            break;
        case 1:
            c->t->at_budget = v->at;
            want_int(c, v, "pipeline.token_budget", &c->t->set.token_budget);
            break;
        default: break;
        }
    }
}

static void load_kv(lctx_t *c, const ynode_t *map)
{
    static const char *const keys[] = {"blocks", "block_size"};
    topo_loc_t seen[DUET_ARRAY_LEN(keys)] = {0};
    if (!want_map(c, map, "kv_cache"))
        return;
    for (size_t i = 0; i < map->n_kids / 2; i++) {
        const ynode_t *v = map->kids[2 * i + 1];
        switch (map_key(c, map, i, keys, DUET_ARRAY_LEN(keys), "kv_cache", seen)) {
        case 0:
            c->t->at_blocks = v->at;
            want_int(c, v, "kv_cache.blocks", &c->t->set.kv_blocks);
            break;
        case 1:
            c->t->at_block_size = v->at;
            want_int(c, v, "kv_cache.block_size", &c->t->set.kv_block_size);
            break;
        default: break;
        }
    }
}

static void load_transport(lctx_t *c, const ynode_t *map)
{
    static const char *const keys[] = {"control", "data", "curve"};
    topo_loc_t seen[DUET_ARRAY_LEN(keys)] = {0};
    if (!want_map(c, map, "transport"))
        return;
    for (size_t i = 0; i < map->n_kids / 2; i++) {
        const ynode_t *v = map->kids[2 * i + 1];
        const char *s;
        switch (map_key(c, map, i, keys, DUET_ARRAY_LEN(keys), "transport", seen)) {
        case 0:
            c->t->at_control = v->at;
            s = want_str(c, v, "transport.control");
            if (s && !duet_control_transport_parse(s, &c->t->set.control))
                lissue(c, v->at, "transport.control",
                       "unknown control transport '%.40s' (one of inproc, ipc, tcp)", s);
            break;
        case 1:
            c->t->at_data = v->at;
            s = want_str(c, v, "transport.data");
            if (s && !duet_data_provider_parse(s, &c->t->set.data))
                lissue(c, v->at, "transport.data",
                       "unknown data-plane provider '%.40s' (one of shm, tcp, verbs, sim)", s);
            break;
        case 2:
            c->t->at_curve = v->at;
            want_bool(c, v, "transport.curve", &c->t->set.curve);
            break;
        default: break;
        }
    }
}

static void load_node(lctx_t *c, const ynode_t *map, size_t idx)
{
    static const char *const keys[] = {"name",    "host",         "address",
                                       "process", "curve_public", "curve_secret_file"};
    topo_loc_t seen[DUET_ARRAY_LEN(keys)] = {0};
    char path[32], key[96];
    snprintf(path, sizeof(path), "nodes[%zu]", idx);
    if (!want_map(c, map, path))
        return;
    topo_node_t n = {0};
    n.at = map->at;
    for (size_t i = 0; i < map->n_kids / 2; i++) {
        const ynode_t *v = map->kids[2 * i + 1];
        int k = map_key(c, map, i, keys, DUET_ARRAY_LEN(keys), path, seen);
        if (k < 0)
            continue;
        path_join(key, sizeof(key), path, keys[k]);
        const char **fields[] = {&n.pub.name,    &n.pub.host,         &n.pub.address,
                                 &n.pub.process, &n.pub.curve_public, &n.pub.curve_secret_file};
        topo_loc_t *locs[] = {&n.at_name,    &n.at_host,         &n.at_address,
                              &n.at_process, &n.at_curve_public, &n.at_curve_secret};
        *locs[k] = v->at;
        set_str(c, fields[k], v, key);
    }
    if (!n.pub.name && !seen[0].line)
        lissue(c, map->at, path, "node without a name (name: ...)");
    if (n.pub.name && c->t->n_nodes >= TOPO_MAX_NODES)
        lissue(c, map->at, path, "more than %d nodes", TOPO_MAX_NODES);
    else if (n.pub.name && duet__topo_push_node(c->t, &n))
        c->st = DUET_ERR_NOMEM;
    duet__topo_node_cleanup(&n);
}

static void load_backend(lctx_t *c, const ynode_t *v, const char *key, topo_actor_t *a,
                         bool *device_given)
{
    const char *s = want_str(c, v, key);
    if (!s)
        return;
    if (strcmp(s, "cpu") == 0) {
        a->pub.compute.backend = DUET_COMPUTE_CPU;
    } else if (strcmp(s, "cuda") == 0) {
        a->pub.compute.backend = DUET_COMPUTE_CUDA;
    } else if (strncmp(s, "cuda:", 5) == 0) {
        ynode_t tmp = {
            .type = Y_SCALAR, .value = (char *)s + 5, .len = strlen(s + 5), .plain = true};
        int dev;
        if (!parse_int(&tmp, 0, INT_MAX, &dev)) {
            lissue(c, v->at, key, "backend '%.40s': expected cuda:N with a device index N", s);
            return;
        }
        a->pub.compute.backend = DUET_COMPUTE_CUDA;
        a->pub.compute.device = dev;
        *device_given = true;
    } else {
        lissue(c, v->at, key, "unknown backend '%.40s' (one of cpu, cuda, cuda:N)", s);
    }
}

static void load_experts(lctx_t *c, const ynode_t *seq, const char *path, topo_actor_t *a)
{
    char key[96];
    path_join(key, sizeof(key), path, "experts");
    a->at_experts = seq->at;
    if (!want_seq(c, seq, key))
        return;
    size_t n = seq->n_kids;
    if (n == 0)
        return;
    int *ids = duet_calloc(n, sizeof(*ids));
    topo_loc_t *locs = duet_calloc(n, sizeof(*locs));
    if (!ids || !locs) {
        duet_free(ids);
        duet_free(locs);
        c->st = DUET_ERR_NOMEM;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "%s.experts[%zu]", path, i);
        locs[i] = seq->kids[i]->at;
        want_int(c, seq->kids[i], key, &ids[i]);
    }
    duet_free((void *)a->pub.experts);
    duet_free(a->at_expert);
    a->pub.experts = ids;
    a->pub.n_experts = n;
    a->at_expert = locs;
}

enum {
    AK_KIND,
    AK_NAME,
    AK_NODE,
    AK_COUNT,
    AK_BACKEND,
    AK_DEVICE,
    AK_THREADS,
    AK_EXPERTS,
    AK_LISTEN
};

/* Which keys each kind takes, as a bit set over AK_*. */
static unsigned kind_keys(duet_actor_kind_t k)
{
    unsigned base = 1u << AK_KIND | 1u << AK_NAME | 1u << AK_NODE;
    unsigned compute = 1u << AK_BACKEND | 1u << AK_DEVICE | 1u << AK_THREADS;
    switch (k) {
    case DUET_ACTOR_ATTENTION: return base | compute | 1u << AK_COUNT;
    case DUET_ACTOR_EXPERT: return base | compute | 1u << AK_EXPERTS;
    case DUET_ACTOR_GATEWAY: return base | 1u << AK_LISTEN;
    case DUET_ACTOR_ROUTER:
    case DUET_ACTOR_SCHEDULER: return base;
    }
    return base;
}

static void load_actor(lctx_t *c, const ynode_t *map, size_t idx)
{
    static const char *const keys[] = {"kind",   "name",    "node",    "count", "backend",
                                       "device", "threads", "experts", "listen"};
    topo_loc_t seen[DUET_ARRAY_LEN(keys)] = {0};
    char path[32], key[96];
    snprintf(path, sizeof(path), "actors[%zu]", idx);
    if (!want_map(c, map, path))
        return;
    size_t before = c->n_issues;
    /* the kind decides which other keys apply: find it first */
    duet_actor_kind_t kind = DUET_ACTOR_ATTENTION;
    bool have_kind = false;
    for (size_t i = 0; i < map->n_kids / 2; i++) {
        const ynode_t *k = map->kids[2 * i], *v = map->kids[2 * i + 1];
        if (k->type != Y_SCALAR || strcmp(k->value, "kind") != 0 || have_kind)
            continue;
        path_join(key, sizeof(key), path, "kind");
        const char *s = want_str(c, v, key);
        if (s && !duet_actor_kind_parse(s, &kind)) {
            lissue(c, v->at, key,
                   "unknown actor kind '%.40s' (one of attention, expert, router, scheduler, "
                   "gateway)",
                   s);
            return;
        }
        if (!s)
            return;
        have_kind = true;
    }
    if (!have_kind) {
        lissue(c, map->at, path,
               "actor without a kind (kind: attention|expert|router|scheduler|gateway)");
        return;
    }
    topo_actor_t a = {0};
    a.at = map->at;
    a.pub.kind = kind;
    a.pub.compute.backend = DUET_COMPUTE_CPU;
    a.pub.compute.threads = 1;
    int count = 1;
    bool device_given = false, have_device_key = false; /* cuda:N / device: N */
    int device_key = 0;
    topo_loc_t at_device = {0};
    if (kind == DUET_ACTOR_GATEWAY && duet__topo_set_str(&a.pub.listen, "127.0.0.1:8000"))
        c->st = DUET_ERR_NOMEM;
    unsigned allowed = kind_keys(kind);
    for (size_t i = 0; i < map->n_kids / 2; i++) {
        const ynode_t *v = map->kids[2 * i + 1];
        int k = map_key(c, map, i, keys, DUET_ARRAY_LEN(keys), path, seen);
        if (k < 0)
            continue;
        path_join(key, sizeof(key), path, keys[k]);
        if (!(allowed & (1u << k))) {
            lissue(c, map->kids[2 * i]->at, key, "key '%s' does not apply to kind %s", keys[k],
                   duet_actor_kind_name(kind));
            continue;
        }
        switch (k) {
        case AK_KIND: break;
        case AK_NAME:
            a.at_name = v->at;
            set_str(c, &a.pub.name, v, key);
            a.named = a.pub.name != NULL;
            break;
        case AK_NODE:
            a.at_node = v->at;
            set_str(c, &a.pub.node, v, key);
            break;
        case AK_COUNT:
            a.at_count = v->at;
            if (want_int(c, v, key, &count) && (count < 1 || count > ACTOR_COUNT_MAX)) {
                lissue(c, v->at, key, "count must be between 1 and %d (got %d)", ACTOR_COUNT_MAX,
                       count);
                count = 1;
            }
            break;
        case AK_BACKEND:
            a.at_backend = v->at;
            load_backend(c, v, key, &a, &device_given);
            break;
        case AK_DEVICE:
            at_device = v->at;
            if (want_int(c, v, key, &device_key))
                have_device_key = true;
            break;
        case AK_THREADS:
            a.at_threads = v->at;
            want_int(c, v, key, &a.pub.compute.threads);
            break;
        case AK_EXPERTS: load_experts(c, v, path, &a); break;
        case AK_LISTEN:
            a.at_listen = v->at;
            set_str(c, &a.pub.listen, v, key);
            break;
        }
    }
    if (have_device_key) {
        path_join(key, sizeof(key), path, "device");
        if (a.pub.compute.backend != DUET_COMPUTE_CUDA)
            lissue(c, at_device, key, "device applies to backend cuda only");
        else if (device_given && device_key != a.pub.compute.device)
            lissue(c, at_device, key, "device %d contradicts backend cuda:%d", device_key,
                   a.pub.compute.device);
        else
            a.pub.compute.device = device_key;
    }
    if (!a.pub.node && !seen[AK_NODE].line) {
        path_join(key, sizeof(key), path, "node");
        lissue(c, map->at, key, "missing: the node this %s runs on (node: NAME)",
               duet_actor_kind_name(kind));
    }
    if (a.named && count > 1) {
        path_join(key, sizeof(key), path, "name");
        lissue(c, a.at_name, key,
               "a group of %d attention shards takes no name (they are named attn/<shard>)", count);
    }
    if (c->n_issues == before && c->t->n_actors + (size_t)count > TOPO_MAX_ACTORS)
        lissue(c, map->at, path, "more than %d actors in all", TOPO_MAX_ACTORS);
    else if (c->n_issues == before && !c->st && duet__topo_push_actors(c->t, &a, count))
        c->st = DUET_ERR_NOMEM;
    duet__topo_actor_cleanup(&a);
}

/* Model path: relative to the file's folder, made absolute when it exists. */
static void load_model(lctx_t *c, const ynode_t *v, const char *base_dir)
{
    c->t->at_model = v->at;
    const char *s = want_str(c, v, "model");
    if (!s)
        return;
    duet_buf_t b = {0};
    duet_status_t st;
    if (s[0] != '/' && base_dir && base_dir[0])
        st = duet_buf_printf(&b, "%s/%s", base_dir, s);
    else
        st = duet_buf_printf(&b, "%s", s);
    if (st) {
        c->st = DUET_ERR_NOMEM;
        return;
    }
    char *real = realpath((const char *)b.data, NULL);
    if (duet__topo_set_str(&c->t->set.model_dir, real ? real : (const char *)b.data))
        c->st = DUET_ERR_NOMEM;
    free(real);
    duet_buf_cleanup(&b);
}

static void load_root(lctx_t *c, const ynode_t *root, const char *base_dir)
{
    static const char *const keys[] = {"version",  "name",      "model", "pipeline",
                                       "kv_cache", "transport", "nodes", "actors"};
    topo_loc_t seen[DUET_ARRAY_LEN(keys)] = {0};
    c->t->at_root = root->at;
    if (root->type != Y_MAP) {
        lissue(c, root->at, "",
               "a deployment file is a mapping of keys (model:, nodes:, ...), got %s",
               type_word(root));
        return;
    }
    for (size_t i = 0; i < root->n_kids / 2 && !c->st; i++) {
        const ynode_t *v = root->kids[2 * i + 1];
        int version = 0;
        switch (map_key(c, root, i, keys, DUET_ARRAY_LEN(keys), "", seen)) {
        case 0:
            if (want_int(c, v, "version", &version) && version != 1)
                lissue(c, v->at, "version", "unsupported format version %d (this duet reads 1)",
                       version);
            break;
        case 1: set_str(c, &c->t->set.name, v, "name"); break;
        case 2: load_model(c, v, base_dir); break;
        case 3: load_pipeline(c, v); break;
        case 4: load_kv(c, v); break;
        case 5: load_transport(c, v); break;
        case 6:
            c->t->at_nodes = root->kids[2 * i]->at;
            if (want_seq(c, v, "nodes"))
                for (size_t j = 0; j < v->n_kids && !c->st; j++)
                    load_node(c, v->kids[j], j);
            break;
        case 7:
            c->t->at_actors = root->kids[2 * i]->at;
            if (want_seq(c, v, "actors"))
                for (size_t j = 0; j < v->n_kids && !c->st; j++)
                    load_actor(c, v->kids[j], j);
            break;
        default: break;
        }
    }
    if (!seen[2].line)
        lissue(c, root->at, "model", "missing: the model directory (model: path/to/model)");
    if (!seen[6].line)
        lissue(c, root->at, "nodes", "missing: the list of nodes (nodes:)");
    if (!seen[7].line)
        lissue(c, root->at, "actors", "missing: the list of actors (actors:)");
}

/* ---- entry points ---------------------------------------------------------------- */

duet_status_t duet_topology_parse(const char *text, size_t len, const char *name,
                                  const char *base_dir, const duet_topo_validate_opts_t *opts,
                                  duet_topology_t **topo_out, duet_topo_report_t *report)
{
    if (!text || !topo_out)
        return duet_errorf(DUET_ERR_INVALID, "duet_topology_parse: NULL text or output");
    duet_topo_report_t local = {0};
    duet_topo_report_t *r = report ? report : &local;
    duet_topology_t *t = NULL;
    duet_status_t st = duet_topology_create(&t);
    if (st)
        goto out;
    if (name && !(t->file = duet_strdup(name))) {
        st = duet_errorf(DUET_ERR_NOMEM, "out of memory loading a deployment");
        goto out_destroy;
    }
    lctx_t c = {.t = t, .r = r, .file = name};
    if (len > FILE_MAX_BYTES) {
        lissue(&c, (topo_loc_t){0}, "", "deployment file of %zu bytes is larger than %u", len,
               FILE_MAX_BYTES);
    } else {
        ynode_t *root = parse_tree(&c, text, len);
        if (root)
            load_root(&c, root, base_dir);
        else if (!c.n_issues && !c.st)
            lissue(&c, (topo_loc_t){1, 1}, "", "empty deployment file");
        ynode_free(root);
    }
    if (c.st) {
        st = duet_errorf(DUET_ERR_NOMEM, "out of memory loading deployment %s", name ? name : "");
        goto out_destroy;
    }
    if (c.n_issues) {
        /* the shape is wrong: meaning checks would only repeat it */
        st = duet__topo_report_fail(r);
        goto out_destroy;
    }
    st = duet_topology_validate(t, opts, r);
    if (st)
        goto out_destroy;
    *topo_out = t;
    t = NULL;
out_destroy:
    duet_topology_destroy(&t);
out:
    duet_topo_report_cleanup(&local);
    return st;
}

duet_status_t duet_topology_load(const char *path, const duet_topo_validate_opts_t *opts,
                                 duet_topology_t **topo_out, duet_topo_report_t *report)
{
    if (!path || !topo_out)
        return duet_errorf(DUET_ERR_INVALID, "duet_topology_load: NULL path or output");
    char *text = NULL;
    size_t len = 0;
    duet_status_t st = duet_file_read_all(path, FILE_MAX_BYTES, &text, &len);
    if (st)
        return duet_error_wrap(st, "reading deployment file %s", path);
    char *dir = duet_strdup(path[0] ? path : ".");
    if (!dir) {
        duet_free(text);
        return duet_errorf(DUET_ERR_NOMEM, "out of memory loading %s", path);
    }
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        memcpy(dir, ".", 2); /* dir holds at least path's one byte and its NUL */
    st = duet_topology_parse(text, len, path, dir, opts, topo_out, report);
    duet_free(dir);
    duet_free(text);
    return st;
}
