/*
 * events: the JSON event log.
 *
 * Emitters build the whole line on their own thread: envelope, timestamp
 * (CLOCK_REALTIME at emit time, as QEMU stamps an event when it is raised)
 * and serialisation. Only a finished string crosses to the writer thread,
 * so no json-c object is ever shared between threads, and a throttled
 * event that is written a second later keeps its original timestamp.
 *
 * Lines go into a bounded array under log->lock. The writer thread swaps
 * that array for an empty one of the same size, so it holds the lock for
 * O(1) and never touches the disk with it held; an emitter therefore
 * waits at most for another emitter, never for write(2). A full array
 * drops the line and counts it.
 *
 * The writer sleeps in poll(2) on an eventfd. Emitters write to it when
 * they turn the queue from empty to non-empty (a non-empty queue means a
 * wake-up is already on its way), and event_log_request_reopen() writes
 * to it from signal context, which a condvar could not do. The poll
 * timeout is the earliest throttle deadline, so windows expire on time.
 *
 * Throttling follows QEMU's monitor_qapi_event_queue_no_reenter() and
 * monitor_qapi_event_handler() (monitor/monitor.c): a key with no state
 * sends at once and opens a window; events inside the window replace one
 * pending line; at expiry a pending line is sent and the window re-armed
 * from "now", otherwise the key's state is freed (the key goes quiet).
 */
#define _GNU_SOURCE
#include "events/events_i.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

enum {
	EVENT_QUEUE_CAPACITY = 4096,
	EVENT_WRITE_BUFFER = 64 * 1024,
	SECTOR_SIZE = 512,
};

/* QEMU's rate for both QUORUM events: 1000 ms (monitor_qapi_event_conf). */
static const int64_t THROTTLE_WINDOW_NS = 1000 * 1000 * 1000;

static const char REPORT_BAD[] = "QUORUM_REPORT_BAD";
static const char REPLICATION_ERROR[] = "REPLICATION_ERROR";
static const char FAILURE[] = "QUORUM_FAILURE";

/* One open window of a throttle key. All fields guarded by log->lock. */
struct throttle_state {
	struct throttle_state *next;
	const char *event;   /* REPORT_BAD, REPLICATION_ERROR or FAILURE */
	char *node_name;     /* the first two's key; NULL for FAILURE */
	int64_t deadline_ns; /* CLOCK_MONOTONIC end of the window */
	char *pending;	     /* the last line held back, or NULL */
};

struct event_log {
	char *path;  /* immutable after open; NULL: no file */
	int wake_fd; /* eventfd; immutable after open */
	atomic_bool reopen_requested;
	pthread_t writer;

	/* Owned by the writer thread alone (open/close aside). */
	int fd;			       /* -1: no file */
	struct event_forward *forward; /* syslog, the program; or NULL */
	char **spare_lines;	       /* empty array swapped with lines */
	char *write_buffer;	       /* EVENT_WRITE_BUFFER bytes */
	bool write_failing;	       /* warn once per failing streak */
	bool reopen_failing;	       /* likewise for reopen retries */

	pthread_mutex_t lock;
	/* Guarded by lock. */
	char **lines; /* EVENT_QUEUE_CAPACITY slots, each "json\n" */
	size_t line_count;
	struct throttle_state *throttled;
	uint64_t dropped;
	bool stopping;
};

static int64_t monotonic_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Wake the writer. Async-signal-safe; errno is preserved for handlers. */
static void wake_writer(struct event_log *log)
{
	uint64_t one = 1;
	int saved_errno = errno;
	ssize_t n;

	/* EAGAIN means the counter is saturated: the writer wakes anyway. */
	n = write(log->wake_fd, &one, sizeof(one));
	(void)n;
	errno = saved_errno;
}

/* ---- building lines (emitter side, no lock held) ---- */

/* Add val under key, taking ownership of val even on failure. */
static int object_add(struct json_object *obj, const char *key,
		      struct json_object *val)
{
	if (!val)
		return -ENOMEM;
	if (json_object_object_add(obj, key, val) < 0) {
		json_object_put(val);
		return -ENOMEM;
	}
	return 0;
}

static struct json_object *new_timestamp(void)
{
	struct json_object *timestamp = json_object_new_object();
	struct timespec now;

