/* Read and validate a .subbit container, in the order of subbit.export.container._parse:
 * length bytes, header length, header_sha256 (before any JSON), JSON header, __metadata__,
 * tensor table (dtype, shape, offsets, contiguity), manifest (validate_manifest), data section
 * sha256, then the payload (finite codebooks and floats, zero padding indices, BOOL 0/1).
 * Nothing is allocated from a field before that field is range-checked. */
#define _DEFAULT_SOURCE
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../src/subbit/runtime/csrc/subbit_kernels.h"
#include "internal.h"
#include "sha256.h"

int sbl_fail(sbl_err *e, int code, const char *fmt, ...) {
    if (e && !e->code) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->code = code;
    }
    return code;
}

static const char *const DT_NAMES[DT_COUNT] = {"F32", "F16", "U8", "I64", "I32", "BOOL"};
static const int DT_SIZE[DT_COUNT] = {4, 2, 1, 8, 4, 1};
static const char HEADER_PREFIX[] = "{\"__metadata__\":{\"header_sha256\":\"";

/* a source of bytes: a file descriptor or memory */
typedef struct {
    int fd;
    const uint8_t *mem;
    uint64_t size;
} source;

static int src_read(const source *s, uint64_t off, uint64_t n, uint8_t *dst, sbl_err *e) {
    if (off > s->size || n > s->size - off) return sbl_fail(e, SUBBIT_ERR_IO, "file shrank while being read");
    if (s->mem) {
        memcpy(dst, s->mem + off, (size_t)n);
        return 0;
    }
    uint64_t got = 0;
    while (got < n) {
        size_t want = n - got > (1u << 30) ? (1u << 30) : (size_t)(n - got);
        ssize_t k = pread(s->fd, dst + got, want, (off_t)(off + got));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return sbl_fail(e, SUBBIT_ERR_IO, "cannot read: %s", strerror(errno));
        if (k == 0) return sbl_fail(e, SUBBIT_ERR_IO, "file shrank while being read (%llu of %llu bytes)",
                                    (unsigned long long)(off + got), (unsigned long long)(off + n));
        got += (uint64_t)k;
    }
    return 0;
}

static int dtype_of(const sj_node *n) {
    if (!n || n->type != SJ_STRING) return -1;
    for (int i = 0; i < DT_COUNT; i++)
        if (strlen(DT_NAMES[i]) == n->len && !memcmp(DT_NAMES[i], n->s, n->len)) return i;
    return -1;
}

static int is_int(const sj_node *n) { return n && n->type == SJ_INT && !n->big; }

/* shape list: at most 8 ints in [0, 2**40] */
static int read_shape(const sj_node *n, int64_t *shape, int *ndim) {
    if (!n || n->type != SJ_ARRAY || n->len > 8) return -1;
    for (size_t i = 0; i < n->len; i++) {
        const sj_node *d = &n->items[i];
        if (!is_int(d) || d->i < 0 || (uint64_t)d->i > SBL_MAX_DIM) return -1;
        shape[i] = d->i;
    }
    *ndim = (int)n->len;
    return 0;
}

/* product of dims times item, or UINT64_MAX when it exceeds limit */
static uint64_t shape_bytes(const int64_t *shape, int ndim, uint64_t item, uint64_t limit) {
    uint64_t p = item;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0) return 0;
        if ((uint64_t)shape[i] > limit / p) p = UINT64_MAX;
        else p *= (uint64_t)shape[i];
        if (p > limit) p = UINT64_MAX;
        if (p == UINT64_MAX) {
            for (int j = i + 1; j < ndim; j++) if (shape[j] == 0) return 0;
            return UINT64_MAX;
        }
    }
    return p;
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const sbl_entry *)a)->name, ((const sbl_entry *)b)->name);
}

const sbl_entry *sbl_find(const sbl_container *c, const char *name) {
    sbl_entry key;
    key.name = (char *)name;
    return (const sbl_entry *)bsearch(&key, c->entries, c->n_entries, sizeof(sbl_entry), cmp_entry);
}

