/*
 * `quorumctl metrics`: the Prometheus text exposition format (version
 * 0.0.4) of every mount's status, for node_exporter's textfile collector
 * or a scrape through a small exporter. Each family is printed once,
 * with the samples of every mount (label mountpoint), as the format
 * requires.
 */
#define _GNU_SOURCE
#include "quorumctl/quorumctl.h"

#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One mount's answer: status is NULL when its daemon did not answer. */
struct scrape {
	const char *mountpoint;
	struct json_object *status;
};

struct family {
	const char *name, *type, *help;
	/* Print this family's samples for one mount. */
	void (*emit)(const struct family *f, const struct scrape *s);
};

static void put_label(const char *key, const char *value)
{
	printf("%s=\"", key);
	for (const char *p = value; *p; p++) {
		if (*p == '\\' || *p == '"')
			putchar('\\');
		if (*p == '\n')
			fputs("\\n", stdout);
		else
			putchar(*p);
	}
	putchar('"');
}

/* name{mountpoint="M",k1="v1",...} value; the labels after value are
 * key, value pairs ended by NULL. */
static void put(const char *name, const struct scrape *s, double value, ...)
{
	const char *k, *v;
	va_list ap;

	printf("%s{", name);
	put_label("mountpoint", s->mountpoint);
	va_start(ap, value);
	while ((k = va_arg(ap, const char *)) &&
	       (v = va_arg(ap, const char *))) {
		putchar(',');
		put_label(k, v);
	}
	va_end(ap);
	printf("} %.17g\n", value);
}

static void emit_up(const struct family *f, const struct scrape *s)
{
	put(f->name, s, s->status != NULL, NULL);
}

static void emit_info(const struct family *f, const struct scrape *s)
{
	put(f->name, s, 1, "version", qctl_str(s->status, "version"),
	    "read_pattern", qctl_str(s->status, "read-pattern"), NULL);
}

/* A number of the status itself: threshold and the totals. */
static void emit_number(const struct family *f, const struct scrape *s)
{
	struct json_object *totals = qctl_get(s->status, "totals");
	const char *which = f->name + strlen("quorumfs_");
	double v = 0;

	if (strcmp(which, "threshold") == 0)
		v = qctl_int(s->status, "threshold");
	else if (strcmp(which, "children") == 0)
		v = qctl_int(totals, "children");
	else if (strcmp(which, "voting_children") == 0)
		v = qctl_int(totals, "voting");
	else if (strcmp(which, "degraded") == 0)
		v = qctl_health(s->status) != QCTL_ONLINE;
	else if (strcmp(which, "events_dropped_total") == 0)
		v = qctl_int(s->status, "events-dropped");
	put(f->name, s, v, NULL);
}

static void emit_child_state(const struct family *f, const struct scrape *s)
{
	static const char *const states[] = {"ok", "syncing", "stale",
					     "failed"};
	struct json_object *children = qctl_get(s->status, "children");

	for (size_t i = 0; i < json_object_array_length(children); i++) {
		struct json_object *c = json_object_array_get_idx(children, i);

		for (int k = 0; k < 4; k++)
			put(f->name, s,
			    strcmp(qctl_str(c, "state"), states[k]) == 0,
			    "child", qctl_str(c, "name"), "state", states[k],
			    NULL);
	}
}

static void emit_child_errors(const struct family *f, const struct scrape *s)
{
	static const char *const types[] = {"read", "write", "flush"};
	struct json_object *children = qctl_get(s->status, "children");

	for (size_t i = 0; i < json_object_array_length(children); i++) {
		struct json_object *c = json_object_array_get_idx(children, i);

		for (int k = 0; k < 3; k++)
			put(f->name, s,
			    qctl_int(qctl_get(c, "errors"), types[k]), "child",
			    qctl_str(c, "name"), "type", types[k], NULL);
	}
}

/* The object of child c a per-child family's key is in. */
static struct json_object *child_part(struct json_object *c, const char *family)
{
	if (strstr(family, "_resync_"))
		return qctl_get(c, "resync");
	if (strstr(family, "_quarantine_"))
		return qctl_get(c, "quarantine");
	return c;
}

