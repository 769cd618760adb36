/* One utterance stream: samples -> log-mel frames -> LSTM or Conformer encoder -> greedy decoding,
 * the same float32 operations in the same order as subbit.runtime (models.py, layers.py,
 * session.py); quantized matmuls go through the shared packed kernels (bit-identical on every
 * ISA path). tanh/sigmoid come from vmath.h and log from libm, so results match NumPy to an ulp or
 * two, not a bit. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/subbit/runtime/csrc/subbit_kernels.h"
#include "vmath.h"
#include "internal.h"

#define MAX_SYMBOLS 3
#define AUDIO_SLACK 4096 /* samples buffered beyond one frame before frames are cut */

typedef struct {
    float **h, **c; /* per layer */
} lstm_state;

struct subbit_session {
    const subbit_model *m;
    float *audio;        /* [n_fft + AUDIO_SLACK] */
    int audio_len;
    float *fe_work;
    float *pending;      /* [stack][n_mels] */
    int n_pending;
    float *pending2;     /* [stack2][width before layer stack2_after] */
    int n_pending2;
    int64_t width2;
    lstm_state *enc_state, *pred_state;
    sbl_conf_state *conf;  /* Conformer encoder caches (NULL for the LSTM encoder) */
    float *pred_p;       /* [J] */
    float *pred_tmp_a, *pred_tmp_b, *pred_gates, *pred_hh, *pred_out; /* predictor scratch */
    float *logits, *join_h;
    int32_t *tokens;
    size_t n_tokens, cap_tokens;
    int finished;
    char *text;
    char err[320];
    subbit_logits_fn cb;
    void *cb_user;
};

static int serr(subbit_session *s, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return code;
}

/* -- LSTM ---------------------------------------------------------------------------------- */
static lstm_state *lstm_states(const sbl_lstm *s, int n) {
    lstm_state *st = (lstm_state *)calloc((size_t)n + 1, sizeof(lstm_state));
    if (!st) return NULL;
    for (int i = 0; i < n; i++) {
        st[i].h = (float **)calloc((size_t)s[i].n_layers, sizeof(float *));
        st[i].c = (float **)calloc((size_t)s[i].n_layers, sizeof(float *));
        if (!st[i].h || !st[i].c) return st; /* caller checks with states_ok */
        for (int k = 0; k < s[i].n_layers; k++) {
            st[i].h[k] = (float *)calloc((size_t)s[i].layers[k].out_size, sizeof(float));
            st[i].c[k] = (float *)calloc((size_t)s[i].layers[k].hidden, sizeof(float));
        }
    }
    return st;
}

static int states_ok(const lstm_state *st, const sbl_lstm *s, int n) {
    if (!st) return 0;
    for (int i = 0; i < n; i++) {
        if (!st[i].h || !st[i].c) return 0;
        for (int k = 0; k < s[i].n_layers; k++)
            if (!st[i].h[k] || !st[i].c[k]) return 0;
    }
    return 1;
}

static void states_zero(lstm_state *st, const sbl_lstm *s, int n) {
    for (int i = 0; i < n; i++)
        for (int k = 0; k < s[i].n_layers; k++) {
            memset(st[i].h[k], 0, sizeof(float) * (size_t)s[i].layers[k].out_size);
            memset(st[i].c[k], 0, sizeof(float) * (size_t)s[i].layers[k].hidden);
        }
}

static void states_free(lstm_state *st, const sbl_lstm *s, int n) {
    if (!st) return;
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < s[i].n_layers; k++) {
            if (st[i].h) free(st[i].h[k]);
            if (st[i].c) free(st[i].c[k]);
        }
        free(st[i].h);
        free(st[i].c);
    }
    free(st);
}

