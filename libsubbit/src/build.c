/* The transducer (LSTM RNN-T or streaming Conformer) from a validated container: the checks of subbit.runtime.models
 * (ARCH_LIMITS, layer widths against the config, unused tensors refused) before any weight
 * table is allocated, then int8 codebooks (s = max|c| / 127, lut = rint(c / s)) and row sums. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/subbit/runtime/csrc/subbit_kernels.h"
#include "internal.h"

float sbl_half_to_float(uint16_t h);

typedef struct {
    subbit_model *m;
    sbl_err *e;
    char *used; /* per container entry */
} ctx;

static const sj_node *quant_entry(ctx *x, const char *name) { return sj_get(sj_get(x->m->file.manifest, "quantized"), name); }
static const sj_node *float_entry(ctx *x, const char *name) { return sj_get(sj_get(x->m->file.manifest, "float"), name); }
static int has(ctx *x, const char *name) { return quant_entry(x, name) || float_entry(x, name); }

static void mark(ctx *x, const char *entry_name) {
    const sbl_entry *en = sbl_find(&x->m->file, entry_name);
    if (en) x->used[en - x->m->file.entries] = 1;
}

/* arch integer with limits (subbit.runtime.models._cfg_int); has_def: absent/null gives def */
static int arch_int(ctx *x, const char *key, int has_def, int64_t def, int64_t lo, int64_t hi, int *out) {
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

static int dims(ctx *x, const char *where, int64_t got, int64_t want) {
    if (got != want)
        return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "manifest arch / tensors disagree: %s is %lld, the config implies %lld", where,
                        (long long)got, (long long)want);
    return 0;
}

/* -- tensors ------------------------------------------------------------------------------ */
static void q_shape(const sj_node *q, int64_t *n, int64_t *k, int *ndim) {
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

/* The quantized tensor `name` with its kernel tables (int8 lut, scales, row sums). */
static sbl_packed *packed(ctx *x, const char *name) {
    subbit_model *m = x->m;
    const sj_node *q = quant_entry(x, name);
    char nm[1100];
    if (m->n_packed == m->cap_packed) {
        sbl_fail(x->e, SUBBIT_ERR_INTERNAL, "more packed tensors than the manifest lists");
        return NULL;
    }
    sbl_packed *p = &m->packed_all[m->n_packed++];
    int ndim;
    q_shape(q, &p->n, &p->k, &ndim);
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
    if (subbit_rowsums(p->packed, p->n, p->k, p->bits, p->lut, p->groups, p->rowsum) != 0) {
        sbl_fail(x->e, SUBBIT_ERR_INTERNAL, "rowsums refused %.80s", name);
        return NULL;
    }
    m->weight_bytes += (uint64_t)(p->n * ((p->k + 7) / 8 * p->bits)) + (uint64_t)(p->groups * stride) +
                       (uint64_t)(4 * p->groups + 4 * p->n);
    return p;
}

/* Any tensor as float32 (a float tensor converted, or a quantized one decoded with the int8
 * codebook as subbit.runtime.layers.decode_packed); *count gets its element count. */
static float *as_float(ctx *x, const char *name, int64_t *count, int64_t shape[8], int *ndim) {
    subbit_model *m = x->m;
    const sj_node *q = quant_entry(x, name);
    if (q) {
        sbl_packed *p = packed(x, name);
        if (!p) return NULL;
        const sj_node *sh = sj_get(q, "shape");
        *ndim = (int)sh->len;
        for (size_t i = 0; i < sh->len; i++) shape[i] = sh->items[i].i;
        *count = p->n * p->k;
        float *out = (float *)malloc(sizeof(float) * (size_t)(*count ? *count : 1));
        if (!out) { sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory decoding %.80s", name); return NULL; }
        int64_t kp = (p->k + 7) / 8 * 8, rb = kp / 8 * p->bits;
        uint8_t idx[SUBBIT_BLOCK];
        for (int64_t r = 0; r < p->n; r++) {
            int64_t g = p->groups == 1 ? 0 : r;
            const int8_t *t = p->lut + g * SUBBIT_LUT_STRIDE(p->bits);
            for (int64_t b = 0; b * SUBBIT_BLOCK < kp; b++) {
                int len = kp - b * SUBBIT_BLOCK >= SUBBIT_BLOCK ? SUBBIT_BLOCK : (int)(kp - b * SUBBIT_BLOCK);
                subbit_decode_block(p->packed + r * rb + b * 4 * p->bits, p->bits, len, idx);
                for (int i = 0; i < len && b * SUBBIT_BLOCK + i < p->k; i++)
                    out[r * p->k + b * SUBBIT_BLOCK + i] = (float)t[idx[i]] * p->scales[g];
            }
        }
        m->weight_bytes += 4 * (uint64_t)*count;
        return out;
    }
    const sbl_entry *en = sbl_find(&m->file, name);
    mark(x, name);
    *ndim = en->ndim;
    memcpy(shape, en->shape, sizeof(int64_t) * (size_t)en->ndim);
    static const int size[DT_COUNT] = {4, 2, 1, 8, 4, 1};
    *count = (int64_t)((en->end - en->begin) / (uint64_t)size[en->dtype]);
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

static float *vector(ctx *x, const char *name, int64_t len) {
    int64_t count, shape[8];
    int ndim;
    float *v = as_float(x, name, &count, shape, &ndim);
    if (!v) return NULL;
    if (ndim != 1 || count != len) {
        free(v);
        sbl_fail(x->e, SUBBIT_ERR_FORMAT, "tensor %.80s: expected a vector of %lld values", name, (long long)len);
        return NULL;
    }
    return v;
}

/* weight `wname` (+ bias `bname` when not NULL and present) as a Linear */
static int linear_named(ctx *x, const char *wname, const char *bname, sbl_linear *l) {
    if (!has(x, wname)) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "model file has no tensor %.80s (needed by the runtime)", wname);
    const sj_node *q = quant_entry(x, wname);
    if (q) {
        int64_t n, k;
        int ndim;
        q_shape(q, &n, &k, &ndim);
        if (ndim != 2) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "packed Linear weight %.80s must be 2-D", wname);
        l->pw = packed(x, wname);
        if (!l->pw) return x->e->code;
        l->out = n;
        l->in = k;
    } else {
        int64_t count, shape[8];
        int ndim;
        l->w = as_float(x, wname, &count, shape, &ndim);
        if (!l->w) return x->e->code;
        if (ndim != 2) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "Linear weight %.80s must be 2-D", wname);
        l->out = shape[0];
        l->in = shape[1];
    }
    if (bname && has(x, bname)) {
        l->bias = vector(x, bname, l->out);
        if (!l->bias) return x->e->code;
    }
    return 0;
}

