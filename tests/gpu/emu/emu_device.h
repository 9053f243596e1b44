/* CUDA emulator (tests only): what gpu/kernels.cu needs to compile as host
 * C++ and run on the host. A block's threads are fibers (ucontext) run one
 * at a time; __syncthreads and warp shuffles are barriers a fiber waits at
 * until every live thread of its block (warp) arrived, so barrier and
 * shuffle semantics hold and a divergent barrier is a reported deadlock.
 * __shared__ variables are function statics (blocks run one after another). */
#ifndef DUET_EMU_DEVICE_H
#define DUET_EMU_DEVICE_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <functional>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};

uint3 emu_thread_idx();
extern uint3 emu_block_idx;
extern dim3 emu_block_dim, emu_grid_dim;
#define threadIdx (emu_thread_idx())
#define blockIdx emu_block_idx
#define blockDim emu_block_dim
#define gridDim emu_grid_dim

void __syncthreads();
float emu_shfl_xor(float v, int o);
inline float __shfl_xor_sync(unsigned, float v, int o)
{
    return emu_shfl_xor(v, o);
}

inline float __fmul_rn(float a, float b)
{
    return a * b;
}
inline float __fadd_rn(float a, float b)
{
    return a + b;
}
inline float __fsub_rn(float a, float b)
{
    return a - b;
}
inline float __fdiv_rn(float a, float b)
{
    return a / b;
}
using std::max;
using std::min;

struct __nv_bfloat16 {
    uint16_t x;
};
struct __half {
    uint16_t x;
};
inline float __bfloat162float(__nv_bfloat16 h)
{
    uint32_t u = (uint32_t)h.x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        h.x = (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    else
        h.x = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return h;
}
float emu_half_to_float(uint16_t h);
uint16_t emu_float_to_half(float f);
inline float __half2float(__half h)
{
    return emu_half_to_float(h.x);
}
inline __half __float2half_rn(float f)
{
    __half h;
    h.x = emu_float_to_half(f);
    return h;
}

/* Queue a grid on the emulated stream: fn runs once per thread. */
cudaError_t emu_launch(dim3 grid, dim3 block, std::function<void()> fn);
#endif
