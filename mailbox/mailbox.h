/* mailbox — the control-plane wire: message envelope, schema'd msgpack codec
 * with bounded decoding, the message-type registry, ZeroMQ node endpoints
 * (inproc/ipc/tcp, CURVE + ZAP allow-list), the simulated network (one
 * thread, virtual time, seeded) and the fault-injection plan.
 *
 * Wire format of one control message (one ZeroMQ frame after the routing id):
 *
 *     envelope: msgpack array(8) [type u16, from str, to str, seq u64,
 *                                 epoch u64, trace u64, reply_to u64, flags u32]
 *     body:     msgpack array(n) of the type's schema fields, in order
 *
 * Adding a message type = writing its C struct and a field table, and
 * registering it (DUET_MSG_DEFINE below). Nothing is packed by hand at call
 * sites. The decoder checks every length and count against the bytes
 * present before it allocates, caps the frame size, and names the sender
 * and the field in every error. */
#ifndef DUET_MAILBOX_H
#define DUET_MAILBOX_H

#include "base/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- limits ------------------------------------------------------------ */

#define DUET_NAME_MAX 128                  /* actor path / node name, incl. NUL */
#define DUET_MSG_TYPE_MAX 4096             /* type ids are < this */
#define DUET_MSG_SIZE_DEFAULT (1u << 20)   /* default frame cap: 1 MiB */
#define DUET_MSG_SIZE_HARD_MAX (64u << 20) /* no configuration may exceed this */

/* Type id ranges, one per component, so that issues adding messages do not
 * collide: */
#define DUET_MSG_RANGE_SYS 0x000 /* runtime (DOWN, CREDIT, ...) 1..0xff */
#define DUET_MSG_RANGE_GATEWAY 0x100
#define DUET_MSG_RANGE_SCHEDULER 0x200
#define DUET_MSG_RANGE_ROUTER 0x300
#define DUET_MSG_RANGE_ATTENTION 0x400
#define DUET_MSG_RANGE_EXPERT 0x500
#define DUET_MSG_RANGE_RDMA 0x600
#define DUET_MSG_RANGE_TOPOLOGY 0x700
#define DUET_MSG_RANGE_TEST 0xf00

/* ---- schemas ----------------------------------------------------------- */

typedef enum duet_field_kind {
    DUET_F_BOOL,       /* bool */
    DUET_F_U8,         /* uint8_t */
    DUET_F_U16,        /* uint16_t */
    DUET_F_U32,        /* uint32_t */
    DUET_F_U64,        /* uint64_t */
    DUET_F_I32,        /* int32_t */
    DUET_F_I64,        /* int64_t */
    DUET_F_F32,        /* float */
    DUET_F_F64,        /* double */
    DUET_F_STR,        /* char * (NUL-terminated; NULL encodes as "") */
    DUET_F_BIN,        /* duet_bytes_t */
    DUET_F_ARR_U32,    /* duet_array_t of uint32_t */
    DUET_F_ARR_U64,    /* duet_array_t of uint64_t */
    DUET_F_ARR_I32,    /* duet_array_t of int32_t */
    DUET_F_ARR_I64,    /* duet_array_t of int64_t */
    DUET_F_ARR_F32,    /* duet_array_t of float */
    DUET_F_ARR_F64,    /* duet_array_t of double */
    DUET_F_ARR_STR,    /* duet_array_t of char * */
    DUET_F_STRUCT,     /* an embedded struct described by `sub` */
    DUET_F_ARR_STRUCT, /* duet_array_t of structs described by `sub` */
} duet_field_kind_t;

typedef struct duet_bytes {
    uint8_t *data;
    size_t len;
} duet_bytes_t;

typedef struct duet_array {
    void *data;
    size_t count;
} duet_array_t;

typedef struct duet_schema duet_schema_t;

typedef struct duet_field {
    const char *name;
    duet_field_kind_t kind;
    uint32_t offset;          /* offsetof(struct, member) */
    uint32_t max;             /* max length/count; 0 = bounded only by the frame */
    bool optional;            /* may be missing at the end of the body (zeroed) */
    const duet_schema_t *sub; /* DUET_F_STRUCT / DUET_F_ARR_STRUCT */
} duet_field_t;

