/* libFuzzer: decoders of untrusted data-plane set-up bytes — provider
 * connection blobs (shm, tcp, sim, verbs), packed rkeys and M2N peer info.
 * Byte 0 picks the decoder, the rest is the input. */
#include "rdma/rdma_int.h"
#ifdef DUET_HAVE_VERBS
#include "rdma/verbs_int.h"
#endif

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t which = data[0] % 6;
    /* a heap copy of exactly the input, so ASan sees any over-read */
    size_t n = size - 1;
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        return 0;
    memcpy(p, data + 1, n);
    switch (which) {
    case 0: {
        int pid;
        uint64_t nonce;
        uint32_t id;
        duet__shm_blob_decode(p, n, &pid, &nonce, &id);
        break;
    }
    case 1: {
        uint32_t addr, id;
        uint16_t port;
        uint64_t token;
        duet__tcp_blob_decode(p, n, &addr, &port, &token, &id);
        break;
    }
    case 2: {
        uint64_t sim;
        uint32_t ctx, id;
        duet__sim_blob_decode(p, n, &sim, &ctx, &id);
        break;
    }
    case 3: {
#ifdef DUET_HAVE_VERBS
        duet__verbs_blob_t vb;
        duet__verbs_blob_decode(p, n, &vb);
#endif
        break;
    }
    case 4: {
        duet_rdma_rkey_t k;
        duet_rdma_rkey_unpack(p, n, &k);
        break;
    }
    default: {
        duet_m2n_params_t me = {.n_senders = 4,
                                .n_receivers = 4,
                                .is_sender = true,
                                .rank = 1,
                                .slots = 2,
                                .slot_size = 4096,
                                .group_id = 0};
        duet_rdma_rkey_t k;
        const uint8_t *blob;
        size_t blen;
        if (duet__m2n_info_decode(&me, 2, p, n, &k, &blob, &blen) == DUET_OK) {
            /* the blob it points at lies inside the input */
            if (blob < p || blob + blen > p + n)
                abort();
        }
        me.is_sender = false;
        duet__m2n_info_decode(&me, 2, p, n, &k, &blob, &blen);
        break;
    }
    }
    free(p);
    return 0;
}
