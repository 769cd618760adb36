/* The streaming Conformer of subbit.runtime.encoders.ConformerEncoder / layers.ConformerBlock:
 * input Linear, then per block the feed-forwards, attention (with relative-position biases when
 * rel_pos), the causal depthwise convolution and the norms, each width checked. */
#include <stdio.h>
#include <stdlib.h>

#include "build.h"
#include "internal.h"

static int layer_norm_params(sbl_bctx *x, const char *prefix, int64_t d, sbl_ln *ln) {
    char n[1024];
    snprintf(n, sizeof n, "%.900s.weight", prefix);
    if (sbl_has(x, n) && !(ln->w = sbl_vector(x, n, d))) return x->e->code;
    snprintf(n, sizeof n, "%.900s.bias", prefix);
    if (sbl_has(x, n) && !(ln->b = sbl_vector(x, n, d))) return x->e->code;
    return 0;
}

/* a Linear with fixed in/out widths (0: any) */
static int linear_dims(sbl_bctx *x, const char *prefix, int64_t in, int64_t out, sbl_linear *l) {
    if (sbl_linear_load(x, prefix, l)) return x->e->code;
    char w[1100];
    snprintf(w, sizeof w, "%.900s input size", prefix);
    if (in && sbl_dims(x, w, l->in, in)) return x->e->code;
    snprintf(w, sizeof w, "%.900s output size", prefix);
    if (out && sbl_dims(x, w, l->out, out)) return x->e->code;
    return 0;
}

static int ff_block(sbl_bctx *x, const char *prefix, int64_t d, sbl_ff *f, int64_t *ffw) {
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

int sbl_build_conformer(sbl_bctx *x) {
    sbl_conformer *C = &x->m->conf;
    if (sbl_arch_int(x, "n_mels", 0, 0, 1, 512, &C->n_mels) || sbl_arch_int(x, "stack", 0, 0, 1, 64, &C->stack) ||
        sbl_arch_int(x, "d_model", 0, 0, 1, 8192, &C->d) || sbl_arch_int(x, "n_heads", 0, 0, 1, 256, &C->heads) ||
        sbl_arch_int(x, "chunk_size", 0, 0, 1, 4096, &C->chunk) || sbl_arch_int(x, "left_chunks", 0, 0, 0, 4096, &C->left) ||
        sbl_arch_int(x, "conv_kernel", 0, 0, 1, 1024, &C->kernel) || sbl_arch_int(x, "n_blocks", 0, 0, 1, 64, &C->n_blocks))
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
            if (!sbl_has(x, SUB("attn.rel_bias.weight")))
                return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "model file has no tensor %s (needed by the runtime)", n);
            if (!(B->rel_bias = sbl_as_float(x, n, &count, shape, &ndim))) return x->e->code;
            if (ndim != 2 || shape[0] != C->num_rel || shape[1] != C->heads)
                return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "%s has the wrong shape, expected [%d, %d]", n, C->num_rel, C->heads);
        }
        if (layer_norm_params(x, SUB("conv.norm"), d, &B->conv_norm) || linear_dims(x, SUB("conv.pw1"), d, 2 * d, &B->pw1))
            return x->e->code;
        {
            int64_t count, shape[8];
            int ndim;
            if (!sbl_has(x, SUB("conv.dw.weight"))) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "model file has no tensor %s (needed by the runtime)", n);
            float *w = sbl_as_float(x, n, &count, shape, &ndim);
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
        if (sbl_has(x, SUB("conv.dw.bias")) && !(B->dw_bias = sbl_vector(x, n, d))) return x->e->code;
        if (layer_norm_params(x, SUB("conv.norm2"), d, &B->conv_norm2) || linear_dims(x, SUB("conv.pw2"), d, d, &B->pw2) ||
            ff_block(x, SUB("ff2"), d, &B->ff2, &C->ff_width) || layer_norm_params(x, SUB("out_norm"), d, &B->out_norm))
            return x->e->code;
#undef SUB
    }
    return 0;
}

