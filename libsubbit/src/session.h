/* One utterance stream's state, and what the parts of a session share: lstm.c (the LSTM cell
 * and its states), decode.c (predictor, joiner, greedy search), encode.c (frames through the
 * LSTM or Conformer encoder), bifocal.c (the Bifocal layers), session.c (the public calls). */
#ifndef SBL_SESSION_H
#define SBL_SESSION_H

#include <stdint.h>

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
    lstm_state *enc_state, *pred_state; /* enc_state: the LSTMs, or the Bifocal large pathways */
    lstm_state *small_state;             /* Bifocal: the small pathways (NULL otherwise) */
    unsigned char *bf_small;             /* Bifocal: per layer, its last frame ran small */
    unsigned char *pending_mask, *pending2_mask; /* Bifocal: pathway of the pending frames (1 small) */
    int64_t pos, small_until;            /* Bifocal: frames seen; frames before small_until run small */
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
    sbl_exec ex;         /* kernel path and worker threads (subbit_session_set_threads) */
};

int sbl_serr(subbit_session *s, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* per-layer (h, c) of n nn.LSTMs; check with sbl_states_ok (a partial allocation is freed by sbl_states_free) */
lstm_state *sbl_lstm_states(const sbl_lstm *s, int n);
int sbl_states_ok(const lstm_state *st, const sbl_lstm *s, int n);
void sbl_states_zero(lstm_state *st, const sbl_lstm *s, int n);
void sbl_states_free(lstm_state *st, const sbl_lstm *s, int n);
/* one nn.LSTM over T rows of x into y; tmp [T][max width], gi [T][4H], hh [4H], hraw [H] scratch */
int sbl_lstm_run(const sbl_lstm *s, lstm_state *st, const sbl_exec *ex, const float *x, int64_t T, float *y, float *tmp,
                 float *gi, float *hh, float *hraw);

/* embed token, run the predictor, project it for the joiner (into s->pred_p) */
int sbl_predictor_step(subbit_session *s, int token);
/* greedy search over T encoder frames enc [T][D] */
int sbl_decode(subbit_session *s, const float *enc, int64_t T);

/* F new log-mel frames through the LSTM encoder and decoding */
int sbl_encoder_step(subbit_session *s, const float *feats, int64_t F);
/* the same for the Conformer (flush: the partial last chunk) */
int sbl_conformer_step(subbit_session *s, const float *feats, int64_t F, int flush);

/* Bifocal: out[t] = pathway of stack t of [pending (np) ++ fresh (n)] in stacks of k (small only
 * if all its frames are); the frames short of a stack move to pending[0..); returns the stacks */
int64_t sbl_stack_masks(unsigned char *pending, int64_t np, const unsigned char *fresh, int64_t n, int64_t k,
                        unsigned char *out);
/* Bifocal layer i over x [T][in] with pathways small [T] into y [T][H]; scratch as sbl_lstm_run */
int sbl_bifocal_run(subbit_session *s, int i, const float *x, const unsigned char *small, int64_t T, float *y,
                    float *tmp, float *gi, float *hh, float *hraw);

#endif