static int cmp_by_offset(const void *a, const void *b) {
    const sbl_entry *x = *(const sbl_entry *const *)a, *y = *(const sbl_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static char *dupn(const char *s, size_t n) {
    char *o = (char *)malloc(n + 1);
    if (o) {
        memcpy(o, s, n);
        o[n] = 0;
    }
    return o;
}

/* the tensor table: every header key except __metadata__ */
static int check_entries(const sj_node *header, uint64_t data_len, sbl_container *c, sbl_err *e) {
    size_t n = header->len - 1; /* __metadata__ is present (checked by the caller) */
    c->entries = (sbl_entry *)calloc(n ? n : 1, sizeof(sbl_entry));
    if (!c->entries) return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory for %zu tensor entries", n);
    size_t k = 0;
    for (size_t i = 0; i < header->len; i++) {
        const char *name = header->keys[i];
        size_t nl = header->keylens[i];
        if (nl == 12 && !memcmp(name, "__metadata__", 12)) continue;
        if (memchr(name, 0, nl)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor name holds a NUL byte");
        const sj_node *ent = &header->items[i];
        const sj_node *dt = sj_get(ent, "dtype"), *sh = sj_get(ent, "shape"), *of = sj_get(ent, "data_offsets");
        if (ent->type != SJ_OBJECT || ent->len != 3 || !dt || !sh || !of)
            return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': expected exactly dtype, shape, data_offsets", name);
        sbl_entry *en = &c->entries[k];
        en->dtype = dtype_of(dt);
        if (en->dtype < 0) return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': unsupported dtype", name);
        if (read_shape(sh, en->shape, &en->ndim)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': bad shape", name);
        if (of->type != SJ_ARRAY || of->len != 2 || !is_int(&of->items[0]) || !is_int(&of->items[1]))
            return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': bad data_offsets", name);
        int64_t b = of->items[0].i, en_ = of->items[1].i;
        if (b < 0 || b > en_ || (uint64_t)en_ > data_len)
            return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': data_offsets [%lld, %lld] outside the data section (%llu bytes)",
                            name, (long long)b, (long long)en_, (unsigned long long)data_len);
        uint64_t want = shape_bytes(en->shape, en->ndim, (uint64_t)DT_SIZE[en->dtype], data_len);
        if (want != (uint64_t)(en_ - b))
            return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': %lld bytes do not hold %s of its shape", name,
                            (long long)(en_ - b), DT_NAMES[en->dtype]);
        en->begin = (uint64_t)b;
        en->end = (uint64_t)en_;
        en->name = dupn(name, nl);
        if (!en->name) return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory");
        k++;
        c->n_entries = k;
    }
    sbl_entry **order = (sbl_entry **)malloc((n ? n : 1) * sizeof(sbl_entry *));
    if (!order) return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) order[i] = &c->entries[i];
    qsort(order, n, sizeof *order, cmp_by_offset);
    uint64_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        if (order[i]->begin != pos) {
            sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': data not contiguous (starts at %llu, expected %llu)",
                     order[i]->name, (unsigned long long)order[i]->begin, (unsigned long long)pos);
            free(order);
            return e->code;
        }
        pos = order[i]->end;
    }
    free(order);
    if (pos != data_len)
        return sbl_fail(e, SUBBIT_ERR_FORMAT, "data section has %llu bytes, tensors cover %llu: truncated or padded file",
                        (unsigned long long)data_len, (unsigned long long)pos);
    qsort(c->entries, n, sizeof(sbl_entry), cmp_entry);
    return 0;
}

/* -- manifest (subbit.export.manifest.validate_manifest) ---------------------------------- */
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

static int str_is(const sj_node *n, const char *s) {
    return n && n->type == SJ_STRING && n->len == strlen(s) && !memcmp(n->s, s, n->len);
}

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

