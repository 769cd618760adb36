/* Predictor, joiner and greedy search, as subbit.runtime.session.StreamingSession: predictor
 * primed with blank, then per encoder frame up to MAX_SYMBOLS argmax tokens until blank. */
#include <stdlib.h>
#include <string.h>

#include "../../src/subbit/runtime/csrc/subbit_kernels.h"
#include "internal.h"
#include "session.h"
#include "vmath.h"

int sbl_predictor_step(subbit_session *s, int token) {
    const subbit_model *m = s->m;
    const sbl_predictor *P = &m->pred;
    float *x = s->pred_tmp_a;
    if (token < 0 || token >= P->num) return sbl_serr(s, SUBBIT_ERR_INTERNAL, "token id %d outside the embedding table", token);
    if (P->table) {
        memcpy(x, P->table + (int64_t)token * P->dim, sizeof(float) * (size_t)P->dim);
    } else {
        sbl_packed_row(P->packed, token, x);
    }
    float *cur = x, *nxt = s->pred_tmp_b;
    for (int i = 0; i < P->n_lstm; i++) {
        int rc = sbl_lstm_run(&P->lstm[i], &s->pred_state[i], &s->ex, cur, 1, nxt, s->pred_out, s->pred_gates, s->pred_hh,
                          s->pred_out + P->max_width);
        if (rc) return sbl_serr(s, rc, "predictor: kernel error");
        float *t = cur;
        cur = nxt;
        nxt = t;
    }
    if (sbl_linear_apply(&m->join.pred_proj, &s->ex, cur, 1, s->pred_p)) return sbl_serr(s, SUBBIT_ERR_INTERNAL, "joiner: kernel error");
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
        if (!t) return sbl_serr(s, SUBBIT_ERR_NOMEM, "out of memory for tokens");
        s->tokens = t;
        s->cap_tokens = cap;
    }
    s->tokens[s->n_tokens++] = tok;
    return 0;
}

int sbl_decode(subbit_session *s, const float *enc, int64_t T) {
    const subbit_model *m = s->m;
    const int64_t J = m->join.enc_proj.out;
    const int V = m->vocab_size;
    float *ep = (float *)malloc(sizeof(float) * (size_t)(T * J));
    if (!ep) return sbl_serr(s, SUBBIT_ERR_NOMEM, "out of memory");
    int rc = sbl_linear_apply(&m->join.enc_proj, &s->ex, enc, T, ep);
    for (int64_t t = 0; t < T && !rc; t++) {
        for (int k = 0; k < MAX_SYMBOLS; k++) {
            for (int64_t j = 0; j < J; j++) s->join_h[j] = ep[t * J + j] + s->pred_p[j];
            sbl_vtanh(m->path, s->join_h, s->join_h, J);
            if ((rc = sbl_linear_apply(&m->join.out, &s->ex, s->join_h, 1, s->logits))) break;
            if (s->cb) s->cb(s->logits, V, s->cb_user);
            int tok = argmax(s->logits, V);
            if (tok == m->blank) break;
            if ((rc = push_token(s, tok)) || (rc = sbl_predictor_step(s, tok))) break;
        }
    }
    free(ep);
    if (rc && !s->err[0]) sbl_serr(s, rc, "decoding: kernel error");
    return rc;
}

