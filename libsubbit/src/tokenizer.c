/* Token ids to text, as subbit.asr.tokenizer.Tokenizer.decode: the SBTOK1 blob (magic, u32
 * header length, JSON header) checked as subbit.runtime.session.check_tokenizer_blob, then a
 * char table, or for BPE the SentencePiece model proto read just far enough for id -> piece
 * (pieces, their types, unk_surface, add_dummy_prefix). SentencePiece ids are subbit ids - 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const char MAGIC[] = "SBTOK1\n";

static int depth(const sj_node *n) {
    int best = 0;
    if (n->type == SJ_ARRAY || n->type == SJ_OBJECT)
        for (size_t i = 0; i < n->len; i++) {
            int d = depth(&n->items[i]);
            best = d > best ? d : best;
        }
    return best + 1;
}

/* -- protobuf reading ---------------------------------------------------------------------- */
typedef struct {
    const uint8_t *p, *end;
} pb;

static int varint(pb *b, uint64_t *v) {
    *v = 0;
    for (int s = 0; s < 64; s += 7) {
        if (b->p >= b->end) return -1;
        uint8_t c = *b->p++;
        *v |= (uint64_t)(c & 0x7F) << s;
        if (!(c & 0x80)) return 0;
    }
    return -1;
}

/* one field of a message: its number, wire type, payload (wire type 2) or value (wire type 0) */
typedef struct {
    uint32_t num;
    int wt;
    const uint8_t *data;
    size_t len;
    uint64_t v;
} pb_field;

/* the next field of b (fixed-width ones skipped); -1 when the bytes are not a message */
static int field(pb *b, pb_field *f) {
    uint64_t key;
    if (varint(b, &key)) return -1;
    f->num = (uint32_t)(key >> 3);
    f->wt = (int)(key & 7);
    switch (f->wt) {
    case 0: return varint(b, &f->v);
    case 1: if (b->end - b->p < 8) return -1; b->p += 8; return 0;
    case 5: if (b->end - b->p < 4) return -1; b->p += 4; return 0;
    case 2: {
        uint64_t n;
        if (varint(b, &n) || n > (uint64_t)(b->end - b->p)) return -1;
        f->data = b->p;
        f->len = (size_t)n;
        b->p += n;
        return 0;
    }
    default: return -1;
    }
}

#define BAD_PROTO(e) sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: bpe: the SentencePiece model cannot be parsed")

static int set_piece(sbl_tokenizer *t, int id, const char *s, size_t n) {
    t->pieces[id] = (char *)malloc(n + 1);
    if (!t->pieces[id]) return -1;
    memcpy(t->pieces[id], s, n);
    t->pieces[id][n] = 0;
    t->piece_len[id] = n;
    return 0;
}

static int sentencepiece(sbl_tokenizer *t, const uint8_t *m, size_t n, sbl_err *e) {
    /* first pass: count pieces, read the normalizer and trainer options */
    pb b = {m, m + n};
    size_t count = 0;
    pb_field f, g;
    const uint8_t *unk = (const uint8_t *)" \xE2\x81\x87 ";
    size_t unk_len = 5;
    t->add_dummy_prefix = 1;
    while (b.p < b.end) {
        if (field(&b, &f)) return BAD_PROTO(e);
        if (f.num == 1 && f.wt == 2) count++;
        if ((f.num == 2 || f.num == 3) && f.wt == 2) {
            pb s = {f.data, f.data + f.len};
            while (s.p < s.end) {
                if (field(&s, &g)) return BAD_PROTO(e);
                if (f.num == 2 && g.num == 44 && g.wt == 2) { unk = g.data; unk_len = g.len; }
                if (f.num == 3 && g.num == 3 && g.wt == 0) t->add_dummy_prefix = g.v != 0;
            }
        }
    }
    if ((int64_t)count + 1 != t->vocab_size)
        return sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: vocab_size %d but the SentencePiece model has %zu pieces (+ blank)", t->vocab_size, count);
    b.p = m;
    int id = 1;
    while (b.p < b.end) {
        if (field(&b, &f)) return BAD_PROTO(e);
        if (f.num != 1 || f.wt != 2) continue;
        pb s = {f.data, f.data + f.len};
        const uint8_t *ps = (const uint8_t *)"";
        size_t pl = 0;
        int type = 1;
        while (s.p < s.end) {
            if (field(&s, &g)) return BAD_PROTO(e);
            if (g.num == 1 && g.wt == 2) { ps = g.data; pl = g.len; }
            if (g.num == 3 && g.wt == 0) type = (int)g.v;
        }
        t->piece_type[id] = type;
        /* surface: control -> "", unknown -> unk_surface, else the piece with U+2581 -> ' ' */
        if (type == 3) {
            if (set_piece(t, id, "", 0)) return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory");
        } else if (type == 2) {
            if (set_piece(t, id, (const char *)unk, unk_len)) return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory");
        } else {
            char *o = (char *)malloc(pl + 1);
            if (!o) return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory");
            size_t k = 0;
            for (size_t i = 0; i < pl; i++) {
                if (i + 2 < pl && ps[i] == 0xE2 && ps[i + 1] == 0x96 && ps[i + 2] == 0x81) {
                    o[k++] = ' ';
                    i += 2;
                } else {
                    o[k++] = (char)ps[i];
                }
            }
            o[k] = 0;
            t->pieces[id] = o;
            t->piece_len[id] = k;
        }
        id++;
    }
    return 0;
}

