/* topology YAML writer — the inverse of the loader: every setting, node and
 * actor entry (an attention group as one entry with `count`), written so
 * that loading the text gives an equal deployment. Strings are written
 * plain when YAML would read them back as the same string, else quoted. */
#include "topology/topo_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Plain is safe for words of [A-Za-z0-9_./:@-] that do not start like a
 * number, a YAML indicator or a reserved word. */
static bool plain_ok(const char *s)
{
    static const char *const reserved[] = {
        "true", "false", "True", "False", "TRUE", "FALSE", "null", "Null", "NULL",
        "yes",  "no",    "Yes",  "No",    "YES",  "NO",    "on",   "off",  "On",
        "Off",  "ON",    "OFF",  "y",     "n",    "Y",     "N",    "~"};
    if (!s[0])
        return false;
    for (size_t i = 0; i < DUET_ARRAY_LEN(reserved); i++)
        if (strcmp(s, reserved[i]) == 0)
            return false;
    char c0 = s[0];
    if ((c0 >= '0' && c0 <= '9') || c0 == '-' || c0 == '+' || c0 == '.' || c0 == ':' || c0 == '@')
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '/' || c == '-' || c == '@' || c == ':';
        if (!ok)
            return false;
    }
    /* "a: b" would be a mapping; "a:" a key: a colon must be followed by a non-space */
    size_t n = strlen(s);
    return s[n - 1] != ':';
}

static duet_status_t put_str(duet_buf_t *b, const char *s)
{
    if (plain_ok(s))
        return duet_buf_printf(b, "%s", s);
    duet_status_t st = duet_buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; !st && *p; p++) {
        if (*p == '"' || *p == '\\')
            st = duet_buf_printf(b, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            st = duet_buf_printf(b, "\\x%02x", *p);
        else
            st = duet_buf_append(b, p, 1);
    }
    if (!st)
        st = duet_buf_append(b, "\"", 1);
    return st;
}

/* "<indent><key>: <string>\n" when s is set. */
static duet_status_t put_kv_str(duet_buf_t *b, const char *indent, const char *key, const char *s)
{
    if (!s)
        return DUET_OK;
    duet_status_t st = duet_buf_printf(b, "%s%s: ", indent, key);
    if (!st)
        st = put_str(b, s);
    if (!st)
        st = duet_buf_printf(b, "\n");
    return st;
}

static duet_status_t put_compute(duet_buf_t *b, const duet_compute_t *c)
{
    duet_status_t st;
    if (c->backend == DUET_COMPUTE_CUDA)
        st = duet_buf_printf(b, "    backend: cuda:%d\n", c->device);
    else
        st = duet_buf_printf(b, "    backend: %s\n", duet_compute_backend_name(c->backend));
    if (!st)
        st = duet_buf_printf(b, "    threads: %d\n", c->threads);
    return st;
}

static duet_status_t put_actor(duet_buf_t *b, const topo_actor_t *a, int count)
{
    const duet_topo_actor_t *p = &a->pub;
    duet_status_t st = duet_buf_printf(b, "  - kind: %s\n", duet_actor_kind_name(p->kind));
    if (!st && a->named)
        st = put_kv_str(b, "    ", "name", p->name);
    if (!st)
        st = put_kv_str(b, "    ", "node", p->node);
    if (!st && p->kind == DUET_ACTOR_ATTENTION && count > 1)
        st = duet_buf_printf(b, "    count: %d\n", count);
    if (!st && (p->kind == DUET_ACTOR_ATTENTION || p->kind == DUET_ACTOR_EXPERT))
        st = put_compute(b, &p->compute);
    if (!st && p->kind == DUET_ACTOR_EXPERT) {
        st = duet_buf_printf(b, "    experts: [");
        for (size_t i = 0; !st && i < p->n_experts; i++)
            st = duet_buf_printf(b, "%s%d", i ? ", " : "", p->experts[i]);
        if (!st)
            st = duet_buf_printf(b, "]\n");
    }
    if (!st && p->kind == DUET_ACTOR_GATEWAY)
        st = put_kv_str(b, "    ", "listen", p->listen);
    return st;
}

