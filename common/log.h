/* Leveled logging to stderr (or a file) for every llmgate process.
 * Lines are "ts level [component] message"; never pass key material or prompt
 * text to these functions. */
#ifndef LLMGATE_COMMON_LOG_H
#define LLMGATE_COMMON_LOG_H

#include <stdarg.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sets the minimum level that is printed (default LOG_INFO). Thread-safe. */
void log_set_level(enum log_level level);
/* Parses "debug|info|warn|error"; returns 0 and sets *out, or -1. */
int log_level_parse(const char *name, enum log_level *out);
/* Prints one line when level >= the current level. Thread-safe (one write(2)). */
void log_msg(enum log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(comp, ...) log_msg(LOG_DEBUG, comp, __VA_ARGS__)
#define log_info(comp, ...)  log_msg(LOG_INFO, comp, __VA_ARGS__)
#define log_warn(comp, ...)  log_msg(LOG_WARN, comp, __VA_ARGS__)
#define log_error(comp, ...) log_msg(LOG_ERROR, comp, __VA_ARGS__)

/* Broken invariants: logs file:line and aborts. Only for programming errors,
 * never for anything a client or a file can cause. */
#define LG_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) log_assert_fail(#cond, __FILE__, __LINE__);                                   \
    } while (0)
void log_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));

#endif
