/* Log-mel frontend with the numbers of subbit.runtime.frontend.StreamingLogMel: periodic Hann
 * window, |rfft|^2 (mixed-radix FFT in double, rounded to float32 like NumPy's complex64),
 * HTK mel triangles summed bin by bin in float32 in a fixed order, log(x + 1e-6), then the
 * global mean/std of extra.features. Settings are range-checked before anything is allocated. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SBL_PI 3.14159265358979323846

static int truthy(const sj_node *n) {
    if (!n) return 0;
    switch (n->type) {
    case SJ_NULL: return 0;
    case SJ_BOOL: case SJ_INT: return n->i != 0 || n->big;
    case SJ_FLOAT: return n->d != 0;
    default: return n->len != 0;
    }
}

static int feat_int(const sj_node *f, const char *key, int lo, int hi, int *out, sbl_err *e) {
    const sj_node *v = sj_get(f, key);
    if (!v) return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest extra.features: no field '%s'", key);
    if (v->type != SJ_INT) return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest extra.features.%s: must be an integer", key);
    if (v->big || v->i < lo || v->i > hi) return sbl_fail(e, SUBBIT_ERR_LIMIT, "manifest extra.features.%s: outside [%d, %d]", key, lo, hi);
    *out = (int)v->i;
    return 0;
}

static int feat_vector(const sj_node *f, const char *key, int n_mels, int positive, float **out, sbl_err *e) {
    const sj_node *v = sj_get(f, key);
    *out = NULL;
    if (!v || v->type == SJ_NULL) return 0;
    if (v->type != SJ_ARRAY || (int64_t)v->len != n_mels)
        return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest extra.features.%s: expected a list of n_mels=%d numbers", key, n_mels);
    for (size_t i = 0; i < v->len; i++) {
        const sj_node *x = &v->items[i];
        if (x->type != SJ_INT && x->type != SJ_FLOAT)
            return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest extra.features.%s: every value must be a number", key);
        if (!isfinite(x->d) || fabs(x->d) > 1e30 || (positive && !(x->d > 0)))
            return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest extra.features.%s: values must be finite%s", key, positive ? " and > 0" : "");
    }
    *out = (float *)malloc(sizeof(float) * (size_t)n_mels);
    if (!*out) return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n_mels; i++) {
        float val = (float)v->items[i].d;
        (*out)[i] = positive && val < 1e-5f ? 1e-5f : val;
    }
    return 0;
}

static double hz_to_mel(double f) { return 2595.0 * log10(1.0 + f / 700.0); }
static double mel_to_hz(double m) { return 700.0 * (pow(10.0, m / 2595.0) - 1.0); }

/* numpy.linspace(a, b, n)[i] */
static double linspace(double a, double b, int n, int i) {
    if (i == n - 1) return b;
    return (double)i * ((b - a) / (double)(n - 1)) + a;
}

