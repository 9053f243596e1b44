/* codec — schema'd msgpack encoding (through msgpack-c's packer) and a
 * bounded decoder written here: msgpack-c's stock unpacker reserves
 * count * sizeof(msgpack_object) for an array header before it has seen the
 * elements, so five bytes (0xdd + count) could make it reserve gigabytes.
 * This decoder walks the bytes twice: pass one checks every length and
 * count against the bytes that are present and sums what the decoded value
 * needs, pass two fills one allocation of exactly that size. */
#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "mailbox/mailbox.h"

/* ---- type registry ----------------------------------------------------- */

static _Atomic(const duet_msg_type_t *) g_types[DUET_MSG_TYPE_MAX];
static pthread_mutex_t g_types_lock = PTHREAD_MUTEX_INITIALIZER;

duet_status_t duet_msg_type_register(const duet_msg_type_t *t)
{
    if (!t || !t->name || t->id == 0 || t->id >= DUET_MSG_TYPE_MAX)
        return duet_errorf(DUET_ERR_INVALID, "message type %s: id %u out of range 1..%u",
                           t && t->name ? t->name : "(null)", t ? t->id : 0, DUET_MSG_TYPE_MAX - 1);
    duet_status_t st = DUET_OK;
    pthread_mutex_lock(&g_types_lock);
    const duet_msg_type_t *old = atomic_load(&g_types[t->id]);
    if (old && old != t) {
        st = duet_errorf(DUET_ERR_INVALID, "message type %s: id 0x%x already taken by %s", t->name,
                         t->id, old->name);
        goto out_unlock;
    }
    if (!old) {
        for (unsigned i = 1; i < DUET_MSG_TYPE_MAX; i++) {
            const duet_msg_type_t *o = atomic_load(&g_types[i]);
            if (o && strcmp(o->name, t->name) == 0) {
                st = duet_errorf(DUET_ERR_INVALID,
                                 "message type %s (0x%x): name already used by 0x%x", t->name,
                                 t->id, o->id);
                goto out_unlock;
            }
        }
        atomic_store(&g_types[t->id], t);
    }
out_unlock:
    pthread_mutex_unlock(&g_types_lock);
    return st;
}

const duet_msg_type_t *duet_msg_type_lookup(uint16_t id)
{
    if (id >= DUET_MSG_TYPE_MAX)
        return NULL;
    return atomic_load_explicit(&g_types[id], memory_order_acquire);
}

const duet_msg_type_t *duet_msg_type_by_name(const char *name)
{
    for (unsigned i = 1; i < DUET_MSG_TYPE_MAX; i++) {
        const duet_msg_type_t *o = atomic_load(&g_types[i]);
        if (o && strcmp(o->name, name) == 0)
            return o;
    }
    return NULL;
}

const void *duet_msg_body(const duet_msg_t *m, const duet_msg_type_t *t)
{
    if (!m || !t || m->type != t)
        return NULL;
    return m->body;
}

/* ---- writer (msgpack-c packer into a duet_buf_t) ------------------------ */

static int buf_write(void *data, const char *p, size_t n)
{
    duet_buf_t *b = data;
    if (b->data && b->len + n < b->cap) { /* fast path: room, keep the NUL */
        memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = 0;
        return 0;
    }
    return duet_buf_append(b, p, n) == DUET_OK ? 0 : -1;
}

static size_t field_elem_size(duet_field_kind_t k, const duet_schema_t *sub)
{
    switch (k) {
    case DUET_F_ARR_U32:
    case DUET_F_ARR_I32:
    case DUET_F_ARR_F32: return 4;
    case DUET_F_ARR_U64:
    case DUET_F_ARR_I64:
    case DUET_F_ARR_F64: return 8;
    case DUET_F_ARR_STR: return sizeof(char *);
    case DUET_F_ARR_STRUCT: return sub ? sub->size : 0;
    default: return 0;
    }
}

static duet_status_t enc_value(msgpack_packer *pk, const duet_schema_t *s, const void *v);

