/* The payload checks after the data digest (subbit.export.reader): finite codebooks (also every
 * level of an affine one), zero padding indices, finite floats, BOOL 0/1; and float16 decoding. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../../src/subbit/runtime/csrc/subbit_kernels.h"
#include "container.h"
#include "internal.h"

float sbl_half_to_float(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, ex = (h >> 10) & 31, man = h & 1023, bits;
    if (ex == 0) {
        if (!man) bits = s;
        else { /* subnormal */
            int sh = 0;
            while (!(man & 1024)) { man <<= 1; sh++; }
            man &= 1023;
            bits = s | (uint32_t)(127 - 15 - sh + 1) << 23 | man << 13;
        }
    } else if (ex == 31) bits = s | 0x7F800000u | man << 13;
    else bits = s | (ex - 15 + 127) << 23 | man << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int sbl_check_payload(sbl_container *c, sbl_err *e) {
    const sj_node *qs = sj_get(c->manifest, "quantized"), *fs = sj_get(c->manifest, "float");
    char nm[1024];
    for (size_t i = 0; i < qs->len; i++) {
        const sj_node *q = &qs->items[i];
        const char *name = qs->keys[i];
        int bits = (int)sj_get(q, "bits")->i;
        int64_t groups = sj_get(q, "groups")->i;
        int affine = str_is(sj_get(q, "codebook"), "affine");
        if (strlen(name) > 1000) return sbl_fail(e, SUBBIT_ERR_LIMIT, "tensor name longer than 1000 bytes");
        if (affine) {
            snprintf(nm, sizeof nm, "%s.codebook_step", name);
            const sbl_entry *st = sbl_find(c, nm);
            int64_t z = sj_get(q, "zero_index")->i;
            for (int64_t g = 0; g < groups; g++) {
                float s;
                memcpy(&s, c->data + st->begin + 4 * (uint64_t)g, 4);
                if (!isfinite(s)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': codebook_step has non-finite values", name);
                if (!(s > 0)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': codebook_step must be > 0 in every group", name);
                for (int j = 0; j < (1 << bits); j++) {
                    volatile float lev = (float)j - (float)z;
                    if (!isfinite(s * lev)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': codebook has non-finite values", name);
                }
            }
        } else {
            snprintf(nm, sizeof nm, "%s.codebook", name);
            const sbl_entry *cb = sbl_find(c, nm);
            for (uint64_t o = cb->begin; o < cb->end; o += 4) {
                float v;
                memcpy(&v, c->data + o, 4);
                if (!isfinite(v)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': codebook has non-finite values", name);
            }
        }
        snprintf(nm, sizeof nm, "%s.idx", name);
        const sbl_entry *ix = sbl_find(c, nm);
        int64_t n = ix->shape[0], rb = ix->shape[1];
        int64_t k = sj_get(q, "count")->i / n;
        int64_t kp = (k + 7) / 8 * 8;
        if (kp == k || n == 0) continue;
        int64_t nfull = kp / SUBBIT_BLOCK, tail = kp % SUBBIT_BLOCK;
        int64_t blk = tail ? nfull : nfull - 1;
        int len = tail ? (int)tail : SUBBIT_BLOCK;
        int64_t first = k - blk * SUBBIT_BLOCK;
        uint8_t idx[SUBBIT_BLOCK];
        for (int64_t r = 0; r < n; r++) {
            subbit_decode_block(c->data + ix->begin + (uint64_t)(r * rb + blk * 4 * bits), bits, len, idx);
            for (int j = (int)first; j < len; j++)
                if (idx[j]) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': non-zero padding indices", name);
        }
    }
    for (size_t i = 0; i < fs->len; i++) {
        const sbl_entry *en = sbl_find(c, fs->keys[i]);
        for (uint64_t o = en->begin; o < en->end; o += (uint64_t)sbl_dt_size[en->dtype]) {
            if (en->dtype == DT_F32) {
                float v;
                memcpy(&v, c->data + o, 4);
                if (!isfinite(v)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': non-finite values", en->name);
            } else if (en->dtype == DT_F16) {
                uint16_t h;
                memcpy(&h, c->data + o, 2);
                if (((h >> 10) & 31) == 31) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': non-finite values", en->name);
            } else if (en->dtype == DT_BOOL && c->data[o] > 1) {
                return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': BOOL values other than 0/1", en->name);
            }
        }
    }
    return 0;
}
