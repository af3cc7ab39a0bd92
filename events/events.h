/*
 * events: the JSON event log.
 *
 * One JSON object per line (JSON Lines), in QMP's event envelope:
 *   {"timestamp": {"seconds": S, "microseconds": U},
 *    "event": "NAME", "data": {...}}
 * QUORUM_REPORT_BAD and QUORUM_FAILURE carry QEMU's exact field names and
 * 512-byte sector units, so tools written for QEMU's events keep working.
 *
 * Emitting never blocks on the log file: events are queued and a writer
 * thread appends them, so a slow disk under the log cannot stall I/O. If
 * the queue is full, events are counted as dropped instead of waiting.
 *
 * QEMU's monitor throttles both QUORUM events to one per second per key
 * (REPORT_BAD keyed by node-name, FAILURE by one global key): the first
 * event of a window goes out at once, later ones replace a single pending
 * event that is written when the window ends. This module does the same,
 * so a flood of identical reports is coalesced, and treats
 * REPLICATION_ERROR like REPORT_BAD. Other events are never throttled.
 *
 * Every function is thread-safe. A NULL log is valid everywhere and
 * discards events, so callers need no "is logging on" checks.
 */
#ifndef QFS_EVENTS_H
#define QFS_EVENTS_H

#include <stdbool.h>
#include <stdint.h>

struct json_object;
struct event_log;

/*
 * Open (append, create 0644) the log at path and start its writer thread.
 * Returns 0 and *out, or -errno with *out unchanged. The caller owns the
 * log and frees it with event_log_close().
 */
int event_log_open(const char *path, struct event_log **out);

/*
 * Where events go: the JSON lines file, syslog, a program. Every sink
 * gets the same lines in the same order (after the throttle), from the
 * writer thread, so none of them can stall an emitter.
 */
struct event_sinks {
	const char *path; /* the JSON lines file (append), or NULL */
	bool syslog;	  /* each event to syslog(3): facility daemon */
	/*
	 * Run for each event, one at a time, as `program EVENT MOUNTPOINT`
	 * with the event's JSON line on stdin (mdadm --monitor's PROGRAM,
	 * ZFS's zedlets). Bounded: a run is killed after timeout_ms, and
	 * events that find a queue of EVENT_PROGRAM_QUEUE waiting runs are
	 * dropped and counted; at close what is still queued gets
	 * timeout_ms in all, the rest is dropped. NULL: none.
	 */
	const char *program;
	int timeout_ms;
	const char *mountpoint;
};

#define EVENT_PROGRAM_QUEUE 256

/* What the event program did since the log was opened. */
struct event_program_stats {
	uint64_t runs;	    /* runs started */
	uint64_t failed;    /* exited non-zero, died of a signal, or did not
			     * start */
	uint64_t timed_out; /* killed after timeout_ms */
	uint64_t dropped;   /* events not run: the queue was full */
};

/*
 * Open the sinks s names and start the writer thread (and the program's
 * runner). Returns 0 and *out, or -errno with *out unchanged; the file
 * is opened as event_log_open() opens it. A log with no sink at all
 * discards events.
 */
int event_log_open_sinks(const struct event_sinks *s, struct event_log **out);

/* The program's counts into *st; false when the log runs no program. */
bool event_log_program_stats(struct event_log *log,
			     struct event_program_stats *st);

/*
 * Write every pending and throttled event, stop the writer thread, close
 * the file and free the log. Events already handed to the program run
 * first, for at most about the program's timeout. NULL is accepted.
 */
void event_log_close(struct event_log *log);

/*
 * Queue every event the throttle holds back now, so that a last event
 * (UNMOUNTED) follows them in the log.
 */
void event_log_flush_throttled(struct event_log *log);

/*
 * Ask the writer to reopen the file by its path (after logrotate moved
 * it). Async-signal-safe: it only sets a flag and wakes the writer, so a
 * SIGHUP handler may call it.
 */
void event_log_request_reopen(struct event_log *log);

/*
 * Emit NAME with data (an object; ownership passes to the log, NULL means
 * an empty object). Never throttled.
 */
void event_log_emit(struct event_log *log, const char *name,
		    struct json_object *data);

/*
 * QUORUM_REPORT_BAD. type is "read", "write" or "flush"; node_name the
 * child's name; off/len the request's byte range, converted to
 * sector-num = off / 512 and
 * sectors-count = ceil((off + len) / 512) - off / 512
 * (flush reports pass 0, 0); error is a negative errno, or 0 when the
 * child answered but lost the vote (then the "error" field is absent);
 * file is the path relative to the mount, added as "file".
 * Throttled per node_name.
 */
void event_log_report_bad(struct event_log *log, const char *type,
			  const char *node_name, uint64_t off, uint64_t len,
			  int error, const char *file);

/*
 * QUORUM_FAILURE with "reference" = file (relative to the mount) and the
 * request's sectors as above. Throttled with a single global key.
 */
void event_log_quorum_failure(struct event_log *log, const char *file,
			      uint64_t off, uint64_t len);

/*
 * REPLICATION_ERROR: a forward to replication child node_name failed.
 * The same fields as QUORUM_REPORT_BAD, with the request's type as "op";
 * throttled per node_name in the same way.
 */
void event_log_replication_error(struct event_log *log, const char *node_name,
				 const char *op, uint64_t off, uint64_t len,
				 int error, const char *file);

/* Events dropped because the queue was full, since the log was opened. */
uint64_t event_log_dropped(struct event_log *log);

#endif