int sbl_frontend_init(sbl_frontend *fe, const sj_node *manifest, int n_mels, sbl_err *e) {
    memset(fe, 0, sizeof *fe);
    fe->sample_rate = 16000;
    fe->n_fft = 400;
    fe->hop = 160;
    fe->n_mels = n_mels;
    fe->log_offset = 1e-6f;
    const sj_node *extra = sj_get(manifest, "extra");
    const sj_node *f = extra ? sj_get(extra, "features") : NULL;
    if (truthy(f)) {
        const sj_node *kind = sj_get(f, "kind");
        if (f->type != SJ_OBJECT || !kind || kind->type != SJ_STRING || kind->len != 6 || memcmp(kind->s, "logmel", 6))
            return sbl_fail(e, SUBBIT_ERR_UNSUPPORTED, "manifest extra.features: kind is not supported (expected 'logmel')");
        int mels;
        if (feat_int(f, "sample_rate", 1000, 192000, &fe->sample_rate, e) || feat_int(f, "n_fft", 16, 8192, &fe->n_fft, e) ||
            feat_int(f, "hop_length", 1, 8192, &fe->hop, e) || feat_int(f, "n_mels", 1, 512, &mels, e))
            return e->code;
        if (fe->hop > fe->n_fft) return sbl_fail(e, SUBBIT_ERR_LIMIT, "manifest extra.features.hop_length: %d > n_fft=%d", fe->hop, fe->n_fft);
        /* memory and time per audio second grow with n_fft / hop (subbit.runtime.frontend.MAX_OVERLAP) */
        if (fe->n_fft > SBL_MAX_OVERLAP * fe->hop)
            return sbl_fail(e, SUBBIT_ERR_LIMIT, "manifest extra.features.hop_length: %d < n_fft / %d = %g (frames would overlap more than %d-fold)",
                            fe->hop, SBL_MAX_OVERLAP, fe->n_fft / (double)SBL_MAX_OVERLAP, SBL_MAX_OVERLAP);
        if (mels != n_mels) return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest extra.features.n_mels=%d but the model expects %d", mels, n_mels);
        if (feat_vector(f, "mean", n_mels, 0, &fe->mean, e) || feat_vector(f, "std", n_mels, 1, &fe->std, e)) return e->code;
    }
    const int n = fe->n_fft, nb = n / 2 + 1;
    fe->n_bins = nb;
    fe->window = (float *)malloc(sizeof(float) * (size_t)n);
    fe->cos_t = (double *)malloc(sizeof(double) * (size_t)n);
    fe->sin_t = (double *)malloc(sizeof(double) * (size_t)n);
    float *bank = (float *)calloc((size_t)nb * (size_t)n_mels, sizeof(float));
    if (!fe->window || !fe->cos_t || !fe->sin_t || !bank) { free(bank); return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory"); }
    for (int i = 0; i < n; i++) {
        fe->window[i] = (float)(0.5 - 0.5 * cos(2 * SBL_PI * (double)i / (double)n));
        fe->cos_t[i] = cos(2 * SBL_PI * (double)i / (double)n);
        fe->sin_t[i] = -sin(2 * SBL_PI * (double)i / (double)n);
    }
    /* mel_filterbank(sample_rate, n_fft, n_mels): [nb, n_mels] float32 */
    double mlo = hz_to_mel(0.0), mhi = hz_to_mel(fe->sample_rate / 2.0);
    for (int m = 0; m < n_mels; m++) {
        double lo = mel_to_hz(linspace(mlo, mhi, n_mels + 2, m));
        double ctr = mel_to_hz(linspace(mlo, mhi, n_mels + 2, m + 1));
        double hi = mel_to_hz(linspace(mlo, mhi, n_mels + 2, m + 2));
        for (int k = 0; k < nb; k++) {
            double fr = linspace(0.0, fe->sample_rate / 2.0, nb, k);
            double up = (fr - lo) / (ctr - lo), down = (hi - fr) / (hi - ctr);
            double v = up < down ? up : down;
            bank[(size_t)k * (size_t)n_mels + (size_t)m] = (float)(v > 0 ? v : 0.0);
        }
    }
    int width = 1;
    for (int m = 0; m < n_mels; m++) {
        int c = 0;
        for (int k = 0; k < nb; k++) c += bank[(size_t)k * (size_t)n_mels + (size_t)m] != 0.0f;
        width = c > width ? c : width;
    }
    fe->width = width;
    fe->bank_idx = (int32_t *)calloc((size_t)n_mels * (size_t)width, sizeof(int32_t));
    fe->bank_w = (float *)calloc((size_t)n_mels * (size_t)width, sizeof(float));
    if (!fe->bank_idx || !fe->bank_w) { free(bank); return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory"); }
    for (int m = 0; m < n_mels; m++) {
        int c = 0;
        for (int k = 0; k < nb; k++) {
            float v = bank[(size_t)k * (size_t)n_mels + (size_t)m];
            if (v != 0.0f) {
                fe->bank_idx[m * width + c] = k;
                fe->bank_w[m * width + c] = v;
                c++;
            }
        }
    }
    free(bank);
    return 0;
}

void sbl_frontend_free(sbl_frontend *fe) {
    free(fe->window);
    free(fe->cos_t);
    free(fe->sin_t);
    free(fe->bank_idx);
    free(fe->bank_w);
    free(fe->mean);
    free(fe->std);
    memset(fe, 0, sizeof *fe);
}

/* Mixed-radix decimation in time, in place on out: out[k] = sum_j in[j*stride] W_n^{jk},
 * W_n = exp(-2 pi i / n); twiddles from the n0-entry tables (n divides n0). */
static void fft(const double *in_re, int stride, int n, int n0, const double *ct, const double *st, double *re, double *im) {
    if (n == 1) {
        re[0] = in_re[0];
        im[0] = 0.0;
        return;
    }
    int p = 2;
    while (p * p <= n && n % p) p++;
    if (n % p) p = n; /* n prime */
    const int m = n / p;
    for (int r = 0; r < p; r++) fft(in_re + r * stride, stride * p, m, n0, ct, st, re + r * m, im + r * m);
    const int step = n0 / n;
    double tr[64], ti[64];
    double *br = p <= 64 ? tr : (double *)malloc(sizeof(double) * 2 * (size_t)p);
    double *bi = p <= 64 ? ti : br + p;
    if (!br) return; /* n0 <= 8192: a prime factor above 64 needs 2p doubles; malloc failure leaves zeros */
    for (int k = 0; k < m; k++) {
        for (int r = 0; r < p; r++) {
            int t = (int)(((long)r * k * step) % n0);
            double a = re[r * m + k], b = im[r * m + k];
            br[r] = a * ct[t] - b * st[t];
            bi[r] = a * st[t] + b * ct[t];
        }
        for (int q = 0; q < p; q++) {
            double sr = 0, si = 0;
            for (int r = 0; r < p; r++) {
                int t = (int)(((long)r * q * m * step) % n0);
                sr += br[r] * ct[t] - bi[r] * st[t];
                si += br[r] * st[t] + bi[r] * ct[t];
            }
            re[k + q * m] = sr;
            im[k + q * m] = si;
        }
    }
    if (p > 64) free(br);
}

void sbl_frontend_frame(const sbl_frontend *fe, const float *samples, float *work, float *out) {
    const int n = fe->n_fft, nb = fe->n_bins;
    double *x = (double *)work, *re = x + n, *im = re + n; /* work: 3 n doubles */
    for (int i = 0; i < n; i++) x[i] = (double)(samples[i] * fe->window[i]); /* float32 product */
    fft(x, 1, n, n, fe->cos_t, fe->sin_t, re, im);
    float *power = (float *)(im + n); /* nb floats after the doubles */
    for (int k = 0; k < nb; k++) {
        float a = (float)re[k], b = (float)im[k];
        power[k] = a * a + b * b;
    }
    const int w = fe->width;
    for (int m = 0; m < fe->n_mels; m++) {
        const int32_t *ix = fe->bank_idx + m * w;
        const float *wt = fe->bank_w + m * w;
        float acc = power[ix[0]] * wt[0];
        for (int j = 1; j < w; j++) acc += power[ix[j]] * wt[j];
        float v = logf(acc + fe->log_offset);
        if (fe->mean) v = v - fe->mean[m];
        if (fe->std) v = v / fe->std[m];
        out[m] = v;
    }
}