static int linear(ctx *x, const char *prefix, sbl_linear *l) {
    char w[1024], b[1024];
    snprintf(w, sizeof w, "%.900s.weight", prefix);
    snprintf(b, sizeof b, "%.900s.bias", prefix);
    return linear_named(x, w, b, l);
}

/* nn.LSTM under prefix: layers k = 0, 1, ... while prefix.weight_ih_l{k} exists */
static int lstm(ctx *x, const char *prefix, sbl_lstm *s, int64_t in_width) {
    char n1[1024], n2[1024];
    int k = 0;
    for (;; k++) {
        snprintf(n1, sizeof n1, "%s.weight_ih_l%d", prefix, k);
        if (!has(x, n1)) break;
        if (k >= 64) return sbl_fail(x->e, SUBBIT_ERR_LIMIT, "%.80s: more than 64 LSTM layers", prefix);
    }
    if (!k) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "model file has no LSTM weights under '%.80s'.weight_ih_l0", prefix);
    s->layers = (sbl_lstm_layer *)calloc((size_t)k, sizeof(sbl_lstm_layer));
    if (!s->layers) return sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory");
    s->n_layers = k;
    for (int i = 0; i < k; i++) {
        sbl_lstm_layer *L = &s->layers[i];
        snprintf(n1, sizeof n1, "%s.weight_ih_l%d", prefix, i);
        if (linear_named(x, n1, NULL, &L->ih)) return x->e->code;
        if (L->ih.out % 4) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "%.80s: %lld rows, not 4 gates", n1, (long long)L->ih.out);
        L->hidden = L->ih.out / 4;
        /* both biases fold into the input projection: b_ih + b_hh (float32) */
        float *bi = NULL, *bh = NULL;
        snprintf(n2, sizeof n2, "%s.bias_ih_l%d", prefix, i);
        if (has(x, n2) && !(bi = vector(x, n2, L->ih.out))) return x->e->code;
        snprintf(n2, sizeof n2, "%s.bias_hh_l%d", prefix, i);
        if (has(x, n2) && !(bh = vector(x, n2, L->ih.out))) { free(bi); return x->e->code; }
        if (bi && bh) {
            for (int64_t j = 0; j < L->ih.out; j++) bi[j] = bi[j] + bh[j];
            free(bh);
            L->ih.bias = bi;
        } else {
            L->ih.bias = bi ? bi : bh;
        }
        snprintf(n1, sizeof n1, "%s.weight_hh_l%d", prefix, i);
        if (linear_named(x, n1, NULL, &L->hh)) return x->e->code;
        if (L->hh.out != L->ih.out)
            return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "LSTM weights disagree: W_ih %lld rows, W_hh %lld", (long long)L->ih.out, (long long)L->hh.out);
        L->out_size = L->hidden;
        snprintf(n1, sizeof n1, "%s.weight_hr_l%d", prefix, i);
        if (has(x, n1)) {
            if (linear_named(x, n1, NULL, &L->proj)) return x->e->code;
            if (dims(x, "LSTM projection input size", L->proj.in, L->hidden)) return x->e->code;
            L->out_size = L->proj.out;
        }
        char where[1100];
        snprintf(where, sizeof where, "%.900s layer %d input size", prefix, i);
        if (dims(x, where, L->ih.in, in_width)) return x->e->code;
        snprintf(where, sizeof where, "%.900s layer %d recurrent width", prefix, i);
        if (dims(x, where, L->hh.in, L->out_size)) return x->e->code;
        in_width = L->out_size;
    }
    return 0;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static int lstm_widths(const sbl_lstm *s, int64_t *w) {
    for (int i = 0; i < s->n_layers; i++)
        *w = max64(*w, max64(s->layers[i].ih.in, max64(s->layers[i].ih.out, s->layers[i].out_size)));
    return 0;
}

