/* evhttp's own error pages, made OpenAI-shaped. libevent 2.1 answers some errors
 * itself (413 body too large, 400 unparsable HTTP, 501 a method it does not take)
 * with a fixed HTML page and has no hook to change it (evhttp's error callback
 * arrived in 2.2). The gateway and the engine add an output-buffer callback to
 * every client connection that, when such a page lands at the head of the
 * buffer, replaces it with a JSON error of the same status. Their own replies
 * are JSON or SSE and never end in the page's tail. */
#ifndef LLMGATE_GATEWAY_ERRPAGE_H
#define LLMGATE_GATEWAY_ERRPAGE_H

#include <event2/buffer.h>

#include "gateway/openai.h"

/* The status (400-599) of the evhttp error page that is all of buf after a write
 * (info), with its HTTP minor version in *minor; 0 when buf holds anything else.
 * Cheap for the common case: it runs on every write, stream chunks included. */
int errpage_status(struct evbuffer *buf, const struct evbuffer_cb_info *info, char *minor);

/* Replaces buf's content (the page) with e as a JSON reply that closes the
 * connection; reason is the status line's phrase. */
void errpage_replace(struct evbuffer *buf, char minor, const struct oai_error *e,
                     const char *reason);

#endif
