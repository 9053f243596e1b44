/* tokenizer — HF tokenizer.json BPE (see tokenizer.h for the contract).
 *
 * Encode pipeline, as HF `tokenizers` runs it:
 *   1. split added tokens with normalized=false out of the raw text
 *      (leftmost, longest match; lstrip/rstrip/single_word honoured);
 *   2. normalize each remaining segment (Sequence of Prepend, Replace, NFC
 *      (model/nfc.c));
 *   3. split added tokens with normalized=true out of the normalized text;
 *   4. pre-tokenize (Sequence of ByteLevel, Split, Metaspace) into words;
 *   5. BPE each word: symbols are the word's characters (byte_fallback
 *      "<0xNN>" or unk for characters outside the vocab), merged lowest rank
 *      first (leftmost on ties) with a binary heap over a linked list;
 *      results for short words are kept in a mutex-guarded word cache;
 *   6. with add_special, the post_processor's single template around it.
 * Decode maps ids to token strings (skipping specials on request) and runs
 * the decoder chain (ByteLevel, Replace, ByteFallback, Fuse, Strip,
 * Metaspace) over the token list. Supported components are exactly those
 * named here; anything else is refused at load with DUET_ERR_UNSUPPORTED. */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "model/tokenizer.h"
#include "model/nfc.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TOK_MAX_ID (1 << 22)   /* ids above this are refused: the id table is dense */
#define TOK_MAX_DEPTH 16       /* nesting of Sequence components */
#define TOK_CACHE_SLOTS 8192   /* word cache, direct mapped */
#define TOK_CACHE_MAX_WORD 128 /* bytes; longer words are not cached */
#define TOK_REGEX_MATCH_LIMIT 10000000u

enum { TF_PRESENT = 1, TF_ADDED = 2, TF_SPECIAL = 4 };

typedef struct added_tok {
    char *content;
    size_t len;
    char *match; /* what is searched for: content, normalized if `normalized` */
    size_t match_len;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} added_tok_t;

typedef enum norm_kind { NORM_PREPEND, NORM_REPLACE, NORM_NFC } norm_kind_t;
typedef struct norm_step {
    norm_kind_t kind;
    char *str; /* Prepend: the prefix; Replace: the content */
    size_t len;
    pcre2_code *re; /* Replace: the pattern */
} norm_step_t;

typedef enum split_behavior {
    SPLIT_REMOVED,
    SPLIT_ISOLATED,
    SPLIT_MERGED_PREV,
    SPLIT_MERGED_NEXT,
    SPLIT_CONTIGUOUS,
} split_behavior_t;

typedef enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme_t;

typedef enum pre_kind { PRE_BYTELEVEL, PRE_SPLIT, PRE_METASPACE } pre_kind_t;
typedef struct pre_step {
    pre_kind_t kind;
    bool add_prefix_space, use_regex; /* ByteLevel */
    pcre2_code *re;                   /* Split (owned) */
    split_behavior_t behavior;
    bool invert;
    char rep[8]; /* Metaspace replacement character, UTF-8 */
    size_t rep_len;
    prepend_scheme_t scheme;
    bool split;
} pre_step_t;

typedef enum dec_kind {
    DEC_BYTELEVEL,
    DEC_REPLACE,
    DEC_BYTEFALLBACK,
    DEC_FUSE,
    DEC_STRIP,
    DEC_METASPACE,
} dec_kind_t;
typedef struct dec_step {
    dec_kind_t kind;
    char *pat, *content; /* Replace */
    size_t pat_len, content_len;
    char ch[8]; /* Strip content / Metaspace replacement, one UTF-8 char */
    size_t ch_len;
    size_t start, stop; /* Strip */
    bool after_fuse;    /* Strip: tokens were already joined into one */
    prepend_scheme_t scheme;
} dec_step_t;

typedef struct merge_slot {
    uint64_t key; /* 0 = empty; else (a << 32 | b) | 1 << 63 */
    uint32_t rank;
    int32_t new_id;
} merge_slot_t;

typedef struct cache_slot {
    uint64_t hash;
    char *key; /* NULL = empty */
    size_t klen;
    int32_t *ids;
    size_t n;
} cache_slot_t;

struct duet_tokenizer {
    char *name;
    size_t n_ids;
    char **id_str;
    size_t *id_len;
    uint8_t *id_flags;
    duet_strmap_t *vocab; /* model.vocab */
    duet_strmap_t *added_map;
    merge_slot_t *merges;
    size_t merges_cap; /* power of two */
    int32_t unk_id;
    bool fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_ids[256]; /* "<0xNN>" ids, -1 if absent */
    added_tok_t *added;
    size_t n_added;
    bool added_first[2][256]; /* [normalized pass][first byte] */
    norm_step_t *norm;
    size_t n_norm;
    pre_step_t *pre;
    size_t n_pre;
    dec_step_t *dec;
    size_t n_dec;
    bool has_decoder;
    bool dec_bytefallback; /* the decoder chain has a ByteFallback step */
    /* A Strip(stop > 0) on joined text trims the end of the whole output:
     * streaming holds back up to stream_hold_n such characters and drops
     * them at flush. */
    char stream_hold_ch[8];
    size_t stream_hold_ch_len, stream_hold_n;
    int32_t *prefix_ids, *suffix_ids;
    size_t n_prefix, n_suffix;
    int32_t bos, eos;
    pcre2_code *gpt2_re;
    pcre2_code *word_re; /* \w for single_word added tokens */
    pcre2_match_context *mctx;
    pthread_mutex_t cache_lock;
    cache_slot_t *cache;
};

/* ---- small helpers ------------------------------------------------------- */

typedef struct ivec {
    int32_t *v;
    size_t n, cap;
} ivec_t;

static duet_status_t ivec_push(ivec_t *iv, int32_t x)
{
    if (iv->n == iv->cap &&
        duet_vec_reserve((void **)&iv->v, &iv->cap, iv->n + 1, sizeof(*iv->v)) != DUET_OK)
        return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
    iv->v[iv->n++] = x;
    return DUET_OK;
}

static duet_status_t ivec_append(ivec_t *iv, const int32_t *x, size_t n)
{
    if (n == 0)
        return DUET_OK;
    if (duet_vec_reserve((void **)&iv->v, &iv->cap, iv->n + n, sizeof(*iv->v)) != DUET_OK)
        return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
    memcpy(iv->v + iv->n, x, n * sizeof(*x));
    iv->n += n;
    return DUET_OK;
}

static duet_status_t buf_add(duet_buf_t *b, const void *p, size_t n)
{
    if (n == 0)
        return DUET_OK;
    if (duet_buf_append(b, p, n) != DUET_OK)
        return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
    return DUET_OK;
}

/* UTF-8 sequence at s[0..n): returns the length of the maximal well-formed
 * prefix of a character (Unicode table 3-7), and sets *complete when it is a
 * whole character. A lone bad byte gives 1, !complete. `*truncated` is set
 * when the sequence was valid so far but ran into the end of the input. */
static size_t utf8_seq(const uint8_t *s, size_t n, bool *complete, bool *truncated)
{
    uint8_t b = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    *complete = false;
    *truncated = false;
    if (b < 0x80) {
        *complete = true;
        return 1;
    }
    if (b >= 0xC2 && b <= 0xDF) {
        need = 1;
    } else if (b == 0xE0) {
        need = 2;
        lo = 0xA0;
    } else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
        need = 2;
    } else if (b == 0xED) {
        need = 2;
        hi = 0x9F;
    } else if (b == 0xF0) {
        need = 3;
        lo = 0x90;
    } else if (b >= 0xF1 && b <= 0xF3) {
        need = 3;
    } else if (b == 0xF4) {
        need = 3;
        hi = 0x8F;
    } else {
        return 1;
    }
    size_t j = 1;
    for (size_t k = 0; k < need; k++, j++) {
        if (j >= n) {
            *truncated = true;
            return j;
        }
        uint8_t c = s[j];
        uint8_t l = k == 0 ? lo : 0x80, h = k == 0 ? hi : 0xBF;
        if (c < l || c > h)
            return j;
    }
    *complete = true;
    return j;
}