struct duet_schema {
    const char *name;
    size_t size; /* sizeof the C struct */
    const duet_field_t *fields;
    size_t nfields;
};

#define DUET_FIELD(T, member, kind)                                                                \
    {                                                                                              \
#member, kind, (uint32_t)offsetof(T, member), 0, false, NULL                               \
    }
#define DUET_FIELD_MAX(T, member, kind, mx)                                                        \
    {                                                                                              \
#member, kind, (uint32_t)offsetof(T, member), (mx), false, NULL                            \
    }
#define DUET_FIELD_OPT(T, member, kind)                                                            \
    {                                                                                              \
#member, kind, (uint32_t)offsetof(T, member), 0, true, NULL                                \
    }
#define DUET_FIELD_SUB(T, member, kind, subschema, mx)                                             \
    {                                                                                              \
#member, kind, (uint32_t)offsetof(T, member), (mx), false, (subschema)                     \
    }
#define DUET_SCHEMA(sname, T, fieldtab)                                                            \
    {                                                                                              \
        sname, sizeof(T), fieldtab, sizeof(fieldtab) / sizeof((fieldtab)[0])                       \
    }

/* One registered message type. */
typedef struct duet_msg_type {
    uint16_t id;
    const char *name; /* "gw.submit", "sys.down" */
    duet_schema_t schema;
} duet_msg_type_t;

/* Define a message type `var` for C struct T with field table `fields`, and
 * typed helpers:
 *     static const duet_msg_type_t var;
 *     static inline const T *var_body(const duet_msg_t *m)   (NULL if other type)
 * Register it once at start-up with duet_msg_type_register(&var) (the
 * runtime registers its own system types). */
#define DUET_MSG_DEFINE(var, type_id, type_name, T, fields)                                        \
    static const duet_msg_type_t var = {(type_id), (type_name),                                    \
                                        DUET_SCHEMA(type_name, T, fields)};                        \
    __attribute__((unused)) static inline const T *var##_body(const duet_msg_t *m)                 \
    {                                                                                              \
        return (const T *)duet_msg_body(m, &var);                                                  \
    }

/* A type used from several .c files: DUET_MSG_DEFINE's descriptor is static,
 * so each file including it would get its own copy, and the registry (which
 * matches descriptors by address) would refuse all but the first. Declare it
 * in the component's header and instantiate it in exactly one .c file. */
#define DUET_MSG_DECLARE(var, T)                                                                   \
    DUET_API extern const duet_msg_type_t var;                                                     \
    __attribute__((unused)) static inline const T *var##_body(const duet_msg_t *m)                 \
    {                                                                                              \
        return (const T *)duet_msg_body(m, &var);                                                  \
    }
#define DUET_MSG_INSTANCE(var, type_id, type_name, T, fields)                                      \
    const duet_msg_type_t var = {(type_id), (type_name), DUET_SCHEMA(type_name, T, fields)}

/* Add a type to the process-wide registry. Registering the same descriptor
 * again is a no-op; another descriptor with the same id or name is an error
 * (DUET_ERR_INVALID). Thread-safe. */
DUET_API duet_status_t duet_msg_type_register(const duet_msg_type_t *type);
DUET_API const duet_msg_type_t *duet_msg_type_lookup(uint16_t id);
DUET_API const duet_msg_type_t *duet_msg_type_by_name(const char *name);

/* ---- envelope and messages -------------------------------------------- */

enum {
    DUET_ENV_F_REQUEST = 1u << 0, /* a duet_call(): expects a reply with reply_to = seq */
    DUET_ENV_F_REPLY = 1u << 1,   /* reply_to names the request's seq */
    DUET_ENV_F_DEDUP = 1u << 2,   /* receiver de-duplicates by (from, epoch, seq) */
    DUET_ENV_F_RETRY = 1u << 3,   /* a retransmission */
    DUET_ENV_F_CREDIT = 1u << 4,  /* counts against the sender's credit window */
};

