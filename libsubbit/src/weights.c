/* Tensors of a validated container as the runtime holds them: packed weights with their int8
 * codebooks (s = max|c| / 127, lut = rint(c / s)) and row sums, float tensors as float32, Linear
 * layers; every tensor read is marked used (build.c refuses a file with unused tensors). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/subbit/runtime/csrc/subbit_kernels.h"
#include "build.h"
#include "internal.h"

const sj_node *sbl_quant_entry(sbl_bctx *x, const char *name) { return sj_get(sj_get(x->m->file.manifest, "quantized"), name); }
static const sj_node *float_entry(sbl_bctx *x, const char *name) { return sj_get(sj_get(x->m->file.manifest, "float"), name); }
int sbl_has(sbl_bctx *x, const char *name) { return sbl_quant_entry(x, name) || float_entry(x, name); }

static void mark(sbl_bctx *x, const char *entry_name) {
    const sbl_entry *en = sbl_find(&x->m->file, entry_name);
    if (en) x->used[en - x->m->file.entries] = 1;
}

/* arch integer with limits (subbit.runtime.arch.cfg_int); has_def: absent/null gives def */
int sbl_arch_int(sbl_bctx *x, const char *key, int has_def, int64_t def, int64_t lo, int64_t hi, int *out) {
    const sj_node *v = sj_get(sj_get(x->m->file.manifest, "arch"), key);
    if (!v || v->type == SJ_NULL) {
        if (!has_def) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "manifest arch: no field '%s'", key);
        *out = (int)def;
        return 0;
    }
    if (v->type != SJ_INT) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "manifest arch.%s: must be an integer", key);
    if (v->big || v->i < lo || v->i > hi)
        return sbl_fail(x->e, SUBBIT_ERR_LIMIT, "manifest arch.%s: outside [%lld, %lld]", key, (long long)lo, (long long)hi);
    *out = (int)v->i;
    return 0;
}

int sbl_dims(sbl_bctx *x, const char *where, int64_t got, int64_t want) {
    if (got != want)
        return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "manifest arch / tensors disagree: %s is %lld, the config implies %lld", where,
                        (long long)got, (long long)want);
    return 0;
}

/* -- tensors ------------------------------------------------------------------------------ */
void sbl_q_shape(const sj_node *q, int64_t *n, int64_t *k, int *ndim) {
    const sj_node *sh = sj_get(q, "shape");
    int64_t count = sj_get(q, "count")->i;
    *ndim = (int)sh->len;
    *n = sh->len > 1 ? sh->items[0].i : 1;
    *k = count / *n;
}

static int is_affine(const sj_node *q) {
    const sj_node *cb = sj_get(q, "codebook");
    return cb && cb->type == SJ_STRING && cb->len == 6 && !memcmp(cb->s, "affine", 6);
}

/* 8-bit indices are bytes in row order (rowblock32-planes-v1: one plane of width 8), so the int8
 * weights fit in the same bytes. Without AVX-512's byte permutes a 256-entry table costs the AVX2
 * kernel 16 shuffles and blends per 32 weights (4.6x int8's time in the width sweep); rewritten as
 * int8 the tensor runs the kernels' identity path at no extra memory (the Python runtime expands
 * 7-8 bit tensors into a copy instead). The container's data section is ours (malloc'd, its hash
 * checked at read), and every reader of the tensor goes through sbl_packed_row or the kernels. */
/* The kernels read int8 weights where identity is set, except in a row's short last block, which
 * they decode through the row's table: the first table becomes the identity (subbit_row_lut gives
 * it to every row, and a row slice must not offset it: linear.c), the scales stay. */
static void mark_identity(sbl_packed *p) {
    for (int j = 0; j < 256; j++) p->lut[j] = (int8_t)(uint8_t)j;
    p->identity = 1;
    if (p->groups > 1) { /* the per-row tables are dead now: keep the one identity table */
        int8_t *one = (int8_t *)realloc(p->lut, 256);
        if (one) p->lut = one; /* a failed shrink keeps the larger block, which stays valid */
    }
}

static void expand_in_place(sbl_packed *p) {
    uint8_t *d = (uint8_t *)p->packed;
    const int64_t kp = (p->k + 7) / 8 * 8;
    for (int64_t r = 0; r < p->n; r++) {
        const int8_t *t = p->lut + (p->groups == 1 ? 0 : r) * SUBBIT_LUT_STRIDE(8);
        for (int64_t j = 0; j < kp; j++) d[r * kp + j] = (uint8_t)t[d[r * kp + j]];
    }
    mark_identity(p);
}

/* An earlier load of the same bytes that rewrote them (a tensor shared by two owners). */
static const sbl_packed *expanded_before(const subbit_model *m, const sbl_packed *p) {
    for (int i = 0; i < m->n_packed; i++)
        if (&m->packed_all[i] != p && m->packed_all[i].identity && m->packed_all[i].packed == p->packed)
            return &m->packed_all[i];
    return NULL;
}