/* Decode one code point of valid UTF-8 at s (len >= 1). */
static uint32_t utf8_cp(const uint8_t *s, size_t *len_out)
{
    uint32_t c = s[0];
    if (c < 0x80) {
        *len_out = 1;
        return c;
    }
    if (c < 0xE0) {
        *len_out = 2;
        return ((c & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (c < 0xF0) {
        *len_out = 3;
        return ((c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    *len_out = 4;
    return ((c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
           (s[3] & 0x3F);
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Byte offset of the first invalid UTF-8 sequence, or n if all valid. */
static size_t utf8_check(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        bool ok, trunc;
        size_t l = utf8_seq((const uint8_t *)s + i, n - i, &ok, &trunc);
        if (!ok)
            return i;
        i += l;
    }
    return n;
}

static const char REPLACEMENT_CHAR[] = "\xEF\xBF\xBD";

/* Append s[0..n) to b with every maximal ill-formed subsequence replaced by
 * U+FFFD (Rust's String::from_utf8_lossy, which HF decoders use). */
static duet_status_t utf8_lossy_append(duet_buf_t *b, const char *s, size_t n)
{
    size_t i = 0, run = 0;
    if (n == 0)
        return DUET_OK;
    while (i < n) {
        bool ok, trunc;
        size_t l = utf8_seq((const uint8_t *)s + i, n - i, &ok, &trunc);
        if (ok) {
            i += l;
            continue;
        }
        if (buf_add(b, s + run, i - run) || buf_add(b, REPLACEMENT_CHAR, 3))
            return DUET_ERR_NOMEM;
        i += l;
        run = i;
    }
    return buf_add(b, s + run, n - run);
}

static bool is_unicode_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == ' ' || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* ---- GPT-2 byte <-> unicode map ------------------------------------------- */

static uint16_t byte_to_cp[256];
static int16_t cp_to_byte[512];
static pthread_once_t bytemap_once = PTHREAD_ONCE_INIT;

static void bytemap_init(void)
{
    int n = 0;
    for (int i = 0; i < 512; i++)
        cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        byte_to_cp[b] = (uint16_t)(keep ? b : 256 + n++);
        cp_to_byte[byte_to_cp[b]] = (int16_t)b;
    }
}

/* ---- regex ----------------------------------------------------------------- */

static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static duet_status_t re_compile(const char *pat, size_t len, bool literal, pcre2_code **out,
                                char *err, size_t errcap)
{
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, opts, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        snprintf(err, errcap, "regex does not compile at offset %zu: %s", (size_t)eo,
                 (const char *)msg);
        return DUET_ERR_INVALID;
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
    *out = re;
    return DUET_OK;
}

/* Next non-empty match of re in s[0..n) at or after `from`. *found = false at
 * the end. Empty matches are stepped over one character at a time. */
static duet_status_t re_next(const duet_tokenizer_t *tok, const pcre2_code *re,
                             pcre2_match_data *md, const char *s, size_t n, size_t from, size_t *ms,
                             size_t *me, bool *found)
{
    *found = false;
    while (from < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, tok->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            return DUET_OK;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return duet_errorf(DUET_ERR_INVALID, "%s: regex match failed: %s", tok->name,
                               (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] > ov[0]) {
            *ms = ov[0];
            *me = ov[1];
            *found = true;
            return DUET_OK;
        }
        /* empty match: skip one character */
        from = ov[0] + 1;
        while (from < n && ((uint8_t)s[from] & 0xC0) == 0x80)
            from++;
    }
    return DUET_OK;
}

/* ---- pieces (the pre-tokenizer's working list) ------------------------------ */

typedef struct piece {
    size_t off, len;
    bool at_start; /* begins at offset 0 of the original text (Metaspace "first") */
} piece_t;

typedef struct pieces {
    duet_buf_t text;
    piece_t *v;
    size_t n, cap;
} pieces_t;

static void pieces_cleanup(pieces_t *p)
{
    duet_buf_cleanup(&p->text);
    duet_free(p->v);
    memset(p, 0, sizeof(*p));
}

static void pieces_reset(pieces_t *p)
{
    p->text.len = 0;
    p->n = 0;
}

/* Append a piece made of up to three parts (prefix, body, nothing). */
static duet_status_t pieces_add2(pieces_t *p, const char *a, size_t alen, const char *b,
                                 size_t blen, bool at_start)
{
    if (alen + blen == 0)
        return DUET_OK;
    if (p->n == p->cap &&
        duet_vec_reserve((void **)&p->v, &p->cap, p->n + 1, sizeof(*p->v)) != DUET_OK)
        return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
    size_t off = p->text.len;
    if (buf_add(&p->text, a, alen) || buf_add(&p->text, b, blen))
        return DUET_ERR_NOMEM;
    p->v[p->n++] = (piece_t){off, alen + blen, at_start};
    return DUET_OK;
}

static duet_status_t pieces_add(pieces_t *p, const char *s, size_t len, bool at_start)
{
    return pieces_add2(p, s, len, NULL, 0, at_start);
}

typedef struct span {
    size_t s, e;
    bool match;
} span_t;

typedef struct enc_ctx {
    pcre2_match_data *md;
    span_t *spans;
    size_t spans_cap;
    pieces_t a, b; /* pre-tokenizer ping-pong */
    duet_buf_t nbuf, tmp;
    struct sym *syms;
    size_t syms_cap;
    struct heap_ent *heap;
    size_t heap_cap;
} enc_ctx_t;

/* Split s per `re` and `behavior` (HF SplitDelimiterBehavior), into out. */
static duet_status_t split_by_regex(const duet_tokenizer_t *tok, enc_ctx_t *cx,
                                    const pcre2_code *re, split_behavior_t behavior, bool invert,
                                    const char *s, size_t n, bool at_start, pieces_t *out)
{
    size_t ns = 0, pos = 0;
    duet_status_t st;
    for (;;) {
        size_t ms = 0, me = 0;
        bool found;
        if ((st = re_next(tok, re, cx->md, s, n, pos, &ms, &me, &found)) != DUET_OK)
            return st;
        if (!found)
            ms = me = n;
        if (ns + 2 > cx->spans_cap &&
            duet_vec_reserve((void **)&cx->spans, &cx->spans_cap, ns + 2, sizeof(span_t)))
            return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
        if (ms > pos)
            cx->spans[ns++] = (span_t){pos, ms, invert};
        if (me > ms)
            cx->spans[ns++] = (span_t){ms, me, !invert};
        pos = me;
        if (!found)
            break;
    }
    /* Contiguous: merge neighbouring delimiter spans first. */
    if (behavior == SPLIT_CONTIGUOUS) {
        size_t w = 0;
        for (size_t i = 0; i < ns; i++) {
            if (w > 0 && cx->spans[i].match && cx->spans[w - 1].match)
                cx->spans[w - 1].e = cx->spans[i].e;
            else
                cx->spans[w++] = cx->spans[i];
        }
        ns = w;
    }
    /* As HF: a delimiter merges with its neighbour only when that neighbour
     * is not a delimiter itself. */
    for (size_t i = 0; i < ns; i++) {
        span_t sp = cx->spans[i];
        bool first = at_start && sp.s == 0;
        switch (behavior) {
        case SPLIT_REMOVED:
            if (!sp.match)
                st = pieces_add(out, s + sp.s, sp.e - sp.s, first);
            else
                st = DUET_OK;
            break;
        case SPLIT_ISOLATED:
        case SPLIT_CONTIGUOUS: st = pieces_add(out, s + sp.s, sp.e - sp.s, first); break;
        case SPLIT_MERGED_PREV:
            if (sp.match && i > 0 && !cx->spans[i - 1].match) {
                /* extend the previous piece: it is the last one added */
                st = buf_add(&out->text, s + sp.s, sp.e - sp.s);
                if (st == DUET_OK)
                    out->v[out->n - 1].len += sp.e - sp.s;
            } else {
                st = pieces_add(out, s + sp.s, sp.e - sp.s, first);
            }
            break;
        case SPLIT_MERGED_NEXT:
            if (sp.match && i + 1 < ns && !cx->spans[i + 1].match) {
                st = pieces_add(out, s + sp.s, cx->spans[i + 1].e - sp.s, first);
                i++;
            } else {
                st = pieces_add(out, s + sp.s, sp.e - sp.s, first);
            }
            break;
        default: st = DUET_ERR_INTERNAL;
        }
        if (st != DUET_OK)
            return st;
    }
    return DUET_OK;
}

static duet_status_t bytelevel_map_add(pieces_t *out, duet_buf_t *tmp, const char *s, size_t n,
                                       bool at_start)
{
    tmp->len = 0;
    for (size_t i = 0; i < n; i++) {
        char u[4];
        size_t l = utf8_put(byte_to_cp[(uint8_t)s[i]], u);
        if (buf_add(tmp, u, l))
            return DUET_ERR_NOMEM;
    }
    return pieces_add(out, (const char *)tmp->data, tmp->len, at_start);
}

/* Run one pre-tokenizer step over every piece of `in`, writing `out`. */
static duet_status_t pre_step_run(const duet_tokenizer_t *tok, enc_ctx_t *cx, const pre_step_t *ps,
                                  const pieces_t *in, pieces_t *out)
{
    duet_status_t st = DUET_OK;
    for (size_t k = 0; k < in->n && st == DUET_OK; k++) {
        const char *s = (const char *)in->text.data + in->v[k].off;
        size_t n = in->v[k].len;
        bool at_start = in->v[k].at_start;
        switch (ps->kind) {
        case PRE_SPLIT:
            st = split_by_regex(tok, cx, ps->re, ps->behavior, ps->invert, s, n, at_start, out);
            break;
        case PRE_BYTELEVEL: {
            /* prefix space, regex split, then bytes to printable code points */
            cx->tmp.len = 0;
            if (ps->add_prefix_space && !(n > 0 && s[0] == ' '))
                st = buf_add(&cx->tmp, " ", 1);
            if (st == DUET_OK)
                st = buf_add(&cx->tmp, s, n);
            if (st != DUET_OK)
                break;
            pieces_t words = {0};
            if (ps->use_regex)
                st = split_by_regex(tok, cx, tok->gpt2_re, SPLIT_ISOLATED, false,
                                    (const char *)cx->tmp.data, cx->tmp.len, at_start, &words);
            else
                st = pieces_add(&words, (const char *)cx->tmp.data, cx->tmp.len, at_start);
            for (size_t w = 0; w < words.n && st == DUET_OK; w++)
                st =
                    bytelevel_map_add(out, &cx->tmp, (const char *)words.text.data + words.v[w].off,
                                      words.v[w].len, words.v[w].at_start);
            pieces_cleanup(&words);
            break;
        }
        case PRE_METASPACE: {
            cx->tmp.len = 0;
            for (size_t i = 0; i < n && st == DUET_OK; i++)
                st = s[i] == ' ' ? buf_add(&cx->tmp, ps->rep, ps->rep_len)
                                 : buf_add(&cx->tmp, s + i, 1);
            if (st != DUET_OK)
                break;
            const char *t = (const char *)cx->tmp.data;
            size_t tn = cx->tmp.len;
            bool starts = tn >= ps->rep_len && memcmp(t, ps->rep, ps->rep_len) == 0;
            bool prepend = !starts && (ps->scheme == PREPEND_ALWAYS ||
                                       (ps->scheme == PREPEND_FIRST && at_start));
            if (!ps->split) {
                st = pieces_add2(out, prepend ? ps->rep : "", prepend ? ps->rep_len : 0, t, tn,
                                 at_start);
                break;
            }
            /* split before every replacement character (MergedWithNext) */
            size_t b0 = 0;
            bool first = true;
            for (size_t i = 1; i <= tn && st == DUET_OK; i++) {
                if (i < tn && !(tn - i >= ps->rep_len && memcmp(t + i, ps->rep, ps->rep_len) == 0))
                    continue;
                if (first && prepend)
                    st = pieces_add2(out, ps->rep, ps->rep_len, t + b0, i - b0, at_start);
                else
                    st = pieces_add(out, t + b0, i - b0, at_start && b0 == 0);
                first = false;
                b0 = i;
            }
            if (tn == 0 && prepend && st == DUET_OK)
                st = pieces_add(out, ps->rep, ps->rep_len, at_start);
            break;
        }
        }
    }
    return st;
}

/* ---- BPE ----------------------------------------------------------------------- */

typedef struct sym {
    int32_t id;
    int32_t prev, next; /* -1 = none */
    bool alive;
} sym_t;

typedef struct heap_ent {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
} heap_ent_t;

static uint64_t merge_key(int32_t a, int32_t b)
{
    return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) | (1ull << 63);
}

static const merge_slot_t *merge_find(const duet_tokenizer_t *tok, int32_t a, int32_t b)
{
    if (!tok->merges)
        return NULL;
    uint64_t k = merge_key(a, b);
    size_t mask = tok->merges_cap - 1;
    size_t i = (size_t)(duet_hash_bytes(&k, sizeof(k)) & mask);
    for (;;) {
        const merge_slot_t *m = &tok->merges[i];
        if (m->key == k)
            return m;
        if (m->key == 0)
            return NULL;
        i = (i + 1) & mask;
    }
}

static bool heap_less(const heap_ent_t *x, const heap_ent_t *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static duet_status_t heap_push(enc_ctx_t *cx, size_t *n, heap_ent_t e)
{
    if (*n == cx->heap_cap &&
        duet_vec_reserve((void **)&cx->heap, &cx->heap_cap, *n + 1, sizeof(heap_ent_t)))
        return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
    heap_ent_t *h = cx->heap;
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
    return DUET_OK;
}

static heap_ent_t heap_pop(enc_ctx_t *cx, size_t *n)
{
    heap_ent_t *h = cx->heap;
    heap_ent_t top = h[0];
    heap_ent_t last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c]))
            c++;
        if (!heap_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0)
        h[i] = last;
    return top;
}

static duet_status_t push_pair(const duet_tokenizer_t *tok, enc_ctx_t *cx, size_t *hn, int32_t pos)
{
    const sym_t *s = cx->syms;
    if (pos < 0 || s[pos].next < 0)
        return DUET_OK;
    const merge_slot_t *m = merge_find(tok, s[pos].id, s[s[pos].next].id);
    if (!m)
        return DUET_OK;
    return heap_push(cx, hn, (heap_ent_t){m->rank, (uint32_t)pos, m->new_id});
}

static bool cache_get(duet_tokenizer_t *tok, const char *w, size_t n, uint64_t h, ivec_t *out,
                      duet_status_t *st)
{
    bool hit = false;
    pthread_mutex_lock(&tok->cache_lock);
    cache_slot_t *c = &tok->cache[h & (TOK_CACHE_SLOTS - 1)];
    if (c->key && c->hash == h && c->klen == n && memcmp(c->key, w, n) == 0) {
        *st = ivec_append(out, c->ids, c->n);
        hit = true;
    }
    pthread_mutex_unlock(&tok->cache_lock);
    return hit;
}

static void cache_put(duet_tokenizer_t *tok, const char *w, size_t n, uint64_t h,
                      const int32_t *ids, size_t nids)
{
    char *key = duet_malloc(n + 1);
    int32_t *copy = duet_malloc(nids * sizeof(*ids) + 1);
    if (!key || !copy) { /* a cache is optional */
        duet_free(key);
        duet_free(copy);
        return;
    }
    memcpy(key, w, n);
    if (nids > 0)
        memcpy(copy, ids, nids * sizeof(*ids));
    pthread_mutex_lock(&tok->cache_lock);
    cache_slot_t *c = &tok->cache[h & (TOK_CACHE_SLOTS - 1)];
    char *old_key = c->key;
    int32_t *old_ids = c->ids;
    *c = (cache_slot_t){h, key, n, copy, nids};
    pthread_mutex_unlock(&tok->cache_lock);
    duet_free(old_key);
    duet_free(old_ids);
}

static bool vocab_get(const duet_tokenizer_t *tok, const char *s, size_t n, int32_t *id)
{
    int64_t v;
    if (!duet_strmap_get(tok->vocab, s, n, &v))
        return false;
    *id = (int32_t)v;
    return true;
}

/* BPE one word (valid UTF-8) and append its ids to out. */
static duet_status_t bpe_word(const duet_tokenizer_t *ctok, enc_ctx_t *cx, const char *w, size_t n,
                              ivec_t *out)
{
    duet_tokenizer_t *tok = (duet_tokenizer_t *)ctok; /* only the cache is written */
    duet_status_t st = DUET_OK;
    uint64_t h = 0;
    bool cacheable = n <= TOK_CACHE_MAX_WORD;
    if (cacheable) {
        h = duet_hash_bytes(w, n);
        if (cache_get(tok, w, n, h, out, &st))
            return st;
    }
    size_t out0 = out->n;
    int32_t id;
    if (tok->ignore_merges && vocab_get(tok, w, n, &id)) {
        st = ivec_push(out, id);
        goto out_cache;
    }
    /* Symbols: one per character, as HF's BPE::merge_word builds them.
     * A character outside the vocab becomes its "<0xNN>" byte tokens
     * (byte_fallback) or an unk that is held pending: consecutive unks fuse
     * (fuse_unk), and a pending unk is only written when the next in-vocab
     * character (or the end) comes, so it lands after any byte tokens in
     * between. HF does exactly this; a character with neither is dropped. */
    size_t ns = 0;
    bool unk_pending = false;
    for (size_t i = 0; i <= n;) {
        int32_t ids[6];
        size_t nid = 0, cl = 0;
        if (i == n) {
            if (unk_pending)
                ids[nid++] = tok->unk_id;
        } else {
            (void)utf8_cp((const uint8_t *)w + i, &cl);
            if (i + cl > n)
                cl = n - i;
            bool bytes = false;
            if (vocab_get(tok, w + i, cl, &id)) {
                if (unk_pending)
                    ids[nid++] = tok->unk_id;
                unk_pending = false;
                ids[nid++] = id;
            } else {
                if (tok->byte_fallback) {
                    bytes = true;
                    for (size_t k = 0; k < cl; k++)
                        bytes = bytes && tok->byte_ids[(uint8_t)w[i + k]] >= 0;
                    for (size_t k = 0; bytes && k < cl; k++)
                        ids[nid++] = tok->byte_ids[(uint8_t)w[i + k]];
                }
                if (!bytes && tok->unk_id >= 0) {
                    if (unk_pending && !tok->fuse_unk)
                        ids[nid++] = tok->unk_id;
                    unk_pending = true;
                }
            }
        }
        if (ns + nid > cx->syms_cap &&
            duet_vec_reserve((void **)&cx->syms, &cx->syms_cap, ns + nid, sizeof(sym_t)))
            return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
        for (size_t k = 0; k < nid; k++) {
            cx->syms[ns] = (sym_t){ids[k], (int32_t)ns - 1, (int32_t)ns + 1, true};
            ns++;
        }
        if (i == n)
            break;
        i += cl;
    }
    if (ns == 0)
        goto out_cache;
    if (ns > INT32_MAX)
        return duet_errorf(DUET_ERR_RANGE, "%s: word of %zu bytes is too long", tok->name, n);
    cx->syms[ns - 1].next = -1;
    size_t hn = 0;
    for (size_t i = 0; i + 1 < ns; i++)
        if ((st = push_pair(tok, cx, &hn, (int32_t)i)) != DUET_OK)
            return st;
    while (hn > 0) {
        heap_ent_t e = heap_pop(cx, &hn);
        sym_t *a = &cx->syms[e.pos];
        if (!a->alive || a->next < 0)
            continue;
        sym_t *b = &cx->syms[a->next];
        const merge_slot_t *m = merge_find(tok, a->id, b->id);
        if (!m || m->new_id != e.new_id || m->rank != e.rank)
            continue; /* stale entry */
        a->id = e.new_id;
        b->alive = false;
        a->next = b->next;
        if (b->next >= 0)
            cx->syms[b->next].prev = (int32_t)e.pos;
        if ((st = push_pair(tok, cx, &hn, a->prev)) != DUET_OK ||
            (st = push_pair(tok, cx, &hn, (int32_t)e.pos)) != DUET_OK)
            return st;
    }
    for (int32_t i = 0; i >= 0; i = cx->syms[i].next)
        if ((st = ivec_push(out, cx->syms[i].id)) != DUET_OK)
            return st;
out_cache:
    if (st == DUET_OK && cacheable)
        cache_put(tok, w, n, h, out->n > out0 ? out->v + out0 : NULL, out->n - out0);
    return st;
}

/* ---- added tokens ---------------------------------------------------------------- */

typedef struct seg {
    size_t off, len;
    int32_t id; /* -1: text to tokenize */
} seg_t;

typedef struct segvec {
    seg_t *v;
    size_t n, cap;
} segvec_t;

static duet_status_t seg_push(segvec_t *sv, seg_t s)
{
    if (s.id < 0 && s.len == 0)
        return DUET_OK;
    if (sv->n == sv->cap && duet_vec_reserve((void **)&sv->v, &sv->cap, sv->n + 1, sizeof(seg_t)))
        return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
    sv->v[sv->n++] = s;
    return DUET_OK;
}

/* HF's single_word boundary test: is the character at byte j a regex \w
 * character (Alphabetic, Mark, Nd, Pc, Join_Control)? */
static bool word_char_at(const duet_tokenizer_t *tok, pcre2_match_data *md, const char *s, size_t n,
                         size_t j)
{
    return pcre2_match(tok->word_re, (PCRE2_SPTR)s, n, j, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, md,
                       tok->mctx) > 0;
}

static bool word_char_before(const duet_tokenizer_t *tok, pcre2_match_data *md, const char *s,
                             size_t n, size_t i)
{
    if (i == 0)
        return false;
    size_t j = i - 1;
    while (j > 0 && ((uint8_t)s[j] & 0xC0) == 0x80)
        j--;
    return word_char_at(tok, md, s, n, j);
}

/* Length of whitespace before s[end] going back no further than `floor`. */
static size_t space_back(const char *s, size_t floor, size_t end)
{
    size_t i = end;
    while (i > floor) {
        size_t j = i - 1;
        while (j > floor && ((uint8_t)s[j] & 0xC0) == 0x80)
            j--;
        size_t l;
        uint32_t c = utf8_cp((const uint8_t *)s + j, &l);
        if (!is_unicode_space(c))
            break;
        i = j;
    }
    return end - i;
}

static size_t space_fwd(const char *s, size_t n, size_t i)
{
    size_t i0 = i;
    while (i < n) {
        size_t l;
        uint32_t c = utf8_cp((const uint8_t *)s + i, &l);
        if (!is_unicode_space(c))
            break;
        i += l;
    }
    return i - i0;
}

/* Split s[0..n) into text and added-token segments (tokens with the given
 * `normalized` flag), leftmost-longest. */
static duet_status_t split_added(const duet_tokenizer_t *tok, pcre2_match_data *md, bool normalized,
                                 const char *s, size_t n, segvec_t *out)
{
    size_t text0 = 0, i = 0;
    duet_status_t st;
    while (i < n) {
        if (!tok->added_first[normalized][(uint8_t)s[i]]) {
            i++;
            continue;
        }
        const added_tok_t *best = NULL;
        for (size_t k = 0; k < tok->n_added; k++) {
            const added_tok_t *a = &tok->added[k];
            if (a->normalized != normalized || a->match_len > n - i ||
                (best && a->match_len <= best->match_len) ||
                memcmp(s + i, a->match, a->match_len) != 0)
                continue;
            if (a->single_word &&
                (word_char_before(tok, md, s, n, i) ||
                 (i + a->match_len < n && word_char_at(tok, md, s, n, i + a->match_len))))
                continue;
            best = a;
        }
        if (!best) {
            i++;
            continue;
        }
        size_t ms = i, me = i + best->match_len;
        if (best->lstrip)
            ms -= space_back(s, text0, ms);
        if (best->rstrip)
            me += space_fwd(s, n, me);
        if ((st = seg_push(out, (seg_t){text0, ms - text0, -1})) != DUET_OK ||
            (st = seg_push(out, (seg_t){ms, me - ms, best->id})) != DUET_OK)
            return st;
        i = text0 = me;
    }
    return seg_push(out, (seg_t){text0, n - text0, -1});
}

/* ---- encode --------------------------------------------------------------------- */

static duet_status_t normalize(const duet_tokenizer_t *tok, enc_ctx_t *cx, const char *s, size_t n,
                               duet_buf_t *out)
{
    duet_status_t st;
    out->len = 0;
    if ((st = buf_add(out, s, n)) != DUET_OK)
        return st;
    for (size_t k = 0; k < tok->n_norm; k++) {
        const norm_step_t *ns = &tok->norm[k];
        if (ns->kind == NORM_NFC && duet__nfc_quick_check((const char *)out->data, out->len))
            continue;
        /* both buffers allocated, so that data + pos is defined on "" */
        if (duet_buf_append(out, NULL, 0) || duet_buf_append(&cx->tmp, NULL, 0))
            return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
        cx->tmp.len = 0;
        if (ns->kind == NORM_PREPEND) {
            if (out->len == 0)
                continue;
            if ((st = buf_add(&cx->tmp, ns->str, ns->len)) != DUET_OK)
                return st;
            if ((st = buf_add(&cx->tmp, out->data, out->len)) != DUET_OK)
                return st;
        } else if (ns->kind == NORM_NFC) {
            if ((st = duet__nfc_append((const char *)out->data, out->len, &cx->tmp)) != DUET_OK)
                return st;
        } else { /* NORM_REPLACE */
            size_t pos = 0;
            for (;;) {
                size_t ms, me;
                bool found;
                if ((st = re_next(tok, ns->re, cx->md, (const char *)out->data, out->len, pos, &ms,
                                  &me, &found)) != DUET_OK)
                    return st;
                if (!found)
                    break;
                if ((st = buf_add(&cx->tmp, out->data + pos, ms - pos)) != DUET_OK ||
                    (st = buf_add(&cx->tmp, ns->str, ns->len)) != DUET_OK)
                    return st;
                pos = me;
            }
            if ((st = buf_add(&cx->tmp, out->data + pos, out->len - pos)) != DUET_OK)
                return st;
        }
        duet_buf_t t = *out;
        *out = cx->tmp;
        cx->tmp = t;
    }
    return DUET_OK;
}

static duet_status_t encode_text(const duet_tokenizer_t *tok, enc_ctx_t *cx, const char *s,
                                 size_t n, bool at_start, ivec_t *out)
{
    duet_status_t st;
    pieces_t *in = &cx->a, *nx = &cx->b;
    pieces_reset(in);
    if ((st = pieces_add(in, s, n, at_start)) != DUET_OK)
        return st;
    for (size_t k = 0; k < tok->n_pre; k++) {
        pieces_reset(nx);
        if ((st = pre_step_run(tok, cx, &tok->pre[k], in, nx)) != DUET_OK)
            return st;
        pieces_t *t = in;
        in = nx;
        nx = t;
    }
    for (size_t k = 0; k < in->n; k++)
        if ((st = bpe_word(tok, cx, (const char *)in->text.data + in->v[k].off, in->v[k].len,
                           out)) != DUET_OK)
            return st;
    return DUET_OK;
}

duet_status_t duet_tokenizer_encode(const duet_tokenizer_t *tok, const char *text, size_t len,
                                    bool add_special, int32_t **ids_out, size_t *n_out)
{
    if (!tok || (!text && len) || !ids_out || !n_out)
        return duet_errorf(DUET_ERR_INVALID, "duet_tokenizer_encode: NULL argument");
    size_t bad = utf8_check(text, len);
    if (bad < len)
        return duet_errorf(DUET_ERR_INVALID, "%s: encode: text is not valid UTF-8 at byte %zu",
                           tok->name, bad);
    duet_status_t st = DUET_OK;
    ivec_t out = {0};
    segvec_t raw = {0}, norm = {0};
    enc_ctx_t cx = {0};
    cx.md = pcre2_match_data_create(32, NULL);
    if (!cx.md) {
        st = duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
        goto out_free;
    }
    if (add_special && (st = ivec_append(&out, tok->prefix_ids, tok->n_prefix)) != DUET_OK)
        goto out_free;
    if ((st = split_added(tok, cx.md, false, text, len, &raw)) != DUET_OK)
        goto out_free;
    for (size_t i = 0; i < raw.n; i++) {
        seg_t sg = raw.v[i];
        if (sg.id >= 0) {
            if ((st = ivec_push(&out, sg.id)) != DUET_OK)
                goto out_free;
            continue;
        }
        if ((st = normalize(tok, &cx, text + sg.off, sg.len, &cx.nbuf)) != DUET_OK)
            goto out_free;
        norm.n = 0;
        if ((st = split_added(tok, cx.md, true, (const char *)cx.nbuf.data, cx.nbuf.len, &norm)) !=
            DUET_OK)
            goto out_free;
        for (size_t j = 0; j < norm.n; j++) {
            seg_t ns = norm.v[j];
            if (ns.id >= 0)
                st = ivec_push(&out, ns.id);
            else
                st = encode_text(tok, &cx, (const char *)cx.nbuf.data + ns.off, ns.len,
                                 sg.off == 0 && ns.off == 0, &out);
            if (st != DUET_OK)
                goto out_free;
        }
    }
    if (add_special && (st = ivec_append(&out, tok->suffix_ids, tok->n_suffix)) != DUET_OK)
        goto out_free;
    *ids_out = out.v;
    *n_out = out.n;
    out.v = NULL;
out_free:
    duet_free(out.v);
    duet_free(raw.v);
    duet_free(norm.v);
    pieces_cleanup(&cx.a);
    pieces_cleanup(&cx.b);
    duet_buf_cleanup(&cx.nbuf);
    duet_buf_cleanup(&cx.tmp);
    duet_free(cx.spans);
    duet_free(cx.syms);
    duet_free(cx.heap);
    pcre2_match_data_free(cx.md);
    return st;
}

/* ---- decode ----------------------------------------------------------------------- */

typedef struct toklist {
    duet_buf_t buf;
    size_t *off, *len;
    size_t n, cap;
} toklist_t;

static void toklist_cleanup(toklist_t *t)
{
    duet_buf_cleanup(&t->buf);
    duet_free(t->off);
    duet_free(t->len);
    memset(t, 0, sizeof(*t));
}

static duet_status_t toklist_open(toklist_t *t)
{
    /* keep buf.data non-NULL so that data + off is always defined */
    if (!t->buf.data && duet_buf_append(&t->buf, NULL, 0) != DUET_OK)
        return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
    if (t->n == t->cap) {
        size_t c1 = t->cap, c2 = t->cap;
        if (duet_vec_reserve((void **)&t->off, &c1, t->n + 1, sizeof(size_t)) ||
            duet_vec_reserve((void **)&t->len, &c2, t->n + 1, sizeof(size_t)))
            return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
        t->cap = DUET_MIN(c1, c2);
    }
    t->off[t->n] = t->buf.len;
    t->len[t->n] = 0;
    t->n++;
    return DUET_OK;
}

/* Append bytes to the last (open) token. */
static duet_status_t toklist_cat(toklist_t *t, const void *p, size_t n)
{
    duet_status_t st = buf_add(&t->buf, p, n);
    if (st == DUET_OK)
        t->len[t->n - 1] += n;
    return st;
}

static duet_status_t toklist_add(toklist_t *t, const void *p, size_t n)
{
    duet_status_t st = toklist_open(t);
    return st ? st : toklist_cat(t, p, n);
}

static bool parse_byte_token(const char *s, size_t n, uint8_t *b)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return false;
    unsigned v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            d = (unsigned)((c | 0x20) - 'a' + 10);
        else
            return false;
        v = v * 16 + d;
    }
    *b = (uint8_t)v;
    return true;
}

/* ByteLevel decoder on one token: map code points back to bytes; a token
 * with any character outside the map contributes its own UTF-8 bytes. */
static duet_status_t bytelevel_token(duet_buf_t *b, const char *s, size_t n)
{
    size_t start = b->len;
    for (size_t i = 0; i < n;) {
        size_t l;
        uint32_t c = utf8_cp((const uint8_t *)s + i, &l);
        if (c >= 512 || cp_to_byte[c] < 0) {
            b->len = start;
            return buf_add(b, s, n);
        }
        uint8_t byte = (uint8_t)cp_to_byte[c];
        if (buf_add(b, &byte, 1))
            return DUET_ERR_NOMEM;
        i += l;
    }
    return DUET_OK;
}

static duet_status_t dec_step_run(const dec_step_t *ds, bool raw, const toklist_t *in,
                                  toklist_t *out)
{
    duet_status_t st = DUET_OK;
    switch (ds->kind) {
    case DEC_BYTELEVEL: {
        duet_buf_t bytes = {0};
        for (size_t i = 0; i < in->n && st == DUET_OK; i++)
            st = bytelevel_token(&bytes, (const char *)in->buf.data + in->off[i], in->len[i]);
        if (st == DUET_OK)
            st = toklist_open(out);
        if (st == DUET_OK) {
            if (raw) {
                st = toklist_cat(out, bytes.data, bytes.len);
            } else {
                size_t l0 = out->buf.len;
                st = utf8_lossy_append(&out->buf, (const char *)bytes.data, bytes.len);
                out->len[out->n - 1] = out->buf.len - l0;
            }
        }
        duet_buf_cleanup(&bytes);
        return st;
    }
    case DEC_BYTEFALLBACK: {
        size_t run_start = 0, run_n = 0;
        for (size_t i = 0; i <= in->n && st == DUET_OK; i++) {
            uint8_t byte = 0;
            const char *s = i < in->n ? (const char *)in->buf.data + in->off[i] : NULL;
            if (s && parse_byte_token(s, in->len[i], &byte)) {
                if (run_n++ == 0)
                    run_start = i;
                continue;
            }
            if (run_n > 0) {
                char tmp[256];
                size_t tn = 0;
                st = toklist_open(out);
                for (size_t k = 0; k < run_n && st == DUET_OK; k++) {
                    (void)parse_byte_token((const char *)in->buf.data + in->off[run_start + k], 6,
                                           &byte);
                    tmp[tn++] = (char)byte;
                    if (tn == sizeof(tmp)) {
                        st = toklist_cat(out, tmp, tn);
                        tn = 0;
                    }
                }
                if (st == DUET_OK)
                    st = toklist_cat(out, tmp, tn);
                /* HF: a run that is not valid UTF-8 becomes one U+FFFD per byte */
                if (st == DUET_OK && !raw) {
                    const char *r = (const char *)out->buf.data + out->off[out->n - 1];
                    if (utf8_check(r, out->len[out->n - 1]) != out->len[out->n - 1]) {
                        out->buf.len = out->off[out->n - 1];
                        out->len[out->n - 1] = 0;
                        for (size_t k = 0; k < run_n && st == DUET_OK; k++)
                            st = toklist_cat(out, REPLACEMENT_CHAR, 3);
                    }
                }
                run_n = 0;
            }
            if (s && st == DUET_OK)
                st = toklist_add(out, s, in->len[i]);
        }
        return st;
    }
    case DEC_FUSE:
        st = toklist_open(out);
        for (size_t i = 0; i < in->n && st == DUET_OK; i++)
            st = toklist_cat(out, in->buf.data + in->off[i], in->len[i]);
        return st;
    case DEC_REPLACE:
        for (size_t i = 0; i < in->n && st == DUET_OK; i++) {
            const char *s = (const char *)in->buf.data + in->off[i];
            size_t n = in->len[i], run = 0;
            st = toklist_open(out);
            for (size_t j = 0; j < n && st == DUET_OK;) {
                if (ds->pat_len > 0 && n - j >= ds->pat_len &&
                    memcmp(s + j, ds->pat, ds->pat_len) == 0) {
                    st = toklist_cat(out, s + run, j - run);
                    if (st == DUET_OK)
                        st = toklist_cat(out, ds->content, ds->content_len);
                    j += ds->pat_len;
                    run = j;
                } else {
                    j++;
                }
            }
            if (st == DUET_OK)
                st = toklist_cat(out, s + run, n - run);
        }
        return st;
    case DEC_STRIP:
        for (size_t i = 0; i < in->n && st == DUET_OK; i++) {
            const char *s = (const char *)in->buf.data + in->off[i];
            size_t b = 0, e = in->len[i];
            for (size_t k = 0;
                 k < ds->start && e - b >= ds->ch_len && memcmp(s + b, ds->ch, ds->ch_len) == 0;
                 k++)
                b += ds->ch_len;
            size_t stop = raw && ds->after_fuse ? 0 : ds->stop;
            for (size_t k = 0; k < stop && e - b >= ds->ch_len &&
                               memcmp(s + e - ds->ch_len, ds->ch, ds->ch_len) == 0;
                 k++)
                e -= ds->ch_len;
            st = toklist_add(out, s + b, e - b);
        }
        return st;
    case DEC_METASPACE:
        for (size_t i = 0; i < in->n && st == DUET_OK; i++) {
            const char *s = (const char *)in->buf.data + in->off[i];
            size_t n = in->len[i], run = 0;
            bool drop = i == 0 && ds->scheme != PREPEND_NEVER;
            st = toklist_open(out);
            for (size_t j = 0; j < n && st == DUET_OK;) {
                if (n - j >= ds->ch_len && memcmp(s + j, ds->ch, ds->ch_len) == 0) {
                    st = toklist_cat(out, s + run, j - run);
                    if (st == DUET_OK && !drop)
                        st = toklist_cat(out, " ", 1);
                    j += ds->ch_len;
                    run = j;
                } else {
                    j++;
                }
            }
            if (st == DUET_OK)
                st = toklist_cat(out, s + run, n - run);
        }
        return st;
    }
    return DUET_ERR_INTERNAL;
}

/* Decode into `out` (appending). raw: leave decoded bytes as they are
 * (streaming handles UTF-8 itself); otherwise ill-formed bytes become
 * U+FFFD as HF does. Ids were range-checked by the caller. */
static duet_status_t decode_into(const duet_tokenizer_t *tok, const int32_t *ids, size_t n,
                                 bool skip_special, bool raw, duet_buf_t *out)
{
    duet_status_t st = DUET_OK;
    toklist_t a = {0}, b = {0};
    for (size_t i = 0; i < n && st == DUET_OK; i++) {
        int32_t id = ids[i];
        uint8_t f = tok->id_flags[id];
        if (!(f & TF_PRESENT) || (skip_special && (f & TF_SPECIAL)))
            continue;
        st = toklist_add(&a, tok->id_str[id], tok->id_len[id]);
    }
    toklist_t *in = &a, *nx = &b;
    for (size_t k = 0; k < tok->n_dec && st == DUET_OK; k++) {
        nx->n = 0;
        nx->buf.len = 0;
        st = dec_step_run(&tok->dec[k], raw, in, nx);
        toklist_t *t = in;
        in = nx;
        nx = t;
    }
    for (size_t i = 0; i < in->n && st == DUET_OK; i++) {
        if (!tok->has_decoder && i > 0)
            st = buf_add(out, " ", 1);
        if (st == DUET_OK)
            st = buf_add(out, in->buf.data + in->off[i], in->len[i]);
    }
    toklist_cleanup(&a);
    toklist_cleanup(&b);
    return st;
}

static duet_status_t check_ids(const duet_tokenizer_t *tok, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= tok->n_ids)
            return duet_errorf(DUET_ERR_RANGE,
                               "%s: decode: id %" PRId32 " at index %zu is out of range "
                               "(vocab size %zu)",
                               tok->name, ids[i], i, tok->n_ids);
    return DUET_OK;
}

duet_status_t duet_tokenizer_decode(const duet_tokenizer_t *tok, const int32_t *ids, size_t n,
                                    bool skip_special, char **text_out, size_t *len_out)
{
    if (!tok || (!ids && n) || !text_out)
        return duet_errorf(DUET_ERR_INVALID, "duet_tokenizer_decode: NULL argument");
    duet_status_t st = check_ids(tok, ids, n);
    if (st != DUET_OK)
        return st;
    duet_buf_t out = {0};
    if ((st = decode_into(tok, ids, n, skip_special, false, &out)) != DUET_OK ||
        (st = buf_add(&out, "", 1)) != DUET_OK) {
        duet_buf_cleanup(&out);
        return st;
    }
    *text_out = (char *)out.data;
    if (len_out)
        *len_out = out.len - 1;
    return DUET_OK;
}

/* ---- streaming decode ----------------------------------------------------------------- */

struct duet_detok {
    const duet_tokenizer_t *tok;
    bool skip_special;
    int32_t prev;       /* last id that produced text, -1 at the start */
    duet_buf_t pending; /* decoded bytes not yet emitted (an incomplete character) */
    duet_buf_t out;     /* what the last push/flush returned */
    duet_buf_t scratch;
    /* ByteFallback decoders: the current run of "<0xNN>" tokens, held until
     * the run ends, because HF turns a run that is not valid UTF-8 into one
     * U+FFFD per token (valid leading characters included). */
    duet_buf_t run;
    size_t run_tokens;
};

duet_status_t duet_detok_create(const duet_tokenizer_t *tok, bool skip_special,
                                duet_detok_t **detok_out)
{
    if (!tok || !detok_out)
        return duet_errorf(DUET_ERR_INVALID, "duet_detok_create: NULL argument");
    duet_detok_t *d = duet_calloc(1, sizeof(*d));
    if (!d)
        return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
    d->tok = tok;
    d->skip_special = skip_special;
    d->prev = -1;
    /* allocated up front so that data + offset is always defined */
    if (duet_buf_append(&d->pending, NULL, 0) || duet_buf_append(&d->out, NULL, 0) ||
        duet_buf_append(&d->scratch, NULL, 0)) {
        duet_detok_destroy(&d);
        return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
    }
    *detok_out = d;
    return DUET_OK;
}

void duet_detok_destroy(duet_detok_t **detok_p)
{
    if (!detok_p || !*detok_p)
        return;
    duet_detok_t *d = *detok_p;
    duet_buf_cleanup(&d->pending);
    duet_buf_cleanup(&d->out);
    duet_buf_cleanup(&d->scratch);
    duet_buf_cleanup(&d->run);
    duet_free(d);
    *detok_p = NULL;
}

/* Move the longest prefix of `pending` that cannot grow into a different
 * character to `out` (with U+FFFD for bytes that can never be valid). */
static duet_status_t detok_emit(duet_detok_t *d, bool final)
{
    const char *p = (const char *)d->pending.data;
    size_t n = d->pending.len, i = 0;
    while (i < n) {
        bool ok, trunc;
        size_t l = utf8_seq((const uint8_t *)p + i, n - i, &ok, &trunc);
        if (trunc && !final)
            break;
        i += l;
    }
    /* characters a final Strip would remove if the text ended here */
    const duet_tokenizer_t *tok = d->tok;
    size_t hold = 0, cl = tok->stream_hold_ch_len;
    while (hold < tok->stream_hold_n && i >= cl &&
           memcmp(p + i - cl, tok->stream_hold_ch, cl) == 0) {
        i -= cl;
        hold++;
    }
    if (final)
        n = i; /* they are at the end: drop them */
    d->out.len = 0;
    duet_status_t st = utf8_lossy_append(&d->out, p, i);
    if (st == DUET_OK)
        st = buf_add(&d->out, "", 1);
    if (st != DUET_OK)
        return st;
    d->out.len--;
    if (i > 0 && n > i)
        memmove(d->pending.data, d->pending.data + i, n - i);
    d->pending.len = n - i;
    return DUET_OK;
}

/* A run of byte tokens ended: its bytes, or U+FFFD per token (as HF). */
static duet_status_t detok_end_run(duet_detok_t *d)
{
    duet_status_t st = DUET_OK;
    if (d->run_tokens == 0)
        return DUET_OK;
    if (utf8_check((const char *)d->run.data, d->run.len) == d->run.len)
        st = buf_add(&d->pending, d->run.data, d->run.len);
    else
        for (size_t i = 0; i < d->run_tokens && st == DUET_OK; i++)
            st = buf_add(&d->pending, REPLACEMENT_CHAR, 3);
    d->run.len = 0;
    d->run_tokens = 0;
    return st;
}

duet_status_t duet_detok_push(duet_detok_t *d, int32_t id, const char **text_out, size_t *len_out)
{
    if (!d || !text_out)
        return duet_errorf(DUET_ERR_INVALID, "duet_detok_push: NULL argument");
    const duet_tokenizer_t *tok = d->tok;
    duet_status_t st = check_ids(tok, &id, 1);
    if (st != DUET_OK)
        return st;
    uint8_t f = tok->id_flags[id];
    if ((f & TF_PRESENT) && !(d->skip_special && (f & TF_SPECIAL))) {
        /* The text `id` adds is decode(prev, id) minus decode(prev): the
         * previous token gives the decoders (Strip, Metaspace) their context. */
        int32_t pair[2] = {d->prev, id};
        duet_buf_t *s = &d->scratch;
        s->len = 0;
        size_t base = 0;
        if (d->prev >= 0) {
            if ((st = decode_into(tok, pair, 1, false, true, s)) != DUET_OK)
                return st;
            base = s->len;
            st = decode_into(tok, pair, 2, false, true, s);
        } else {
            st = decode_into(tok, pair + 1, 1, false, true, s);
        }
        if (st != DUET_OK)
            return st;
        const uint8_t *one = s->data, *two = s->data + base;
        size_t two_len = s->len - base;
        size_t add_off = base, add_len = two_len;
        if (base > 0) {
            if (two_len >= base && memcmp(one, two, base) == 0) {
                add_off = base + base;
                add_len = two_len - base;
            } else { /* decoder without a prefix property: decode the id alone */
                size_t l0 = s->len;
                if ((st = decode_into(tok, pair + 1, 1, false, true, s)) != DUET_OK)
                    return st;
                add_off = l0;
                add_len = s->len - l0;
            }
        }
        uint8_t byte;
        if (tok->dec_bytefallback && parse_byte_token(tok->id_str[id], tok->id_len[id], &byte)) {
            st = buf_add(&d->run, s->data + add_off, add_len);
            d->run_tokens++;
        } else {
            st = detok_end_run(d);
            if (st == DUET_OK)
                st = buf_add(&d->pending, s->data + add_off, add_len);
        }
        if (st != DUET_OK)
            return st;
        d->prev = id;
    }
    if ((st = detok_emit(d, false)) != DUET_OK)
        return st;
    *text_out = (const char *)d->out.data;
    if (len_out)
        *len_out = d->out.len;
    return DUET_OK;
}

duet_status_t duet_detok_flush(duet_detok_t *d, const char **text_out, size_t *len_out)
{
    if (!d || !text_out)
        return duet_errorf(DUET_ERR_INVALID, "duet_detok_flush: NULL argument");
    duet_status_t st = detok_end_run(d);
    if (st == DUET_OK)
        st = detok_emit(d, true);
    if (st != DUET_OK)
        return st;
    d->prev = -1;
    *text_out = (const char *)d->out.data;
    if (len_out)
        *len_out = d->out.len;
    return DUET_OK;
}

/* ---- queries ------------------------------------------------------------------------------ */

size_t duet_tokenizer_vocab_size(const duet_tokenizer_t *tok)
{
    return tok ? tok->n_ids : 0;
}

int32_t duet_tokenizer_token_id(const duet_tokenizer_t *tok, const char *token)
{
    int64_t v;
    if (!tok || !token)
        return -1;
    size_t n = strlen(token);
    if (duet_strmap_get(tok->added_map, token, n, &v) || duet_strmap_get(tok->vocab, token, n, &v))
        return (int32_t)v;
    return -1;
}

const char *duet_tokenizer_token_str(const duet_tokenizer_t *tok, int32_t id, size_t *len_out)
{
    if (!tok || id < 0 || (size_t)id >= tok->n_ids || !(tok->id_flags[id] & TF_PRESENT))
        return NULL;
    if (len_out)
        *len_out = tok->id_len[id];
    return tok->id_str[id];
}

bool duet_tokenizer_is_special(const duet_tokenizer_t *tok, int32_t id)
{
    return tok && id >= 0 && (size_t)id < tok->n_ids && (tok->id_flags[id] & TF_SPECIAL);
}

int32_t duet_tokenizer_bos(const duet_tokenizer_t *tok)
{
    return tok ? tok->bos : -1;
}

int32_t duet_tokenizer_eos(const duet_tokenizer_t *tok)
{
    return tok ? tok->eos : -1;
}

/* ---- loading ------------------------------------------------------------------------------- */

typedef struct loader {
    const char *name;
    duet_tokenizer_t *tok;
} loader_t;

static duet_status_t lerr(const loader_t *ld, duet_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static duet_status_t lerr(const loader_t *ld, duet_status_t st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return duet_errorf(st, "%s: %s", ld->name, msg);
}

static const char *jtype_name(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* Member `key` of `obj` (at `path`) of JSON type `type` (JSON_TRUE means
 * boolean). Absent or null: *out = NULL, an error if `required`. */
static duet_status_t jget(const loader_t *ld, const json_t *obj, const char *path, const char *key,
                          json_type type, bool required, json_t **out)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required)
            return lerr(ld, DUET_ERR_INVALID, "%s%s%s: missing", path, *path ? "." : "", key);
        return DUET_OK;
    }
    bool ok = type == JSON_TRUE ? json_is_boolean(v) : json_typeof(v) == type;
    if (!ok) {
        const char *want = type == JSON_OBJECT    ? "an object"
                           : type == JSON_ARRAY   ? "an array"
                           : type == JSON_STRING  ? "a string"
                           : type == JSON_INTEGER ? "an integer"
                           : type == JSON_TRUE    ? "a boolean"
                                                  : "?";
        return lerr(ld, DUET_ERR_INVALID, "%s%s%s: expected %s, got %s", path, *path ? "." : "",
                    key, want, jtype_name(v));
    }
    *out = v;
    return DUET_OK;
}

