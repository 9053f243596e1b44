/* actors — the actor runtime every duet component runs on.
 *
 * An actor is state plus a behaviour (duet_actor_ops_t), named by a path
 * ("expert/3"), living in a node (one process may hold several nodes, e.g.
 * in tests). Actors are spawned, stopped and sent to by name; the sender
 * never knows whether the receiver shares its thread, its process or its
 * host. The name registry maps actor paths to nodes and nodes to addresses.
 *
 * Threads: a node owns its threads. A DUET_RUN_THREAD actor (compute:
 * attention, expert) gets a loop of its own; DUET_RUN_SHARED actors share
 * the node's light loop. A loop waits in one poll() on its mailbox, its
 * timers and the fds its actors registered (a DUET_RUN_THREAD loop first
 * polls without sleeping for a while after its last message:
 * duet_spawn_opts_t.spin_us). A node with a ZeroMQ endpoint
 * also runs an I/O thread that owns the ROUTER socket. An actor's callbacks
 * always run on its loop's thread, one at a time.
 *
 * Simulation: a node created with a duet_simnet_t runs no threads at all;
 * every loop, timer and network delivery is an event of the simnet, on
 * virtual time, in an order fixed by the seed.
 *
 * Contract of the runtime's own messages (types 1..0xff, always accepted):
 *   sys.timer    {id, tag}          a timer of yours fired
 *   sys.timeout  {seq, to, type, cookie}  a duet_call() got no reply in time
 *   sys.down     {ref, actor, reason}     a monitored actor stopped / its node went silent
 *   sys.exit     {ref, actor, reason}     a linked actor stopped (trap_exit actors only)
 *   sys.noproc   {actor, reason}   the reply to a call whose target does not exist
 *   sys.writable {to}              credits to `to` came back after DUET_ERR_AGAIN
 *   sys.fd       {fd, revents, tag}  an fd you registered is ready
 * Internal: sys.monitor, sys.demonitor, sys.credit, sys.heartbeat, sys.stop,
 * sys.registry (node to node: "actor X now runs here, incarnation E"; sent
 * on every spawn and to a peer when it comes up, so the registries of all
 * processes follow restarts and moves).
 */
#ifndef DUET_ACTORS_H
#define DUET_ACTORS_H

#include <stdatomic.h>

#include "base/base.h"
#include "mailbox/mailbox.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duet_node duet_node_t;
typedef struct duet_actor duet_actor_t;
typedef struct duet_registry duet_registry_t;

/* ---- system messages ---------------------------------------------------- */

typedef struct duet_sys_timer {
    uint64_t id;
    uint64_t tag;
} duet_sys_timer_t;

typedef struct duet_sys_timeout {
    uint64_t seq;
    char *to;
    uint32_t type;
    uint64_t cookie;
} duet_sys_timeout_t;

typedef struct duet_sys_down { /* sys.down and sys.exit */
    uint64_t ref;
    char *actor;
    char *reason;
} duet_sys_down_t;

typedef struct duet_sys_noproc {
    char *actor;
    char *reason;
} duet_sys_noproc_t;

typedef struct duet_sys_writable {
    char *to;
} duet_sys_writable_t;

typedef struct duet_sys_fd {
    int32_t fd;
    uint32_t revents;
    uint64_t tag;
} duet_sys_fd_t;

enum {
    DUET_MSG_SYS_TIMER = 1,
    DUET_MSG_SYS_TIMEOUT,
    DUET_MSG_SYS_DOWN,
    DUET_MSG_SYS_EXIT,
    DUET_MSG_SYS_NOPROC,
    DUET_MSG_SYS_WRITABLE,
    DUET_MSG_SYS_FD,
    DUET_MSG_SYS_MONITOR,
    DUET_MSG_SYS_DEMONITOR,
    DUET_MSG_SYS_CREDIT,
    DUET_MSG_SYS_HEARTBEAT,
    DUET_MSG_SYS_STOP,
    DUET_MSG_SYS_REGISTRY,
};

DUET_API extern const duet_msg_type_t duet_msg_sys_timer;
DUET_API extern const duet_msg_type_t duet_msg_sys_timeout;
DUET_API extern const duet_msg_type_t duet_msg_sys_down;
DUET_API extern const duet_msg_type_t duet_msg_sys_exit;
DUET_API extern const duet_msg_type_t duet_msg_sys_noproc;
DUET_API extern const duet_msg_type_t duet_msg_sys_writable;
DUET_API extern const duet_msg_type_t duet_msg_sys_fd;

