/* fuzz_safetensors — libFuzzer target for the safetensors header parser and
 * validator: any input either parses into tensors that lie inside the input
 * without overlapping, or fails with an error detail. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    duet_safetensors_t *st = NULL;
    if (duet_safetensors_parse(data, size, "fuzz.safetensors", &st) != DUET_OK) {
        if (!duet_error()[0])
            abort(); /* every failure says why */
        return 0;
    }
    const uint8_t *end = data + size;
    const uint8_t *prev_end = NULL;
    for (size_t i = 0; i < duet_safetensors_count(st); i++) {
        const duet_tensor_t *t = duet_safetensors_tensor_at(st, i);
        const char *name = duet_safetensors_name_at(st, i);
        const uint8_t *p = t->data;
        if (p < data + 8 || p > end || t->nbytes > (size_t)(end - p))
            abort();
        size_t n = duet_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++)
            n *= (size_t)t->shape[d];
        if (n != t->nbytes)
            abort();
        if (t->nbytes && prev_end && p < prev_end)
            abort(); /* sorted by offset and non-overlapping */
        if (t->nbytes)
            prev_end = p + t->nbytes;
        if (duet_safetensors_find(st, name) != t)
            abort();
        /* touch the bytes so ASan checks the bounds */
        volatile uint8_t sink = 0;
        for (size_t k = 0; k < t->nbytes; k += 4096)
            sink ^= p[k];
        if (t->nbytes)
            sink ^= p[t->nbytes - 1];
        (void)sink;
    }
    duet_safetensors_destroy(&st);
    return 0;
}
