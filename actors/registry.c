/* registry — the deployment's name registry: actor path (or glob) -> node,
 * node -> address and CURVE key. Filled from the deployment description,
 * updated by nodes as actors (re)start or move. Readers and writers may be
 * on any thread. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <stdatomic.h>

#include "actors/internal.h"

typedef struct reg_actor {
    char path[DUET_NAME_MAX];
    char node[DUET_NAME_MAX];
    uint64_t epoch;
    bool glob;
    char direct[256]; /* the inbound address of its loop, or "" */
} reg_actor_t;

typedef struct reg_node {
    char name[DUET_NAME_MAX];
    char addr[256];
    char key[41];
} reg_node_t;

struct duet_registry {
    pthread_rwlock_t lock;
    duet_strmap_t *index; /* exact path -> index in actors */
    reg_actor_t *actors;
    size_t nactors, capactors;
    reg_node_t *nodes;
    size_t nnodes, capnodes;
    atomic_uint_fast64_t gen; /* bumped on every write */
};

duet_status_t duet_registry_create(duet_registry_t **reg_out)
{
    duet_registry_t *r = duet_calloc(1, sizeof(*r));
    if (!r)
        return duet_errorf(DUET_ERR_NOMEM, "registry");
    pthread_rwlock_init(&r->lock, NULL);
    r->index = duet_strmap_create(64);
    if (!r->index) {
        pthread_rwlock_destroy(&r->lock);
        duet_free(r);
        return duet_errorf(DUET_ERR_NOMEM, "registry");
    }
    *reg_out = r;
    return DUET_OK;
}

void duet_registry_destroy(duet_registry_t **reg_p)
{
    if (!reg_p || !*reg_p)
        return;
    duet_registry_t *r = *reg_p;
    pthread_rwlock_destroy(&r->lock);
    duet_strmap_destroy(&r->index);
    duet_free(r->actors);
    duet_free(r->nodes);
    duet_free(r);
    *reg_p = NULL;
}

static bool name_ok(const char *s)
{
    return s && s[0] && strlen(s) < DUET_NAME_MAX;
}

duet_status_t duet_registry_add_node(duet_registry_t *r, const char *node, const char *addr,
                                     const char *key)
{
    if (!name_ok(node) || (addr && strlen(addr) >= 256) || (key && strlen(key) != 40))
        return duet_errorf(DUET_ERR_INVALID, "registry: node '%s': bad name, address or key",
                           node ? node : "(null)");
    duet_status_t st = DUET_OK;
    pthread_rwlock_wrlock(&r->lock);
    reg_node_t *n = NULL;
    for (size_t i = 0; i < r->nnodes; i++)
        if (strcmp(r->nodes[i].name, node) == 0)
            n = &r->nodes[i];
    if (!n) {
        void *p = r->nodes;
        if ((st = duet_vec_reserve(&p, &r->capnodes, r->nnodes + 1, sizeof(reg_node_t))))
            goto out;
        r->nodes = p;
        n = &r->nodes[r->nnodes++];
        memset(n, 0, sizeof(*n));
        snprintf(n->name, sizeof(n->name), "%s", node);
    }
    snprintf(n->addr, sizeof(n->addr), "%s", addr ? addr : "");
    snprintf(n->key, sizeof(n->key), "%s", key ? key : "");
    atomic_fetch_add(&r->gen, 1);
out:
    pthread_rwlock_unlock(&r->lock);
    return st;
}