/* Register the runtime's message types (done by duet_node_create; call it
 * yourself only to decode system messages without a node). */
DUET_API void duet_actors_init(void);

/* ---- behaviours --------------------------------------------------------- */

typedef struct duet_actor_ops {
    const char *kind;
    /* Build the state. Runs on the actor's loop thread before any message.
     * An error stops the actor (its monitors see DOWN, reason "start: ...");
     * stop() is still called with whatever *state_out was set to. */
    duet_status_t (*start)(duet_actor_t *self, void *arg, void **state_out);
    /* One message. `msg` and its body are valid during the call. Returning an
     * error crashes the actor: it stops with reason "error: <detail>". */
    duet_status_t (*handle)(duet_actor_t *self, void *state, const duet_msg_t *msg);
    /* Free the state (may be NULL). `reason` is "normal", "shutdown", ... */
    void (*stop)(duet_actor_t *self, void *state, const char *reason);
} duet_actor_ops_t;

typedef enum duet_run_mode {
    DUET_RUN_SHARED = 0, /* light actor: shares the node's loop */
    DUET_RUN_THREAD = 1, /* compute actor: a loop and thread of its own */
} duet_run_mode_t;

typedef struct duet_spawn_opts {
    duet_run_mode_t mode;
    bool trap_exit; /* receive sys.exit from links instead of stopping with them */
    /* DUET_RUN_THREAD only: after its loop last handled something, it polls
     * (no sleep) for up to this many µs before it sleeps, so that a message
     * that comes soon (a pipeline peer's answer) finds it awake rather than
     * paying a wake-up. 0: the default (DUET_DEFAULT_SPIN_US, or the
     * environment's DUET_SPIN_US); < 0: never. An idle actor spins once per
     * message it handled, then sleeps. */
    int32_t spin_us;
} duet_spawn_opts_t;

#define DUET_DEFAULT_SPIN_US 1000

/* ---- registry ------------------------------------------------------------ */

/* Per deployment: actor path (or a glob such as "expert/" + "*") -> node, node -> address
 * (and CURVE public key). Filled from the deployment description; nodes keep
 * it current on spawn (epoch) and move. Thread-safe; may be shared by the
 * nodes of one process. */
DUET_API duet_status_t duet_registry_create(duet_registry_t **reg_out);
DUET_API void duet_registry_destroy(duet_registry_t **reg_p);
DUET_API duet_status_t duet_registry_add_node(duet_registry_t *reg, const char *node,
                                              const char *addr, const char *curve_public);
DUET_API duet_status_t duet_registry_add_actor(duet_registry_t *reg, const char *path,
                                               const char *node);
/* Resolve an actor path: exact entries first, then globs in insertion order. */
DUET_API duet_status_t duet_registry_lookup(duet_registry_t *reg, const char *path,
                                            char node_out[DUET_NAME_MAX], uint64_t *epoch_out);
DUET_API duet_status_t duet_registry_node_addr(duet_registry_t *reg, const char *node,
                                               char addr_out[256], char key_out[41]);
/* The same without an error detail (hot paths). */
DUET_API bool duet_registry_find(duet_registry_t *reg, const char *path,
                                 char node_out[DUET_NAME_MAX], uint64_t *epoch_out);
/* Record that `path` now runs on `node` with incarnation `epoch`. */
DUET_API duet_status_t duet_registry_update(duet_registry_t *reg, const char *path,
                                            const char *node, uint64_t epoch);
/* Node names, for iteration: returns the count; copies up to `max` names. */
DUET_API size_t duet_registry_nodes(duet_registry_t *reg, char (*names)[DUET_NAME_MAX], size_t max);

/* ---- nodes -------------------------------------------------------------- */

