/* Log-mel frames through the encoder of a session: the LSTM encoder's two stackings and layers
 * (models.LSTMEncoder.step; Bifocal layers with their pathway masks, BifocalEncoder.step), or the Conformer's whole chunks (ConformerEncoder.step / flush);
 * the encoder frames they complete go to greedy decoding. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "session.h"

int sbl_encoder_step(subbit_session *s, const float *feats, int64_t F) {
    const subbit_model *m = s->m;
    const sbl_encoder *E = &m->enc;
    const int64_t nm = E->n_mels;
    int64_t total = s->n_pending + F, T = total / E->stack;
    int rc = 0;
    int64_t W = E->max_width > 4 ? E->max_width : 4;
    int64_t gate_w = 0;
    for (int i = 0; i < E->n_lstm; i++) {
        for (int k = 0; k < E->lstm[i].n_layers; k++) gate_w = gate_w > E->lstm[i].layers[k].ih.out ? gate_w : E->lstm[i].layers[k].ih.out;
        if (E->small) gate_w = gate_w > E->small[i].layers[0].ih.out ? gate_w : E->small[i].layers[0].ih.out;
    }
    int64_t rows = T + E->stack2; /* pending2 rows join the first stacked layer */
    /* Bifocal: the pathway of each new frame (BifocalEncoder.step: pos + t < small_until), then
     * of each stacked frame (mk), then after the second stacking (mk2) */
    unsigned char *fresh = NULL, *mk = NULL, *mk2 = NULL;
    if (E->small) {
        fresh = (unsigned char *)malloc((size_t)(F + 2 * rows + 1));
        if (!fresh) return sbl_serr(s, SUBBIT_ERR_NOMEM, "out of memory in the encoder");
        mk = fresh + F;
        mk2 = mk + rows;
        for (int64_t t = 0; t < F; t++) fresh[t] = s->pos + t < s->small_until;
        s->pos += F;
        sbl_stack_masks(s->pending_mask, s->n_pending, fresh, F, E->stack, mk);
    }
    float *a = (float *)malloc(sizeof(float) * (size_t)(rows * W * E->stack2 + 1));
    float *b = (float *)malloc(sizeof(float) * (size_t)(rows * W * E->stack2 + 1));
    float *tmp = (float *)malloc(sizeof(float) * (size_t)(rows * W + 1));
    float *gi = (float *)malloc(sizeof(float) * (size_t)(rows * gate_w + 1));
    float *hh = (float *)malloc(sizeof(float) * (size_t)(2 * gate_w + W + 1));
    if (!a || !b || !tmp || !gi || !hh) { rc = sbl_serr(s, SUBBIT_ERR_NOMEM, "out of memory in the encoder"); goto out; }
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
            if (mk) {
                sbl_stack_masks(s->pending2_mask, s->n_pending2, mk, T, E->stack2, mk2);
                mk = mk2;
            }
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
        rc = mk ? sbl_bifocal_run(s, i, x, mk, T, y, tmp, gi, hh, hh + gate_w)
                : sbl_lstm_run(&E->lstm[i], &s->enc_state[i], &s->ex, x, T, y, tmp, gi, hh, hh + gate_w);
        if (rc) {
            sbl_serr(s, rc, "encoder: kernel error");
            goto out;
        }
        width = E->lstm[i].layers[E->lstm[i].n_layers - 1].out_size;
        float *t = x;
        x = y;
        y = t;
    }
    if ((rc = sbl_linear_apply(&E->proj, &s->ex, x, T, y))) { sbl_serr(s, rc, "encoder: kernel error"); goto out; }
    rc = sbl_decode(s, y, T);
out:
    free(a);
    free(b);
    free(tmp);
    free(gi);
    free(hh);
    free(fresh);
    return rc;
}

/* Conformer: encode every complete chunk (models.ConformerEncoder.step), or with flush the
 * partial last chunk, frames short of one stack dropped (ConformerEncoder.flush) */
int sbl_conformer_step(subbit_session *s, const float *feats, int64_t F, int flush) {
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
    if (!x || !enc) rc = sbl_serr(s, SUBBIT_ERR_NOMEM, "out of memory in the encoder");
    if (!rc) {
        const int64_t from_pending = n < s->n_pending ? n : s->n_pending, used = n - from_pending;
        const int64_t left = flush ? 0 : F - used;
        memcpy(x, s->pending, sizeof(float) * (size_t)(from_pending * nm));
        if (used) memcpy(x + from_pending * nm, feats, sizeof(float) * (size_t)(used * nm));
        if (left) memcpy(s->pending, feats + used * nm, sizeof(float) * (size_t)(left * nm));
        s->n_pending = (int)left;
        rc = sbl_conf_advance(C, s->conf, &s->ex, x, n, enc);
        if (rc) sbl_serr(s, rc, "encoder: kernel error");
        else rc = sbl_decode(s, enc, n / C->stack);
    }
    free(x);
    free(enc);
    return rc;
}

