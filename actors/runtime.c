/* runtime — nodes, loops, actors: spawn/stop/send by name, timers,
 * request/reply, monitors and links, credit-based flow control, reply
 * de-duplication, the ZeroMQ I/O thread and the simulated-network glue.
 *
 * Threads and ownership:
 *  - node->lock guards the name table (name -> actor) and the remote-monitor
 *    list. A message is resolved to its actor and pushed on the actor's loop
 *    queue while node->lock is held, so an actor removed from the table
 *    never receives a new entry.
 *  - loop->lock guards the loop's queue only. Lock order: node, then loop.
 *  - Everything else in an actor (timers, pending calls, credits, monitors)
 *    belongs to its loop thread. Queue entries hold a reference on the actor.
 *  - The I/O thread owns the node's ROUTER socket, the peer table and the
 *    send backlog; heartbeats, registry news and frames from threads that
 *    are not loops of this node (duet_node_send, fault-delayed frames) go
 *    through it (io_q).
 *  - Loop threads send actor messages themselves, without a hand-off: each
 *    loop owns one DEALER per peer node (to its ROUTER) and per remote loop
 *    socket (below), with a backlog for frames not yet taken. A sender
 *    keeps one path per receiver incarnation, so per-pair FIFO holds.
 *  - A dedicated loop (DUET_RUN_THREAD) of a bound node also owns an
 *    inbound ROUTER of its own ("<node addr>.L<id>", or a free tcp port on
 *    the node's host), published with the actor in the registry and in
 *    sys.registry. Frames for its actor arrive there and run on the loop
 *    without passing the I/O thread; when the actor stops the address is
 *    withdrawn and senders fall back to the node (which answers noproc).
 * Under simulation there are no threads: loops, timers and the network are
 * simnet events, and the same code runs in the simnet's thread. */
#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#include "actors/internal.h"

#define MOD "actors"

/* ---- system message types ----------------------------------------------- */

typedef struct sys_monitor {
    uint64_t ref;
    bool link;
} sys_monitor_t;

typedef struct sys_credit {
    uint64_t total; /* every message from this sender up to this seq is consumed (cumulative:
                       loss-tolerant) */
} sys_credit_t;

typedef struct sys_heartbeat {
    uint64_t t;
} sys_heartbeat_t;

typedef struct sys_stop {
    char *reason;
} sys_stop_t;

typedef struct sys_registry {
    char *actor;
    char *node;
    uint64_t epoch;
    char *direct; /* inbound address of the actor's own loop, "" = through the node */
} sys_registry_t;

static const duet_field_t f_timer[] = {
    DUET_FIELD(duet_sys_timer_t, id, DUET_F_U64),
    DUET_FIELD(duet_sys_timer_t, tag, DUET_F_U64),
};
static const duet_field_t f_timeout[] = {
    DUET_FIELD(duet_sys_timeout_t, seq, DUET_F_U64),
    DUET_FIELD_MAX(duet_sys_timeout_t, to, DUET_F_STR, DUET_NAME_MAX - 1),
    DUET_FIELD(duet_sys_timeout_t, type, DUET_F_U32),
    DUET_FIELD(duet_sys_timeout_t, cookie, DUET_F_U64),
};
static const duet_field_t f_down[] = {
    DUET_FIELD(duet_sys_down_t, ref, DUET_F_U64),
    DUET_FIELD_MAX(duet_sys_down_t, actor, DUET_F_STR, DUET_NAME_MAX - 1),
    DUET_FIELD_MAX(duet_sys_down_t, reason, DUET_F_STR, 1024),
};
static const duet_field_t f_noproc[] = {
    DUET_FIELD_MAX(duet_sys_noproc_t, actor, DUET_F_STR, DUET_NAME_MAX - 1),
    DUET_FIELD_MAX(duet_sys_noproc_t, reason, DUET_F_STR, 1024),
};
static const duet_field_t f_writable[] = {
    DUET_FIELD_MAX(duet_sys_writable_t, to, DUET_F_STR, DUET_NAME_MAX - 1),
};
static const duet_field_t f_fd[] = {
    DUET_FIELD(duet_sys_fd_t, fd, DUET_F_I32),
    DUET_FIELD(duet_sys_fd_t, revents, DUET_F_U32),
    DUET_FIELD(duet_sys_fd_t, tag, DUET_F_U64),
};
static const duet_field_t f_monitor[] = {
    DUET_FIELD(sys_monitor_t, ref, DUET_F_U64),
    DUET_FIELD(sys_monitor_t, link, DUET_F_BOOL),
};
static const duet_field_t f_credit[] = {DUET_FIELD(sys_credit_t, total, DUET_F_U64)};
static const duet_field_t f_heartbeat[] = {DUET_FIELD(sys_heartbeat_t, t, DUET_F_U64)};
static const duet_field_t f_stop[] = {DUET_FIELD_MAX(sys_stop_t, reason, DUET_F_STR, 1024)};
static const duet_field_t f_registry[] = {
    DUET_FIELD_MAX(sys_registry_t, actor, DUET_F_STR, DUET_NAME_MAX - 1),
    DUET_FIELD_MAX(sys_registry_t, node, DUET_F_STR, DUET_NAME_MAX - 1),
    DUET_FIELD(sys_registry_t, epoch, DUET_F_U64),
    {"direct", DUET_F_STR, (uint32_t)offsetof(sys_registry_t, direct), 255, true, NULL},
};

#define SYS_TYPE(var, id, nm, T, f) const duet_msg_type_t var = {id, nm, DUET_SCHEMA(nm, T, f)}
SYS_TYPE(duet_msg_sys_timer, DUET_MSG_SYS_TIMER, "sys.timer", duet_sys_timer_t, f_timer);
SYS_TYPE(duet_msg_sys_timeout, DUET_MSG_SYS_TIMEOUT, "sys.timeout", duet_sys_timeout_t, f_timeout);
SYS_TYPE(duet_msg_sys_down, DUET_MSG_SYS_DOWN, "sys.down", duet_sys_down_t, f_down);
SYS_TYPE(duet_msg_sys_exit, DUET_MSG_SYS_EXIT, "sys.exit", duet_sys_down_t, f_down);
SYS_TYPE(duet_msg_sys_noproc, DUET_MSG_SYS_NOPROC, "sys.noproc", duet_sys_noproc_t, f_noproc);
SYS_TYPE(duet_msg_sys_writable, DUET_MSG_SYS_WRITABLE, "sys.writable", duet_sys_writable_t,
         f_writable);
SYS_TYPE(duet_msg_sys_fd, DUET_MSG_SYS_FD, "sys.fd", duet_sys_fd_t, f_fd);
static SYS_TYPE(sys_monitor_type, DUET_MSG_SYS_MONITOR, "sys.monitor", sys_monitor_t, f_monitor);
static SYS_TYPE(sys_demonitor_type, DUET_MSG_SYS_DEMONITOR, "sys.demonitor", sys_monitor_t,
                f_monitor);
static SYS_TYPE(sys_credit_type, DUET_MSG_SYS_CREDIT, "sys.credit", sys_credit_t, f_credit);
static SYS_TYPE(sys_heartbeat_type, DUET_MSG_SYS_HEARTBEAT, "sys.heartbeat", sys_heartbeat_t,
                f_heartbeat);
static SYS_TYPE(sys_stop_type, DUET_MSG_SYS_STOP, "sys.stop", sys_stop_t, f_stop);
static SYS_TYPE(sys_registry_type, DUET_MSG_SYS_REGISTRY, "sys.registry", sys_registry_t,
                f_registry);

static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void register_sys(void)
{
    const duet_msg_type_t *all[] = {
        &duet_msg_sys_timer,  &duet_msg_sys_timeout,  &duet_msg_sys_down,  &duet_msg_sys_exit,
        &duet_msg_sys_noproc, &duet_msg_sys_writable, &duet_msg_sys_fd,    &sys_monitor_type,
        &sys_demonitor_type,  &sys_credit_type,       &sys_heartbeat_type, &sys_stop_type,
        &sys_registry_type};
    for (size_t i = 0; i < DUET_ARRAY_LEN(all); i++)
        if (duet_msg_type_register(all[i]))
            DUET_LOG_E(MOD, "%s", duet_error());
}

void duet_actors_init(void)
{
    pthread_once(&g_once, register_sys);
}

/* ---- structures ----------------------------------------------------------- */

enum { QE_MSG, QE_START, QE_STOP, QE_KILL, QE_STALL };

typedef struct qent {
    struct qent *next;
    int kind;
    duet_actor_t *actor;
    uint64_t inc;
    uint64_t arg;
    size_t len;
    duet_msg_t *msg; /* QE_MSG decoded already (frames from other nodes), or NULL */
    uint8_t data[];  /* wire frame (QE_MSG) or reason text (QE_STOP/KILL) */
} qent_t;

enum { T_USER, T_CALL, T_STALL_END, T_CREDIT };

typedef struct atimer {
    uint64_t at, period, id, tag, arg;
    int kind;
    duet_actor_t *actor;
    size_t hidx;
    uint64_t sim_ev;
    struct atimer *next; /* in actor's list */
} atimer_t;

typedef struct fdwatch {
    int fd;
    short events;
    uint64_t tag;
    duet_actor_t *actor;
} fdwatch_t;

struct lpeer;

typedef struct loop {
    duet_node_t *node;
    pthread_mutex_t lock;
    qent_t *head, *tail;
    bool sleeping;
    int efd;
    pthread_t thread;
    bool has_thread;
    atomic_bool quit;
    bool dedicated;
    /* loop thread only */
    atimer_t **heap;
    size_t nheap, capheap;
    fdwatch_t *fds;
    size_t nfds, capfds;
    /* loop thread only: direct senders, one DEALER per peer node or per
     * remote loop, and the cache of which one each destination takes */
    unsigned id;
    struct lpeer *lpeers;
    size_t nlpeers, caplpeers;
    size_t nbacklog; /* frames waiting in the lpeers' backlogs */
    uint64_t service_at; /* next duet_zep_dealer_service sweep of the lpeers */
    struct rcache *rc;
    size_t nrc, caprc;
    duet_strmap_t *rcidx; /* destination actor -> index in rc */
    /* dedicated loops of a bound node: an inbound ROUTER of their own, so
     * that frames for the loop's actor skip the I/O thread (set before the
     * thread starts; the thread reads and destroys it) */
    duet_zep_t *in;
    duet_buf_t rxbuf, decbuf;
    struct duet_actor *owner; /* a dedicated loop's actor, once started (holds a ref) */
    atomic_bool pending;      /* lock: the queue is not empty */
    uint64_t spin_ns;         /* poll without sleeping this long after the last work (0: never) */
    atomic_uint_fast64_t spins, spin_hits; /* spin phases, and those that found work */
    /* the last sender checked on `in`: name -> home node, at registry gen */
    char fc_from[DUET_NAME_MAX], fc_home[DUET_NAME_MAX];
    uint64_t fc_gen;
    bool fc_found;
    /* sim */
    bool sim_scheduled;
    uint64_t sim_ev;
    struct loop *next_all;
} loop_t;

typedef struct watcher {
    char name[DUET_NAME_MAX];
    uint64_t ref;
    bool link;
} watcher_t;

typedef struct pending_call {
    uint64_t seq, timer, cookie, timeout_ns;
    uint32_t retries_left;
    uint16_t type;
    char to[DUET_NAME_MAX];
    uint8_t *wire;
    size_t len;
} pending_call_t;

/* Credits, counted in the sender's sequence numbers (env.seq), so that
 * neither side's restart puts the two accounts out of step.
 * Sender side: `fly` holds the seqs of the credited messages sent to peer
 * and not yet known consumed, oldest first (at most credit_window); the
 * receiver's sys.credit{hi} says every message up to seq hi is consumed
 * (or gone), which covers what a dead incarnation of the receiver never
 * consumed as soon as its next incarnation consumes a later message.
 * `epoch`: the receiver's incarnation, from its credits.
 * Receiver side: `epoch` is the sender's incarnation, `hi` the highest seq
 * consumed from it, `unreported` the messages consumed since the last
 * sys.credit. */
typedef struct credit_ent {
    char peer[DUET_NAME_MAX];
    uint64_t epoch, blocked_since;
    uint64_t *fly; /* [credit_window] ring */
    uint32_t fly_head, fly_n;
    uint64_t hi, unreported;
    bool blocked;
} credit_ent_t;

#define DEDUP_N 256
typedef struct dedup_ent {
    bool used;
    uint64_t seq, epoch;
    char from[DUET_NAME_MAX];
    uint8_t *reply;
    size_t reply_len;
} dedup_ent_t;

enum { A_NEW, A_RUNNING, A_DEAD };

struct duet_actor {
    atomic_int refs;
    duet_node_t *node;
    loop_t *loop;
    char name[DUET_NAME_MAX];
    const duet_actor_ops_t *ops;
    void *arg, *state;
    duet_spawn_opts_t opts;
    uint64_t inc;
    int st;
    bool stop_requested; /* a stop/kill is on its way: the name is about to be free */
    char *exit_reason;
    uint64_t seq, next_ref, next_timer;
    atimer_t *timers;
    watcher_t *watchers; /* who monitors/links me */
    size_t nwatchers, capwatchers;
    watcher_t *outgoing; /* whom I monitor/link (name = target) */
    size_t nout, capout;
    pending_call_t *calls;
    size_t ncalls, capcalls;
    credit_ent_t *credits, *consumed;
    size_t ncredits, capcredits, nconsumed, capconsumed;
    dedup_ent_t *dedup;
    size_t dedup_next;
    const duet_env_t *cur_req; /* request being handled, if F_DEDUP */
    dedup_ent_t *cur_dedup;
    uint64_t stalled_until;
    qent_t *def_head, *def_tail;
    duet_buf_t txbuf;   /* encode scratch, loop thread only */
    bool credit_timer;  /* a T_CREDIT timer is armed */
    uint64_t cur_trace; /* trace id of the message being handled: sends inherit it */
    char direct[256];   /* its loop's inbound address, or ""; fixed at spawn */
};

typedef struct tab_ent {
    char *name;
    duet_actor_t *actor;
} tab_ent_t;

typedef struct remote_mon {
    char watcher[DUET_NAME_MAX];
    char target[DUET_NAME_MAX];
    char node[DUET_NAME_MAX];
    uint64_t ref;
    bool link;
} remote_mon_t;

typedef struct out_item {
    struct out_item *next;
    uint64_t due, deadline;
    bool local;
    char peer[DUET_NAME_MAX];
    size_t len;
    uint8_t data[];
} out_item_t;

/* A loop thread's way to a peer node: its own DEALER (no hand-off to the
 * I/O thread), or, when the peer has no bound address, the I/O thread.
 * Chosen at the first send and kept, so one sender's frames to one peer
 * always take one path (FIFO). */
typedef struct lpeer {
    char key[256];            /* peer node name, or the remote loop's address */
    char name[DUET_NAME_MAX]; /* peer node */
    void *sock;               /* NULL: through the I/O thread */
    out_item_t *bl, *bl_tail; /* frames the DEALER did not take yet, in order */
    bool direct;              /* to a remote loop (key[0] == 0: a free slot) */
} lpeer_t;

/* Which lpeer a destination actor takes. Re-decided when the registry
 * changes; within one incarnation of the receiver a path that carried
 * frames is kept (FIFO), except that a loop address withdrawn at the
 * receiver's end sends the rest through its node. */
typedef struct rcache {
    char to[DUET_NAME_MAX];
    char tnode[DUET_NAME_MAX];
    uint64_t gen, epoch;
    long lp; /* index in lpeers; -1 = I/O thread */
    bool direct;
} rcache_t;

typedef struct peer {
    char name[DUET_NAME_MAX];
    bool connected, up;
    uint64_t last_seen;
} peer_t;

typedef struct sim_item {
    duet_node_t *node;
    uint64_t ev;
    struct sim_item *next, *prev;
    size_t len;
    uint8_t data[];
} sim_item_t;

typedef struct fault_timer {
    uint64_t at;
    const duet_fault_rule_t *rule;
    bool done;
    uint64_t sim_ev;
    duet_node_t *node;
} fault_timer_t;

