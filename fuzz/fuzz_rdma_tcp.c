/* libFuzzer: the tcp provider's receive state machine on a hostile stream.
 * Frames are decoded and validated, payloads land only inside the single
 * registered region (an exact-size heap block: ASan catches any stray byte)
 * and bad keys/bounds are discarded. Byte 0 sets the read granularity. */
#include "rdma/rdma_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REGION 777

typedef struct fz {
    uint8_t *region;
} fz_t;

static duet_status_t resolve(void *arg, uint64_t key, uint64_t off, uint32_t len, uint8_t **out)
{
    fz_t *f = arg;
    if (key != 1)
        return DUET_ERR_NOT_FOUND;
    if (off > REGION || len > REGION - off)
        return DUET_ERR_RANGE;
    *out = f->region + off;
    return DUET_OK;
}

static duet_status_t frame(void *arg, const duet__tcp_hdr_t *h, duet_status_t st)
{
    if (h->type != DUET__TCP_HELLO && h->type != DUET__TCP_WRITE)
        abort(); /* only these may reach the callback */
    return DUET_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    fz_t f = {malloc(REGION)};
    if (!f.region)
        return 0;
    duet__tcp_rx_t *rx = calloc(1, sizeof(*rx));
    if (!rx) {
        free(f.region);
        return 0;
    }
    duet__tcp_rx_cb_t cb = {resolve, frame, &f};
    size_t step = (size_t)data[0] + 1;
    data++;
    size--;
    while (size) {
        uint8_t *dst;
        size_t max;
        duet__tcp_rx_want(rx, &dst, &max);
        if (max == 0)
            abort(); /* the machine must always want bytes */
        size_t k = max < step ? max : step;
        if (k > size)
            k = size;
        memcpy(dst, data, k);
        if (duet__tcp_rx_got(rx, k, &cb) != DUET_OK)
            break; /* protocol error: the stream would be closed */
        data += k;
        size -= k;
    }
    free(rx);
    free(f.region);
    return 0;
}
