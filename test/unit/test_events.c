/*
 * Unit tests for events/: the JSON lines, QEMU's field names and sector
 * units, QEMU's one-per-second throttling, close, reopen and the NULL log.
 *
 * Each test owns a fixture (a temp directory with a log in it). Tests wait
 * for lines to appear by polling the file against a deadline, never by
 * sleeping a fixed time; alarm() bounds the whole run.
 */
#define _GNU_SOURCE
#include "events/events.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "test/unit/unit.h"

enum {
	MAX_LINES = 64,
	SHORT_WAIT_MS = 500, /* for what must be written at once */
	LONG_WAIT_MS = 5000, /* for what a throttle window delays */
};

/* CLOCK_REALTIME in ms, the clock event timestamps use. */
static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- fixture: a temp directory and a log at dir/events.jsonl ---- */

struct fixture {
	char dir[64];
	char path[96];
	char rotated[96];
	struct event_log *log;
};

static void fixture_setup(struct fixture *fx)
{
	memset(fx, 0, sizeof(*fx));
	strcpy(fx->dir, "/tmp/qfs-test-events-XXXXXX");
	if (!mkdtemp(fx->dir)) {
		perror("mkdtemp");
		exit(2);
	}
	snprintf(fx->path, sizeof(fx->path), "%s/events.jsonl", fx->dir);
	snprintf(fx->rotated, sizeof(fx->rotated), "%s/events.jsonl.1",
		 fx->dir);
	CHECK(event_log_open(fx->path, &fx->log) == 0);
}

static void fixture_teardown(struct fixture *fx)
{
	event_log_close(fx->log);
	unlink(fx->path);
	unlink(fx->rotated);
	rmdir(fx->dir);
}

/* ---- reading the log back ---- */

struct lines {
	char *text;
	char *line[MAX_LINES];
	int count;
};

/* Load path into l, split at '\n'; a missing file has no lines. */
static void lines_load(struct lines *l, const char *path)
{
	FILE *f = fopen(path, "r");
	size_t size = 0;
	char *p;

	memset(l, 0, sizeof(*l));
	if (!f) {
		l->text = strdup("");
		return;
	}
	if (getdelim(&l->text, &size, '\0', f) < 0) {
		free(l->text);
		l->text = strdup("");
	}
	fclose(f);
	for (p = l->text; *p && l->count < MAX_LINES; l->count++) {
		char *nl = strchr(p, '\n');

		if (!nl) /* a half-written line is not a line yet */
			break;
		*nl = '\0';
		l->line[l->count] = p;
		p = nl + 1;
	}
}

static void lines_release(struct lines *l)
{
	free(l->text);
	l->text = NULL;
}

/* Poll until path holds at least want lines or timeout_ms passes. */
static int wait_for_lines(const char *path, int want, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	struct lines l;
	int count;

	for (;;) {
		lines_load(&l, path);
		count = l.count;
		lines_release(&l);
		if (count >= want || now_ms() >= deadline)
			return count;
		usleep(2000);
	}
}

static int count_lines(const char *path)
{
	return wait_for_lines(path, 0, 0);
}

/* Parse line n of path; NULL if absent. Caller puts the result. */
static struct json_object *parse_line(const char *path, int n)
{
	struct json_object *event = NULL;
	struct lines l;

	lines_load(&l, path);
	if (n < l.count)
		event = json_tokener_parse(l.line[n]);
	lines_release(&l);
	return event;
}

/* The raw text of line n, copied into buf ("" if absent). */
static void raw_line(const char *path, int n, char *buf, size_t size)
{
	struct lines l;

	lines_load(&l, path);
	snprintf(buf, size, "%s", n < l.count ? l.line[n] : "");
	lines_release(&l);
}

static struct json_object *member(struct json_object *obj, const char *key)
{
	struct json_object *value = NULL;

	if (!obj || !json_object_object_get_ex(obj, key, &value))
		return NULL;
	return value;
}

static int64_t data_int(struct json_object *event, const char *key)
{
	return json_object_get_int64(member(member(event, "data"), key));
}

static const char *data_str(struct json_object *event, const char *key)
{
	struct json_object *value = member(member(event, "data"), key);

	return value ? json_object_get_string(value) : NULL;
}

static bool str_eq(const char *a, const char *b)
{
	return a && b && strcmp(a, b) == 0;
}

/* ---- envelope ---- */

