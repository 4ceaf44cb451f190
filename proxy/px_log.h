/* Logging: one line per event on stderr, written with a single write(2) so lines from worker
 * threads never interleave. Text (logfmt-like) by default; JSON arrives with the operations work.
 */
#ifndef PX_LOG_H
#define PX_LOG_H

#include <stdarg.h>
#include <stddef.h>

#include "cfg.h"

void px_log_setup(enum cfg_log_level level, enum cfg_log_format format);
int px_log_enabled(enum cfg_log_level level);
/* Free-form message. */
void px_log(enum cfg_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Structured event: key/value pairs, NULL-terminated: px_log_event(INFO, "conn_end", "k", "v", ...,
 * NULL). Values are quoted and escaped when needed; NULL or empty values are written as "". */
void px_log_event(enum cfg_log_level level, const char *event, ...);

#endif