static int build_encoder(ctx *x) {
    sbl_encoder *E = &x->m->enc;
    int layers;
    if (arch_int(x, "n_mels", 0, 0, 1, 512, &E->n_mels) || arch_int(x, "stack", 0, 0, 1, 64, &E->stack) ||
        arch_int(x, "stack2", 1, 1, 1, 64, &E->stack2) || arch_int(x, "enc_layers", 0, 0, 1, 64, &layers))
        return x->e->code;
    E->stack2_after = -1;
    if (E->stack2 > 1) {
        if (arch_int(x, "stack2_after", 1, 0, 0, 63, &E->stack2_after)) return x->e->code;
        if (E->stack2_after >= layers)
            return sbl_fail(x->e, SUBBIT_ERR_LIMIT, "manifest arch.stack2_after: %d outside [0, enc_layers - 1 = %d]", E->stack2_after, layers - 1);
    }
    E->lstm = (sbl_lstm *)calloc((size_t)layers, sizeof(sbl_lstm));
    if (!E->lstm) return sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory");
    E->n_lstm = layers;
    int64_t width = (int64_t)E->n_mels * E->stack;
    E->max_width = width;
    for (int i = 0; i < layers; i++) {
        char p[64];
        snprintf(p, sizeof p, "encoder.lstms.%d", i);
        if (i == E->stack2_after) width *= E->stack2;
        if (lstm(x, p, &E->lstm[i], width)) return x->e->code;
        width = E->lstm[i].layers[E->lstm[i].n_layers - 1].out_size;
        E->max_width = max64(E->max_width, width * E->stack2);
        lstm_widths(&E->lstm[i], &E->max_width);
    }
    if (linear(x, "encoder.proj", &E->proj) || dims(x, "encoder.proj input size", E->proj.in, width)) return x->e->code;
    E->output_dim = E->proj.out;
    E->max_width = max64(E->max_width, E->output_dim);
    E->subsampling = E->stack * E->stack2;
    int cf;
    if (arch_int(x, "chunk_frames", 1, 0, 0, 1 << 16, &cf)) return x->e->code;
    E->chunk_frames = cf ? cf : E->subsampling;
    return 0;
}


