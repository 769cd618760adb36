/* The streaming Conformer encoder of subbit.runtime (models.ConformerEncoder, layers.py):
 * stack -> Linear -> blocks of (FFN/2, chunked self-attention over the chunk plus a cache of
 * left_chunks chunks with a learned relative-position bias, causal depthwise conv with a cache
 * of kernel-1 frames, FFN/2, LayerNorm). Elementwise steps are the Python runtime's float32
 * operations; the reductions (LayerNorm sums, attention dot products and softmax sums) are
 * accumulated in double, where NumPy uses float32 pairwise sums and BLAS: ulp-level differences. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vmath.h"
#include "internal.h"

struct sbl_conf_state {
    int64_t pos;
    int *tc;       /* cached key rows per block */
    float **k, **v; /* per block [keep][d] */
    float **conv;   /* per block [kernel - 1][d] */
};

sbl_conf_state *sbl_conf_state_new(const sbl_conformer *c) {
    sbl_conf_state *st = (sbl_conf_state *)calloc(1, sizeof *st);
    if (!st) return NULL;
    const size_t nb = (size_t)c->n_blocks, keep = (size_t)c->left * (size_t)c->chunk, d = (size_t)c->d;
    st->tc = (int *)calloc(nb, sizeof(int));
    st->k = (float **)calloc(nb, sizeof(float *));
    st->v = (float **)calloc(nb, sizeof(float *));
    st->conv = (float **)calloc(nb, sizeof(float *));
    int ok = st->tc && st->k && st->v && st->conv;
    for (size_t i = 0; ok && i < nb; i++) {
        st->k[i] = (float *)malloc(sizeof(float) * (keep * d + 1));
        st->v[i] = (float *)malloc(sizeof(float) * (keep * d + 1));
        st->conv[i] = (float *)calloc((size_t)(c->kernel - 1) * d + 1, sizeof(float));
        ok = st->k[i] && st->v[i] && st->conv[i];
    }
    if (!ok) {
        sbl_conf_state_free(st, c);
        return NULL;
    }
    return st;
}

void sbl_conf_state_reset(sbl_conf_state *st, const sbl_conformer *c) {
    st->pos = 0;
    for (int i = 0; i < c->n_blocks; i++) {
        st->tc[i] = 0;
        memset(st->conv[i], 0, sizeof(float) * (size_t)(c->kernel - 1) * (size_t)c->d);
    }
}

void sbl_conf_state_free(sbl_conf_state *st, const sbl_conformer *c) {
    if (!st) return;
    for (int i = 0; i < c->n_blocks; i++) {
        if (st->k) free(st->k[i]);
        if (st->v) free(st->v[i]);
        if (st->conv) free(st->conv[i]);
    }
    free(st->tc);
    free(st->k);
    free(st->v);
    free(st->conv);
    free(st);
}

/* layers.LayerNorm over rows of n (eps 1e-5) */
static void layer_norm(const sbl_ln *ln, const float *x, int64_t T, int64_t n, float *y) {
    const float inv_n = (float)(1.0 / (double)n), eps = 1e-5f;
    for (int64_t t = 0; t < T; t++) {
        const float *xr = x + t * n;
        float *yr = y + t * n;
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += xr[i];
        float mean = (float)s * inv_n;
        double q = 0;
        for (int64_t i = 0; i < n; i++) {
            float dv = xr[i] - mean;
            yr[i] = dv;
            q += (double)(dv * dv);
        }
        float var = (float)q * inv_n;
        float r = 1.0f / sqrtf(var + eps);
        for (int64_t i = 0; i < n; i++) {
            float v = yr[i] * r;
            if (ln->w) v = v * ln->w[i];
            if (ln->b) v = v + ln->b[i];
            yr[i] = v;
        }
    }
}

/* x += 0.5 * FFN(x); t1 [T][d], t2 [T][ff] scratch */
static int ffn_half(const sbl_ff *f, const sbl_exec *ex, float *x, int64_t T, int64_t d, float *t1, float *t2) {
    layer_norm(&f->norm, x, T, d, t1);
    int rc = sbl_linear_apply(&f->lin1, ex, t1, T, t2);
    if (rc) return rc;
    sbl_vsilu(ex->path, t2, t2, T * f->lin1.out);
    if ((rc = sbl_linear_apply(&f->lin2, ex, t2, T, t1))) return rc;
    for (int64_t i = 0; i < T * d; i++) x[i] = x[i] + 0.5f * t1[i];
    return 0;
}

static int64_t floordiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* One head's scores, softmax and weighted values: what a thread of attention() runs, heads
 * [part * H / nparts, (part + 1) * H / nparts). Every head is computed as on one thread. */
typedef struct {
    const sbl_conformer *c;
    const sbl_cblock *B;
    const float *q, *kall, *vall;
    float *o;
    int64_t T, tc, pos;
    float scale;
    int path;
    int rc[SBL_MAX_THREADS];
} attn_job;