static duet_status_t enc_field(msgpack_packer *pk, const duet_field_t *f, const void *v)
{
    const uint8_t *p = (const uint8_t *)v + f->offset;
    int rc = 0;
    switch (f->kind) {
    case DUET_F_BOOL: rc = *(const bool *)p ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
    case DUET_F_U8: rc = msgpack_pack_uint64(pk, *(const uint8_t *)p); break;
    case DUET_F_U16: rc = msgpack_pack_uint64(pk, *(const uint16_t *)p); break;
    case DUET_F_U32: rc = msgpack_pack_uint64(pk, *(const uint32_t *)p); break;
    case DUET_F_U64: rc = msgpack_pack_uint64(pk, *(const uint64_t *)p); break;
    case DUET_F_I32: rc = msgpack_pack_int64(pk, *(const int32_t *)p); break;
    case DUET_F_I64: rc = msgpack_pack_int64(pk, *(const int64_t *)p); break;
    case DUET_F_F32: rc = msgpack_pack_float(pk, *(const float *)p); break;
    case DUET_F_F64: rc = msgpack_pack_double(pk, *(const double *)p); break;
    case DUET_F_STR: {
        const char *str = *(const char *const *)p;
        size_t n = str ? strlen(str) : 0;
        if (f->max && n > f->max)
            return duet_errorf(DUET_ERR_INVALID, "field '%s': string of %zu bytes exceeds max %u",
                               f->name, n, f->max);
        rc = msgpack_pack_str(pk, n);
        if (!rc && n)
            rc = msgpack_pack_str_body(pk, str, n);
        break;
    }
    case DUET_F_BIN: {
        const duet_bytes_t *b = (const duet_bytes_t *)p;
        if (f->max && b->len > f->max)
            return duet_errorf(DUET_ERR_INVALID, "field '%s': %zu bytes exceed max %u", f->name,
                               b->len, f->max);
        rc = msgpack_pack_bin(pk, b->len);
        if (!rc && b->len)
            rc = msgpack_pack_bin_body(pk, b->data, b->len);
        break;
    }
    case DUET_F_STRUCT: {
        duet_status_t st = enc_value(pk, f->sub, p);
        if (st)
            return duet_error_wrap(st, "field '%s'", f->name);
        break;
    }
    default: {
        const duet_array_t *a = (const duet_array_t *)p;
        if (f->max && a->count > f->max)
            return duet_errorf(DUET_ERR_INVALID, "field '%s': %zu elements exceed max %u", f->name,
                               a->count, f->max);
        if (a->count > UINT32_MAX)
            return duet_errorf(DUET_ERR_RANGE, "field '%s': too many elements", f->name);
        rc = msgpack_pack_array(pk, a->count);
        size_t es = field_elem_size(f->kind, f->sub);
        for (size_t i = 0; !rc && i < a->count; i++) {
            const uint8_t *e = (const uint8_t *)a->data + i * es;
            switch (f->kind) {
            case DUET_F_ARR_U32: rc = msgpack_pack_uint64(pk, *(const uint32_t *)e); break;
            case DUET_F_ARR_U64: rc = msgpack_pack_uint64(pk, *(const uint64_t *)e); break;
            case DUET_F_ARR_I32: rc = msgpack_pack_int64(pk, *(const int32_t *)e); break;
            case DUET_F_ARR_I64: rc = msgpack_pack_int64(pk, *(const int64_t *)e); break;
            case DUET_F_ARR_F32: rc = msgpack_pack_float(pk, *(const float *)e); break;
            case DUET_F_ARR_F64: rc = msgpack_pack_double(pk, *(const double *)e); break;
            case DUET_F_ARR_STR: {
                const char *str = *(const char *const *)e;
                size_t n = str ? strlen(str) : 0;
                rc = msgpack_pack_str(pk, n);
                if (!rc && n)
                    rc = msgpack_pack_str_body(pk, str, n);
                break;
            }
            case DUET_F_ARR_STRUCT: {
                duet_status_t st = enc_value(pk, f->sub, e);
                if (st)
                    return duet_error_wrap(st, "field '%s'[%zu]", f->name, i);
                break;
            }
            default: return duet_errorf(DUET_ERR_INTERNAL, "field '%s': bad kind", f->name);
            }
        }
    }
    }
    if (rc)
        return duet_errorf(DUET_ERR_NOMEM, "field '%s': out of memory while encoding", f->name);
    return DUET_OK;
}

static duet_status_t enc_value(msgpack_packer *pk, const duet_schema_t *s, const void *v)
{
    if (msgpack_pack_array(pk, s->nfields))
        return duet_errorf(DUET_ERR_NOMEM, "out of memory while encoding");
    for (size_t i = 0; i < s->nfields; i++) {
        duet_status_t st = enc_field(pk, &s->fields[i], v);
        if (st)
            return st;
    }
    return DUET_OK;
}

duet_status_t duet_schema_encode(const duet_schema_t *s, const void *value, duet_buf_t *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    return enc_value(&pk, s, value);
}

static uint8_t *put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint8_t *put_uint(uint8_t *p, uint64_t v)
{
    if (v < 0x80) {
        *p++ = (uint8_t)v;
        return p;
    }
    if (v <= 0xff) {
        *p++ = 0xcc;
        return put_be(p, v, 1);
    }
    if (v <= 0xffff) {
        *p++ = 0xcd;
        return put_be(p, v, 2);
    }
    if (v <= 0xffffffffu) {
        *p++ = 0xce;
        return put_be(p, v, 4);
    }
    *p++ = 0xcf;
    return put_be(p, v, 8);
}

