/* simnet — discrete-event simulation on virtual time. One thread; events
 * are ordered by (time, a tie-break drawn from the seeded generator, id), so
 * the interleaving of simultaneous events, the link latencies, and with them
 * the whole run follow from the seed. Every frame delivery is traced. */
#include <stdio.h>
#include <string.h>

#include "mailbox/mailbox.h"

typedef struct sim_event {
    uint64_t at, tie, id;
    duet_sim_fn fn;
    void *arg;
    size_t heap_idx;
    bool cancellable; /* in the id map (public events); frames are not */
    struct sim_event *next_free;
} sim_event_t;

typedef struct sim_node {
    char name[DUET_NAME_MAX];
    duet_sim_deliver_fn deliver;
    void *ctx;
} sim_node_t;

typedef struct sim_frame {
    duet_simnet_t *net;
    char from[DUET_NAME_MAX];
    char to[DUET_NAME_MAX];
    size_t len;
    uint8_t data[];
} sim_frame_t;

/* id -> event, open addressing with backward-shift deletion */
typedef struct idmap {
    sim_event_t **slots;
    size_t cap, count;
} idmap_t;

typedef struct sim_link {
    char from[DUET_NAME_MAX], to[DUET_NAME_MAX];
    uint64_t last; /* latest base delivery time: links are FIFO */
} sim_link_t;

struct duet_simnet {
    duet_simnet_config_t cfg;
    sim_link_t *links;
    size_t nlinks;
    uint64_t now, rng, next_id, delivered, trace_hash;
    sim_event_t **heap;
    size_t nheap, capheap;
    idmap_t ids;
    sim_node_t *nodes;
    size_t nnodes;
    bool stop, keep_text;
    duet_buf_t text;
    sim_event_t *free_events;
};

static void frame_fire(void *arg);

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t id_slot(const idmap_t *m, uint64_t id)
{
    return (size_t)((id * 0x9e3779b97f4a7c15ull) >> 7) & (m->cap - 1);
}

static bool idmap_put(idmap_t *m, sim_event_t *e)
{
    if ((m->count + 1) * 2 > m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 64;
        sim_event_t **ns = duet_calloc(ncap, sizeof(*ns));
        if (!ns)
            return false;
        idmap_t nm = {ns, ncap, 0};
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i]) {
                size_t j = id_slot(&nm, m->slots[i]->id);
                while (ns[j])
                    j = (j + 1) & (ncap - 1);
                ns[j] = m->slots[i];
            }
        duet_free(m->slots);
        m->slots = ns;
        m->cap = ncap;
    }
    size_t j = id_slot(m, e->id);
    while (m->slots[j])
        j = (j + 1) & (m->cap - 1);
    m->slots[j] = e;
    m->count++;
    return true;
}

static sim_event_t *idmap_find(idmap_t *m, uint64_t id, size_t *slot)
{
    if (!m->cap)
        return NULL;
    size_t j = id_slot(m, id);
    while (m->slots[j]) {
        if (m->slots[j]->id == id) {
            *slot = j;
            return m->slots[j];
        }
        j = (j + 1) & (m->cap - 1);
    }
    return NULL;
}

static void idmap_del(idmap_t *m, size_t j)
{
    m->slots[j] = NULL;
    m->count--;
    size_t k = (j + 1) & (m->cap - 1);
    while (m->slots[k]) {
        sim_event_t *e = m->slots[k];
        m->slots[k] = NULL;
        size_t h = id_slot(m, e->id);
        while (m->slots[h])
            h = (h + 1) & (m->cap - 1);
        m->slots[h] = e;
        k = (k + 1) & (m->cap - 1);
    }
}

static bool ev_less(const sim_event_t *a, const sim_event_t *b)
{
    if (a->at != b->at)
        return a->at < b->at;
    if (a->tie != b->tie)
        return a->tie < b->tie;
    return a->id < b->id;
}

static void heap_swap(duet_simnet_t *n, size_t i, size_t j)
{
    sim_event_t *t = n->heap[i];
    n->heap[i] = n->heap[j];
    n->heap[j] = t;
    n->heap[i]->heap_idx = i;
    n->heap[j]->heap_idx = j;
}

