/* The transducer (LSTM RNN-T, streaming Conformer, Bifocal RNN-T) from a validated container: the checks of
 * subbit.runtime.models (ARCH_LIMITS, layer widths against the config, unused tensors refused)
 * before any weight table is allocated. The encoders are built in build_lstm.c and
 * build_conformer.c, the tensors read in weights.c; here the predictor, the joiner, the model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build.h"
#include "internal.h"

static int build_predictor(sbl_bctx *x) {
    sbl_predictor *P = &x->m->pred;
    int layers;
    if (sbl_arch_int(x, "blank", 1, 0, 0, (1 << 20) - 1, &P->blank)) return x->e->code;
    const char *emb = "predictor.embed.weight";
    if (!sbl_has(x, emb)) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "model file has no tensor %s (needed by the runtime)", emb);
    const sj_node *q = sbl_quant_entry(x, emb);
    if (q) {
        int ndim;
        sbl_q_shape(q, &P->num, &P->dim, &ndim);
        if (ndim != 2) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "embedding %s must be 2-D", emb);
        if (!(P->packed = sbl_packed_load(x, emb))) return x->e->code;
    } else {
        int64_t count, shape[8];
        int ndim;
        if (!(P->table = sbl_as_float(x, emb, &count, shape, &ndim))) return x->e->code;
        if (ndim != 2) return sbl_fail(x->e, SUBBIT_ERR_FORMAT, "embedding %s must be 2-D", emb);
        P->num = shape[0];
        P->dim = shape[1];
    }
    if (sbl_arch_int(x, "pred_layers", 0, 0, 1, 64, &layers)) return x->e->code;
    P->lstm = (sbl_lstm *)calloc((size_t)layers, sizeof(sbl_lstm));
    if (!P->lstm) return sbl_fail(x->e, SUBBIT_ERR_NOMEM, "out of memory");
    P->n_lstm = layers;
    int64_t width = P->dim;
    P->max_width = width;
    for (int i = 0; i < layers; i++) {
        char p[64];
        snprintf(p, sizeof p, "predictor.lstms.%d", i);
        if (sbl_lstm_load(x, p, &P->lstm[i], width)) return x->e->code;
        width = P->lstm[i].layers[P->lstm[i].n_layers - 1].out_size;
        sbl_lstm_widths(&P->lstm[i], &P->max_width);
    }
    if (P->blank >= P->num)
        return sbl_fail(x->e, SUBBIT_ERR_LIMIT, "manifest arch.blank: %d outside the embedding table of %lld rows", P->blank, (long long)P->num);
    P->output_dim = width;
    return 0;
}

int sbl_build_model(subbit_model *m, sbl_err *e) {
    sbl_bctx x = {m, e, NULL};
    const sj_node *arch = sj_get(m->file.manifest, "arch");
    const sj_node *kind = sj_get(arch, "arch");
    int is_rnnt = kind && kind->type == SJ_STRING && kind->len == 4 && !memcmp(kind->s, "rnnt", 4);
    int is_conf = kind && kind->type == SJ_STRING && kind->len == 9 && !memcmp(kind->s, "conformer", 9);
    int is_bf = kind && kind->type == SJ_STRING && kind->len == 7 && !memcmp(kind->s, "bifocal", 7);
    if (!is_rnnt && !is_conf && !is_bf)
        return sbl_fail(e, SUBBIT_ERR_UNSUPPORTED, "manifest arch: field 'arch' must be 'rnnt', 'conformer' or 'bifocal'");
    m->conformer = is_conf;
    m->cap_packed = (int)sj_get(m->file.manifest, "quantized")->len * 2 + 1; /* a tensor may be read twice */
    m->packed_all = (sbl_packed *)calloc((size_t)m->cap_packed, sizeof(sbl_packed));
    x.used = (char *)calloc(m->file.n_entries + 1, 1);
    if (!m->packed_all || !x.used) { free(x.used); return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory"); }
    int rc = is_conf ? sbl_build_conformer(&x) : sbl_build_lstm_encoder(&x, is_bf);
    if (!rc) rc = build_predictor(&x);
    if (!rc) rc = sbl_linear_load(&x, "joiner.enc_proj", &m->join.enc_proj);
    if (!rc) rc = sbl_linear_load(&x, "joiner.pred_proj", &m->join.pred_proj);
    if (!rc) rc = sbl_linear_load(&x, "joiner.out", &m->join.out);
    int vocab = 0;
    if (!rc) rc = sbl_arch_int(&x, "vocab_size", 0, 0, 2, 1 << 20, &vocab);
    if (!rc) rc = sbl_arch_int(&x, "n_mels", 0, 0, 1, 512, &m->n_mels);
    const sbl_joiner *j = &m->join;
    if (!rc) rc = sbl_dims(&x, "joiner.enc_proj input size", j->enc_proj.in, is_conf ? m->conf.d : m->enc.output_dim);
    if (!rc) rc = sbl_dims(&x, "joiner.pred_proj input size", j->pred_proj.in, m->pred.output_dim);
    if (!rc) rc = sbl_dims(&x, "joiner.pred_proj output size", j->pred_proj.out, j->enc_proj.out);
    if (!rc) rc = sbl_dims(&x, "joiner.out input size", j->out.in, j->enc_proj.out);
    if (!rc) rc = sbl_dims(&x, "joiner.out output size (vocab_size)", j->out.out, vocab);
    if (!rc) {
        m->vocab_size = vocab;
        m->blank = m->pred.blank;
        if (m->blank >= vocab) rc = sbl_fail(e, SUBBIT_ERR_LIMIT, "manifest arch.blank: %d outside [0, vocab_size - 1 = %d]", m->blank, vocab - 1);
    }
    if (!rc) {
        for (size_t i = 0; i < m->file.n_entries; i++) {
            if (x.used[i] || !strcmp(m->file.entries[i].name, "__tokenizer__")) continue;
            rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "model file has tensors the %s runtime does not use: %.80s", is_conf ? "conformer" : is_bf ? "bifocal" : "rnnt",
                         m->file.entries[i].name);
            break;
        }
    }
    free(x.used);
    return rc;
}