struct duet_node {
    char name[DUET_NAME_MAX];
    duet_node_config_t cfg;
    duet_registry_t *reg;
    duet_codec_limits_t lim;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    tab_ent_t *tab;
    size_t tabcap, tabcount;
    remote_mon_t *rmons;
    size_t nrmons, caprmons;
    loop_t *shared;
    loop_t *loops;
    atomic_uint_fast64_t inc_counter;
    atomic_uint loop_ids;
    uint64_t start_ns;
    /* real transport */
    duet_zep_t *zep;
    pthread_t io;
    bool has_io;
    atomic_bool io_quit;
    int io_efd;
    pthread_mutex_t io_lock;
    out_item_t *io_head, *io_tail;
    bool io_sleeping;                   /* io_lock: the I/O thread is (about to be) in zmq_poll */
    out_item_t *backlog, *backlog_tail; /* I/O thread only */
    out_item_t *delayed;                /* I/O thread only, sorted by due */
    duet_buf_t rxbuf;                   /* I/O thread only: the frame being received */
    uint64_t io_now;                    /* I/O thread only: time of this round */
    peer_t *peers;                      /* I/O thread (or sim thread) only */
    size_t npeers;
    uint64_t next_hb;
    uint64_t trim_at, trimmed_at;       /* I/O thread only: give_back_memory */
#define TRIM_AFTER_NS 2000000000ull     /* trim this long after a peer goes down or up */
#define TRIM_EVERY_NS 10000000000ull    /* and at least this often */
    /* sim */
    duet_simnet_t *sim;
    uint64_t hb_ev;
    sim_item_t *sim_items;
    bool destroying;
    /* faults */
    fault_timer_t *ftimers;
    size_t nftimers;
    /* stats */
    atomic_uint_fast64_t st_sent, st_delivered, st_decode, st_undeliv, st_unroutable, st_dup,
        st_peers_down;
};

static void loop_wake(loop_t *l);
static void dispatch(loop_t *l, qent_t *q);
static void terminate(duet_actor_t *a, const char *reason);
static void handle_msg(duet_actor_t *a, duet_msg_t *m);
static duet_status_t route(duet_node_t *n, const duet_env_t *env, const uint8_t *wire, size_t len);
static void timer_free_all(duet_actor_t *a);
static void sim_loop_step(void *arg);

uint64_t duet_node_now_ns(const duet_node_t *n)
{
    return n->sim ? duet_simnet_now(n->sim) : duet_now_ns();
}

static uint64_t plan_now(const duet_node_t *n)
{
    return n->sim ? duet_simnet_now(n->sim) : duet_now_ns() - n->start_ns;
}

/* ---- name table (open addressing, backward-shift delete; node->lock) ---- */

static size_t tab_slot(const duet_node_t *n, const char *name)
{
    return (size_t)duet_hash_bytes(name, strlen(name)) & (n->tabcap - 1);
}

static duet_actor_t *tab_get(duet_node_t *n, const char *name)
{
    if (!n->tabcap)
        return NULL;
    for (size_t i = tab_slot(n, name); n->tab[i].name; i = (i + 1) & (n->tabcap - 1))
        if (strcmp(n->tab[i].name, name) == 0)
            return n->tab[i].actor;
    return NULL;
}

static duet_status_t tab_put(duet_node_t *n, duet_actor_t *a)
{
    if ((n->tabcount + 1) * 2 > n->tabcap) {
        size_t ncap = n->tabcap ? n->tabcap * 2 : 64;
        tab_ent_t *nt = duet_calloc(ncap, sizeof(*nt));
        if (!nt)
            return duet_errorf(DUET_ERR_NOMEM, "actor table");
        tab_ent_t *old = n->tab;
        size_t oldcap = n->tabcap;
        n->tab = nt;
        n->tabcap = ncap;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i].name) {
                size_t j = tab_slot(n, old[i].name);
                while (nt[j].name)
                    j = (j + 1) & (ncap - 1);
                nt[j] = old[i];
            }
        duet_free(old);
    }
    size_t j = tab_slot(n, a->name);
    while (n->tab[j].name)
        j = (j + 1) & (n->tabcap - 1);
    n->tab[j].name = a->name;
    n->tab[j].actor = a;
    n->tabcount++;
    return DUET_OK;
}

static void tab_del(duet_node_t *n, duet_actor_t *a)
{
    if (!n->tabcap)
        return;
    size_t i = tab_slot(n, a->name);
    while (n->tab[i].name && n->tab[i].actor != a)
        i = (i + 1) & (n->tabcap - 1);
    if (!n->tab[i].name)
        return;
    n->tab[i].name = NULL;
    n->tab[i].actor = NULL;
    n->tabcount--;
    for (size_t k = (i + 1) & (n->tabcap - 1); n->tab[k].name; k = (k + 1) & (n->tabcap - 1)) {
        tab_ent_t e = n->tab[k];
        n->tab[k].name = NULL;
        n->tab[k].actor = NULL;
        size_t j = tab_slot(n, e.name);
        while (n->tab[j].name)
            j = (j + 1) & (n->tabcap - 1);
        n->tab[j] = e;
    }
}

/* ---- actor refcount ------------------------------------------------------- */

static void actor_ref(duet_actor_t *a)
{
    atomic_fetch_add(&a->refs, 1);
}

static void actor_unref(duet_actor_t *a)
{
    if (atomic_fetch_sub(&a->refs, 1) != 1)
        return;
    for (size_t i = 0; i < a->ncalls; i++)
        duet_free(a->calls[i].wire);
    if (a->dedup)
        for (size_t i = 0; i < DEDUP_N; i++)
            duet_free(a->dedup[i].reply);
    duet_free(a->dedup);
    duet_free(a->calls);
    for (size_t i = 0; i < a->ncredits; i++)
        duet_free(a->credits[i].fly);
    duet_free(a->credits);
    duet_free(a->consumed);
    duet_free(a->watchers);
    duet_free(a->outgoing);
    duet_free(a->exit_reason);
    duet_buf_cleanup(&a->txbuf);
    duet_free(a);
}

/* ---- loops ---------------------------------------------------------------- */

/* Loop threads keep the bare entries they free (the common kind: a decoded
 * message, no payload) for the next ones they queue: no allocator round
 * trip per message. Emptied when the thread ends. */
static _Thread_local qent_t *tls_qpool;
static _Thread_local unsigned tls_qpool_n;
static _Thread_local bool tls_qpool_on;

static void qpool_drain(void)
{
    tls_qpool_on = false;
    while (tls_qpool) {
        qent_t *q = tls_qpool;
        tls_qpool = q->next;
        duet_free(q);
    }
    tls_qpool_n = 0;
}

static qent_t *qent_new(int kind, duet_actor_t *a, const void *data, size_t len)
{
    qent_t *q;
    if (len == 0 && tls_qpool) {
        q = tls_qpool;
        tls_qpool = q->next;
        tls_qpool_n--;
    } else {
        q = duet_malloc(sizeof(*q) + len + 1);
    }
    if (!q)
        return NULL;
    q->next = NULL;
    q->kind = kind;
    q->actor = a;
    q->inc = a->inc;
    q->arg = 0;
    q->len = len;
    q->msg = NULL;
    if (len)
        memcpy(q->data, data, len);
    q->data[len] = 0;
    actor_ref(a);
    return q;
}

static void qent_free(qent_t *q)
{
    duet_actor_t *a = q->actor;
    duet_msg_destroy(&q->msg);
    if (q->len == 0 && tls_qpool_on && tls_qpool_n < 1024) {
        q->next = tls_qpool;
        tls_qpool = q;
        tls_qpool_n++;
    } else {
        duet_free(q);
    }
    actor_unref(a);
}

/* Push under the loop lock; the caller wakes the loop. */
static bool loop_push(loop_t *l, qent_t *q, bool front)
{
    pthread_mutex_lock(&l->lock);
    if (front) {
        q->next = l->head;
        l->head = q;
        if (!l->tail)
            l->tail = q;
    } else {
        if (l->tail)
            l->tail->next = q;
        else
            l->head = q;
        l->tail = q;
    }
    bool wake = l->sleeping;
    l->sleeping = false;
    atomic_store_explicit(&l->pending, true, memory_order_relaxed);
    pthread_mutex_unlock(&l->lock);
    return wake;
}

static void loop_wake_if(loop_t *l, bool need)
{
    if (l->node->sim) {
        loop_wake(l);
        return;
    }
    if (need) {
        uint64_t one = 1;
        ssize_t r = write(l->efd, &one, sizeof(one));
        (void)r;
    }
}

static void loop_wake(loop_t *l)
{
    duet_node_t *n = l->node;
    if (n->sim) {
        if (!l->sim_scheduled && !n->destroying) {
            l->sim_scheduled = true;
            l->sim_ev = duet_simnet_at(n->sim, duet_simnet_now(n->sim), sim_loop_step, l);
        }
        return;
    }
    uint64_t one = 1;
    ssize_t r = write(l->efd, &one, sizeof(one));
    (void)r;
}

static bool th_less(const atimer_t *a, const atimer_t *b)
{
    return a->at < b->at || (a->at == b->at && a->id < b->id);
}

static void th_swap(loop_t *l, size_t i, size_t j)
{
    atimer_t *t = l->heap[i];
    l->heap[i] = l->heap[j];
    l->heap[j] = t;
    l->heap[i]->hidx = i;
    l->heap[j]->hidx = j;
}