static void test_event_is_one_line_in_the_qmp_envelope(void)
{
	struct fixture fx;
	struct json_object *data = json_object_new_object();
	struct json_object *event, *timestamp;
	time_t before = time(NULL), after;

	fixture_setup(&fx);
	json_object_object_add(data, "child", json_object_new_string("/srv/b"));
	event_log_emit(fx.log, "CHILD_ADDED", data);
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	after = time(NULL);

	event = parse_line(fx.path, 0);
	timestamp = member(event, "timestamp");
	CHECK(event != NULL);
	CHECK(json_object_object_length(event) == 3);
	CHECK(str_eq(json_object_get_string(member(event, "event")),
		     "CHILD_ADDED"));
	CHECK(json_object_get_int64(member(timestamp, "seconds")) >= before);
	CHECK(json_object_get_int64(member(timestamp, "seconds")) <= after);
	CHECK(json_object_get_int64(member(timestamp, "microseconds")) >= 0);
	CHECK(json_object_get_int64(member(timestamp, "microseconds")) <
	      1000000);
	CHECK(str_eq(data_str(event, "child"), "/srv/b"));
	json_object_put(event);
	fixture_teardown(&fx);
}

static void test_envelope_keys_come_in_qmp_order_without_slash_escapes(void)
{
	struct fixture fx;
	char line[512];

	fixture_setup(&fx);
	event_log_report_bad(fx.log, "read", "/srv/b", 0, 4096, 0, "vm1.img");
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	raw_line(fx.path, 0, line, sizeof(line));
	CHECK(strncmp(line, "{\"timestamp\":{\"seconds\":", 24) == 0);
	CHECK(strstr(line, "},\"event\":\"QUORUM_REPORT_BAD\",\"data\":{") !=
	      NULL);
	CHECK(strstr(line, "\"node-name\":\"/srv/b\"") != NULL);
	fixture_teardown(&fx);
}

static void test_emit_with_null_data_writes_an_empty_data_object(void)
{
	struct fixture fx;
	char line[512];

	fixture_setup(&fx);
	event_log_emit(fx.log, "MOUNTED", NULL);
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	raw_line(fx.path, 0, line, sizeof(line));
	CHECK(strstr(line, "\"event\":\"MOUNTED\",\"data\":{}}") != NULL);
	fixture_teardown(&fx);
}

/* ---- QUORUM_REPORT_BAD and QUORUM_FAILURE fields ---- */

static void test_report_bad_has_qemu_fields_in_qapi_order(void)
{
	struct fixture fx;
	char line[512];

	fixture_setup(&fx);
	event_log_report_bad(fx.log, "read", "c1", 100000, 50000, 0, "vm1.img");
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	raw_line(fx.path, 0, line, sizeof(line));
	CHECK(strstr(line, "\"data\":{\"type\":\"read\",\"node-name\":\"c1\","
			   "\"sector-num\":195,\"sectors-count\":98,"
			   "\"file\":\"vm1.img\"}}") != NULL);
	fixture_teardown(&fx);
}

/* Distinct node names, so no report is held back by throttling. */
static void test_report_bad_converts_bytes_to_512_byte_sectors(void)
{
	struct fixture fx;
	struct json_object *event;

	fixture_setup(&fx);
	event_log_report_bad(fx.log, "read", "c1", 100000, 50000, 0, "f");
	event_log_report_bad(fx.log, "write", "c2", 0, 1 << 20, 0, "f");
	event_log_report_bad(fx.log, "read", "c3", 511, 2, 0, "f");
	event_log_report_bad(fx.log, "flush", "c4", 0, 0, -EIO, "f");
	CHECK(wait_for_lines(fx.path, 4, SHORT_WAIT_MS) == 4);

	event = parse_line(fx.path, 0);
	CHECK(data_int(event, "sector-num") == 195);
	CHECK(data_int(event, "sectors-count") == 98);
	json_object_put(event);
	event = parse_line(fx.path, 1);
	CHECK(data_int(event, "sector-num") == 0);
	CHECK(data_int(event, "sectors-count") == 2048);
	json_object_put(event);
	event = parse_line(fx.path, 2); /* straddles a sector boundary */
	CHECK(data_int(event, "sector-num") == 0);
	CHECK(data_int(event, "sectors-count") == 2);
	json_object_put(event);
	event = parse_line(fx.path, 3);
	CHECK(str_eq(data_str(event, "type"), "flush"));
	CHECK(data_int(event, "sector-num") == 0);
	CHECK(data_int(event, "sectors-count") == 0);
	json_object_put(event);
	fixture_teardown(&fx);
}