typedef struct duet_env {
    uint16_t type;
    char from[DUET_NAME_MAX]; /* sending actor path */
    char to[DUET_NAME_MAX];   /* receiving actor path */
    uint64_t seq;             /* per-sender sequence number (per incarnation) */
    uint64_t epoch;           /* sender's incarnation */
    uint64_t trace;           /* trace id carried through a request's messages */
    uint64_t reply_to;        /* seq of the request this replies to, or 0 */
    uint32_t flags;           /* DUET_ENV_F_* */
} duet_env_t;

typedef struct duet_msg {
    duet_env_t env;
    const duet_msg_type_t *type;
    void *body; /* decoded struct of type->schema.size bytes; one allocation */
} duet_msg_t;

/* The decoded body if `m` is of type `t`, else NULL. */
DUET_API const void *duet_msg_body(const duet_msg_t *m, const duet_msg_type_t *t);

/* Decode limits. max_size = 0 means DUET_MSG_SIZE_DEFAULT. */
typedef struct duet_codec_limits {
    size_t max_size;
} duet_codec_limits_t;

/* Encode envelope + body (a T* for env->type's schema) and append to `out`.
 * Fails with DUET_ERR_INVALID when a field exceeds its schema max (naming
 * it), DUET_ERR_RANGE when the frame would exceed `max_size`. */
DUET_API duet_status_t duet_msg_encode(const duet_env_t *env, const void *body,
                                       const duet_codec_limits_t *lim, duet_buf_t *out);

/* Decode one frame. On success *msg_out is a new message (free with
 * duet_msg_destroy). Every length and count is checked against the bytes
 * present before anything is allocated, and the total allocation is bounded
 * by a small multiple of `len`. Errors name the sender (if the envelope got
 * that far), the type and the field, and the byte offset. `peer` (may be
 * NULL) names the transport-level sender for the error text. */
DUET_API duet_status_t duet_msg_decode(const uint8_t *data, size_t len,
                                       const duet_codec_limits_t *lim, const char *peer,
                                       duet_msg_t **msg_out);
/* The same into `scratch` (grown as needed and reused: no allocation per
 * message once it is large enough). *msg_out lives in scratch until its
 * next use; do not pass it to duet_msg_destroy. */
DUET_API duet_status_t duet_msg_decode_scratch(const uint8_t *data, size_t len,
                                               const duet_codec_limits_t *lim, const char *peer,
                                               duet_buf_t *scratch, duet_msg_t **msg_out);
/* Decode only the envelope (no allocation); *body_off_out = where the body starts. */
DUET_API duet_status_t duet_env_decode(const uint8_t *data, size_t len, duet_env_t *env_out,
                                       size_t *body_off_out);
DUET_API void duet_msg_destroy(duet_msg_t **msg_p);

/* Body-only encode/decode for a schema (used by the above; exposed for
 * embedding schema'd values in other formats). The decoded value is one
 * allocation of schema->size + variable data; free with duet_free. */
DUET_API duet_status_t duet_schema_encode(const duet_schema_t *s, const void *value,
                                          duet_buf_t *out);
DUET_API duet_status_t duet_schema_decode(const duet_schema_t *s, const uint8_t *data, size_t len,
                                          size_t *used_out, void **value_out);
/* Deep copy of a decoded or caller-built value into one allocation. */
DUET_API duet_status_t duet_schema_clone(const duet_schema_t *s, const void *value,
                                         void **copy_out);

/* ---- ZeroMQ node endpoint ---------------------------------------------- */

/* One ROUTER per node. It binds exactly the address given (wildcards are
 * refused unless allow_wildcard) and connects to peers; the routing id of
 * each peer is its node name. ZMQ_ROUTER_MANDATORY, linger 0,
 * ZMQ_MAXMSGSIZE. Not thread-safe: one thread owns it (the node's I/O
 * thread). With CURVE keys set, the bound side is a CURVE server and every
 * connecting key is checked against the allow-list by a ZAP handler. */
typedef struct duet_zep duet_zep_t;

typedef struct duet_curve_keys {
    char public_z85[41];
    char secret_z85[41];
} duet_curve_keys_t;