static void attn_heads(void *arg, int part, int nparts) {
    attn_job *j = (attn_job *)arg;
    const sbl_conformer *c = j->c;
    const sbl_cblock *B = j->B;
    const int64_t d = c->d, H = c->heads, dh = c->dh, T = j->T, tc = j->tc, tk = tc + T;
    const int64_t pos = j->pos, chunk = c->chunk, left = c->left;
    const int64_t h0 = H * part / nparts, h1 = H * (part + 1) / nparts;
    if (h1 <= h0) {
        j->rc[part] = 0;
        return;
    }
    float *sc = (float *)malloc(sizeof(float) * (size_t)(tk + 1));
    if (!sc) {
        j->rc[part] = SUBBIT_ERR_NOMEM;
        return;
    }
    for (int64_t h = h0; h < h1; h++)
        for (int64_t i = 0; i < T; i++) {
            const int64_t qp = pos + i, qc = floordiv(qp, chunk);
            const float *qr = j->q + i * d + h * dh;
            float mx = -FLT_MAX;
            for (int64_t k = 0; k < tk; k++) {
                const int64_t kp = pos - tc + k, kc = floordiv(kp, chunk);
                const float *kr = j->kall + k * d + h * dh;
                double acc = 0;
                for (int64_t e = 0; e < dh; e++) acc += (double)qr[e] * (double)kr[e];
                float sv = (float)acc * j->scale;
                if (B->rel_bias) {
                    int64_t rel = qp - kp + chunk - 1;
                    rel = rel < 0 ? 0 : (rel > c->num_rel - 1 ? c->num_rel - 1 : rel);
                    sv = sv + B->rel_bias[rel * H + h];
                }
                if (!(kc <= qc && kc >= qc - left)) sv = -FLT_MAX; /* np.finfo(float32).min */
                sc[k] = sv;
                mx = sv > mx ? sv : mx;
            }
            for (int64_t k = 0; k < tk; k++) sc[k] = sc[k] - mx;
            sbl_vexp(j->path, sc, sc, tk);
            double sum = 0;
            for (int64_t k = 0; k < tk; k++) sum += sc[k];
            const float fs = (float)sum;
            for (int64_t k = 0; k < tk; k++) sc[k] = sc[k] / fs;
            float *orow = j->o + i * d + h * dh;
            for (int64_t e = 0; e < dh; e++) {
                double acc = 0;
                for (int64_t k = 0; k < tk; k++) acc += (double)sc[k] * (double)j->vall[k * d + h * dh + e];
                orow[e] = (float)acc;
            }
        }
    free(sc);
    j->rc[part] = 0;
}

/* x += MHSA(LN x) with the block's key/value cache (layers.ChunkedSelfAttention); the heads are
 * split over the session's worker threads */
static int attention(const sbl_conformer *c, const sbl_cblock *B, sbl_conf_state *st, int bi, const sbl_exec *ex, float *x,
                     int64_t T, float *t1, float *q, float *kall, float *vall, float *o) {
    const int64_t d = c->d, tc = st->tc[bi], tk = tc + T;
    layer_norm(&B->attn_norm, x, T, d, t1);
    int rc = sbl_linear_apply(&B->q, ex, t1, T, q);
    if (!rc) rc = sbl_linear_apply(&B->k, ex, t1, T, kall + tc * d);
    if (!rc) rc = sbl_linear_apply(&B->v, ex, t1, T, vall + tc * d);
    if (rc) return rc;
    memcpy(kall, st->k[bi], sizeof(float) * (size_t)(tc * d));
    memcpy(vall, st->v[bi], sizeof(float) * (size_t)(tc * d));
    attn_job job = {.c = c, .B = B, .q = q, .kall = kall, .vall = vall, .o = o, .T = T, .tc = tc, .pos = st->pos,
                    .scale = (float)(1.0 / sqrt((double)c->dh)), .path = ex->path};
    const int parts = ex->pool && c->heads > 1 ? sbl_pool_threads(ex->pool) : 1;
    if (parts > 1)
        sbl_pool_run(ex->pool, attn_heads, &job);
    else
        attn_heads(&job, 0, 1);
    for (int i = 0; i < parts; i++)
        if (job.rc[i]) return job.rc[i];
    if ((rc = sbl_linear_apply(&B->out, ex, o, T, t1))) return rc;
    for (int64_t i = 0; i < T * d; i++) x[i] = x[i] + t1[i];
    /* keep the last left * chunk keys and values */
    const int64_t keep = (int64_t)c->left * c->chunk, n = tk < keep ? tk : keep;
    memcpy(st->k[bi], kall + (tk - n) * d, sizeof(float) * (size_t)(n * d));
    memcpy(st->v[bi], vall + (tk - n) * d, sizeof(float) * (size_t)(n * d));
    st->tc[bi] = (int)n;
    return 0;
}