static void test_error_field_is_absent_when_the_child_lost_the_vote(void)
{
	struct fixture fx;
	struct json_object *event;

	fixture_setup(&fx);
	event_log_report_bad(fx.log, "read", "c1", 0, 512, 0, "f");
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	event = parse_line(fx.path, 0);
	CHECK(event != NULL);
	CHECK(member(member(event, "data"), "error") == NULL);
	json_object_put(event);
	fixture_teardown(&fx);
}

static void test_error_field_is_strerror_text_of_the_negative_errno(void)
{
	struct fixture fx;
	struct json_object *event;
	char line[512];

	fixture_setup(&fx);
	event_log_report_bad(fx.log, "read", "c1", 0, 512, -EIO, "f");
	event_log_report_bad(fx.log, "write", "c2", 0, 512, -ENOSPC, "f");
	CHECK(wait_for_lines(fx.path, 2, SHORT_WAIT_MS) == 2);
	event = parse_line(fx.path, 0);
	CHECK(str_eq(data_str(event, "error"), "Input/output error"));
	json_object_put(event);
	event = parse_line(fx.path, 1);
	CHECK(str_eq(data_str(event, "error"), "No space left on device"));
	json_object_put(event);
	raw_line(fx.path, 0, line, sizeof(line));
	CHECK(strstr(line, "\"sectors-count\":1,\"error\":\"Input/output "
			   "error\",\"file\":\"f\"}") != NULL);
	fixture_teardown(&fx);
}

static void test_quorum_failure_has_reference_and_sectors(void)
{
	struct fixture fx;
	char line[512];

	fixture_setup(&fx);
	event_log_quorum_failure(fx.log, "dir/vm1.img", 100000, 50000);
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	raw_line(fx.path, 0, line, sizeof(line));
	CHECK(strstr(line, "\"event\":\"QUORUM_FAILURE\",\"data\":{"
			   "\"reference\":\"dir/vm1.img\",\"sector-num\":195,"
			   "\"sectors-count\":98}}") != NULL);
	fixture_teardown(&fx);
}

/* ---- throttling ---- */

/* QEMU's monitor throttle: sector 0 at once, sector 16 at +1 s, 8 dropped. */
static void test_report_bad_for_one_node_keeps_only_the_last_of_a_window(void)
{
	struct fixture fx;
	struct json_object *event, *timestamp;
	int64_t emitted = wall_ms(), start = now_ms(), delay;

	fixture_setup(&fx);
	event_log_report_bad(fx.log, "read", "c1", 0, 4096, 0, "f");
	event_log_report_bad(fx.log, "read", "c1", 8 * 512, 4096, 0, "f");
	event_log_report_bad(fx.log, "read", "c1", 16 * 512, 4096, 0, "f");
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	CHECK(count_lines(fx.path) == 1);

	CHECK(wait_for_lines(fx.path, 2, LONG_WAIT_MS) == 2);
	delay = now_ms() - start;
	CHECK(delay >= 900);
	CHECK(delay < 3000);

	/* Close writes anything still pending: nothing may be. */
	event_log_close(fx.log);
	fx.log = NULL;
	CHECK(count_lines(fx.path) == 2);
	event = parse_line(fx.path, 0);
	CHECK(data_int(event, "sector-num") == 0);
	json_object_put(event);
	event = parse_line(fx.path, 1);
	CHECK(data_int(event, "sector-num") == 16);
	/* Stamped when it was emitted, not when the window let it out. */
	timestamp = member(event, "timestamp");
	CHECK(json_object_get_int64(member(timestamp, "seconds")) * 1000 +
		      json_object_get_int64(member(timestamp, "microseconds")) /
			      1000 <
	      emitted + SHORT_WAIT_MS);
	json_object_put(event);
	fixture_teardown(&fx);
}

static void test_report_bad_for_another_node_is_not_delayed(void)
{
	struct fixture fx;
	struct json_object *event;

	fixture_setup(&fx);
	event_log_report_bad(fx.log, "read", "c1", 0, 512, 0, "f");
	event_log_report_bad(fx.log, "read", "c1", 512, 512, 0, "f");
	event_log_report_bad(fx.log, "read", "c2", 1024, 512, 0, "f");
	CHECK(wait_for_lines(fx.path, 2, SHORT_WAIT_MS) == 2);
	event = parse_line(fx.path, 1);
	CHECK(str_eq(data_str(event, "node-name"), "c2"));
	json_object_put(event);
	fixture_teardown(&fx);
}