void sbl_packed_row(const sbl_packed *p, int64_t r, float *out) {
    const int64_t g = p->groups == 1 ? 0 : r, kp = (p->k + 7) / 8 * 8, rb = kp / 8 * p->bits;
    if (p->identity) {
        const int8_t *w8 = (const int8_t *)p->packed + r * kp;
        for (int64_t j = 0; j < p->k; j++) out[j] = (float)w8[j] * p->scales[g];
        return;
    }
    const int8_t *t = p->lut + g * SUBBIT_LUT_STRIDE(p->bits);
    uint8_t idx[SUBBIT_BLOCK];
    for (int64_t b = 0; b * SUBBIT_BLOCK < kp; b++) {
        int len = kp - b * SUBBIT_BLOCK >= SUBBIT_BLOCK ? SUBBIT_BLOCK : (int)(kp - b * SUBBIT_BLOCK);
        subbit_decode_block(p->packed + r * rb + b * 4 * p->bits, p->bits, len, idx);
        for (int i = 0; i < len && b * SUBBIT_BLOCK + i < p->k; i++) out[b * SUBBIT_BLOCK + i] = (float)t[idx[i]] * p->scales[g];
    }
}

/* The quantized tensor `name` with its kernel tables (int8 lut, scales, row sums). */
sbl_packed *sbl_packed_load(sbl_bctx *x, const char *name) {
    subbit_model *m = x->m;
    const sj_node *q = sbl_quant_entry(x, name);
    char nm[1100];
    if (m->n_packed == m->cap_packed) {
        sbl_fail(x->e, SUBBIT_ERR_INTERNAL, "more packed tensors than the manifest lists");
        return NULL;
    }
    sbl_packed *p = &m->packed_all[m->n_packed++];
    int ndim;
    sbl_q_shape(q, &p->n, &p->k, &ndim);
    p->bits = (int)sj_get(q, "bits")->i;
    p->groups = sj_get(q, "groups")->i;
    const int entries = 1 << p->bits, stride = SUBBIT_LUT_STRIDE(p->bits);
    snprintf(nm, sizeof nm, "%s.idx", name);
    mark(x, nm);
    p->packed = m->file.data + sbl_find(&m->file, nm)->begin;
    p->lut = (int8_t *)calloc((size_t)(p->groups * stride), 1);
    p->scales = (float *)malloc(sizeof(float) * (size_t)p->groups);
    p->rowsum = (int32_t *)malloc(sizeof(int32_t) * (size_t)p->n);
    float *cb = (float *)malloc(sizeof(float) * (size_t)entries);
    if (!p->lut || !p->scales || !p->rowsum || !cb) {
        free(cb);
        sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory for the tables of %.80s", name);
        return NULL;
    }
    const uint8_t *src;
    int affine = is_affine(q);
    int64_t z = affine ? sj_get(q, "zero_index")->i : 0;
    snprintf(nm, sizeof nm, affine ? "%s.codebook_step" : "%s.codebook", name);
    mark(x, nm);
    src = m->file.data + sbl_find(&m->file, nm)->begin;
    for (int64_t g = 0; g < p->groups; g++) {
        if (affine) { /* subbit.sizes.affine_table: float32(step * float32(j - z)) */
            float step;
            memcpy(&step, src + 4 * g, 4);
            for (int j = 0; j < entries; j++) cb[j] = step * ((float)j - (float)z);
        } else {
            memcpy(cb, src + (size_t)(4 * g * entries), sizeof(float) * (size_t)entries);
        }
        float amax = 0.0f; /* subbit.export.bitpack.int8_codebook */
        for (int j = 0; j < entries; j++) amax = fabsf(cb[j]) > amax ? fabsf(cb[j]) : amax;
        float s = amax / 127.0f, safe = s > 0 ? s : 1.0f;
        p->scales[g] = s;
        for (int j = 0; j < entries; j++) {
            float v = nearbyintf(cb[j] / safe);
            v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
            p->lut[g * stride + j] = (int8_t)v;
        }
    }
    free(cb);
    const sbl_packed *prev = expanded_before(m, p);
    if (prev) { /* the same tensor loaded again (tied): its bytes already hold int8 weights */
        mark_identity(p);
        memcpy(p->rowsum, prev->rowsum, sizeof(int32_t) * (size_t)p->n);
    } else if (subbit_rowsums(p->packed, p->n, p->k, p->bits, p->lut, p->groups, p->rowsum) != 0) {
        sbl_fail(x->e, SUBBIT_ERR_INTERNAL, "rowsums refused %.80s", name);
        return NULL;
    } else if (p->bits == 8 && m->path != SUBBIT_AVX512) {
        expand_in_place(p);
    }
    m->weight_bytes += (uint64_t)(p->n * ((p->k + 7) / 8 * p->bits)) + (uint64_t)(p->identity ? 256 : p->groups * stride) +
                       (uint64_t)(4 * p->groups + 4 * p->n);
    return p;
}