duet_status_t duet_topology_write(const duet_topology_t *topo, duet_buf_t *out)
{
    if (!topo || !out)
        return duet_errorf(DUET_ERR_INVALID, "duet_topology_write: NULL argument");
    const duet_topo_settings_t *s = &topo->set;
    duet_buf_t b = {0};
    duet_status_t st = duet_buf_printf(&b, "# duet deployment (topology/FORMAT.md)\nversion: 1\n");
    if (!st)
        st = put_kv_str(&b, "", "name", s->name);
    if (!st)
        st = put_kv_str(&b, "", "model", s->model_dir);
    if (!st)
        st = duet_buf_printf(&b,
                             "pipeline:\n  micro_batches: %d\n  token_budget: %d\n"
                             "kv_cache:\n  blocks: %d\n  block_size: %d\n"
                             "transport:\n  control: %s\n  data: %s\n  curve: %s\n",
                             s->micro_batches, s->token_budget, s->kv_blocks, s->kv_block_size,
                             duet_control_transport_name(s->control),
                             duet_data_provider_name(s->data), s->curve ? "true" : "false");
    if (!st)
        st = duet_buf_printf(&b, topo->n_nodes ? "nodes:\n" : "nodes: []\n");
    for (size_t i = 0; !st && i < topo->n_nodes; i++) {
        const duet_topo_node_t *n = &topo->nodes[i].pub;
        st = duet_buf_printf(&b, "  - name: ");
        if (!st)
            st = put_str(&b, n->name ? n->name : "");
        if (!st)
            st = duet_buf_printf(&b, "\n");
        if (!st)
            st = put_kv_str(&b, "    ", "host", n->host);
        if (!st)
            st = put_kv_str(&b, "    ", "address", n->address);
        if (!st)
            st = put_kv_str(&b, "    ", "process", n->process);
        if (!st)
            st = put_kv_str(&b, "    ", "curve_public", n->curve_public);
        if (!st)
            st = put_kv_str(&b, "    ", "curve_secret_file", n->curve_secret_file);
    }
    if (!st)
        st = duet_buf_printf(&b, topo->n_actors ? "actors:\n" : "actors: []\n");
    for (size_t i = 0; !st && i < topo->n_actors;) {
        size_t j = i + 1;
        while (j < topo->n_actors && topo->actors[j].entry == topo->actors[i].entry)
            j++;
        st = put_actor(&b, &topo->actors[i], (int)(j - i));
        i = j;
    }
    if (!st)
        st = duet_buf_append(out, b.data, b.len);
    duet_buf_cleanup(&b);
    if (st)
        return duet_errorf(DUET_ERR_NOMEM, "out of memory writing a deployment");
    return DUET_OK;
}

duet_status_t duet_topology_save(const duet_topology_t *topo, const char *path)
{
    if (!path)
        return duet_errorf(DUET_ERR_INVALID, "duet_topology_save: NULL path");
    duet_buf_t b = {0};
    duet_status_t st = duet_topology_write(topo, &b);
    if (st)
        return st;
    FILE *f = fopen(path, "w");
    if (!f) {
        st = duet_errorf(DUET_ERR_IO, "cannot write deployment file %s: %s", path, strerror(errno));
        goto out_free;
    }
    if (fwrite(b.data, 1, b.len, f) != b.len) {
        st = duet_errorf(DUET_ERR_IO, "writing deployment file %s: %s", path, strerror(errno));
        fclose(f);
        goto out_free;
    }
    if (fclose(f) != 0)
        st = duet_errorf(DUET_ERR_IO, "closing deployment file %s: %s", path, strerror(errno));
out_free:
    duet_buf_cleanup(&b);
    return st;
}