static void heap_up(duet_simnet_t *n, size_t i)
{
    while (i && ev_less(n->heap[i], n->heap[(i - 1) / 2])) {
        heap_swap(n, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(duet_simnet_t *n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n->nheap && ev_less(n->heap[l], n->heap[m]))
            m = l;
        if (r < n->nheap && ev_less(n->heap[r], n->heap[m]))
            m = r;
        if (m == i)
            return;
        heap_swap(n, i, m);
        i = m;
    }
}

static void heap_remove(duet_simnet_t *n, size_t i)
{
    n->nheap--;
    if (i != n->nheap) {
        n->heap[i] = n->heap[n->nheap];
        n->heap[i]->heap_idx = i;
        heap_down(n, i);
        heap_up(n, i);
    }
}

duet_status_t duet_simnet_create(const duet_simnet_config_t *cfg, duet_simnet_t **net_out)
{
    duet_simnet_t *n = duet_calloc(1, sizeof(*n));
    if (!n)
        return duet_errorf(DUET_ERR_NOMEM, "simnet");
    n->cfg = *cfg;
    if (n->cfg.latency_max_ns < n->cfg.latency_min_ns)
        n->cfg.latency_max_ns = n->cfg.latency_min_ns;
    n->rng = cfg->seed ^ 0x6475657473696dull;
    n->next_id = 1;
    n->trace_hash = 1469598103934665603ull;
    *net_out = n;
    return DUET_OK;
}

void duet_simnet_destroy(duet_simnet_t **net_p)
{
    if (!net_p || !*net_p)
        return;
    duet_simnet_t *n = *net_p;
    for (size_t i = 0; i < n->nheap; i++) {
        /* frames own their arg; other events' args belong to their owners */
        if (n->heap[i]->fn == frame_fire)
            duet_free(n->heap[i]->arg);
        duet_free(n->heap[i]);
    }
    duet_free(n->heap);
    while (n->free_events) {
        sim_event_t *e = n->free_events;
        n->free_events = e->next_free;
        duet_free(e);
    }
    duet_free(n->ids.slots);
    duet_free(n->nodes);
    duet_free(n->links);
    duet_buf_cleanup(&n->text);
    duet_free(n);
    *net_p = NULL;
}

uint64_t duet_simnet_now(const duet_simnet_t *net)
{
    return net->now;
}

uint64_t duet_simnet_rand(duet_simnet_t *net)
{
    return splitmix(&net->rng);
}

static void ev_release(duet_simnet_t *net, sim_event_t *e)
{
    e->next_free = net->free_events;
    net->free_events = e;
}

static uint64_t sim_at(duet_simnet_t *net, uint64_t at, duet_sim_fn fn, void *arg, bool cancellable)
{
    if (net->nheap == net->capheap) {
        void *p = net->heap;
        if (duet_vec_reserve(&p, &net->capheap, net->nheap + 1, sizeof(*net->heap)))
            return 0;
        net->heap = p;
    }
    sim_event_t *e = net->free_events;
    if (e)
        net->free_events = e->next_free;
    else if (!(e = duet_malloc(sizeof(*e))))
        return 0;
    e->at = at < net->now ? net->now : at;
    e->tie = splitmix(&net->rng);
    e->id = net->next_id++;
    e->fn = fn;
    e->arg = arg;
    e->cancellable = cancellable;
    if (cancellable && !idmap_put(&net->ids, e)) {
        ev_release(net, e);
        return 0;
    }
    e->heap_idx = net->nheap;
    net->heap[net->nheap++] = e;
    heap_up(net, e->heap_idx);
    return e->id;
}

uint64_t duet_simnet_at(duet_simnet_t *net, uint64_t at, duet_sim_fn fn, void *arg)
{
    return sim_at(net, at, fn, arg, true);
}

bool duet_simnet_cancel(duet_simnet_t *net, uint64_t id)
{
    size_t slot;
    sim_event_t *e = idmap_find(&net->ids, id, &slot);
    if (!e)
        return false;
    idmap_del(&net->ids, slot);
    heap_remove(net, e->heap_idx);
    ev_release(net, e);
    return true;
}

duet_status_t duet_simnet_attach(duet_simnet_t *net, const char *name, duet_sim_deliver_fn deliver,
                                 void *ctx)
{
    for (size_t i = 0; i < net->nnodes; i++)
        if (strcmp(net->nodes[i].name, name) == 0) {
            net->nodes[i].deliver = deliver;
            net->nodes[i].ctx = ctx;
            return DUET_OK;
        }
    sim_node_t *nn = duet_realloc_array(net->nodes, net->nnodes + 1, sizeof(*nn));
    if (!nn)
        return duet_errorf(DUET_ERR_NOMEM, "simnet attach");
    net->nodes = nn;
    sim_node_t *s = &nn[net->nnodes++];
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->deliver = deliver;
    s->ctx = ctx;
    return DUET_OK;
}

void duet_simnet_detach(duet_simnet_t *net, const char *name)
{
    for (size_t i = 0; i < net->nnodes; i++)
        if (strcmp(net->nodes[i].name, name) == 0) {
            net->nodes[i].deliver = NULL; /* frames in flight to it are lost */
            return;
        }
}

static sim_node_t *find_node(duet_simnet_t *net, const char *name)
{
    for (size_t i = 0; i < net->nnodes; i++)
        if (strcmp(net->nodes[i].name, name) == 0)
            return &net->nodes[i];
    return NULL;
}

static void frame_fire(void *arg)
{
    sim_frame_t *f = arg;
    duet_simnet_t *net = f->net;
    sim_node_t *n = find_node(net, f->to);
    net->delivered++;
    if (net->keep_text) {
        duet_simnet_trace(net, "%s>%s %zu %016llx", f->from, f->to, f->len,
                          (unsigned long long)duet_hash_bytes(f->data, f->len));
    } else { /* the same information, hashed without formatting */
        uint64_t h = net->trace_hash;
        uint64_t parts[4] = {net->now, duet_hash_bytes(f->from, strlen(f->from)),
                             duet_hash_bytes(f->to, strlen(f->to)),
                             duet_hash_bytes(f->data, f->len)};
        for (int i = 0; i < 4; i++)
            h = (h ^ parts[i]) * 1099511628211ull;
        net->trace_hash = h;
    }
    if (n && n->deliver)
        n->deliver(n->ctx, f->from, f->data, f->len);
    duet_free(f);
}

duet_status_t duet_simnet_send(duet_simnet_t *net, const char *from, const char *to,
                               const void *data, size_t len, uint64_t extra_delay_ns)
{
    if (!find_node(net, to))
        return duet_errorf(DUET_ERR_NOT_FOUND, "simnet: no node '%s'", to);
    sim_frame_t *f = duet_malloc(sizeof(*f) + len);
    if (!f)
        return duet_errorf(DUET_ERR_NOMEM, "simnet frame");
    f->net = net;
    size_t nf = strnlen(from, DUET_NAME_MAX - 1), nt = strnlen(to, DUET_NAME_MAX - 1);
    memcpy(f->from, from, nf);
    f->from[nf] = 0;
    memcpy(f->to, to, nt);
    f->to[nt] = 0;
    f->len = len;
    memcpy(f->data, data, len);
    uint64_t span = net->cfg.latency_max_ns - net->cfg.latency_min_ns;
    uint64_t lat = net->cfg.latency_min_ns + (span ? splitmix(&net->rng) % (span + 1) : 0);
    /* A link is FIFO (like a TCP connection): a frame never overtakes an
     * earlier one on the same link, unless a fault delays it (extra delay
     * is added after the FIFO point, so later frames may pass it). */
    sim_link_t *l = NULL;
    for (size_t i = 0; i < net->nlinks && !l; i++)
        if (strcmp(net->links[i].from, from) == 0 && strcmp(net->links[i].to, to) == 0)
            l = &net->links[i];
    if (!l) {
        sim_link_t *nl = duet_realloc_array(net->links, net->nlinks + 1, sizeof(*nl));
        if (!nl) {
            duet_free(f);
            return duet_errorf(DUET_ERR_NOMEM, "simnet link");
        }
        net->links = nl;
        l = &nl[net->nlinks++];
        memset(l, 0, sizeof(*l));
        snprintf(l->from, sizeof(l->from), "%s", from);
        snprintf(l->to, sizeof(l->to), "%s", to);
    }
    uint64_t base = net->now + lat;
    if (base <= l->last)
        base = l->last + 1;
    l->last = base;
    if (!sim_at(net, base + extra_delay_ns, frame_fire, f, false)) {
        duet_free(f);
        return duet_errorf(DUET_ERR_NOMEM, "simnet event");
    }
    return DUET_OK;
}

bool duet_simnet_step(duet_simnet_t *net)
{
    if (!net->nheap)
        return false;
    sim_event_t *e = net->heap[0];
    heap_remove(net, 0);
    size_t slot;
    if (e->cancellable && idmap_find(&net->ids, e->id, &slot))
        idmap_del(&net->ids, slot);
    net->now = e->at;
    duet_sim_fn fn = e->fn;
    void *arg = e->arg;
    ev_release(net, e);
    fn(arg);
    return true;
}

uint64_t duet_simnet_run(duet_simnet_t *net, uint64_t until, uint64_t max_events)
{
    uint64_t n = 0;
    net->stop = false;
    while (!net->stop && net->nheap && net->heap[0]->at <= until &&
           (!max_events || n < max_events)) {
        duet_simnet_step(net);
        n++;
    }
    if (!net->stop && until != UINT64_MAX && net->now < until &&
        (!net->nheap || net->heap[0]->at > until))
        net->now = until;
    return n;
}

void duet_simnet_stop(duet_simnet_t *net)
{
    net->stop = true;
}

void duet_simnet_trace(duet_simnet_t *net, const char *fmt, ...)
{
    char line[512];
    int k = snprintf(line, sizeof(line), "%llu ", (unsigned long long)net->now);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + k, sizeof(line) - (size_t)k, fmt, ap);
    va_end(ap);
    size_t n = (size_t)k + (m > 0 ? (size_t)m : 0);
    if (n >= sizeof(line))
        n = sizeof(line) - 1;
    for (size_t i = 0; i < n; i++) {
        net->trace_hash ^= (uint8_t)line[i];
        net->trace_hash *= 1099511628211ull;
    }
    net->trace_hash ^= '\n';
    net->trace_hash *= 1099511628211ull;
    if (net->keep_text) {
        duet_buf_append(&net->text, line, n);
        duet_buf_append(&net->text, "\n", 2);
        net->text.len--; /* keep it NUL-terminated */
    }
}

uint64_t duet_simnet_trace_hash(const duet_simnet_t *net)
{
    return net->trace_hash;
}

uint64_t duet_simnet_delivered(const duet_simnet_t *net)
{
    return net->delivered;
}

const char *duet_simnet_trace_text(const duet_simnet_t *net)
{
    return net->text.data ? (const char *)net->text.data : "";
}

void duet_simnet_keep_trace_text(duet_simnet_t *net, bool keep)
{
    net->keep_text = keep;
}