static void th_up(loop_t *l, size_t i)
{
    while (i && th_less(l->heap[i], l->heap[(i - 1) / 2])) {
        th_swap(l, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void th_down(loop_t *l, size_t i)
{
    for (;;) {
        size_t a = 2 * i + 1, b = a + 1, m = i;
        if (a < l->nheap && th_less(l->heap[a], l->heap[m]))
            m = a;
        if (b < l->nheap && th_less(l->heap[b], l->heap[m]))
            m = b;
        if (m == i)
            return;
        th_swap(l, i, m);
        i = m;
    }
}

static void th_remove(loop_t *l, atimer_t *t)
{
    size_t i = t->hidx;
    l->nheap--;
    if (i != l->nheap) {
        l->heap[i] = l->heap[l->nheap];
        l->heap[i]->hidx = i;
        th_down(l, i);
        th_up(l, i);
    }
}

/* ---- timers --------------------------------------------------------------- */

static void timer_fire(atimer_t *t);

static void sim_timer_cb(void *arg)
{
    atimer_t *t = arg;
    t->sim_ev = 0;
    timer_fire(t);
}

static void timer_arm(atimer_t *t)
{
    duet_node_t *n = t->actor->node;
    if (n->sim) {
        t->sim_ev = duet_simnet_at(n->sim, t->at, sim_timer_cb, t);
        return;
    }
    loop_t *l = t->actor->loop;
    void *p = l->heap;
    if (duet_vec_reserve(&p, &l->capheap, l->nheap + 1, sizeof(*l->heap))) {
        DUET_LOG_E(MOD, "timer heap: out of memory");
        return;
    }
    l->heap = p;
    t->hidx = l->nheap;
    l->heap[l->nheap++] = t;
    th_up(l, t->hidx);
}

static void timer_disarm(atimer_t *t)
{
    duet_node_t *n = t->actor->node;
    if (n->sim) {
        if (t->sim_ev)
            duet_simnet_cancel(n->sim, t->sim_ev);
        t->sim_ev = 0;
        return;
    }
    th_remove(t->actor->loop, t);
}

static void timer_unlink(atimer_t *t)
{
    for (atimer_t **pp = &t->actor->timers; *pp; pp = &(*pp)->next)
        if (*pp == t) {
            *pp = t->next;
            return;
        }
}

static duet_status_t timer_add(duet_actor_t *a, int kind, uint64_t delay_ns, uint64_t period_ns,
                               uint64_t tag, uint64_t arg, uint64_t *id_out)
{
    atimer_t *t = duet_calloc(1, sizeof(*t));
    if (!t)
        return duet_errorf(DUET_ERR_NOMEM, "timer");
    t->at = duet_node_now_ns(a->node) + delay_ns;
    t->period = period_ns;
    t->id = ++a->next_timer;
    t->tag = tag;
    t->arg = arg;
    t->kind = kind;
    t->actor = a;
    t->next = a->timers;
    a->timers = t;
    timer_arm(t);
    if (id_out)
        *id_out = t->id;
    return DUET_OK;
}

static void timer_del(duet_actor_t *a, uint64_t id)
{
    for (atimer_t *t = a->timers; t; t = t->next)
        if (t->id == id) {
            timer_disarm(t);
            timer_unlink(t);
            duet_free(t);
            return;
        }
}

static void timer_free_all(duet_actor_t *a)
{
    while (a->timers) {
        atimer_t *t = a->timers;
        timer_disarm(t);
        a->timers = t->next;
        duet_free(t);
    }
}

/* ---- encode helpers ------------------------------------------------------- */

static duet_status_t encode(duet_node_t *n, const duet_env_t *env, const void *body, duet_buf_t *b)
{
    return duet_msg_encode(env, body, &n->lim, b);
}

static void env_init(duet_env_t *e, uint16_t type, const char *from, const char *to)
{
    e->type = type;
    e->seq = e->epoch = e->trace = e->reply_to = 0;
    e->flags = 0;
    size_t nf = strnlen(from, DUET_NAME_MAX - 1), nt = strnlen(to, DUET_NAME_MAX - 1);
    memcpy(e->from, from, nf);
    e->from[nf] = 0;
    memcpy(e->to, to, nt);
    e->to[nt] = 0;
}

/* Send a runtime message (no credits). */
static duet_status_t sys_send(duet_node_t *n, const char *from, const char *to,
                              const duet_msg_type_t *t, const void *body, uint64_t reply_to)
{
    duet_env_t env;
    env_init(&env, t->id, from, to);
    if (reply_to) {
        env.reply_to = reply_to;
        env.flags |= DUET_ENV_F_REPLY;
    }
    duet_buf_t b = {0};
    duet_status_t st = encode(n, &env, body, &b);
    if (!st)
        st = route(n, &env, b.data, b.len);
    duet_buf_cleanup(&b);
    return st;
}

/* ---- local delivery ------------------------------------------------------- */

/* Queue a frame (or, with msgp, a decoded message the queue adopts: *msgp
 * is set to NULL) for the local actor `to`. */
static duet_status_t post_local_take(duet_node_t *n, const char *to, const uint8_t *wire,
                                     size_t len, duet_msg_t **msgp)
{
    pthread_mutex_lock(&n->lock);
    duet_actor_t *a = tab_get(n, to);
    if (!a) {
        pthread_mutex_unlock(&n->lock);
        return DUET_ERR_NOT_FOUND;
    }
    qent_t *q = qent_new(QE_MSG, a, wire, msgp ? 0 : len);
    if (q && msgp) {
        q->msg = *msgp;
        *msgp = NULL;
    }
    if (!q) {
        pthread_mutex_unlock(&n->lock);
        return duet_errorf(DUET_ERR_NOMEM, "mailbox of %s", to);
    }
    loop_t *l = a->loop;
    bool wake = loop_push(l, q, false);
    pthread_mutex_unlock(&n->lock);
    loop_wake_if(l, wake);
    return DUET_OK;
}

static duet_status_t post_local(duet_node_t *n, const char *to, const uint8_t *wire, size_t len)
{
    return post_local_take(n, to, wire, len, NULL);
}

/* A message whose receiver is gone: answer requests with sys.noproc and
 * monitors with DOWN "noproc" so that nobody waits forever. */
static void undeliverable_msg(duet_node_t *n, const duet_msg_t *m, const char *why)
{
    const duet_env_t *env = &m->env;
    atomic_fetch_add(&n->st_undeliv, 1);
    if (env->type == DUET_MSG_SYS_MONITOR) {
        const sys_monitor_t *mon = m->body;
        duet_sys_down_t d = {mon->ref, (char *)env->to, (char *)"noproc"};
        sys_send(n, env->to, env->from, mon->link ? &duet_msg_sys_exit : &duet_msg_sys_down, &d, 0);
        return;
    }
    if (env->flags & DUET_ENV_F_REQUEST) {
        duet_sys_noproc_t np = {(char *)env->to, (char *)why};
        sys_send(n, env->to, env->from, &duet_msg_sys_noproc, &np, env->seq);
        return;
    }
    if (env->type > 0xff)
        DUET_LOG_D(MOD, "node %s: %s -> %s (type 0x%x) undeliverable: %s", n->name, env->from,
                   env->to, env->type, why);
}

static void undeliverable(duet_node_t *n, const uint8_t *wire, size_t len, const char *why)
{
    duet_msg_t *m = NULL;
    if (duet_msg_decode(wire, len, &n->lim, n->name, &m) == DUET_OK) {
        undeliverable_msg(n, m, why);
        duet_msg_destroy(&m);
    }
}

/* ---- I/O thread (real transport) ----------------------------------------- */

static peer_t *peer_get(duet_node_t *n, const char *name)
{
    for (size_t i = 0; i < n->npeers; i++)
        if (strcmp(n->peers[i].name, name) == 0)
            return &n->peers[i];
    peer_t *np = duet_realloc_array(n->peers, n->npeers + 1, sizeof(*np));
    if (!np)
        return NULL;
    n->peers = np;
    peer_t *p = &np[n->npeers++];
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    return p;
}

/* The lower-named node of a pair connects (ROUTER to ROUTER); the link then
 * carries both directions. */
static void peer_connect(duet_node_t *n, peer_t *p)
{
    if (p->connected || n->sim || strcmp(n->name, p->name) >= 0)
        return;
    char addr[256], key[41];
    if (duet_registry_node_addr(n->reg, p->name, addr, key) || !addr[0])
        return;
    duet_status_t st = duet_zep_connect(n->zep, p->name, addr, n->cfg.curve && key[0] ? key : NULL);
    if (st)
        DUET_LOG_W(MOD, "%s", duet_error());
    else
        p->connected = true;
}

static void io_enqueue(duet_node_t *n, out_item_t *it)
{
    pthread_mutex_lock(&n->io_lock);
    if (n->io_tail)
        n->io_tail->next = it;
    else
        n->io_head = it;
    n->io_tail = it;
    bool wake = n->io_sleeping;
    n->io_sleeping = false;
    pthread_mutex_unlock(&n->io_lock);
    if (wake) {
        uint64_t one = 1;
        ssize_t r = write(n->io_efd, &one, sizeof(one));
        (void)r;
    }
}

static out_item_t *item_new(bool local, const char *peer, const void *data, size_t len)
{
    out_item_t *it = duet_malloc(sizeof(*it) + len);
    if (!it)
        return NULL;
    memset(it, 0, sizeof(*it));
    it->local = local;
    snprintf(it->peer, sizeof(it->peer), "%s", peer);
    it->len = len;
    memcpy(it->data, data, len);
    return it;
}

static void sim_deliver(void *ctx, const char *from, const uint8_t *data, size_t len);
static void on_frame(duet_node_t *n, const char *peer, const uint8_t *data, size_t len);

static void sim_item_unlink(duet_node_t *n, sim_item_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        n->sim_items = s->next;
    if (s->next)
        s->next->prev = s->prev;
}

static void sim_local_cb(void *arg)
{
    sim_item_t *s = arg;
    duet_node_t *n = s->node;
    sim_item_unlink(n, s);
    duet_env_t env;
    size_t off;
    if (!duet_env_decode(s->data, s->len, &env, &off) &&
        post_local(n, env.to, s->data, s->len) == DUET_ERR_NOT_FOUND)
        undeliverable(n, s->data, s->len, "no such actor");
    duet_free(s);
}

static _Thread_local loop_t *tls_loop; /* the loop whose thread this is, if any */

static bool loop_xmit(loop_t *l, const char *peer, const char *to, const uint8_t *wire, size_t len,
                      duet_status_t *st);

/* Hand a frame to the transport, now or after `delay`. */
static duet_status_t xmit(duet_node_t *n, bool local, const char *peer, const char *to,
                          const uint8_t *wire, size_t len, uint64_t delay)
{
    if (n->sim) {
        if (!local)
            return duet_simnet_send(n->sim, n->name, peer, wire, len, delay);
        sim_item_t *s = duet_malloc(sizeof(*s) + len);
        if (!s)
            return duet_errorf(DUET_ERR_NOMEM, "sim item");
        s->node = n;
        s->len = len;
        memcpy(s->data, wire, len);
        s->prev = NULL;
        s->next = n->sim_items;
        if (n->sim_items)
            n->sim_items->prev = s;
        n->sim_items = s;
        s->ev = duet_simnet_at(n->sim, duet_simnet_now(n->sim) + delay, sim_local_cb, s);
        return DUET_OK;
    }
    if (!n->has_io)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "node %s has no transport", n->name);
    /* node-to-node messages (to "") stay on the I/O thread, in order */
    if (!local && !delay && to[0] && tls_loop && tls_loop->node == n) {
        duet_status_t st;
        if (loop_xmit(tls_loop, peer, to, wire, len, &st))
            return st;
    }
    out_item_t *it = item_new(local, peer, wire, len);
    if (!it)
        return duet_errorf(DUET_ERR_NOMEM, "send queue");
    it->due = delay ? duet_now_ns() + delay : 0;
    io_enqueue(n, it);
    return DUET_OK;
}

static void backlog_push(duet_node_t *n, out_item_t *it)
{
    it->next = NULL;
    if (n->backlog_tail)
        n->backlog_tail->next = it;
    else
        n->backlog = it;
    n->backlog_tail = it;
}

static void unroutable(duet_node_t *n, out_item_t *it)
{
    it->next = NULL;
    atomic_fetch_add(&n->st_unroutable, 1);
    duet_env_t env;
    size_t off;
    if (duet_env_decode(it->data, it->len, &env, &off) == DUET_OK) {
        if (env.type != DUET_MSG_SYS_HEARTBEAT && env.type != DUET_MSG_SYS_REGISTRY)
            DUET_LOG_W(MOD, "node %s: %s -> %s (type 0x%x): node %s unreachable after %u ms",
                       n->name, env.from, env.to, env.type, it->peer, n->cfg.connect_timeout_ms);
        undeliverable(n, it->data, it->len, "node unreachable");
    }
}

/* ---- direct sends from loop threads ------------------------------------- */

/* The lpeer for `key`: a peer node's name (connect to its bound address;
 * none: through the I/O thread) or, when `direct`, a remote loop's address.
 * Returns its index, -1 when out of memory. */
static long lpeer_get(loop_t *l, const char *key, const char *node, bool direct)
{
    size_t slot = l->nlpeers;
    for (size_t i = 0; i < l->nlpeers; i++) {
        if (strcmp(l->lpeers[i].key, key) == 0)
            return (long)i;
        if (!l->lpeers[i].key[0] && slot == l->nlpeers)
            slot = i;
    }
    duet_node_t *n = l->node;
    if (slot == l->nlpeers) {
        void *p = l->lpeers;
        if (duet_vec_reserve(&p, &l->caplpeers, l->nlpeers + 1, sizeof(lpeer_t)))
            return -1;
        l->lpeers = p;
        l->nlpeers++;
    }
    lpeer_t *lp = &l->lpeers[slot];
    memset(lp, 0, sizeof(*lp));
    lp->direct = direct;
    snprintf(lp->key, sizeof(lp->key), "%s", key);
    snprintf(lp->name, sizeof(lp->name), "%s", node);
    char addr[256], pkey[41];
    if (duet_registry_node_addr(n->reg, node, addr, pkey) == DUET_OK && (direct || addr[0]) &&
        duet_zep_dealer_open(n->zep, l->id, node, direct ? key : addr,
                             n->cfg.curve && pkey[0] ? pkey : NULL, &lp->sock) != DUET_OK)
        DUET_LOG_W(MOD, "%s (sending through the I/O thread)", duet_error());
    duet_error_clear();
    return (long)slot;
}

/* A remote loop's DEALER that no destination uses any more (its actor
 * restarted elsewhere or stopped) is closed, so restarts do not pile up
 * sockets. */
static void lpeer_retire(loop_t *l, long i)
{
    lpeer_t *lp = &l->lpeers[i];
    if (!lp->direct || lp->bl)
        return;
    for (size_t k = 0; k < l->nrc; k++)
        if (l->rc[k].lp == i)
            return;
    duet_zep_dealer_close(&lp->sock, 200);
    lp->key[0] = 0;
}

static rcache_t *rcache_get(loop_t *l, const char *to)
{
    int64_t idx;
    if (l->rcidx && duet_strmap_get(l->rcidx, to, strlen(to), &idx))
        return &l->rc[idx];
    if (!l->rcidx && !(l->rcidx = duet_strmap_create(16)))
        return NULL;
    void *p = l->rc;
    if (duet_vec_reserve(&p, &l->caprc, l->nrc + 1, sizeof(rcache_t)))
        return NULL;
    l->rc = p;
    if (duet_strmap_put(l->rcidx, to, strlen(to), (int64_t)l->nrc))
        return NULL;
    rcache_t *rc = &l->rc[l->nrc++];
    memset(rc, 0, sizeof(*rc));
    snprintf(rc->to, sizeof(rc->to), "%s", to);
    rc->lp = -1;
    return rc;
}

/* Which lpeer frames for actor `to` on node `tnode` take (-1: I/O thread). */
static long loop_route(loop_t *l, const char *tnode, const char *to)
{
    duet_node_t *n = l->node;
    rcache_t *rc = rcache_get(l, to);
    if (!rc)
        return lpeer_get(l, tnode, tnode, false);
    uint64_t gen = duet__registry_gen(n->reg);
    if (rc->gen == gen && strcmp(rc->tnode, tnode) == 0)
        return rc->lp;
    char node[DUET_NAME_MAX], direct[256] = "";
    uint64_t epoch = 0;
    bool use_direct = duet__registry_find_direct(n->reg, to, node, &epoch, direct) && direct[0] &&
                      strcmp(node, tnode) == 0;
    bool same = rc->gen && epoch == rc->epoch && strcmp(rc->tnode, tnode) == 0;
    if (same && !rc->direct && use_direct)
        use_direct = false; /* this incarnation has been reached through its node: stay */
    if (!same || use_direct != rc->direct || rc->lp < 0 ||
        strcmp(l->lpeers[rc->lp].key, use_direct ? direct : tnode) != 0) {
        long old = rc->lp;
        rc->lp = -1;
        if (old >= 0)
            lpeer_retire(l, old);
        rc->lp = use_direct ? lpeer_get(l, direct, tnode, true) : lpeer_get(l, tnode, tnode, false);
    }
    rc->direct = use_direct && rc->lp >= 0;
    rc->gen = gen;
    rc->epoch = epoch;
    if (tnode != rc->tnode) /* route() may pass the cached name itself */
        snprintf(rc->tnode, sizeof(rc->tnode), "%s", tnode);
    return rc->lp;
}

/* Send on one of the loop's own DEALERs; false: this destination goes
 * through the I/O thread. Frames the socket does not take wait in the
 * backlog, in order, until the peer connects or connect_timeout_ms passes. */
static bool loop_send_lp(loop_t *l, long i, const char *peer, const uint8_t *wire, size_t len,
                         duet_status_t *st)
{
    if (i < 0 || !l->lpeers[i].sock)
        return false;
    lpeer_t *lp = &l->lpeers[i];
    *st = DUET_OK;
    if (!lp->bl) {
        duet_status_t r = duet_zep_dealer_send(lp->sock, wire, len);
        if (r == DUET_OK)
            return true;
        if (r != DUET_ERR_AGAIN)
            DUET_LOG_W(MOD, "node %s: to %s: %s", l->node->name, peer, duet_error());
    }
    out_item_t *it = item_new(false, peer, wire, len);
    if (!it) {
        *st = duet_errorf(DUET_ERR_NOMEM, "send queue");
        return true;
    }
    it->deadline = duet_now_ns() + (uint64_t)l->node->cfg.connect_timeout_ms * 1000000ull;
    if (lp->bl_tail)
        lp->bl_tail->next = it;
    else
        lp->bl = it;
    lp->bl_tail = it;
    l->nbacklog++;
    return true;
}

static bool loop_xmit(loop_t *l, const char *peer, const char *to, const uint8_t *wire, size_t len,
                      duet_status_t *st)
{
    return loop_send_lp(l, loop_route(l, peer, to), peer, wire, len, st);
}

static void loop_flush(loop_t *l)
{
    uint64_t now = duet_now_ns();
    for (size_t i = 0; i < l->nlpeers; i++) {
        for (;;) {
            lpeer_t *lp = &l->lpeers[i]; /* again each time: unroutable() may send */
            out_item_t *it = lp->bl;
            if (!it)
                break;
            duet_status_t r = duet_zep_dealer_send(lp->sock, it->data, it->len);
            if (r != DUET_OK && now < it->deadline)
                break;
            lp->bl = it->next;
            if (!lp->bl)
                lp->bl_tail = NULL;
            l->nbacklog--;
            if (r != DUET_OK)
                unroutable(l->node, it);
            duet_free(it);
        }
    }
}

/* The loop's thread ends: what its DEALERs did not take goes to the I/O
 * thread; frames already queued in them get a short linger to leave. */
static void loop_close_peers(loop_t *l)
{
    duet_node_t *n = l->node;
    pthread_mutex_lock(&n->lock);
    bool destroying = n->destroying;
    pthread_mutex_unlock(&n->lock);
    for (size_t i = 0; i < l->nlpeers; i++) {
        lpeer_t *lp = &l->lpeers[i];
        for (out_item_t *it = lp->bl, *nx; it; it = nx) {
            nx = it->next;
            it->next = NULL;
            io_enqueue(n, it);
        }
        lp->bl = lp->bl_tail = NULL;
        duet_zep_dealer_close(&lp->sock, destroying ? 0 : 200);
    }
    l->nbacklog = 0;
    l->nlpeers = 0;
    l->nrc = 0;
    duet_strmap_destroy(&l->rcidx);
}

/* Send what the backlog holds, in order per peer. */
static void io_flush(duet_node_t *n, uint64_t now)
{
    const char *blocked[16];
    size_t nblocked = 0;
    out_item_t *keep = NULL, *keep_tail = NULL;
    for (out_item_t *it = n->backlog, *nx; it; it = nx) {
        nx = it->next;
        bool skip = false;
        for (size_t i = 0; i < nblocked; i++)
            if (strcmp(blocked[i], it->peer) == 0)
                skip = true;
        duet_status_t st = DUET_ERR_AGAIN;
        if (!skip) {
            if (it->local) {
                duet_env_t env;
                size_t off;
                st = DUET_OK;
                if (!duet_env_decode(it->data, it->len, &env, &off) &&
                    post_local(n, env.to, it->data, it->len) == DUET_ERR_NOT_FOUND)
                    undeliverable(n, it->data, it->len, "no such actor");
            } else {
                peer_connect(n, peer_get(n, it->peer));
                st = duet_zep_send(n->zep, it->peer, it->data, it->len);
                if (st != DUET_OK && st != DUET_ERR_AGAIN) {
                    DUET_LOG_W(MOD, "%s", duet_error());
                    st = DUET_ERR_AGAIN;
                }
            }
        }
        if (st == DUET_OK) {
            duet_free(it);
            continue;
        }
        if (!it->deadline)
            it->deadline = now + (uint64_t)n->cfg.connect_timeout_ms * 1000000ull;
        if (now >= it->deadline) {
            unroutable(n, it);
            duet_free(it);
            continue;
        }
        if (!skip && nblocked < DUET_ARRAY_LEN(blocked))
            blocked[nblocked++] = it->peer;
        it->next = NULL;
        if (keep_tail)
            keep_tail->next = it;
        else
            keep = it;
        keep_tail = it;
    }
    n->backlog = keep;
    n->backlog_tail = keep_tail;
}

static void node_peer_down(duet_node_t *n, const char *peer);

static void heartbeat_tick(duet_node_t *n)
{
    uint64_t now = duet_node_now_ns(n);
    char names[64][DUET_NAME_MAX];
    size_t nn = duet_registry_nodes(n->reg, names, 64);
    if (nn > 64)
        nn = 64;
    duet_env_t env;
    env_init(&env, DUET_MSG_SYS_HEARTBEAT, n->name, "");
    sys_heartbeat_t hb = {now};
    duet_buf_t b = {0};
    if (encode(n, &env, &hb, &b))
        return;
    for (size_t i = 0; i < nn; i++) {
        if (strcmp(names[i], n->name) == 0)
            continue;
        peer_t *p = peer_get(n, names[i]);
        if (!p)
            continue;
        if (n->cfg.faults && duet_fault_partitioned(n->cfg.faults, plan_now(n), n->name, p->name))
            continue;
        if (n->sim) {
            duet_simnet_send(n->sim, n->name, p->name, b.data, b.len, 0);
        } else {
            peer_connect(n, p);
            duet_zep_send(n->zep, p->name, b.data, b.len); /* AGAIN: not up yet, fine */
        }
    }
    duet_buf_cleanup(&b);
    uint64_t limit = (uint64_t)n->cfg.heartbeat_ms * n->cfg.heartbeat_misses * 1000000ull;
    for (size_t i = 0; i < n->npeers; i++) {
        peer_t *p = &n->peers[i];
        if (p->up && now - p->last_seen > limit) {
            p->up = false;
            atomic_fetch_add(&n->st_peers_down, 1);
            DUET_LOG_W(MOD, "node %s: peer %s missed %u heartbeats: down", n->name, p->name,
                       n->cfg.heartbeat_misses);
            node_peer_down(n, p->name);
            n->trim_at = now + TRIM_AFTER_NS;
        }
    }
}

/* Every local watcher of a remote actor on node `peer` (or, peer NULL, of
 * actor `target`) gets DOWN/EXIT `reason`; the monitors are used up. */
static void rmons_down(duet_node_t *n, const char *peer, const char *target, const char *reason)
{
    for (;;) {
        remote_mon_t rm;
        bool found = false;
        pthread_mutex_lock(&n->lock);
        for (size_t i = 0; i < n->nrmons; i++)
            if (peer ? strcmp(n->rmons[i].node, peer) == 0
                     : strcmp(n->rmons[i].target, target) == 0) {
                rm = n->rmons[i];
                n->rmons[i] = n->rmons[--n->nrmons];
                found = true;
                break;
            }
        pthread_mutex_unlock(&n->lock);
        if (!found)
            return;
        duet_sys_down_t d = {rm.ref, rm.target, (char *)reason};
        sys_send(n, rm.target, rm.watcher, rm.link ? &duet_msg_sys_exit : &duet_msg_sys_down, &d,
                 0);
    }
}

/* Every watcher of an actor on `peer` gets DOWN/EXIT "noconnection". */
static void node_peer_down(duet_node_t *n, const char *peer)
{
    rmons_down(n, peer, NULL, "noconnection");
}

/* Tell `peer` (or every node, peer == NULL) that `actor` runs here. */
static void announce(duet_node_t *n, const char *peer, const char *actor, uint64_t epoch,
                     const char *direct)
{
    duet_env_t env;
    env_init(&env, DUET_MSG_SYS_REGISTRY, "", "");
    sys_registry_t r = {(char *)actor, n->name, epoch, (char *)direct};
    duet_buf_t b = {0};
    if (encode(n, &env, &r, &b))
        return;
    char names[64][DUET_NAME_MAX];
    size_t nn = peer ? 1 : duet_registry_nodes(n->reg, names, 64);
    if (peer)
        snprintf(names[0], DUET_NAME_MAX, "%s", peer);
    for (size_t i = 0; i < nn && i < 64; i++)
        if (strcmp(names[i], n->name) != 0)
            xmit(n, false, names[i], "", b.data, b.len, 0); /* not yet attached: learns on "up" */
    duet_buf_cleanup(&b);
}

static void announce_all(duet_node_t *n, const char *peer)
{
    /* copy names out under the lock; send without it */
    pthread_mutex_lock(&n->lock);
    size_t total = n->tabcount, m = 0;
    char(*names)[DUET_NAME_MAX] = total ? duet_calloc(total, DUET_NAME_MAX) : NULL;
    uint64_t *epochs = total ? duet_calloc(total, sizeof(uint64_t)) : NULL;
    char(*directs)[256] = total ? duet_calloc(total, 256) : NULL;
    for (size_t i = 0; names && epochs && directs && i < n->tabcap && m < total; i++)
        if (n->tab[i].name) {
            snprintf(names[m], DUET_NAME_MAX, "%s", n->tab[i].name);
            snprintf(directs[m], 256, "%s", n->tab[i].actor->direct);
            epochs[m++] = n->tab[i].actor->inc;
        }
    pthread_mutex_unlock(&n->lock);
    for (size_t i = 0; i < m; i++)
        announce(n, peer, names[i], epochs[i], directs[i]);
    duet_free(names);
    duet_free(epochs);
    duet_free(directs);
}

/* A loop address a peer announces must be on that peer's own host and
 * transport: a "tcp://host:" prefix, or its ipc/inproc address + ".L". */
static bool direct_ok(duet_node_t *n, const char *node, const char *direct)
{
    char addr[256];
    if (duet_registry_node_addr(n->reg, node, addr, NULL) != DUET_OK || !addr[0]) {
        duet_error_clear();
        return false;
    }
    if (strncmp(addr, "tcp://", 6) == 0) {
        const char *c = strrchr(addr, ':');
        size_t k = (size_t)(c - addr) + 1;
        return strncmp(addr, direct, k) == 0 && strchr(direct + k, ':') == NULL;
    }
    size_t k = strlen(addr);
    return strncmp(addr, direct, k) == 0 && strncmp(direct + k, ".L", 2) == 0;
}

static void registry_learn(duet_node_t *n, const sys_registry_t *r)
{
    char cur[DUET_NAME_MAX];
    uint64_t epoch = 0;
    bool known = duet_registry_find(n->reg, r->actor, cur, &epoch);
    if (known && strcmp(cur, r->node) == 0 && epoch > r->epoch)
        return; /* an older incarnation's news, overtaken */
    const char *d = r->direct && r->direct[0] && direct_ok(n, r->node, r->direct) ? r->direct : "";
    duet__registry_update_direct(n->reg, r->actor, r->node, r->epoch, d);
    /* a new incarnation: the one watched here died (a restart can be faster
     * than the heartbeats that would have said so) */
    if (known && epoch && r->epoch > epoch)
        rmons_down(n, NULL, r->actor, "restarted");
}

static void on_frame(duet_node_t *n, const char *peer, const uint8_t *data, size_t len)
{
    peer_t *p = peer_get(n, peer);
    if (p) {
        bool was_up = p->up;
        p->up = true;
        p->last_seen = n->sim ? duet_simnet_now(n->sim) : n->io_now;
        if (!was_up) {
            DUET_LOG_I(MOD, "node %s: peer %s up", n->name, peer);
            n->trim_at = n->io_now + TRIM_AFTER_NS;
            announce_all(n, peer);
        }
    }
    if (len > n->lim.max_size) {
        atomic_fetch_add(&n->st_decode, 1);
        DUET_LOG_W(MOD, "node %s: %zu-byte frame from node %s exceeds the %zu-byte cap", n->name,
                   len, peer, n->lim.max_size);
        return;
    }
    duet_env_t env;
    size_t off;
    if (duet_env_decode(data, len, &env, &off)) {
        atomic_fetch_add(&n->st_decode, 1);
        DUET_LOG_W(MOD, "node %s: from node %s: %s", n->name, peer, duet_error());
        return;
    }
    if (env.type == DUET_MSG_SYS_HEARTBEAT)
        return;
    if (env.type == DUET_MSG_SYS_REGISTRY) {
        duet_msg_t *m = NULL;
        if (duet_msg_decode(data, len, &n->lim, peer, &m)) {
            atomic_fetch_add(&n->st_decode, 1);
            DUET_LOG_W(MOD, "node %s: %s", n->name, duet_error());
            return;
        }
        const sys_registry_t *r = m->body;
        if (strcmp(r->node, peer) == 0) /* a node speaks only for its own actors */
            registry_learn(n, r);
        else
            atomic_fetch_add(&n->st_decode, 1);
        duet_msg_destroy(&m);
        return;
    }
    /* a peer may only speak for its own actors: if the registry places the
     * sender on another node, the frame is forged or misrouted */
    char home[DUET_NAME_MAX];
    if (env.from[0] && duet_registry_find(n->reg, env.from, home, NULL) &&
        strcmp(home, peer) != 0) {
        atomic_fetch_add(&n->st_decode, 1);
        DUET_LOG_W(MOD,
                   "node %s: frame from node %s claims sender '%s', which lives on %s: dropped",
                   n->name, peer, env.from, home);
        return;
    }
    /* decode here, where the sending node is known, so that a bad frame is
     * reported against it; the actor's loop gets the decoded message */
    duet_msg_t *m = NULL;
    if (duet_msg_decode(data, len, &n->lim, peer, &m)) {
        atomic_fetch_add(&n->st_decode, 1);
        DUET_LOG_W(MOD, "node %s: rejected: %s", n->name, duet_error());
        return;
    }
    if (post_local_take(n, env.to, NULL, 0, &m) == DUET_ERR_NOT_FOUND)
        undeliverable_msg(n, m, "no such actor");
    duet_msg_destroy(&m);
}

/* A frame that came straight to a loop's own socket (an actor message;
 * node-to-node traffic takes the node's ROUTER). Checked as on_frame does,
 * then queued on the receiver's loop: normally this one, so no hand-off. */
/* Where the registry places `from` (NULL: nowhere), cached for one sender. */
static const char *sender_home(loop_t *l, const char *from)
{
    duet_node_t *n = l->node;
    uint64_t gen = duet__registry_gen(n->reg);
    if (l->fc_gen != gen || strcmp(l->fc_from, from) != 0) {
        l->fc_found = duet_registry_find(n->reg, from, l->fc_home, NULL);
        snprintf(l->fc_from, sizeof(l->fc_from), "%s", from);
        l->fc_gen = gen;
    }
    return l->fc_found ? l->fc_home : NULL;
}

static void on_direct_frame(loop_t *l, const char *peer, const uint8_t *data, size_t len)
{
    duet_node_t *n = l->node;
    duet_msg_t *m = NULL;
    /* decoded into the loop's scratch: the common case runs it from there */
    if (duet_msg_decode_scratch(data, len, &n->lim, peer, &l->decbuf, &m)) {
        atomic_fetch_add(&n->st_decode, 1);
        DUET_LOG_W(MOD, "node %s: rejected: %s", n->name, duet_error());
        return;
    }
    const duet_env_t *env = &m->env;
    const char *home = env->from[0] ? sender_home(l, env->from) : NULL;
    if (env->type == DUET_MSG_SYS_HEARTBEAT || env->type == DUET_MSG_SYS_REGISTRY ||
        (home && strcmp(home, peer) != 0)) {
        atomic_fetch_add(&n->st_decode, 1);
        DUET_LOG_W(MOD,
                   "node %s: frame from node %s (sender '%s', type 0x%x) refused on a loop "
                   "socket",
                   n->name, peer, env->from, env->type);
        return;
    }
    duet_actor_t *a = l->owner;
    if (a && a->st == A_RUNNING && !a->stalled_until &&
        !atomic_load_explicit(&l->pending, memory_order_relaxed) && strcmp(a->name, env->to) == 0) {
        /* the loop's own actor, nothing queued ahead of it: run it now */
        atomic_fetch_add(&n->st_delivered, 1);
        handle_msg(a, m);
        if (a->st == A_RUNNING && a->exit_reason) {
            char *r = a->exit_reason;
            a->exit_reason = NULL;
            terminate(a, r);
            duet_free(r);
        }
        return;
    }
    /* queued (another actor, or behind entries already queued): an owned copy */
    if (duet_msg_decode(data, len, &n->lim, peer, &m)) {
        atomic_fetch_add(&n->st_decode, 1);
        return;
    }
    char to[DUET_NAME_MAX];
    memcpy(to, m->env.to, sizeof(to));
    if (post_local_take(n, to, NULL, 0, &m) == DUET_ERR_NOT_FOUND)
        undeliverable_msg(n, m, "no such actor");
    duet_msg_destroy(&m);
}

static void sim_deliver(void *ctx, const char *from, const uint8_t *data, size_t len)
{
    duet_node_t *n = ctx;
    if (n->cfg.faults && duet_fault_partitioned(n->cfg.faults, plan_now(n), from, n->name))
        return; /* cut while in flight */
    on_frame(n, from, data, len);
}

static void sim_hb_cb(void *arg)
{
    duet_node_t *n = arg;
    n->hb_ev = 0;
    heartbeat_tick(n);
    n->hb_ev = duet_simnet_at(n->sim, duet_simnet_now(n->sim) + n->cfg.heartbeat_ms * 1000000ull,
                              sim_hb_cb, n);
}

/* ---- fault timers (crash / stall) -------------------------------------- */

static void fault_fire(fault_timer_t *ft)
{
    duet_node_t *n = ft->node;
    ft->done = true;
    const duet_fault_rule_t *r = ft->rule;
    /* act only on the actors this node runs */
    pthread_mutex_lock(&n->lock);
    char names[256][DUET_NAME_MAX];
    size_t nn = 0;
    for (size_t i = 0; i < n->tabcap && nn < 256; i++)
        if (n->tab[i].name && duet_glob_match(r->actor, n->tab[i].name))
            snprintf(names[nn++], DUET_NAME_MAX, "%s", n->tab[i].name);
    pthread_mutex_unlock(&n->lock);
    for (size_t i = 0; i < nn; i++) {
        char what[300];
        snprintf(what, sizeof(what), "%.127s on node %.127s", names[i], n->name);
        duet_fault_note(n->cfg.faults, r->kind, plan_now(n), what);
        if (r->kind == DUET_FAULT_CRASH)
            duet_kill(n, names[i], "crash (fault injected)");
        else
            duet_stall(n, names[i], r->for_ns ? r->for_ns : 1000000000ull);
    }
}

static void sim_fault_cb(void *arg)
{
    fault_timer_t *ft = arg;
    ft->sim_ev = 0;
    fault_fire(ft);
}

static uint64_t io_timeout_ms(duet_node_t *n, uint64_t now)
{
    uint64_t next = n->next_hb;
    if (n->delayed && n->delayed->due < next)
        next = n->delayed->due;
    for (size_t i = 0; i < n->nftimers; i++)
        if (!n->ftimers[i].done && n->start_ns + n->ftimers[i].at < next)
            next = n->start_ns + n->ftimers[i].at;
    if (n->backlog && now + 5000000 < next)
        next = now + 5000000; /* retry unroutable sends every 5 ms */
    if (next <= now)
        return 0;
    return (next - now + 999999) / 1000000;
}

/* Memory a peer's death and return churned through (frames held for it,
 * replays, reconnection) is freed, but malloc keeps the pages: glibc
 * returns only the top of an arena by itself, and the holes left between
 * live blocks stay resident. A long-lived node lost to that about 10-40 KiB
 * per peer down/up, and a malloc_trim of such a process gave back more
 * than its whole growth. So the I/O thread trims TRIM_AFTER_NS after a peer
 * goes down or comes up, and every TRIM_EVERY_NS otherwise, where glibc is
 * the allocator (DUET_GLIBC_MALLOC, base/base.h). */
static void give_back_memory(duet_node_t *n, uint64_t now)
{
    if (!n->trimmed_at)
        n->trimmed_at = now;
    if ((n->trim_at && now >= n->trim_at) || now - n->trimmed_at >= TRIM_EVERY_NS) {
#ifdef DUET_GLIBC_MALLOC
        malloc_trim(0);
#endif
        n->trim_at = 0;
        n->trimmed_at = now;
    }
}

static void *io_main(void *arg)
{
    duet_node_t *n = arg;
    n->next_hb = duet_now_ns();
    while (!atomic_load(&n->io_quit)) {
        uint64_t now = duet_now_ns();
        zmq_pollitem_t items[2] = {{duet_zep_socket(n->zep), 0, ZMQ_POLLIN, 0},
                                   {NULL, n->io_efd, ZMQ_POLLIN, 0}};
        long to = (long)io_timeout_ms(n, now);
        if (to > 50)
            to = 50;
        pthread_mutex_lock(&n->io_lock);
        if (n->io_head)
            to = 0;
        n->io_sleeping = to != 0;
        pthread_mutex_unlock(&n->io_lock);
        zmq_poll(items, 2, to);
        pthread_mutex_lock(&n->io_lock);
        n->io_sleeping = false;
        pthread_mutex_unlock(&n->io_lock);
        if (items[1].revents & ZMQ_POLLIN) {
            uint64_t v;
            ssize_t r = read(n->io_efd, &v, sizeof(v));
            (void)r;
        }
        now = duet_now_ns();
        pthread_mutex_lock(&n->io_lock);
        out_item_t *in = n->io_head;
        n->io_head = n->io_tail = NULL;
        pthread_mutex_unlock(&n->io_lock);
        for (out_item_t *it = in, *nx; it; it = nx) {
            nx = it->next;
            if (it->due > now) { /* fault-delayed: keep sorted by due */
                out_item_t **pp = &n->delayed;
                while (*pp && (*pp)->due <= it->due)
                    pp = &(*pp)->next;
                it->next = *pp;
                *pp = it;
            } else {
                backlog_push(n, it);
            }
        }
        while (n->delayed && n->delayed->due <= now) {
            out_item_t *it = n->delayed;
            n->delayed = it->next;
            backlog_push(n, it);
        }
        for (int k = 0; k < 4096; k++) {
            char peer[DUET_NAME_MAX];
            if ((k & 255) == 0)
                n->io_now = duet_now_ns();
            duet_status_t st = duet_zep_recv_buf(n->zep, peer, &n->rxbuf);
            if (st == DUET_ERR_AGAIN)
                break;
            if (st) {
                DUET_LOG_W(MOD, "%s", duet_error());
                continue;
            }
            on_frame(n, peer, n->rxbuf.data, n->rxbuf.len);
        }
        io_flush(n, now);
        if (now >= n->next_hb) {
            heartbeat_tick(n);
            n->next_hb = now + (uint64_t)n->cfg.heartbeat_ms * 1000000ull;
            give_back_memory(n, now);
        }
        for (size_t i = 0; i < n->nftimers; i++)
            if (!n->ftimers[i].done && now >= n->start_ns + n->ftimers[i].at)
                fault_fire(&n->ftimers[i]);
    }
    return NULL;
}

/* ---- routing -------------------------------------------------------------- */

/* Resolve `env->to`, apply the fault plan, hand the frame to the local
 * loop or the transport. Synchronous errors: DUET_ERR_NOT_FOUND. */
static duet_status_t route(duet_node_t *n, const duet_env_t *env, const uint8_t *wire, size_t len)
{
    char tnode[DUET_NAME_MAX];
    bool local = false;
    /* a loop thread remembers remote destinations while the registry stays
     * as it was (a spawn here would have changed it) */
    rcache_t *rc = NULL;
    bool cached = tls_loop && tls_loop->node == n && (rc = rcache_get(tls_loop, env->to)) &&
                  rc->gen && rc->gen == duet__registry_gen(n->reg) && rc->tnode[0];
    if (!cached) {
        pthread_mutex_lock(&n->lock);
        local = tab_get(n, env->to) != NULL;
        pthread_mutex_unlock(&n->lock);
    }
    /* the cached entry is stable here: only a lookup of a new name grows
     * the cache, and everything below looks up env->to alone */
    const char *tn = cached ? rc->tnode : tnode;
    if (local) {
        snprintf(tnode, sizeof(tnode), "%s", n->name);
    } else if (!cached) {
        if (duet_registry_lookup(n->reg, env->to, tnode, NULL))
            return DUET_ERR_NOT_FOUND;
        if (strcmp(tnode, n->name) == 0)
            return duet_errorf(DUET_ERR_NOT_FOUND, "actor '%s' is not running on node %s", env->to,
                               n->name);
    }
    atomic_fetch_add(&n->st_sent, 1);
    duet_fault_verdict_t v = {1, {0}};
    if (n->cfg.faults && env->type != DUET_MSG_SYS_HEARTBEAT) {
        const duet_msg_type_t *t = duet_msg_type_lookup(env->type);
        duet_fault_decide(n->cfg.faults, plan_now(n), n->name, env->from, tn, env->to,
                          t ? t->name : NULL, &v);
    }
    for (unsigned c = 0; c < v.copies; c++) {
        duet_status_t st;
        if (local && v.delay_ns[c] == 0 && !n->sim) {
            st = post_local(n, env->to, wire, len);
            if (st == DUET_ERR_NOT_FOUND) {
                undeliverable(n, wire, len, "no such actor");
                st = DUET_OK;
            }
        } else if (cached && v.delay_ns[c] == 0 &&
                   loop_send_lp(tls_loop, rc->lp, tn, wire, len, &st)) {
            /* the path this loop took for env->to last time, still valid */
        } else {
            st = xmit(n, local, tn, env->to, wire, len, v.delay_ns[c]);
        }
        if (st)
            return st;
    }
    return DUET_OK;
}

/* ---- dispatch ------------------------------------------------------------- */

static void call_handler(duet_actor_t *a, const duet_msg_t *m)
{
    if (a->st != A_RUNNING)
        return;
    uint64_t saved = a->cur_trace;
    if (m->env.trace)
        a->cur_trace = m->env.trace;
    duet_status_t st = a->ops->handle ? a->ops->handle(a, a->state, m) : DUET_OK;
    a->cur_trace = saved;
    if (st && !a->exit_reason) {
        char reason[1100];
        snprintf(reason, sizeof(reason), "error: %s: %s", duet_status_str(st), duet_error());
        a->exit_reason = duet_strdup(reason);
    }
}

static void deliver_local_sys(duet_actor_t *a, const duet_msg_type_t *t, const char *from,
                              const void *body, uint64_t reply_to)
{
    duet_msg_t m;
    memset(&m, 0, sizeof(m));
    env_init(&m.env, t->id, from, a->name);
    m.env.reply_to = reply_to;
    m.type = t;
    m.body = (void *)body;
    call_handler(a, &m);
}

static credit_ent_t *cred_find(credit_ent_t **arr, size_t *n, size_t *cap, const char *peer)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*arr)[i].peer, peer) == 0)
            return &(*arr)[i];
    void *p = *arr;
    if (duet_vec_reserve(&p, cap, *n + 1, sizeof(credit_ent_t)))
        return NULL;
    *arr = p;
    credit_ent_t *e = &(*arr)[(*n)++];
    memset(e, 0, sizeof(*e));
    snprintf(e->peer, sizeof(e->peer), "%s", peer);
    return e;
}

