/* The tensor table of a .subbit header (subbit.export.framing): dtype, shape, offsets inside the
 * data section, contiguity; and the lookup of an entry by name. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "container.h"
#include "internal.h"

const char *const sbl_dt_names[DT_COUNT] = {"F32", "F16", "U8", "I64", "I32", "BOOL"};
const int sbl_dt_size[DT_COUNT] = {4, 2, 1, 8, 4, 1};

int sbl_dtype_of(const sj_node *n) {
    if (!n || n->type != SJ_STRING) return -1;
    for (int i = 0; i < DT_COUNT; i++)
        if (strlen(sbl_dt_names[i]) == n->len && !memcmp(sbl_dt_names[i], n->s, n->len)) return i;
    return -1;
}

int sbl_read_shape(const sj_node *n, int64_t *shape, int *ndim) {
    if (!n || n->type != SJ_ARRAY || n->len > 8) return -1;
    for (size_t i = 0; i < n->len; i++) {
        const sj_node *d = &n->items[i];
        if (!is_int(d) || d->i < 0 || (uint64_t)d->i > SBL_MAX_DIM) return -1;
        shape[i] = d->i;
    }
    *ndim = (int)n->len;
    return 0;
}

uint64_t sbl_shape_bytes(const int64_t *shape, int ndim, uint64_t item, uint64_t limit) {
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

int sbl_check_entries(const sj_node *header, uint64_t data_len, sbl_container *c, sbl_err *e) {
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
        en->dtype = sbl_dtype_of(dt);
        if (en->dtype < 0) return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': unsupported dtype", name);
        if (sbl_read_shape(sh, en->shape, &en->ndim)) return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': bad shape", name);
        if (of->type != SJ_ARRAY || of->len != 2 || !is_int(&of->items[0]) || !is_int(&of->items[1]))
            return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': bad data_offsets", name);
        int64_t b = of->items[0].i, en_ = of->items[1].i;
        if (b < 0 || b > en_ || (uint64_t)en_ > data_len)
            return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': data_offsets [%lld, %lld] outside the data section (%llu bytes)",
                            name, (long long)b, (long long)en_, (unsigned long long)data_len);
        uint64_t want = sbl_shape_bytes(en->shape, en->ndim, (uint64_t)sbl_dt_size[en->dtype], data_len);
        if (want != (uint64_t)(en_ - b))
            return sbl_fail(e, SUBBIT_ERR_FORMAT, "header tensor '%.80s': %lld bytes do not hold %s of its shape", name,
                            (long long)(en_ - b), sbl_dt_names[en->dtype]);
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