static void test_quorum_failure_is_throttled_under_one_global_key(void)
{
	struct fixture fx;
	struct json_object *event;

	fixture_setup(&fx);
	event_log_quorum_failure(fx.log, "a.img", 0, 512);
	event_log_quorum_failure(fx.log, "b.img", 0, 512);
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	CHECK(count_lines(fx.path) == 1);
	CHECK(wait_for_lines(fx.path, 2, LONG_WAIT_MS) == 2);
	event = parse_line(fx.path, 1);
	CHECK(str_eq(data_str(event, "reference"), "b.img"));
	json_object_put(event);
	fixture_teardown(&fx);
}

static void test_a_window_that_ends_quietly_lets_the_next_event_out(void)
{
	struct fixture fx;
	int64_t start;

	fixture_setup(&fx);
	event_log_report_bad(fx.log, "read", "c1", 0, 512, 0, "f");
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	/* Waiting on the clock itself: the window must end with nothing
	 * pending, and there is nothing to observe when it does. */
	usleep(1200 * 1000);
	start = now_ms();
	event_log_report_bad(fx.log, "read", "c1", 512, 512, 0, "f");
	event_log_report_bad(fx.log, "read", "c1", 1024, 512, 0, "f");
	CHECK(wait_for_lines(fx.path, 2, SHORT_WAIT_MS) == 2);
	CHECK(now_ms() - start < SHORT_WAIT_MS);
	/* ... and opens a fresh window that holds the one after it. */
	CHECK(wait_for_lines(fx.path, 3, LONG_WAIT_MS) == 3);
	CHECK(now_ms() - start >= 900);
	fixture_teardown(&fx);
}

static void test_close_writes_the_pending_throttled_event(void)
{
	struct fixture fx;
	struct json_object *event;
	int64_t start;

	fixture_setup(&fx);
	event_log_report_bad(fx.log, "read", "c1", 0, 512, 0, "f");
	event_log_report_bad(fx.log, "write", "c1", 512, 512, -EIO, "f");
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	start = now_ms();
	event_log_close(fx.log);
	fx.log = NULL;
	CHECK(now_ms() - start < SHORT_WAIT_MS);
	CHECK(count_lines(fx.path) == 2);
	event = parse_line(fx.path, 1);
	CHECK(str_eq(data_str(event, "type"), "write"));
	CHECK(str_eq(data_str(event, "error"), "Input/output error"));
	json_object_put(event);
	fixture_teardown(&fx);
}

/* ---- reopen, open failure, NULL log, full queue ---- */

static void test_reopen_after_rename_writes_to_a_new_file_at_the_path(void)
{
	struct fixture fx;
	struct json_object *event;

	fixture_setup(&fx);
	event_log_emit(fx.log, "BEFORE_ROTATE", NULL);
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	CHECK(rename(fx.path, fx.rotated) == 0);
	event_log_request_reopen(fx.log);
	event_log_emit(fx.log, "AFTER_ROTATE", NULL);
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);

	event = parse_line(fx.path, 0);
	CHECK(str_eq(json_object_get_string(member(event, "event")),
		     "AFTER_ROTATE"));
	json_object_put(event);
	event_log_close(fx.log);
	fx.log = NULL;
	CHECK(count_lines(fx.rotated) == 1);
	CHECK(count_lines(fx.path) == 1);
	fixture_teardown(&fx);
}

/* Reopen retries later; meanwhile nothing is lost to the failure. */
static void test_failed_reopen_keeps_writing_to_the_old_file(void)
{
	struct fixture fx;
	char moved_dir[80], moved_path[128];

	fixture_setup(&fx);
	snprintf(moved_dir, sizeof(moved_dir), "%s.moved", fx.dir);
	snprintf(moved_path, sizeof(moved_path), "%s/events.jsonl", moved_dir);
	event_log_emit(fx.log, "BEFORE_MOVE", NULL);
	CHECK(wait_for_lines(fx.path, 1, SHORT_WAIT_MS) == 1);
	/* With its directory gone, the path cannot be created again. */
	CHECK(rename(fx.dir, moved_dir) == 0);
	event_log_request_reopen(fx.log);
	event_log_emit(fx.log, "AFTER_MOVE", NULL);
	CHECK(wait_for_lines(moved_path, 2, SHORT_WAIT_MS) == 2);
	CHECK(rename(moved_dir, fx.dir) == 0);
	fixture_teardown(&fx);
}