typedef struct duet_node_config {
    const char *name;
    duet_registry_t *registry; /* required; not owned */
    /* Real transport (ZeroMQ). The node binds exactly `bind` (NULL: does not
     * bind; it can still connect; "tcp://127.0.0.1:*" takes a free port) and
     * records the bound address in the registry; it connects to peers named
     * in the registry whose names sort after its own. */
    const char *bind;
    bool allow_wildcard; /* permit an all-interfaces bind (refused by default) */
    void *zmq_ctx;       /* share one between in-process nodes for inproc:// */
    const duet_curve_keys_t *curve;
    const char *const *allow_keys; /* CURVE public keys allowed to connect */
    /* Simulated transport: no threads; everything runs on the simnet. */
    duet_simnet_t *sim;
    /* Optional fault plan (not owned), applied to every message this node
     * sends. Rule times count from the node's creation (real transports) or
     * from virtual time 0 (simulation). */
    duet_fault_plan_t *faults;
    uint32_t heartbeat_ms;     /* default 100 */
    uint32_t heartbeat_misses; /* peer is down after this many silent intervals; default 3 */
    uint32_t
        credit_window; /* messages a sender may have unprocessed at one receiver; default 256 */
    uint32_t credit_timeout_ms; /* a sender blocked this long without credit resets; default 1000 */
    uint32_t connect_timeout_ms; /* unroutable after this long; default 3000 */
    size_t max_msg_size;         /* default DUET_MSG_SIZE_DEFAULT */
} duet_node_config_t;

DUET_API duet_status_t duet_node_create(const duet_node_config_t *cfg, duet_node_t **node_out);
/* Stops every actor (reason "shutdown"), joins the threads, closes sockets. */
DUET_API void duet_node_destroy(duet_node_t **node_p);
DUET_API const char *duet_node_name(const duet_node_t *node);
DUET_API uint64_t duet_node_now_ns(const duet_node_t *node); /* virtual under simulation */

DUET_API duet_status_t duet_spawn(duet_node_t *node, const char *name, const duet_actor_ops_t *ops,
                                  void *arg, const duet_spawn_opts_t *opts);
/* Ask an actor to stop after the messages already queued (async). The
 * actor may run on another node: the request then travels as sys.stop. */
DUET_API duet_status_t duet_stop(duet_node_t *node, const char *name, const char *reason);
/* Stop it now, ahead of its queue (crash injection uses this). */
DUET_API duet_status_t duet_kill(duet_node_t *node, const char *name, const char *reason);
/* Hold an actor's messages for `ns` (stall injection). */
DUET_API duet_status_t duet_stall(duet_node_t *node, const char *name, uint64_t ns);
DUET_API bool duet_node_has_actor(duet_node_t *node, const char *name);
/* Send from outside any actor (a test, a CLI, the gateway's HTTP thread). */
DUET_API duet_status_t duet_node_send(duet_node_t *node, const char *from, const char *to,
                                      const duet_msg_type_t *type, const void *body);

typedef struct duet_node_stats {
    uint64_t sent, delivered, decode_errors, undeliverable, unroutable, dup_dropped, peers_down;
    uint64_t refused; /* connections the CURVE allow-list turned away */
    /* dedicated loops: spin phases after work (spin_us), and those that found
     * the next message or event without going to sleep */
    uint64_t spins, spin_hits;
} duet_node_stats_t;
DUET_API void duet_node_stats(duet_node_t *node, duet_node_stats_t *out);

/* ---- inside an actor ------------------------------------------------------ */

DUET_API const char *duet_actor_name(const duet_actor_t *self);
DUET_API duet_node_t *duet_actor_node(const duet_actor_t *self);
DUET_API uint64_t duet_actor_epoch(const duet_actor_t *self);
DUET_API uint64_t duet_actor_now_ns(const duet_actor_t *self);
/* Stop this actor when the current callback returns. */
DUET_API void duet_actor_exit(duet_actor_t *self, const char *reason);

/* Send `body` (a T* for `type`'s schema) to the actor named `to`.
 * DUET_ERR_AGAIN: no credit left towards `to` (it is slower than you): the
 * message was not sent; you get sys.writable{to} when credit comes back.
 * DUET_ERR_NOT_FOUND: no such actor. Errors from the codec name the field. */
DUET_API duet_status_t duet_send(duet_actor_t *self, const char *to, const duet_msg_type_t *type,
                                 const void *body);

typedef struct duet_call_opts {
    uint32_t timeout_ms; /* per attempt; 0 = 1000 */
    uint32_t retries;    /* resends of the same seq after a timeout */
    uint64_t cookie;     /* echoed in sys.timeout */
} duet_call_opts_t;