/* x [T][in] -> y [T][out_size]; gi: [T][4H] scratch, hh: [4H] scratch */
static int lstm_layer(const sbl_lstm_layer *L, int path, const float *x, int64_t T, float *h, float *c, float *gi,
                      float *hh, float *hraw, float *y) {
    int rc = sbl_linear_apply(&L->ih, path, x, T, gi);
    const int64_t H = L->hidden;
    for (int64_t t = 0; t < T && !rc; t++) {
        if ((rc = sbl_linear_apply(&L->hh, path, h, 1, hh))) break;
        float *g = gi + t * 4 * H;
        for (int64_t j = 0; j < 4 * H; j++) g[j] = g[j] + hh[j];
        /* gates i, f, g, o: sigmoid over i and f, tanh over g, sigmoid over o, in place */
        sbl_vsigmoid(path, g, g, 2 * H);
        sbl_vtanh(path, g + 2 * H, g + 2 * H, H);
        sbl_vsigmoid(path, g + 3 * H, g + 3 * H, H);
        for (int64_t j = 0; j < H; j++) {
            float a = g[H + j] * c[j], b = g[j] * g[2 * H + j];
            c[j] = a + b;
        }
        sbl_vtanh(path, c, hraw, H);
        for (int64_t j = 0; j < H; j++) hraw[j] = g[3 * H + j] * hraw[j];
        if (L->proj.out) {
            if ((rc = sbl_linear_apply(&L->proj, path, hraw, 1, h))) break;
        } else {
            memcpy(h, hraw, sizeof(float) * (size_t)H);
        }
        memcpy(y + t * L->out_size, h, sizeof(float) * (size_t)L->out_size);
    }
    return rc;
}

/* one nn.LSTM (possibly several layers) over T rows into y; tmp [T][max width] holds the
 * layers in between (a layer reads all of its input before writing, so in place is safe) */
static int lstm_run(const sbl_lstm *s, lstm_state *st, int path, const float *x, int64_t T, float *y, float *tmp,
                    float *gi, float *hh, float *hraw) {
    const float *in = x;
    for (int k = 0; k < s->n_layers; k++) {
        float *out = k == s->n_layers - 1 ? y : tmp;
        int rc = lstm_layer(&s->layers[k], path, in, T, st->h[k], st->c[k], gi, hh, hraw, out);
        if (rc) return rc;
        in = out;
    }
    return 0;
}

/* -- predictor / joiner ------------------------------------------------------------------ */
static int predictor_step(subbit_session *s, int token) {
    const subbit_model *m = s->m;
    const sbl_predictor *P = &m->pred;
    float *x = s->pred_tmp_a;
    if (token < 0 || token >= P->num) return serr(s, SUBBIT_ERR_INTERNAL, "token id %d outside the embedding table", token);
    if (P->table) {
        memcpy(x, P->table + (int64_t)token * P->dim, sizeof(float) * (size_t)P->dim);
    } else {
        const sbl_packed *p = P->packed;
        int64_t g = p->groups > 1 ? token : 0, kp = (p->k + 7) / 8 * 8, rb = kp / 8 * p->bits;
        const int8_t *t = p->lut + g * SUBBIT_LUT_STRIDE(p->bits);
        uint8_t idx[SUBBIT_BLOCK];
        for (int64_t b = 0; b * SUBBIT_BLOCK < kp; b++) {
            int len = kp - b * SUBBIT_BLOCK >= SUBBIT_BLOCK ? SUBBIT_BLOCK : (int)(kp - b * SUBBIT_BLOCK);
            subbit_decode_block(p->packed + token * rb + b * 4 * p->bits, p->bits, len, idx);
            for (int i = 0; i < len && b * SUBBIT_BLOCK + i < p->k; i++) x[b * SUBBIT_BLOCK + i] = (float)t[idx[i]] * p->scales[g];
        }
    }
    float *cur = x, *nxt = s->pred_tmp_b;
    for (int i = 0; i < P->n_lstm; i++) {
        int rc = lstm_run(&P->lstm[i], &s->pred_state[i], m->path, cur, 1, nxt, s->pred_out, s->pred_gates, s->pred_hh,
                          s->pred_out + P->max_width);
        if (rc) return serr(s, rc, "predictor: kernel error");
        float *t = cur;
        cur = nxt;
        nxt = t;
    }
    if (sbl_linear_apply(&m->join.pred_proj, m->path, cur, 1, s->pred_p)) return serr(s, SUBBIT_ERR_INTERNAL, "joiner: kernel error");
    return 0;
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 0; i < n; i++) {
        if (v[i] != v[i]) return i; /* numpy.argmax: the first NaN */
        if (v[i] > v[best]) best = i;
    }
    return best;
}

