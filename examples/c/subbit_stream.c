/* subbit-stream: transcribe a 16-bit PCM WAV file with libsubbit, streaming it in chunks.
 *
 *   subbit-stream [--chunk SAMPLES] [--repeats N] [--warmup N] [--wake-end SECONDS] [--threads N]
 *                 [--timings] [--json] MODEL.subbit AUDIO.wav
 *
 * --threads: worker threads for the session's matmuls (subbit_session_set_threads; default 1).
 *
 * --wake-end (Bifocal models): a keyword spotter's wake-word end in seconds from the start of the
 * file; the frames inside it run on the small pathway (subbit_session_set_wake_end).
 *
 * Prints the partial transcript after every chunk with --timings (with the chunk's time), and
 * the final transcript as the last line. --json prints one JSON object instead (per-chunk
 * milliseconds, p50/p90, peak RSS) for benchmarks/libsubbit_latency.py; --warmup passes are not timed.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "subbit.h"

static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* mono 16-bit PCM samples of a RIFF/WAVE file; NULL with a message on anything else */
static int16_t *read_wav(const char *path, size_t *n, int *rate) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "subbit-stream: cannot open %s\n", path); return NULL; }
    uint8_t h[12], ch[8];
    int16_t *pcm = NULL;
    int fmt_ok = 0;
    if (fread(h, 1, 12, f) != 12 || memcmp(h, "RIFF", 4) || memcmp(h + 8, "WAVE", 4)) {
        fprintf(stderr, "subbit-stream: %s is not a RIFF/WAVE file\n", path);
        goto done;
    }
    while (fread(ch, 1, 8, f) == 8) {
        uint32_t len = le32(ch + 4);
        if (!memcmp(ch, "fmt ", 4)) {
            uint8_t fm[40];
            if (len < 16 || len > sizeof fm || fread(fm, 1, len, f) != len) break;
            if (le16(fm) != 1 || le16(fm + 2) != 1 || le16(fm + 14) != 16) {
                fprintf(stderr, "subbit-stream: %s: need mono 16-bit PCM\n", path);
                goto done;
            }
            *rate = (int)le32(fm + 4);
            fmt_ok = 1;
            if (len & 1) fseek(f, 1, SEEK_CUR);
        } else if (!memcmp(ch, "data", 4)) {
            if (!fmt_ok) break;
            *n = len / 2;
            pcm = (int16_t *)malloc(*n * 2 + 2);
            if (!pcm || fread(pcm, 2, *n, f) != *n) { /* little-endian hosts only */
                fprintf(stderr, "subbit-stream: %s: truncated data chunk\n", path);
                free(pcm);
                pcm = NULL;
            }
            goto done;
        } else if (fseek(f, (long)len + (len & 1), SEEK_CUR)) {
            break;
        }
    }
    fprintf(stderr, "subbit-stream: %s: no fmt/data chunk\n", path);
done:
    fclose(f);
    return pcm;
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* peak resident memory of this process image: VmHWM (Linux), else ru_maxrss. ru_maxrss alone
 * would report a parent's peak, since Linux keeps it across fork + exec. */
static long long peak_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = atoll(line + 6);
    if (f) fclose(f);
    if (kb < 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        kb = ru.ru_maxrss;
    }
    return kb * 1024;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* numpy.percentile (linear interpolation) of sorted v */
static double pct(const double *v, size_t n, double q) {
    if (!n) return 0;
    double pos = q / 100.0 * (double)(n - 1);
    size_t i = (size_t)pos;
    double fr = pos - (double)i;
    return i + 1 < n ? v[i] + (v[i + 1] - v[i]) * fr : v[i];
}

/* a fresh utterance; with a wake-word end (seconds, not NaN) as the Python session rounds it */
static int start(subbit_session *s, double wake_end, int rate) {
    int rc = subbit_session_reset(s);
    double at = nearbyint(wake_end * rate); /* clamped: a cast out of int64's range is undefined */
    at = at > 4e18 ? 4e18 : at < -4e18 ? -4e18 : at;
    if (!rc && !isnan(wake_end)) rc = subbit_session_set_wake_end(s, (int64_t)at);
    if (rc) fprintf(stderr, "subbit-stream: %s: %s\n", subbit_status_name(rc), subbit_session_error(s));
    return rc;
}

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