/* Any tensor as float32 (a float tensor converted, or a quantized one decoded with the int8
 * codebook as subbit.runtime.layers.decode_packed); *count gets its element count. */
float *sbl_as_float(sbl_bctx *x, const char *name, int64_t *count, int64_t shape[8], int *ndim) {
    subbit_model *m = x->m;
    const sj_node *q = sbl_quant_entry(x, name);
    if (q) {
        sbl_packed *p = sbl_packed_load(x, name);
        if (!p) return NULL;
        const sj_node *sh = sj_get(q, "shape");
        *ndim = (int)sh->len;
        for (size_t i = 0; i < sh->len; i++) shape[i] = sh->items[i].i;
        *count = p->n * p->k;
        float *out = (float *)malloc(sizeof(float) * (size_t)(*count ? *count : 1));
        if (!out) { sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory decoding %.80s", name); return NULL; }
        for (int64_t r = 0; r < p->n; r++) sbl_packed_row(p, r, out + r * p->k);
        m->weight_bytes += 4 * (uint64_t)*count;
        return out;
    }
    const sbl_entry *en = sbl_find(&m->file, name);
    mark(x, name);
    *ndim = en->ndim;
    memcpy(shape, en->shape, sizeof(int64_t) * (size_t)en->ndim);
    *count = (int64_t)((en->end - en->begin) / (uint64_t)sbl_dt_size[en->dtype]);
    if (en->ndim == 0) *count = 1; /* a scalar */
    float *out = (float *)malloc(sizeof(float) * (size_t)(*count ? *count : 1));
    if (!out) { sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory for %.80s", name); return NULL; }
    const uint8_t *d = m->file.data + en->begin;
    for (int64_t i = 0; i < *count && en->end > en->begin; i++) {
        switch (en->dtype) {
        case DT_F32: memcpy(&out[i], d + 4 * i, 4); break;
        case DT_F16: { uint16_t h; memcpy(&h, d + 2 * i, 2); out[i] = sbl_half_to_float(h); break; }
        case DT_I64: { int64_t v; memcpy(&v, d + 8 * i, 8); out[i] = (float)v; break; }
        case DT_I32: { int32_t v; memcpy(&v, d + 4 * i, 4); out[i] = (float)v; break; }
        default: out[i] = (float)d[i];
        }
    }
    if (en->ndim == 0 && en->end == en->begin) out[0] = 0;
    m->weight_bytes += 4 * (uint64_t)*count;
    return out;
}

float *sbl_vector(sbl_bctx *x, const char *name, int64_t len) {
    int64_t count, shape[8];
    int ndim;
    float *v = sbl_as_float(x, name, &count, shape, &ndim);
    if (!v) return NULL;
    if (ndim != 1 || count != len) {
        free(v);
        sbl_fail(x->e, SUBBIT_ERR_FORMAT, "tensor %.80s: expected a vector of %lld values", name, (long long)len);
        return NULL;
    }
    return v;
}

/* weight `wname` (+ bias `bname` when not NULL and present) as a Linear */
int sbl_linear_named(sbl_bctx *x, const char *wname, const char *bname, sbl_linear *l) {
    if (!sbl_has(x, wname)) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "model file has no tensor %.80s (needed by the runtime)", wname);
    const sj_node *q = sbl_quant_entry(x, wname);
    if (q) {
        int64_t n, k;
        int ndim;
        sbl_q_shape(q, &n, &k, &ndim);
        if (ndim != 2) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "packed Linear weight %.80s must be 2-D", wname);
        l->pw = sbl_packed_load(x, wname);
        if (!l->pw) return x->e->code;
        l->out = n;
        l->in = k;
    } else {
        int64_t count, shape[8];
        int ndim;
        l->w = sbl_as_float(x, wname, &count, shape, &ndim);
        if (!l->w) return x->e->code;
        if (ndim != 2) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "Linear weight %.80s must be 2-D", wname);
        l->out = shape[0];
        l->in = shape[1];
    }
    if (bname && sbl_has(x, bname)) {
        l->bias = sbl_vector(x, bname, l->out);
        if (!l->bias) return x->e->code;
    }
    return 0;
}

int sbl_linear_load(sbl_bctx *x, const char *prefix, sbl_linear *l) {
    char w[1024], b[1024];
    snprintf(w, sizeof w, "%.900s.weight", prefix);
    snprintf(b, sizeof b, "%.900s.bias", prefix);
    return sbl_linear_named(x, w, b, l);
}