/* A per-child number: family name to the status key it comes from. */
static void emit_child_number(const struct family *f, const struct scrape *s)
{
	static const char *const keys[][2] = {
		{"quorumfs_child_timed_out_requests", "timed-out-requests"},
		{"quorumfs_child_scrub_mismatches_total", "scrub-mismatches"},
		{"quorumfs_child_resync_bytes_done", "bytes-done"},
		{"quorumfs_child_resync_bytes_total", "bytes-total"},
		{"quorumfs_child_resync_files_done", "files-done"},
		{"quorumfs_child_resync_files_total", "files-total"},
		{"quorumfs_child_quarantine_entries", "entries"},
		{"quorumfs_child_quarantine_bytes", "bytes"},
		{"quorumfs_child_quarantine_limit_bytes", "limit"},
	};
	struct json_object *children = qctl_get(s->status, "children");

	for (size_t i = 0; i < json_object_array_length(children); i++) {
		struct json_object *c = json_object_array_get_idx(children, i);
		struct json_object *in = child_part(c, f->name);

		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
			if (strcmp(f->name, keys[k][0]) == 0)
				put(f->name, s, qctl_int(in, keys[k][1]),
				    "child", qctl_str(c, "name"), NULL);
	}
}

/* The running or last scrub: family name after quorumfs_scrub_ to key. */
static void emit_scrub(const struct family *f, const struct scrape *s)
{
	struct json_object *scrub = qctl_get(s->status, "scrub");
	const char *which = f->name + strlen("quorumfs_scrub_");
	char key[64];

	if (strcmp(which, "running") == 0) {
		put(f->name, s,
		    strcmp(qctl_str(scrub, "state"), "running") == 0, NULL);
		return;
	}
	if (strcmp(which, "last_start_timestamp_seconds") == 0)
		snprintf(key, sizeof(key), "started");
	else if (strcmp(which, "last_end_timestamp_seconds") == 0)
		snprintf(key, sizeof(key), "finished");
	else
		snprintf(key, sizeof(key), "%s", which);
	for (char *p = key; *p; p++)
		*p = *p == '_' ? '-' : *p;
	put(f->name, s, qctl_int(scrub, key), NULL);
}

static const char *const request_ops[] = {"read", "write", "flush"};

/* Requests of each class: family name after quorumfs_request to key. */
static void emit_requests(const struct family *f, const struct scrape *s)
{
	struct json_object *r = qctl_get(s->status, "requests");
	const char *key = strstr(f->name, "errors")  ? "errors"
			  : strstr(f->name, "bytes") ? "bytes"
						     : "count";

	for (int k = 0; r && k < 3; k++)
		put(f->name, s, qctl_int(qctl_get(r, request_ops[k]), key),
		    "op", request_ops[k], NULL);
}

/* The latency histogram of one class: cumulative buckets, sum, count. */
static void emit_histogram(const struct family *f, const struct scrape *s,
			   struct json_object *le, const char *op)
{
	struct json_object *c = qctl_get(qctl_get(s->status, "requests"), op);
	struct json_object *buckets = qctl_get(c, "buckets");
	size_t n = json_object_array_length(buckets);
	char name[128], bound[32];
	double total = 0;

	snprintf(name, sizeof(name), "%s_bucket", f->name);
	for (size_t b = 0; b < n; b++) {
		total += json_object_get_int64(
			json_object_array_get_idx(buckets, b));
		if (b + 1 < n)
			snprintf(bound, sizeof(bound), "%g",
				 json_object_get_double(
					 json_object_array_get_idx(le, b)));
		put(name, s, total, "op", op, "le", b + 1 < n ? bound : "+Inf",
		    NULL);
	}
	snprintf(name, sizeof(name), "%s_sum", f->name);
	put(name, s, json_object_get_double(qctl_get(c, "seconds")), "op", op,
	    NULL);
	snprintf(name, sizeof(name), "%s_count", f->name);
	put(name, s, qctl_int(c, "count"), "op", op, NULL);
}

static void emit_durations(const struct family *f, const struct scrape *s)
{
	struct json_object *le =
		qctl_get(qctl_get(s->status, "requests"), "le");

	for (int k = 0; le && k < 3; k++)
		emit_histogram(f, s, le, request_ops[k]);
}

#define SCRUB(name, help)                                                      \
	{                                                                      \
		"quorumfs_scrub_" name, "gauge", help, emit_scrub              \
	}
#define CHILD(name, type, help)                                                \
	{                                                                      \
		"quorumfs_child_" name, type, help, emit_child_number          \
	}

