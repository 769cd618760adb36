/* libsubbit: stream 16 kHz audio through a packed .subbit transducer, in C, without Python.
 *
 * One loaded model (read-only after load) is shared by any number of sessions; a session is
 * one utterance stream and must be used by one thread at a time. The library holds no global
 * mutable state. Every call returns a status code (subbit_status); load errors come back in a
 * caller buffer, session errors through subbit_session_error().
 *
 *   subbit_model *m; char err[256];
 *   if (subbit_model_load_file("model.subbit", &m, err, sizeof err)) { puts(err); return 1; }
 *   subbit_session *s; subbit_session_create(m, &s, err, sizeof err);
 *   subbit_session_accept_int16(s, pcm, n);         // any number of samples, any number of calls
 *   puts(subbit_session_text(s));                   // partial transcript
 *   subbit_session_finalize(s); puts(subbit_session_text(s));
 *   subbit_session_free(s); subbit_model_free(m);
 *
 * docs/c-api.md describes the API, the error codes, threading and the build.
 */
#ifndef SUBBIT_H
#define SUBBIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SUBBIT_API
#else
#define SUBBIT_API __attribute__((visibility("default")))
#endif

/* Bumped when a declaration below changes incompatibly. */
#define SUBBIT_ABI_VERSION 1

typedef enum {
    SUBBIT_SUCCESS = 0,
    SUBBIT_ERR_ARGUMENT = 1,    /* NULL pointer, bad size, non-finite sample, ... */
    SUBBIT_ERR_IO = 2,          /* the file cannot be opened or read, or is not a regular file */
    SUBBIT_ERR_FORMAT = 3,      /* not a .subbit file, bad JSON, inconsistent tensor table or manifest */
    SUBBIT_ERR_VERSION = 4,     /* a schema version this library does not know */
    SUBBIT_ERR_INTEGRITY = 5,   /* header_sha256 or data_sha256 does not match: corrupted or tampered */
    SUBBIT_ERR_LIMIT = 6,       /* a size, shape, bit width or config value outside the documented limits */
    SUBBIT_ERR_UNSUPPORTED = 7, /* a valid file this runtime cannot run (architecture, layout) */
    SUBBIT_ERR_NOMEM = 8,
    SUBBIT_ERR_STATE = 9,       /* call not allowed now (audio after finalize without reset) */
    SUBBIT_ERR_INTERNAL = 10    /* a kernel refused its arguments (a bug: please report) */
} subbit_status;

typedef struct subbit_model subbit_model;
typedef struct subbit_session subbit_session;

/* Facts about a loaded model (filled by subbit_model_get_info). */
typedef struct {
    const char *arch;      /* "rnnt", "conformer" or "bifocal" */
    int sample_rate;       /* Hz the frontend expects */
    int n_mels;
    int vocab_size;        /* joiner outputs, blank included */
    int blank;
    int chunk_samples;     /* samples per encoder chunk: the natural accept() size */
    int kernel_path;       /* 1 portable C, 2 AVX2, 3 AVX-512 (picked at load, per CPU) */
    uint64_t weight_bytes; /* resident bytes of packed indices, tables and float weights */
} subbit_model_info;

/* Short constant name of a status code ("SUBBIT_ERR_INTEGRITY"); never NULL. */
SUBBIT_API const char *subbit_status_name(int status);
SUBBIT_API int subbit_abi_version(void);

/* Load and fully validate a .subbit file (format 1.0-1.2). On failure *out is NULL and, when
 * err is not NULL, err holds a one-line message (truncated to errlen). The environment variable
 * SUBBIT_KERNEL=portable|avx2|avx512 forces a kernel path (refused when the CPU lacks it). */
SUBBIT_API int subbit_model_load_file(const char *path, subbit_model **out, char *err, size_t errlen);
/* The same from bytes in memory (copied: the caller may free data afterwards). */
SUBBIT_API int subbit_model_load_memory(const void *data, size_t size, subbit_model **out, char *err,
                                        size_t errlen);