/* Message `m` (credited) from a sender is consumed. */
static void return_credit(duet_actor_t *a, const duet_env_t *m)
{
    duet_node_t *n = a->node;
    credit_ent_t *e = cred_find(&a->consumed, &a->nconsumed, &a->capconsumed, m->from);
    if (!e)
        return;
    if (e->epoch != m->epoch) { /* a new incarnation of the sender: its seqs start over */
        e->epoch = m->epoch;
        e->hi = 0;
        e->unreported = 0;
    }
    if (m->seq > e->hi)
        e->hi = m->seq;
    uint64_t batch = n->cfg.credit_window / 4 ? n->cfg.credit_window / 4 : 1;
    if (++e->unreported >= batch) {
        e->unreported = 0;
        sys_credit_t c = {e->hi};
        const char *from = m->from;
        duet_env_t env;
        env_init(&env, DUET_MSG_SYS_CREDIT, a->name, from);
        env.epoch = a->inc; /* whose credit: the sender tells our restarts apart */
        duet_buf_t b = {0};
        if (!encode(n, &env, &c, &b))
            route(n, &env, b.data, b.len);
        duet_buf_cleanup(&b);
    }
}

static watcher_t *wlist_add(watcher_t **arr, size_t *n, size_t *cap, const char *name, uint64_t ref,
                            bool link)
{
    void *p = *arr;
    if (duet_vec_reserve(&p, cap, *n + 1, sizeof(watcher_t)))
        return NULL;
    *arr = p;
    watcher_t *w = &(*arr)[(*n)++];
    snprintf(w->name, sizeof(w->name), "%s", name);
    w->ref = ref;
    w->link = link;
    return w;
}