static uint8_t *put_str(uint8_t *p, const char *s, size_t n)
{
    if (n < 32) {
        *p++ = (uint8_t)(0xa0 | n);
    } else if (n <= 0xff) {
        *p++ = 0xd9;
        p = put_be(p, n, 1);
    } else {
        *p++ = 0xda;
        p = put_be(p, n, 2);
    }
    memcpy(p, s, n);
    return p + n;
}

static size_t lim_max(const duet_codec_limits_t *lim)
{
    size_t m = lim && lim->max_size ? lim->max_size : DUET_MSG_SIZE_DEFAULT;
    return m > DUET_MSG_SIZE_HARD_MAX ? DUET_MSG_SIZE_HARD_MAX : m;
}

/* A body of up to 15 unsigned/bool fields (the common small message) is
 * written in place, byte for byte as the packer would. False: not such a
 * schema, or no room could be made; the packer does it. */
static bool enc_flat(const duet_schema_t *s, const void *v, duet_buf_t *out)
{
    if (s->nfields >= 16)
        return false;
    for (size_t i = 0; i < s->nfields; i++)
        if (s->fields[i].kind > DUET_F_U64)
            return false;
    if (duet_vec_reserve((void **)&out->data, &out->cap, out->len + 2 + 9 * s->nfields, 1))
        return false;
    uint8_t *p = out->data + out->len;
    *p++ = (uint8_t)(0x90 | s->nfields);
    for (size_t i = 0; i < s->nfields; i++) {
        const duet_field_t *f = &s->fields[i];
        const uint8_t *q = (const uint8_t *)v + f->offset;
        switch (f->kind) {
        case DUET_F_BOOL: *p++ = *(const bool *)q ? 0xc3 : 0xc2; break;
        case DUET_F_U8: p = put_uint(p, *(const uint8_t *)q); break;
        case DUET_F_U16: p = put_uint(p, *(const uint16_t *)q); break;
        case DUET_F_U32: p = put_uint(p, *(const uint32_t *)q); break;
        default: p = put_uint(p, *(const uint64_t *)q); break;
        }
    }
    out->len = (size_t)(p - out->data);
    out->data[out->len] = 0;
    return true;
}

duet_status_t duet_msg_encode(const duet_env_t *env, const void *body,
                              const duet_codec_limits_t *lim, duet_buf_t *out)
{
    const duet_msg_type_t *t = duet_msg_type_lookup(env->type);
    if (!t)
        return duet_errorf(DUET_ERR_INVALID, "encoding message to '%s': unknown type 0x%x", env->to,
                           env->type);
    size_t start = out->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    size_t nf = strnlen(env->from, DUET_NAME_MAX), nt = strnlen(env->to, DUET_NAME_MAX);
    if (nf >= DUET_NAME_MAX || nt >= DUET_NAME_MAX)
        return duet_errorf(DUET_ERR_INVALID, "encoding %s: actor name too long", t->name);
    /* The envelope is written in place (it is on every message): the same
     * bytes msgpack-c would pack, without a callback per field. */
    size_t room = 1 + 9 + 2 * (3 + DUET_NAME_MAX) + 5 * 9 + 1;
    if (duet_vec_reserve((void **)&out->data, &out->cap, out->len + room, 1))
        return duet_errorf(DUET_ERR_NOMEM, "encoding envelope");
    uint8_t *p = out->data + out->len;
    *p++ = 0x98; /* fixarray of 8 */
    p = put_uint(p, env->type);
    p = put_str(p, env->from, nf);
    p = put_str(p, env->to, nt);
    p = put_uint(p, env->seq);
    p = put_uint(p, env->epoch);
    p = put_uint(p, env->trace);
    p = put_uint(p, env->reply_to);
    p = put_uint(p, env->flags);
    out->len = (size_t)(p - out->data);
    out->data[out->len] = 0;
    duet_status_t st = enc_flat(&t->schema, body, out) ? DUET_OK : enc_value(&pk, &t->schema, body);
    if (st) {
        out->len = start;
        return duet_error_wrap(st, "encoding %s from '%s' to '%s'", t->name, env->from, env->to);
    }
    if (out->len - start > lim_max(lim)) {
        size_t n = out->len - start;
        out->len = start;
        return duet_errorf(
            DUET_ERR_RANGE,
            "encoding %s from '%s' to '%s': %zu bytes exceed the %zu-byte message cap", t->name,
            env->from, env->to, n, lim_max(lim));
    }
    return DUET_OK;
}

/* ---- bounded reader ----------------------------------------------------- */

typedef struct rd {
    const uint8_t *base, *p, *end;
} rd_t;