int main(int argc, char **argv) {
    long chunk = 0, repeats = 1, warmup = 0, threads = 1;
    int timings = 0, json = 0;
    double wake_end = NAN; /* seconds; NaN: none */
    const char *model_path = NULL, *wav_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--chunk") && i + 1 < argc) chunk = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--wake-end") && i + 1 < argc) {
            char *end;
            wake_end = strtod(argv[++i], &end);
            if (*end || !isfinite(wake_end)) model_path = NULL, i = argc;
        }
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--timings")) timings = 1;
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!model_path) model_path = argv[i];
        else if (!wav_path) wav_path = argv[i];
        else model_path = NULL, i = argc;
    }
    if (!model_path || !wav_path || repeats < 1 || chunk < 0 || warmup < 0 || threads < 1 || threads > SUBBIT_MAX_THREADS) {
        fprintf(stderr, "usage: subbit-stream [--chunk SAMPLES] [--repeats N] [--warmup N] [--wake-end SECONDS] [--threads 1..%d] "
                        "[--timings] [--json] ", SUBBIT_MAX_THREADS);
        fprintf(stderr, "MODEL.subbit AUDIO.wav\n");
        return 2;
    }
    char err[512];
    double t0 = now_ms();
    subbit_model *m;
    int rc = subbit_model_load_file(model_path, &m, err, sizeof err);
    if (rc) {
        fprintf(stderr, "subbit-stream: %s: %s\n", subbit_status_name(rc), err);
        return 1;
    }
    double load_ms = now_ms() - t0;
    subbit_model_info info;
    subbit_model_get_info(m, &info);
    size_t n = 0;
    int rate = 0;
    int16_t *pcm = read_wav(wav_path, &n, &rate);
    if (!pcm) return 1;
    if (rate != info.sample_rate) {
        fprintf(stderr, "subbit-stream: %s is %d Hz, the model expects %d Hz\n", wav_path, rate, info.sample_rate);
        return 1;
    }
    if (!chunk) chunk = info.chunk_samples;
    subbit_session *s;
    if ((rc = subbit_session_create(m, &s, err, sizeof err))) {
        fprintf(stderr, "subbit-stream: %s: %s\n", subbit_status_name(rc), err);
        return 1;
    }
    if ((rc = subbit_session_set_threads(s, (int)threads))) {
        fprintf(stderr, "subbit-stream: %s: %s\n", subbit_status_name(rc), subbit_session_error(s));
        return 1;
    }
    size_t n_chunks = (n + (size_t)chunk - 1) / (size_t)chunk;
    double *ms = (double *)malloc(sizeof(double) * (n_chunks * (size_t)repeats + 1));
    double *upl = (double *)malloc(sizeof(double) * (size_t)repeats);
    if (!ms || !upl) return 1;
    for (long r = 0; r < warmup; r++) {
        if (start(s, wake_end, info.sample_rate)) return 1;
        for (size_t off = 0; off < n; off += (size_t)chunk)
            if ((rc = subbit_session_accept_int16(s, pcm + off, n - off < (size_t)chunk ? n - off : (size_t)chunk))) {
                fprintf(stderr, "subbit-stream: %s: %s\n", subbit_status_name(rc), subbit_session_error(s));
                return 1;
            }
    }
    size_t k = 0;
    for (long r = 0; r < repeats; r++) {
        if (start(s, wake_end, info.sample_rate)) return 1;
        double last = 0;
        for (size_t off = 0; off < n; off += (size_t)chunk) {
            size_t len = n - off < (size_t)chunk ? n - off : (size_t)chunk;
            double a = now_ms();
            rc = subbit_session_accept_int16(s, pcm + off, len);
            last = ms[k++] = now_ms() - a;
            if (rc) {
                fprintf(stderr, "subbit-stream: %s: %s\n", subbit_status_name(rc), subbit_session_error(s));
                return 1;
            }
            if (timings && !json && r == repeats - 1) printf("chunk %zu %.3f ms: %s\n", off / (size_t)chunk, last, subbit_session_text(s));
        }
        double a = now_ms();
        subbit_session_finalize(s);
        upl[r] = last + now_ms() - a;
    }
    const char *text = subbit_session_text(s);
    const int32_t *ids;
    size_t n_tok = subbit_session_tokens(s, &ids);
    long long peak = peak_rss_bytes();
    qsort(ms, k, sizeof(double), cmp_d);
    qsort(upl, (size_t)repeats, sizeof(double), cmp_d);
    if (json) {
        printf("{\"p50_ms\": %.6f, \"p90_ms\": %.6f, \"upl_ms\": %.6f, \"n_chunks\": %zu, \"chunk_samples\": %ld, "
               "\"tokens\": %zu, \"peak_rss_bytes\": %lld, \"weight_bytes\": %llu, \"kernel_path\": %d, \"threads\": %ld, \"load_ms\": %.3f, \"text\": ",
               pct(ms, k, 50), pct(ms, k, 90), pct(upl, (size_t)repeats, 50), n_chunks, chunk, n_tok,
               peak, (unsigned long long)info.weight_bytes, info.kernel_path, threads, load_ms);
        json_str(text ? text : "");
        printf("}\n");
    } else {
        if (timings)
            printf("chunks %zu x %ld samples: p50 %.3f ms, p90 %.3f ms, peak RSS %.1f MB\n", k, chunk, pct(ms, k, 50), pct(ms, k, 90),
                   (double)peak / 1048576.0);
        printf("%s\n", text ? text : "");
    }
    subbit_session_free(s);
    subbit_model_free(m);
    free(pcm);
    free(ms);
    free(upl);
    return 0;
}
