/* What the parts of the container reader share (container.c reads and frames the file; tensor_table.c,
 * manifest.c and payload.c check what it read), in the order of subbit.export.reader. */
#ifndef SBL_CONTAINER_H
#define SBL_CONTAINER_H

#include <stdint.h>
#include <string.h>

#include "internal.h"

extern const char *const sbl_dt_names[DT_COUNT];

static inline int is_int(const sj_node *n) { return n && n->type == SJ_INT && !n->big; }

static inline int str_is(const sj_node *n, const char *s) {
    return n && n->type == SJ_STRING && n->len == strlen(s) && !memcmp(n->s, s, n->len);
}

static inline int hex64(const char *s, size_t n) {
    if (n != 64) return 0;
    for (size_t i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

/* dtype index of a header dtype string, or -1 */
int sbl_dtype_of(const sj_node *n);
/* shape list: at most 8 ints in [0, 2**40]; 0 or -1 */
int sbl_read_shape(const sj_node *n, int64_t *shape, int *ndim);
/* product of dims times item, or UINT64_MAX when it exceeds limit */
uint64_t sbl_shape_bytes(const int64_t *shape, int ndim, uint64_t item, uint64_t limit);
/* the tensor table: every header key except __metadata__ (sorted by name into c->entries) */
int sbl_check_entries(const sj_node *header, uint64_t data_len, sbl_container *c, sbl_err *e);
/* subbit.export.manifest.validate_manifest, and the table against the manifest (sets c->minor) */
int sbl_validate_manifest(const sj_node *m, sbl_container *c, sbl_err *e);
/* finite codebooks and floats, zero padding indices, BOOL 0/1 */
int sbl_check_payload(sbl_container *c, sbl_err *e);

#endif