typedef struct duet_zep_config {
    const char *node;    /* this node's name = its routing id */
    const char *bind;    /* "inproc://x", "ipc:///tmp/x", "tcp://127.0.0.1:5555", or NULL */
    void *zmq_ctx;       /* shared context (required for inproc peers); NULL = own */
    size_t max_msg_size; /* 0 = DUET_MSG_SIZE_DEFAULT */
    bool allow_wildcard; /* permit wildcard (all-interface) binds */
    const duet_curve_keys_t *curve; /* NULL = no CURVE */
    const char *const *allow_keys;  /* public keys (z85) allowed to connect; NULL-terminated */
} duet_zep_config_t;

DUET_API bool duet_zep_has_curve(void);
DUET_API duet_status_t duet_curve_keypair(duet_curve_keys_t *out);

DUET_API duet_status_t duet_zep_create(const duet_zep_config_t *cfg, duet_zep_t **ep_out);
DUET_API void duet_zep_destroy(duet_zep_t **ep_p);
/* Connect to a peer node. `server_key` is the peer's CURVE public key (z85)
 * when CURVE is on. Only the peer whose name sorts lower needs to connect;
 * ROUTER-to-ROUTER makes the link usable in both directions. */
DUET_API duet_status_t duet_zep_connect(duet_zep_t *ep, const char *peer, const char *addr,
                                        const char *server_key);
/* Send one frame to a peer node. DUET_ERR_AGAIN: the peer is not (yet)
 * connected or its pipe is full (ROUTER_MANDATORY); callers keep the
 * message and retry, and treat it as unroutable after their deadline. */
DUET_API duet_status_t duet_zep_send(duet_zep_t *ep, const char *peer, const void *data,
                                     size_t len);
/* Receive one frame without blocking. DUET_ERR_AGAIN if none. `*data_out`
 * is heap memory the caller frees with duet_free. */
DUET_API duet_status_t duet_zep_recv(duet_zep_t *ep, char peer_out[DUET_NAME_MAX],
                                     uint8_t **data_out, size_t *len_out);
DUET_API void *duet_zep_socket(duet_zep_t *ep); /* for zmq_poll */
/* The address actually bound (a "tcp://127.0.0.1:*" bind picks a free
 * port; this names it). "" if the endpoint did not bind. */
DUET_API const char *duet_zep_endpoint(const duet_zep_t *ep);
/* Number of connections the ZAP handler refused (for tests and metrics). */
DUET_API uint64_t duet_zep_refused(duet_zep_t *ep);

/* Direct senders. A thread other than the ROUTER's owner (an actor loop) may
 * open its own send-only DEALER to a peer's bound address and send frames on
 * it without a hand-off to the owner. Its routing id is "<node>\x1f<tag>";
 * duet_zep_recv reports such a sender by its node name alone. With CURVE on,
 * it authenticates with this node's keys. DUET_ERR_AGAIN from send: not
 * connected yet (ZMQ_IMMEDIATE) or its pipe is full; keep the frame and
 * retry. One thread uses a DEALER; close it on that thread. */
DUET_API duet_status_t duet_zep_dealer_open(duet_zep_t *ep, unsigned tag, const char *peer,
                                            const char *addr, const char *server_key,
                                            void **sock_out);
DUET_API duet_status_t duet_zep_dealer_send(void *sock, const void *data, size_t len);
/* Let a DEALER act on what its connections did since it was last used.
 * libzmq ends a dead connection's pipes, and attaches a reconnected one's,
 * only when the owning thread calls into the socket; a DEALER nobody sends
 * on keeps every dead connection's buffers (about 13 KiB per peer restart).
 * Call it now and then on idle DEALERs, on their thread. */
DUET_API void duet_zep_dealer_service(void *sock);
/* Another ROUTER in ep's context with ep's options (routing id, limits,
 * CURVE server role under ep's ZAP handler and allow-list), bound to
 * `bind`: an inbound socket that a thread other than ep's owner reads.
 * Destroy it with duet_zep_destroy before ep. */