/* -- the streaming Conformer --------------------------------------------------------------- */
static int layer_norm_params(ctx *x, const char *prefix, int64_t d, sbl_ln *ln) {
    char n[1024];
    snprintf(n, sizeof n, "%.900s.weight", prefix);
    if (has(x, n) && !(ln->w = vector(x, n, d))) return x->e->code;
    snprintf(n, sizeof n, "%.900s.bias", prefix);
    if (has(x, n) && !(ln->b = vector(x, n, d))) return x->e->code;
    return 0;
}

/* a Linear with fixed in/out widths (0: any) */
static int linear_dims(ctx *x, const char *prefix, int64_t in, int64_t out, sbl_linear *l) {
    if (linear(x, prefix, l)) return x->e->code;
    char w[1100];
    snprintf(w, sizeof w, "%.900s input size", prefix);
    if (in && dims(x, w, l->in, in)) return x->e->code;
    snprintf(w, sizeof w, "%.900s output size", prefix);
    if (out && dims(x, w, l->out, out)) return x->e->code;
    return 0;
}

static int ff_block(ctx *x, const char *prefix, int64_t d, sbl_ff *f, int64_t *ffw) {
    char n[1024];
    snprintf(n, sizeof n, "%.900s.norm", prefix);
    if (layer_norm_params(x, n, d, &f->norm)) return x->e->code;
    snprintf(n, sizeof n, "%.900s.lin1", prefix);
    if (linear_dims(x, n, d, 0, &f->lin1)) return x->e->code;
    snprintf(n, sizeof n, "%.900s.lin2", prefix);
    if (linear_dims(x, n, f->lin1.out, d, &f->lin2)) return x->e->code;
    *ffw = f->lin1.out > *ffw ? f->lin1.out : *ffw;
    return 0;
}

static int build_conformer(ctx *x) {
    sbl_conformer *C = &x->m->conf;
    if (arch_int(x, "n_mels", 0, 0, 1, 512, &C->n_mels) || arch_int(x, "stack", 0, 0, 1, 64, &C->stack) ||
        arch_int(x, "d_model", 0, 0, 1, 8192, &C->d) || arch_int(x, "n_heads", 0, 0, 1, 256, &C->heads) ||
        arch_int(x, "chunk_size", 0, 0, 1, 4096, &C->chunk) || arch_int(x, "left_chunks", 0, 0, 0, 4096, &C->left) ||
        arch_int(x, "conv_kernel", 0, 0, 1, 1024, &C->kernel) || arch_int(x, "n_blocks", 0, 0, 1, 64, &C->n_blocks))
        return x->e->code;
    if (C->d % C->heads)
        return sbl_fail(x->e, SUBBIT_ERR_LIMIT, "manifest arch.n_heads: d_model=%d is not divisible by n_heads=%d", C->d, C->heads);
    C->dh = C->d / C->heads;
    /* bool(cfg.get("rel_pos", True)): absent -> on; null, false, 0, "" -> off */
    const sj_node *rp = sj_get(sj_get(x->m->file.manifest, "arch"), "rel_pos");
    C->rel_pos = !rp || (rp->type == SJ_BOOL ? rp->i != 0 : rp->type == SJ_INT ? (rp->i != 0 || rp->big)
                 : rp->type == SJ_FLOAT ? rp->d != 0 : rp->type == SJ_NULL ? 0 : rp->len != 0);
    C->num_rel = (C->left + 2) * C->chunk - 1;
    C->chunk_frames = C->chunk * C->stack;
    const int64_t d = C->d;
    if (linear_dims(x, "encoder.inp", (int64_t)C->n_mels * C->stack, d, &C->inp)) return x->e->code;
    C->blocks = (sbl_cblock *)calloc((size_t)C->n_blocks, sizeof(sbl_cblock));
    if (!C->blocks) return sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory");
    for (int i = 0; i < C->n_blocks; i++) {
        sbl_cblock *B = &C->blocks[i];
        char p[128], n[256];
        snprintf(p, sizeof p, "encoder.blocks.%d", i);
#define SUB(fmt) (snprintf(n, sizeof n, "%s." fmt, p), n)
        if (ff_block(x, SUB("ff1"), d, &B->ff1, &C->ff_width) || layer_norm_params(x, SUB("attn_norm"), d, &B->attn_norm) ||
            linear_dims(x, SUB("attn.q"), d, d, &B->q) || linear_dims(x, SUB("attn.k"), d, d, &B->k) ||
            linear_dims(x, SUB("attn.v"), d, d, &B->v) || linear_dims(x, SUB("attn.out"), d, d, &B->out))
            return x->e->code;
        if (C->rel_pos) {
            int64_t count, shape[8];
            int ndim;
            if (!has(x, SUB("attn.rel_bias.weight")))
                return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "model file has no tensor %s (needed by the runtime)", n);
            if (!(B->rel_bias = as_float(x, n, &count, shape, &ndim))) return x->e->code;
            if (ndim != 2 || shape[0] != C->num_rel || shape[1] != C->heads)
                return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "%s has the wrong shape, expected [%d, %d]", n, C->num_rel, C->heads);
        }
        if (layer_norm_params(x, SUB("conv.norm"), d, &B->conv_norm) || linear_dims(x, SUB("conv.pw1"), d, 2 * d, &B->pw1))
            return x->e->code;
        {
            int64_t count, shape[8];
            int ndim;
            if (!has(x, SUB("conv.dw.weight"))) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "model file has no tensor %s (needed by the runtime)", n);
            float *w = as_float(x, n, &count, shape, &ndim);
            if (!w) return x->e->code;
            if (ndim != 3 || shape[0] != d || shape[1] != 1 || shape[2] != C->kernel) {
                free(w);
                return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "%s has the wrong shape, expected [%lld, 1, %d]", n, (long long)d, C->kernel);
            }
            B->dw = (float *)malloc(sizeof(float) * (size_t)count);
            if (!B->dw) { free(w); return sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory"); }
            for (int64_t c = 0; c < d; c++) /* [d, 1, k] -> [k, d] */
                for (int64_t k = 0; k < C->kernel; k++) B->dw[k * d + c] = w[c * C->kernel + k];
            free(w);
        }
        if (has(x, SUB("conv.dw.bias")) && !(B->dw_bias = vector(x, n, d))) return x->e->code;
        if (layer_norm_params(x, SUB("conv.norm2"), d, &B->conv_norm2) || linear_dims(x, SUB("conv.pw2"), d, d, &B->pw2) ||
            ff_block(x, SUB("ff2"), d, &B->ff2, &C->ff_width) || layer_norm_params(x, SUB("out_norm"), d, &B->out_norm))
            return x->e->code;
