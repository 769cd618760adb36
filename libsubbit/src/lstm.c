/* The LSTM cell of subbit.runtime.layers.LSTMLayer (gates i, f, g, o; both biases in the input
 * projection; optional projection) over a block of rows, and the per-layer states. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "session.h"
#include "vmath.h"

lstm_state *sbl_lstm_states(const sbl_lstm *s, int n) {
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

int sbl_states_ok(const lstm_state *st, const sbl_lstm *s, int n) {
    if (!st) return 0;
    for (int i = 0; i < n; i++) {
        if (!st[i].h || !st[i].c) return 0;
        for (int k = 0; k < s[i].n_layers; k++)
            if (!st[i].h[k] || !st[i].c[k]) return 0;
    }
    return 1;
}

void sbl_states_zero(lstm_state *st, const sbl_lstm *s, int n) {
    for (int i = 0; i < n; i++)
        for (int k = 0; k < s[i].n_layers; k++) {
            memset(st[i].h[k], 0, sizeof(float) * (size_t)s[i].layers[k].out_size);
            memset(st[i].c[k], 0, sizeof(float) * (size_t)s[i].layers[k].hidden);
        }
}

void sbl_states_free(lstm_state *st, const sbl_lstm *s, int n) {
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
static int lstm_layer(const sbl_lstm_layer *L, const sbl_exec *ex, const float *x, int64_t T, float *h, float *c, float *gi,
                      float *hh, float *hraw, float *y) {
    int rc = sbl_linear_apply(&L->ih, ex, x, T, gi);
    const int64_t H = L->hidden;
    for (int64_t t = 0; t < T && !rc; t++) {
        if ((rc = sbl_linear_apply(&L->hh, ex, h, 1, hh))) break;
        float *g = gi + t * 4 * H;
        for (int64_t j = 0; j < 4 * H; j++) g[j] = g[j] + hh[j];
        /* gates i, f, g, o: sigmoid over i and f, tanh over g, sigmoid over o, in place */
        sbl_vsigmoid(ex->path, g, g, 2 * H);
        sbl_vtanh(ex->path, g + 2 * H, g + 2 * H, H);
        sbl_vsigmoid(ex->path, g + 3 * H, g + 3 * H, H);
        for (int64_t j = 0; j < H; j++) {
            float a = g[H + j] * c[j], b = g[j] * g[2 * H + j];
            c[j] = a + b;
        }
        sbl_vtanh(ex->path, c, hraw, H);
        for (int64_t j = 0; j < H; j++) hraw[j] = g[3 * H + j] * hraw[j];
        if (L->proj.out) {
            if ((rc = sbl_linear_apply(&L->proj, ex, hraw, 1, h))) break;
        } else {
            memcpy(h, hraw, sizeof(float) * (size_t)H);
        }
        memcpy(y + t * L->out_size, h, sizeof(float) * (size_t)L->out_size);
    }
    return rc;
}

/* one nn.LSTM (possibly several layers) over T rows into y; tmp [T][max width] holds the
 * layers in between (a layer reads all of its input before writing, so in place is safe) */
int sbl_lstm_run(const sbl_lstm *s, lstm_state *st, const sbl_exec *ex, const float *x, int64_t T, float *y, float *tmp,
                    float *gi, float *hh, float *hraw) {
    const float *in = x;
    for (int k = 0; k < s->n_layers; k++) {
        float *out = k == s->n_layers - 1 ? y : tmp;
        int rc = lstm_layer(&s->layers[k], ex, in, T, st->h[k], st->c[k], gi, hh, hraw, out);
        if (rc) return rc;
        in = out;
    }
    return 0;
}