DUET_API duet_status_t duet_zep_create_sibling(duet_zep_t *ep, const char *bind,
                                               duet_zep_t **sib_out);
/* linger_ms: how long queued frames may still go out after the close. */
DUET_API void duet_zep_dealer_close(void **sock_p, int linger_ms);
/* As duet_zep_recv, but into `buf` (reused: no allocation per frame once
 * it has grown); buf->len is the frame's size. */
DUET_API duet_status_t duet_zep_recv_buf(duet_zep_t *ep, char peer_out[DUET_NAME_MAX],
                                         duet_buf_t *buf);

/* ---- simulated network ------------------------------------------------- */

/* A discrete-event scheduler on virtual time (ns). Everything runs in the
 * caller's thread: events fire in (time, seeded tie-break) order, so a run
 * is reproducible from its seed. The network part delivers frames between
 * named sim nodes with a seeded latency. Every delivery is appended to a
 * trace whose hash tests compare. */
typedef struct duet_simnet duet_simnet_t;
typedef void (*duet_sim_fn)(void *arg);
typedef void (*duet_sim_deliver_fn)(void *node_ctx, const char *from_node, const uint8_t *data,
                                    size_t len);

typedef struct duet_simnet_config {
    uint64_t seed;
    uint64_t latency_min_ns; /* per-message link latency, uniform in [min, max] */
    uint64_t latency_max_ns;
} duet_simnet_config_t;

DUET_API duet_status_t duet_simnet_create(const duet_simnet_config_t *cfg, duet_simnet_t **net_out);
DUET_API void duet_simnet_destroy(duet_simnet_t **net_p);
DUET_API uint64_t duet_simnet_now(const duet_simnet_t *net);
/* Uniform 64-bit draw from the seeded generator. */
DUET_API uint64_t duet_simnet_rand(duet_simnet_t *net);
/* Schedule fn(arg) at virtual time `at` (clamped to now). Returns an event
 * id for duet_simnet_cancel (0 on allocation failure). */
DUET_API uint64_t duet_simnet_at(duet_simnet_t *net, uint64_t at, duet_sim_fn fn, void *arg);
DUET_API bool duet_simnet_cancel(duet_simnet_t *net, uint64_t event_id);
/* Attach a node: frames sent to `name` are delivered through `deliver`. */
DUET_API duet_status_t duet_simnet_attach(duet_simnet_t *net, const char *name,
                                          duet_sim_deliver_fn deliver, void *node_ctx);
DUET_API void duet_simnet_detach(duet_simnet_t *net, const char *name);
/* Send a frame (copied) from one sim node to another after `extra_delay_ns`
 * plus the seeded link latency. DUET_ERR_NOT_FOUND if `to` is not attached. */
DUET_API duet_status_t duet_simnet_send(duet_simnet_t *net, const char *from, const char *to,
                                        const void *data, size_t len, uint64_t extra_delay_ns);
/* Run events until the queue is empty, virtual time passes `until`, `max_events`
 * fired (0 = no limit) or stop() was called. Returns the number fired. */
