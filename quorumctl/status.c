/*
 * `quorumctl status`: the set as a table, in the manner of zpool status,
 * and an exit status that says whether it is whole.
 *
 * A resync's rate is measured: when a child is syncing, the status is
 * read twice a second apart, and its ETA follows from that rate. A
 * scrub's rate is its average since it started (the status has its
 * start).
 */
#define _GNU_SOURCE
#include "quorumctl/quorumctl.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RATE_WINDOW_S 1.0
#define FINDINGS_SHOWN 10

enum qctl_health qctl_health(struct json_object *status)
{
	struct json_object *children = qctl_get(status, "children");
	size_t n = json_object_array_length(children), ok = 0;

	for (size_t i = 0; i < n; i++)
		ok += strcmp(qctl_str(json_object_array_get_idx(children, i),
				      "state"),
			     "ok") == 0;
	if (qctl_int(qctl_get(status, "totals"), "voting") <
	    qctl_int(status, "threshold"))
		return QCTL_UNAVAILABLE;
	return ok == n ? QCTL_ONLINE : QCTL_DEGRADED_SET;
}

static const char *health_name(enum qctl_health h)
{
	return h == QCTL_ONLINE	       ? "ONLINE"
	       : h == QCTL_UNAVAILABLE ? "UNAVAILABLE"
				       : "DEGRADED";
}

/* One line for each directory's policy: "gold threshold 3, fifo". */
static void print_policies(struct json_object *status)
{
	struct json_object *list = qctl_get(status, "policies");
	size_t n = list && json_object_is_type(list, json_type_array)
			   ? json_object_array_length(list)
			   : 0;

	for (size_t i = 0; i < n; i++) {
		struct json_object *p = json_object_array_get_idx(list, i);
		struct json_object *v;

		printf("  policy: %s threshold %lld", qctl_str(p, "dir"),
		       (long long)qctl_int(p, "threshold"));
		if (*qctl_str(p, "read-pattern"))
			printf(", read-pattern %s",
			       qctl_str(p, "read-pattern"));
		if (json_object_object_get_ex(p, "rewrite-corrupted", &v) && v)
			printf(", rewrite-corrupted %s",
			       json_object_get_boolean(v) ? "on" : "off");
		printf("\n");
	}
}

static void print_header(const struct qctl_mount *m, struct json_object *status)
{
	struct json_object *totals = qctl_get(status, "totals");
	enum qctl_health h = qctl_health(status);
	const char *log = qctl_str(status, "log");

	printf("   mount: %s\n", m->mountpoint);
	if (m->source)
		printf("  source: %s\n", m->source);
	printf("   state: %s: %lld of %lld children vote, threshold %lld%s\n",
	       health_name(h), (long long)qctl_int(totals, "voting"),
	       (long long)qctl_int(totals, "children"),
	       (long long)qctl_int(status, "threshold"),
	       h == QCTL_UNAVAILABLE ? " (no quorum: changes fail)" : "");
	printf("   rules: read-pattern %s, rewrite-corrupted %s%s, "
	       "io-timeout %lld ms\n",
	       qctl_str(status, "read-pattern"),
	       qctl_bool(status, "rewrite-corrupted") ? "on" : "off",
	       qctl_bool(status, "blkverify") ? ", blkverify" : "",
	       (long long)qctl_int(status, "io-timeout-ms"));
	print_policies(status);
	printf("  daemon: quorumfs %s, pid %lld, log %s, socket %s\n",
	       *qctl_str(status, "version") ? qctl_str(status, "version") : "?",
	       (long long)qctl_int(status, "pid"), *log ? log : "none",
	       *qctl_str(status, "control-socket")
		       ? qctl_str(status, "control-socket")
		       : "none");
}

/* The resync line of a syncing child; rate < 0 when not measured. */
static void print_resync(struct json_object *child, double rate)
{
	struct json_object *r = qctl_get(child, "resync");
	double done = qctl_int(r, "bytes-done"),
	       total = qctl_int(r, "bytes-total");
	char d[32], t[32], s[32], eta[32];

	printf(" resync %lld%%: %s of %s, %lld of %lld files",
	       (long long)qctl_int(r, "percent"), qctl_bytes(d, 32, done),
	       qctl_bytes(t, 32, total), (long long)qctl_int(r, "files-done"),
	       (long long)qctl_int(r, "files-total"));
	if (rate >= 0)
		printf(", %s/s, %s left", qctl_bytes(s, 32, rate),
		       rate > 0 ? qctl_duration(eta, 32, (total - done) / rate)
				: "-");
	printf("\n");
}

/* What the child's quarantine holds, when it holds anything. */
static void print_quarantine(struct json_object *c, int width)
{
	struct json_object *q = qctl_get(c, "quarantine");
	char b[32], l[32];

	if (qctl_int(q, "entries") <= 0)
		return;
	printf("  %-*s quarantine: %lld entries, %s of %s\n", width, "",
	       (long long)qctl_int(q, "entries"),
	       qctl_bytes(b, 32, qctl_int(q, "bytes")),
	       qctl_bytes(l, 32, qctl_int(q, "limit")));
}