static int push_token(subbit_session *s, int tok) {
    if (s->n_tokens == s->cap_tokens) {
        size_t cap = s->cap_tokens ? 2 * s->cap_tokens : 64;
        int32_t *t = (int32_t *)realloc(s->tokens, cap * sizeof(int32_t));
        if (!t) return serr(s, SUBBIT_ERR_NOMEM, "out of memory for tokens");
        s->tokens = t;
        s->cap_tokens = cap;
    }
    s->tokens[s->n_tokens++] = tok;
    return 0;
}

static int decode(subbit_session *s, const float *enc, int64_t T) {
    const subbit_model *m = s->m;
    const int64_t J = m->join.enc_proj.out;
    const int V = m->vocab_size;
    float *ep = (float *)malloc(sizeof(float) * (size_t)(T * J));
    if (!ep) return serr(s, SUBBIT_ERR_NOMEM, "out of memory");
    int rc = sbl_linear_apply(&m->join.enc_proj, m->path, enc, T, ep);
    for (int64_t t = 0; t < T && !rc; t++) {
        for (int k = 0; k < MAX_SYMBOLS; k++) {
            for (int64_t j = 0; j < J; j++) s->join_h[j] = ep[t * J + j] + s->pred_p[j];
            sbl_vtanh(m->path, s->join_h, s->join_h, J);
            if ((rc = sbl_linear_apply(&m->join.out, m->path, s->join_h, 1, s->logits))) break;
            if (s->cb) s->cb(s->logits, V, s->cb_user);
            int tok = argmax(s->logits, V);
            if (tok == m->blank) break;
            if ((rc = push_token(s, tok)) || (rc = predictor_step(s, tok))) break;
        }
    }
    free(ep);
    if (rc && !s->err[0]) serr(s, rc, "decoding: kernel error");
    return rc;
}

/* -- encoder ------------------------------------------------------------------------------ */
static int encoder_step(subbit_session *s, const float *feats, int64_t F) {
    const subbit_model *m = s->m;
    const sbl_encoder *E = &m->enc;
    const int64_t nm = E->n_mels;
    int64_t total = s->n_pending + F, T = total / E->stack;
    int rc = 0;
    int64_t W = E->max_width > 4 ? E->max_width : 4;
    int64_t gate_w = 0;
    for (int i = 0; i < E->n_lstm; i++)
        for (int k = 0; k < E->lstm[i].n_layers; k++) gate_w = gate_w > E->lstm[i].layers[k].ih.out ? gate_w : E->lstm[i].layers[k].ih.out;
    int64_t rows = T + E->stack2; /* pending2 rows join the first stacked layer */
    float *a = (float *)malloc(sizeof(float) * (size_t)(rows * W * E->stack2 + 1));
    float *b = (float *)malloc(sizeof(float) * (size_t)(rows * W * E->stack2 + 1));
    float *tmp = (float *)malloc(sizeof(float) * (size_t)(rows * W + 1));
    float *gi = (float *)malloc(sizeof(float) * (size_t)(rows * gate_w + 1));
    float *hh = (float *)malloc(sizeof(float) * (size_t)(2 * gate_w + W + 1));
    if (!a || !b || !tmp || !gi || !hh) { rc = serr(s, SUBBIT_ERR_NOMEM, "out of memory in the encoder"); goto out; }
    /* stack: [pending ++ feats] -> [T][stack * n_mels], earliest frame first */
    for (int64_t i = 0; i < T * E->stack; i++) {
        const float *src = i < s->n_pending ? s->pending + i * nm : feats + (i - s->n_pending) * nm;
        memcpy(a + i * nm, src, sizeof(float) * (size_t)nm);
    }
    {
        /* frames short of one stack wait: with T > 0 every pending frame was used, so they all
         * come from feats; with T == 0 the new frames are appended to the pending ones */
        int64_t left = total - T * E->stack;
        if (T > 0) {
            if (left) memcpy(s->pending, feats + (F - left) * nm, sizeof(float) * (size_t)(left * nm));
        } else if (F) {
            memcpy(s->pending + s->n_pending * nm, feats, sizeof(float) * (size_t)(F * nm));
        }
        s->n_pending = (int)left;
    }
    int64_t width = nm * E->stack;
    float *x = a, *y = b;
    for (int i = 0; i < E->n_lstm; i++) {
        if (i == E->stack2_after) {
            /* [pending2 ++ x] -> [n2][stack2 * width] */
            int64_t all = s->n_pending2 + T, n2 = all / E->stack2;
            for (int64_t r = 0; r < n2 * E->stack2; r++) {
                const float *src = r < s->n_pending2 ? s->pending2 + r * width : x + (r - s->n_pending2) * width;
                memcpy(y + r * width, src, sizeof(float) * (size_t)width);
            }
            int64_t left = all - n2 * E->stack2;
            for (int64_t r = 0; r < left; r++) {
                int64_t g = n2 * E->stack2 + r;
                const float *src = g < s->n_pending2 ? s->pending2 + g * width : x + (g - s->n_pending2) * width;
                memmove(s->pending2 + r * width, src, sizeof(float) * (size_t)width);
            }
            s->n_pending2 = (int)left;
            T = n2;
            width *= E->stack2;
            float *t = x;
            x = y;
            y = t;
        }
        if (T == 0) goto out;
        if ((rc = lstm_run(&E->lstm[i], &s->enc_state[i], m->path, x, T, y, tmp, gi, hh, hh + gate_w))) {
            serr(s, rc, "encoder: kernel error");
            goto out;
        }
        width = E->lstm[i].layers[E->lstm[i].n_layers - 1].out_size;
        float *t = x;
        x = y;
        y = t;
    }
    if ((rc = sbl_linear_apply(&E->proj, m->path, x, T, y))) { serr(s, rc, "encoder: kernel error"); goto out; }
    rc = decode(s, y, T);
out:
    free(a);
    free(b);
    free(tmp);
    free(gi);
    free(hh);
    return rc;
}

