/* The access log: one JSON object per line per request, written with a single
 * write(2) so lines from different workers never interleave. Never holds key
 * material or prompt text. */
#ifndef LLMGATE_GATEWAY_ACCESSLOG_H
#define LLMGATE_GATEWAY_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct accesslog_entry {
    uint64_t ts_ms; /* wall clock at completion */
    const char *request_id;
    const char *method;
    const char *path;
    int status;
    const char *model;    /* asked for; may be NULL */
    const char *provider; /* served by; may be NULL */
    bool stream;
    size_t bytes_in, bytes_out;
    double total_ms;
    double upstream_ms; /* 0 when no upstream was used */
    const char *error;  /* short reason code; may be NULL */
};

/* Opens the destination: "stderr", "stdout", "off" or a file path (appended).
 * 0 on success, -1 with err filled. */
int accesslog_open(const char *dest, char *err, size_t errlen);
/* Reopens a file destination (SIGHUP / log rotation); no-op for streams. */
void accesslog_reopen(void);
/* Writes one line; thread-safe. */
void accesslog_write(const struct accesslog_entry *e);
void accesslog_close(void);

#endif
