/*
 * `quorumctl events`: the mount's event log (its path comes from the
 * status), as readable lines or as the raw JSON lines, optionally
 * followed as it grows, across logrotate's moves and truncations.
 */
#define _GNU_SOURCE
#include "quorumctl/quorumctl.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FOLLOW_POLL_S 0.2

/* A value as a reader wants it: plain words bare, the rest as JSON. */
static void print_value(struct json_object *v)
{
	const char *s = json_object_get_string(v);

	if (json_object_is_type(v, json_type_string) && *s &&
	    !strpbrk(s, " \t\"=\\"))
		fputs(s, stdout);
	else
		fputs(json_object_to_json_string_ext(
			      v, JSON_C_TO_STRING_PLAIN |
					 JSON_C_TO_STRING_NOSLASHESCAPE),
		      stdout);
}

/* One line of the log, readable: local time, event, key=value... */
static void print_event(const char *line, bool json)
{
	struct json_object *e = json ? NULL : json_tokener_parse(line);
	struct json_object *ts = qctl_get(e, "timestamp");
	char when[32];

	if (!e) {
		fputs(line, stdout);
		return;
	}
	printf("%s.%06lld %s", qctl_time(when, 32, qctl_int(ts, "seconds")),
	       (long long)qctl_int(ts, "microseconds"), qctl_str(e, "event"));
	json_object_object_foreach(qctl_get(e, "data"), key, val)
	{
		printf(" %s=", key);
		if (val)
			print_value(val);
		else
			fputs("null", stdout);
	}
	printf("\n");
	json_object_put(e);
}

/* The last n lines kept while reading (n <= 0: print as they come). */
struct tail {
	long n, count;
	char **ring;
	bool json;
};

static void take_line(struct tail *t, char *line)
{
	if (t->n < 0) {
		print_event(line, t->json);
		return;
	}
	if (t->n == 0)
		return;
	free(t->ring[t->count % t->n]);
	t->ring[t->count++ % t->n] = strdup(line);
}

static void flush_tail(struct tail *t)
{
	long first = t->count > t->n ? t->count - t->n : 0;

	for (long i = first; t->n > 0 && i < t->count; i++) {
		print_event(t->ring[i % t->n], t->json);
		free(t->ring[i % t->n]);
	}
	free(t->ring);
	t->n = -1; /* from now on, as they come */
}

/*
 * Read what f has, whole lines only: a last line without its newline
 * (the writer is half-way) stays in *partial for the next call.
 */
static void read_lines(FILE *f, struct tail *t, char **partial)
{
	char *line = NULL, *joined;
	size_t cap = 0;
	ssize_t len;

	while ((len = getline(&line, &cap, f)) > 0) {
		if (*partial) {
			if (asprintf(&joined, "%s%s", *partial, line) < 0)
				break;
			free(*partial);
			*partial = NULL;
		} else {
			joined = strdup(line);
		}
		if (joined && joined[strlen(joined) - 1] != '\n') {
			*partial = joined;
		} else if (joined) {
			take_line(t, joined);
			free(joined);
		}
	}
	free(line);
	clearerr(f);
	fflush(stdout);
}

/* Follow path: reopen it when logrotate moved it, rewind when it was
 * truncated under us. Returns only on an error. */
static int follow(FILE *f, const char *path, struct tail *t)
{
	char *partial = NULL;
	struct stat now, open_st;

	for (;;) {
		read_lines(f, t, &partial);
		qctl_sleep(FOLLOW_POLL_S);
		if (fstat(fileno(f), &open_st) || stat(path, &now))
			continue; /* moved and not yet recreated */
		if (now.st_ino != open_st.st_ino ||
		    now.st_dev != open_st.st_dev) {
			read_lines(f, t, &partial);
			fclose(f);
			f = fopen(path, "re");
			if (!f)
				return qctl_error("%s: cannot reopen", path);
		} else if (ftell(f) > now.st_size) {
			rewind(f);
		}
	}
}

int qctl_cmd_events(int argc, char **argv, const struct qctl_opts *o)
{
	struct tail t = {.n = o->lines, .json = o->json};
	struct json_object *status;
	struct qctl_mount m;
	char *path = NULL, *partial = NULL;
	FILE *f = NULL;

	if (argc != 1)
		return qctl_error("usage: quorumctl events MOUNTPOINT "
				  "[--follow] [--json] [-n N]");
	if (qctl_find_mount(argv[0], o, &m))
		return QCTL_ERROR;
	status = qctl_status(&m);
	if (status && *qctl_str(status, "log"))
		path = strdup(qctl_str(status, "log"));
	else if (status)
		qctl_error("%s has no event log (mount it with -o log=PATH)",
			   m.mountpoint);
	json_object_put(status);
	qctl_mount_release(&m);
	if (path && !(f = fopen(path, "re")))
		qctl_error("cannot open %s", path);
	if (!f) {
		free(path);
		return QCTL_ERROR;
	}
	t.ring = t.n > 0 ? calloc(t.n, sizeof(char *)) : NULL;
	if (t.n > 0 && !t.ring)
		t.n = -1; /* out of memory: everything, then */
	read_lines(f, &t, &partial);
	free(partial);
	flush_tail(&t);
	if (o->follow)
		return follow(f, path, &t);
	fclose(f);
	free(path);
	return QCTL_OK;
}
