/* The public entry points of include/subbit.h that are not per session: load, info, names. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../../src/subbit/runtime/csrc/subbit_kernels.h"
#include "internal.h"

const char *subbit_status_name(int status) {
    static const char *const names[] = {"SUBBIT_SUCCESS", "SUBBIT_ERR_ARGUMENT", "SUBBIT_ERR_IO", "SUBBIT_ERR_FORMAT",
                                        "SUBBIT_ERR_VERSION", "SUBBIT_ERR_INTEGRITY", "SUBBIT_ERR_LIMIT",
                                        "SUBBIT_ERR_UNSUPPORTED", "SUBBIT_ERR_NOMEM", "SUBBIT_ERR_STATE",
                                        "SUBBIT_ERR_INTERNAL"};
    return status >= 0 && status <= 10 ? names[status] : "SUBBIT_UNKNOWN_STATUS";
}

int subbit_abi_version(void) { return SUBBIT_ABI_VERSION; }

/* SUBBIT_KERNEL as the Python runtime reads it; "ref" (NumPy there) maps to portable C here */
static int kernel_path(sbl_err *e) {
    const char *v = getenv("SUBBIT_KERNEL");
    int mask = subbit_supported_paths();
    if (!v || !*v) return subbit_best_path();
    int p = -1;
    if (!strcasecmp(v, "portable") || !strcasecmp(v, "c") || !strcasecmp(v, "ref")) p = SUBBIT_PORTABLE;
    else if (!strcasecmp(v, "avx2")) p = SUBBIT_AVX2;
    else if (!strcasecmp(v, "avx512")) p = SUBBIT_AVX512;
    if (p < 0) return -sbl_fail(e, SUBBIT_ERR_ARGUMENT, "SUBBIT_KERNEL must be portable, avx2 or avx512, got '%.20s'", v);
    if (!(mask & (1 << p))) return -sbl_fail(e, SUBBIT_ERR_UNSUPPORTED, "SUBBIT_KERNEL=%.20s is not supported by this CPU", v);
    return p;
}

static int finish_load(subbit_model *m, sbl_err *e) {
    int p = kernel_path(e);
    if (p < 0) return e->code;
    m->path = p;
    if (sbl_build_model(m, e)) return e->code;
    if (sbl_frontend_init(&m->fe, m->file.manifest, m->n_mels, e)) return e->code;
    if (m->fe.sample_rate <= 0) return sbl_fail(e, SUBBIT_ERR_FORMAT, "bad sample rate");
    const sj_node *tok = sj_get(m->file.manifest, "tokenizer");
    if (tok && tok->type == SJ_OBJECT) {
        const sbl_entry *en = sbl_find(&m->file, "__tokenizer__");
        if (en && en->end > en->begin && sbl_tokenizer_init(&m->tok, m->file.data + en->begin, (size_t)(en->end - en->begin), e))
            return e->code;
    }
    return 0;
}

static int load(const char *path, const void *data, size_t size, subbit_model **out, char *err, size_t errlen) {
    sbl_err e = {0, ""};
    if (!out) return SUBBIT_ERR_ARGUMENT;
    *out = NULL;
    if (!path && !data) {
        if (err && errlen) snprintf(err, errlen, "path / data is NULL");
        return SUBBIT_ERR_ARGUMENT;
    }
    subbit_model *m = (subbit_model *)calloc(1, sizeof *m);
    if (!m) {
        if (err && errlen) snprintf(err, errlen, "out of memory");
        return SUBBIT_ERR_NOMEM;
    }
    int rc = path ? sbl_container_read_file(path, &m->file, &e) : sbl_container_read_memory((const uint8_t *)data, size, &m->file, &e);
    if (!rc) rc = finish_load(m, &e);
    if (rc) {
        if (err && errlen) snprintf(err, errlen, "%s", e.msg);
        subbit_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int subbit_model_load_file(const char *path, subbit_model **out, char *err, size_t errlen) {
    if (!path) {
        if (out) *out = NULL;
        if (err && errlen) snprintf(err, errlen, "path is NULL");
        return SUBBIT_ERR_ARGUMENT;
    }
    return load(path, NULL, 0, out, err, errlen);
}

int subbit_model_load_memory(const void *data, size_t size, subbit_model **out, char *err, size_t errlen) {
    if (!data) {
        if (out) *out = NULL;
        if (err && errlen) snprintf(err, errlen, "data is NULL");
        return SUBBIT_ERR_ARGUMENT;
    }
    return load(NULL, data, size, out, err, errlen);
}

void subbit_model_free(subbit_model *m) {
    if (!m) return;
    sbl_free_model_parts(m);
    sbl_container_free(&m->file);
    free(m);
}

int subbit_model_get_info(const subbit_model *m, subbit_model_info *info) {
    if (!m || !info) return SUBBIT_ERR_ARGUMENT;
    info->arch = m->conformer ? "conformer" : m->enc.small ? "bifocal" : "rnnt";
    info->sample_rate = m->fe.sample_rate;
    info->n_mels = m->n_mels;
    info->vocab_size = m->vocab_size;
    info->blank = m->blank;
    info->chunk_samples = (m->conformer ? m->conf.chunk_frames : m->enc.chunk_frames) * m->fe.hop;
    info->kernel_path = m->path;
    uint64_t fe = (uint64_t)m->fe.n_fft * 4;
    info->weight_bytes = m->weight_bytes + fe;
    return 0;
}

int subbit_model_detokenize(const subbit_model *m, const int32_t *ids, size_t n, char *out, size_t outlen, size_t *needed) {
    if (!m || (!ids && n) || (!out && outlen)) return SUBBIT_ERR_ARGUMENT;
    char *t = sbl_tokenizer_decode(&m->tok, ids, n);
    if (!t) return SUBBIT_ERR_NOMEM;
    size_t len = strlen(t) + 1;
    if (needed) *needed = len;
    int rc = len <= outlen ? 0 : SUBBIT_ERR_ARGUMENT;
    if (outlen) {
        size_t k = len <= outlen ? len : outlen;
        memcpy(out, t, k);
        out[k - 1] = 0;
    }
    free(t);
    return rc;
}