static duet_status_t jbool(const loader_t *ld, const json_t *obj, const char *path, const char *key,
                           bool dflt, bool *out)
{
    json_t *v;
    duet_status_t st = jget(ld, obj, path, key, JSON_TRUE, false, &v);
    if (st == DUET_OK)
        *out = v ? json_is_true(v) : dflt;
    return st;
}

static duet_status_t jstr(const loader_t *ld, const json_t *obj, const char *path, const char *key,
                          bool required, const char **s, size_t *len)
{
    json_t *v;
    duet_status_t st = jget(ld, obj, path, key, JSON_STRING, required, &v);
    if (st != DUET_OK)
        return st;
    *s = v ? json_string_value(v) : NULL;
    *len = v ? json_string_length(v) : 0;
    return DUET_OK;
}

/* A string that must be exactly one character (Metaspace replacement, Strip content). */
static duet_status_t jchar(const loader_t *ld, const json_t *obj, const char *path, const char *key,
                           const char *dflt, char out[8], size_t *out_len)
{
    const char *s;
    size_t n;
    duet_status_t st = jstr(ld, obj, path, key, dflt == NULL, &s, &n);
    if (st != DUET_OK)
        return st;
    if (!s) {
        s = dflt;
        n = strlen(dflt);
    }
    bool ok, trunc;
    if (n == 0 || n > 4 || utf8_seq((const uint8_t *)s, n, &ok, &trunc) != n || !ok)
        return lerr(ld, DUET_ERR_INVALID, "%s.%s: expected one character, got \"%.*s\"", path, key,
                    (int)DUET_MIN(n, 40), s);
    memcpy(out, s, n);
    *out_len = n;
    return DUET_OK;
}

