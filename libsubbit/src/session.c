/* One utterance stream: samples -> log-mel frames -> LSTM, Bifocal or Conformer encoder -> greedy decoding,
 * the same float32 operations in the same order as subbit.runtime (models.py, layers.py,
 * session.py); quantized matmuls go through the shared packed kernels (bit-identical on every
 * ISA path). tanh/sigmoid come from vmath.h and log from libm, so results match NumPy to an ulp or
 * two, not a bit. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "session.h"

int sbl_serr(subbit_session *s, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return code;
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
    sbl_states_zero(s->enc_state, m->enc.lstm, m->enc.n_lstm);
    if (s->small_state) { /* Bifocal: all large, no wake word (BifocalEncoder.init_state) */
        sbl_states_zero(s->small_state, m->enc.small, m->enc.n_lstm);
        memset(s->bf_small, 0, (size_t)m->enc.n_lstm);
        s->pos = s->small_until = 0;
    }
    if (s->conf) sbl_conf_state_reset(s->conf, &m->conf);
    sbl_states_zero(s->pred_state, m->pred.lstm, m->pred.n_lstm);
    int rc = sbl_predictor_step(s, m->blank);
    return rc;
}

void subbit_session_free(subbit_session *s) {
    if (!s) return;
    const subbit_model *m = s->m;
    free(s->audio);
    free(s->fe_work);
    free(s->pending);
    free(s->pending2);
    sbl_states_free(s->enc_state, m->enc.lstm, m->enc.n_lstm);
    sbl_states_free(s->small_state, m->enc.small, m->enc.n_lstm);
    free(s->bf_small);
    free(s->pending_mask);
    free(s->pending2_mask);
    sbl_conf_state_free(s->conf, &m->conf);
    sbl_states_free(s->pred_state, m->pred.lstm, m->pred.n_lstm);
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
    sbl_pool_free(s->ex.pool);
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
    s->ex.path = m->path;
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
    s->enc_state = sbl_lstm_states(E->lstm, E->n_lstm);
    if (E->small) {
        s->small_state = sbl_lstm_states(E->small, E->n_lstm);
        s->bf_small = (unsigned char *)calloc((size_t)E->n_lstm, 1);
        s->pending_mask = (unsigned char *)calloc((size_t)E->stack, 1);
        s->pending2_mask = (unsigned char *)calloc((size_t)E->stack2, 1);
        if (!sbl_states_ok(s->small_state, E->small, E->n_lstm) || !s->bf_small || !s->pending_mask || !s->pending2_mask) {
            subbit_session_free(s);
            copy_err(err, errlen, "out of memory for a session");
            return SUBBIT_ERR_NOMEM;
        }
    }
    s->pred_state = sbl_lstm_states(P->lstm, P->n_lstm);
    s->pred_p = (float *)malloc(sizeof(float) * (size_t)J);
    s->pred_tmp_a = (float *)malloc(sizeof(float) * (size_t)pw);
    s->pred_tmp_b = (float *)malloc(sizeof(float) * (size_t)pw);
    s->pred_gates = (float *)malloc(sizeof(float) * (size_t)gates);
    s->pred_hh = (float *)malloc(sizeof(float) * (size_t)gates);
    s->pred_out = (float *)malloc(sizeof(float) * (size_t)(2 * pw));
    s->logits = (float *)malloc(sizeof(float) * (size_t)m->vocab_size);
    s->join_h = (float *)malloc(sizeof(float) * (size_t)J);
    if (!s->audio || !s->fe_work || !s->pending || !s->pending2 || !sbl_states_ok(s->enc_state, E->lstm, E->n_lstm) ||
        !sbl_states_ok(s->pred_state, P->lstm, P->n_lstm) || !s->pred_p || !s->pred_tmp_a || !s->pred_tmp_b ||
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
    if (!feats) return sbl_serr(s, SUBBIT_ERR_NOMEM, "out of memory for features");
    for (int i = 0; i < n; i++) sbl_frontend_frame(fe, s->audio + (size_t)i * (size_t)fe->hop, s->fe_work, feats + (size_t)i * (size_t)fe->n_mels);
    int used = n * fe->hop;
    memmove(s->audio, s->audio + used, sizeof(float) * (size_t)(s->audio_len - used));
    s->audio_len -= used;
    int rc = s->m->conformer ? sbl_conformer_step(s, feats, n, 0) : sbl_encoder_step(s, feats, n);
    free(feats);
    return rc;
}

static int accept(subbit_session *s, const float *fs, const int16_t *is, size_t n) {
    if (!s) return SUBBIT_ERR_ARGUMENT;
    s->err[0] = 0;
    if (!fs && !is && n) return sbl_serr(s, SUBBIT_ERR_ARGUMENT, "samples is NULL");
    if (s->finished) return sbl_serr(s, SUBBIT_ERR_STATE, "accept after finalize(); call reset() to start a new utterance");
    if (fs)
        for (size_t i = 0; i < n; i++)
            if (!isfinite(fs[i])) return sbl_serr(s, SUBBIT_ERR_ARGUMENT, "sample %zu is not finite (NaN or infinity)", i);
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
    return s->m->conformer ? sbl_conformer_step(s, NULL, 0, 1) : 0;
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

int subbit_session_set_threads(subbit_session *s, int n) {
    if (!s) return SUBBIT_ERR_ARGUMENT;
    s->err[0] = 0;
    if (n < 1 || n > SUBBIT_MAX_THREADS)
        return sbl_serr(s, SUBBIT_ERR_ARGUMENT, "threads must be in 1..%d, got %d", SUBBIT_MAX_THREADS, n);
    if (n == sbl_pool_threads(s->ex.pool)) return 0;
    sbl_pool *p = NULL;
    if (n > 1) {
        int rc = sbl_pool_new(n, &p);
        if (rc) return sbl_serr(s, rc, "could not start %d worker threads", n - 1);
    }
    sbl_pool_free(s->ex.pool);
    s->ex.pool = p;
    return 0;
}

int subbit_session_get_threads(const subbit_session *s) { return s ? sbl_pool_threads(s->ex.pool) : 0; }

int subbit_session_set_wake_end(subbit_session *s, int64_t sample) {
    if (!s) return SUBBIT_ERR_ARGUMENT;
    s->err[0] = 0;
    if (!s->m->enc.small)
        return sbl_serr(s, SUBBIT_ERR_UNSUPPORTED, "this model has no per-frame pathway choice (only arch 'bifocal' takes a wake-word end)");
    /* subbit.runtime.bifocal.wake_frames: frames whose whole window [t hop, t hop + n_fft) ends by sample */
    const sbl_frontend *fe = &s->m->fe;
    s->small_until = sample < fe->n_fft ? 0 : (sample - fe->n_fft) / fe->hop + 1;
    return 0;
}
