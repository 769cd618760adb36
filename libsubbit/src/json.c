/* Two passes over the text: the first validates and counts nodes and string bytes, the second
 * fills one allocation. Both are recursive descent bounded by SJ_MAX_DEPTH. */
#include "json.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sj_doc {
    sj_node root;
    void *mem;
};

typedef struct {
    const unsigned char *p, *end;
    int fill;                 /* 0: counting pass, 1: filling pass */
    size_t nodes, strbytes, members, max_nodes;
    sj_node *node_pool;       /* fill pass: next free node */
    char *str_pool;
    const char **key_pool;
    size_t *keylen_pool;
    char *err;
    size_t errlen;
} sj_ctx;

static int fail(sj_ctx *c, const char *fmt, ...) {
    if (c->err && c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static void ws(sj_ctx *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int read_u4(sj_ctx *c, unsigned *out) {
    if (c->end - c->p < 4) return fail(c, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(c->p[i]);
        if (h < 0) return fail(c, "bad \\u escape");
        v = v * 16 + (unsigned)h;
    }
    c->p += 4;
    *out = v;
    return 0;
}

/* Length of a valid UTF-8 sequence at p (no overlongs, no surrogates, <= U+10FFFF), or 0. */
static int utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned b = p[0];
    int n;
    unsigned cp;
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) n = 2, cp = b & 0x1F;
    else if (b >= 0xE0 && b <= 0xEF) n = 3, cp = b & 0x0F;
    else if (b >= 0xF0 && b <= 0xF4) n = 4, cp = b & 0x07;
    else return 0;
    if (end - p < n) return 0;
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static size_t put_utf8(char *out, unsigned cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A string at c->p (after the quote). Counting pass: adds its decoded size + 1 to strbytes.
 * Fill pass: writes it to str_pool and returns it in *s, *len. */
static int string(sj_ctx *c, const char **s, size_t *len) {
    char *out = c->fill ? c->str_pool : NULL;
    size_t n = 0;
    for (;;) {
        if (c->p >= c->end) return fail(c, "unterminated string");
        unsigned ch = *c->p;
        if (ch == '"') { c->p++; break; }
        if (ch < 0x20) return fail(c, "control character in string");
        if (ch == '\\') {
            if (c->end - c->p < 2) return fail(c, "unterminated string");
            unsigned e = c->p[1];
            c->p += 2;
            char simple = 0;
            switch (e) {
            case '"': simple = '"'; break;
            case '\\': simple = '\\'; break;
            case '/': simple = '/'; break;
            case 'b': simple = '\b'; break;
            case 'f': simple = '\f'; break;
            case 'n': simple = '\n'; break;
            case 'r': simple = '\r'; break;
            case 't': simple = '\t'; break;
            case 'u': break;
            default: return fail(c, "bad escape in string");
            }
            if (e != 'u') {
                if (out) out[n] = simple;
                n++;
                continue;
            }
            unsigned cp;
            if (read_u4(c, &cp)) return -1;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(c, "lone surrogate in string");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (c->end - c->p < 2 || c->p[0] != '\\' || c->p[1] != 'u') return fail(c, "lone surrogate in string");
                c->p += 2;
                if (read_u4(c, &lo)) return -1;
                if (lo < 0xDC00 || lo > 0xDFFF) return fail(c, "lone surrogate in string");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            char tmp[4];
            size_t k = put_utf8(tmp, cp);
            if (out) memcpy(out + n, tmp, k);
            n += k;
            continue;
        }
        int k = utf8_len(c->p, c->end);
        if (!k) return fail(c, "invalid UTF-8 in string");
        if (out) memcpy(out + n, c->p, (size_t)k);
        n += (size_t)k;
        c->p += k;
    }
    if (out) {
        out[n] = 0;
        *s = out;
        *len = n;
        c->str_pool += n + 1;
    } else {
        c->strbytes += n + 1;
    }
    return 0;
}

static int number(sj_ctx *c, sj_node *node) {
    const unsigned char *start = c->p;
    int is_float = 0;
    if (c->p < c->end && *c->p == '-') c->p++;
    if (c->p >= c->end) return fail(c, "bad number");
    if (*c->p == '0') c->p++;
    else if (*c->p >= '1' && *c->p <= '9') while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    else return fail(c, "bad number");
    if (c->p < c->end && *c->p == '.') {
        is_float = 1;
        c->p++;
        if (c->p >= c->end || *c->p < '0' || *c->p > '9') return fail(c, "bad number");
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        is_float = 1;
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
        if (c->p >= c->end || *c->p < '0' || *c->p > '9') return fail(c, "bad number");
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    }
    if (!node) return 0;
    size_t n = (size_t)(c->p - start);
    char buf[512];
    if (n >= sizeof buf) {
        if (!is_float) { node->type = SJ_INT; node->big = 1; node->d = 0; node->i = *start == '-' ? INT64_MIN : INT64_MAX; return 0; }
        return fail(c, "number too long");
    }
    memcpy(buf, start, n);
    buf[n] = 0;
    node->d = strtod(buf, NULL); /* overflow gives +-inf, as Python's float() */
    if (is_float) { node->type = SJ_FLOAT; return 0; }
    node->type = SJ_INT;
    errno = 0;
    long long v = strtoll(buf, NULL, 10);
    node->big = errno == ERANGE;
    node->i = (int64_t)v;
    return 0;
}

static int value(sj_ctx *c, sj_node *node, int depth);

static int new_nodes(sj_ctx *c, size_t k) {
    c->nodes += k;
    if (c->nodes > c->max_nodes) return fail(c, "more than %zu JSON values", c->max_nodes);
    return 0;
}

static int container(sj_ctx *c, sj_node *node, int depth, int is_obj) {
    if (depth >= SJ_MAX_DEPTH) return fail(c, "nested deeper than %d", SJ_MAX_DEPTH);
    const unsigned char close = is_obj ? '}' : ']';
    c->p++;
    /* counting pass: count members first by a dry run; fill pass: the counts are recomputed the
     * same way (deterministic), so a second dry run sizes the contiguous item array */
    const unsigned char *save = c->p;
    size_t count = 0;
    if (c->fill) {
        sj_ctx dry = *c;
        dry.fill = 0;
        dry.err = NULL;
        dry.nodes = 0;
        dry.max_nodes = (size_t)-1;
        ws(&dry);
        if (dry.p < dry.end && *dry.p == close) count = 0;
        else for (;;) {
            ws(&dry);
            if (is_obj) {
                dry.p++;
                if (string(&dry, NULL, NULL)) return -1;
                ws(&dry);
                dry.p++;
            }
            if (value(&dry, NULL, depth + 1)) return -1;
            count++;
            ws(&dry);
            if (*dry.p == ',') { dry.p++; continue; }
            break;
        }
        node->type = is_obj ? SJ_OBJECT : SJ_ARRAY;
        node->len = count;
        node->items = c->node_pool;
        c->node_pool += count;
        if (is_obj) {
            node->keys = c->key_pool;
            node->keylens = c->keylen_pool;
            c->key_pool += count;
            c->keylen_pool += count;
        }
        c->p = save;
    }
    ws(c);
    if (c->p < c->end && *c->p == close) { c->p++; return 0; }
    size_t i = 0;
    for (;;) {
        ws(c);
        if (is_obj) {
            if (c->p >= c->end || *c->p != '"') return fail(c, "expected a string key");
            c->p++;
            const char *k = NULL;
            size_t kl = 0;
            if (string(c, &k, &kl)) return -1;
            if (c->fill) {
                for (size_t j = 0; j < i; j++)
                    if (node->keylens[j] == kl && !memcmp(node->keys[j], k, kl))
                        return fail(c, "duplicate key \"%.40s\"", k);
                node->keys[i] = k;
                node->keylens[i] = kl;
            }
            ws(c);
            if (c->p >= c->end || *c->p != ':') return fail(c, "expected ':'");
            c->p++;
        }
        if (!c->fill && new_nodes(c, 1)) return -1;
        if (!c->fill && is_obj) c->members++;
        if (value(c, c->fill ? &node->items[i] : NULL, depth + 1)) return -1;
        i++;
        ws(c);
        if (c->p < c->end && *c->p == ',') { c->p++; continue; }
        if (c->p < c->end && *c->p == close) { c->p++; return 0; }
        return fail(c, "expected ',' or '%c'", close);
    }
}

static int literal(sj_ctx *c, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n)) return fail(c, "unexpected character");
    c->p += n;
    return 0;
}

static int value(sj_ctx *c, sj_node *node, int depth) {
    sj_node dummy;
    sj_node *n = node ? node : &dummy;
    ws(c);
    if (c->p >= c->end) return fail(c, "unexpected end of JSON");
    memset(n, 0, sizeof(sj_node));
    switch (*c->p) {
    case '{': return container(c, n, depth, 1);
    case '[': return container(c, n, depth, 0);
    case '"': c->p++; n->type = SJ_STRING; return string(c, c->fill ? &n->s : NULL, c->fill ? &n->len : NULL);
    case 't': n->type = SJ_BOOL; n->i = 1; return literal(c, "true");
    case 'f': n->type = SJ_BOOL; n->i = 0; return literal(c, "false");
    case 'n': n->type = SJ_NULL; return literal(c, "null");
    default:
        if (*c->p == '-' || (*c->p >= '0' && *c->p <= '9')) return number(c, n);
        return fail(c, "unexpected character (NaN/Infinity are refused)");
    }
}

sj_doc *sj_parse(const char *text, size_t n, size_t max_nodes, char *err, size_t errlen) {
    sj_ctx c = {0};
    c.p = (const unsigned char *)text;
    c.end = c.p + n;
    c.max_nodes = max_nodes;
    c.err = err;
    c.errlen = errlen;
    if (new_nodes(&c, 1) || value(&c, NULL, 0)) return NULL;
    ws(&c);
    if (c.p != c.end) { fail(&c, "extra data after the JSON value"); return NULL; }
    size_t bytes = c.nodes * sizeof(sj_node) + c.members * (sizeof(char *) + sizeof(size_t)) + c.strbytes + 16;
    sj_doc *doc = (sj_doc *)calloc(1, sizeof(sj_doc));
    void *mem = doc ? calloc(1, bytes) : NULL;
    if (!mem) { free(doc); fail(&c, "out of memory for the JSON header"); return NULL; }
    doc->mem = mem;
    sj_ctx f = c;
    f.p = (const unsigned char *)text;
    f.fill = 1;
    f.node_pool = (sj_node *)mem;
    f.key_pool = (const char **)(f.node_pool + c.nodes);
    f.keylen_pool = (size_t *)(f.key_pool + c.members);
    f.str_pool = (char *)(f.keylen_pool + c.members);
    if (value(&f, &doc->root, 0)) { sj_free(doc); return NULL; }
    return doc;
}

const sj_node *sj_root(const sj_doc *doc) { return &doc->root; }

void sj_free(sj_doc *doc) {
    if (!doc) return;
    free(doc->mem);
    free(doc);
}

const sj_node *sj_get(const sj_node *obj, const char *key) {
    if (!obj || obj->type != SJ_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (size_t i = 0; i < obj->len; i++)
        if (obj->keylens[i] == kl && !memcmp(obj->keys[i], key, kl)) return &obj->items[i];
    return NULL;
}