#undef SUB
    }
    return 0;
}

static int build_predictor(ctx *x) {
    sbl_predictor *P = &x->m->pred;
    int layers;
    if (arch_int(x, "blank", 1, 0, 0, (1 << 20) - 1, &P->blank)) return x->e->code;
    const char *emb = "predictor.embed.weight";
    if (!has(x, emb)) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "model file has no tensor %s (needed by the runtime)", emb);
    const sj_node *q = quant_entry(x, emb);
    if (q) {
        int ndim;
        q_shape(q, &P->num, &P->dim, &ndim);
        if (ndim != 2) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "embedding %s must be 2-D", emb);
        if (!(P->packed = packed(x, emb))) return x->e->code;
    } else {
        int64_t count, shape[8];
        int ndim;
        if (!(P->table = as_float(x, emb, &count, shape, &ndim))) return x->e->code;
        if (ndim != 2) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "embedding %s must be 2-D", emb);
        P->num = shape[0];
        P->dim = shape[1];
    }
    if (arch_int(x, "pred_layers", 0, 0, 1, 64, &layers)) return x->e->code;
    P->lstm = (sbl_lstm *)calloc((size_t)layers, sizeof(sbl_lstm));
    if (!P->lstm) return sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory");
    P->n_lstm = layers;
    int64_t width = P->dim;
    P->max_width = width;
    for (int i = 0; i < layers; i++) {
        char p[64];
        snprintf(p, sizeof p, "predictor.lstms.%d", i);
        if (lstm(x, p, &P->lstm[i], width)) return x->e->code;
        width = P->lstm[i].layers[P->lstm[i].n_layers - 1].out_size;
        lstm_widths(&P->lstm[i], &P->max_width);
    }
    if (P->blank >= P->num)
        return sbl_fail(x->e, SUBBIT_ERR_LIMIT, "manifest arch.blank: %d outside the embedding table of %lld rows", P->blank, (long long)P->num);
    P->output_dim = width;
    return 0;
}