static int hex64(const char *s, size_t n) {
    if (n != 64) return 0;
    for (size_t i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static int is_number(const sj_node *n) { return n && (n->type == SJ_INT || n->type == SJ_FLOAT); }
static double num(const sj_node *n) { return n->d; }

static int validate_manifest(const sj_node *m, sbl_container *c, sbl_err *e) {
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
        if (read_shape(sj_get(q, "shape"), shape, &ndim)) { rc = sbl_fail(e, SUBBIT_ERR_LIMIT, "%s.shape: expected at most 8 dimensions in [0, 2**40]", where); break; }
        int zero = ndim == 0;
        for (int d = 0; d < ndim; d++) zero |= shape[d] == 0;
        if (zero) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.shape: a quantized tensor needs a non-empty shape", where); break; }
        uint64_t count = shape_bytes(shape, ndim, 1, SBL_MAX_FILE * 8);
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
        int dt = dtype_of(sj_get(f, "dtype"));
        if (dt < 0 || dt == DT_U8) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s.dtype: unsupported dtype", where); break; }
        if (sj_get(qs, name)) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "%s: name used twice", where); break; }
        int64_t shape[8];
        int ndim;
        if (read_shape(sj_get(f, "shape"), shape, &ndim)) { rc = sbl_fail(e, SUBBIT_ERR_LIMIT, "%s.shape: expected at most 8 dimensions in [0, 2**40]", where); break; }
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

/* -- payload --------------------------------------------------------------------------------- */
float sbl_half_to_float(uint16_t h);
float sbl_half_to_float(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, ex = (h >> 10) & 31, man = h & 1023, bits;
    if (ex == 0) {
        if (!man) bits = s;
        else { /* subnormal */
            int sh = 0;
            while (!(man & 1024)) { man <<= 1; sh++; }
            man &= 1023;
            bits = s | (uint32_t)(127 - 15 - sh + 1) << 23 | man << 13;
        }
    } else if (ex == 31) bits = s | 0x7F800000u | man << 13;
    else bits = s | (ex - 15 + 127) << 23 | man << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static int check_payload(sbl_container *c, sbl_err *e) {
    const sj_node *qs = sj_get(c->manifest, "quantized"), *fs = sj_get(c->manifest, "float");
    char nm[1024];
    for (size_t i = 0; i < qs->len; i++) {
        const sj_node *q = &qs->items[i];
        const char *name = qs->keys[i];
        int bits = (int)sj_get(q, "bits")->i;
        int64_t groups = sj_get(q, "groups")->i;
        int affine = str_is(sj_get(q, "codebook"), "affine");
        if (strlen(name) > 1000) return sbl_fail(e, SUBBIT_ERR_LIMIT, "tensor name longer than 1000 bytes");
        if (affine) {
            snprintf(nm, sizeof nm, "%s.codebook_step", name);
            const sbl_entry *st = sbl_find(c, nm);
            int64_t z = sj_get(q, "zero_index")->i;
            for (int64_t g = 0; g < groups; g++) {
                float s;
                memcpy(&s, c->data + st->begin + 4 * (uint64_t)g, 4);
                if (!isfinite(s)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': codebook_step has non-finite values", name);
                if (!(s > 0)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': codebook_step must be > 0 in every group", name);
                for (int j = 0; j < (1 << bits); j++) {
                    volatile float lev = (float)j - (float)z;
                    if (!isfinite(s * lev)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': codebook has non-finite values", name);
                }
            }
        } else {
            snprintf(nm, sizeof nm, "%s.codebook", name);
            const sbl_entry *cb = sbl_find(c, nm);
            for (uint64_t o = cb->begin; o < cb->end; o += 4) {
                float v;
                memcpy(&v, c->data + o, 4);
                if (!isfinite(v)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': codebook has non-finite values", name);
            }
        }
        snprintf(nm, sizeof nm, "%s.idx", name);
        const sbl_entry *ix = sbl_find(c, nm);
        int64_t n = ix->shape[0], rb = ix->shape[1];
        int64_t k = sj_get(q, "count")->i / n;
        int64_t kp = (k + 7) / 8 * 8;
        if (kp == k || n == 0) continue;
        int64_t nfull = kp / SUBBIT_BLOCK, tail = kp % SUBBIT_BLOCK;
        int64_t blk = tail ? nfull : nfull - 1;
        int len = tail ? (int)tail : SUBBIT_BLOCK;
        int64_t first = k - blk * SUBBIT_BLOCK;
        uint8_t idx[SUBBIT_BLOCK];
        for (int64_t r = 0; r < n; r++) {
            subbit_decode_block(c->data + ix->begin + (uint64_t)(r * rb + blk * 4 * bits), bits, len, idx);
            for (int j = (int)first; j < len; j++)
                if (idx[j]) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': non-zero padding indices", name);
        }
    }
    for (size_t i = 0; i < fs->len; i++) {
        const sbl_entry *en = sbl_find(c, fs->keys[i]);
        for (uint64_t o = en->begin; o < en->end; o += (uint64_t)DT_SIZE[en->dtype]) {
            if (en->dtype == DT_F32) {
                float v;
                memcpy(&v, c->data + o, 4);
                if (!isfinite(v)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': non-finite values", en->name);
            } else if (en->dtype == DT_F16) {
                uint16_t h;
                memcpy(&h, c->data + o, 2);
                if (((h >> 10) & 31) == 31) return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': non-finite values", en->name);
            } else if (en->dtype == DT_BOOL && c->data[o] > 1) {
                return sbl_fail(e, SUBBIT_ERR_FORMAT, "tensor '%.80s': BOOL values other than 0/1", en->name);
            }
        }
    }
    return 0;
}

/* -- the whole read -------------------------------------------------------------------------- */
static int parse(const source *s, sbl_container *c, sbl_err *e) {
    memset(c, 0, sizeof *c);
    if (s->size < 8) return sbl_fail(e, SUBBIT_ERR_FORMAT, "file is %llu bytes: too short for a safetensors header", (unsigned long long)s->size);
    uint8_t lb[8];
    if (src_read(s, 0, 8, lb, e)) return e->code;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | lb[i];
    if (hlen > SBL_MAX_HEADER || hlen > s->size - 8)
        return sbl_fail(e, SUBBIT_ERR_FORMAT, "header length %llu exceeds the file (%llu bytes) or the %llu-byte limit: truncated or not .subbit",
                        (unsigned long long)hlen, (unsigned long long)s->size, (unsigned long long)SBL_MAX_HEADER);
    uint8_t *head = (uint8_t *)malloc((size_t)hlen + 8 + 1);
    if (!head) return sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory for a %llu-byte header", (unsigned long long)hlen);
    int rc = 0;
    sj_doc *hdoc = NULL;
    memcpy(head, lb, 8);
    if ((rc = src_read(s, 8, hlen, head + 8, e))) goto out;
    /* header_sha256 (format 1.2), checked before the JSON is parsed */
    const size_t pl = sizeof HEADER_PREFIX - 1;
    int has_digest = hlen >= pl && !memcmp(head + 8, HEADER_PREFIX, pl);
    if (has_digest) {
        size_t start = 8 + pl;
        if (hlen + 8 < start + 65 || !hex64((const char *)head + start, 64) || head[start + 64] != '"') {
            rc = sbl_fail(e, SUBBIT_ERR_INTEGRITY, "__metadata__.header_sha256: expected 64 lowercase hex digits");
            goto out;
        }
        char want[65], got[65];
        memcpy(want, head + start, 64);
        want[64] = 0;
        memset(head + start, '0', 64);
        sbl_sha256_hex(head, (size_t)hlen + 8, got);
        memcpy(head + start, want, 64);
        if (memcmp(want, got, 64)) {
            rc = sbl_fail(e, SUBBIT_ERR_INTEGRITY, "__metadata__.header_sha256 does not match the header: manifest or tensor table corrupted or tampered");
            goto out;
        }
    }
    char jerr[160] = "";
    hdoc = sj_parse((const char *)head + 8, (size_t)hlen, SBL_MAX_JSON_NODES, jerr, sizeof jerr);
    if (!hdoc) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "header is not valid JSON: %s", jerr); goto out; }
    const sj_node *header = sj_root(hdoc);
    if (header->type != SJ_OBJECT) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "header is not a JSON object"); goto out; }
    const sj_node *meta = sj_get(header, "__metadata__");
    const sj_node *man = meta ? sj_get(meta, "subbit") : NULL;
    if (!meta || meta->type != SJ_OBJECT || !man || man->type != SJ_STRING) {
        rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "header has no __metadata__['subbit'] manifest: not a .subbit file");
        goto out;
    }
    if (!has_digest && sj_get(meta, "header_sha256")) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "__metadata__.header_sha256 must open the header"); goto out; }
    for (size_t i = 0; i < meta->len; i++)
        if (strcmp(meta->keys[i], "subbit") && strcmp(meta->keys[i], "header_sha256")) {
            rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "__metadata__: unknown field '%.40s'", meta->keys[i]);
            goto out;
        }
    uint64_t data_len = s->size - 8 - hlen;
    if ((rc = check_entries(header, data_len, c, e))) goto out;
    c->manifest_doc = sj_parse(man->s, man->len, SBL_MAX_JSON_NODES, jerr, sizeof jerr);
    if (!c->manifest_doc) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest is not valid JSON: %s", jerr); goto out; }
    c->manifest = sj_root(c->manifest_doc);
    if ((rc = validate_manifest(c->manifest, c, e))) goto out;
    if (!has_digest && c->minor >= SBL_DIGEST_MINOR) {
        rc = sbl_fail(e, SUBBIT_ERR_INTEGRITY, "format %d.%d file without __metadata__.header_sha256 (stripped or corrupted header)", SBL_SCHEMA_VERSION, c->minor);
        goto out;
    }
    c->data_len = data_len;
    /* 2 MiB aligned and advised for huge pages, as the Python runtime places large weights: a
     * streaming step reads every weight once per frame, and 4 KiB pages cost a TLB miss and a
     * prefetcher stop per page */
    size_t huge = 2u << 20, bytes = (size_t)((data_len + 64 + huge - 1) / huge * huge);
    c->data = (uint8_t *)aligned_alloc(data_len >= huge ? huge : 64, bytes);