static duet_status_t jsize(const loader_t *ld, const json_t *obj, const char *path, const char *key,
                           size_t dflt, size_t *out)
{
    json_t *v;
    duet_status_t st = jget(ld, obj, path, key, JSON_INTEGER, false, &v);
    if (st != DUET_OK)
        return st;
    if (!v) {
        *out = dflt;
        return DUET_OK;
    }
    json_int_t x = json_integer_value(v);
    if (x < 0 || x > 1000000)
        return lerr(ld, DUET_ERR_INVALID, "%s.%s: %lld is out of range", path, key, (long long)x);
    *out = (size_t)x;
    return DUET_OK;
}

/* {"String": s} or {"Regex": r} */
static duet_status_t jpattern(const loader_t *ld, const json_t *obj, const char *path,
                              bool allow_regex, pcre2_code **re_out, const char **lit,
                              size_t *lit_len)
{
    json_t *p, *v;
    duet_status_t st = jget(ld, obj, path, "pattern", JSON_OBJECT, true, &p);
    if (st != DUET_OK)
        return st;
    char sub[300];
    snprintf(sub, sizeof(sub), "%s.pattern", path);
    bool is_regex = false;
    if ((st = jget(ld, p, sub, "String", JSON_STRING, false, &v)) != DUET_OK)
        return st;
    if (!v) {
        if ((st = jget(ld, p, sub, "Regex", JSON_STRING, false, &v)) != DUET_OK)
            return st;
        if (!v)
            return lerr(ld, DUET_ERR_INVALID, "%s: expected {\"String\": ...} or {\"Regex\": ...}",
                        sub);
        is_regex = true;
    }
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n == 0)
        return lerr(ld, DUET_ERR_INVALID, "%s: empty pattern", sub);
    if (lit) {
        if (is_regex && !allow_regex)
            return lerr(ld, DUET_ERR_UNSUPPORTED, "%s: a Regex pattern is not supported here", sub);
        *lit = s;
        *lit_len = n;
    }
    if (re_out) {
        char err[256];
        if (re_compile(s, n, !is_regex, re_out, err, sizeof(err)) != DUET_OK)
            return lerr(ld, DUET_ERR_INVALID, "%s: %s", sub, err);
    }
    return DUET_OK;
}