static bool wlist_del(watcher_t *arr, size_t *n, const char *name, uint64_t ref, bool *link)
{
    for (size_t i = 0; i < *n; i++)
        if (arr[i].ref == ref && (!name || strcmp(arr[i].name, name) == 0)) {
            if (link)
                *link = arr[i].link;
            arr[i] = arr[--*n];
            return true;
        }
    return false;
}

static void rmon_del(duet_node_t *n, const char *watcher, uint64_t ref)
{
    pthread_mutex_lock(&n->lock);
    for (size_t i = 0; i < n->nrmons; i++)
        if (n->rmons[i].ref == ref && strcmp(n->rmons[i].watcher, watcher) == 0) {
            n->rmons[i] = n->rmons[--n->nrmons];
            break;
        }
    pthread_mutex_unlock(&n->lock);
}

static pending_call_t *call_find(duet_actor_t *a, uint64_t seq, size_t *idx)
{
    for (size_t i = 0; i < a->ncalls; i++)
        if (a->calls[i].seq == seq) {
            *idx = i;
            return &a->calls[i];
        }
    return NULL;
}

static void call_remove(duet_actor_t *a, size_t i)
{
    duet_free(a->calls[i].wire);
    a->calls[i] = a->calls[--a->ncalls];
}

static void handle_msg(duet_actor_t *a, duet_msg_t *m)
{
    duet_node_t *n = a->node;
    const duet_env_t *e = &m->env;
    switch (e->type) {
    case DUET_MSG_SYS_CREDIT: {
        const sys_credit_t *c = m->body;
        credit_ent_t *ce = cred_find(&a->credits, &a->ncredits, &a->capcredits, e->from);
        if (!ce)
            return;
        /* every message up to seq c->total is consumed, or gone */
        while (ce->fly_n && ce->fly[ce->fly_head] <= c->total) {
            ce->fly_head = (ce->fly_head + 1) % n->cfg.credit_window;
            ce->fly_n--;
        }
        ce->epoch = e->epoch;
        if (ce->blocked && ce->fly_n < n->cfg.credit_window) {
            ce->blocked = false;
            duet_sys_writable_t w = {(char *)e->from};
            deliver_local_sys(a, &duet_msg_sys_writable, e->from, &w, 0);
        }
        return;
    }
    case DUET_MSG_SYS_MONITOR: {
        const sys_monitor_t *mon = m->body;
        wlist_add(&a->watchers, &a->nwatchers, &a->capwatchers, e->from, mon->ref, mon->link);
        if (mon->link) /* two-way: I also watch the requester */
            wlist_add(&a->outgoing, &a->nout, &a->capout, e->from, mon->ref, true);
        return;
    }
    case DUET_MSG_SYS_DEMONITOR: {
        const sys_monitor_t *mon = m->body;
        wlist_del(a->watchers, &a->nwatchers, e->from, mon->ref, NULL);
        return;
    }
    case DUET_MSG_SYS_STOP: {
        const sys_stop_t *s = m->body;
        if (!a->exit_reason)
            a->exit_reason = duet_strdup(s->reason && s->reason[0] ? s->reason : "normal");
        return;
    }
    case DUET_MSG_SYS_DOWN:
    case DUET_MSG_SYS_EXIT: {
        const duet_sys_down_t *d = m->body;
        bool link = false;
        if (!wlist_del(a->outgoing, &a->nout, d->actor, d->ref, &link))
            return; /* stale: demonitored, or already reported */
        wlist_del(a->watchers, &a->nwatchers, d->actor, d->ref, NULL);
        rmon_del(n, a->name, d->ref);
        if (link && !a->opts.trap_exit) {
            if (d->reason && strcmp(d->reason, "normal") != 0 && !a->exit_reason) {
                char reason[1200];
                snprintf(reason, sizeof(reason), "linked: %s: %s", d->actor, d->reason);
                a->exit_reason = duet_strdup(reason);
            }
            return;
        }
        if (link && e->type == DUET_MSG_SYS_DOWN) {
            /* a link broken by noproc arrives as DOWN from undeliverable(): show it as EXIT */
            m->type = &duet_msg_sys_exit;
            m->env.type = DUET_MSG_SYS_EXIT;
        }
        call_handler(a, m);
        return;
    }
    default: break;
    }
    if (e->flags & DUET_ENV_F_REPLY) {
        size_t idx;
        pending_call_t *pc = call_find(a, e->reply_to, &idx);
        if (!pc) {
            atomic_fetch_add(&n->st_dup, 1);
            return; /* late or duplicate reply */
        }
        timer_del(a, pc->timer);
        call_remove(a, idx);
        call_handler(a, m);
        return;
    }
    dedup_ent_t *dd = NULL;
    if (e->flags & DUET_ENV_F_DEDUP) {
        if (!a->dedup && !(a->dedup = duet_calloc(DEDUP_N, sizeof(*a->dedup)))) {
            call_handler(a, m);
            return;
        }
        for (size_t i = 0; i < DEDUP_N; i++) {
            dedup_ent_t *d = &a->dedup[i];
            if (d->used && d->seq == e->seq && d->epoch == e->epoch &&
                strcmp(d->from, e->from) == 0) {
                atomic_fetch_add(&n->st_dup, 1);
                if (d->reply) { /* the reply may have been lost: send it again */
                    duet_env_t re;
                    size_t off;
                    if (!duet_env_decode(d->reply, d->reply_len, &re, &off))
                        route(n, &re, d->reply, d->reply_len);
                }
                if (e->flags & DUET_ENV_F_CREDIT)
                    return_credit(a, e);
                return;
            }
        }
        dd = &a->dedup[a->dedup_next];
        a->dedup_next = (a->dedup_next + 1) % DEDUP_N;
        duet_free(dd->reply);
        memset(dd, 0, sizeof(*dd));
        dd->used = true;
        dd->seq = e->seq;
        dd->epoch = e->epoch;
        snprintf(dd->from, sizeof(dd->from), "%s", e->from);
    }
    a->cur_req = dd ? e : NULL;
    a->cur_dedup = dd;
    call_handler(a, m);
    a->cur_req = NULL;
    a->cur_dedup = NULL;
    if (e->flags & DUET_ENV_F_CREDIT)
        return_credit(a, e);
}

static void defer(duet_actor_t *a, qent_t *q)
{
    q->next = NULL;
    if (a->def_tail)
        a->def_tail->next = q;
    else
        a->def_head = q;
    a->def_tail = q;
}

static void start_actor(duet_actor_t *a)
{
    loop_t *l = a->loop;
    if (l->dedicated && !a->node->sim) { /* name the thread after its actor (top, perf) */
        char tn[16];
        snprintf(tn, sizeof(tn), "%.15s", a->name);
        pthread_setname_np(pthread_self(), tn);
    }
    if (l->dedicated && l->in && !l->owner) {
        l->owner = a; /* frames on the loop's socket go straight to it */
        actor_ref(a);
    }
    void *state = NULL;
    duet_status_t st = a->ops->start ? a->ops->start(a, a->arg, &state) : DUET_OK;
    a->state = state;
    a->st = A_RUNNING;
    if (st) {
        char reason[1100];
        snprintf(reason, sizeof(reason), "start: %s: %s", duet_status_str(st), duet_error());
        terminate(a, reason); /* stop() gets whatever state start() left */
    }
}

static void dispatch(loop_t *l, qent_t *q)
{
    duet_actor_t *a = q->actor;
    duet_node_t *n = l->node;
    if (a->inc != q->inc || a->st == A_DEAD) {
        if (q->kind == QE_MSG && q->msg)
            undeliverable_msg(n, q->msg, "actor stopped");
        else if (q->kind == QE_MSG)
            undeliverable(n, q->data, q->len, "actor stopped");
        qent_free(q);
        return;
    }
    switch (q->kind) {
    case QE_START: start_actor(a); break;
    case QE_STOP:
    case QE_KILL: terminate(a, (const char *)q->data); break;
    case QE_STALL: {
        uint64_t until = duet_node_now_ns(n) + q->arg;
        if (until > a->stalled_until) {
            a->stalled_until = until;
            timer_add(a, T_STALL_END, q->arg, 0, 0, 0, NULL);
        }
        break;
    }
    case QE_MSG: {
        if (a->stalled_until && a->stalled_until > duet_node_now_ns(n)) {
            defer(a, q); /* put back in order when the stall ends */
            return;
        }
        duet_msg_t *m = q->msg;
        q->msg = NULL;
        if (!m && duet_msg_decode(q->data, q->len, &n->lim, n->name, &m)) {
            atomic_fetch_add(&n->st_decode, 1);
            DUET_LOG_W(MOD, "node %s: to %s: rejected: %s", n->name, a->name, duet_error());
            break;
        }
        atomic_fetch_add(&n->st_delivered, 1);
        handle_msg(a, m);
        duet_msg_destroy(&m);
        break;
    }
    }
    if (a->st == A_RUNNING && a->exit_reason) {
        char *r = a->exit_reason;
        a->exit_reason = NULL;
        terminate(a, r);
        duet_free(r);
    }
    qent_free(q);
}