#ifdef MADV_HUGEPAGE
    if (c->data && data_len >= huge) madvise(c->data, bytes, MADV_HUGEPAGE);
#endif
    if (!c->data) { rc = sbl_fail(e, SUBBIT_ERR_NOMEM, "out of memory for the %llu-byte data section", (unsigned long long)data_len); goto out; }
    if ((rc = src_read(s, 8 + hlen, data_len, c->data, e))) goto out;
    char dh[65];
    sbl_sha256_hex(c->data, (size_t)data_len, dh);
    if (memcmp(dh, sj_get(c->manifest, "data_sha256")->s, 64)) {
        rc = sbl_fail(e, SUBBIT_ERR_INTEGRITY, "data section sha256 does not match the manifest: file corrupted or tampered");
        goto out;
    }
    rc = check_payload(c, e);
out:
    free(head);
    sj_free(hdoc);
    if (rc) sbl_container_free(c);
    return rc;
}

int sbl_container_read_memory(const uint8_t *buf, size_t size, sbl_container *c, sbl_err *e) {
    source s = {-1, buf, size};
    if (size > SBL_MAX_FILE) return sbl_fail(e, SUBBIT_ERR_LIMIT, "%zu bytes, over the %llu-byte limit of a .subbit file", size, (unsigned long long)SBL_MAX_FILE);
    return parse(&s, c, e);
}