static void print_child(struct json_object *c, int width, double rate)
{
	struct json_object *e = qctl_get(c, "errors");
	const char *name = qctl_str(c, "name"), *path = qctl_str(c, "path");

	printf("  %-*s %-8s %-5s %5lld %5lld %5lld %5lld %6lld\n", width, name,
	       qctl_str(c, "state"), qctl_bool(c, "votes") ? "yes" : "no",
	       (long long)qctl_int(e, "read"), (long long)qctl_int(e, "write"),
	       (long long)qctl_int(e, "flush"),
	       (long long)qctl_int(c, "timed-out-requests"),
	       (long long)qctl_int(c, "scrub-mismatches"));
	if (strcmp(name, path) != 0)
		printf("  %-*s path %s\n", width, "", path);
	if (*qctl_str(c, "reason"))
		printf("  %-*s %s\n", width, "", qctl_str(c, "reason"));
	if (strcmp(qctl_str(c, "state"), "syncing") == 0) {
		printf("  %-*s", width, "");
		print_resync(c, rate);
	}
	print_quarantine(c, width);
}

/* rates[i]: child i's resync rate in bytes/s, or -1. */
static void print_children(struct json_object *status, const double *rates)
{
	struct json_object *children = qctl_get(status, "children");
	size_t n = json_object_array_length(children);
	int width = 5;

	for (size_t i = 0; i < n; i++) {
		int len = (int)strlen(qctl_str(
			json_object_array_get_idx(children, i), "name"));

		width = len > width ? len : width;
	}
	printf("\n  %-*s %-8s %-5s %5s %5s %5s %5s %6s\n", width, "CHILD",
	       "STATE", "VOTES", "READ", "WRITE", "FLUSH", "HUNG", "SCRUB");
	for (size_t i = 0; i < n; i++)
		print_child(json_object_array_get_idx(children, i), width,
			    i < 64 ? rates[i] : -1);
	printf("\n");
}

static void print_scrub_running(struct json_object *s)
{
	double done = qctl_int(s, "bytes-done"),
	       total = qctl_int(s, "bytes-total");
	double took = (double)time(NULL) - qctl_int(s, "started");
	double rate = took > 0 ? done / took : 0;
	char a[32], b[32], r[32], eta[32], when[32];

	printf("   scrub: %s running since %s: %.0f%%, %s of %s, %lld of %lld "
	       "files, %s/s, %s left; %lld mismatches so far\n",
	       qctl_bool(s, "repair") ? "repair" : "check",
	       qctl_time(when, 32, qctl_int(s, "started")),
	       total > 0 ? 100 * done / total : 100, qctl_bytes(a, 32, done),
	       qctl_bytes(b, 32, total), (long long)qctl_int(s, "files-done"),
	       (long long)qctl_int(s, "files-total"), qctl_bytes(r, 32, rate),
	       rate > 0 ? qctl_duration(eta, 32, (total - done) / rate) : "-",
	       (long long)qctl_int(s, "mismatches"));
}

static void print_scrub_ended(struct json_object *s)
{
	char b[32], when[32], took[32];

	printf("   scrub: %s %s %s after %s: %lld files, %s; %lld mismatches, "
	       "%lld repaired, %lld unrecoverable\n",
	       qctl_bool(s, "repair") ? "repair" : "check",
	       qctl_str(s, "state"),
	       qctl_time(when, 32, qctl_int(s, "finished")),
	       qctl_duration(took, 32,
			     qctl_int(s, "finished") - qctl_int(s, "started")),
	       (long long)qctl_int(s, "files-done"),
	       qctl_bytes(b, 32, qctl_int(s, "bytes-done")),
	       (long long)qctl_int(s, "mismatches"),
	       (long long)qctl_int(s, "repaired"),
	       (long long)qctl_int(s, "unrecoverable"));
	if (*qctl_str(s, "reason"))
		printf("          %s\n", qctl_str(s, "reason"));
}

static void print_findings(struct json_object *s)
{
	struct json_object *f = qctl_get(s, "findings");
	size_t n = json_object_array_length(f);
	size_t first = n > FINDINGS_SHOWN ? n - FINDINGS_SHOWN : 0;
	char len[32];

	if (!n)
		return;
	printf("findings: the last %zu of %lld\n", n - first,
	       (long long)qctl_int(s, "mismatches"));
	for (size_t i = first; i < n; i++) {
		struct json_object *x = json_object_array_get_idx(f, i);

		printf("          %s: %s on %s, offset %lld, %s%s\n",
		       qctl_str(x, "path"), qctl_str(x, "kind"),
		       *qctl_str(x, "node-name") ? qctl_str(x, "node-name")
						 : "no child (no quorum)",
		       (long long)qctl_int(x, "offset"),
		       qctl_bytes(len, 32, qctl_int(x, "length")),
		       qctl_bool(x, "repaired") ? ", repaired" : "");
	}
}