static void stall_end(duet_actor_t *a)
{
    a->stalled_until = 0;
    if (!a->def_head)
        return;
    loop_t *l = a->loop;
    pthread_mutex_lock(&l->lock);
    a->def_tail->next = l->head;
    l->head = a->def_head;
    if (!l->tail)
        l->tail = a->def_tail;
    atomic_store_explicit(&l->pending, true, memory_order_relaxed);
    pthread_mutex_unlock(&l->lock);
    a->def_head = a->def_tail = NULL;
    loop_wake(l);
}

static void timer_fire(atimer_t *t)
{
    duet_actor_t *a = t->actor;
    int kind = t->kind;
    uint64_t id = t->id, tag = t->tag, arg = t->arg;
    if (t->period) {
        t->at += t->period;
        uint64_t now = duet_node_now_ns(a->node);
        if (t->at < now)
            t->at = now;
        timer_arm(t);
    } else {
        timer_unlink(t);
        duet_free(t);
    }
    if (a->st != A_RUNNING)
        return;
    if (kind == T_USER) {
        duet_sys_timer_t tm = {id, tag};
        deliver_local_sys(a, &duet_msg_sys_timer, a->name, &tm, 0);
    } else if (kind == T_STALL_END) {
        stall_end(a);
    } else if (kind == T_CREDIT) {
        uint64_t now = duet_node_now_ns(a->node);
        uint64_t limit = (uint64_t)a->node->cfg.credit_timeout_ms * 1000000ull;
        uint64_t next = 0; /* earliest deadline of a sender still blocked */
        a->credit_timer = false;
        for (size_t i = 0; i < a->ncredits && a->st == A_RUNNING; i++) {
            credit_ent_t *ce = &a->credits[i];
            if (ce->blocked && now - ce->blocked_since < limit) {
                uint64_t left = limit - (now - ce->blocked_since);
                next = next && next < left ? next : left;
            }
            if (!ce->blocked || now - ce->blocked_since < limit)
                continue;
            DUET_LOG_W(MOD, "%s: no credit from %s for %u ms: resetting its window", a->name,
                       ce->peer, a->node->cfg.credit_timeout_ms);
            ce->fly_n = 0;
            ce->blocked = false;
            char peer[DUET_NAME_MAX];
            snprintf(peer, sizeof(peer), "%s", ce->peer);
            duet_sys_writable_t w = {peer};
            deliver_local_sys(a, &duet_msg_sys_writable, peer, &w, 0);
        }
        if (next && a->st == A_RUNNING && !a->credit_timer &&
            timer_add(a, T_CREDIT, next, 0, 0, 0, NULL) == DUET_OK)
            a->credit_timer = true;
    } else if (kind == T_CALL) {
        size_t idx;
        pending_call_t *pc = call_find(a, arg, &idx);
        if (pc) {
            if (pc->retries_left) {
                pc->retries_left--;
                duet_env_t env;
                size_t off;
                if (!duet_env_decode(pc->wire, pc->len, &env, &off))
                    route(a->node, &env, pc->wire, pc->len);
                timer_add(a, T_CALL, pc->timeout_ns, 0, 0, pc->seq, &pc->timer);
            } else {
                duet_sys_timeout_t to = {pc->seq, pc->to, pc->type, pc->cookie};
                char tocopy[DUET_NAME_MAX];
                snprintf(tocopy, sizeof(tocopy), "%s", pc->to);
                to.to = tocopy;
                call_remove(a, idx);
                deliver_local_sys(a, &duet_msg_sys_timeout, a->name, &to, 0);
            }
        }
    }
    if (a->st == A_RUNNING && a->exit_reason) {
        char *r = a->exit_reason;
        a->exit_reason = NULL;
        terminate(a, r);
        duet_free(r);
    }
}

/* Stop an actor on its own loop: stop callback, timers, table, then tell
 * the watchers (after the name is free, so a supervisor may respawn). */
static void terminate(duet_actor_t *a, const char *reason)
{
    if (a->st == A_DEAD)
        return;
    duet_node_t *n = a->node;
    bool started = a->st == A_RUNNING;
    a->st = A_DEAD;
    if (started && a->ops->stop)
        a->ops->stop(a, a->state, reason);
    a->state = NULL;
    timer_free_all(a);
    loop_t *l = a->loop;
    for (size_t i = 0; i < l->nfds;)
        if (l->fds[i].actor == a)
            l->fds[i] = l->fds[--l->nfds];
        else
            i++;
    for (qent_t *q = a->def_head, *nx; q; q = nx) {
        nx = q->next;
        if (q->msg)
            undeliverable_msg(n, q->msg, "actor stopped");
        else
            undeliverable(n, q->data, q->len, "actor stopped");
        duet_msg_destroy(&q->msg);
        duet_free(q);
        actor_unref(a);
    }
    a->def_head = a->def_tail = NULL;
    if (l->dedicated && !n->sim)
        atomic_store(&l->quit, true); /* its thread ends after this callback */
    if (a->direct[0]) {
        /* its loop's socket closes: senders go through the node again (and
         * get noproc from there); done while the name is still ours, so
         * that it cannot overwrite a new incarnation's entry */
        duet__registry_update_direct(n->reg, a->name, n->name, a->inc, "");
        announce(n, NULL, a->name, a->inc, "");
    }
    pthread_mutex_lock(&n->lock);
    tab_del(n, a);
    for (size_t i = 0; i < n->nrmons;)
        if (strcmp(n->rmons[i].watcher, a->name) == 0)
            n->rmons[i] = n->rmons[--n->nrmons];
        else
            i++;
    pthread_cond_broadcast(&n->cond);
    pthread_mutex_unlock(&n->lock);
    DUET_LOG_D(MOD, "node %s: %s stopped: %s", n->name, a->name, reason);
    for (size_t i = 0; i < a->nwatchers; i++) {
        watcher_t *w = &a->watchers[i];
        duet_sys_down_t d = {w->ref, a->name, (char *)reason};
        sys_send(n, a->name, w->name, w->link ? &duet_msg_sys_exit : &duet_msg_sys_down, &d, 0);
    }
    a->nwatchers = 0;
    actor_unref(a); /* the table's reference */
}

/* ---- loop threads --------------------------------------------------------- */

/* Run what is queued; true if there was anything. */
static bool loop_run_queue(loop_t *l)
{
    pthread_mutex_lock(&l->lock);
    qent_t *q = l->head;
    l->head = l->tail = NULL;
    atomic_store_explicit(&l->pending, false, memory_order_relaxed);
    pthread_mutex_unlock(&l->lock);
    bool any = q != NULL;
    while (q) {
        qent_t *nx = q->next;
        dispatch(l, q);
        q = nx;
    }
    return any;
}

static void loop_fire_timers(loop_t *l)
{
    uint64_t now = duet_now_ns();
    while (l->nheap && l->heap[0]->at <= now) {
        atimer_t *t = l->heap[0];
        th_remove(l, t);
        timer_fire(t);
    }
}

static bool loop_done(loop_t *l)
{
    if (atomic_load(&l->quit))
        return true;
    return false;
}

/* Move what the loop's own socket holds onto its queue. True: stopped at
 * the cap with more to read. *got (may be NULL) is set when a frame came. */
static bool loop_drain_in(loop_t *l, bool *got)
{
    for (int k = 0; k < 1024; k++) {
        char peer[DUET_NAME_MAX];
        duet_status_t st = duet_zep_recv_buf(l->in, peer, &l->rxbuf);
        if (st == DUET_ERR_AGAIN)
            return false;
        if (got)
            *got = true;
        if (st) {
            DUET_LOG_W(MOD, "%s", duet_error());
            continue;
        }
        on_direct_frame(l, peer, l->rxbuf.data, l->rxbuf.len);
    }
    return true;
}

/* A sched_yield that took longer than this gave the CPU to another thread:
 * the CPU is contended and spinning takes time from real work. */
#define SPIN_YIELD_CONTENDED_NS 20000u

/* Poll the loop's fds, queue and timers without sleeping until one has
 * something or spin_ns after `since` (the last work) pass. A peer that
 * answers within that time finds this thread awake: no eventfd write, no
 * futex or poll wake-up, no scheduling delay (tens of µs on a busy host,
 * against rounds of a few hundred). Each turn yields the CPU; once a yield
 * shows that another thread wanted it (the CPU is oversubscribed: tests,
 * a shared host), the spin ends and the loop sleeps as it would without
 * one. Returns poll()'s result (> 0: fds ready); 0 with `pending` set: the
 * queue has entries. */
static int loop_spin(loop_t *l, struct pollfd *pf, size_t nf, uint64_t since)
{
    uint64_t end = since + l->spin_ns;
    if (l->nheap && l->heap[0]->at < end)
        end = l->heap[0]->at; /* a timer: go back and fire it */
    atomic_fetch_add_explicit(&l->spins, 1, memory_order_relaxed);
    int r = 0;
    for (;;) {
        if (atomic_load_explicit(&l->pending, memory_order_relaxed) || (r = poll(pf, nf, 0)) != 0) {
            if (r >= 0)
                atomic_fetch_add_explicit(&l->spin_hits, 1, memory_order_relaxed);
            return r < 0 ? 0 : r;
        }
        uint64_t now = duet_now_ns();
        if (now >= end || atomic_load_explicit(&l->quit, memory_order_relaxed))
            return 0;
        sched_yield();
        if (duet_now_ns() - now > SPIN_YIELD_CONTENDED_NS)
            return 0;
    }
}

/* Every LPEER_SERVICE_MS, each DEALER processes its pending connection
 * events (duet_zep_dealer_service): without it, a DEALER to a peer that
 * restarts while nothing is sent on it holds each dead connection's pipes
 * and buffers, and a control node grew by tens of KiB per peer restart.
 * Returns the ms until the next sweep. */
#define LPEER_SERVICE_MS 1000

static int loop_service_peers(loop_t *l)
{
    uint64_t now = duet_now_ns();
    if (now >= l->service_at) {
        for (size_t i = 0; i < l->nlpeers; i++)
            duet_zep_dealer_service(l->lpeers[i].sock);
        l->service_at = now + LPEER_SERVICE_MS * 1000000ull;
        return LPEER_SERVICE_MS;
    }
    return (int)((l->service_at - now + 999999) / 1000000);
}

static void *loop_main(void *arg)
{
    loop_t *l = arg;
    struct pollfd pf[64];
    tls_loop = l;
    tls_qpool_on = true;
    int zfd = -1; /* the inbound socket's signal fd: poll it only after EAGAIN */
    size_t zfd_len = sizeof(zfd);
    if (l->in && zmq_getsockopt(duet_zep_socket(l->in), ZMQ_FD, &zfd, &zfd_len))
        zfd = -1;
    uint64_t last_work = 0;
    while (!loop_done(l)) {
        bool got = false;
        bool more_in = l->in && loop_drain_in(l, &got);
        got |= loop_run_queue(l);
        loop_fire_timers(l);
        if (got && l->spin_ns)
            last_work = duet_now_ns();
        int timeout = -1;
        if (l->nheap) {
            uint64_t now = duet_now_ns(), at = l->heap[0]->at;
            timeout = at <= now ? 0 : (int)DUET_MIN((at - now + 999999) / 1000000, 1000);
        }
        if (l->nbacklog) {
            loop_flush(l);
            if (l->nbacklog && (timeout < 0 || timeout > 2))
                timeout = 2; /* retry peers that are not connected yet */
        }
        if (l->nlpeers) {
            int to = loop_service_peers(l);
            if (timeout < 0 || timeout > to)
                timeout = to;
        }
        if (more_in)
            timeout = 0;
        pf[0].fd = l->efd;
        pf[0].events = POLLIN;
        size_t nf = 1;
        if (zfd >= 0) {
            pf[1].fd = zfd;
            pf[1].events = POLLIN;
            nf = 2;
        }
        size_t first_fd = nf;
        for (size_t i = 0; i < l->nfds && nf < DUET_ARRAY_LEN(pf); i++, nf++) {
            pf[nf].fd = l->fds[i].fd;
            pf[nf].events = l->fds[i].events;
        }
        int r = 0;
        if (timeout != 0 && l->spin_ns && last_work) {
            r = loop_spin(l, pf, nf, last_work);
            last_work = 0; /* one spin per burst of work: an idle loop goes to sleep */
            if (r > 0 || atomic_load_explicit(&l->pending, memory_order_relaxed) ||
                (l->nheap && l->heap[0]->at <= duet_now_ns()))
                timeout = 0; /* handle it below without sleeping */
        }
        pthread_mutex_lock(&l->lock);
        bool empty = l->head == NULL;
        l->sleeping = empty && timeout != 0;
        pthread_mutex_unlock(&l->lock);
        if (!empty)
            timeout = 0;
        if (r == 0)
            r = poll(pf, nf, timeout);
        pthread_mutex_lock(&l->lock);
        l->sleeping = false;
        pthread_mutex_unlock(&l->lock);
        if (r <= 0)
            continue;
        if (pf[0].revents & POLLIN) {
            uint64_t v;
            ssize_t rr = read(l->efd, &v, sizeof(v));
            (void)rr;
        }
        for (size_t i = first_fd; i < nf; i++) {
            if (!pf[i].revents)
                continue;
            /* find the watch again: a handler may have removed it */
            for (size_t k = 0; k < l->nfds; k++)
                if (l->fds[k].fd == pf[i].fd) {
                    fdwatch_t w = l->fds[k];
                    duet_sys_fd_t f = {w.fd, (uint32_t)pf[i].revents, w.tag};
                    deliver_local_sys(w.actor, &duet_msg_sys_fd, w.actor->name, &f, 0);
                    if (w.actor->st == A_RUNNING && w.actor->exit_reason) {
                        char *rs = w.actor->exit_reason;
                        w.actor->exit_reason = NULL;
                        terminate(w.actor, rs);
                        duet_free(rs);
                    }
                    break;
                }
        }
    }
    if (l->in) {
        /* what reached the socket before it closes: noproc, DOWN as usual */
        for (int guard = 0; guard < 64 && loop_drain_in(l, NULL); guard++)
            ;
        loop_run_queue(l);
    }
    loop_close_peers(l);
    duet_zep_destroy(&l->in);
    if (l->owner)
        actor_unref(l->owner);
    l->owner = NULL;
    qpool_drain();
    tls_loop = NULL;
    return NULL;
}

static void sim_loop_step(void *arg)
{
    loop_t *l = arg;
    l->sim_ev = 0;
    /* a batch per event (one event per message costs a heap push and pop);
     * entries queued meanwhile are taken in order, so no wake-up for them */
    l->sim_scheduled = true;
    for (int k = 0; k < 64; k++) {
        pthread_mutex_lock(&l->lock);
        qent_t *q = l->head;
        if (q) {
            l->head = q->next;
            if (!l->head)
                l->tail = NULL;
        }
        pthread_mutex_unlock(&l->lock);
        if (!q)
            break;
        dispatch(l, q);
    }
    l->sim_scheduled = false;
    if (l->head)
        loop_wake(l);
}

/* A dedicated loop of a bound node gets an inbound socket of its own next
 * to the node's address: "<addr>.L<id>" for inproc/ipc, an OS-chosen port
 * on the same host for tcp. Without one its actor is reached through the
 * node's ROUTER as before. */
static void loop_open_in(loop_t *l)
{
    duet_node_t *n = l->node;
    if (!l->dedicated || !n->zep || !n->cfg.bind)
        return;
    const char *ep = duet_zep_endpoint(n->zep);
    char addr[256];
    int k = -1;
    if (strncmp(ep, "inproc://", 9) == 0 || strncmp(ep, "ipc://", 6) == 0) {
        k = snprintf(addr, sizeof(addr), "%s.L%u", ep, l->id);
    } else if (strncmp(ep, "tcp://", 6) == 0 && strrchr(ep, ':') > ep + 5) {
        k = snprintf(addr, sizeof(addr), "%.*s:*", (int)(strrchr(ep, ':') - ep), ep);
    }
    if (k < 0 || (size_t)k >= sizeof(addr))
        return;
    if (duet_zep_create_sibling(n->zep, addr, &l->in) != DUET_OK) {
        DUET_LOG_D(MOD, "node %s: no loop socket (%s); using the node's", n->name, duet_error());
        duet_error_clear();
    }
}