static duet_status_t jscheme(const loader_t *ld, const json_t *obj, const char *path,
                             prepend_scheme_t *out)
{
    const char *s;
    size_t n;
    duet_status_t st = jstr(ld, obj, path, "prepend_scheme", false, &s, &n);
    if (st != DUET_OK)
        return st;
    if (!s) { /* older files: add_prefix_space */
        bool aps;
        if ((st = jbool(ld, obj, path, "add_prefix_space", true, &aps)) != DUET_OK)
            return st;
        *out = aps ? PREPEND_ALWAYS : PREPEND_NEVER;
        return DUET_OK;
    }
    if (!strcmp(s, "always"))
        *out = PREPEND_ALWAYS;
    else if (!strcmp(s, "first"))
        *out = PREPEND_FIRST;
    else if (!strcmp(s, "never"))
        *out = PREPEND_NEVER;
    else
        return lerr(ld, DUET_ERR_INVALID,
                    "%s.prepend_scheme: \"%s\" is not one of always, first, never", path, s);
    return DUET_OK;
}

static duet_status_t jtype(const loader_t *ld, const json_t *obj, const char *path,
                           const char **type)
{
    size_t n;
    if (!json_is_object(obj))
        return lerr(ld, DUET_ERR_INVALID, "%s: expected an object, got %s", path, jtype_name(obj));
    return jstr(ld, obj, path, "type", true, type, &n);
}

