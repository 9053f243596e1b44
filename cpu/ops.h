/* cpu ops — the non-GEMM kernels of the CPU backend (norms, rotary
 * embedding, paged attention, routing, activations, row movement).
 * Private to cpu/; cpu/backend.c wraps them into the backend ops table.
 * All take f32 activations in host memory; pool may be NULL. */
#ifndef DUET_CPU_OPS_H
#define DUET_CPU_OPS_H

#include "cpu/cpu_kernels.h"
#include "model/backend.h"

/* Read n elements of a float tensor (F32/F16/BF16) from element `off`. */
void duet__cpu_tensor_read_f32(const duet_tensor_t *t, int64_t off, int64_t n, float *out);

void duet__cpu_rmsnorm(duet_cpu_pool_t *pool, const float *x, int64_t rows, int64_t dim,
                       const duet_tensor_t *weight, float eps, float *y);
void duet__cpu_rope(duet_cpu_pool_t *pool, float *q, float *k, int64_t n, const int32_t *positions,
                    int32_t n_heads, int32_t n_kv_heads, int32_t head_dim, float theta,
                    duet_dtype_t freq_dtype);
void duet__cpu_attention(duet_cpu_pool_t *pool, const duet_attn_batch_t *batch,
                         const duet_kv_layer_t *kv, const float *q, const float *k, const float *v,
                         int32_t n_heads, float scale, float *out);
void duet__cpu_route(const float *logits, int64_t n, int32_t n_experts, int32_t top_k,
                     bool norm_topk, int32_t *ids, float *weights);
void duet__cpu_swiglu(duet_cpu_pool_t *pool, const float *gate, const float *up, int64_t n,
                      int64_t dim, float *out);
void duet__cpu_add_bias(float *y, int64_t n, int64_t dim, const duet_tensor_t *bias);

/* Attention over one KV block for the g query heads sharing a KV head:
 * q [g][hd]; kb: K transposed [hd][bs]; vb: V [bs][hd]; the first nin
 * slots are valid. Updates the online-softmax state mx[g], l[g] and the
 * unnormalised output acc[g][hd]. The AVX-512 variant needs bs == 16 and
 * hd % 16 == 0; it is chosen at run time. */
#define ATTN_MAX_HD 512
#define ATTN_MAX_BS 256
#define ATTN_MAX_G 16
typedef void (*duet__cpu_attn_block_fn)(const float *q, int32_t g, int32_t hd, int32_t bs,
                                        const float *kb, const float *vb, int32_t nin, float scale,
                                        float *mx, float *l, float *acc);
void duet__cpu_attn_block_portable(const float *q, int32_t g, int32_t hd, int32_t bs,
                                   const float *kb, const float *vb, int32_t nin, float scale,
                                   float *mx, float *l, float *acc);
void duet__cpu_attn_block16_avx512(const float *q, int32_t g, int32_t hd, int32_t bs,
                                   const float *kb, const float *vb, int32_t nin, float scale,
                                   float *mx, float *l, float *acc);

/* out[i] = silu(gate[i]) * up[i] over n floats (AVX-512; ops.c picks). */
void duet__cpu_swiglu_avx512(const float *gate, const float *up, int64_t n, float *out);

#endif
