/* Read and validate a .subbit container, in the order of subbit.export.container._parse:
 * length bytes, header length, header_sha256 (before any JSON), JSON header, __metadata__,
 * tensor table (tensor_table.c: dtype, shape, offsets, contiguity), manifest (manifest.c:
 * validate_manifest), data section sha256, then the payload (payload.c: finite codebooks and
 * floats, zero padding indices, BOOL 0/1). This file frames the bytes (file or memory) and runs
 * those checks in order. Nothing is allocated from a field before that field is range-checked. */
#define _DEFAULT_SOURCE
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "container.h"
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
    if ((rc = sbl_check_entries(header, data_len, c, e))) goto out;
    c->manifest_doc = sj_parse(man->s, man->len, SBL_MAX_JSON_NODES, jerr, sizeof jerr);
    if (!c->manifest_doc) { rc = sbl_fail(e, SUBBIT_ERR_FORMAT, "manifest is not valid JSON: %s", jerr); goto out; }
    c->manifest = sj_root(c->manifest_doc);
    if ((rc = sbl_validate_manifest(c->manifest, c, e))) goto out;
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
    rc = sbl_check_payload(c, e);
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