	if (!timestamp)
		return NULL;
	clock_gettime(CLOCK_REALTIME, &now);
	if (object_add(timestamp, "seconds",
		       json_object_new_int64(now.tv_sec)) < 0 ||
	    object_add(timestamp, "microseconds",
		       json_object_new_int64(now.tv_nsec / 1000)) < 0) {
		json_object_put(timestamp);
		return NULL;
	}
	return timestamp;
}

/* Serialise obj as one line ending in '\n'. Returns a malloc'd string. */
static char *object_to_line(struct json_object *obj)
{
	/* No slash escaping: QEMU writes "/srv/b", json-c would write
	 * "\/srv\/b" by default. */
	const char *json = json_object_to_json_string_ext(
		obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	size_t len;
	char *line;

	if (!json)
		return NULL;
	len = strlen(json);
	line = malloc(len + 2);
	if (!line)
		return NULL;
	memcpy(line, json, len);
	line[len] = '\n';
	line[len + 1] = '\0';
	return line;
}

/*
 * Wrap data (consumed; NULL means {}) in QMP's envelope, stamped now.
 * Returns the line, or NULL when out of memory.
 */
static char *event_line(const char *name, struct json_object *data)
{
	struct json_object *envelope = json_object_new_object();
	char *line = NULL;
	int r;

	if (!data)
		data = json_object_new_object();
	if (!envelope || !data)
		goto out;
	if (object_add(envelope, "timestamp", new_timestamp()) < 0 ||
	    object_add(envelope, "event", json_object_new_string(name)) < 0)
		goto out;
	r = object_add(envelope, "data", data);
	data = NULL; /* the envelope owns it, or object_add freed it */
	if (r < 0)
		goto out;
	line = object_to_line(envelope);
out:
	json_object_put(data);
	json_object_put(envelope);
	return line;
}

/* Adds QEMU's sector-num and sectors-count for the byte range off/len. */
static int add_sectors(struct json_object *data, uint64_t off, uint64_t len)
{
	uint64_t end = off + len;
	uint64_t first = off / SECTOR_SIZE;
	/* ceil(end / 512) without the overflow of end + 511. */
	uint64_t last = end / SECTOR_SIZE + (end % SECTOR_SIZE != 0);

	if (object_add(data, "sector-num", json_object_new_int64(first)) < 0 ||
	    object_add(data, "sectors-count",
		       json_object_new_int64(last - first)) < 0)
		return -ENOMEM;
	return 0;
}

static const char *or_empty(const char *s)
{
	return s ? s : "";
}

/* A NULL value becomes "" rather than a crash in json-c. */
static int add_string(struct json_object *obj, const char *key,
		      const char *value)
{
	return object_add(obj, key, json_object_new_string(or_empty(value)));
}

/*
 * Fields in the order of the README's example (Event log). QEMU's QAPI visitor
 * puts "error" second; no JSON reader depends on member order.
 */
/* QUORUM_REPORT_BAD's data, and REPLICATION_ERROR's, which names the
 * request's type "op". */
static struct json_object *
report_bad_data(const char *type_key, const char *type, const char *node_name,
		uint64_t off, uint64_t len, int error, const char *file)
{
	struct json_object *data = json_object_new_object();
	char buf[128];

	if (!data)
		return NULL;
	if (add_string(data, type_key, type) < 0 ||
	    add_string(data, "node-name", node_name) < 0 ||
	    add_sectors(data, off, len) < 0)
		goto out_put;
	/* Absent, not empty, when the child answered but lost the vote. */
	if (error != 0 &&
	    add_string(data, "error", strerror_r(-error, buf, sizeof(buf))) < 0)
		goto out_put;
	if (add_string(data, "file", file) < 0)
		goto out_put;
	return data;
out_put:
	json_object_put(data);
	return NULL;
}

static struct json_object *failure_data(const char *file, uint64_t off,
					uint64_t len)
{
	struct json_object *data = json_object_new_object();

	if (!data)
		return NULL;
	if (add_string(data, "reference", file) < 0 ||
	    add_sectors(data, off, len) < 0) {
		json_object_put(data);
		return NULL;
	}
	return data;
}

/* ---- queue and throttle (log->lock held) ---- */

/*
 * Queue line (consumed). Returns true when the queue was empty, i.e. the
 * caller must wake the writer; otherwise a wake-up is already pending.
 */
static bool queue_line_locked(struct event_log *log, char *line)
{
	if (log->line_count == EVENT_QUEUE_CAPACITY) {
		free(line);
		log->dropped++;
		return false;
	}
	log->lines[log->line_count++] = line;
	return log->line_count == 1;
}

static struct throttle_state *throttle_find_locked(struct event_log *log,
						   const char *event,
						   const char *node_name)
{
	struct throttle_state *state;

	for (state = log->throttled; state; state = state->next) {
		if (state->event != event)
			continue;
		if (!node_name || strcmp(state->node_name, node_name) == 0)
			return state;
	}
	return NULL;
}

/* node_name NULL is the single global key. Returns NULL if out of memory. */
static struct throttle_state *throttle_open_locked(struct event_log *log,
						   const char *event,
						   const char *node_name)
{
	struct throttle_state *state = calloc(1, sizeof(*state));

	if (!state)
		return NULL;
	if (node_name) {
		state->node_name = strdup(node_name);
		if (!state->node_name) {
			free(state);
			return NULL;
		}
	}
	state->event = event;
	state->deadline_ns = monotonic_ns() + THROTTLE_WINDOW_NS;
	state->next = log->throttled;
	log->throttled = state;
	return state;
}

/* As queue_line_locked(), through the key's throttle window. */
static bool throttle_line_locked(struct event_log *log, const char *event,
				 const char *node_name, char *line)
{
	struct throttle_state *state;

	state = throttle_find_locked(log, event, node_name);
	if (state) {
		/* Only the last event of a window survives, as in QEMU. */
		free(state->pending);
		state->pending = line;
		return false;
	}
	/* Without memory for a window the event simply goes unthrottled. */
	throttle_open_locked(log, event, node_name);
	/* A new deadline: the queue push wakes the writer to see it. */
	return queue_line_locked(log, line);
}

static void throttle_free(struct throttle_state *state)
{
	free(state->node_name);
	free(state->pending);
	free(state);
}

/*
 * Queue the pending line of every window that has ended, re-arming it,
 * and forget windows that ended quietly. With flush_all, every pending
 * line is queued now (close must not lose the last report).
 */
static void throttle_expire_locked(struct event_log *log, int64_t now,
				   bool flush_all)
{
	struct throttle_state **link = &log->throttled;

	while (*link) {
		struct throttle_state *state = *link;

		if (!flush_all && state->deadline_ns > now) {
			link = &state->next;
			continue;
		}
		if (state->pending) {
			queue_line_locked(log, state->pending);
			state->pending = NULL;
			state->deadline_ns = now + THROTTLE_WINDOW_NS;
			link = &state->next;
			continue;
		}
		*link = state->next;
		throttle_free(state);
	}
}

/* Milliseconds until the earliest window ends, rounded up; -1 if none. */
static int throttle_timeout_ms_locked(struct event_log *log, int64_t now)
{
	struct throttle_state *state;
	int64_t earliest = INT64_MAX;
	int64_t ms;

	for (state = log->throttled; state; state = state->next)
		if (state->deadline_ns < earliest)
			earliest = state->deadline_ns;
	if (earliest == INT64_MAX)
		return -1;
	if (earliest <= now)
		return 0;
	/* Rounded up so the writer never wakes just before a deadline and
	 * spins on a zero timeout. */
	ms = (earliest - now + 999999) / 1000000;
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* ---- writer thread ---- */

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The log has nowhere else to report its own failure than stderr. */
static void note_write_result(struct event_log *log, int r)
{
	char buf[128];

	if (r < 0 && !log->write_failing)
		fprintf(stderr, "quorumfs: event log %s: %s\n", log->path,
			strerror_r(-r, buf, sizeof(buf)));
	log->write_failing = r < 0;
}

/* Append count lines from spare_lines, coalesced into few write(2)s. */
static void write_lines(struct event_log *log, size_t count)
{
	size_t used = 0;
	size_t i;

	for (i = 0; i < count; i++) {
		char *line = log->spare_lines[i];
		size_t len = log->fd >= 0 ? strlen(line) : 0;

		event_forward_line(log->forward, line);
		if (used + len > EVENT_WRITE_BUFFER && used > 0) {
			note_write_result(
				log,
				write_all(log->fd, log->write_buffer, used));
			used = 0;
		}
		if (len > EVENT_WRITE_BUFFER) {
			note_write_result(log, write_all(log->fd, line, len));
		} else if (len) {
			memcpy(log->write_buffer + used, line, len);
			used += len;
		}
		free(line);
		log->spare_lines[i] = NULL;
	}
	if (used > 0)
		note_write_result(log,
				  write_all(log->fd, log->write_buffer, used));
}

static int open_log_file(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);

	return fd < 0 ? -errno : fd;
}

/* On failure the old file stays in use and the next wake-up retries. */
static void reopen_if_requested(struct event_log *log)
{
	char buf[128];
	int fd;

	if (!atomic_exchange(&log->reopen_requested, false) || !log->path)
		return;
	fd = open_log_file(log->path);
	if (fd < 0) {
		if (!log->reopen_failing)
			fprintf(stderr,
				"quorumfs: reopening event log %s: %s\n",
				log->path, strerror_r(-fd, buf, sizeof(buf)));
		log->reopen_failing = true;
		atomic_store(&log->reopen_requested, true);
		return;
	}
	log->reopen_failing = false;
	close(log->fd);
	log->fd = fd;
}

/* Sleep until an emitter, a reopen request or timeout_ms wakes us. */
static void wait_for_wake(struct event_log *log, int timeout_ms)
{
	struct pollfd pfd = {.fd = log->wake_fd, .events = POLLIN};
	uint64_t count;
	ssize_t n;

	if (poll(&pfd, 1, timeout_ms) <= 0)
		return;
	/* Reset the counter now, before the next drain, so a wake-up for a
	 * line queued after that drain is never consumed unseen. A failed
	 * read only costs one spurious wake-up. */
	n = read(log->wake_fd, &count, sizeof(count));
	(void)n;
}

/*
 * Take the whole queue at once by swapping arrays. Returns the number of
 * lines now in spare_lines. Sets *stopping when close was requested, and
 * *timeout_ms to the wait before the next throttle deadline.
 */
static size_t take_batch(struct event_log *log, bool *stopping, int *timeout_ms)
{
	int64_t now = monotonic_ns();
	char **lines;
	size_t count;

	pthread_mutex_lock(&log->lock);
	*stopping = log->stopping;
	throttle_expire_locked(log, now, *stopping);
	lines = log->lines;
	count = log->line_count;
	log->lines = log->spare_lines;
	log->line_count = 0;
	log->spare_lines = lines;
	*timeout_ms = throttle_timeout_ms_locked(log, now);
	pthread_mutex_unlock(&log->lock);
	return count;
}

static void *writer_main(void *arg)
{
	struct event_log *log = arg;
	bool stopping = false;

	pthread_setname_np(pthread_self(), "qfs-events");
	while (!stopping) {
		int timeout_ms;
		size_t count = take_batch(log, &stopping, &timeout_ms);

		/* After take_batch: a line emitted after a reopen request
		 * was queued after the flag was set, so it goes to the new
		 * file. */
		reopen_if_requested(log);
		write_lines(log, count);
		if (!stopping)
			wait_for_wake(log, timeout_ms);
	}
	return NULL;
}

/* ---- lifetime ---- */

static void free_lines(char **lines, size_t count)
{
	size_t i;

	if (!lines)
		return;
	for (i = 0; i < count; i++)
		free(lines[i]);
	free(lines);
}

/* Frees everything but the thread, which must not be running. */
static void event_log_free(struct event_log *log)
{
	struct throttle_state *state;

	while ((state = log->throttled)) {
		log->throttled = state->next;
		throttle_free(state);
	}
	free_lines(log->lines, log->line_count);
	free_lines(log->spare_lines, 0);
	free(log->write_buffer);
	if (log->fd >= 0)
		close(log->fd);
	event_forward_stop(log->forward);
	if (log->wake_fd >= 0)
		close(log->wake_fd);
	pthread_mutex_destroy(&log->lock);
	free(log->path);
	free(log);
}

static int event_log_alloc(const char *path, struct event_log **out)
{
	struct event_log *log = calloc(1, sizeof(*log));
	int r;

	if (!log)
		return -ENOMEM;
	log->fd = -1;
	log->wake_fd = -1;
	atomic_init(&log->reopen_requested, false);
	r = -pthread_mutex_init(&log->lock, NULL);
	if (r < 0) {
		free(log);
		return r;
	}
	log->path = path ? strdup(path) : NULL;
	log->lines = calloc(EVENT_QUEUE_CAPACITY, sizeof(*log->lines));
	log->spare_lines = calloc(EVENT_QUEUE_CAPACITY, sizeof(*log->lines));
	log->write_buffer = malloc(EVENT_WRITE_BUFFER);
	if ((path && !log->path) || !log->lines || !log->spare_lines ||
	    !log->write_buffer) {
		event_log_free(log);
		return -ENOMEM;
	}
	*out = log;
	return 0;
}

int event_log_open_sinks(const struct event_sinks *s, struct event_log **out)
{
	struct event_log *log;
	int r;

	r = event_log_alloc(s->path, &log);
	if (r < 0)
		return r;
	r = s->path ? open_log_file(s->path) : -1;
	if (s->path && r < 0)
		goto out_free;
	log->fd = r;
	r = event_forward_start(s, &log->forward);
	if (r < 0)
		goto out_free;
	log->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (log->wake_fd < 0) {
		r = -errno;
		goto out_free;
	}
	r = -pthread_create(&log->writer, NULL, writer_main, log);
	if (r < 0)
		goto out_free;
	*out = log;
	return 0;
out_free:
	event_log_free(log);
	return r;
}

int event_log_open(const char *path, struct event_log **out)
{
	const struct event_sinks s = {.path = path};

	return event_log_open_sinks(&s, out);
}

bool event_log_program_stats(struct event_log *log,
			     struct event_program_stats *st)
{
	return log && event_forward_stats(log->forward, st);
}

void event_log_close(struct event_log *log)
{
	if (!log)
		return;
	pthread_mutex_lock(&log->lock);
	log->stopping = true;
	pthread_mutex_unlock(&log->lock);
	wake_writer(log);
	pthread_join(log->writer, NULL);
	event_log_free(log);
}

void event_log_flush_throttled(struct event_log *log)
{
	if (!log)
		return;
	pthread_mutex_lock(&log->lock);
	throttle_expire_locked(log, monotonic_ns(), true);
	pthread_mutex_unlock(&log->lock);
	wake_writer(log);
}

void event_log_request_reopen(struct event_log *log)
{
	if (!log)
		return;
	atomic_store(&log->reopen_requested, true);
	wake_writer(log);
}

/* Queue line (consumed; NULL means it could not be built) for event. */
static void submit_line(struct event_log *log, const char *event,
			const char *node_name, char *line)
{
	bool wake;

	pthread_mutex_lock(&log->lock);
	if (!line) {
		/* Lost to memory pressure rather than a full queue, but lost
		 * all the same: count it where an operator will look. */
		log->dropped++;
		wake = false;
	} else if (event) {
		wake = throttle_line_locked(log, event, node_name, line);
	} else {
		wake = queue_line_locked(log, line);
	}
	pthread_mutex_unlock(&log->lock);
	if (wake)
		wake_writer(log);
}

void event_log_emit(struct event_log *log, const char *name,
		    struct json_object *data)
{
	if (!log || !name) {
		json_object_put(data); /* ownership passed to us regardless */
		return;
	}
	submit_line(log, NULL, NULL, event_line(name, data));
}

void event_log_report_bad(struct event_log *log, const char *type,
			  const char *node_name, uint64_t off, uint64_t len,
			  int error, const char *file)
{
	struct json_object *data;

	if (!log)
		return;
	data = report_bad_data("type", type, node_name, off, len, error, file);
	submit_line(log, REPORT_BAD, or_empty(node_name),
		    data ? event_line(REPORT_BAD, data) : NULL);
}

void event_log_replication_error(struct event_log *log, const char *node_name,
				 const char *op, uint64_t off, uint64_t len,
				 int error, const char *file)
{
	struct json_object *data;

	if (!log)
		return;
	data = report_bad_data("op", op, node_name, off, len, error, file);
	submit_line(log, REPLICATION_ERROR, or_empty(node_name),
		    data ? event_line(REPLICATION_ERROR, data) : NULL);
}

void event_log_quorum_failure(struct event_log *log, const char *file,
			      uint64_t off, uint64_t len)
{
	struct json_object *data;

	if (!log)
		return;
	data = failure_data(file, off, len);
	submit_line(log, FAILURE, NULL,
		    data ? event_line(FAILURE, data) : NULL);
}

uint64_t event_log_dropped(struct event_log *log)
{
	uint64_t dropped;

	if (!log)
		return 0;
	pthread_mutex_lock(&log->lock);
	dropped = log->dropped;
	pthread_mutex_unlock(&log->lock);
	return dropped;
}