/* Conformer: encode every complete chunk (models.ConformerEncoder.step), or with flush the
 * partial last chunk, frames short of one stack dropped (ConformerEncoder.flush) */
static int conformer_step(subbit_session *s, const float *feats, int64_t F, int flush) {
    const subbit_model *m = s->m;
    const sbl_conformer *C = &m->conf;
    const int64_t nm = C->n_mels, total = s->n_pending + F;
    int64_t n = flush ? total / C->stack * C->stack : total / C->chunk_frames * C->chunk_frames;
    if (n == 0) {
        if (!flush && F) memcpy(s->pending + s->n_pending * nm, feats, sizeof(float) * (size_t)(F * nm));
        s->n_pending = flush ? 0 : (int)total;
        return 0;
    }
    float *x = (float *)malloc(sizeof(float) * (size_t)(n * nm));
    float *enc = (float *)malloc(sizeof(float) * (size_t)((n / C->stack) * C->d + 1));
    int rc = 0;
    if (!x || !enc) rc = serr(s, SUBBIT_ERR_NOMEM, "out of memory in the encoder");
    if (!rc) {
        const int64_t from_pending = n < s->n_pending ? n : s->n_pending, used = n - from_pending;
        const int64_t left = flush ? 0 : F - used;
        memcpy(x, s->pending, sizeof(float) * (size_t)(from_pending * nm));
        if (used) memcpy(x + from_pending * nm, feats, sizeof(float) * (size_t)(used * nm));
        if (left) memcpy(s->pending, feats + used * nm, sizeof(float) * (size_t)(left * nm));
        s->n_pending = (int)left;
        rc = sbl_conf_advance(C, s->conf, m->path, x, n, enc);
        if (rc) serr(s, rc, "encoder: kernel error");
        else rc = decode(s, enc, n / C->stack);
    }
    free(x);
    free(enc);
    return rc;
}

/* -- the session API ---------------------------------------------------------------------- */
int subbit_session_reset(subbit_session *s) {
    if (!s) return SUBBIT_ERR_ARGUMENT;
    const subbit_model *m = s->m;
    s->audio_len = 0;
    s->n_pending = 0;
    s->n_pending2 = 0;
    s->n_tokens = 0;
    s->finished = 0;
    s->err[0] = 0;
    states_zero(s->enc_state, m->enc.lstm, m->enc.n_lstm);
    if (s->conf) sbl_conf_state_reset(s->conf, &m->conf);
    states_zero(s->pred_state, m->pred.lstm, m->pred.n_lstm);
    int rc = predictor_step(s, m->blank);
    return rc;
}

