/* Logging: one line per event on stderr, text (logfmt-like) or JSON. Lines are written whole
 * (one write(2) per line or per batch of whole lines), so lines of threads never interleave.
 *
 * Until px_log_start, a line is written by the thread that logs it: short-lived commands and
 * start-up errors appear synchronously and in order. The running proxy calls px_log_start: from
 * then on no thread ever blocks on stderr. Lines go through a bounded buffer to one writer
 * thread; when the reader of stderr stalls and the buffer is full, lines are dropped and
 * counted (dbtrust_log_lines_dropped_total), and once the reader drains again one line
 * `log_lines_dropped count=N` marks the gap. */
#ifndef PX_LOG_H
#define PX_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"

void px_log_setup(enum cfg_log_level level, enum cfg_log_format format);
int px_log_enabled(enum cfg_log_level level);
/* Free-form message. */
void px_log(enum cfg_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Structured event: key/value pairs, NULL-terminated: px_log_event(INFO, "conn_end", "k", "v", ...,
 * NULL). Values are quoted and escaped when needed; NULL or empty values are written as "". */
void px_log_event(enum cfg_log_level level, const char *event, ...);

/* Starts the writer thread (at most once); 0 or a libuv error (logging stays synchronous). */
int px_log_start(void) __attribute__((warn_unused_result));
/* Writes what is queued and ends the writer thread, waiting at most timeout_ms: a stalled reader
 * cannot hang shutdown. If the wait times out, later lines are dropped (and counted); otherwise
 * logging is synchronous again. Call with no other thread logging. */
void px_log_stop(unsigned timeout_ms);
/* Lines dropped since start because the reader of stderr did not keep up (or stderr failed). */
uint64_t px_log_dropped_total(void);

#endif
