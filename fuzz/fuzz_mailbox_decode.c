/* libFuzzer target: the control-plane decoder (envelope + schema'd body)
 * on arbitrary bytes. Invariants: no crash, no over-read (ASan), and a
 * frame that decodes re-encodes to bytes that decode to the same frame. */
#include <stdint.h>
#include <string.h>

#include "mailbox/mailbox.h"

typedef struct fz_sub {
    uint32_t a;
    char *s;
} fz_sub_t;
static const duet_field_t fz_sub_fields[] = {
    DUET_FIELD(fz_sub_t, a, DUET_F_U32),
    DUET_FIELD_MAX(fz_sub_t, s, DUET_F_STR, 64),
};
static const duet_schema_t fz_sub_schema = DUET_SCHEMA("fz.sub", fz_sub_t, fz_sub_fields);

typedef struct fz_msg {
    bool b;
    uint16_t u16;
    int64_t i64;
    double f;
    char *name;
    duet_bytes_t blob;
    duet_array_t toks;
    duet_array_t probs;
    duet_array_t names;
    fz_sub_t one;
    duet_array_t subs;
    uint64_t opt;
} fz_msg_t;
static const duet_field_t fz_fields[] = {
    DUET_FIELD(fz_msg_t, b, DUET_F_BOOL),
    DUET_FIELD(fz_msg_t, u16, DUET_F_U16),
    DUET_FIELD(fz_msg_t, i64, DUET_F_I64),
    DUET_FIELD(fz_msg_t, f, DUET_F_F64),
    DUET_FIELD_MAX(fz_msg_t, name, DUET_F_STR, 100),
    DUET_FIELD(fz_msg_t, blob, DUET_F_BIN),
    DUET_FIELD(fz_msg_t, toks, DUET_F_ARR_U32),
    DUET_FIELD(fz_msg_t, probs, DUET_F_ARR_F32),
    DUET_FIELD_MAX(fz_msg_t, names, DUET_F_ARR_STR, 32),
    DUET_FIELD_SUB(fz_msg_t, one, DUET_F_STRUCT, &fz_sub_schema, 0),
    DUET_FIELD_SUB(fz_msg_t, subs, DUET_F_ARR_STRUCT, &fz_sub_schema, 1000),
    DUET_FIELD_OPT(fz_msg_t, opt, DUET_F_U64),
};
DUET_MSG_DEFINE(fz_msg, 0xf01, "fuzz.msg", fz_msg_t, fz_fields)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        once = 1;
        duet_msg_type_register(&fz_msg);
        duet_log_set_level(DUET_LOG_ERROR);
    }
    duet_codec_limits_t lim = {.max_size = 1 << 16};
    duet_msg_t *m = NULL;
    if (duet_msg_decode(data, size, &lim, "fuzz", &m) != DUET_OK)
        return 0;
    duet_buf_t b = {0};
    if (duet_msg_encode(&m->env, m->body, NULL, &b) == DUET_OK) {
        duet_msg_t *m2 = NULL;
        if (duet_msg_decode(b.data, b.len, NULL, "fuzz", &m2) != DUET_OK)
            __builtin_trap(); /* what we encode, we must decode */
        duet_buf_t b2 = {0};
        if (duet_msg_encode(&m2->env, m2->body, NULL, &b2) != DUET_OK || b2.len != b.len ||
            memcmp(b.data, b2.data, b.len) != 0)
            __builtin_trap(); /* encoding is canonical after one round */
        duet_buf_cleanup(&b2);
        duet_msg_destroy(&m2);
    }
    duet_buf_cleanup(&b);
    duet_msg_destroy(&m);
    return 0;
}