/* Request/reply: send with a fresh seq and wait (asynchronously) for the
 * reply, which reaches handle() with env.reply_to == *seq_out. Retries
 * resend the same seq; the receiver runs its handler once per seq and
 * answers duplicates from its reply cache. After the last attempt times out
 * handle() gets sys.timeout. A call that fails synchronously fires nothing. */
DUET_API duet_status_t duet_call(duet_actor_t *self, const char *to, const duet_msg_type_t *type,
                                 const void *body, const duet_call_opts_t *opts, uint64_t *seq_out);
/* Reply to the request `req` (the message being handled, or a kept copy of its envelope). */
DUET_API duet_status_t duet_reply(duet_actor_t *self, const duet_env_t *req,
                                  const duet_msg_type_t *type, const void *body);

/* Timers: first after delay_ms, then every period_ms (0 = one-shot). */
DUET_API duet_status_t duet_timer_start(duet_actor_t *self, uint64_t delay_ms, uint64_t period_ms,
                                        uint64_t tag, uint64_t *id_out);
DUET_API duet_status_t duet_timer_start_ns(duet_actor_t *self, uint64_t delay_ns,
                                           uint64_t period_ns, uint64_t tag, uint64_t *id_out);
DUET_API duet_status_t duet_timer_cancel(duet_actor_t *self, uint64_t id);

/* Monitors: sys.down{ref} when `target` stops (any reason), does not exist
 * (reason "noproc") or its node stops answering heartbeats ("noconnection"). */
DUET_API duet_status_t duet_monitor(duet_actor_t *self, const char *target, uint64_t *ref_out);
DUET_API duet_status_t duet_demonitor(duet_actor_t *self, uint64_t ref);
/* Links are two-way: when either side stops with a reason other than
 * "normal", the other stops too (reason "linked: <who>: <why>"), unless it
 * traps exits, in which case it gets sys.exit. */
DUET_API duet_status_t duet_link(duet_actor_t *self, const char *target);

/* Wait on an fd in the actor's poll (real transport only): sys.fd{tag}
 * when `events` (POLLIN/POLLOUT) are ready. */
DUET_API duet_status_t duet_actor_watch_fd(duet_actor_t *self, int fd, short events, uint64_t tag);
DUET_API duet_status_t duet_actor_unwatch_fd(duet_actor_t *self, int fd);

/* ---- supervision ---------------------------------------------------------- */

typedef enum duet_sup_strategy {
    DUET_SUP_ONE_FOR_ONE,
    DUET_SUP_ONE_FOR_ALL,
} duet_sup_strategy_t;

typedef enum duet_restart {
    DUET_RESTART_PERMANENT, /* always restarted */
    DUET_RESTART_TRANSIENT, /* restarted unless it stopped with "normal" */
    DUET_RESTART_TEMPORARY, /* never restarted */
} duet_restart_t;

typedef struct duet_child_spec {
    const char *name;
    const duet_actor_ops_t *ops;
    void *arg;
    duet_spawn_opts_t opts;
    duet_restart_t restart;
} duet_child_spec_t;

typedef struct duet_sup_stats {
    atomic_uint_fast64_t restarts;    /* child (re)starts after a failure */
    atomic_uint_fast64_t escalations; /* times the intensity limit was hit */
} duet_sup_stats_t;

/* At most `intensity` restarts within `period_ms`; one more and the
 * supervisor stops all children and itself with reason
 * "shutdown: restart intensity", which its own supervisor sees as a child
 * failure (escalation). A supervisor is an actor: nest one by naming
 * duet_supervisor_ops with a spec as a child. The spec must outlive it. */
typedef struct duet_sup_spec {
    duet_sup_strategy_t strategy;
    uint32_t intensity;
    uint32_t period_ms;
    const duet_child_spec_t *children;
    size_t nchildren;
    duet_sup_stats_t *stats; /* optional, caller-owned */
} duet_sup_spec_t;

DUET_API extern const duet_actor_ops_t duet_supervisor_ops; /* arg: const duet_sup_spec_t * */

#ifdef __cplusplus
}
#endif
#endif /* DUET_ACTORS_H */