static const char *kind_of(mode_t m) {
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    return "not a regular file";
}

int sbl_container_read_file(const char *path, sbl_container *c, sbl_err *e) {
    struct stat st;
    memset(c, 0, sizeof *c);
    if (stat(path, &st)) return sbl_fail(e, SUBBIT_ERR_IO, "%.200s: cannot read: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return sbl_fail(e, SUBBIT_ERR_IO, "%.200s: %s, not a regular .subbit file", path, kind_of(st.st_mode));
    if ((uint64_t)st.st_size > SBL_MAX_FILE) return sbl_fail(e, SUBBIT_ERR_LIMIT, "%.200s: over the %llu-byte limit of a .subbit file", path, (unsigned long long)SBL_MAX_FILE);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return sbl_fail(e, SUBBIT_ERR_IO, "%.200s: cannot read: %s", path, strerror(errno));
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return sbl_fail(e, SUBBIT_ERR_IO, "%.200s: not a regular .subbit file", path);
    }
    source s = {fd, NULL, (uint64_t)st.st_size};
    int rc = parse(&s, c, e);
    close(fd);
    if (rc) {
        char tmp[sizeof e->msg];
        snprintf(tmp, sizeof tmp, "%.100s: %.200s", path, e->msg);
        memcpy(e->msg, tmp, sizeof tmp);
    }
    return rc;
}

void sbl_container_free(sbl_container *c) {
    if (c->entries)
        for (size_t i = 0; i < c->n_entries; i++) free(c->entries[i].name);
    free(c->entries);
    sj_free(c->manifest_doc);
    free(c->data);
    memset(c, 0, sizeof *c);
}
