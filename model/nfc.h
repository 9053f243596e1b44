/* nfc — Unicode NFC normalization for the tokenizer (internal to model/).
 * Tables come from model/gen_nfc_tables.py (Python's unicodedata). */
#ifndef DUET_MODEL_NFC_H
#define DUET_MODEL_NFC_H

#include "base/base.h"

/* True when NFC leaves the valid UTF-8 text s[0..n) unchanged for certain
 * (no character in it can decompose, reorder or combine): the fast path. */
bool duet__nfc_quick_check(const char *s, size_t n);
/* Append NFC(s[0..n)) to out; s must be valid UTF-8. */
duet_status_t duet__nfc_append(const char *s, size_t n, duet_buf_t *out);

#endif