static void test_open_fails_with_enoent_and_leaves_out_unchanged(void)
{
	struct event_log *log = (struct event_log *)&log;

	CHECK(event_log_open("/nonexistent-qfs-dir/events.jsonl", &log) ==
	      -ENOENT);
	CHECK(log == (struct event_log *)&log);
}

static void test_null_log_is_a_no_op(void)
{
	/* The data object is owned by the log now; LeakSanitizer checks
	 * that a NULL log frees it. */
	event_log_emit(NULL, "MOUNTED", json_object_new_object());
	event_log_report_bad(NULL, "read", "c1", 0, 512, -EIO, "f");
	event_log_quorum_failure(NULL, "f", 0, 512);
	event_log_request_reopen(NULL);
	CHECK(event_log_dropped(NULL) == 0);
	event_log_close(NULL);
}

struct fifo_reader {
	int fd;
	int lines;
};

static void *drain_fifo(void *arg)
{
	struct fifo_reader *reader = arg;
	char buf[65536];
	ssize_t n;

	while ((n = read(reader->fd, buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < n; i++)
			reader->lines += buf[i] == '\n';
	return NULL;
}

/*
 * A FIFO nobody reads stalls the writer in write(2) like a hung disk.
 * Emitting must still return, dropping and counting what does not fit,
 * and every event is either written or counted.
 */
static void test_full_queue_drops_and_counts_instead_of_blocking(void)
{
	enum { EMITTED = 20000 };
	struct fixture fx;
	struct fifo_reader reader = {.fd = -1};
	struct event_log *log = NULL;
	pthread_t thread;
	uint64_t dropped;

	memset(&fx, 0, sizeof(fx));
	strcpy(fx.dir, "/tmp/qfs-test-events-XXXXXX");
	CHECK(mkdtemp(fx.dir) != NULL);
	snprintf(fx.path, sizeof(fx.path), "%s/fifo", fx.dir);
	CHECK(mkfifo(fx.path, 0600) == 0);
	/* Non-blocking so open succeeds without a writer; then blocking. */
	reader.fd = open(fx.path, O_RDONLY | O_NONBLOCK);
	CHECK(reader.fd >= 0);
	CHECK(event_log_open(fx.path, &log) == 0);
	CHECK(fcntl(reader.fd, F_SETFL, 0) == 0);

	for (int i = 0; i < EMITTED; i++)
		event_log_emit(log, "FLOOD", NULL);
	dropped = event_log_dropped(log);
	CHECK(dropped > 0);

	CHECK(pthread_create(&thread, NULL, drain_fifo, &reader) == 0);
	event_log_close(log); /* EOF for the reader once its fd is closed */
	pthread_join(thread, NULL);
	CHECK((uint64_t)reader.lines + dropped == EMITTED);

	close(reader.fd);
	unlink(fx.path);
	rmdir(fx.dir);
}

int main(void)
{
	alarm(120); /* a hung writer fails the run instead of stalling it */

	RUN(test_event_is_one_line_in_the_qmp_envelope);
	RUN(test_envelope_keys_come_in_qmp_order_without_slash_escapes);
	RUN(test_emit_with_null_data_writes_an_empty_data_object);
	RUN(test_report_bad_has_qemu_fields_in_qapi_order);
	RUN(test_report_bad_converts_bytes_to_512_byte_sectors);
	RUN(test_error_field_is_absent_when_the_child_lost_the_vote);
	RUN(test_error_field_is_strerror_text_of_the_negative_errno);
	RUN(test_quorum_failure_has_reference_and_sectors);
	RUN(test_report_bad_for_one_node_keeps_only_the_last_of_a_window);
	RUN(test_report_bad_for_another_node_is_not_delayed);
	RUN(test_quorum_failure_is_throttled_under_one_global_key);
	RUN(test_a_window_that_ends_quietly_lets_the_next_event_out);
	RUN(test_close_writes_the_pending_throttled_event);
	RUN(test_reopen_after_rename_writes_to_a_new_file_at_the_path);
	RUN(test_failed_reopen_keeps_writing_to_the_old_file);
	RUN(test_open_fails_with_enoent_and_leaves_out_unchanged);
	RUN(test_null_log_is_a_no_op);
	RUN(test_full_queue_drops_and_counts_instead_of_blocking);

	return unit_summary();
}
