/* The Bifocal layers of a session (subbit.runtime.bifocal, docs/models.md 3b R2-R3): a block of
 * frames is cut into runs of one pathway; a run on the small pathway starts from down_h h,
 * down_c c when the previous frame was large and outputs up_h hs; a run on the large pathway
 * starts from up_h hs, up_c cs when the previous frame was small. Frame -1 counts as large. */
#include "internal.h"
#include "session.h"

int64_t sbl_stack_masks(unsigned char *pending, int64_t np, const unsigned char *fresh, int64_t n, int64_t k,
                        unsigned char *out) {
    const int64_t all = np + n, stacks = all / k;
    for (int64_t t = 0; t < stacks; t++) {
        unsigned char small = 1;
        for (int64_t j = t * k; j < (t + 1) * k; j++) small &= j < np ? pending[j] : fresh[j - np];
        out[t] = small;
    }
    for (int64_t r = 0; r < all - stacks * k; r++) { /* r <= g: ascending never overwrites a source */
        int64_t g = stacks * k + r;
        pending[r] = g < np ? pending[g] : fresh[g - np];
    }
    return stacks;
}

int sbl_bifocal_run(subbit_session *s, int i, const float *x, const unsigned char *small, int64_t T, float *y,
                    float *tmp, float *gi, float *hh, float *hraw) {
    const subbit_model *m = s->m;
    const sbl_encoder *E = &m->enc;
    const sbl_bifocal_maps *M = &E->maps[i];
    lstm_state *L = &s->enc_state[i], *S = &s->small_state[i];
    const int64_t in = E->lstm[i].layers[0].ih.in, H = E->lstm[i].layers[0].out_size;
    const sbl_exec *p = &s->ex;
    int rc = 0;
    for (int64_t a = 0, e; a < T && !rc; a = e) {
        for (e = a + 1; e < T && small[e] == small[a];) e++;
        if (small[a]) {
            if (!s->bf_small[i] && ((rc = sbl_linear_apply(&M->down_h, p, L->h[0], 1, S->h[0])) ||
                                    (rc = sbl_linear_apply(&M->down_c, p, L->c[0], 1, S->c[0]))))
                break;
            if ((rc = sbl_lstm_run(&E->small[i], S, p, x + a * in, e - a, tmp, tmp, gi, hh, hraw))) break;
            rc = sbl_linear_apply(&M->up_h, p, tmp, e - a, y + a * H);
        } else {
            if (s->bf_small[i] && ((rc = sbl_linear_apply(&M->up_h, p, S->h[0], 1, L->h[0])) ||
                                   (rc = sbl_linear_apply(&M->up_c, p, S->c[0], 1, L->c[0]))))
                break;
            rc = sbl_lstm_run(&E->lstm[i], L, p, x + a * in, e - a, y + a * H, tmp, gi, hh, hraw);
        }
        s->bf_small[i] = small[a];
    }
    return rc;
}
