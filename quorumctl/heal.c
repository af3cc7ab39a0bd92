/*
 * `quorumctl heal-info`: what each child still needs before it is in
 * step, and the files with blocks no version could win (the daemon's
 * heal-info request, control/heal.c), readable or as JSON. Exit 0 when
 * nothing is to heal.
 */
#define _GNU_SOURCE
#include "quorumctl/quorumctl.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

/* "offset 0, 64.0 MiB; offset ..." for a ranges array. */
static void print_ranges(struct json_object *ranges)
{
	char len[32];

	for (size_t i = 0; i < json_object_array_length(ranges); i++) {
		struct json_object *r = json_object_array_get_idx(ranges, i);

		printf("%soffset %lld, %s", i ? "; " : "",
		       (long long)qctl_int(r, "offset"),
		       qctl_bytes(len, sizeof(len), qctl_int(r, "length")));
	}
}

/* One child: its needs; true when it needs something. */
static bool print_child(struct json_object *c, int width)
{
	const char *needs = qctl_str(c, "needs");
	struct json_object *files = qctl_get(c, "files");
	struct json_object *entries = qctl_get(c, "entries");

	printf("  %-*s %-8s ", width, qctl_str(c, "name"),
	       qctl_str(c, "state"));
	if (strcmp(needs, "nothing") == 0) {
		printf("needs nothing\n");
		return false;
	}
	if (strcmp(needs, "tree") == 0) {
		printf("needs the whole tree\n");
		return true;
	}
	printf("needs %zu files, %zu directories or entries\n",
	       json_object_array_length(files),
	       json_object_array_length(entries));
	for (size_t i = 0; i < json_object_array_length(files); i++) {
		struct json_object *f = json_object_array_get_idx(files, i);

		printf("  %-*s   %s: ", width, "", qctl_str(f, "path"));
		print_ranges(qctl_get(f, "ranges"));
		printf("\n");
	}
	for (size_t i = 0; i < json_object_array_length(entries); i++) {
		struct json_object *e = json_object_array_get_idx(entries, i);

		printf("  %-*s   %s: %s\n", width, "", qctl_str(e, "path"),
		       qctl_bool(e, "names") ? "names" : "metadata");
	}
	return true;
}

/* The last scrub's unrecoverable list; true when it has any. */
static bool print_unrecoverable(struct json_object *u)
{
	struct json_object *files = qctl_get(u, "files");
	char when[32];

	if (!u) {
		printf("\nno scrub has ended since the children were made a "
		       "set\n");
		return false;
	}
	printf("\nlast scrub: %s %s; %lld blocks or names no version could "
	       "win%s\n",
	       qctl_str(u, "result"),
	       qctl_time(when, sizeof(when), qctl_int(u, "finished")),
	       (long long)qctl_int(u, "unrecoverable"),
	       qctl_int(u, "kept") < qctl_int(u, "unrecoverable")
		       ? " (the first ones listed)"
		       : "");
	for (size_t i = 0; i < json_object_array_length(files); i++) {
		struct json_object *f = json_object_array_get_idx(files, i);

		printf("  %s: ", qctl_str(f, "path"));
		print_ranges(qctl_get(f, "ranges"));
		printf("\n");
	}
	return qctl_int(u, "unrecoverable") > 0;
}

/* Whether a child needs anything or the last scrub left blocks no
 * version could win. */
static bool to_heal(struct json_object *h)
{
	struct json_object *children = qctl_get(h, "children");

	for (size_t i = 0; i < json_object_array_length(children); i++)
		if (strcmp(qctl_str(json_object_array_get_idx(children, i),
				    "needs"),
			   "nothing") != 0)
			return true;
	return qctl_int(qctl_get(h, "unrecoverable"), "unrecoverable") > 0;
}

static int print_heal(struct json_object *h)
{
	struct json_object *children = qctl_get(h, "children");
	size_t n = json_object_array_length(children);
	bool any = false;
	int width = 5;

	for (size_t i = 0; i < n; i++) {
		int len = (int)strlen(qctl_str(
			json_object_array_get_idx(children, i), "name"));

		width = len > width ? len : width;
	}
	printf("   mount: %s\n\n", qctl_str(h, "mountpoint"));
	for (size_t i = 0; i < n; i++)
		any |= print_child(json_object_array_get_idx(children, i),
				   width);
	any |= print_unrecoverable(qctl_get(h, "unrecoverable"));
	return any ? QCTL_DEGRADED : QCTL_OK;
}

int qctl_cmd_heal_info(int argc, char **argv, const struct qctl_opts *o)
{
	struct json_object *h;
	struct qctl_mount m;
	int ret;

	if (argc != 1)
		return qctl_error("usage: quorumctl heal-info MOUNTPOINT "
				  "[--json]");
	if (qctl_find_mount(argv[0], o, &m))
		return QCTL_ERROR;
	h = qctl_heal_info(&m);
	qctl_mount_release(&m);
	if (!h)
		return QCTL_ERROR;
	if (o->json) {
		printf("%s\n",
		       json_object_to_json_string_ext(
			       h, JSON_C_TO_STRING_PRETTY |
					  JSON_C_TO_STRING_NOSLASHESCAPE));
		ret = to_heal(h) ? QCTL_DEGRADED : QCTL_OK;
	} else {
		ret = print_heal(h);
	}
	json_object_put(h);
	return ret;
}
