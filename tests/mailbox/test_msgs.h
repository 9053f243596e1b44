/* Message types shared by the mailbox and actor tests. */
#ifndef DUET_TEST_MSGS_H
#define DUET_TEST_MSGS_H
#include "mailbox/mailbox.h"

typedef struct t_route {
    uint32_t expert;
    char *shard;
} t_route_t;

static const duet_field_t t_route_fields[] = {
    DUET_FIELD(t_route_t, expert, DUET_F_U32),
    DUET_FIELD_MAX(t_route_t, shard, DUET_F_STR, 64),
};
static const duet_schema_t t_route_schema = DUET_SCHEMA("route", t_route_t, t_route_fields);

typedef struct t_big {
    bool flag;
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    int32_t i32;
    int64_t i64;
    float f32;
    double f64;
    char *name;
    duet_bytes_t blob;
    duet_array_t tokens; /* u32 */
    duet_array_t ids;    /* u64 */
    duet_array_t deltas; /* i32 */
    duet_array_t big;    /* i64 */
    duet_array_t probs;  /* f32 */
    duet_array_t logits; /* f64 */
    duet_array_t names;  /* str */
    t_route_t primary;
    duet_array_t routes; /* t_route_t */
    uint64_t extra;      /* optional */
} t_big_t;

static const duet_field_t t_big_fields[] = {
    DUET_FIELD(t_big_t, flag, DUET_F_BOOL),
    DUET_FIELD(t_big_t, u8, DUET_F_U8),
    DUET_FIELD(t_big_t, u16, DUET_F_U16),
    DUET_FIELD(t_big_t, u32, DUET_F_U32),
    DUET_FIELD(t_big_t, u64, DUET_F_U64),
    DUET_FIELD(t_big_t, i32, DUET_F_I32),
    DUET_FIELD(t_big_t, i64, DUET_F_I64),
    DUET_FIELD(t_big_t, f32, DUET_F_F32),
    DUET_FIELD(t_big_t, f64, DUET_F_F64),
    DUET_FIELD_MAX(t_big_t, name, DUET_F_STR, 32),
    DUET_FIELD_MAX(t_big_t, blob, DUET_F_BIN, 4096),
    DUET_FIELD_MAX(t_big_t, tokens, DUET_F_ARR_U32, 1 << 20),
    DUET_FIELD(t_big_t, ids, DUET_F_ARR_U64),
    DUET_FIELD(t_big_t, deltas, DUET_F_ARR_I32),
    DUET_FIELD(t_big_t, big, DUET_F_ARR_I64),
    DUET_FIELD(t_big_t, probs, DUET_F_ARR_F32),
    DUET_FIELD(t_big_t, logits, DUET_F_ARR_F64),
    DUET_FIELD_MAX(t_big_t, names, DUET_F_ARR_STR, 16),
    DUET_FIELD_SUB(t_big_t, primary, DUET_F_STRUCT, &t_route_schema, 0),
    DUET_FIELD_SUB(t_big_t, routes, DUET_F_ARR_STRUCT, &t_route_schema, 256),
    DUET_FIELD_OPT(t_big_t, extra, DUET_F_U64),
};

typedef struct t_ping {
    uint64_t n;
    char *text;
} t_ping_t;

static const duet_field_t t_ping_fields[] = {
    DUET_FIELD(t_ping_t, n, DUET_F_U64),
    DUET_FIELD_MAX(t_ping_t, text, DUET_F_STR, 256),
};

DUET_MSG_DEFINE(t_msg_big, DUET_MSG_RANGE_TEST + 1, "test.big", t_big_t, t_big_fields)
DUET_MSG_DEFINE(t_msg_ping, DUET_MSG_RANGE_TEST + 2, "test.ping", t_ping_t, t_ping_fields)
DUET_MSG_DEFINE(t_msg_pong, DUET_MSG_RANGE_TEST + 3, "test.pong", t_ping_t, t_ping_fields)

static inline void t_register_msgs(void)
{
    duet_msg_type_register(&t_msg_big);
    duet_msg_type_register(&t_msg_ping);
    duet_msg_type_register(&t_msg_pong);
}
#endif
