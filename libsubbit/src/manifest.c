/* The manifest of a .subbit file (subbit.export.manifest.validate_manifest): top-level fields,
 * each quantized and float tensor's entry, the tokenizer; then the tensor table must hold exactly
 * the tensors the manifest implies, with their dtype and shape. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container.h"
#include "internal.h"

typedef struct {
    char *name;
    int dtype, ndim;
    int64_t shape[8];
} expect;

typedef struct {
    expect *v;
    size_t n, cap;
} expect_list;

static int push(expect_list *l, const char *base, const char *suffix, int dtype, const int64_t *shape, int ndim,
                sbl_err *e) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        expect *v = (expect *)realloc(l->v, cap * sizeof(expect));
        if (!v) return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory");
        l->v = v;
        l->cap = cap;
    }
    size_t bl = strlen(base), sl = strlen(suffix);
    char *nm = (char *)malloc(bl + sl + 1);
    if (!nm) return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory");
    memcpy(nm, base, bl);
    memcpy(nm + bl, suffix, sl + 1);
    expect *x = &l->v[l->n++];
    x->name = nm;
    x->dtype = dtype;
    x->ndim = ndim;
    memcpy(x->shape, shape, sizeof(int64_t) * (size_t)ndim);
    return 0;
}

static int cmp_expect(const void *a, const void *b) { return strcmp(((const expect *)a)->name, ((const expect *)b)->name); }

/* exactly the required keys plus any of the optional ones */
static int keys_ok(const sj_node *obj, const char *const *req, const char *const *opt, const char *where, sbl_err *e) {
    for (const char *const *r = req; *r; r++)
        if (!sj_get(obj, *r)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "%.120s: missing field '%s'", where, *r);
    for (size_t i = 0; i < obj->len; i++) {
        int known = 0;
        for (const char *const *r = req; *r && !known; r++) known = strlen(*r) == obj->keylens[i] && !memcmp(*r, obj->keys[i], obj->keylens[i]);
        for (const char *const *r = opt; *r && !known; r++) known = strlen(*r) == obj->keylens[i] && !memcmp(*r, obj->keys[i], obj->keylens[i]);
        if (!known) return sbl_fail(e, SUBBIT_ERR_FORMAT, "%.120s: unknown field '%.60s'", where, obj->keys[i]);
    }
    return 0;
}

static int is_number(const sj_node *n) { return n && (n->type == SJ_INT || n->type == SJ_FLOAT); }
static double num(const sj_node *n) { return n->d; }

