/* dtype — element types of checkpoint tensors (safetensors spelling) and the
 * scalar f16 <-> f32 conversions. bf16 conversions are inline in model.h. */
#include <string.h>

#include "model/model.h"

static const struct {
    const char *name;
    size_t size;
} dtypes[DUET_DTYPE_COUNT] = {
    [DUET_DTYPE_F32] = {"F32", 4},   [DUET_DTYPE_F16] = {"F16", 2}, [DUET_DTYPE_BF16] = {"BF16", 2},
    [DUET_DTYPE_F64] = {"F64", 8},   [DUET_DTYPE_I8] = {"I8", 1},   [DUET_DTYPE_U8] = {"U8", 1},
    [DUET_DTYPE_I16] = {"I16", 2},   [DUET_DTYPE_I32] = {"I32", 4}, [DUET_DTYPE_I64] = {"I64", 8},
    [DUET_DTYPE_BOOL] = {"BOOL", 1},
};

size_t duet_dtype_size(duet_dtype_t dt)
{
    if ((unsigned)dt >= DUET_DTYPE_COUNT)
        return 0;
    return dtypes[dt].size;
}

const char *duet_dtype_name(duet_dtype_t dt)
{
    if ((unsigned)dt >= DUET_DTYPE_COUNT)
        return "?";
    return dtypes[dt].name;
}

bool duet_dtype_parse(const char *s, size_t len, duet_dtype_t *out)
{
    for (int i = 0; i < DUET_DTYPE_COUNT; i++) {
        if (strlen(dtypes[i].name) == len && !memcmp(dtypes[i].name, s, len)) {
            *out = (duet_dtype_t)i;
            return true;
        }
    }
    return false;
}

/* IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
float duet_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) { /* inf / NaN */
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            man &= 0x3ffu;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    union {
        uint32_t u;
        float f;
    } v = {.u = bits};
    return v.f;
}

uint16_t duet_f32_to_f16(float f)
{
    union {
        float f;
        uint32_t u;
    } v = {.f = f};
    uint32_t x = v.u;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) /* NaN: quiet */
        return (uint16_t)(sign | 0x7e00u | ((absx >> 13) & 0x3ffu));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) {   /* below the smallest normal half (2^-14): subnormal or 0 */
        if (absx < 0x33000000u) /* < 2^-25: rounds to 0 */
            return sign;
        uint32_t e = absx >> 23;
        uint32_t man = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14..24: value = man * 2^(e-150), half ulp 2^-24 */
        uint32_t q = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1)))
            q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias exponent, round mantissa to 10 bits (RNE) */
    uint32_t r = absx + 0xfffu + ((absx >> 13) & 1u);
    r -= (uint32_t)(127 - 15) << 23;
    return (uint16_t)(sign | (r >> 13));
}
