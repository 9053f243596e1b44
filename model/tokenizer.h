/* tokenizer — Hugging Face tokenizer.json BPE: encode text to token ids and
 * decode ids back to text, in the two styles MoE checkpoints ship:
 *
 *   ByteLevel (GPT-2, Qwen, Llama-3): a split regex with Unicode classes
 *     (the GPT-2 pattern, or a Split pre-tokenizer's own Regex), bytes mapped
 *     to printable code points, BPE merges by rank, ByteLevel decoder;
 *   Metaspace (Llama-2, Mistral, Mixtral): spaces become "▁" (a Prepend +
 *     Replace normalizer or a Metaspace pre-tokenizer), BPE with byte_fallback
 *     "<0xNN>" tokens and an unk token, decoder Replace/ByteFallback/Fuse/Strip.
 *
 * Added and special tokens are split out of the text before BPE (leftmost,
 * longest match). encode(add_special = false) equals HF's
 * `encode(text, add_special_tokens=False)`; add_special = true adds what the
 * post_processor's single-sequence template adds (e.g. "<s>" for Llama).
 *
 * tokenizer.json is untrusted: every field is type- and range-checked and a
 * bad file is an error whose detail names the file and the JSON path
 * ("tokenizer.json: model.merges[12]: ...").
 *
 * Normalizers, pre-tokenizers, decoders and post-processors other than
 * those listed in tokenizer.c are refused with DUET_ERR_UNSUPPORTED at load
 * (e.g. NFKC, Lowercase, WordPiece); NFC uses Unicode tables generated from
 * Python's unicodedata (model/gen_nfc_tables.py).
 *
 * A tokenizer is immutable after load except for an internal word cache
 * guarded by a mutex: encode and decode may run concurrently on one
 * tokenizer from any number of threads. A duet_detok_t belongs to one thread. */
#ifndef DUET_TOKENIZER_H
#define DUET_TOKENIZER_H

#include "base/base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct duet_tokenizer duet_tokenizer_t;

/* Load `path`: a tokenizer.json file, or a model directory holding one (then
 * DIR/tokenizer_config.json, if present, may name the bos/eos tokens). */
DUET_API duet_status_t duet_tokenizer_load(const char *path, duet_tokenizer_t **tok_out);
/* Load from tokenizer.json bytes in memory; `name` prefixes error details
 * (NULL: "tokenizer.json"). */
DUET_API duet_status_t duet_tokenizer_load_json(const char *json, size_t len, const char *name,
                                                duet_tokenizer_t **tok_out);
DUET_API void duet_tokenizer_destroy(duet_tokenizer_t **tok_p);

/* Encode `len` bytes of UTF-8 text (invalid UTF-8 is DUET_ERR_INVALID naming
 * the byte offset). On success *ids_out is a duet_malloc'd array the caller
 * frees with duet_free (NULL when *n_out is 0). */
DUET_API duet_status_t duet_tokenizer_encode(const duet_tokenizer_t *tok, const char *text,
                                             size_t len, bool add_special, int32_t **ids_out,
                                             size_t *n_out);
/* Decode ids to text, as HF's decode(ids, skip_special_tokens=skip_special).
 * An id outside [0, vocab_size) is DUET_ERR_RANGE naming its index. On
 * success *text_out is NUL-terminated, duet_malloc'd, freed by the caller
 * with duet_free; *len_out (may be NULL) is its length. Bytes that do not
 * form UTF-8 come out as U+FFFD. */
DUET_API duet_status_t duet_tokenizer_decode(const duet_tokenizer_t *tok, const int32_t *ids,
                                             size_t n, bool skip_special, char **text_out,
                                             size_t *len_out);

/* Largest id + 1, counting added tokens (HF get_vocab_size(True)). */
DUET_API size_t duet_tokenizer_vocab_size(const duet_tokenizer_t *tok);
/* Id of a token by its exact string (added tokens first, then the model's
 * vocab, e.g. "<|im_start|>", "<0x0A>", "Ġthe"); -1 if there is none. */
DUET_API int32_t duet_tokenizer_token_id(const duet_tokenizer_t *tok, const char *token);
/* The token string of `id` as stored in the vocab (not decoded), with its
 * length in *len_out (may be NULL); NULL if id is out of range or unused.
 * Owned by the tokenizer. */
DUET_API const char *duet_tokenizer_token_str(const duet_tokenizer_t *tok, int32_t id,
                                              size_t *len_out);
/* Whether `id` is an added token marked special (skipped by skip_special). */
DUET_API bool duet_tokenizer_is_special(const duet_tokenizer_t *tok, int32_t id);
/* Beginning- and end-of-sequence ids, or -1 if the tokenizer names none.
 * BOS comes from the post_processor template, else tokenizer_config.json,
 * else a token spelled "<s>", "<|begin_of_text|>" or "<bos>"; EOS from
 * tokenizer_config.json, else "</s>", "<|endoftext|>", "<|end_of_text|>" or
 * "<eos>". A model's config.json eos_token_id, where present, is the better
 * source. */
DUET_API int32_t duet_tokenizer_bos(const duet_tokenizer_t *tok);
DUET_API int32_t duet_tokenizer_eos(const duet_tokenizer_t *tok);

/* ---- streaming decode --------------------------------------------------- */

/* Takes generated ids one at a time and returns only complete UTF-8: a
 * character split across tokens is held back until it is whole (byte-level
 * pieces: until its last byte; byte-fallback "<0xNN>" tokens: until the run
 * of byte tokens ends, as HF judges a whole run). Bytes that cannot form a
 * character come out as U+FFFD exactly as in duet_tokenizer_decode, so the
 * concatenation of every push and the final flush equals
 * duet_tokenizer_decode of all the ids. The tokenizer must outlive the
 * decoder. */
typedef struct duet_detok duet_detok_t;

DUET_API duet_status_t duet_detok_create(const duet_tokenizer_t *tok, bool skip_special,
                                         duet_detok_t **detok_out);
/* Feed one id. *text_out and *len_out receive the newly complete text (possibly
 * empty); it is NUL-terminated, owned by the decoder and valid until the
 * next call on it. A bad id is DUET_ERR_RANGE and leaves the state as it was. */
DUET_API duet_status_t duet_detok_push(duet_detok_t *d, int32_t id, const char **text_out,
                                       size_t *len_out);
/* End of stream: return whatever is held back (incomplete bytes as U+FFFD)
 * and reset the decoder for a new sequence. */
DUET_API duet_status_t duet_detok_flush(duet_detok_t *d, const char **text_out, size_t *len_out);
DUET_API void duet_detok_destroy(duet_detok_t **detok_p);

#ifdef __cplusplus
}
#endif
#endif /* DUET_TOKENIZER_H */