/* How long a dedicated loop spins: the spawn option, else $DUET_SPIN_US
 * (read once), else DUET_DEFAULT_SPIN_US. */
static int32_t g_spin_env = -2; /* -2: not read yet */
static pthread_once_t g_spin_once = PTHREAD_ONCE_INIT;

static void read_spin_env(void)
{
    const char *e = getenv("DUET_SPIN_US");
    char *end;
    long v = e && *e ? strtol(e, &end, 10) : -3;
    if (v == -3 || *end || v < -1 || v > 1000000) {
        if (e && *e)
            DUET_LOG_W(MOD, "DUET_SPIN_US=%s: not a number of µs in [-1, 1000000]; using %d", e,
                       DUET_DEFAULT_SPIN_US);
        g_spin_env = DUET_DEFAULT_SPIN_US;
    } else {
        g_spin_env = (int32_t)v;
    }
}

static uint64_t spin_ns_for(const duet_spawn_opts_t *o)
{
    if (!o || o->mode != DUET_RUN_THREAD || o->spin_us < 0)
        return 0;
    if (o->spin_us > 0)
        return (uint64_t)o->spin_us * 1000u;
    pthread_once(&g_spin_once, read_spin_env);
    return g_spin_env > 0 ? (uint64_t)g_spin_env * 1000u : 0;
}

static loop_t *loop_new(duet_node_t *n, bool dedicated, uint64_t spin_ns)
{
    loop_t *l = duet_calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->node = n;
    l->dedicated = dedicated;
    l->spin_ns = n->sim ? 0 : spin_ns;
    l->efd = -1;
    l->id = atomic_fetch_add(&n->loop_ids, 1) + 1;
    pthread_mutex_init(&l->lock, NULL);
    if (!n->sim) {
        l->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (l->efd < 0)
            goto err;
        loop_open_in(l);
        if (pthread_create(&l->thread, NULL, loop_main, l))
            goto err_efd;
        l->has_thread = true;
    }
    pthread_mutex_lock(&n->lock);
    l->next_all = n->loops;
    n->loops = l;
    pthread_mutex_unlock(&n->lock);
    return l;
err_efd:
    duet_zep_destroy(&l->in);
    close(l->efd);
err:
    pthread_mutex_destroy(&l->lock);
    duet_free(l);
    return NULL;
}

static void loop_free(loop_t *l)
{
    for (qent_t *q = l->head, *nx; q; q = nx) {
        nx = q->next;
        qent_free(q);
    }
    if (l->sim_ev && l->node->sim)
        duet_simnet_cancel(l->node->sim, l->sim_ev);
    if (l->efd >= 0)
        close(l->efd);
    duet_free(l->heap);
    duet_free(l->fds);
    duet_free(l->lpeers);
    duet_free(l->rc);
    duet_strmap_destroy(&l->rcidx);
    duet_zep_destroy(&l->in);
    duet_buf_cleanup(&l->rxbuf);
    duet_buf_cleanup(&l->decbuf);
    pthread_mutex_destroy(&l->lock);
    duet_free(l);
}

/* ---- public: actors --------------------------------------------------------- */

const char *duet_actor_name(const duet_actor_t *a)
{
    return a->name;
}

duet_node_t *duet_actor_node(const duet_actor_t *a)
{
    return a->node;
}

uint64_t duet_actor_epoch(const duet_actor_t *a)
{
    return a->inc;
}

uint64_t duet_actor_now_ns(const duet_actor_t *a)
{
    return duet_node_now_ns(a->node);
}

void duet_actor_exit(duet_actor_t *a, const char *reason)
{
    if (!a->exit_reason)
        a->exit_reason = duet_strdup(reason ? reason : "normal");
}

static bool valid_name(const char *s)
{
    return s && s[0] && strlen(s) < DUET_NAME_MAX;
}

duet_status_t duet_spawn(duet_node_t *n, const char *name, const duet_actor_ops_t *ops, void *arg,
                         const duet_spawn_opts_t *opts)
{
    if (!valid_name(name) || !ops)
        return duet_errorf(DUET_ERR_INVALID, "spawn on node %s: bad actor name or ops", n->name);
    duet_actor_t *a = duet_calloc(1, sizeof(*a));
    if (!a)
        return duet_errorf(DUET_ERR_NOMEM, "spawn %s", name);
    atomic_init(&a->refs, 1);
    a->node = n;
    snprintf(a->name, sizeof(a->name), "%s", name);
    a->ops = ops;
    a->arg = arg;
    if (opts)
        a->opts = *opts;
    uint64_t k = atomic_fetch_add(&n->inc_counter, 1) + 1;
    a->inc = n->sim ? k : duet_wall_ms() * 1000000ull + k % 1000000ull;
    loop_t *l = n->shared;
    if (a->opts.mode == DUET_RUN_THREAD) {
        l = loop_new(n, true, spin_ns_for(&a->opts));
        if (!l) {
            duet_free(a);
            return duet_errorf(DUET_ERR_IO, "spawn %s: cannot start its thread", name);
        }
    }
    a->loop = l;
    if (l->in)
        snprintf(a->direct, sizeof(a->direct), "%s", duet_zep_endpoint(l->in));
    pthread_mutex_lock(&n->lock);
    duet_actor_t *old = tab_get(n, name);
    if (old || n->destroying) {
        bool busy = old && old->stop_requested;
        pthread_mutex_unlock(&n->lock);
        if (l != n->shared)
            atomic_store(&l->quit, true), loop_wake(l);
        duet_free(a);
        return busy ? DUET_ERR_AGAIN
                    : duet_errorf(DUET_ERR_INVALID, "spawn: actor '%s' already runs on node %s",
                                  name, n->name);
    }
    duet_status_t st = tab_put(n, a);
    if (st) {
        pthread_mutex_unlock(&n->lock);
        duet_free(a);
        return st;
    }
    qent_t *q = qent_new(QE_START, a, NULL, 0);
    if (!q) {
        tab_del(n, a);
        pthread_mutex_unlock(&n->lock);
        duet_free(a);
        return duet_errorf(DUET_ERR_NOMEM, "spawn %s", name);
    }
    bool wake = loop_push(l, q, false);
    pthread_mutex_unlock(&n->lock);
    duet__registry_update_direct(n->reg, name, n->name, a->inc, a->direct);
    announce(n, NULL, name, a->inc, a->direct);
    loop_wake_if(l, wake);
    return DUET_OK;
}

static duet_status_t post_ctl(duet_node_t *n, const char *name, int kind, const char *reason,
                              uint64_t arg, bool front)
{
    pthread_mutex_lock(&n->lock);
    duet_actor_t *a = tab_get(n, name);
    if (!a) {
        pthread_mutex_unlock(&n->lock);
        return duet_errorf(DUET_ERR_NOT_FOUND, "no actor '%s' on node %s", name, n->name);
    }
    qent_t *q = qent_new(kind, a, reason, reason ? strlen(reason) : 0);
    if (!q) {
        pthread_mutex_unlock(&n->lock);
        return duet_errorf(DUET_ERR_NOMEM, "stop %s", name);
    }
    q->arg = arg;
    if (kind == QE_STOP || kind == QE_KILL)
        a->stop_requested = true;
    loop_t *l = a->loop;
    bool wake = loop_push(l, q, front);
    pthread_mutex_unlock(&n->lock);
    loop_wake_if(l, wake);
    return DUET_OK;
}

duet_status_t duet_stop(duet_node_t *n, const char *name, const char *reason)
{
    if (!valid_name(name))
        return duet_errorf(DUET_ERR_INVALID, "stop: bad actor name");
    if (duet_node_has_actor(n, name)) {
        duet_status_t st = post_ctl(n, name, QE_STOP, reason ? reason : "normal", 0, false);
        if (st != DUET_ERR_NOT_FOUND)
            return st;
    }
    /* elsewhere: ask its node, behind the messages already sent to it */
    sys_stop_t s = {(char *)(reason ? reason : "normal")};
    duet_error_clear();
    duet_status_t st = sys_send(n, "", name, &sys_stop_type, &s, 0);
    if (st == DUET_ERR_NOT_FOUND && !duet_error()[0])
        duet_errorf(st, "stop: no actor named '%s'", name);
    return st;
}

duet_status_t duet_kill(duet_node_t *n, const char *name, const char *reason)
{
    return post_ctl(n, name, QE_KILL, reason ? reason : "killed", 0, true);
}

duet_status_t duet_stall(duet_node_t *n, const char *name, uint64_t ns)
{
    return post_ctl(n, name, QE_STALL, NULL, ns, true);
}

bool duet_node_has_actor(duet_node_t *n, const char *name)
{
    pthread_mutex_lock(&n->lock);
    bool r = tab_get(n, name) != NULL;
    pthread_mutex_unlock(&n->lock);
    return r;
}

static duet_status_t send_common(duet_node_t *n, duet_env_t *env, const duet_msg_type_t *t,
                                 const void *body, duet_buf_t *b)
{
    if (!t || duet_msg_type_lookup(t->id) != t)
        return duet_errorf(DUET_ERR_INVALID, "send %s -> %s: message type %s is not registered",
                           env->from, env->to, t ? t->name : "(null)");
    duet_status_t st = encode(n, env, body, b);
    if (st)
        return st;
    st = route(n, env, b->data, b->len);
    if (st == DUET_ERR_NOT_FOUND && !duet_error()[0])
        duet_errorf(st, "send %s -> %s: no such actor", env->from, env->to);
    return st;
}

duet_status_t duet_node_send(duet_node_t *n, const char *from, const char *to,
                             const duet_msg_type_t *t, const void *body)
{
    if (!valid_name(to) || (from && strlen(from) >= DUET_NAME_MAX))
        return duet_errorf(DUET_ERR_INVALID, "send: bad actor name");
    duet_env_t env;
    env_init(&env, t ? t->id : 0, from ? from : "", to);
    duet_buf_t b = {0};
    duet_error_clear();
    duet_status_t st = send_common(n, &env, t, body, &b);
    duet_buf_cleanup(&b);
    return st;
}

static void fly_push(duet_node_t *n, credit_ent_t *ce, uint64_t seq)
{
    ce->fly[(ce->fly_head + ce->fly_n) % n->cfg.credit_window] = seq;
    ce->fly_n++;
}

static credit_ent_t *take_credit(duet_actor_t *a, const char *to, duet_status_t *st)
{
    duet_node_t *n = a->node;
    credit_ent_t *ce = cred_find(&a->credits, &a->ncredits, &a->capcredits, to);
    if (!ce) {
        *st = duet_errorf(DUET_ERR_NOMEM, "credits");
        return NULL;
    }
    if (!ce->fly && !(ce->fly = duet_calloc(n->cfg.credit_window, sizeof(uint64_t)))) {
        *st = duet_errorf(DUET_ERR_NOMEM, "credits");
        return NULL;
    }
    char rnode[DUET_NAME_MAX];
    uint64_t inc = 0;
    if (ce->fly_n >= n->cfg.credit_window && ce->epoch &&
        duet_registry_find(n->reg, to, rnode, &inc) && inc && inc != ce->epoch) {
        /* a receiver that restarted never credits what its dead incarnation
         * held: once the registry knows the new one, that is all gone */
        ce->fly_n = 0;
        ce->epoch = inc;
    }
    if (ce->fly_n >= n->cfg.credit_window) {
        if (!ce->blocked) {
            /* if no credit comes back (receiver restarted, credit lost to a
             * fault) the account is reset after credit_timeout_ms */
            ce->blocked = true;
            ce->blocked_since = duet_node_now_ns(n);
            if (!a->credit_timer &&
                timer_add(a, T_CREDIT, (uint64_t)n->cfg.credit_timeout_ms * 1000000ull, 0, 0, 0,
                          NULL) == DUET_OK)
                a->credit_timer = true;
        }
        *st = DUET_ERR_AGAIN;
        return NULL;
    }
    *st = DUET_OK;
    return ce;
}

duet_status_t duet_send(duet_actor_t *a, const char *to, const duet_msg_type_t *t, const void *body)
{
    if (!valid_name(to))
        return duet_errorf(DUET_ERR_INVALID, "%s: send to a bad actor name", a->name);
    duet_status_t st;
    bool credited = t && t->id > 0xff;
    credit_ent_t *ce = NULL;
    if (credited && !(ce = take_credit(a, to, &st)))
        return st;
    duet_env_t env;
    env_init(&env, t ? t->id : 0, a->name, to);
    env.seq = ++a->seq;
    env.epoch = a->inc;
    if (credited)
        env.flags |= DUET_ENV_F_CREDIT;
    env.trace = a->cur_trace;
    a->txbuf.len = 0;
    duet_error_clear();
    st = send_common(a->node, &env, t, body, &a->txbuf);
    if (a->txbuf.cap > 65536)
        duet_buf_cleanup(&a->txbuf); /* do not keep a large message's buffer */
    if (!st && ce)
        fly_push(a->node, ce, env.seq);
    return st;
}

duet_status_t duet_call(duet_actor_t *a, const char *to, const duet_msg_type_t *t, const void *body,
                        const duet_call_opts_t *opts, uint64_t *seq_out)
{
    if (!valid_name(to))
        return duet_errorf(DUET_ERR_INVALID, "%s: call to a bad actor name", a->name);
    duet_call_opts_t o = opts ? *opts : (duet_call_opts_t){0};
    if (!o.timeout_ms)
        o.timeout_ms = 1000;
    duet_status_t st;
    bool credited = t && t->id > 0xff;
    credit_ent_t *ce = NULL;
    if (credited && !(ce = take_credit(a, to, &st)))
        return st;
    void *p = a->calls;
    if (duet_vec_reserve(&p, &a->capcalls, a->ncalls + 1, sizeof(*a->calls)))
        return duet_errorf(DUET_ERR_NOMEM, "call");
    a->calls = p;
    duet_env_t env;
    env_init(&env, t ? t->id : 0, a->name, to);
    env.seq = ++a->seq;
    env.epoch = a->inc;
    /* a call starts a trace unless it is made while handling a traced message */
    env.trace = a->cur_trace ? a->cur_trace : duet_hash_bytes(&env.seq, 8) ^ a->inc;
    env.flags = DUET_ENV_F_REQUEST | DUET_ENV_F_DEDUP | (credited ? DUET_ENV_F_CREDIT : 0);
    duet_buf_t b = {0};
    duet_error_clear();
    st = send_common(a->node, &env, t, body, &b);
    if (st) {
        duet_buf_cleanup(&b);
        return st;
    }
    if (ce)
        fly_push(a->node, ce, env.seq);
    pending_call_t *pc = &a->calls[a->ncalls++];
    memset(pc, 0, sizeof(*pc));
    pc->seq = env.seq;
    pc->cookie = o.cookie;
    pc->timeout_ns = (uint64_t)o.timeout_ms * 1000000ull;
    pc->retries_left = o.retries;
    pc->type = t->id;
    snprintf(pc->to, sizeof(pc->to), "%s", to);
    pc->wire = b.data; /* kept for retries */
    pc->len = b.len;
    uint64_t seq = env.seq;
    st = timer_add(a, T_CALL, pc->timeout_ns, 0, 0, seq, &pc->timer);
    if (st) {
        call_remove(a, a->ncalls - 1);
        return st;
    }
    if (seq_out)
        *seq_out = seq;
    return DUET_OK;
}