int sbl_build_model(subbit_model *m, sbl_err *e) {
    ctx x = {m, e, NULL};
    const sj_node *arch = sj_get(m->file.manifest, "arch");
    const sj_node *kind = sj_get(arch, "arch");
    int is_rnnt = kind && kind->type == SJ_STRING && kind->len == 4 && !memcmp(kind->s, "rnnt", 4);
    int is_conf = kind && kind->type == SJ_STRING && kind->len == 9 && !memcmp(kind->s, "conformer", 9);
    if (!is_rnnt && !is_conf) return sbl_fail(e, SUBBIT_ERR_UNSUPPORTED, "manifest arch: field 'arch' must be 'rnnt' or 'conformer'");
    m->conformer = is_conf;
    m->cap_packed = (int)sj_get(m->file.manifest, "quantized")->len * 2 + 1; /* a tensor may be read twice */
    m->packed_all = (sbl_packed *)calloc((size_t)m->cap_packed, sizeof(sbl_packed));
    x.used = (char *)calloc(m->file.n_entries + 1, 1);
    if (!m->packed_all || !x.used) { free(x.used); return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory"); }
    int rc = is_conf ? build_conformer(&x) : build_encoder(&x);
    if (!rc) rc = build_predictor(&x);
    if (!rc) rc = linear(&x, "joiner.enc_proj", &m->join.enc_proj);
    if (!rc) rc = linear(&x, "joiner.pred_proj", &m->join.pred_proj);
    if (!rc) rc = linear(&x, "joiner.out", &m->join.out);
    int vocab = 0;
    if (!rc) rc = arch_int(&x, "vocab_size", 0, 0, 2, 1 << 20, &vocab);
    if (!rc) rc = arch_int(&x, "n_mels", 0, 0, 1, 512, &m->n_mels);
    const sbl_joiner *j = &m->join;
    if (!rc) rc = dims(&x, "joiner.enc_proj input size", j->enc_proj.in, is_conf ? m->conf.d : m->enc.output_dim);
    if (!rc) rc = dims(&x, "joiner.pred_proj input size", j->pred_proj.in, m->pred.output_dim);
    if (!rc) rc = dims(&x, "joiner.pred_proj output size", j->pred_proj.out, j->enc_proj.out);
    if (!rc) rc = dims(&x, "joiner.out input size", j->out.in, j->enc_proj.out);
    if (!rc) rc = dims(&x, "joiner.out output size (vocab_size)", j->out.out, vocab);
    if (!rc) {
        m->vocab_size = vocab;
        m->blank = m->pred.blank;
        if (m->blank >= vocab) rc = sbl_fail(e, SUBBIT_ERR_LIMIT, "manifest arch.blank: %d outside [0, vocab_size - 1 = %d]", m->blank, vocab - 1);
    }
    if (!rc) {
        for (size_t i = 0; i < m->file.n_entries; i++) {
            if (x.used[i] || !strcmp(m->file.entries[i].name, "__tokenizer__")) continue;
            rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "model file has tensors the %s runtime does not use: %.80s", is_conf ? "conformer" : "rnnt", m->file.entries[i].name);
            break;
        }
    }
    free(x.used);
    return rc;
}

static void free_linear(sbl_linear *l) {
    free(l->w);
    free(l->bias);
}

static void free_lstms(sbl_lstm *s, int n) {
    if (!s) return;
    for (int i = 0; i < n; i++) {
        for (int k = 0; s[i].layers && k < s[i].n_layers; k++) {
            free_linear(&s[i].layers[k].ih);
            free_linear(&s[i].layers[k].hh);
            free_linear(&s[i].layers[k].proj);
        }
        free(s[i].layers);
    }
    free(s);
}

void sbl_free_model_parts(subbit_model *m) {
    sbl_conformer_free(&m->conf);
    free_lstms(m->enc.lstm, m->enc.n_lstm);
    free_linear(&m->enc.proj);
    free_lstms(m->pred.lstm, m->pred.n_lstm);
    free(m->pred.table);
    free_linear(&m->join.enc_proj);
    free_linear(&m->join.pred_proj);
    free_linear(&m->join.out);
    for (int i = 0; m->packed_all && i < m->n_packed; i++) {
        free(m->packed_all[i].lut);
        free(m->packed_all[i].scales);
        free(m->packed_all[i].rowsum);
    }
    free(m->packed_all);
    sbl_frontend_free(&m->fe);
    sbl_tokenizer_free(&m->tok);
}
