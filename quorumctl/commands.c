/*
 * The control commands as subcommands: the words are quoted for the
 * daemon's parser (config_parse_command), a refusal is printed with the
 * daemon's reason, and --wait follows a resync or a scrub to its end.
 */
#define _GNU_SOURCE
#include "quorumctl/quorumctl.h"

#include <ctype.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"

#define POLL_S 0.2

struct verb {
	const char *name;
	int min, max; /* words after the mountpoint */
	const char *usage;
};

static const struct verb verbs[] = {
	{"add", 1, 3,
	 "add MOUNTPOINT PATH [name=NAME] [mode=primary|witness] [--wait]"},
	{"remove", 1, 1, "remove MOUNTPOINT NAME"},
	{"threshold", 1, 1, "threshold MOUNTPOINT N"},
	{"read-pattern", 1, 1, "read-pattern MOUNTPOINT quorum|fifo"},
	{"rewrite-corrupted", 1, 1, "rewrite-corrupted MOUNTPOINT on|off"},
	{"resync", 1, 1, "resync MOUNTPOINT NAME [--wait]"},
	{"scrub", 1, 2,
	 "scrub MOUNTPOINT start|repair [rate=N] [--wait] | stop"},
	{"policy", 2, 4,
	 "policy MOUNTPOINT DIR threshold=N [read-pattern=quorum|fifo] "
	 "[rewrite-corrupted=on|off] | clear"},
	{"quarantine", 1, 2,
	 "quarantine MOUNTPOINT list | restore ID | purge ID|all"},
	{"repair", 2, 4, "repair MOUNTPOINT FILE from=CHILD [OFFSET LENGTH]"},
	{"replication", 1, 4,
	 "replication MOUNTPOINT start|checkpoint|get-error|stop|commit "
	 "[primary|secondary] [failover] [NAME]"},
};

/* Append word to the command, every byte the parser could take for
 * something else behind a backslash. false when it does not fit. */
static bool append_word(char *buf, size_t size, size_t *n, const char *word)
{
	if (*n && *n + 1 < size)
		buf[(*n)++] = ' ';
	for (const char *p = word; *p; p++) {
		if (!isalnum((unsigned char)*p) && !strchr("/._-=:+,@%", *p)) {
			if (*n + 1 >= size)
				return false;
			buf[(*n)++] = '\\';
		}
		if (*n + 1 >= size)
			return false;
		buf[(*n)++] = *p;
	}
	buf[*n] = '\0';
	return true;
}

/* The path add names, made absolute against the working directory. */
static char *absolute(const char *path)
{
	char cwd[PATH_MAX], *out = NULL;

	if (path[0] == '/' || !getcwd(cwd, sizeof(cwd)))
		return strdup(path);
	return asprintf(&out, "%s/%s", cwd, path) < 0 ? NULL : out;
}

static const struct verb *find_verb(const char *name)
{
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (strcmp(verbs[i].name, name) == 0)
			return &verbs[i];
	return NULL;
}

bool qctl_is_control_verb(const char *name)
{
	return find_verb(name) != NULL;
}

/* The command line for the daemon, or false (said why). */
static bool build(const struct verb *v, int argc, char **argv, char *buf,
		  size_t size)
{
	size_t n = 0;
	bool ok = append_word(buf, size, &n, v->name);

	for (int i = 0; ok && i < argc; i++) {
		char *word = strcmp(v->name, "add") == 0 && i == 0
				     ? absolute(argv[i])
				     : strdup(argv[i]);

		ok = word && append_word(buf, size, &n, word);
		free(word);
	}
	if (!ok)
		qctl_error("the command is longer than the daemon takes");
	return ok;
}

/* Print a refusal in words; the exit status of the reply. */
static int report(struct json_object *reply, const char *command)
{
	if (!reply)
		return QCTL_ERROR;
	if (qctl_bool(reply, "ok"))
		return QCTL_OK;
	fflush(stdout);
	fprintf(stderr, "quorumctl: '%s' was refused: %s (%s)\n", command,
		qctl_str(reply, "reason"), qctl_str(reply, "error"));
	return QCTL_DEGRADED;
}

/* The child called name (or with that path) in status, or NULL. */
static struct json_object *child_named(struct json_object *status,
				       const char *name)
{
	struct json_object *children = qctl_get(status, "children");

	for (size_t i = 0; i < json_object_array_length(children); i++) {
		struct json_object *c = json_object_array_get_idx(children, i);

		if (strcmp(qctl_str(c, "name"), name) == 0 ||
		    strcmp(qctl_str(c, "path"), name) == 0)
			return c;
	}
	return NULL;
}