static void print_status(const struct qctl_mount *m, struct json_object *status,
			 const double *rates)
{
	struct json_object *s = qctl_get(status, "scrub");
	struct json_object *last = qctl_get(status, "last-control-error");
	const char *state = qctl_str(s, "state");

	print_header(m, status);
	print_children(status, rates);
	if (strcmp(state, "running") == 0)
		print_scrub_running(s);
	else if (*state && strcmp(state, "idle") != 0)
		print_scrub_ended(s);
	else
		printf("   scrub: none since the mount\n");
	print_findings(s);
	if (last)
		printf(" refused: %s: %s\n", qctl_str(last, "command"),
		       qctl_str(last, "reason"));
	if (qctl_int(status, "events-dropped"))
		printf("  events: %lld dropped (the log's queue was full)\n",
		       (long long)qctl_int(status, "events-dropped"));
}

static bool any_syncing(struct json_object *status)
{
	struct json_object *children = qctl_get(status, "children");

	for (size_t i = 0; i < json_object_array_length(children); i++)
		if (strcmp(qctl_str(json_object_array_get_idx(children, i),
				    "state"),
			   "syncing") == 0)
			return true;
	return false;
}

/*
 * The status, and each child's resync rate over RATE_WINDOW_S when one
 * is syncing (rates[i] = -1 where none was measured). Returns the later
 * of the two documents, or NULL.
 */
static struct json_object *sample(const struct qctl_mount *m, double *rates)
{
	struct json_object *a = qctl_status(m), *b, *ca, *cb;
	double t0 = qctl_now(), dt;

	for (int i = 0; i < 64; i++)
		rates[i] = -1;
	if (!a || !any_syncing(a))
		return a;
	qctl_sleep(RATE_WINDOW_S);
	b = qctl_status(m);
	dt = qctl_now() - t0;
	ca = qctl_get(a, "children");
	cb = qctl_get(b, "children");
	for (size_t i = 0; b && i < json_object_array_length(cb) && i < 64;
	     i++) {
		struct json_object *x = json_object_array_get_idx(cb, i);
		struct json_object *y = json_object_array_get_idx(ca, i);

		if (y &&
		    strcmp(qctl_str(x, "name"), qctl_str(y, "name")) == 0 &&
		    strcmp(qctl_str(x, "state"), "syncing") == 0)
			rates[i] =
				(qctl_int(qctl_get(x, "resync"), "bytes-done") -
				 qctl_int(qctl_get(y, "resync"),
					  "bytes-done")) /
				dt;
	}
	json_object_put(a);
	return b;
}

/* Status of one mount: printed; QCTL_OK, QCTL_DEGRADED or QCTL_ERROR. */
static int status_of(const struct qctl_mount *m, const struct qctl_opts *o,
		     struct json_object *array)
{
	double rates[64];
	struct json_object *status =
		o->json ? qctl_status(m) : sample(m, rates);
	int ret;

	if (!status)
		return QCTL_ERROR;
	ret = qctl_health(status) == QCTL_ONLINE ? QCTL_OK : QCTL_DEGRADED;
	if (array)
		json_object_array_add(array, json_object_get(status));
	else if (o->json)
		printf("%s\n",
		       json_object_to_json_string_ext(
			       status, JSON_C_TO_STRING_PRETTY |
					       JSON_C_TO_STRING_NOSLASHESCAPE));
	else
		print_status(m, status, rates);
	json_object_put(status);
	return ret;
}

/* The worse of two exit statuses. */
static int worse(int a, int b)
{
	return a > b ? a : b;
}

int qctl_cmd_status(int argc, char **argv, const struct qctl_opts *o)
{
	struct json_object *array = NULL;
	struct qctl_mount *all = NULL, one;
	int n = 0, ret = QCTL_OK;

	for (int i = 0; i < argc; i++) {
		if (qctl_find_mount(argv[i], o, &one)) {
			ret = QCTL_ERROR;
			continue;
		}
		if (i > 0 && !o->json)
			printf("\n");
		ret = worse(ret, status_of(&one, o, NULL));
		qctl_mount_release(&one);
	}
	if (argc)
		return ret;
	n = qctl_all_mounts(o, &all);
	if (n == 0 && !o->json)
		printf("no quorumfs mounts\n");
	array = o->json ? json_object_new_array() : NULL;
	for (int i = 0; i < n; i++) {
		if (i > 0 && !o->json)
			printf("\n");
		ret = worse(ret, status_of(&all[i], o, array));
		qctl_mount_release(&all[i]);
	}
	free(all);
	if (array)
		printf("%s\n",
		       json_object_to_json_string_ext(
			       array, JSON_C_TO_STRING_PRETTY |
					      JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(array);
	return n < 0 ? QCTL_ERROR : ret;
}