enum { RD_OK = 0, RD_SHORT = 1, RD_TYPE = 2, RD_COUNT = 3, RD_RANGE = 4 };

static const char *rd_what(int e)
{
    switch (e) {
    case RD_SHORT: return "truncated";
    case RD_TYPE: return "wrong msgpack type";
    case RD_COUNT: return "length/count larger than the bytes present";
    case RD_RANGE: return "value out of range";
    default: return "ok";
    }
}

static inline size_t rd_left(const rd_t *r)
{
    return (size_t)(r->end - r->p);
}

static inline uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Read `n` big-endian bytes after the tag byte. */
static int rd_take(rd_t *r, int n, uint64_t *v)
{
    if (rd_left(r) < (size_t)n)
        return RD_SHORT;
    *v = be(r->p, n);
    r->p += n;
    return RD_OK;
}

static int rd_int(rd_t *r, bool *neg, uint64_t *u)
{
    if (!rd_left(r))
        return RD_SHORT;
    uint8_t c = *r->p++;
    uint64_t v = 0;
    int e;
    *neg = false;
    if (c <= 0x7f) {
        *u = c;
        return RD_OK;
    }
    if (c >= 0xe0) {
        *neg = true;
        *u = (uint64_t)(int64_t)(int8_t)c;
        return RD_OK;
    }
    switch (c) {
    case 0xcc:
        e = rd_take(r, 1, &v);
        *u = v;
        return e;
    case 0xcd:
        e = rd_take(r, 2, &v);
        *u = v;
        return e;
    case 0xce:
        e = rd_take(r, 4, &v);
        *u = v;
        return e;
    case 0xcf:
        e = rd_take(r, 8, &v);
        *u = v;
        return e;
    case 0xd0:
        e = rd_take(r, 1, &v);
        *u = (uint64_t)(int64_t)(int8_t)v;
        break;
    case 0xd1:
        e = rd_take(r, 2, &v);
        *u = (uint64_t)(int64_t)(int16_t)v;
        break;
    case 0xd2:
        e = rd_take(r, 4, &v);
        *u = (uint64_t)(int64_t)(int32_t)v;
        break;
    case 0xd3:
        e = rd_take(r, 8, &v);
        *u = v;
        break;
    default: r->p--; return RD_TYPE;
    }
    if (e)
        return e;
    *neg = (int64_t)*u < 0;
    return RD_OK;
}

static int rd_uint(rd_t *r, uint64_t max, uint64_t *out)
{
    bool neg;
    uint64_t u;
    int e = rd_int(r, &neg, &u);
    if (e)
        return e;
    if (neg || u > max)
        return RD_RANGE;
    *out = u;
    return RD_OK;
}

static int rd_sint(rd_t *r, int64_t min, int64_t max, int64_t *out)
{
    bool neg;
    uint64_t u;
    int e = rd_int(r, &neg, &u);
    if (e)
        return e;
    if (!neg && u > (uint64_t)INT64_MAX)
        return RD_RANGE;
    int64_t s = (int64_t)u;
    if (s < min || s > max)
        return RD_RANGE;
    *out = s;
    return RD_OK;
}

static int rd_float(rd_t *r, double *out)
{
    if (!rd_left(r))
        return RD_SHORT;
    uint8_t c = *r->p;
    uint64_t v;
    if (c == 0xca) {
        r->p++;
        int e = rd_take(r, 4, &v);
        if (e)
            return e;
        uint32_t b = (uint32_t)v;
        float f;
        memcpy(&f, &b, 4);
        *out = f;
        return RD_OK;
    }
    if (c == 0xcb) {
        r->p++;
        int e = rd_take(r, 8, &v);
        if (e)
            return e;
        memcpy(out, &v, 8);
        return RD_OK;
    }
    int64_t s;
    int e = rd_sint(r, INT64_MIN, INT64_MAX, &s); /* integers are accepted as floats */
    if (e)
        return e;
    *out = (double)s;
    return RD_OK;
}

static int rd_bool(rd_t *r, bool *out)
{
    if (!rd_left(r))
        return RD_SHORT;
    if (*r->p == 0xc2 || *r->p == 0xc3) {
        *out = *r->p++ == 0xc3;
        return RD_OK;
    }
    return RD_TYPE;
}