/* One poll of a resync: -1 go on, else the exit status (printed). */
static int resync_state(struct json_object *status, const char *name)
{
	struct json_object *c = child_named(status, name);
	const char *state = qctl_str(c, "state");

	if (!status)
		return QCTL_ERROR;
	if (!c) {
		fprintf(stderr, "quorumctl: %s is no longer a child\n", name);
		return QCTL_DEGRADED;
	}
	if (strcmp(state, "ok") == 0) {
		printf("%s: in step and voting\n", name);
		return QCTL_OK;
	}
	if (strcmp(state, "syncing") == 0)
		return -1;
	fprintf(stderr, "quorumctl: %s is %s: %s\n", name, state,
		qctl_str(c, "reason"));
	return QCTL_DEGRADED;
}

/* One poll of a scrub: -1 go on, else the exit status (printed). */
static int scrub_state(struct json_object *status)
{
	struct json_object *s = qctl_get(status, "scrub");
	const char *state = qctl_str(s, "state");

	if (!status)
		return QCTL_ERROR;
	if (strcmp(state, "running") == 0)
		return -1;
	printf("scrub %s: %lld files, %lld mismatches, %lld repaired, %lld "
	       "unrecoverable%s%s\n",
	       state, (long long)qctl_int(s, "files-done"),
	       (long long)qctl_int(s, "mismatches"),
	       (long long)qctl_int(s, "repaired"),
	       (long long)qctl_int(s, "unrecoverable"),
	       *qctl_str(s, "reason") ? ": " : "", qctl_str(s, "reason"));
	return strcmp(state, "completed") == 0 &&
			       qctl_int(s, "unrecoverable") == 0
		       ? QCTL_OK
		       : QCTL_DEGRADED;
}

/* Poll until the job ends: its exit status. name: the child whose
 * resync is waited for, or NULL for the scrub. */
static int wait_for(const struct qctl_mount *m, const char *name)
{
	for (;;) {
		struct json_object *status = qctl_status(m);
		int r = name ? resync_state(status, name) : scrub_state(status);

		json_object_put(status);
		if (r >= 0)
			return r;
		qctl_sleep(POLL_S);
	}
}

/* The child an accepted add or resync makes sync, for --wait. */
static char *waited_child(const char *verb, int argc, char **argv)
{
	if (strcmp(verb, "resync") == 0)
		return strdup(argv[0]);
	for (int i = 1; i < argc; i++)
		if (strncmp(argv[i], "name=", 5) == 0)
			return strdup(argv[i] + 5);
	return absolute(argv[0]);
}

static int run(const struct qctl_mount *m, const struct verb *v, int argc,
	       char **argv, const struct qctl_opts *o)
{
	char command[CONFIG_COMMAND_MAX];
	bool scrub = strcmp(v->name, "scrub") == 0;
	struct json_object *reply;
	char *child;
	int ret;

	if (!build(v, argc, argv, command, sizeof(command)))
		return QCTL_ERROR;
	reply = qctl_command(m, command);
	ret = report(reply, command);
	json_object_put(reply);
	if (ret || !o->wait)
		return ret;
	if (scrub)
		return strcmp(argv[0], "stop") == 0 ? QCTL_OK
						    : wait_for(m, NULL);
	if (strcmp(v->name, "add") && strcmp(v->name, "resync"))
		return QCTL_OK;
	child = waited_child(v->name, argc, argv);
	ret = child ? wait_for(m, child) : QCTL_ERROR;
	free(child);
	return ret;
}

/* quarantine MOUNTPOINT list: the daemon's JSON, as it is. */
static int quarantine_list(const struct qctl_mount *m)
{
	struct json_object *l = qctl_quarantine_list(m);

	if (!l)
		return QCTL_ERROR;
	printf("%s\n", json_object_to_json_string_ext(
			       l, JSON_C_TO_STRING_PRETTY |
					  JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(l);
	return QCTL_OK;
}

int qctl_cmd_control(const char *verb, int argc, char **argv,
		     const struct qctl_opts *o)
{
	const struct verb *v = find_verb(verb);
	struct qctl_mount m;
	int ret;

	if (!v)
		return qctl_error("unknown command '%s' (see quorumctl --help)",
				  verb);
	if (argc < 1 + v->min || argc > 1 + v->max)
		return qctl_error("usage: quorumctl %s", v->usage);
	if (qctl_find_mount(argv[0], o, &m))
		return QCTL_ERROR;
	if (strcmp(verb, "quarantine") == 0 && argc == 2 &&
	    strcmp(argv[1], "list") == 0)
		ret = quarantine_list(&m);
	else
		ret = run(&m, v, argc - 1, argv + 1, o);
	qctl_mount_release(&m);
	return ret;
}
