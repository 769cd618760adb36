/* What the model builders share (weights.c: tensors to kernel tables and Linear layers;
 * build_lstm.c: LSTM layers and the LSTM / Bifocal encoders; build_conformer.c; build.c: predictor,
 * joiner and the whole model). Every check runs before the table it guards is allocated. */
#ifndef SBL_BUILD_H
#define SBL_BUILD_H

#include <stdint.h>

#include "internal.h"

typedef struct {
    subbit_model *m;
    sbl_err *e;
    char *used; /* per container entry */
} sbl_bctx;

static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* the manifest's entry of a quantized tensor (NULL: not quantized) */
const sj_node *sbl_quant_entry(sbl_bctx *x, const char *name);
/* whether the file has the tensor (quantized or float) */
int sbl_has(sbl_bctx *x, const char *name);
/* arch integer with limits (subbit.runtime.arch.cfg_int); has_def: absent/null gives def */
int sbl_arch_int(sbl_bctx *x, const char *key, int has_def, int64_t def, int64_t lo, int64_t hi, int *out);
/* a width the tensors have against the one the config implies (subbit.runtime.arch.check_dims) */
int sbl_dims(sbl_bctx *x, const char *where, int64_t got, int64_t want);
/* rows, row length and rank of a quantized tensor's manifest entry */
void sbl_q_shape(const sj_node *q, int64_t *n, int64_t *k, int *ndim);
/* the quantized tensor with its kernel tables (int8 lut, scales, row sums); NULL on error */
sbl_packed *sbl_packed_load(sbl_bctx *x, const char *name);
/* any tensor as float32 (a quantized one decoded with its int8 codebook); NULL on error */
float *sbl_as_float(sbl_bctx *x, const char *name, int64_t *count, int64_t shape[8], int *ndim);
/* a float vector of len values; NULL on error */
float *sbl_vector(sbl_bctx *x, const char *name, int64_t len);
/* weight wname (+ bias bname when not NULL and present) as a Linear */
int sbl_linear_named(sbl_bctx *x, const char *wname, const char *bname, sbl_linear *l);
/* prefix.weight (+ prefix.bias) as a Linear */
int sbl_linear_load(sbl_bctx *x, const char *prefix, sbl_linear *l);
/* nn.LSTM under prefix (layers while prefix.weight_ih_l{k} exists), input width checked */
int sbl_lstm_load(sbl_bctx *x, const char *prefix, sbl_lstm *s, int64_t in_width);
/* widest activation row of an LSTM into *w */
int sbl_lstm_widths(const sbl_lstm *s, int64_t *w);

/* the encoder of arch "rnnt" (encoder.lstms.*) or, with bifocal, of arch "bifocal" (encoder.layers.*) */
int sbl_build_lstm_encoder(sbl_bctx *x, int bifocal);
/* Bifocal layer i (encoder.layers.i: large, small, down_h/_c, up_h/_c) on rows of width in_width */
int sbl_build_bifocal_layer(sbl_bctx *x, int i, int64_t in_width);
int sbl_build_conformer(sbl_bctx *x);

#endif