static duet_status_t put_actor(duet_registry_t *r, const char *path, const char *node,
                               uint64_t epoch, bool set_epoch, const char *direct)
{
    if (direct && strlen(direct) >= 256)
        return duet_errorf(DUET_ERR_INVALID, "registry: actor '%s': address too long", path);
    if (!name_ok(path) || !name_ok(node))
        return duet_errorf(DUET_ERR_INVALID, "registry: actor '%s' on node '%s': bad name",
                           path ? path : "(null)", node ? node : "(null)");
    duet_status_t st = DUET_OK;
    pthread_rwlock_wrlock(&r->lock);
    reg_actor_t *a = NULL;
    int64_t idx;
    if (duet_strmap_get(r->index, path, strlen(path), &idx))
        a = &r->actors[idx];
    if (!a) {
        void *p = r->actors;
        if ((st = duet_vec_reserve(&p, &r->capactors, r->nactors + 1, sizeof(reg_actor_t))))
            goto out;
        r->actors = p;
        a = &r->actors[r->nactors++];
        memset(a, 0, sizeof(*a));
        snprintf(a->path, sizeof(a->path), "%s", path);
        a->glob = strchr(path, '*') != NULL;
        if ((st = duet_strmap_put(r->index, path, strlen(path), (int64_t)(r->nactors - 1)))) {
            r->nactors--;
            goto out;
        }
    }
    snprintf(a->node, sizeof(a->node), "%s", node);
    if (set_epoch) {
        a->epoch = epoch;
        snprintf(a->direct, sizeof(a->direct), "%s", direct ? direct : "");
    }
    atomic_fetch_add(&r->gen, 1);
out:
    pthread_rwlock_unlock(&r->lock);
    return st;
}

duet_status_t duet_registry_add_actor(duet_registry_t *r, const char *path, const char *node)
{
    return put_actor(r, path, node, 0, false, NULL);
}

duet_status_t duet_registry_update(duet_registry_t *r, const char *path, const char *node,
                                   uint64_t epoch)
{
    return put_actor(r, path, node, epoch, true, NULL);
}

duet_status_t duet__registry_update_direct(duet_registry_t *r, const char *path, const char *node,
                                           uint64_t epoch, const char *direct)
{
    return put_actor(r, path, node, epoch, true, direct);
}

uint64_t duet__registry_gen(duet_registry_t *r)
{
    return atomic_load(&r->gen);
}

bool duet_registry_find(duet_registry_t *r, const char *path, char node_out[DUET_NAME_MAX],
                        uint64_t *epoch_out)
{
    return duet__registry_find_direct(r, path, node_out, epoch_out, NULL);
}

bool duet__registry_find_direct(duet_registry_t *r, const char *path, char node_out[DUET_NAME_MAX],
                                uint64_t *epoch_out, char direct_out[256])
{
    const reg_actor_t *hit = NULL;
    int64_t idx;
    pthread_rwlock_rdlock(&r->lock);
    if (duet_strmap_get(r->index, path, strlen(path), &idx) && !r->actors[idx].glob)
        hit = &r->actors[idx];
    for (size_t i = 0; i < r->nactors && !hit; i++)
        if (r->actors[i].glob && duet_glob_match(r->actors[i].path, path))
            hit = &r->actors[i];
    if (hit) {
        memcpy(node_out, hit->node, DUET_NAME_MAX);
        if (epoch_out)
            *epoch_out = hit->epoch;
        if (direct_out)
            snprintf(direct_out, 256, "%s", hit->direct);
    }
    pthread_rwlock_unlock(&r->lock);
    return hit != NULL;
}

duet_status_t duet_registry_lookup(duet_registry_t *r, const char *path,
                                   char node_out[DUET_NAME_MAX], uint64_t *epoch_out)
{
    if (duet_registry_find(r, path, node_out, epoch_out))
        return DUET_OK;
    return duet_errorf(DUET_ERR_NOT_FOUND, "no actor named '%s' in the registry", path);
}

duet_status_t duet_registry_node_addr(duet_registry_t *r, const char *node, char addr_out[256],
                                      char key_out[41])
{
    duet_status_t st = DUET_ERR_NOT_FOUND;
    pthread_rwlock_rdlock(&r->lock);
    for (size_t i = 0; i < r->nnodes; i++)
        if (strcmp(r->nodes[i].name, node) == 0) {
            memcpy(addr_out, r->nodes[i].addr, 256);
            if (key_out)
                memcpy(key_out, r->nodes[i].key, 41);
            st = DUET_OK;
            break;
        }
    pthread_rwlock_unlock(&r->lock);
    return st ? duet_errorf(st, "no node named '%s' in the registry", node) : DUET_OK;
}

size_t duet_registry_nodes(duet_registry_t *r, char (*names)[DUET_NAME_MAX], size_t max)
{
    pthread_rwlock_rdlock(&r->lock);
    size_t n = r->nnodes;
    for (size_t i = 0; i < n && i < max; i++)
        memcpy(names[i], r->nodes[i].name, DUET_NAME_MAX);
    pthread_rwlock_unlock(&r->lock);
    return n;
}
