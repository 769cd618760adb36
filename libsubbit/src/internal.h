/* Internal types of libsubbit: the validated container, the network pieces, the session. */
#ifndef SBL_INTERNAL_H
#define SBL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "../include/subbit.h"
#include "json.h"
#include "pool.h"

/* limits (docs/format.md "Limits"), the same numbers as subbit.export.container / manifest */
#define SBL_MAX_FILE (16ULL << 30)
#define SBL_MAX_HEADER (64ULL << 20)
#define SBL_MAX_DIM (1ULL << 40)
#define SBL_MAX_JSON_NODES (4u << 20)
#define SBL_SCHEMA_VERSION 1
#define SBL_SCHEMA_MINOR 2
#define SBL_DIGEST_MINOR 2
#define SBL_PACKING "rowblock32-planes-v1"
#define SBL_TOK_MAX_HEADER (1u << 20)
#define SBL_TOK_MAX_VOCAB (1 << 20)
#define SBL_TOK_MAX_DEPTH 4
#define SBL_MAX_OVERLAP 16 /* most frames one sample may fall in: n_fft <= 16 hop */

typedef struct {
    int code;
    char msg[320];
} sbl_err;

int sbl_fail(sbl_err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

enum { DT_F32, DT_F16, DT_U8, DT_I64, DT_I32, DT_BOOL, DT_COUNT };
extern const int sbl_dt_size[DT_COUNT]; /* bytes per element */

/* One tensor of the file's table (validated). */
typedef struct {
    char *name;
    int dtype;
    int ndim;
    int64_t shape[8];
    uint64_t begin, end; /* offsets in the data section */
} sbl_entry;

/* The validated file: tensor table, manifest, data section. */
typedef struct {
    sj_doc *manifest_doc;
    const sj_node *manifest;
    sbl_entry *entries; /* sorted by name */
    size_t n_entries;
    uint8_t *data;      /* 64-byte aligned copy of the data section */
    uint64_t data_len;
    int minor;
} sbl_container;

int sbl_container_read_file(const char *path, sbl_container *c, sbl_err *e);
int sbl_container_read_memory(const uint8_t *buf, size_t size, sbl_container *c, sbl_err *e);
void sbl_container_free(sbl_container *c);
const sbl_entry *sbl_find(const sbl_container *c, const char *name);
/* IEEE half to float (subnormals, infinities and NaN included) */
float sbl_half_to_float(uint16_t h);

/* A quantized weight ready for the kernels. */
typedef struct {
    int bits;
    int64_t n, k, groups;
    const uint8_t *packed; /* [n][row_bytes] inside the container's data */
    int8_t *lut;           /* [groups][SUBBIT_LUT_STRIDE(bits)] */
    float *scales;         /* [groups] */
    int32_t *rowsum;       /* [n] */
    int identity;          /* 1: 8-bit indices rewritten in place as their int8 weights (see weights.c) */
} sbl_packed;

/* Row r of a packed tensor as float32 (k values): int8 table value times its group's scale. */
void sbl_packed_row(const sbl_packed *p, int64_t r, float *out);

/* y = x W^T + b, packed (kernels) or float. */
typedef struct {
    int64_t in, out;
    sbl_packed *pw; /* NULL: float weight w */
    float *w;       /* [out][in] */
    float *bias;    /* [out] or NULL */
} sbl_linear;

typedef struct {
    sbl_linear ih, hh, proj; /* ih carries b_ih + b_hh; proj.out == 0: no projection */
    int64_t hidden, out_size;
} sbl_lstm_layer;

typedef struct {
    sbl_lstm_layer *layers;
    int n_layers;
} sbl_lstm;

/* the four bias-free state maps of one Bifocal layer (subbit.runtime.bifocal.BifocalLayer) */
typedef struct {
    sbl_linear down_h, down_c; /* large -> small: [S][H] */
    sbl_linear up_h, up_c;     /* small -> large: [H][S] */
} sbl_bifocal_maps;

/* the LSTM encoder (arch "rnnt") or the Bifocal one (arch "bifocal": small != NULL) */
typedef struct {
    int n_mels, stack, stack2, stack2_after, n_lstm;
    sbl_lstm *lstm;          /* [n_lstm]: the LSTMs, or the Bifocal large pathways */
    sbl_lstm *small;         /* [n_lstm] Bifocal small pathways (one layer each), or NULL */
    sbl_bifocal_maps *maps;  /* [n_lstm] Bifocal state maps, or NULL */
    sbl_linear proj;
    int64_t output_dim;
    int chunk_frames, subsampling;
    int64_t max_width; /* widest activation row anywhere in the encoder */
} sbl_encoder;

/* streaming Conformer (subbit.runtime.models.ConformerEncoder / layers.ConformerBlock) */
typedef struct {
    float *w, *b; /* [n] or NULL */
} sbl_ln;

typedef struct {
    sbl_ln norm;
    sbl_linear lin1, lin2;
} sbl_ff;

typedef struct {
    sbl_ff ff1, ff2;
    sbl_ln attn_norm, out_norm, conv_norm, conv_norm2;
    sbl_linear q, k, v, out, pw1, pw2;
    float *rel_bias; /* [num_rel][heads] or NULL */
    float *dw;       /* [kernel][d] */
    float *dw_bias;  /* [d] or NULL */
} sbl_cblock;

typedef struct {
    int n_mels, stack, d, heads, dh, chunk, left, kernel, n_blocks, rel_pos, num_rel, chunk_frames;
    int64_t ff_width; /* widest lin1 output */
    sbl_linear inp;
    sbl_cblock *blocks;
} sbl_conformer;

typedef struct {
    int blank;
    int64_t num, dim;
    sbl_packed *packed; /* packed table, or float table */
    float *table;
    int n_lstm;
    sbl_lstm *lstm;
    int64_t output_dim, max_width;
} sbl_predictor;

typedef struct {
    sbl_linear enc_proj, pred_proj, out;
} sbl_joiner;

typedef struct {
    int sample_rate, n_fft, hop, n_mels, n_bins, width;
    float *window;     /* [n_fft] periodic Hann */
    int32_t *bank_idx; /* [n_mels][width] */
    float *bank_w;     /* [n_mels][width] */
    float *mean, *std; /* [n_mels] or NULL */
    double *cos_t, *sin_t; /* [n_fft] */
    float log_offset;
} sbl_frontend;

typedef struct {
    int kind;          /* 0 none, 1 char, 2 bpe */
    int vocab_size;
    char **pieces;     /* [vocab_size]: id -> surface text (already with spaces for bpe) */
    size_t *piece_len;
    int *piece_type;   /* bpe: sentencepiece type (1 normal, 2 unknown, 3 control, ...) */
    int add_dummy_prefix;
} sbl_tokenizer;

struct subbit_model {
    sbl_container file;
    int path;          /* kernel path */
    int vocab_size, blank, n_mels;
    int conformer;     /* 0: LSTM encoder (enc), 1: Conformer (conf) */
    sbl_encoder enc;
    sbl_conformer conf;
    sbl_predictor pred;
    sbl_joiner join;
    sbl_frontend fe;
    sbl_tokenizer tok;
    sbl_packed *packed_all; /* every packed weight, freed together */
    int n_packed, cap_packed;
    uint64_t weight_bytes;
};

int sbl_build_model(subbit_model *m, sbl_err *e);
void sbl_free_model_parts(subbit_model *m);
int sbl_frontend_init(sbl_frontend *fe, const sj_node *manifest, int n_mels, sbl_err *e);
void sbl_frontend_free(sbl_frontend *fe);
/* log-mel of the frame samples[0..n_fft) into out[n_mels]; work: 3 n_fft doubles + n_bins floats */
void sbl_frontend_frame(const sbl_frontend *fe, const float *samples, float *work, float *out);
int sbl_tokenizer_init(sbl_tokenizer *t, const uint8_t *blob, size_t n, sbl_err *e);
void sbl_tokenizer_free(sbl_tokenizer *t);
/* Decode ids to a malloc'd string (as subbit Tokenizer.decode) */
char *sbl_tokenizer_decode(const sbl_tokenizer *t, const int32_t *ids, size_t n);

/* Conformer streaming state of one session, and one encoder advance over whole chunks */
typedef struct sbl_conf_state sbl_conf_state;
sbl_conf_state *sbl_conf_state_new(const sbl_conformer *c);
void sbl_conf_state_reset(sbl_conf_state *st, const sbl_conformer *c);
void sbl_conf_state_free(sbl_conf_state *st, const sbl_conformer *c);
/* frames [n][n_mels] (n a multiple of stack) -> enc [n / stack][d]; returns a status */
int sbl_conf_advance(const sbl_conformer *c, sbl_conf_state *st, const sbl_exec *ex, const float *frames, int64_t n, float *enc);
void sbl_conformer_free(sbl_conformer *c);

/* y[m][out] = x[m][in] W^T + b */
int sbl_linear_apply(const sbl_linear *l, const sbl_exec *ex, const float *x, int64_t m, float *y);

#endif
