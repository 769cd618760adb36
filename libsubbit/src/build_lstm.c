/* LSTM layers (nn.LSTM: both biases folded into the input projection, optional projection) and
 * the encoder of subbit.runtime.encoders.StackedEncoder: stacking, layers (LSTMs, or Bifocal
 * layers from build_bifocal.c), projection. */
#include <stdio.h>
#include <stdlib.h>

#include "build.h"
#include "internal.h"

/* nn.LSTM under prefix: layers k = 0, 1, ... while prefix.weight_ih_l{k} exists */
int sbl_lstm_load(sbl_bctx *x, const char *prefix, sbl_lstm *s, int64_t in_width) {
    char n1[1024], n2[1024];
    int k = 0;
    for (;; k++) {
        snprintf(n1, sizeof n1, "%s.weight_ih_l%d", prefix, k);
        if (!sbl_has(x, n1)) break;
        if (k >= 64) return sbl_fail(x->e, SUBBIT_ERR_LIMIT, "%.80s: more than 64 LSTM layers", prefix);
    }
    if (!k) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "model file has no LSTM weights under '%.80s'.weight_ih_l0", prefix);
    s->layers = (sbl_lstm_layer *)calloc((size_t)k, sizeof(sbl_lstm_layer));
    if (!s->layers) return sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory");
    s->n_layers = k;
    for (int i = 0; i < k; i++) {
        sbl_lstm_layer *L = &s->layers[i];
        snprintf(n1, sizeof n1, "%s.weight_ih_l%d", prefix, i);
        if (sbl_linear_named(x, n1, NULL, &L->ih)) return x->e->code;
        if (L->ih.out % 4) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "%.80s: %lld rows, not 4 gates", n1, (long long)L->ih.out);
        L->hidden = L->ih.out / 4;
        /* both biases fold into the input projection: b_ih + b_hh (float32) */
        float *bi = NULL, *bh = NULL;
        snprintf(n2, sizeof n2, "%s.bias_ih_l%d", prefix, i);
        if (sbl_has(x, n2) && !(bi = sbl_vector(x, n2, L->ih.out))) return x->e->code;
        snprintf(n2, sizeof n2, "%s.bias_hh_l%d", prefix, i);
        if (sbl_has(x, n2) && !(bh = sbl_vector(x, n2, L->ih.out))) { free(bi); return x->e->code; }
        if (bi && bh) {
            for (int64_t j = 0; j < L->ih.out; j++) bi[j] = bi[j] + bh[j];
            free(bh);
            L->ih.bias = bi;
        } else {
            L->ih.bias = bi ? bi : bh;
        }
        snprintf(n1, sizeof n1, "%s.weight_hh_l%d", prefix, i);
        if (sbl_linear_named(x, n1, NULL, &L->hh)) return x->e->code;
        if (L->hh.out != L->ih.out)
            return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "LSTM weights disagree: W_ih %lld rows, W_hh %lld", (long long)L->ih.out, (long long)L->hh.out);
        L->out_size = L->hidden;
        snprintf(n1, sizeof n1, "%s.weight_hr_l%d", prefix, i);
        if (sbl_has(x, n1)) {
            if (sbl_linear_named(x, n1, NULL, &L->proj)) return x->e->code;
            if (sbl_dims(x, "LSTM projection input size", L->proj.in, L->hidden)) return x->e->code;
            L->out_size = L->proj.out;
        }
        char where[1100];
        snprintf(where, sizeof where, "%.900s layer %d input size", prefix, i);
        if (sbl_dims(x, where, L->ih.in, in_width)) return x->e->code;
        snprintf(where, sizeof where, "%.900s layer %d recurrent width", prefix, i);
        if (sbl_dims(x, where, L->hh.in, L->out_size)) return x->e->code;
        in_width = L->out_size;
    }
    return 0;
}


int sbl_lstm_widths(const sbl_lstm *s, int64_t *w) {
    for (int i = 0; i < s->n_layers; i++)
        *w = max64(*w, max64(s->layers[i].ih.in, max64(s->layers[i].ih.out, s->layers[i].out_size)));
    return 0;
}

int sbl_build_lstm_encoder(sbl_bctx *x, int bifocal) {
    sbl_encoder *E = &x->m->enc;
    int layers;
    if (sbl_arch_int(x, "n_mels", 0, 0, 1, 512, &E->n_mels) || sbl_arch_int(x, "stack", 0, 0, 1, 64, &E->stack) ||
        sbl_arch_int(x, "stack2", 1, 1, 1, 64, &E->stack2) || sbl_arch_int(x, "enc_layers", 0, 0, 1, 64, &layers))
        return x->e->code;
    E->stack2_after = -1;
    if (E->stack2 > 1) {
        if (sbl_arch_int(x, "stack2_after", 1, 0, 0, 63, &E->stack2_after)) return x->e->code;
        if (E->stack2_after >= layers)
            return sbl_fail(x->e, SUBBIT_ERR_LIMIT, "manifest arch.stack2_after: %d outside [0, enc_layers - 1 = %d]", E->stack2_after, layers - 1);
    }
    E->lstm = (sbl_lstm *)calloc((size_t)layers, sizeof(sbl_lstm));
    if (bifocal) {
        E->small = (sbl_lstm *)calloc((size_t)layers, sizeof(sbl_lstm));
        E->maps = (sbl_bifocal_maps *)calloc((size_t)layers, sizeof(sbl_bifocal_maps));
    }
    E->n_lstm = layers;
    if (!E->lstm || (bifocal && (!E->small || !E->maps))) return sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory");
    int64_t width = (int64_t)E->n_mels * E->stack;
    E->max_width = width;
    for (int i = 0; i < layers; i++) {
        char p[64];
        snprintf(p, sizeof p, "encoder.lstms.%d", i);
        if (i == E->stack2_after) width *= E->stack2;
        if (bifocal ? sbl_build_bifocal_layer(x, i, width) : sbl_lstm_load(x, p, &E->lstm[i], width)) return x->e->code;
        width = E->lstm[i].layers[E->lstm[i].n_layers - 1].out_size;
        E->max_width = max64(E->max_width, width * E->stack2);
        sbl_lstm_widths(&E->lstm[i], &E->max_width);
        if (bifocal) sbl_lstm_widths(&E->small[i], &E->max_width);
    }
    if (sbl_linear_load(x, "encoder.proj", &E->proj) || sbl_dims(x, "encoder.proj input size", E->proj.in, width)) return x->e->code;
    E->output_dim = E->proj.out;
    E->max_width = max64(E->max_width, E->output_dim);
    E->subsampling = E->stack * E->stack2;
    int cf;
    if (sbl_arch_int(x, "chunk_frames", 1, 0, 0, 1 << 16, &cf)) return x->e->code;
    E->chunk_frames = cf ? cf : E->subsampling;
    if (bifocal) { /* BifocalEncoder: the config's small_hidden is the first layer's */
        int sh;
        if (sbl_arch_int(x, "small_hidden", 0, 0, 1, 1 << 16, &sh) ||
            sbl_dims(x, "manifest arch.small_hidden", E->small[0].layers[0].hidden, sh))
            return x->e->code;
    }
    return 0;
}