/* str (or, when bin, bin) header + body; length checked against what is left. */
static int rd_blob(rd_t *r, bool bin, const uint8_t **s, size_t *n)
{
    if (!rd_left(r))
        return RD_SHORT;
    const uint8_t *save = r->p;
    uint8_t c = *r->p++;
    uint64_t len;
    int e = RD_OK;
    if (!bin && c >= 0xa0 && c <= 0xbf)
        len = c & 0x1f;
    else if ((!bin && c == 0xd9) || (bin && c == 0xc4))
        e = rd_take(r, 1, &len);
    else if ((!bin && c == 0xda) || (bin && c == 0xc5))
        e = rd_take(r, 2, &len);
    else if ((!bin && c == 0xdb) || (bin && c == 0xc6))
        e = rd_take(r, 4, &len);
    else {
        r->p = save;
        return RD_TYPE;
    }
    if (e)
        return e;
    if (len > rd_left(r))
        return RD_COUNT;
    *s = r->p;
    *n = (size_t)len;
    r->p += len;
    return RD_OK;
}

/* Array header. `min_elem` is the fewest bytes one element can take; the
 * count is refused unless count * min_elem bytes are present. */
static int rd_array(rd_t *r, size_t min_elem, size_t *n)
{
    if (!rd_left(r))
        return RD_SHORT;
    uint8_t c = *r->p++;
    uint64_t cnt;
    int e = RD_OK;
    if (c >= 0x90 && c <= 0x9f)
        cnt = c & 0x0f;
    else if (c == 0xdc)
        e = rd_take(r, 2, &cnt);
    else if (c == 0xdd)
        e = rd_take(r, 4, &cnt);
    else {
        r->p--;
        return RD_TYPE;
    }
    if (e)
        return e;
    if (min_elem == 0)
        min_elem = 1;
    if (cnt > rd_left(r) / min_elem)
        return RD_COUNT;
    *n = (size_t)cnt;
    return RD_OK;
}

/* ---- two-pass schema decoder ------------------------------------------- */

typedef struct dec {
    rd_t r;
    bool fill;      /* pass two */
    size_t need;    /* pass one: bytes of variable data */
    uint8_t *arena; /* pass two: where variable data goes */
    size_t used;
} dec_t;

#define ALIGN8(x) (((x) + 7) & ~(size_t)7)

static void *dec_take(dec_t *d, size_t n)
{
    n = ALIGN8(n);
    if (!d->fill) {
        d->need += n;
        return NULL;
    }
    void *p = d->arena + d->used;
    d->used += n;
    return p;
}

static size_t schema_min_bytes(const duet_schema_t *s)
{
    size_t req = 0;
    for (size_t i = 0; i < s->nfields; i++)
        req += !s->fields[i].optional;
    return 1 + req; /* array header + one byte per required field */
}

static duet_status_t dec_fail(const dec_t *d, const duet_field_t *f, int e, const char *extra)
{
    return duet_errorf(e == RD_SHORT ? DUET_ERR_RANGE : DUET_ERR_INVALID,
                       "field '%s': %s%s at byte %zu", f->name, rd_what(e), extra ? extra : "",
                       (size_t)(d->r.p - d->r.base));
}

static duet_status_t dec_value(dec_t *d, const duet_schema_t *s, uint8_t *out);

static duet_status_t dec_scalar(dec_t *d, const duet_field_t *f, duet_field_kind_t k, uint8_t *p)
{
    int e;
    uint64_t u = 0;
    int64_t i = 0;
    double x = 0;
    bool b = false;
    switch (k) {
    case DUET_F_BOOL:
        e = rd_bool(&d->r, &b);
        if (!e && p)
            *(bool *)p = b;
        break;
    case DUET_F_U8:
        e = rd_uint(&d->r, UINT8_MAX, &u);
        if (!e && p)
            *(uint8_t *)p = (uint8_t)u;
        break;
    case DUET_F_U16:
        e = rd_uint(&d->r, UINT16_MAX, &u);
        if (!e && p)
            *(uint16_t *)p = (uint16_t)u;
        break;
    case DUET_F_U32:
    case DUET_F_ARR_U32:
        e = rd_uint(&d->r, UINT32_MAX, &u);
        if (!e && p)
            *(uint32_t *)p = (uint32_t)u;
        break;
    case DUET_F_U64:
    case DUET_F_ARR_U64:
        e = rd_uint(&d->r, UINT64_MAX, &u);
        if (!e && p)
            *(uint64_t *)p = u;
        break;
    case DUET_F_I32:
    case DUET_F_ARR_I32:
        e = rd_sint(&d->r, INT32_MIN, INT32_MAX, &i);
        if (!e && p)
            *(int32_t *)p = (int32_t)i;
        break;
    case DUET_F_I64:
    case DUET_F_ARR_I64:
        e = rd_sint(&d->r, INT64_MIN, INT64_MAX, &i);
        if (!e && p)
            *(int64_t *)p = i;
        break;
    case DUET_F_F32:
    case DUET_F_ARR_F32:
        e = rd_float(&d->r, &x);
        if (!e && p)
            *(float *)p = (float)x;
        break;
    case DUET_F_F64:
    case DUET_F_ARR_F64:
        e = rd_float(&d->r, &x);
        if (!e && p)
            *(double *)p = x;
        break;
    default: return duet_errorf(DUET_ERR_INTERNAL, "field '%s': not a scalar", f->name);
    }
    return e ? dec_fail(d, f, e, NULL) : DUET_OK;
}

