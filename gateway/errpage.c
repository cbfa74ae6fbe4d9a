/* evhttp's error pages as OpenAI-shaped JSON (see errpage.h). */
#include "gateway/errpage.h"

#include <stdlib.h>
#include <string.h>

#define PAGE_TAIL "</BODY></HTML>\n"

int errpage_status(struct evbuffer *buf, const struct evbuffer_cb_info *info, char *minor)
{
    size_t len = evbuffer_get_length(buf);
    const size_t tail_len = sizeof PAGE_TAIL - 1;
    if (info->n_added == 0 || len < 64 || len > 4096) return 0;
    /* Cheap first: only an error status line at the buffer's head goes further. */
    struct evbuffer_iovec head_vec;
    if (evbuffer_peek(buf, 16, NULL, &head_vec, 1) < 1 || head_vec.iov_len < 16) return 0;
    const char *head = head_vec.iov_base;
    if (memcmp(head, "HTTP/1.", 7) != 0 || head[8] != ' ' || (head[9] != '4' && head[9] != '5'))
        return 0;
    char tail[sizeof PAGE_TAIL - 1];
    struct evbuffer_ptr at;
    if (evbuffer_ptr_set(buf, &at, len - tail_len, EVBUFFER_PTR_SET) != 0 ||
        evbuffer_copyout_from(buf, &at, tail, tail_len) != (ev_ssize_t)tail_len ||
        memcmp(tail, PAGE_TAIL, tail_len) != 0)
        return 0;
    int status = atoi(head + 9);
    if (status < 400 || status > 599) return 0;
    *minor = head[7];
    return status;
}

void errpage_replace(struct evbuffer *buf, char minor, const struct oai_error *e,
                     const char *reason)
{
    char json[512];
    int n = oai_error_render(e, json, sizeof json);
    if (n < 0) return;
    evbuffer_drain(buf, evbuffer_get_length(buf));
    evbuffer_add_printf(buf,
                        "HTTP/1.%c %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        "Content-Length: %d\r\n\r\n",
                        minor, e->status, reason, n);
    evbuffer_add(buf, json, (size_t)n);
}
