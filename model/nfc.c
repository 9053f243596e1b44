/* nfc — Unicode Normalization Form C (UAX #15): canonical decomposition,
 * canonical ordering of combining marks, canonical composition; Hangul
 * syllables algorithmically. Used by the tokenizer's NFC normalizer (Qwen2
 * and others), where HF tokenizers runs the same algorithm. */
#include "model/nfc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/nfc_tables.h"

enum {
    S_BASE = 0xAC00,
    L_BASE = 0x1100,
    V_BASE = 0x1161,
    T_BASE = 0x11A7,
    L_COUNT = 19,
    V_COUNT = 21,
    T_COUNT = 28,
    N_COUNT = V_COUNT * T_COUNT,
    S_COUNT = L_COUNT * N_COUNT,
};

/* Index of cp in column 0 of a sorted table of `rows` rows of `width`, or -1. */
static long find_cp(const uint32_t *table, size_t rows, size_t width, uint32_t cp)
{
    size_t lo = 0, hi = rows;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint32_t v = table[mid * width];
        if (v == cp)
            return (long)mid;
        if (v < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static uint32_t ccc_of(uint32_t cp)
{
    if (cp < 0x300)
        return 0;
    long i = find_cp(&nfc_ccc[0][0], DUET_ARRAY_LEN(nfc_ccc), 2, cp);
    return i < 0 ? 0 : nfc_ccc[i][1];
}

static bool in_check(uint32_t cp)
{
    size_t lo = 0, hi = DUET_ARRAY_LEN(nfc_check);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < nfc_check[mid][0])
            hi = mid;
        else if (cp > nfc_check[mid][1])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* Composite of (a, b), or 0 if they do not compose. */
static uint32_t compose(uint32_t a, uint32_t b)
{
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE &&
        b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    size_t lo = 0, hi = DUET_ARRAY_LEN(nfc_comp);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const uint32_t *r = nfc_comp[mid];
        if (r[0] == a && r[1] == b)
            return r[2];
        if (r[0] < a || (r[0] == a && r[1] < b))
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

typedef struct cpvec {
    uint32_t *v;
    size_t n, cap;
} cpvec_t;

static duet_status_t cp_push(cpvec_t *cv, uint32_t cp)
{
    if (cv->n == cv->cap &&
        duet_vec_reserve((void **)&cv->v, &cv->cap, cv->n + 1, sizeof(uint32_t)) != DUET_OK)
        return duet_errorf(DUET_ERR_NOMEM, "nfc: out of memory");
    cv->v[cv->n++] = cp;
    return DUET_OK;
}

static duet_status_t decompose(uint32_t cp, cpvec_t *out, int depth)
{
    duet_status_t st;
    if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
        uint32_t s = cp - S_BASE, t = s % T_COUNT;
        if ((st = cp_push(out, L_BASE + s / N_COUNT)) ||
            (st = cp_push(out, V_BASE + (s % N_COUNT) / T_COUNT)))
            return st;
        return t ? cp_push(out, T_BASE + t) : DUET_OK;
    }
    long i = cp < 0xC0 ? -1 : find_cp(&nfc_decomp[0][0], DUET_ARRAY_LEN(nfc_decomp), 3, cp);
    if (i < 0 || depth > 8)
        return cp_push(out, cp);
    if ((st = decompose(nfc_decomp[i][1], out, depth + 1)) != DUET_OK)
        return st;
    return nfc_decomp[i][2] ? decompose(nfc_decomp[i][2], out, depth + 1) : DUET_OK;
}

static uint32_t utf8_next(const uint8_t *s, size_t *i)
{
    uint32_t c = s[*i];
    if (c < 0x80) {
        *i += 1;
        return c;
    }
    if (c < 0xE0) {
        c = ((c & 0x1F) << 6) | (s[*i + 1] & 0x3F);
        *i += 2;
    } else if (c < 0xF0) {
        c = ((c & 0x0F) << 12) | ((uint32_t)(s[*i + 1] & 0x3F) << 6) | (s[*i + 2] & 0x3F);
        *i += 3;
    } else {
        c = ((c & 0x07) << 18) | ((uint32_t)(s[*i + 1] & 0x3F) << 12) |
            ((uint32_t)(s[*i + 2] & 0x3F) << 6) | (s[*i + 3] & 0x3F);
        *i += 4;
    }
    return c;
}

bool duet__nfc_quick_check(const char *s, size_t n)
{
    const uint8_t *u = (const uint8_t *)s;
    for (size_t i = 0; i < n;) {
        if (u[i] < 0xC3) { /* U+0000..U+00BF: never changed, never combine */
            i += u[i] < 0x80 ? 1 : 2;
            continue;
        }
        if (in_check(utf8_next(u, &i)))
            return false;
    }
    return true;
}

duet_status_t duet__nfc_append(const char *s, size_t n, duet_buf_t *out)
{
    duet_status_t st = DUET_OK;
    cpvec_t cv = {0};
    const uint8_t *u = (const uint8_t *)s;
    for (size_t i = 0; i < n && st == DUET_OK;)
        st = decompose(utf8_next(u, &i), &cv, 0);
    if (st != DUET_OK)
        goto out_free;
    /* canonical ordering: stable insertion sort of each run of marks by class */
    for (size_t i = 1; i < cv.n; i++) {
        uint32_t c = cv.v[i], k = ccc_of(c);
        if (k == 0)
            continue;
        size_t j = i;
        while (j > 0) {
            uint32_t pk = ccc_of(cv.v[j - 1]);
            if (pk == 0 || pk <= k)
                break;
            cv.v[j] = cv.v[j - 1];
            j--;
        }
        cv.v[j] = c;
    }
    /* canonical composition */
    if (cv.n > 0) {
        size_t starter = 0, w = 1;
        uint32_t last = ccc_of(cv.v[0]) ? 256 : 0;
        for (size_t i = 1; i < cv.n; i++) {
            uint32_t c = cv.v[i], k = ccc_of(c);
            uint32_t comp = last != 256 ? compose(cv.v[starter], c) : 0;
            if (comp && (last < k || last == 0)) {
                cv.v[starter] = comp;
                continue;
            }
            if (k == 0) {
                starter = w;
                last = 0;
            } else {
                last = k;
            }
            cv.v[w++] = c;
        }
        cv.n = w;
    }
    for (size_t i = 0; i < cv.n && st == DUET_OK; i++) {
        char b[4];
        uint32_t c = cv.v[i];
        size_t l;
        if (c < 0x80) {
            b[0] = (char)c;
            l = 1;
        } else if (c < 0x800) {
            b[0] = (char)(0xC0 | (c >> 6));
            b[1] = (char)(0x80 | (c & 0x3F));
            l = 2;
        } else if (c < 0x10000) {
            b[0] = (char)(0xE0 | (c >> 12));
            b[1] = (char)(0x80 | ((c >> 6) & 0x3F));
            b[2] = (char)(0x80 | (c & 0x3F));
            l = 3;
        } else {
            b[0] = (char)(0xF0 | (c >> 18));
            b[1] = (char)(0x80 | ((c >> 12) & 0x3F));
            b[2] = (char)(0x80 | ((c >> 6) & 0x3F));
            b[3] = (char)(0x80 | (c & 0x3F));
            l = 4;
        }
        if (duet_buf_append(out, b, l) != DUET_OK)
            st = duet_errorf(DUET_ERR_NOMEM, "nfc: out of memory");
    }
out_free:
    duet_free(cv.v);
    return st;
}