#define GROW(ld, arr, n, cap)                                                                      \
    (((n) == (cap) && duet_vec_reserve((void **)&(arr), &(cap), (n) + 1, sizeof(*(arr))))          \
         ? lerr((ld), DUET_ERR_NOMEM, "out of memory")                                             \
         : DUET_OK)

static duet_status_t load_normalizer(loader_t *ld, const json_t *j, const char *path, int depth,
                                     size_t *cap)
{
    duet_tokenizer_t *tok = ld->tok;
    const char *type;
    duet_status_t st;
    if (depth > TOK_MAX_DEPTH)
        return lerr(ld, DUET_ERR_INVALID, "%s: Sequence nested too deep", path);
    if ((st = jtype(ld, j, path, &type)) != DUET_OK)
        return st;
    if (!strcmp(type, "Sequence")) {
        json_t *arr;
        if ((st = jget(ld, j, path, "normalizers", JSON_ARRAY, true, &arr)) != DUET_OK)
            return st;
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char sub[300];
            snprintf(sub, sizeof(sub), "%s.normalizers[%zu]", path, i);
            if ((st = load_normalizer(ld, json_array_get(arr, i), sub, depth + 1, cap)) != DUET_OK)
                return st;
        }
        return DUET_OK;
    }
    if ((st = GROW(ld, tok->norm, tok->n_norm, *cap)) != DUET_OK)
        return st;
    norm_step_t *ns = &tok->norm[tok->n_norm];
    memset(ns, 0, sizeof(*ns));
    const char *s = NULL;
    size_t n = 0;
    if (!strcmp(type, "Prepend")) {
        ns->kind = NORM_PREPEND;
        if ((st = jstr(ld, j, path, "prepend", true, &s, &n)) != DUET_OK)
            return st;
    } else if (!strcmp(type, "Replace")) {
        ns->kind = NORM_REPLACE;
        if ((st = jstr(ld, j, path, "content", true, &s, &n)) != DUET_OK)
            return st;
        if ((st = jpattern(ld, j, path, true, &ns->re, NULL, NULL)) != DUET_OK)
            return st;
    } else if (!strcmp(type, "NFC")) {
        ns->kind = NORM_NFC;
    } else {
        return lerr(ld, DUET_ERR_UNSUPPORTED, "%s: normalizer type \"%s\" is not supported", path,
                    type);
    }
    tok->n_norm++;
    if (s && !(ns->str = duet_strndup(s, n)))
        return lerr(ld, DUET_ERR_NOMEM, "out of memory");
    ns->len = n;
    return DUET_OK;
}

static duet_status_t load_pre(loader_t *ld, const json_t *j, const char *path, int depth,
                              size_t *cap)
{
    duet_tokenizer_t *tok = ld->tok;
    const char *type;
    duet_status_t st;
    if (depth > TOK_MAX_DEPTH)
        return lerr(ld, DUET_ERR_INVALID, "%s: Sequence nested too deep", path);
    if ((st = jtype(ld, j, path, &type)) != DUET_OK)
        return st;
    if (!strcmp(type, "Sequence")) {
        json_t *arr;
        if ((st = jget(ld, j, path, "pretokenizers", JSON_ARRAY, true, &arr)) != DUET_OK)
            return st;
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char sub[300];
            snprintf(sub, sizeof(sub), "%s.pretokenizers[%zu]", path, i);
            if ((st = load_pre(ld, json_array_get(arr, i), sub, depth + 1, cap)) != DUET_OK)
                return st;
        }
        return DUET_OK;
    }
    if ((st = GROW(ld, tok->pre, tok->n_pre, *cap)) != DUET_OK)
        return st;
    pre_step_t *ps = &tok->pre[tok->n_pre];
    memset(ps, 0, sizeof(*ps));
    if (!strcmp(type, "ByteLevel")) {
        ps->kind = PRE_BYTELEVEL;
        if ((st = jbool(ld, j, path, "add_prefix_space", true, &ps->add_prefix_space)) ||
            (st = jbool(ld, j, path, "use_regex", true, &ps->use_regex)))
            return st;
        tok->n_pre++;
        if (ps->use_regex && !tok->gpt2_re) {
            char err[256];
            if (re_compile(GPT2_PATTERN, sizeof(GPT2_PATTERN) - 1, false, &tok->gpt2_re, err,
                           sizeof(err)) != DUET_OK)
                return lerr(ld, DUET_ERR_INTERNAL, "GPT-2 pattern: %s", err);
        }
        return DUET_OK;
    }
    if (!strcmp(type, "Split")) {
        const char *b;
        size_t n;
        ps->kind = PRE_SPLIT;
        tok->n_pre++; /* from here on ps->re is owned by the tokenizer */
        if ((st = jpattern(ld, j, path, true, &ps->re, NULL, NULL)) ||
            (st = jbool(ld, j, path, "invert", false, &ps->invert)) ||
            (st = jstr(ld, j, path, "behavior", true, &b, &n)))
            return st;
        static const struct {
            const char *name;
            split_behavior_t b;
        } names[] = {{"Removed", SPLIT_REMOVED},
                     {"Isolated", SPLIT_ISOLATED},
                     {"MergedWithPrevious", SPLIT_MERGED_PREV},
                     {"MergedWithNext", SPLIT_MERGED_NEXT},
                     {"Contiguous", SPLIT_CONTIGUOUS}};
        for (size_t i = 0; i < DUET_ARRAY_LEN(names); i++)
            if (!strcmp(b, names[i].name)) {
                ps->behavior = names[i].b;
                return DUET_OK;
            }
        return lerr(ld, DUET_ERR_INVALID, "%s.behavior: \"%s\" is not a split behavior", path, b);
    }
    if (!strcmp(type, "Metaspace")) {
        ps->kind = PRE_METASPACE;
        if ((st = jchar(ld, j, path, "replacement", "\xE2\x96\x81", ps->rep, &ps->rep_len)) ||
            (st = jscheme(ld, j, path, &ps->scheme)) ||
            (st = jbool(ld, j, path, "split", true, &ps->split)))
            return st;
        tok->n_pre++;
        return DUET_OK;
    }
    return lerr(ld, DUET_ERR_UNSUPPORTED, "%s: pre-tokenizer type \"%s\" is not supported", path,
                type);
}

static duet_status_t load_decoder(loader_t *ld, const json_t *j, const char *path, int depth,
                                  size_t *cap)
{
    duet_tokenizer_t *tok = ld->tok;
    const char *type;
    duet_status_t st;
    if (depth > TOK_MAX_DEPTH)
        return lerr(ld, DUET_ERR_INVALID, "%s: Sequence nested too deep", path);
    if ((st = jtype(ld, j, path, &type)) != DUET_OK)
        return st;
    if (!strcmp(type, "Sequence")) {
        json_t *arr;
        if ((st = jget(ld, j, path, "decoders", JSON_ARRAY, true, &arr)) != DUET_OK)
            return st;
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char sub[300];
            snprintf(sub, sizeof(sub), "%s.decoders[%zu]", path, i);
            if ((st = load_decoder(ld, json_array_get(arr, i), sub, depth + 1, cap)) != DUET_OK)
                return st;
        }
        return DUET_OK;
    }
    if ((st = GROW(ld, tok->dec, tok->n_dec, *cap)) != DUET_OK)
        return st;
    dec_step_t *ds = &tok->dec[tok->n_dec];
    memset(ds, 0, sizeof(*ds));
    if (!strcmp(type, "ByteLevel")) {
        ds->kind = DEC_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        ds->kind = DEC_BYTEFALLBACK;
        tok->dec_bytefallback = true;
    } else if (!strcmp(type, "Fuse")) {
        ds->kind = DEC_FUSE;
    } else if (!strcmp(type, "Strip")) {
        ds->kind = DEC_STRIP;
        if ((st = jchar(ld, j, path, "content", NULL, ds->ch, &ds->ch_len)) ||
            (st = jsize(ld, j, path, "start", 0, &ds->start)) ||
            (st = jsize(ld, j, path, "stop", 0, &ds->stop)))
            return st;
        for (size_t i = 0; i < tok->n_dec; i++)
            ds->after_fuse |= tok->dec[i].kind == DEC_FUSE || tok->dec[i].kind == DEC_BYTELEVEL;
        if (ds->after_fuse && ds->stop > 0) {
            if (tok->stream_hold_n > 0)
                return lerr(ld, DUET_ERR_UNSUPPORTED, "%s: a second Strip with stop > 0", path);
            memcpy(tok->stream_hold_ch, ds->ch, ds->ch_len);
            tok->stream_hold_ch_len = ds->ch_len;
            tok->stream_hold_n = ds->stop;
        }
    } else if (!strcmp(type, "Metaspace")) {
        ds->kind = DEC_METASPACE;
        if ((st = jchar(ld, j, path, "replacement", "\xE2\x96\x81", ds->ch, &ds->ch_len)) ||
            (st = jscheme(ld, j, path, &ds->scheme)))
            return st;
    } else if (!strcmp(type, "Replace")) {
        const char *pat, *content;
        size_t pn, cn;
        ds->kind = DEC_REPLACE;
        if ((st = jpattern(ld, j, path, false, NULL, &pat, &pn)) ||
            (st = jstr(ld, j, path, "content", true, &content, &cn)))
            return st;
        tok->n_dec++;
        if (!(ds->pat = duet_strndup(pat, pn)) || !(ds->content = duet_strndup(content, cn)))
            return lerr(ld, DUET_ERR_NOMEM, "out of memory");
        ds->pat_len = pn;
        ds->content_len = cn;
        return DUET_OK;
    } else {
        return lerr(ld, DUET_ERR_UNSUPPORTED, "%s: decoder type \"%s\" is not supported", path,
                    type);
    }
    tok->n_dec++;
    return DUET_OK;
}

/* Resolve a token id list from the post_processor into prefix or suffix. */
static duet_status_t add_ids(loader_t *ld, int32_t **arr, size_t *n, const int32_t *ids, size_t k)
{
    int32_t *a = duet_realloc_array(*arr, *n + k + 1, sizeof(int32_t));
    if (!a)
        return lerr(ld, DUET_ERR_NOMEM, "out of memory");
    memcpy(a + *n, ids, k * sizeof(int32_t));
    *arr = a;
    *n += k;
    return DUET_OK;
}

static duet_status_t jid(loader_t *ld, const json_t *v, const char *path, int32_t *out)
{
    if (!json_is_integer(v))
        return lerr(ld, DUET_ERR_INVALID, "%s: expected an integer id, got %s", path,
                    jtype_name(v));
    json_int_t x = json_integer_value(v);
    if (x < 0 || (size_t)x >= ld->tok->n_ids)
        return lerr(ld, DUET_ERR_RANGE, "%s: id %lld is out of range (vocab size %zu)", path,
                    (long long)x, ld->tok->n_ids);
    *out = (int32_t)x;
    return DUET_OK;
}