void subbit_session_free(subbit_session *s) {
    if (!s) return;
    const subbit_model *m = s->m;
    free(s->audio);
    free(s->fe_work);
    free(s->pending);
    free(s->pending2);
    states_free(s->enc_state, m->enc.lstm, m->enc.n_lstm);
    sbl_conf_state_free(s->conf, &m->conf);
    states_free(s->pred_state, m->pred.lstm, m->pred.n_lstm);
    free(s->pred_p);
    free(s->pred_tmp_a);
    free(s->pred_tmp_b);
    free(s->pred_gates);
    free(s->pred_hh);
    free(s->pred_out);
    free(s->logits);
    free(s->join_h);
    free(s->tokens);
    free(s->text);
    free(s);
}

static void copy_err(char *err, size_t errlen, const char *msg) {
    if (err && errlen) snprintf(err, errlen, "%s", msg);
}

int subbit_session_create(const subbit_model *m, subbit_session **out, char *err, size_t errlen) {
    if (!out) return SUBBIT_ERR_ARGUMENT;
    *out = NULL;
    if (!m) { copy_err(err, errlen, "model is NULL"); return SUBBIT_ERR_ARGUMENT; }
    subbit_session *s = (subbit_session *)calloc(1, sizeof *s);
    if (!s) { copy_err(err, errlen, "out of memory"); return SUBBIT_ERR_NOMEM; }
    s->m = m;
    const sbl_encoder *E = &m->enc;
    const sbl_predictor *P = &m->pred;
    int64_t w2 = E->n_mels * E->stack;
    for (int i = 0; i < E->stack2_after && i < E->n_lstm; i++) w2 = E->lstm[i].layers[E->lstm[i].n_layers - 1].out_size;
    s->width2 = w2;
    int64_t pw = P->max_width, gates = 0;
    for (int i = 0; i < P->n_lstm; i++)
        for (int k = 0; k < P->lstm[i].n_layers; k++) gates = gates > P->lstm[i].layers[k].ih.out ? gates : P->lstm[i].layers[k].ih.out;
    const int64_t J = m->join.enc_proj.out;
    s->audio = (float *)malloc(sizeof(float) * (size_t)(m->fe.n_fft + AUDIO_SLACK));
    s->fe_work = (float *)malloc(sizeof(double) * 3 * (size_t)m->fe.n_fft + sizeof(float) * (size_t)(m->fe.n_bins + 4));
    s->pending = (float *)malloc(sizeof(float) * (size_t)(m->conformer ? (int64_t)m->conf.chunk_frames * m->conf.n_mels
                                                                         : (int64_t)E->stack * E->n_mels));
    s->pending2 = (float *)malloc(sizeof(float) * (size_t)(E->stack2 * w2 + 1));
    if (m->conformer && !(s->conf = sbl_conf_state_new(&m->conf))) {
        subbit_session_free(s);
        copy_err(err, errlen, "out of memory for a session");
        return SUBBIT_ERR_NOMEM;
    }
    s->enc_state = lstm_states(E->lstm, E->n_lstm);
    s->pred_state = lstm_states(P->lstm, P->n_lstm);
    s->pred_p = (float *)malloc(sizeof(float) * (size_t)J);
    s->pred_tmp_a = (float *)malloc(sizeof(float) * (size_t)pw);
    s->pred_tmp_b = (float *)malloc(sizeof(float) * (size_t)pw);
    s->pred_gates = (float *)malloc(sizeof(float) * (size_t)gates);
    s->pred_hh = (float *)malloc(sizeof(float) * (size_t)gates);
    s->pred_out = (float *)malloc(sizeof(float) * (size_t)(2 * pw));
    s->logits = (float *)malloc(sizeof(float) * (size_t)m->vocab_size);
    s->join_h = (float *)malloc(sizeof(float) * (size_t)J);
    if (!s->audio || !s->fe_work || !s->pending || !s->pending2 || !states_ok(s->enc_state, E->lstm, E->n_lstm) ||
        !states_ok(s->pred_state, P->lstm, P->n_lstm) || !s->pred_p || !s->pred_tmp_a || !s->pred_tmp_b ||
        !s->pred_gates || !s->pred_hh || !s->pred_out || !s->logits || !s->join_h) {
        subbit_session_free(s);
        copy_err(err, errlen, "out of memory for a session");
        return SUBBIT_ERR_NOMEM;
    }
    int rc = subbit_session_reset(s);
    if (rc) {
        copy_err(err, errlen, s->err);
        subbit_session_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* buffered samples -> every complete frame -> encoder + decoding */
static int run_frames(subbit_session *s) {
    const sbl_frontend *fe = &s->m->fe;
    if (s->audio_len < fe->n_fft) return 0;
    int n = 1 + (s->audio_len - fe->n_fft) / fe->hop;
    float *feats = (float *)malloc(sizeof(float) * (size_t)n * (size_t)fe->n_mels);
    if (!feats) return serr(s, SUBBIT_ERR_NOMEM, "out of memory for features");
    for (int i = 0; i < n; i++) sbl_frontend_frame(fe, s->audio + (size_t)i * (size_t)fe->hop, s->fe_work, feats + (size_t)i * (size_t)fe->n_mels);
    int used = n * fe->hop;
    memmove(s->audio, s->audio + used, sizeof(float) * (size_t)(s->audio_len - used));
    s->audio_len -= used;
    int rc = s->m->conformer ? conformer_step(s, feats, n, 0) : encoder_step(s, feats, n);
    free(feats);
    return rc;
}

static int accept(subbit_session *s, const float *fs, const int16_t *is, size_t n) {
    if (!s) return SUBBIT_ERR_ARGUMENT;
    s->err[0] = 0;
    if (!fs && !is && n) return serr(s, SUBBIT_ERR_ARGUMENT, "samples is NULL");
    if (s->finished) return serr(s, SUBBIT_ERR_STATE, "accept after finalize(); call reset() to start a new utterance");
    if (fs)
        for (size_t i = 0; i < n; i++)
            if (!isfinite(fs[i])) return serr(s, SUBBIT_ERR_ARGUMENT, "sample %zu is not finite (NaN or infinity)", i);
    const int cap = s->m->fe.n_fft + AUDIO_SLACK;
    size_t pos = 0;
    /* Frames are cut whenever the buffer fills: the same frames as one call on all samples,
     * since framing is center=False; but the Python runtime encodes once per call, so a call is
     * cut into pieces only when its samples overflow the buffer (the encoder is causal and
     * row-independent, so pieces give the same numbers). */
    while (pos < n) {
        size_t room = (size_t)(cap - s->audio_len), take = n - pos < room ? n - pos : room;
        for (size_t i = 0; i < take; i++) s->audio[s->audio_len + (int)i] = fs ? fs[pos + i] : (float)is[pos + i] / 32768.0f;
        s->audio_len += (int)take;
        pos += take;
        if (s->audio_len == cap || pos == n) {
            int rc = run_frames(s);
            if (rc) return rc;
        }
    }
    return 0;
}

int subbit_session_accept_float(subbit_session *s, const float *samples, size_t n) { return accept(s, samples, NULL, n); }
int subbit_session_accept_int16(subbit_session *s, const int16_t *samples, size_t n) { return accept(s, NULL, samples, n); }

int subbit_session_finalize(subbit_session *s) {
    if (!s) return SUBBIT_ERR_ARGUMENT;
    if (s->finished) return 0;
    s->err[0] = 0;
    s->finished = 1; /* the LSTM encoder's flush emits nothing: frames short of one stack are dropped */
    return s->m->conformer ? conformer_step(s, NULL, 0, 1) : 0;
}

const char *subbit_session_text(subbit_session *s) {
    if (!s) return NULL;
    free(s->text);
    s->text = sbl_tokenizer_decode(&s->m->tok, s->tokens, s->n_tokens);
    return s->text;
}

size_t subbit_session_tokens(const subbit_session *s, const int32_t **ids) {
    if (!s) return 0;
    if (ids) *ids = s->tokens;
    return s->n_tokens;
}

const char *subbit_session_error(const subbit_session *s) { return s ? s->err : "session is NULL"; }

int subbit_session_set_logits_callback(subbit_session *s, subbit_logits_fn fn, void *user) {
    if (!s) return SUBBIT_ERR_ARGUMENT;
    s->cb = fn;
    s->cb_user = user;
    return 0;
}