static duet_status_t dec_str(dec_t *d, const duet_field_t *f, char **dst)
{
    const uint8_t *s;
    size_t n;
    int e = rd_blob(&d->r, false, &s, &n);
    if (e)
        return dec_fail(d, f, e, " (expected str)");
    if (f->kind == DUET_F_STR && f->max && n > f->max)
        return duet_errorf(DUET_ERR_INVALID,
                           "field '%s': string of %zu bytes exceeds max %u at byte %zu", f->name, n,
                           f->max, (size_t)(s - d->r.base));
    if (memchr(s, 0, n))
        return duet_errorf(DUET_ERR_INVALID, "field '%s': string holds a NUL byte at byte %zu",
                           f->name, (size_t)(s - d->r.base));
    char *c = dec_take(d, n + 1);
    if (c) {
        memcpy(c, s, n);
        c[n] = 0;
        *dst = c;
    }
    return DUET_OK;
}

static duet_status_t dec_field(dec_t *d, const duet_field_t *f, uint8_t *out)
{
    uint8_t *p = out ? out + f->offset : NULL;
    switch (f->kind) {
    case DUET_F_STR: return dec_str(d, f, p ? (char **)p : &(char *){NULL});
    case DUET_F_BIN: {
        const uint8_t *s;
        size_t n;
        int e = rd_blob(&d->r, true, &s, &n);
        if (e)
            return dec_fail(d, f, e, " (expected bin)");
        if (f->max && n > f->max)
            return duet_errorf(DUET_ERR_INVALID, "field '%s': %zu bytes exceed max %u", f->name, n,
                               f->max);
        uint8_t *c = dec_take(d, n);
        if (p) {
            memcpy(c, s, n);
            ((duet_bytes_t *)p)->data = n ? c : NULL;
            ((duet_bytes_t *)p)->len = n;
        }
        return DUET_OK;
    }
    case DUET_F_STRUCT: {
        duet_status_t st = dec_value(d, f->sub, p);
        return st ? duet_error_wrap(st, "field '%s'", f->name) : DUET_OK;
    }
    case DUET_F_ARR_U32:
    case DUET_F_ARR_U64:
    case DUET_F_ARR_I32:
    case DUET_F_ARR_I64:
    case DUET_F_ARR_F32:
    case DUET_F_ARR_F64:
    case DUET_F_ARR_STR:
    case DUET_F_ARR_STRUCT: {
        size_t n;
        size_t min_elem = f->kind == DUET_F_ARR_STRUCT ? schema_min_bytes(f->sub) : 1;
        int e = rd_array(&d->r, min_elem, &n);
        if (e)
            return dec_fail(d, f, e, " (expected array)");
        if (f->max && n > f->max)
            return duet_errorf(DUET_ERR_INVALID,
                               "field '%s': %zu elements exceed max %u at byte %zu", f->name, n,
                               f->max, (size_t)(d->r.p - d->r.base));
        size_t es = field_elem_size(f->kind, f->sub);
        uint8_t *a = dec_take(d, n * es); /* n <= bytes left, es <= struct size: bounded */
        if (p) {
            if (a && n)
                memset(a, 0, n * es);
            ((duet_array_t *)p)->data = n ? a : NULL;
            ((duet_array_t *)p)->count = n;
        }
        for (size_t i = 0; i < n; i++) {
            uint8_t *e_out = a ? a + i * es : NULL;
            duet_status_t st;
            if (f->kind == DUET_F_ARR_STR)
                st = dec_str(d, f, e_out ? (char **)e_out : &(char *){NULL});
            else if (f->kind == DUET_F_ARR_STRUCT)
                st = dec_value(d, f->sub, e_out);
            else
                st = dec_scalar(d, f, f->kind, e_out);
            if (st)
                return duet_error_wrap(st, "%s[%zu]", f->name, i);
        }
        return DUET_OK;
    }
    default: return dec_scalar(d, f, f->kind, p);
    }
}