static duet_status_t load_post(loader_t *ld, const json_t *j, const char *path, int depth)
{
    duet_tokenizer_t *tok = ld->tok;
    const char *type;
    duet_status_t st;
    if (depth > TOK_MAX_DEPTH)
        return lerr(ld, DUET_ERR_INVALID, "%s: Sequence nested too deep", path);
    if ((st = jtype(ld, j, path, &type)) != DUET_OK)
        return st;
    if (!strcmp(type, "ByteLevel"))
        return DUET_OK; /* offsets only */
    if (!strcmp(type, "Sequence")) {
        json_t *arr;
        if ((st = jget(ld, j, path, "processors", JSON_ARRAY, true, &arr)) != DUET_OK)
            return st;
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char sub[300];
            snprintf(sub, sizeof(sub), "%s.processors[%zu]", path, i);
            if ((st = load_post(ld, json_array_get(arr, i), sub, depth + 1)) != DUET_OK)
                return st;
        }
        return DUET_OK;
    }
    if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
        static const char *const keys[2] = {"cls", "sep"};
        for (int k = 0; k < 2; k++) {
            json_t *pair;
            int32_t id;
            char sub[300];
            if ((st = jget(ld, j, path, keys[k], JSON_ARRAY, true, &pair)) != DUET_OK)
                return st;
            snprintf(sub, sizeof(sub), "%s.%s[1]", path, keys[k]);
            if (json_array_size(pair) != 2)
                return lerr(ld, DUET_ERR_INVALID, "%s.%s: expected [token, id]", path, keys[k]);
            if ((st = jid(ld, json_array_get(pair, 1), sub, &id)) != DUET_OK)
                return st;
            st = k == 0 ? add_ids(ld, &tok->prefix_ids, &tok->n_prefix, &id, 1)
                        : add_ids(ld, &tok->suffix_ids, &tok->n_suffix, &id, 1);
            if (st != DUET_OK)
                return st;
        }
        return DUET_OK;
    }
    if (!strcmp(type, "TemplateProcessing")) {
        json_t *single, *specials;
        if ((st = jget(ld, j, path, "single", JSON_ARRAY, true, &single)) ||
            (st = jget(ld, j, path, "special_tokens", JSON_OBJECT, false, &specials)))
            return st;
        bool seen_a = false;
        for (size_t i = 0; i < json_array_size(single); i++) {
            json_t *item = json_array_get(single, i), *sp, *seq;
            char sub[300];
            snprintf(sub, sizeof(sub), "%s.single[%zu]", path, i);
            if (!json_is_object(item))
                return lerr(ld, DUET_ERR_INVALID, "%s: expected an object, got %s", sub,
                            jtype_name(item));
            if ((st = jget(ld, item, sub, "SpecialToken", JSON_OBJECT, false, &sp)) ||
                (st = jget(ld, item, sub, "Sequence", JSON_OBJECT, false, &seq)))
                return st;
            if (seq) {
                seen_a = true;
                continue;
            }
            if (!sp)
                return lerr(ld, DUET_ERR_INVALID, "%s: expected SpecialToken or Sequence", sub);
            const char *name;
            size_t nl;
            char sub2[340];
            snprintf(sub2, sizeof(sub2), "%s.SpecialToken", sub);
            if ((st = jstr(ld, sp, sub2, "id", true, &name, &nl)) != DUET_OK)
                return st;
            json_t *def = specials ? json_object_get(specials, name) : NULL, *ids;
            if (!def)
                return lerr(ld, DUET_ERR_INVALID, "%s: \"%s\" is not in %s.special_tokens", sub2,
                            name, path);
            snprintf(sub2, sizeof(sub2), "%s.special_tokens.%s", path, name);
            if (!json_is_object(def))
                return lerr(ld, DUET_ERR_INVALID, "%s: expected an object", sub2);
            if ((st = jget(ld, def, sub2, "ids", JSON_ARRAY, true, &ids)) != DUET_OK)
                return st;
            for (size_t k = 0; k < json_array_size(ids); k++) {
                int32_t id;
                char sub3[400];
                snprintf(sub3, sizeof(sub3), "%s.ids[%zu]", sub2, k);
                if ((st = jid(ld, json_array_get(ids, k), sub3, &id)) != DUET_OK)
                    return st;
                st = seen_a ? add_ids(ld, &tok->suffix_ids, &tok->n_suffix, &id, 1)
                            : add_ids(ld, &tok->prefix_ids, &tok->n_prefix, &id, 1);
                if (st != DUET_OK)
                    return st;
            }
        }
        return DUET_OK;
    }
    return lerr(ld, DUET_ERR_UNSUPPORTED, "%s: post-processor type \"%s\" is not supported", path,
                type);
}

static duet_status_t merges_put(loader_t *ld, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
{
    duet_tokenizer_t *tok = ld->tok;
    uint64_t k = merge_key(a, b);
    size_t mask = tok->merges_cap - 1;
    size_t i = (size_t)(duet_hash_bytes(&k, sizeof(k)) & mask);
    while (tok->merges[i].key != 0 && tok->merges[i].key != k)
        i = (i + 1) & mask;
    /* a repeated pair keeps its later rank, as HF's HashMap insert does */
    tok->merges[i] = (merge_slot_t){k, rank, new_id};
    return DUET_OK;
}

static duet_status_t set_token(loader_t *ld, int32_t id, const char *s, size_t n, uint8_t flags)
{
    duet_tokenizer_t *tok = ld->tok;
    char *c = duet_malloc(n + 1);
    if (!c)
        return lerr(ld, DUET_ERR_NOMEM, "out of memory");
    memcpy(c, s, n);
    c[n] = '\0';
    duet_free(tok->id_str[id]);
    tok->id_str[id] = c;
    tok->id_len[id] = n;
    tok->id_flags[id] = (uint8_t)(flags | TF_PRESENT);
    return DUET_OK;
}

static duet_status_t load_model(loader_t *ld, const json_t *model, json_t *added)
{
    duet_tokenizer_t *tok = ld->tok;
    duet_status_t st;
    const char *type, *s;
    size_t n;
    json_t *vocab, *merges, *v;
    if (!json_is_object(model))
        return lerr(ld, DUET_ERR_INVALID, "model: expected an object, got %s", jtype_name(model));
    if ((st = jstr(ld, model, "model", "type", false, &type, &n)) != DUET_OK)
        return st;
    if (type && strcmp(type, "BPE") != 0)
        return lerr(ld, DUET_ERR_UNSUPPORTED,
                    "model.type: \"%s\" is not supported (only BPE tokenizers are)", type);
    if ((st = jget(ld, model, "model", "vocab", JSON_OBJECT, true, &vocab)) ||
        (st = jget(ld, model, "model", "merges", JSON_ARRAY, false, &merges)) ||
        (st = jbool(ld, model, "model", "fuse_unk", false, &tok->fuse_unk)) ||
        (st = jbool(ld, model, "model", "byte_fallback", false, &tok->byte_fallback)) ||
        (st = jbool(ld, model, "model", "ignore_merges", false, &tok->ignore_merges)))
        return st;
    v = json_object_get(model, "dropout");
    if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0))
        return lerr(ld, DUET_ERR_UNSUPPORTED, "model.dropout: BPE dropout is not supported");
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        if ((st = jstr(ld, model, "model", affixes[i], false, &s, &n)) != DUET_OK)
            return st;
        if (s && n > 0)
            return lerr(ld, DUET_ERR_UNSUPPORTED, "model.%s: not supported", affixes[i]);
    }

    /* ids: validate, find the largest, check model.vocab ids are unique */
    json_int_t max_id = -1;
    const char *key;
    json_object_foreach(vocab, key, v)
    {
        if (!json_is_integer(v))
            return lerr(ld, DUET_ERR_INVALID,
                        "model.vocab[\"%.60s\"]: expected an integer id, got %s", key,
                        jtype_name(v));
        json_int_t id = json_integer_value(v);
        if (id < 0 || id >= TOK_MAX_ID)
            return lerr(ld, DUET_ERR_RANGE,
                        "model.vocab[\"%.60s\"]: id %lld is out of range [0, %d)", key,
                        (long long)id, TOK_MAX_ID);
        max_id = DUET_MAX(max_id, id);
    }
    if (added && !json_is_array(added))
        return lerr(ld, DUET_ERR_INVALID, "added_tokens: expected an array, got %s",
                    jtype_name(added));
    for (size_t i = 0; added && i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i), *idv;
        char path[64];
        snprintf(path, sizeof(path), "added_tokens[%zu]", i);
        if (!json_is_object(a))
            return lerr(ld, DUET_ERR_INVALID, "%s: expected an object, got %s", path,
                        jtype_name(a));
        if ((st = jget(ld, a, path, "id", JSON_INTEGER, true, &idv)) != DUET_OK)
            return st;
        json_int_t id = json_integer_value(idv);
        if (id < 0 || id >= TOK_MAX_ID)
            return lerr(ld, DUET_ERR_RANGE, "%s.id: %lld is out of range [0, %d)", path,
                        (long long)id, TOK_MAX_ID);
        max_id = DUET_MAX(max_id, id);
    }
    if (max_id < 0)
        return lerr(ld, DUET_ERR_INVALID, "model.vocab: empty");
    tok->n_ids = (size_t)max_id + 1;
    tok->id_str = duet_calloc(tok->n_ids, sizeof(char *));
    tok->id_len = duet_calloc(tok->n_ids, sizeof(size_t));
    tok->id_flags = duet_calloc(tok->n_ids, 1);
    tok->vocab = duet_strmap_create(json_object_size(vocab));
    tok->added_map = duet_strmap_create(16);
    if (!tok->id_str || !tok->id_len || !tok->id_flags || !tok->vocab || !tok->added_map)
        return lerr(ld, DUET_ERR_NOMEM, "out of memory for %zu ids", tok->n_ids);
    json_object_foreach(vocab, key, v)
    {
        int32_t id = (int32_t)json_integer_value(v);
        size_t klen = strlen(key); /* jansson keys cannot hold NUL */
        if (tok->id_flags[id] & TF_PRESENT)
            return lerr(ld, DUET_ERR_INVALID,
                        "model.vocab[\"%.60s\"]: id %d is also used by \"%.60s\"", key, id,
                        tok->id_str[id]);
        if ((st = set_token(ld, id, key, klen, 0)) != DUET_OK)
            return st;
        if (duet_strmap_put(tok->vocab, key, klen, id) != DUET_OK)
            return lerr(ld, DUET_ERR_NOMEM, "out of memory");
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        int32_t id;
        snprintf(name, sizeof(name), "<0x%02X>", b);
        tok->byte_ids[b] = vocab_get(tok, name, 6, &id) ? id : -1;
    }

    /* unk */
    tok->unk_id = -1;
    if ((st = jstr(ld, model, "model", "unk_token", false, &s, &n)) != DUET_OK)
        return st;
    if (s) {
        int32_t id;
        if (!vocab_get(tok, s, n, &id))
            return lerr(ld, DUET_ERR_INVALID, "model.unk_token: \"%.60s\" is not in model.vocab",
                        s);
        tok->unk_id = id;
    }

    /* merges */
    size_t nm = merges ? json_array_size(merges) : 0;
    if (nm > UINT32_MAX / 2)
        return lerr(ld, DUET_ERR_RANGE, "model.merges: too many (%zu)", nm);
    tok->merges_cap = 16;
    while (tok->merges_cap < nm * 2)
        tok->merges_cap *= 2;
    if (!(tok->merges = duet_calloc(tok->merges_cap, sizeof(merge_slot_t))))
        return lerr(ld, DUET_ERR_NOMEM, "out of memory for %zu merges", nm);
    duet_buf_t cat = {0};
    for (size_t i = 0; i < nm; i++) {
        json_t *m = json_array_get(merges, i);
        const char *p[2];
        size_t pl[2];
        if (json_is_string(m)) {
            const char *ms = json_string_value(m);
            size_t ml = json_string_length(m);
            const char *sp = memchr(ms, ' ', ml);
            if (!sp || sp == ms || sp + 1 == ms + ml ||
                memchr(sp + 1, ' ', (size_t)(ms + ml - sp - 1)))
                st = lerr(ld, DUET_ERR_INVALID,
                          "model.merges[%zu]: \"%.80s\" is not two tokens separated by one space",
                          i, ms);
            p[0] = ms;
            pl[0] = (size_t)(sp ? sp - ms : 0);
            p[1] = sp ? sp + 1 : ms;
            pl[1] = (size_t)(sp ? ms + ml - sp - 1 : 0);
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            for (int k = 0; k < 2; k++) {
                p[k] = json_string_value(json_array_get(m, k));
                pl[k] = json_string_length(json_array_get(m, k));
            }
        } else {
            st = lerr(ld, DUET_ERR_INVALID,
                      "model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"], got %s", i,
                      jtype_name(m));
        }
        if (st != DUET_OK)
            break;
        int32_t ida, idb, idn;
        if (!vocab_get(tok, p[0], pl[0], &ida) || !vocab_get(tok, p[1], pl[1], &idb)) {
            int k = vocab_get(tok, p[0], pl[0], &ida) ? 1 : 0;
            st = lerr(ld, DUET_ERR_INVALID,
                      "model.merges[%zu]: token \"%.*s\" is not in model.vocab", i,
                      (int)DUET_MIN(pl[k], 80), p[k]);
            break;
        }
        cat.len = 0;
        if (buf_add(&cat, p[0], pl[0]) || buf_add(&cat, p[1], pl[1])) {
            st = lerr(ld, DUET_ERR_NOMEM, "out of memory");
            break;
        }
        if (!vocab_get(tok, (const char *)cat.data, cat.len, &idn)) {
            st = lerr(ld, DUET_ERR_INVALID,
                      "model.merges[%zu]: merged token \"%.*s\" is not in model.vocab", i,
                      (int)DUET_MIN(cat.len, 80), (const char *)cat.data);
            break;
        }
        merges_put(ld, ida, idb, (uint32_t)i, idn);
    }
    duet_buf_cleanup(&cat);
    if (st != DUET_OK)
        return st;

    /* added tokens */
    size_t na = added ? json_array_size(added) : 0;
    if (na && !(tok->added = duet_calloc(na, sizeof(added_tok_t))))
        return lerr(ld, DUET_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < na; i++) {
        json_t *a = json_array_get(added, i);
        char path[64];
        snprintf(path, sizeof(path), "added_tokens[%zu]", i);
        added_tok_t *t = &tok->added[tok->n_added];
        const char *c;
        size_t cl;
        if ((st = jstr(ld, a, path, "content", true, &c, &cl)) ||
            (st = jbool(ld, a, path, "special", false, &t->special)) ||
            (st = jbool(ld, a, path, "lstrip", false, &t->lstrip)) ||
            (st = jbool(ld, a, path, "rstrip", false, &t->rstrip)) ||
            (st = jbool(ld, a, path, "single_word", false, &t->single_word)) ||
            (st = jbool(ld, a, path, "normalized", !t->special, &t->normalized)))
            return st;
        if (cl == 0)
            return lerr(ld, DUET_ERR_INVALID, "%s.content: empty", path);
        t->id = (int32_t)json_integer_value(json_object_get(a, "id"));
        if (!(t->content = duet_strndup(c, cl)))
            return lerr(ld, DUET_ERR_NOMEM, "out of memory");
        t->len = cl;
        tok->n_added++;
        if ((st = set_token(ld, t->id, c, cl, (uint8_t)(TF_ADDED | (t->special ? TF_SPECIAL : 0)))))
            return st;
        if (duet_strmap_put(tok->added_map, c, cl, t->id) != DUET_OK)
            return lerr(ld, DUET_ERR_NOMEM, "out of memory");
    }
    return DUET_OK;
}