/* x += ConvModule(x) (layers.CausalConvModule); y [(k-1+T)][d], a [T][2d] scratch */
static int conv_module(const sbl_conformer *c, const sbl_cblock *B, sbl_conf_state *st, int bi, const sbl_exec *ex, float *x,
                       int64_t T, float *t1, float *a, float *y) {
    const int64_t d = c->d, K = c->kernel;
    layer_norm(&B->conv_norm, x, T, d, t1);
    int rc = sbl_linear_apply(&B->pw1, ex, t1, T, a);
    if (rc) return rc;
    memcpy(y, st->conv[bi], sizeof(float) * (size_t)((K - 1) * d));
    for (int64_t t = 0; t < T; t++) sbl_vglu(ex->path, a + t * 2 * d, a + t * 2 * d + d, y + (K - 1 + t) * d, d);
    memcpy(st->conv[bi], y + T * d, sizeof(float) * (size_t)((K - 1) * d)); /* the last k-1 rows */
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < d; j++) {
            float acc = 0.0f;
            for (int64_t i = 0; i < K; i++) acc = acc + y[(t + i) * d + j] * B->dw[i * d + j];
            if (B->dw_bias) acc = acc + B->dw_bias[j];
            a[t * d + j] = acc;
        }
    layer_norm(&B->conv_norm2, a, T, d, t1);
    sbl_vsilu(ex->path, t1, t1, T * d);
    if ((rc = sbl_linear_apply(&B->pw2, ex, t1, T, a))) return rc;
    for (int64_t i = 0; i < T * d; i++) x[i] = x[i] + a[i];
    return 0;
}

int sbl_conf_advance(const sbl_conformer *c, sbl_conf_state *st, const sbl_exec *ex, const float *frames, int64_t n, float *enc) {
    const int64_t T = n / c->stack, d = c->d, keep = (int64_t)c->left * c->chunk, tk = keep + T;
    const int64_t ffw = c->ff_width > 2 * d ? c->ff_width : 2 * d;
    float *t1 = (float *)malloc(sizeof(float) * (size_t)(T * d + 1));
    float *t2 = (float *)malloc(sizeof(float) * (size_t)(T * ffw + 1));
    float *q = (float *)malloc(sizeof(float) * (size_t)(T * d + 1));
    float *kall = (float *)malloc(sizeof(float) * (size_t)(tk * d + 1));
    float *vall = (float *)malloc(sizeof(float) * (size_t)(tk * d + 1));
    float *y = (float *)malloc(sizeof(float) * (size_t)((c->kernel - 1 + T) * d + 1));
    int rc = 0;
    if (!t1 || !t2 || !q || !kall || !vall || !y) rc = SUBBIT_ERR_NOMEM;
    /* stacking [n][n_mels] -> [T][stack * n_mels] is the same memory read row-major */
    if (!rc) rc = sbl_linear_apply(&c->inp, ex, frames, T, enc);
    for (int b = 0; b < c->n_blocks && !rc; b++) {
        const sbl_cblock *B = &c->blocks[b];
        rc = ffn_half(&B->ff1, ex, enc, T, d, t1, t2);
        if (!rc) rc = attention(c, B, st, b, ex, enc, T, t1, q, kall, vall, t2);
        if (!rc) rc = conv_module(c, B, st, b, ex, enc, T, t1, t2, y);
        if (!rc) rc = ffn_half(&B->ff2, ex, enc, T, d, t1, t2);
        if (!rc) {
            layer_norm(&B->out_norm, enc, T, d, t1);
            memcpy(enc, t1, sizeof(float) * (size_t)(T * d));
        }
    }
    if (!rc) st->pos += T;
    free(t1);
    free(t2);
    free(q);
    free(kall);
    free(vall);
    free(y);
    return rc;
}

static void free_lin(sbl_linear *l) {
    free(l->w);
    free(l->bias);
}

static void free_ln(sbl_ln *l) {
    free(l->w);
    free(l->b);
}

void sbl_conformer_free(sbl_conformer *c) {
    free_lin(&c->inp);
    for (int i = 0; c->blocks && i < c->n_blocks; i++) {
        sbl_cblock *B = &c->blocks[i];
        free_ln(&B->ff1.norm);
        free_lin(&B->ff1.lin1);
        free_lin(&B->ff1.lin2);
        free_ln(&B->ff2.norm);
        free_lin(&B->ff2.lin1);
        free_lin(&B->ff2.lin2);
        free_ln(&B->attn_norm);
        free_ln(&B->out_norm);
        free_ln(&B->conv_norm);
        free_ln(&B->conv_norm2);
        free_lin(&B->q);
        free_lin(&B->k);
        free_lin(&B->v);
        free_lin(&B->out);
        free_lin(&B->pw1);
        free_lin(&B->pw2);
        free(B->rel_bias);
        free(B->dw);
        free(B->dw_bias);
    }
    free(c->blocks);
}