duet_status_t duet_reply(duet_actor_t *a, const duet_env_t *req, const duet_msg_type_t *t,
                         const void *body)
{
    duet_env_t env;
    env_init(&env, t ? t->id : 0, a->name, req->from);
    env.seq = ++a->seq;
    env.epoch = a->inc;
    env.trace = req->trace;
    env.reply_to = req->seq;
    env.flags = DUET_ENV_F_REPLY;
    duet_buf_t b = {0};
    duet_error_clear();
    duet_status_t st = send_common(a->node, &env, t, body, &b);
    dedup_ent_t *dd = NULL;
    if (st == DUET_OK && a->cur_dedup && a->cur_req && a->cur_req->seq == req->seq &&
        strcmp(a->cur_req->from, req->from) == 0) {
        dd = a->cur_dedup;
    } else if (st == DUET_OK && (req->flags & DUET_ENV_F_DEDUP) && a->dedup) {
        /* a reply sent later, from a kept copy of the request's envelope */
        for (size_t i = 0; i < DEDUP_N && !dd; i++)
            if (a->dedup[i].used && a->dedup[i].seq == req->seq &&
                a->dedup[i].epoch == req->epoch && strcmp(a->dedup[i].from, req->from) == 0)
                dd = &a->dedup[i];
    }
    if (dd && !dd->reply) {
        dd->reply = b.data; /* answer retransmissions from here */
        dd->reply_len = b.len;
        b.data = NULL;
    }
    duet_buf_cleanup(&b);
    return st;
}

duet_status_t duet_timer_start_ns(duet_actor_t *a, uint64_t delay_ns, uint64_t period_ns,
                                  uint64_t tag, uint64_t *id_out)
{
    return timer_add(a, T_USER, delay_ns, period_ns, tag, 0, id_out);
}

duet_status_t duet_timer_start(duet_actor_t *a, uint64_t delay_ms, uint64_t period_ms, uint64_t tag,
                               uint64_t *id_out)
{
    return timer_add(a, T_USER, delay_ms * 1000000ull, period_ms * 1000000ull, tag, 0, id_out);
}

duet_status_t duet_timer_cancel(duet_actor_t *a, uint64_t id)
{
    for (atimer_t *t = a->timers; t; t = t->next)
        if (t->id == id && t->kind == T_USER) {
            timer_del(a, id);
            return DUET_OK;
        }
    return duet_errorf(DUET_ERR_NOT_FOUND, "%s: no timer %llu", a->name, (unsigned long long)id);
}

static duet_status_t monitor_common(duet_actor_t *a, const char *target, bool link,
                                    uint64_t *ref_out)
{
    duet_node_t *n = a->node;
    if (!valid_name(target))
        return duet_errorf(DUET_ERR_INVALID, "%s: monitor of a bad actor name", a->name);
    uint64_t ref = ++a->next_ref;
    if (!wlist_add(&a->outgoing, &a->nout, &a->capout, target, ref, link))
        return duet_errorf(DUET_ERR_NOMEM, "monitor");
    if (link && !wlist_add(&a->watchers, &a->nwatchers, &a->capwatchers, target, ref, true)) {
        a->nout--;
        return duet_errorf(DUET_ERR_NOMEM, "link");
    }
    char tnode[DUET_NAME_MAX];
    if (!duet_node_has_actor(n, target) && duet_registry_find(n->reg, target, tnode, NULL) &&
        strcmp(tnode, n->name) != 0) {
        /* remember it: if that node goes silent, DOWN "noconnection" comes from here */
        pthread_mutex_lock(&n->lock);
        void *p = n->rmons;
        if (!duet_vec_reserve(&p, &n->caprmons, n->nrmons + 1, sizeof(*n->rmons))) {
            n->rmons = p;
            remote_mon_t *rm = &n->rmons[n->nrmons++];
            snprintf(rm->watcher, sizeof(rm->watcher), "%s", a->name);
            snprintf(rm->target, sizeof(rm->target), "%s", target);
            snprintf(rm->node, sizeof(rm->node), "%s", tnode);
            rm->ref = ref;
            rm->link = link;
        }
        pthread_mutex_unlock(&n->lock);
    }
    sys_monitor_t mon = {ref, link};
    duet_status_t st = sys_send(n, a->name, target, &sys_monitor_type, &mon, 0);
    if (st == DUET_ERR_NOT_FOUND) {
        /* no such actor: DOWN "noproc" arrives like any other */
        duet_sys_down_t d = {ref, (char *)target, (char *)"noproc"};
        st = sys_send(n, target, a->name, link ? &duet_msg_sys_exit : &duet_msg_sys_down, &d, 0);
        if (st == DUET_ERR_NOT_FOUND) { /* we are not in the table yet (start): post directly */
            duet_env_t env;
            env_init(&env, link ? DUET_MSG_SYS_EXIT : DUET_MSG_SYS_DOWN, target, a->name);
            duet_buf_t b = {0};
            if (!(st = encode(n, &env, &d, &b)))
                st = post_local(n, a->name, b.data, b.len);
            duet_buf_cleanup(&b);
        }
    }
    if (st)
        return st;
    if (ref_out)
        *ref_out = ref;
    return DUET_OK;
}

duet_status_t duet_monitor(duet_actor_t *a, const char *target, uint64_t *ref_out)
{
    return monitor_common(a, target, false, ref_out);
}

duet_status_t duet_link(duet_actor_t *a, const char *target)
{
    return monitor_common(a, target, true, NULL);
}

duet_status_t duet_demonitor(duet_actor_t *a, uint64_t ref)
{
    for (size_t i = 0; i < a->nout; i++)
        if (a->outgoing[i].ref == ref && !a->outgoing[i].link) {
            char target[DUET_NAME_MAX];
            snprintf(target, sizeof(target), "%s", a->outgoing[i].name);
            a->outgoing[i] = a->outgoing[--a->nout];
            rmon_del(a->node, a->name, ref);
            sys_monitor_t mon = {ref, false};
            sys_send(a->node, a->name, target, &sys_demonitor_type, &mon, 0);
            return DUET_OK;
        }
    return duet_errorf(DUET_ERR_NOT_FOUND, "%s: no monitor %llu", a->name, (unsigned long long)ref);
}

duet_status_t duet_actor_watch_fd(duet_actor_t *a, int fd, short events, uint64_t tag)
{
    if (a->node->sim)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "%s: fds cannot be watched under simulation",
                           a->name);
    loop_t *l = a->loop;
    if (l->nfds >= 63)
        return duet_errorf(DUET_ERR_CAPACITY, "%s: too many fds on one loop", a->name);
    void *p = l->fds;
    if (duet_vec_reserve(&p, &l->capfds, l->nfds + 1, sizeof(*l->fds)))
        return duet_errorf(DUET_ERR_NOMEM, "watch fd");
    l->fds = p;
    l->fds[l->nfds++] = (fdwatch_t){fd, events, tag, a};
    return DUET_OK;
}

duet_status_t duet_actor_unwatch_fd(duet_actor_t *a, int fd)
{
    loop_t *l = a->loop;
    for (size_t i = 0; i < l->nfds; i++)
        if (l->fds[i].fd == fd && l->fds[i].actor == a) {
            l->fds[i] = l->fds[--l->nfds];
            return DUET_OK;
        }
    return duet_errorf(DUET_ERR_NOT_FOUND, "%s: fd %d not watched", a->name, fd);
}

/* ---- public: nodes ---------------------------------------------------------- */

const char *duet_node_name(const duet_node_t *n)
{
    return n->name;
}

void duet_node_stats(duet_node_t *n, duet_node_stats_t *o)
{
    o->sent = atomic_load(&n->st_sent);
    o->delivered = atomic_load(&n->st_delivered);
    o->decode_errors = atomic_load(&n->st_decode);
    o->undeliverable = atomic_load(&n->st_undeliv);
    o->unroutable = atomic_load(&n->st_unroutable);
    o->dup_dropped = atomic_load(&n->st_dup);
    o->peers_down = atomic_load(&n->st_peers_down);
    o->refused = n->zep ? duet_zep_refused(n->zep) : 0;
    o->spins = o->spin_hits = 0;
    pthread_mutex_lock(&n->lock);
    for (loop_t *l = n->loops; l; l = l->next_all) {
        o->spins += atomic_load_explicit(&l->spins, memory_order_relaxed);
        o->spin_hits += atomic_load_explicit(&l->spin_hits, memory_order_relaxed);
    }
    pthread_mutex_unlock(&n->lock);
}

duet_status_t duet_node_create(const duet_node_config_t *cfg, duet_node_t **node_out)
{
    duet_actors_init();
    if (!valid_name(cfg->name) || !cfg->registry)
        return duet_errorf(DUET_ERR_INVALID, "node: name and registry are required");
    duet_status_t st;
    duet_node_t *n = duet_calloc(1, sizeof(*n));
    if (!n)
        return duet_errorf(DUET_ERR_NOMEM, "node %s", cfg->name);
    snprintf(n->name, sizeof(n->name), "%s", cfg->name);
    n->cfg = *cfg;
    n->cfg.name = n->name;
    if (!n->cfg.heartbeat_ms)
        n->cfg.heartbeat_ms = 100;
    if (!n->cfg.heartbeat_misses)
        n->cfg.heartbeat_misses = 3;
    if (!n->cfg.credit_window)
        n->cfg.credit_window = 256;
    if (!n->cfg.credit_timeout_ms)
        n->cfg.credit_timeout_ms = 1000;
    if (!n->cfg.connect_timeout_ms)
        n->cfg.connect_timeout_ms = 3000;
    n->lim.max_size = cfg->max_msg_size ? cfg->max_msg_size : DUET_MSG_SIZE_DEFAULT;
    n->reg = cfg->registry;
    n->sim = cfg->sim;
    n->io_efd = -1;
    n->start_ns = duet_now_ns();
    pthread_mutex_init(&n->lock, NULL);
    pthread_cond_init(&n->cond, NULL);
    pthread_mutex_init(&n->io_lock, NULL);
    if (cfg->faults) {
        size_t nr = duet_fault_plan_count(cfg->faults);
        n->ftimers = duet_calloc(nr ? nr : 1, sizeof(*n->ftimers));
        if (!n->ftimers) {
            st = duet_errorf(DUET_ERR_NOMEM, "node %s", n->name);
            goto err_free;
        }
        for (size_t i = 0; i < nr; i++) {
            const duet_fault_rule_t *r = duet_fault_plan_rule(cfg->faults, i);
            if (r->kind != DUET_FAULT_CRASH && r->kind != DUET_FAULT_STALL)
                continue;
            fault_timer_t *ft = &n->ftimers[n->nftimers++];
            ft->at = r->at_ns;
            ft->rule = r;
            ft->node = n;
        }
    }
    n->shared = loop_new(n, false, 0);
    if (!n->shared) {
        st = duet_errorf(DUET_ERR_IO, "node %s: loop thread", n->name);
        goto err_free;
    }
    if (n->sim) {
        if ((st = duet_simnet_attach(n->sim, n->name, sim_deliver, n)))
            goto err_loop;
        n->hb_ev = duet_simnet_at(n->sim, duet_simnet_now(n->sim), sim_hb_cb, n);
        for (size_t i = 0; i < n->nftimers; i++)
            n->ftimers[i].sim_ev =
                duet_simnet_at(n->sim, n->ftimers[i].at, sim_fault_cb, &n->ftimers[i]);
    } else {
        duet_zep_config_t zc = {.node = n->name,
                                .bind = cfg->bind,
                                .zmq_ctx = cfg->zmq_ctx,
                                .max_msg_size = n->lim.max_size,
                                .allow_wildcard = cfg->allow_wildcard,
                                .curve = cfg->curve,
                                .allow_keys = cfg->allow_keys};
        if ((st = duet_zep_create(&zc, &n->zep)))
            goto err_loop;
        /* the registry names the address really bound (port chosen by the OS for ":*") */
        duet_registry_add_node(n->reg, n->name, cfg->bind ? duet_zep_endpoint(n->zep) : NULL,
                               cfg->curve ? cfg->curve->public_z85 : NULL);
        n->io_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        n->has_io = true; /* before the thread exists: it reads this */
        if (n->io_efd < 0 || pthread_create(&n->io, NULL, io_main, n)) {
            n->has_io = false;
            st = duet_errorf(DUET_ERR_IO, "node %s: I/O thread", n->name);
            goto err_zep;
        }
    }
    *node_out = n;
    return DUET_OK;
err_zep:
    if (n->io_efd >= 0)
        close(n->io_efd);
    duet_zep_destroy(&n->zep);
err_loop:
    atomic_store(&n->shared->quit, true);
    loop_wake(n->shared);
    if (n->shared->has_thread)
        pthread_join(n->shared->thread, NULL);
    loop_free(n->shared);
err_free:
    duet_free(n->ftimers);
    pthread_mutex_destroy(&n->io_lock);
    pthread_cond_destroy(&n->cond);
    pthread_mutex_destroy(&n->lock);
    duet_free(n);
    return st;
}

void duet_node_destroy(duet_node_t **node_p)
{
    if (!node_p || !*node_p)
        return;
    duet_node_t *n = *node_p;
    /* stop every actor: kill entries go ahead of their queues */
    char(*names)[DUET_NAME_MAX] = NULL;
    size_t nn = 0;
    pthread_mutex_lock(&n->lock);
    if (n->tabcount)
        names = duet_calloc(n->tabcount, DUET_NAME_MAX);
    for (size_t i = 0; names && i < n->tabcap; i++)
        if (n->tab[i].name)
            snprintf(names[nn++], DUET_NAME_MAX, "%s", n->tab[i].name);
    pthread_mutex_unlock(&n->lock);
    for (size_t i = 0; i < nn; i++)
        duet_kill(n, names[i], "shutdown");
    duet_free(names);
    if (n->sim) {
        /* run this node's loops until they have stopped their actors */
        for (int guard = 0; guard < 1000000; guard++) {
            pthread_mutex_lock(&n->lock);
            size_t left = n->tabcount;
            pthread_mutex_unlock(&n->lock);
            if (!left)
                break;
            bool any = false;
            for (loop_t *l = n->loops; l; l = l->next_all)
                if (l->head) {
                    if (l->sim_ev)
                        duet_simnet_cancel(n->sim, l->sim_ev);
                    sim_loop_step(l);
                    any = true;
                }
            if (!any)
                break;
        }
        n->destroying = true;
        if (n->hb_ev)
            duet_simnet_cancel(n->sim, n->hb_ev);
        for (size_t i = 0; i < n->nftimers; i++)
            if (n->ftimers[i].sim_ev)
                duet_simnet_cancel(n->sim, n->ftimers[i].sim_ev);
        while (n->sim_items) {
            sim_item_t *s = n->sim_items;
            duet_simnet_cancel(n->sim, s->ev);
            sim_item_unlink(n, s);
            duet_free(s);
        }
        duet_simnet_detach(n->sim, n->name);
    } else {
        uint64_t deadline = duet_now_ns() + 3000000000ull;
        pthread_mutex_lock(&n->lock);
        while (n->tabcount && duet_now_ns() < deadline) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 10000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&n->cond, &n->lock, &ts);
        }
        if (n->tabcount)
            DUET_LOG_E(MOD, "node %s: %zu actors did not stop within 3 s", n->name, n->tabcount);
        n->destroying = true;
        pthread_mutex_unlock(&n->lock);
        for (loop_t *l = n->loops; l; l = l->next_all) {
            atomic_store(&l->quit, true);
            loop_wake(l);
        }
        for (loop_t *l = n->loops; l; l = l->next_all)
            if (l->has_thread)
                pthread_join(l->thread, NULL);
        if (n->has_io) {
            atomic_store(&n->io_quit, true);
            uint64_t one = 1;
            ssize_t r = write(n->io_efd, &one, sizeof(one));
            (void)r;
            pthread_join(n->io, NULL);
        }
    }
    for (loop_t *l = n->loops, *nx; l; l = nx) {
        nx = l->next_all;
        /* timers left by actors that never stopped (timeout above) */
        loop_free(l);
    }
    for (out_item_t *lists[] = {n->io_head, n->backlog, n->delayed}, **pl = lists; pl < lists + 3;
         pl++)
        for (out_item_t *it = *pl, *nx; it; it = nx) {
            nx = it->next;
            duet_free(it);
        }
    duet_zep_destroy(&n->zep);
    if (n->io_efd >= 0)
        close(n->io_efd);
    duet_buf_cleanup(&n->rxbuf);
    duet_free(n->tab);
    duet_free(n->rmons);
    duet_free(n->peers);
    duet_free(n->ftimers);
    pthread_mutex_destroy(&n->io_lock);
    pthread_cond_destroy(&n->cond);
    pthread_mutex_destroy(&n->lock);
    duet_free(n);
    *node_p = NULL;
}