int sbl_tokenizer_init(sbl_tokenizer *t, const uint8_t *blob, size_t n, sbl_err *e) {
    memset(t, 0, sizeof *t);
    if (n == 0) return 0; /* no tokenizer: ids joined by spaces */
    const size_t ml = sizeof MAGIC - 1;
    if (n < ml + 4 || memcmp(blob, MAGIC, ml)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: bad magic (not a subbit tokenizer)");
    uint32_t hl = (uint32_t)blob[ml] | (uint32_t)blob[ml + 1] << 8 | (uint32_t)blob[ml + 2] << 16 | (uint32_t)blob[ml + 3] << 24;
    if (hl > SBL_TOK_MAX_HEADER || ml + 4 + (size_t)hl > n)
        return sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: header length %u exceeds the blob (%zu bytes) or %u", hl, n, SBL_TOK_MAX_HEADER);
    char jerr[160] = "";
    sj_doc *doc = sj_parse((const char *)blob + ml + 4, hl, 4u << 20, jerr, sizeof jerr);
    if (!doc) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: header is not valid JSON: %s", jerr);
    const sj_node *h = sj_root(doc);
    int rc = 0;
    const sj_node *kind = sj_get(h, "kind"), *vs = sj_get(h, "vocab_size"), *chars = sj_get(h, "chars");
    size_t rest = n - ml - 4 - hl;
    if (h->type != SJ_OBJECT) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: header must be a JSON object"); goto out; }
    if (depth(h) > SBL_TOK_MAX_DEPTH) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: header nested deeper than %d", SBL_TOK_MAX_DEPTH); goto out; }
    if (kind && kind->type == SJ_STRING && kind->len == 4 && !memcmp(kind->s, "char", 4)) t->kind = 1;
    else if (kind && kind->type == SJ_STRING && kind->len == 3 && !memcmp(kind->s, "bpe", 3)) t->kind = 2;
    else { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: kind: expected 'char' or 'bpe'"); goto out; }
    if (!vs || vs->type != SJ_INT || vs->big || vs->i < 2 || vs->i > SBL_TOK_MAX_VOCAB) {
        rc = sbl_fail(e, SUBBIT_ERR_LIMIT, "tokenizer blob: vocab_size: expected an integer in [2, %d]", SBL_TOK_MAX_VOCAB);
        goto out;
    }
    t->vocab_size = (int)vs->i;
    if (t->kind == 1) {
        if (!chars || chars->type != SJ_ARRAY || !chars->len) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: chars: expected a non-empty list of non-empty strings"); goto out; }
        for (size_t i = 0; i < chars->len; i++)
            if (chars->items[i].type != SJ_STRING || !chars->items[i].len) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: chars: expected a non-empty list of non-empty strings"); goto out; }
        if ((int64_t)chars->len + 1 != t->vocab_size) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: vocab_size: %d but chars holds %zu symbols (+ blank)", t->vocab_size, chars->len); goto out; }
        if (rest) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: %zu stray bytes after a char table", rest); goto out; }
    } else if (!rest) {
        rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "tokenizer blob: bpe: no SentencePiece model after the header");
        goto out;
    }
    t->pieces = (char **)calloc((size_t)t->vocab_size, sizeof(char *));
    t->piece_len = (size_t *)calloc((size_t)t->vocab_size, sizeof(size_t));
    t->piece_type = (int *)calloc((size_t)t->vocab_size, sizeof(int));
    if (!t->pieces || !t->piece_len || !t->piece_type) { rc = sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory"); goto out; }
    if (t->kind == 1) {
        for (size_t i = 0; i < chars->len; i++)
            if (set_piece(t, (int)i + 1, chars->items[i].s, chars->items[i].len)) { rc = sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory"); goto out; }
    } else {
        rc = sentencepiece(t, blob + ml + 4 + hl, rest, e);
    }
out:
    sj_free(doc);
    if (rc) sbl_tokenizer_free(t);
    return rc;
}

void sbl_tokenizer_free(sbl_tokenizer *t) {
    if (t->pieces)
        for (int i = 0; i < t->vocab_size; i++) free(t->pieces[i]);
    free(t->pieces);
    free(t->piece_len);
    free(t->piece_type);
    memset(t, 0, sizeof *t);
}

char *sbl_tokenizer_decode(const sbl_tokenizer *t, const int32_t *ids, size_t n) {
    size_t total = 1;
    if (!t->kind) { /* ids joined by spaces */
        char *o = (char *)malloc(n * 12 + 1);
        if (!o) return NULL;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) k += (size_t)snprintf(o + k, 13, i ? " %d" : "%d", (int)ids[i]);
        o[k] = 0;
        return o;
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] > 0 && ids[i] < t->vocab_size) total += t->piece_len[ids[i]];
    char *o = (char *)malloc(total);
    if (!o) return NULL;
    size_t k = 0;
    int bos = 1; /* SentencePiece drops the dummy-prefix space of the first piece with text */
    for (size_t i = 0; i < n; i++) {
        int id = ids[i];
        if (id <= 0 || id >= t->vocab_size) continue;
        const char *s = t->pieces[id];
        size_t len = t->piece_len[id];
        if (t->kind == 2 && bos && t->add_dummy_prefix && t->piece_type[id] != 2 && len && s[0] == ' ') s++, len--;
        memcpy(o + k, s, len);
        k += len;
        if (t->kind == 2 && t->piece_len[id]) bos = 0;
    }
    o[k] = 0;
    return o;
}