static duet_status_t dec_value(dec_t *d, const duet_schema_t *s, uint8_t *out)
{
    size_t n;
    int e = rd_array(&d->r, 1, &n);
    if (e)
        return duet_errorf(e == RD_SHORT ? DUET_ERR_RANGE : DUET_ERR_INVALID,
                           "%s: %s (expected array of %zu fields) at byte %zu", s->name, rd_what(e),
                           s->nfields, (size_t)(d->r.p - d->r.base));
    if (n > s->nfields)
        return duet_errorf(DUET_ERR_INVALID, "%s: %zu fields, schema has %zu", s->name, n,
                           s->nfields);
    for (size_t i = 0; i < s->nfields; i++) {
        const duet_field_t *f = &s->fields[i];
        if (i >= n) {
            if (!f->optional)
                return duet_errorf(DUET_ERR_INVALID, "%s: required field '%s' missing", s->name,
                                   f->name);
            continue; /* zeroed */
        }
        duet_status_t st = dec_field(d, f, out);
        if (st)
            return st;
    }
    return DUET_OK;
}

/* Upper bound on what decoding `len` bytes may allocate beyond the struct:
 * each element costs >= 1 input byte and decodes to <= 8 bytes + 8 of
 * alignment, struct elements are bounded through schema_min_bytes. */
#define DECODE_AMPLIFICATION 64

/* Decode into one allocation of `prefix` bytes (for the caller) followed
 * by the value; *mem_out is the allocation, the value starts at prefix. */
static duet_status_t schema_decode_ex(const duet_schema_t *s, const uint8_t *data, size_t len,
                                      size_t *used_out, size_t prefix, duet_buf_t *scratch,
                                      uint8_t **mem_out)
{
    /* A schema of scalars only has no variable part to size: one pass (it
     * allocates just the struct before checking the input) */
    bool flat = true;
    for (size_t i = 0; i < s->nfields && flat; i++)
        flat = s->fields[i].kind <= DUET_F_F64;
    dec_t d = {.r = {data, data, data + len}};
    duet_status_t st = flat ? DUET_OK : dec_value(&d, s, NULL);
    if (st)
        return st;
    size_t used = (size_t)(d.r.p - data);
    size_t head = ALIGN8(s->size ? s->size : 1);
    if (d.need > DECODE_AMPLIFICATION * len + 4096)
        return duet_errorf(DUET_ERR_RANGE, "%s: decoding %zu bytes would need %zu bytes", s->name,
                           len, d.need);
    prefix = ALIGN8(prefix);
    size_t total = prefix + head + d.need;
    uint8_t *mem;
    if (scratch) { /* reused memory (malloc'd: aligned for any field) */
        if (duet_vec_reserve((void **)&scratch->data, &scratch->cap, total, 1))
            return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory (%zu bytes)", s->name, total);
        mem = scratch->data;
    } else {
        mem = duet_malloc(total);
    }
    if (!mem)
        return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory (%zu bytes)", s->name, head + d.need);
    memset(mem + prefix, 0, head); /* variable parts are zeroed as they are filled */
    dec_t d2 = {.r = {data, data, data + len}, .fill = true, .arena = mem + prefix + head};
    st = dec_value(&d2, s, mem + prefix);
    if (st || d2.used != d.need) {
        if (!scratch)
            duet_free(mem);
        return st ? st : duet_errorf(DUET_ERR_INTERNAL, "%s: decoder passes disagree", s->name);
    }
    if (flat)
        used = (size_t)(d2.r.p - data);
    if (used_out)
        *used_out = used;
    *mem_out = mem;
    return DUET_OK;
}

duet_status_t duet_schema_decode(const duet_schema_t *s, const uint8_t *data, size_t len,
                                 size_t *used_out, void **value_out)
{
    uint8_t *mem = NULL;
    duet_status_t st = schema_decode_ex(s, data, len, used_out, 0, NULL, &mem);
    if (!st)
        *value_out = mem;
    return st;
}

duet_status_t duet_schema_clone(const duet_schema_t *s, const void *value, void **copy_out)
{
    duet_buf_t b = {0};
    duet_status_t st = duet_schema_encode(s, value, &b);
    if (!st)
        st = duet_schema_decode(s, b.data, b.len, NULL, copy_out);
    duet_buf_cleanup(&b);
    return st;
}