static void free_linear(sbl_linear *l) {
    free(l->w);
    free(l->bias);
}

static void free_lstms(sbl_lstm *s, int n) {
    if (!s) return;
    for (int i = 0; i < n; i++) {
        for (int k = 0; s[i].layers && k < s[i].n_layers; k++) {
            free_linear(&s[i].layers[k].ih);
            free_linear(&s[i].layers[k].hh);
            free_linear(&s[i].layers[k].proj);
        }
        free(s[i].layers);
    }
    free(s);
}

void sbl_free_model_parts(subbit_model *m) {
    sbl_conformer_free(&m->conf);
    free_lstms(m->enc.lstm, m->enc.n_lstm);
    free_lstms(m->enc.small, m->enc.n_lstm);
    for (int i = 0; m->enc.maps && i < m->enc.n_lstm; i++) {
        free_linear(&m->enc.maps[i].down_h);
        free_linear(&m->enc.maps[i].down_c);
        free_linear(&m->enc.maps[i].up_h);
        free_linear(&m->enc.maps[i].up_c);
    }
    free(m->enc.maps);
    free_linear(&m->enc.proj);
    free_lstms(m->pred.lstm, m->pred.n_lstm);
    free(m->pred.table);
    free_linear(&m->join.enc_proj);
    free_linear(&m->join.pred_proj);
    free_linear(&m->join.out);
    for (int i = 0; m->packed_all && i < m->n_packed; i++) {
        free(m->packed_all[i].lut);
        free(m->packed_all[i].scales);
        free(m->packed_all[i].rowsum);
    }
    free(m->packed_all);
    sbl_frontend_free(&m->fe);
    sbl_tokenizer_free(&m->tok);
}
