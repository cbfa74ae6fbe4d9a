/* Usage metering's local side: the spool file that holds settle calls (each
 * with its usage record) while Redis is unreachable, its replay when Redis is
 * back or the gateway starts again, and the usage report's date parsing and
 * CSV rendering shared by the admin API and the CLI. */
#ifndef LLMGATE_GATEWAY_USAGE_H
#define LLMGATE_GATEWAY_USAGE_H

#include <stddef.h>

struct redis;

/* Appends one settle call (its script keys and arguments) to the spool as one
 * JSON line. Safe across threads and processes (flock + O_APPEND; a writer that
 * raced a replay's rename retries on the new file). 0, or -1 on an I/O error. */
int usage_spool_append(const char *path, int nkeys, const char **keys, const size_t *keylens,
                       int nargs, const char **args, const size_t *arglens);

/* A replay of the spool on one worker's Redis connection. */
struct usage_replay;
/* Creates the replayer; usage_replay_tick starts a replay when Redis is up and
 * something is spooled (also files a crashed process claimed). NULL on OOM. */
struct usage_replay *usage_replay_new(struct redis *redis, const char *spool_path);
void usage_replay_tick(struct usage_replay *u);
/* Whether a replay is in progress (for tests and the drain). */
int usage_replay_busy(const struct usage_replay *u);
/* Stops (unfinished lines stay in their claimed file for the next start) and frees. */
void usage_replay_free(struct usage_replay *u);

/* Parses "YYYY-MM-DD" into days since 1970-01-01 (UTC); 0 or -1. */
int usage_parse_day(const char *s, long *day);
/* The UTC day (days since the epoch) of a wall-clock time in ms. */
long usage_day_of_ms(unsigned long long ms);
/* "YYYYMMDD" of a day number into out[9]. */
void usage_day_string(long day, char out[9]);
/* The UTC month of a day number, as year * 12 + month - 1 (the scripts' month
 * window), and the day number of a month's first day. */
long usage_month_of_day(long day);
long usage_month_first_day(long month);
/* Renders a usage report (the JSON the report script returns) as CSV with a
 * header line. Returns a malloc'd string, or NULL when json is not a report. */
char *usage_report_csv(const char *json, size_t len);

#endif
