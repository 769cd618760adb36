/* One Bifocal layer from its tensors (subbit.runtime.bifocal.BifocalLayer, docs/models.md 3b R1):
 * encoder.layers.{i}.large and .small, one-layer LSTMs on the same input, and the bias-free state
 * maps down_h, down_c [S, H] and up_h, up_c [H, S]; every width checked before the next read. */
#include <stdio.h>

#include "build.h"
#include "internal.h"

/* a pathway: one LSTM layer whose state is its output (no projection, or a square one) */
static int pathway(sbl_bctx *x, const char *prefix, sbl_lstm *s, int64_t in_width) {
    if (sbl_lstm_load(x, prefix, s, in_width)) return x->e->code;
    if (s->n_layers != 1) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "%.80s: a bifocal pathway is a one-layer LSTM", prefix);
    if (s->layers[0].out_size != s->layers[0].hidden)
        return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "%.80s: a bifocal pathway's output must be its hidden state (no projection)", prefix);
    return 0;
}

/* a bias-free map prefix.name.weight of in -> out */
static int state_map(sbl_bctx *x, const char *prefix, const char *name, int64_t in, int64_t out, sbl_linear *l) {
    char w[160], where[200];
    snprintf(w, sizeof w, "%s.%s.weight", prefix, name);
    if (sbl_linear_named(x, w, NULL, l)) return x->e->code;
    snprintf(where, sizeof where, "%s.%s input size", prefix, name);
    if (sbl_dims(x, where, l->in, in)) return x->e->code;
    snprintf(where, sizeof where, "%s.%s output size", prefix, name);
    return sbl_dims(x, where, l->out, out);
}

int sbl_build_bifocal_layer(sbl_bctx *x, int i, int64_t in_width) {
    sbl_encoder *E = &x->m->enc;
    char p[64], n[96];
    snprintf(p, sizeof p, "encoder.layers.%d", i);
    snprintf(n, sizeof n, "%s.large", p);
    if (pathway(x, n, &E->lstm[i], in_width)) return x->e->code;
    snprintf(n, sizeof n, "%s.small", p);
    if (pathway(x, n, &E->small[i], in_width)) return x->e->code;
    const int64_t h = E->lstm[i].layers[0].hidden, s = E->small[i].layers[0].hidden;
    sbl_bifocal_maps *M = &E->maps[i];
    if (state_map(x, p, "down_h", h, s, &M->down_h) || state_map(x, p, "down_c", h, s, &M->down_c) ||
        state_map(x, p, "up_h", s, h, &M->up_h) || state_map(x, p, "up_c", s, h, &M->up_c))
        return x->e->code;
    return 0;
}
