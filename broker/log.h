/* SPDX-License-Identifier: Apache-2.0 */
/* log.h: one log line per event on stderr, written with one write(2):
 * logfmt by default,
 *   ts=2026-12-03T08:00:00.123456Z level=info event=broker.listening
 *   msg="listening on ..." listen=127.0.0.1:7443
 * or, with log_format = json, one JSON object per line with the same
 * fields ("ts", "level", "event", "msg", then the event's own). Every
 * value is a string; invalid UTF-8 becomes '?'. Never pass secrets. */
#ifndef KB_LOG_H
#define KB_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON = 1 };

void log_set_level(enum log_level l);
/* Parse "error", "warn", "info", "debug"; -1 if unknown. */
int log_level_parse(const char *s);
void log_set_format(enum log_format f);
/* Parse "text", "json"; -1 if unknown. */
int log_format_parse(const char *s);

/* An event with a name ("broker.start": what happened, stable for
 * alerting and grep) and fields: `kv` is NULL or a NULL-terminated list of
 * key, value strings (LOG_KV below); a NULL value is skipped. */
void log_event(enum log_level l, const char *event, const char *const *kv,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
#define LOG_KV(...) ((const char *const[]){__VA_ARGS__, NULL})

/* A line without a name of its own: its event is where it was logged
 * ("jobs.job_run" for function job_run in jobs.c). */
void log_at(enum log_level l, const char *file, const char *func,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
#define log_msg(l, ...) log_at(l, __FILE__, __func__, __VA_ARGS__)

#define log_error(...) log_at(LOG_ERROR, __FILE__, __func__, __VA_ARGS__)
#define log_warn(...) log_at(LOG_WARN, __FILE__, __func__, __VA_ARGS__)
#define log_info(...) log_at(LOG_INFO, __FILE__, __func__, __VA_ARGS__)
#define log_debug(...) log_at(LOG_DEBUG, __FILE__, __func__, __VA_ARGS__)

#endif /* KB_LOG_H */
