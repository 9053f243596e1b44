/* libFuzzer target: tokenizer.json from the fuzz bytes. A file that loads
 * must also encode a short mixed-script string, decode the ids (normally and
 * streaming) without crashing. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "model/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char text[] = "Hello, w\xC3\xB6rld! <s> 123 \xE6\x9D\xB1\xE4\xBA\xAC "
                               "\xF0\x9F\x98\x80 <|im_start|>x\n\t cafe\xCC\x81 "
                               "\xE1\x84\x80\xE1\x85\xA1 q\xCC\x87\xCC\xA3";
    duet_tokenizer_t *tok = NULL;
    if (duet_tokenizer_load_json((const char *)data, size, "fuzz.json", &tok) != DUET_OK)
        return 0;
    int32_t *ids = NULL;
    size_t n = 0;
    for (int special = 0; special < 2; special++) {
        if (duet_tokenizer_encode(tok, text, sizeof(text) - 1, special, &ids, &n) == DUET_OK) {
            char *out = NULL;
            if (duet_tokenizer_decode(tok, ids, n, special, &out, NULL) == DUET_OK)
                duet_free(out);
            duet_detok_t *d = NULL;
            if (duet_detok_create(tok, special, &d) == DUET_OK) {
                const char *s;
                size_t l;
                for (size_t i = 0; i < n; i++)
                    (void)duet_detok_push(d, ids[i], &s, &l);
                (void)duet_detok_flush(d, &s, &l);
                duet_detok_destroy(&d);
            }
            duet_free(ids);
            ids = NULL;
        }
    }
    /* every id decodes on its own */
    size_t vs = duet_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < vs && i < 4096; i++) {
        int32_t id = (int32_t)i;
        char *out = NULL;
        if (duet_tokenizer_decode(tok, &id, 1, false, &out, NULL) == DUET_OK)
            duet_free(out);
    }
    duet_tokenizer_destroy(&tok);
    return 0;
}
