/* JSON-lines access log shared by all workers. */
#include "gateway/accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"

static _Atomic int log_fd = -1;
static char *log_path; /* set when the destination is a file */
static pthread_mutex_t reopen_mu = PTHREAD_MUTEX_INITIALIZER;

int accesslog_open(const char *dest, char *err, size_t errlen)
{
    int fd;
    if (strcmp(dest, "off") == 0)
        fd = -1;
    else if (strcmp(dest, "stderr") == 0)
        fd = STDERR_FILENO;
    else if (strcmp(dest, "stdout") == 0)
        fd = STDOUT_FILENO;
    else {
        fd = open(dest, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd < 0) {
            snprintf(err, errlen, "%s: cannot open access log: %s", dest, strerror(errno));
            return -1;
        }
        free(log_path);
        log_path = strdup(dest);
    }
    atomic_store(&log_fd, fd);
    return 0;
}

void accesslog_reopen(void)
{
    pthread_mutex_lock(&reopen_mu);
    if (log_path) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd >= 0) {
            int old = atomic_exchange(&log_fd, fd);
            if (old > STDERR_FILENO) close(old);
        }
    }
    pthread_mutex_unlock(&reopen_mu);
}

void accesslog_close(void)
{
    int old = atomic_exchange(&log_fd, -1);
    if (old > STDERR_FILENO) close(old);
    free(log_path);
    log_path = NULL;
}

/* Appends s as a JSON string; s comes from config or validated input, but
 * escape anyway so a line is always one valid JSON object. */
static size_t put_str(char *buf, size_t pos, size_t cap, const char *s)
{
    if (!s) {
        if (pos + 4 < cap) memcpy(buf + pos, "null", 4), pos += 4;
        return pos;
    }
    if (pos < cap) buf[pos++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p && pos + 7 < cap; p++) {
        if (*p == '"' || *p == '\\') {
            buf[pos++] = '\\';
            buf[pos++] = (char)*p;
        } else if (*p < 0x20) {
            pos += (size_t)snprintf(buf + pos, cap - pos, "\\u%04x", *p);
        } else {
            buf[pos++] = (char)*p;
        }
    }
    if (pos < cap) buf[pos++] = '"';
    return pos;
}

void accesslog_write(const struct accesslog_entry *e)
{
    int fd = atomic_load(&log_fd);
    if (fd < 0) return;
    char buf[1536];
    size_t cap = sizeof buf - 2, pos = 0;
    time_t secs = (time_t)(e->ts_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    pos += (size_t)snprintf(
        buf, cap, "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03uZ\",\"id\":", tm.tm_year + 1900,
        tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(e->ts_ms % 1000));
    pos = put_str(buf, pos, cap, e->request_id);
    pos += (size_t)snprintf(buf + pos, cap - pos, ",\"method\":");
    pos = put_str(buf, pos, cap, e->method);
    pos += (size_t)snprintf(buf + pos, cap - pos, ",\"path\":");
    pos = put_str(buf, pos, cap, e->path);
    pos += (size_t)snprintf(buf + pos, cap - pos, ",\"status\":%d,\"model\":", e->status);
    pos = put_str(buf, pos, cap, e->model);
    pos += (size_t)snprintf(buf + pos, cap - pos, ",\"provider\":");
    pos = put_str(buf, pos, cap, e->provider);
    pos += (size_t)snprintf(buf + pos, cap - pos,
                            ",\"stream\":%s,\"bytes_in\":%zu,\"bytes_out\":%zu,\"total_ms\":%.3f,"
                            "\"upstream_ms\":%.3f,\"error\":",
                            e->stream ? "true" : "false", e->bytes_in, e->bytes_out, e->total_ms,
                            e->upstream_ms);
    pos = put_str(buf, pos, cap, e->error);
    if (pos > cap) pos = cap;
    buf[pos++] = '}';
    buf[pos++] = '\n';
    ssize_t w = write(fd, buf, pos);
    (void)w;
}