duet_status_t duet_env_decode(const uint8_t *data, size_t len, duet_env_t *env, size_t *body_off)
{
    rd_t r = {data, data, data + len};
    size_t n;
    uint64_t u;
    const uint8_t *s;
    size_t sl;
    int e = rd_array(&r, 1, &n);
    if (e || n != 8)
        return duet_errorf(DUET_ERR_INVALID, "envelope: %s at byte %zu",
                           e ? rd_what(e) : "expected an array of 8 fields", (size_t)(r.p - data));
    env->from[0] = env->to[0] = 0; /* the names are NUL-terminated as they are read */
    env->type = 0;
    env->seq = env->epoch = env->trace = env->reply_to = 0;
    env->flags = 0;
    const char *what = "type";
    if ((e = rd_uint(&r, DUET_MSG_TYPE_MAX - 1, &u)))
        goto fail;
    env->type = (uint16_t)u;
    what = "from";
    if ((e = rd_blob(&r, false, &s, &sl)))
        goto fail;
    if (sl >= DUET_NAME_MAX || memchr(s, 0, sl)) {
        e = RD_RANGE;
        goto fail;
    }
    memcpy(env->from, s, sl);
    env->from[sl] = 0;
    what = "to";
    if ((e = rd_blob(&r, false, &s, &sl)))
        goto fail;
    if (sl >= DUET_NAME_MAX || memchr(s, 0, sl)) {
        e = RD_RANGE;
        goto fail;
    }
    memcpy(env->to, s, sl);
    env->to[sl] = 0;
    uint64_t *u64s[] = {&env->seq, &env->epoch, &env->trace, &env->reply_to};
    const char *names[] = {"seq", "epoch", "trace", "reply_to"};
    for (int i = 0; i < 4; i++) {
        what = names[i];
        if ((e = rd_uint(&r, UINT64_MAX, u64s[i])))
            goto fail;
    }
    what = "flags";
    if ((e = rd_uint(&r, UINT32_MAX, &u)))
        goto fail;
    env->flags = (uint32_t)u;
    *body_off = (size_t)(r.p - data);
    return DUET_OK;
fail:
    return duet_errorf(e == RD_SHORT ? DUET_ERR_RANGE : DUET_ERR_INVALID,
                       "envelope%s%s: field '%s': %s at byte %zu", env->from[0] ? " from " : "",
                       env->from, what, rd_what(e), (size_t)(r.p - data));
}

static duet_status_t msg_decode(const uint8_t *data, size_t len, const duet_codec_limits_t *lim,
                                const char *peer, duet_buf_t *scratch, duet_msg_t **msg_out)
{
    const char *pn = peer ? peer : "?";
    if (len > lim_max(lim))
        return duet_errorf(DUET_ERR_RANGE,
                           "message from node '%s': %zu bytes exceed the %zu-byte cap", pn, len,
                           lim_max(lim));
    /* with scratch the envelope is decoded in place (growing scratch for
     * the body keeps it: it is the allocation's prefix) */
    duet_env_t local, *env = &local;
    if (scratch) {
        if (duet_vec_reserve((void **)&scratch->data, &scratch->cap,
                             ALIGN8(sizeof(duet_msg_t)) + 256, 1))
            return duet_errorf(DUET_ERR_NOMEM, "message from node '%s': out of memory", pn);
        env = &((duet_msg_t *)scratch->data)->env;
    }
    size_t off;
    duet_status_t st = duet_env_decode(data, len, env, &off);
    if (st)
        return duet_error_wrap(st, "message from node '%s'", pn);
    const duet_msg_type_t *t = duet_msg_type_lookup(env->type);
    if (!t)
        return duet_errorf(DUET_ERR_INVALID,
                           "message from '%s' (node '%s') to '%s': unknown type 0x%x", env->from,
                           pn, env->to, env->type);
    size_t used = 0;
    uint8_t *mem = NULL;
    /* message header and body in one allocation */
    st = schema_decode_ex(&t->schema, data + off, len - off, &used, sizeof(duet_msg_t), scratch,
                          &mem);
    if (scratch)
        env = &((duet_msg_t *)scratch->data)->env;
    if (st)
        return duet_error_wrap(st, "message %s from '%s' (node '%s') to '%s', body at byte %zu",
                               t->name, env->from, pn, env->to, off);
    if (off + used != len) {
        if (!scratch)
            duet_free(mem);
        return duet_errorf(DUET_ERR_INVALID,
                           "message %s from '%s' (node '%s'): %zu trailing bytes after the body",
                           t->name, env->from, pn, len - off - used);
    }
    duet_msg_t *m = (duet_msg_t *)mem;
    if (!scratch)
        m->env = local;
    m->type = t;
    m->body = mem + ALIGN8(sizeof(duet_msg_t));
    *msg_out = m;
    return DUET_OK;
}

duet_status_t duet_msg_decode(const uint8_t *data, size_t len, const duet_codec_limits_t *lim,
                              const char *peer, duet_msg_t **msg_out)
{
    return msg_decode(data, len, lim, peer, NULL, msg_out);
}

duet_status_t duet_msg_decode_scratch(const uint8_t *data, size_t len,
                                      const duet_codec_limits_t *lim, const char *peer,
                                      duet_buf_t *scratch, duet_msg_t **msg_out)
{
    return msg_decode(data, len, lim, peer, scratch, msg_out);
}

void duet_msg_destroy(duet_msg_t **msg_p)
{
    if (!msg_p || !*msg_p)
        return;
    duet_free(*msg_p); /* the body lives in the same allocation */
    *msg_p = NULL;
}