/* Free a model; every session created from it must be freed first. NULL is ignored. */
SUBBIT_API void subbit_model_free(subbit_model *model);
SUBBIT_API int subbit_model_get_info(const subbit_model *model, subbit_model_info *info);
/* The tokenizer's id-to-text step on its own (what subbit_session_text does with the session's
 * ids): writes at most outlen bytes including the NUL; *needed (when not NULL) gets the full
 * length + 1. SUBBIT_ERR_ARGUMENT when out is too small (out then holds a truncated prefix). */
SUBBIT_API int subbit_model_detokenize(const subbit_model *model, const int32_t *ids, size_t n, char *out,
                                       size_t outlen, size_t *needed);

SUBBIT_API int subbit_session_create(const subbit_model *model, subbit_session **out, char *err, size_t errlen);
SUBBIT_API void subbit_session_free(subbit_session *session);
/* Forget the utterance (audio buffer, encoder and predictor state, tokens). */
SUBBIT_API int subbit_session_reset(subbit_session *session);

/* Append n mono samples at the model's sample rate: float in [-1, 1], or int16 (divided by
 * 32768). n may be 0. Non-finite float samples are refused (SUBBIT_ERR_ARGUMENT) and nothing
 * of that call is consumed. Decoding runs for every encoder frame the samples complete. */
SUBBIT_API int subbit_session_accept_float(subbit_session *session, const float *samples, size_t n);
SUBBIT_API int subbit_session_accept_int16(subbit_session *session, const int16_t *samples, size_t n);
/* End of utterance: decode what the encoder still holds. Further audio needs a reset. */
SUBBIT_API int subbit_session_finalize(subbit_session *session);

/* Worker threads for this session's matmuls, 1..SUBBIT_MAX_THREADS (1, the default: none).
 * Each large matmul's output rows are split into equal parts, one per thread, the calling
 * thread doing one; results are bit-identical for any count. The workers belong to the session
 * (freed with it), spin briefly after each matmul and then sleep. Calling it again replaces them.
 * Added in libsubbit 1 without an ABI change (check with dlsym when linking against an older
 * library is possible). */
#define SUBBIT_MAX_THREADS 16
SUBBIT_API int subbit_session_set_threads(subbit_session *session, int n);
/* The session's thread count (0 for NULL). */
SUBBIT_API int subbit_session_get_threads(const subbit_session *session);

/* Bifocal models (arch "bifocal") only: a keyword spotter's wake-word end, as a sample index
 * from the start of the utterance (since create or reset), at the model's sample rate. Feature
 * frames whose whole window [t * hop, t * hop + n_fft) ends by it run on the small pathway; a
 * stacked frame runs small only if all its frames do (docs/models.md, section 3b). 0 or less:
 * every frame large (the default; reset restores it). The Python runtime's
 * StreamingSession.set_wake_end(seconds) is sample = round(seconds * sample_rate), rounded half
 * to even. May be called at any time; it applies to the frames not yet encoded. Other models:
 * SUBBIT_ERR_UNSUPPORTED. Added in libsubbit 1 without an ABI change (check with dlsym when
 * linking against an older library is possible). */
SUBBIT_API int subbit_session_set_wake_end(subbit_session *session, int64_t sample);

/* Transcript so far (final after finalize), UTF-8, NUL-terminated; valid until the next call on
 * this session. Without a tokenizer in the file: token ids joined by spaces. NULL on no memory. */
SUBBIT_API const char *subbit_session_text(subbit_session *session);
/* Token ids decoded so far; *ids valid until the next accept/finalize/reset. Returns the count. */
SUBBIT_API size_t subbit_session_tokens(const subbit_session *session, const int32_t **ids);
/* Message of the last failed call on this session ("" when none). */
SUBBIT_API const char *subbit_session_error(const subbit_session *session);

/* Inspection hook: called with the joiner's vocab_size logits at every greedy decision (NULL
 * turns it off). For parity tests and debugging; it runs inside accept/finalize. */
typedef void (*subbit_logits_fn)(const float *logits, int vocab_size, void *user);
SUBBIT_API int subbit_session_set_logits_callback(subbit_session *session, subbit_logits_fn fn, void *user);

#ifdef __cplusplus
}
#endif
#endif