static const struct family families[] = {
	{"quorumfs_up", "gauge", "1 when the mount's daemon answered, else 0",
	 emit_up},
	{"quorumfs_info", "gauge",
	 "the daemon's version and read pattern, as labels (always 1)",
	 emit_info},
	{"quorumfs_threshold", "gauge",
	 "votes a read needs and children a write needs", emit_number},
	{"quorumfs_children", "gauge", "members of the set", emit_number},
	{"quorumfs_voting_children", "gauge", "members that vote (state ok)",
	 emit_number},
	{"quorumfs_degraded", "gauge", "1 when a member is not ok",
	 emit_number},
	{"quorumfs_child_state", "gauge",
	 "1 for the child's state (ok, syncing, stale, failed), 0 for the "
	 "others",
	 emit_child_state},
	{"quorumfs_child_errors_total", "counter",
	 "read, write and flush errors of the child since the mount",
	 emit_child_errors},
	CHILD("timed_out_requests", "gauge",
	      "requests the child did not answer within io-timeout that "
	      "still run there"),
	CHILD("scrub_mismatches_total", "counter",
	      "scrub findings blamed on the child since the mount or its add"),
	CHILD("resync_bytes_done", "gauge", "bytes its resync has copied"),
	CHILD("resync_bytes_total", "gauge", "bytes its resync copies"),
	CHILD("resync_files_done", "gauge", "files its resync has copied"),
	CHILD("resync_files_total", "gauge", "files its resync copies"),
	CHILD("quarantine_entries", "gauge",
	      "entries its quarantine holds (what repairs overwrote)"),
	CHILD("quarantine_bytes", "gauge", "bytes its quarantine holds"),
	CHILD("quarantine_limit_bytes", "gauge",
	      "bytes its quarantine may hold (quarantine-limit; 0: off)"),
	SCRUB("running", "1 while a scrub runs"),
	SCRUB("files_done", "files the running or last scrub compared"),
	SCRUB("files_total", "files the running or last scrub compares"),
	SCRUB("bytes_done", "bytes the running or last scrub compared"),
	SCRUB("bytes_total", "bytes the running or last scrub compares"),
	SCRUB("mismatches", "findings of the running or last scrub"),
	SCRUB("repaired", "findings it repaired"),
	SCRUB("unrecoverable", "findings no version could win (no quorum)"),
	SCRUB("last_start_timestamp_seconds",
	      "when the running or last scrub started (0: none)"),
	SCRUB("last_end_timestamp_seconds",
	      "when the last scrub ended (0: none, or running)"),
	{"quorumfs_events_dropped_total", "counter",
	 "events lost because the log's queue was full", emit_number},
	{"quorumfs_requests_total", "counter",
	 "data requests answered since the mount, by op (read, write, flush)",
	 emit_requests},
	{"quorumfs_request_errors_total", "counter",
	 "data requests answered with an error, by op", emit_requests},
	{"quorumfs_request_bytes_total", "counter",
	 "bytes read and written by the requests, by op", emit_requests},
	{"quorumfs_request_duration_seconds", "histogram",
	 "time from a request reaching the daemon to its answer, by op",
	 emit_durations},
};

static void print_families(const struct scrape *scrapes, int n)
{
	for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
		const struct family *f = &families[i];

		printf("# HELP %s %s\n# TYPE %s %s\n", f->name, f->help,
		       f->name, f->type);
		for (int k = 0; k < n; k++)
			if (scrapes[k].status || f->emit == emit_up)
				f->emit(f, &scrapes[k]);
	}
}

/* The mounts asked for (all when none is named) into *out: their number,
 * or -1 - the number found when some were not (said why). */
static int mounts_of(int argc, char **argv, const struct qctl_opts *o,
		     struct qctl_mount **out)
{
	int n = 0;

	if (!argc)
		return qctl_all_mounts(o, out);
	*out = calloc(argc, sizeof(**out));
	for (int i = 0; *out && i < argc; i++)
		if (qctl_find_mount(argv[i], o, &(*out)[n]) == QCTL_OK)
			n++;
	return *out && n == argc ? n : -1 - n;
}

int qctl_cmd_metrics(int argc, char **argv, const struct qctl_opts *o)
{
	struct qctl_mount *mounts = NULL;
	struct scrape *scrapes;
	int n = mounts_of(argc, argv, o, &mounts), ret = QCTL_OK;
	int found = n < 0 ? -1 - n : n;

	scrapes = calloc(found ? found : 1, sizeof(*scrapes));
	for (int i = 0; scrapes && i < found; i++) {
		scrapes[i].mountpoint = mounts[i].mountpoint;
		scrapes[i].status = qctl_status(&mounts[i]);
		if (!scrapes[i].status)
			ret = QCTL_ERROR;
	}
	if (scrapes)
		print_families(scrapes, found);
	for (int i = 0; i < found; i++) {
		json_object_put(scrapes ? scrapes[i].status : NULL);
		qctl_mount_release(&mounts[i]);
	}
	free(scrapes);
	free(mounts);
	return n < 0 || !scrapes ? QCTL_ERROR : ret;
}