DUET_API uint64_t duet_simnet_run(duet_simnet_t *net, uint64_t until, uint64_t max_events);
DUET_API bool duet_simnet_step(duet_simnet_t *net); /* one event; false if none */
DUET_API void duet_simnet_stop(duet_simnet_t *net);
/* Append a line to the trace (the network adds one per delivery). */
DUET_API void duet_simnet_trace(duet_simnet_t *net, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
DUET_API uint64_t duet_simnet_trace_hash(const duet_simnet_t *net);
DUET_API uint64_t duet_simnet_delivered(const duet_simnet_t *net);
/* The trace text so far (NUL-terminated, owned by the net). */
DUET_API const char *duet_simnet_trace_text(const duet_simnet_t *net);
DUET_API void duet_simnet_keep_trace_text(duet_simnet_t *net, bool keep);

/* ---- fault injection --------------------------------------------------- */

/* A fault plan is a list of rules. Message rules apply to every message
 * whose sender/receiver actor path, nodes and type match, during
 * [at, at+dur) (times relative to the plan's start, virtual or real):
 *
 *   drop      p=0.2 [from=glob] [to=glob] [type=name] [at=..] [for=..]
 *   delay     min=1ms max=20ms [p=..] [match...]   (fixed: min=max or ms=..)
 *   dup       p=0.1 [match...]
 *   reorder   p=0.3 window=5ms [match...]   (held back up to `window`)
 *   partition nodes=a,b|c,d at=100ms for=200ms   (no traffic across the bar)
 *   crash     actor=expert/3 at=150ms
 *   stall     actor=router at=50ms for=100ms
 *
 * In the file form one rule per line, '#' comments, times take ns/us/ms/s.
 * Globs support '*' anywhere. Every injected fault is logged (DUET_LOG_I,
 * module "fault") with its time and counted. */
typedef struct duet_fault_plan duet_fault_plan_t;

typedef enum duet_fault_kind {
    DUET_FAULT_DROP,
    DUET_FAULT_DELAY,
    DUET_FAULT_DUP,
    DUET_FAULT_REORDER,
    DUET_FAULT_PARTITION,
    DUET_FAULT_CRASH,
    DUET_FAULT_STALL,
    DUET_FAULT_KIND_COUNT,
} duet_fault_kind_t;

typedef struct duet_fault_rule {
    duet_fault_kind_t kind;
    double p;                /* probability (message rules); 0 means 1 */
    const char *from;        /* actor glob, NULL = any */
    const char *to;          /* actor glob, NULL = any */
    const char *type;        /* message type name glob, NULL = any */
    uint64_t at_ns;          /* rule starts */
    uint64_t for_ns;         /* duration; 0 = forever (crash: instant) */
    uint64_t min_ns, max_ns; /* delay; reorder window in max_ns */
    const char *actor;       /* crash / stall */
    const char *nodes;       /* partition: "a,b|c,d" */
} duet_fault_rule_t;

/* What to do with one message: deliver `copies` copies (0 = drop), copy i
 * after delay_ns[i]. */
typedef struct duet_fault_verdict {
    unsigned copies;
    uint64_t delay_ns[4];
} duet_fault_verdict_t;

DUET_API duet_status_t duet_fault_plan_create(uint64_t seed, duet_fault_plan_t **plan_out);
DUET_API void duet_fault_plan_destroy(duet_fault_plan_t **plan_p);
DUET_API duet_status_t duet_fault_plan_add(duet_fault_plan_t *plan, const duet_fault_rule_t *rule);
/* Parse rules from text; errors name the line and the key. */
DUET_API duet_status_t duet_fault_plan_parse(duet_fault_plan_t *plan, const char *text,
                                             const char *source_name);
DUET_API duet_status_t duet_fault_plan_load(duet_fault_plan_t *plan, const char *path);
DUET_API size_t duet_fault_plan_count(const duet_fault_plan_t *plan);
DUET_API const duet_fault_rule_t *duet_fault_plan_rule(const duet_fault_plan_t *plan, size_t i);
/* Decide the fate of one message at plan time `now_ns`. Thread-safe. */
DUET_API void duet_fault_decide(duet_fault_plan_t *plan, uint64_t now_ns, const char *from_node,
                                const char *from, const char *to_node, const char *to,
                                const char *type_name, duet_fault_verdict_t *out);
/* True while `a` and `b` are separated by a partition rule at `now_ns`. */
DUET_API bool duet_fault_partitioned(duet_fault_plan_t *plan, uint64_t now_ns, const char *a,
                                     const char *b);
/* How many faults of each kind were injected. */
DUET_API uint64_t duet_fault_count(const duet_fault_plan_t *plan, duet_fault_kind_t kind);
DUET_API const char *duet_fault_kind_name(duet_fault_kind_t kind);
/* Record an actor-level fault (crash/stall) the runtime carried out. */
DUET_API void duet_fault_note(duet_fault_plan_t *plan, duet_fault_kind_t kind, uint64_t now_ns,
                              const char *what);
DUET_API bool duet_glob_match(const char *pattern, const char *s);

#ifdef __cplusplus
}
#endif
#endif /* DUET_MAILBOX_H */
