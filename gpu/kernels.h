/* gpu kernels — the CUDA C kernels of the cuda backend behind a C ABI.
 * Private to gpu/ (gpu/backend.c is the only caller). Every launcher queues
 * its kernel on `s` and returns cudaGetLastError() (cudaSuccess or the
 * launch's error); none synchronises. Pointers are device memory unless a
 * comment says otherwise.
 *
 * KV cache layout (the backend's private choice, see duet_kv_layer_t): the
 * slab of (block, KV head) at ((block * n_kv + h) * bs) * hd holds K as
 * [bs][hd] and V as [bs][hd], so a key's head_dim floats are contiguous and
 * a warp reads a key as one coalesced row. */
#ifndef DUET_GPU_KERNELS_H
#define DUET_GPU_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* element types of weight / table tensors the kernels read */
enum { CUK_F32 = 0, CUK_BF16 = 1, CUK_F16 = 2 };

/* Largest query-head group per KV head, and the head dims the attention
 * kernel takes (powers of two 8..256). */
#define CUK_ATTN_MAX_G 8
#define CUK_ROUTE_MAX_E 1024

cudaError_t duet_cuk_rmsnorm(cudaStream_t s, const float *x, int64_t rows, int64_t dim,
                             const void *w, int wdt, float eps, float *y);
/* positions, inv_freq: device [n], [hd/2] */
cudaError_t duet_cuk_rope(cudaStream_t s, float *q, float *k, int64_t n, const int32_t *positions,
                          int32_t n_heads, int32_t n_kv, int32_t hd, const float *inv_freq);
/* slot[t] = block * bs + offset of token t's cache slot (device [n]) */
cudaError_t duet_cuk_kv_store(cudaStream_t s, const float *k, const float *v, int64_t n,
                              const int32_t *slot, int32_t n_kv, int32_t hd, int32_t bs, float *kc,
                              float *vc);
bool duet_cuk_attn_supported(int32_t hd, int32_t g);
/* Attention of n tokens; token t sees ctx[t] keys whose blocks are
 * bt[bt_off[t] ...]. n_split > 1: the keys are split in chunks of `chunk`
 * (grid n_split), partial results go to part [n, n_heads, n_split, hd + 2]
 * and a combine kernel writes out. */
cudaError_t duet_cuk_attention(cudaStream_t s, const float *q, const float *kc, const float *vc,
                               int64_t n, const int32_t *ctx, const int32_t *bt_off,
                               const int32_t *bt, int32_t n_heads, int32_t n_kv, int32_t hd,
                               int32_t bs, float scale, int32_t n_split, int32_t chunk, float *part,
                               float *out);
/* ids, weights: device [n, top_k] */
cudaError_t duet_cuk_route(cudaStream_t s, const float *logits, int64_t n, int32_t n_experts,
                           int32_t top_k, bool norm, int32_t *ids, float *weights);
cudaError_t duet_cuk_swiglu(cudaStream_t s, const float *gate, const float *up, int64_t count,
                            float *out);
cudaError_t duet_cuk_gather_rows(cudaStream_t s, const float *src, int64_t dim, const int32_t *idx,
                                 int64_t n, float *dst);
/* Row r of dst (r = dst_rows[i] for i < n_dst) += Σ w[j] * src[j] over the
 * source rows j = src_list[src_off[i] .. src_off[i+1]) in that order
 * (deterministic: no atomics). w may be NULL. */
cudaError_t duet_cuk_scatter_add_rows(cudaStream_t s, const float *src, int64_t dim,
                                      const int32_t *dst_rows, const int32_t *src_off,
                                      const int32_t *src_list, const float *w, int64_t n_dst,
                                      float *dst);
cudaError_t duet_cuk_sigmoid_gate_add(cudaStream_t s, const float *x, const float *g, int64_t rows,
                                      int64_t dim, float *y);
cudaError_t duet_cuk_add(cudaStream_t s, const float *x, int64_t n, float *y);
/* y[r, i] += bias[i] */
cudaError_t duet_cuk_add_bias(cudaStream_t s, float *y, int64_t rows, int64_t dim, const void *bias,
                              int bdt);
/* out[i] = table[ids[i]] widened; ids device [n] */
cudaError_t duet_cuk_embed(cudaStream_t s, const void *table, int tdt, int64_t dim,
                           const int32_t *ids, int64_t n, float *out);
/* Element conversions: to f32 from tdt; from f32 to bf16/f16 (round to nearest even). */
cudaError_t duet_cuk_to_f32(cudaStream_t s, const void *src, int sdt, int64_t count, float *dst);
cudaError_t duet_cuk_f32_to_16(cudaStream_t s, const float *src, int64_t count, int ddt, void *dst);
cudaError_t duet_cuk_bf16_from_16(cudaStream_t s, const void *src, int sdt, int64_t count,
                                  void *dst);

/* Sampling, one block per row. Per row (device arrays): temperature, top_k,
 * top_p and the uniform draw u in [0, 1) (duet_sample_uniform(seed, pos)).
 * Greedy rows (temperature <= 0 or top_k == 1) take the parallel argmax;
 * the others follow model/sampling.c step by step (scratch: device
 * [n, vocab] floats and ints, may be NULL when every row is greedy). */
cudaError_t duet_cuk_sample(cudaStream_t s, const float *logits, int64_t n, int32_t vocab,
                            const float *temperature, const int32_t *top_k, const float *top_p,
                            const double *u, float *scratch_p, int32_t *scratch_i, int32_t *out);

#ifdef __cplusplus
}
#endif
#endif
