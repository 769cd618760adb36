/* A small strict JSON parser (RFC 8259, as Python's json.loads with NaN/Infinity refused) for
 * .subbit headers: input size, nesting depth and node count are bounded, strings must be valid
 * UTF-8 (no lone surrogates), duplicate object keys are refused. One allocation per document. */
#ifndef SBL_JSON_H
#define SBL_JSON_H
#include <stddef.h>
#include <stdint.h>

typedef enum { SJ_NULL, SJ_BOOL, SJ_INT, SJ_FLOAT, SJ_STRING, SJ_ARRAY, SJ_OBJECT } sj_type;

typedef struct sj_node {
    sj_type type;
    int big;          /* SJ_INT outside int64: the value is unusable (every limit refuses it) */
    int64_t i;        /* SJ_INT value, SJ_BOOL 0/1 */
    double d;         /* SJ_FLOAT value (also set for SJ_INT) */
    const char *s;    /* SJ_STRING: NUL-terminated UTF-8 (may hold NULs: use len) */
    size_t len;       /* string bytes, or number of items / members */
    struct sj_node *items;   /* SJ_ARRAY / SJ_OBJECT values, contiguous */
    const char **keys;       /* SJ_OBJECT keys */
    size_t *keylens;
} sj_node;

typedef struct sj_doc sj_doc;

#define SJ_MAX_DEPTH 64

/* Parse text[0..n); NULL on error with a message in err. */
sj_doc *sj_parse(const char *text, size_t n, size_t max_nodes, char *err, size_t errlen);
const sj_node *sj_root(const sj_doc *doc);
void sj_free(sj_doc *doc);
/* Member of an object (NULL if absent or not an object). */
const sj_node *sj_get(const sj_node *obj, const char *key);
#endif