/* The text a normalized added token is matched against: its content run
 * through the normalizer, as HF does. */
static duet_status_t prepare_added(loader_t *ld)
{
    duet_tokenizer_t *tok = ld->tok;
    duet_status_t st = DUET_OK;
    enc_ctx_t cx = {0};
    cx.md = pcre2_match_data_create(32, NULL);
    if (!cx.md)
        return lerr(ld, DUET_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < tok->n_added && st == DUET_OK; i++) {
        added_tok_t *t = &tok->added[i];
        if (t->normalized && tok->n_norm > 0) {
            if ((st = normalize(tok, &cx, t->content, t->len, &cx.nbuf)) != DUET_OK)
                break;
            t->match = duet_strndup((const char *)cx.nbuf.data, cx.nbuf.len);
            t->match_len = cx.nbuf.len;
        } else {
            t->match = duet_strndup(t->content, t->len);
            t->match_len = t->len;
        }
        if (!t->match)
            st = lerr(ld, DUET_ERR_NOMEM, "out of memory");
        else if (t->match_len == 0)
            st = lerr(ld, DUET_ERR_INVALID, "added_tokens[%zu]: content normalizes to nothing", i);
        else
            tok->added_first[t->normalized][(uint8_t)t->match[0]] = true;
        if (st == DUET_OK && t->single_word && !tok->word_re) {
            static const char word[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]";
            char err[256];
            if (re_compile(word, sizeof(word) - 1, false, &tok->word_re, err, sizeof(err)))
                st = lerr(ld, DUET_ERR_INTERNAL, "word pattern: %s", err);
        }
    }
    duet_buf_cleanup(&cx.nbuf);
    duet_buf_cleanup(&cx.tmp);
    pcre2_match_data_free(cx.md);
    return st;
}

static int32_t first_token(const duet_tokenizer_t *tok, const char *const *names)
{
    for (; *names; names++) {
        int32_t id = duet_tokenizer_token_id(tok, *names);
        if (id >= 0)
            return id;
    }
    return -1;
}

void duet_tokenizer_destroy(duet_tokenizer_t **tok_p)
{
    if (!tok_p || !*tok_p)
        return;
    duet_tokenizer_t *tok = *tok_p;
    for (size_t i = 0; tok->id_str && i < tok->n_ids; i++)
        duet_free(tok->id_str[i]);
    duet_free(tok->id_str);
    duet_free(tok->id_len);
    duet_free(tok->id_flags);
    duet_strmap_destroy(&tok->vocab);
    duet_strmap_destroy(&tok->added_map);
    duet_free(tok->merges);
    for (size_t i = 0; i < tok->n_added; i++) {
        duet_free(tok->added[i].content);
        duet_free(tok->added[i].match);
    }
    duet_free(tok->added);
    for (size_t i = 0; i < tok->n_norm; i++) {
        duet_free(tok->norm[i].str);
        pcre2_code_free(tok->norm[i].re);
    }
    duet_free(tok->norm);
    for (size_t i = 0; i < tok->n_pre; i++)
        pcre2_code_free(tok->pre[i].re);
    duet_free(tok->pre);
    for (size_t i = 0; i < tok->n_dec; i++) {
        duet_free(tok->dec[i].pat);
        duet_free(tok->dec[i].content);
    }
    duet_free(tok->dec);
    duet_free(tok->prefix_ids);
    duet_free(tok->suffix_ids);
    pcre2_code_free(tok->gpt2_re);
    pcre2_code_free(tok->word_re);
    pcre2_match_context_free(tok->mctx);
    if (tok->cache) {
        for (size_t i = 0; i < TOK_CACHE_SLOTS; i++) {
            duet_free(tok->cache[i].key);
            duet_free(tok->cache[i].ids);
        }
        duet_free(tok->cache);
        pthread_mutex_destroy(&tok->cache_lock);
    }
    duet_free(tok->name);
    duet_free(tok);
    *tok_p = NULL;
}

duet_status_t duet_tokenizer_load_json(const char *json, size_t len, const char *name,
                                       duet_tokenizer_t **tok_out)
{
    if (!json || !tok_out)
        return duet_errorf(DUET_ERR_INVALID, "duet_tokenizer_load_json: NULL argument");
    pthread_once(&bytemap_once, bytemap_init);
    duet_status_t st = DUET_OK;
    json_error_t jerr;
    json_t *root = NULL, *v;
    duet_tokenizer_t *tok = duet_calloc(1, sizeof(*tok));
    if (!tok)
        return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
    tok->name = duet_strdup(name ? name : "tokenizer.json");
    tok->cache = duet_calloc(TOK_CACHE_SLOTS, sizeof(cache_slot_t));
    tok->mctx = pcre2_match_context_create(NULL);
    if (!tok->name || !tok->cache || !tok->mctx) {
        duet_free(tok->cache);
        tok->cache = NULL;
        st = duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
        goto err_destroy;
    }
    pthread_mutex_init(&tok->cache_lock, NULL);
    pcre2_set_match_limit(tok->mctx, TOK_REGEX_MATCH_LIMIT);
    tok->bos = tok->eos = tok->unk_id = -1;
    loader_t ld = {tok->name, tok};

    root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        st = lerr(&ld, DUET_ERR_INVALID, "not valid JSON: line %d column %d: %s", jerr.line,
                  jerr.column, jerr.text);
        goto err_destroy;
    }
    if (!json_is_object(root)) {
        st = lerr(&ld, DUET_ERR_INVALID, "top level: expected an object, got %s", jtype_name(root));
        goto err_destroy;
    }
    json_t *model, *added;
    if ((st = jget(&ld, root, "", "model", JSON_OBJECT, true, &model)) ||
        (st = jget(&ld, root, "", "added_tokens", JSON_ARRAY, false, &added)) ||
        (st = load_model(&ld, model, added)))
        goto err_destroy;
    size_t cap = 0;
    if ((v = json_object_get(root, "normalizer")) && !json_is_null(v) &&
        (st = load_normalizer(&ld, v, "normalizer", 0, &cap)))
        goto err_destroy;
    cap = 0;
    if ((v = json_object_get(root, "pre_tokenizer")) && !json_is_null(v) &&
        (st = load_pre(&ld, v, "pre_tokenizer", 0, &cap)))
        goto err_destroy;
    cap = 0;
    if ((v = json_object_get(root, "decoder")) && !json_is_null(v)) {
        tok->has_decoder = true;
        if ((st = load_decoder(&ld, v, "decoder", 0, &cap)))
            goto err_destroy;
    }
    if ((v = json_object_get(root, "post_processor")) && !json_is_null(v) &&
        (st = load_post(&ld, v, "post_processor", 0)))
        goto err_destroy;
    if ((st = prepare_added(&ld)) != DUET_OK)
        goto err_destroy;

    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<bos>", NULL};
    static const char *const eos_names[] = {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>",
                                            NULL};
    tok->bos = tok->n_prefix > 0 ? tok->prefix_ids[0] : first_token(tok, bos_names);
    tok->eos = first_token(tok, eos_names);
    json_decref(root);
    *tok_out = tok;
    return DUET_OK;

err_destroy:
    json_decref(root);
    duet_tokenizer_destroy(&tok);
    return st;
}

/* bos_token / eos_token of tokenizer_config.json: a string or {"content": s}. */
static void apply_config_token(duet_tokenizer_t *tok, const json_t *cfg, const char *key,
                               int32_t *slot)
{
    const json_t *v = json_object_get(cfg, key);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!json_is_string(v))
        return;
    int32_t id = duet_tokenizer_token_id(tok, json_string_value(v));
    if (id >= 0)
        *slot = id;
}

duet_status_t duet_tokenizer_load(const char *path, duet_tokenizer_t **tok_out)
{
    if (!path || !tok_out)
        return duet_errorf(DUET_ERR_INVALID, "duet_tokenizer_load: NULL argument");
    struct stat sb;
    char *file = NULL, *data = NULL, *dir = NULL;
    size_t len;
    duet_status_t st;
    duet_buf_t pb = {0};
    if (stat(path, &sb) != 0) {
        return duet_errorf(DUET_ERR_IO, "%s: %s", path, strerror(errno));
    }
    if (S_ISDIR(sb.st_mode)) {
        if (duet_buf_printf(&pb, "%s/tokenizer.json%c", path, '\0') != DUET_OK)
            return duet_errorf(DUET_ERR_NOMEM, "tokenizer: out of memory");
        file = (char *)pb.data;
        dir = duet_strdup(path);
    } else {
        file = (char *)path;
    }
    if ((st = duet_file_read_all(file, (size_t)1 << 30, &data, &len)) != DUET_OK)
        goto out_free;
    if ((st = duet_tokenizer_load_json(data, len, file, tok_out)) != DUET_OK)
        goto out_free;
    if (dir) {
        char *cfg = NULL;
        size_t cl;
        pb.len = 0;
        if (duet_buf_printf(&pb, "%s/tokenizer_config.json%c", dir, '\0') == DUET_OK &&
            duet_file_read_all((const char *)pb.data, (size_t)64 << 20, &cfg, &cl) == DUET_OK) {
            json_t *j = json_loadb(cfg, cl, 0, NULL);
            if (json_is_object(j)) {
                if ((*tok_out)->n_prefix == 0)
                    apply_config_token(*tok_out, j, "bos_token", &(*tok_out)->bos);
                apply_config_token(*tok_out, j, "eos_token", &(*tok_out)->eos);
            }
            json_decref(j);
            duet_free(cfg);
        }
        duet_error_clear();
    }
out_free:
    duet_free(data);
    duet_free(dir);
    duet_buf_cleanup(&pb);
    return st;
}