int sbl_validate_manifest(const sj_node *m, sbl_container *c, sbl_err *e) {
    static const char *const top_req[] = {"format", "schema_version", "arch", "quantized", "float", "tokenizer",
                                          "data_sha256", "runtime", NULL};
    static const char *const top_opt[] = {"extra", "created_by", "schema_minor", NULL};
    static const char *const q_req[] = {"bits", "shape", "groups", "granularity", "method", "packing", "mu", "count",
                                        "codebook_dtype", NULL};
    static const char *const q_opt[] = {"codebook", "zero_index", NULL};
    static const char *const f_req[] = {"dtype", "shape", NULL};
    static const char *const t_req[] = {"kind", "nbytes", NULL};
    static const char *const none[] = {NULL};
    if (m->type != SJ_OBJECT) return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest: expected an object");
    if (!str_is(sj_get(m, "format"), "subbit")) return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.format: expected 'subbit': not a .subbit file");
    const sj_node *ver = sj_get(m, "schema_version");
    if (!is_int(ver) || ver->i != SBL_SCHEMA_VERSION)
        return sbl_fail(e, SUBBIT_ERR_VERSION, "manifest.schema_version: unsupported version (this reader knows %d)", SBL_SCHEMA_VERSION);
    if (keys_ok(m, top_req, top_opt, "manifest", e)) return e->code;
    const sj_node *mi = sj_get(m, "schema_minor");
    int64_t minor = 0;
    if (mi) {
        /* an integer too large for int64 is still an integer to Python: a newer version, not a bad field */
        if (mi->type == SJ_INT && mi->big && mi->i > 0)
            return sbl_fail(e, SUBBIT_ERR_VERSION, "manifest.schema_minor: file is newer than %d.%d, the newest this reader knows",
                            SBL_SCHEMA_VERSION, SBL_SCHEMA_MINOR);
        if (!is_int(mi) || mi->i < 0) return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.schema_minor: expected an integer >= 0");
        minor = mi->i;
    }
    if (minor > SBL_SCHEMA_MINOR)
        return sbl_fail(e, SUBBIT_ERR_VERSION, "manifest.schema_minor: file is %d.%lld, this reader knows up to %d.%d",
                        SBL_SCHEMA_VERSION, (long long)minor, SBL_SCHEMA_VERSION, SBL_SCHEMA_MINOR);
    c->minor = (int)minor;
    if (sj_get(m, "arch")->type != SJ_OBJECT) return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.arch: expected an object");
    const sj_node *by = sj_get(m, "created_by");
    if (by && by->type != SJ_STRING) return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.created_by: expected a string");
    if (sj_get(m, "extra") && sj_get(m, "extra")->type != SJ_OBJECT) return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.extra: expected an object");
    if (sj_get(m, "runtime")->type != SJ_OBJECT) return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.runtime: expected an object");
    const sj_node *sha = sj_get(m, "data_sha256");
    if (sha->type != SJ_STRING || !hex64(sha->s, sha->len)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.data_sha256: expected 64 lowercase hex digits");

    expect_list L = {0};
    int rc = 0;
    const sj_node *qs = sj_get(m, "quantized"), *fs = sj_get(m, "float");
    if (qs->type != SJ_OBJECT) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.quantized: expected an object"); goto done; }
    for (size_t i = 0; i < qs->len && !rc; i++) {
        const char *name = qs->keys[i];
        const sj_node *q = &qs->items[i];
        char where[160];
        snprintf(where, sizeof where, "manifest.quantized['%.80s']", name);
        if (q->type != SJ_OBJECT) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s: expected an object", where); break; }
        if ((rc = keys_ok(q, q_req, q_opt, where, e))) break;
        const sj_node *b = sj_get(q, "bits");
        if (!is_int(b) || b->i < 1 || b->i > 8) { rc = sbl_fail(e, SUBBIT_ERR_LIMIT, "%s.bits: expected an integer in [1, 8]", where); break; }
        int bits = (int)b->i;
        int64_t shape[8];
        int ndim;
        if (sbl_read_shape(sj_get(q, "shape"), shape, &ndim)) { rc = sbl_fail(e, SUBBIT_ERR_LIMIT, "%s.shape: expected at most 8 dimensions in [0, 2**40]", where); break; }
        int zero = ndim == 0;
        for (int d = 0; d < ndim; d++) zero |= shape[d] == 0;
        if (zero) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.shape: a quantized tensor needs a non-empty shape", where); break; }
        uint64_t count = sbl_shape_bytes(shape, ndim, 1, SBL_MAX_FILE * 8);
        const sj_node *cn = sj_get(q, "count");
        if (!is_int(cn) || cn->i < 1 || (uint64_t)cn->i != count) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.count: not the product of shape", where); break; }
        const sj_node *gran = sj_get(q, "granularity"), *gr = sj_get(q, "groups");
        if (gran->type != SJ_STRING) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.granularity: expected a string", where); break; }
        if (!is_int(gr) || gr->i < 1) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.groups: expected an integer >= 1", where); break; }
        int64_t groups = gr->i;
        if (str_is(gran, "tensor") && groups != 1) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.groups: granularity 'tensor' needs 1 group", where); break; }
        if (str_is(gran, "channel") && ndim < 2) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.granularity: 'channel' needs a weight of 2 or more dimensions (one codebook per packed row): use 'tensor'", where); break; }
        if (str_is(gran, "channel") && groups != shape[0]) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.groups: granularity 'channel' needs shape[0] groups", where); break; }
        if (!str_is(gran, "tensor") && !str_is(gran, "channel")) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.granularity: expected 'tensor' or 'channel'", where); break; }
        if (sj_get(q, "method")->type != SJ_STRING) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.method: expected a string", where); break; }
        if (!str_is(sj_get(q, "packing"), SBL_PACKING)) { rc = sbl_fail(e, SUBBIT_ERR_UNSUPPORTED, "%s.packing: unsupported (this reader knows '%s')", where, SBL_PACKING); break; }
        if (!str_is(sj_get(q, "codebook_dtype"), "F32")) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.codebook_dtype: expected 'F32'", where); break; }
        const sj_node *mu = sj_get(q, "mu");
        if (mu->type == SJ_ARRAY) {
            if ((int64_t)mu->len != groups) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.mu: a list of mu needs one value per group", where); break; }
            for (size_t j = 0; j < mu->len && !rc; j++)
                if (!is_number(&mu->items[j]) || !isfinite(num(&mu->items[j]))) rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.mu: expected finite numbers", where);
            if (rc) break;
        } else if (mu->type != SJ_NULL && (!is_number(mu) || !isfinite(num(mu)))) {
            rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.mu: expected null, a finite number or a list of them", where);
            break;
        }
        int64_t n = ndim > 1 ? shape[0] : 1, k = (int64_t)(count / (uint64_t)n);
        int64_t idx_shape[2] = {n, (k + 7) / 8 * bits};
        if ((rc = push(&L, name, ".idx", DT_U8, idx_shape, 2, e))) break;
        const sj_node *cb = sj_get(q, "codebook"), *zi = sj_get(q, "zero_index");
        int affine = 0;
        if (cb) {
            if (str_is(cb, "affine")) affine = 1;
            else if (!str_is(cb, "table")) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.codebook: expected 'table' or 'affine'", where); break; }
        }
        if (affine) {
            if (minor < 1) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.codebook: an 'affine' codebook needs schema 1.1 or later", where); break; }
            if (!zi) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s: missing field 'zero_index' (needed by an 'affine' codebook)", where); break; }
            if (!is_int(zi) || zi->i < 0 || zi->i > (1 << bits) - 1) { rc = sbl_fail(e, SUBBIT_ERR_LIMIT, "%s.zero_index: outside [0, 2**bits - 1]", where); break; }
            int64_t s1[1] = {groups};
            if ((rc = push(&L, name, ".codebook_step", DT_F32, s1, 1, e))) break;
        } else {
            if (zi) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.zero_index: only an 'affine' codebook has a zero_index", where); break; }
            int64_t s2[2] = {groups, 1 << bits};
            if ((rc = push(&L, name, ".codebook", DT_F32, s2, 2, e))) break;
        }
    }
    if (rc) goto done;
    if (fs->type != SJ_OBJECT) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.float: expected an object"); goto done; }
    for (size_t i = 0; i < fs->len && !rc; i++) {
        const char *name = fs->keys[i];
        const sj_node *f = &fs->items[i];
        char where[160];
        snprintf(where, sizeof where, "manifest.float['%.80s']", name);
        if (f->type != SJ_OBJECT) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s: expected an object", where); break; }
        if ((rc = keys_ok(f, f_req, none, where, e))) break;
        int dt = sbl_dtype_of(sj_get(f, "dtype"));
        if (dt < 0 || dt == DT_U8) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.dtype: unsupported dtype", where); break; }
        if (sj_get(qs, name)) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s: name used twice", where); break; }
        int64_t shape[8];
        int ndim;
        if (sbl_read_shape(sj_get(f, "shape"), shape, &ndim)) { rc = sbl_fail(e, SUBBIT_ERR_LIMIT, "%s.shape: expected at most 8 dimensions in [0, 2**40]", where); break; }
        if ((rc = push(&L, name, "", dt, shape, ndim, e))) break;
    }
    if (rc) goto done;
    const sj_node *tok = sj_get(m, "tokenizer");
    if (tok->type != SJ_NULL) {
        if (tok->type != SJ_OBJECT) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.tokenizer: expected an object or null"); goto done; }
        if ((rc = keys_ok(tok, t_req, none, "manifest.tokenizer", e))) goto done;
        if (sj_get(tok, "kind")->type != SJ_STRING) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.tokenizer.kind: expected a string"); goto done; }
        const sj_node *nb = sj_get(tok, "nbytes");
        if (!is_int(nb) || nb->i < 0) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest.tokenizer.nbytes: expected an integer >= 0"); goto done; }
        int64_t s1[1] = {nb->i};
        if ((rc = push(&L, "__tokenizer__", "", DT_U8, s1, 1, e))) goto done;
    }
    qsort(L.v, L.n, sizeof(expect), cmp_expect);
    for (size_t i = 1; i < L.n; i++)
        if (!strcmp(L.v[i].name, L.v[i - 1].name)) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest: tensor name '%.80s' used twice", L.v[i].name); goto done; }
    if (L.n != c->n_entries) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "header: tensors do not match the manifest (%zu listed, %zu in the table)", L.n, c->n_entries); goto done; }
    for (size_t i = 0; i < L.n; i++) {
        const sbl_entry *en = &c->entries[i]; /* both sorted by name */
        if (strcmp(en->name, L.v[i].name)) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "header: tensors do not match the manifest ('%.80s')", L.v[i].name); goto done; }
        int same = en->dtype == L.v[i].dtype && en->ndim == L.v[i].ndim;
        for (int d = 0; same && d < en->ndim; d++) same = en->shape[d] == L.v[i].shape[d];
        if (!same) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': dtype or shape differs from the manifest", en->name); goto done; }
    }
done:
    for (size_t i = 0; i < L.n; i++) free(L.v[i].name);
    free(L.v);
    return rc;
}
