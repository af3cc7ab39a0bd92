/*
 * heal-info (GlusterFS's `heal info`): per child, what it still needs
 * before it is in step, and the files with blocks no version could win.
 *
 * A child that is stale or syncing needs what the intent log of a child
 * in step names since its generation (record_missed): whole 64 MiB
 * regions of files, and directories and entries whose names or metadata
 * changed, or the whole tree when the log cannot tell (a new child, a
 * log cleared since). A failed child needs the whole tree (`resync
 * NAME` copies it). What no version could win comes from the last
 * scrub's list in .quorumfs/findings (jobs/lost.c).
 *
 * Asked on the control socket only (a request of its own, like status):
 * it reads a child's intent log and findings file, which a status read
 * never does.
 */
#define _GNU_SOURCE
#include "control/control_i.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

static void add_range(struct json_object *ranges, int64_t off, int64_t len)
{
	struct json_object *r = json_object_new_object();

	json_object_object_add(r, "offset", json_object_new_int64(off));
	json_object_object_add(r, "length", json_object_new_int64(len));
	json_object_array_add(ranges, r);
}

/* A file's regions as byte ranges, adjacent regions merged. */
static struct json_object *file_json(const struct persist_file *f)
{
	struct json_object *o = json_object_new_object();
	struct json_object *ranges = json_object_new_array();

	for (int k = 0; k < f->nregions;) {
		int64_t first = f->region[k];
		int n = 1;

		while (k + n < f->nregions && f->region[k + n] == first + n)
			n++;
		add_range(ranges, first * PERSIST_REGION, n * PERSIST_REGION);
		k += n;
	}
	json_object_object_add(o, "path", json_object_new_string(f->path));
	if (f->was)
		json_object_object_add(o, "was",
				       json_object_new_string(f->was));
	json_object_object_add(o, "ranges", ranges);
	return o;
}

/* needs, files[] and entries[] of one child that is behind. */
static void add_missed(struct json_object *o, const struct persist_missed *m)
{
	struct json_object *files = json_object_new_array();
	struct json_object *entries = json_object_new_array();

	json_object_object_add(
		o, "needs",
		json_object_new_string(m->tree ? "tree" : "regions"));
	for (int i = 0; !m->tree && i < m->nfiles; i++)
		json_object_array_add(files, file_json(&m->file[i]));
	for (int i = 0; !m->tree && i < m->nentries; i++) {
		struct json_object *e = json_object_new_object();

		json_object_object_add(
			e, "path", json_object_new_string(m->entry[i].path));
		json_object_object_add(
			e, "names",
			json_object_new_boolean(m->entry[i].listing));
		json_object_array_add(entries, e);
	}
	json_object_object_add(o, "files", files);
	json_object_object_add(o, "entries", entries);
}

static struct json_object *child_json(struct control *ctl, struct child *c)
{
	struct json_object *o = json_object_new_object();
	enum child_state s = child_state(c);
	struct persist_missed m;

	json_object_object_add(o, "name",
			       json_object_new_string(child_name(c)));
	json_object_object_add(o, "path",
			       json_object_new_string(child_path(c)));
	json_object_object_add(o, "state",
			       json_object_new_string(child_state_name(s)));
	if (s == CHILD_OK) {
		json_object_object_add(o, "needs",
				       json_object_new_string("nothing"));
	} else if (s == CHILD_FAILED || !ctl->record ||
		   record_missed(ctl->record, ctl->set, c, &m)) {
		json_object_object_add(o, "needs",
				       json_object_new_string("tree"));
	} else {
		add_missed(o, &m);
		persist_missed_free(&m);
	}
	return o;
}

/* The last scrub's findings file, its ranges grouped by file; NULL when
 * no scrub wrote one. */
static struct json_object *unrecoverable_json(struct control *ctl)
{
	struct json_object *doc, *list, *files, *by_path, *f, *ranges;
	char *text = NULL;

	if (!ctl->record || record_load_findings(ctl->record, ctl->set, &text))
		return NULL;
	doc = json_tokener_parse(text);
	free(text);
	if (!doc || !json_object_object_get_ex(doc, "findings", &list))
		return doc;
	files = json_object_new_array();
	by_path = json_object_new_object();
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		struct json_object *x = json_object_array_get_idx(list, i), *p;
		const char *path = json_object_object_get_ex(x, "path", &p)
					   ? json_object_get_string(p)
					   : "";

		if (!json_object_object_get_ex(by_path, path, &f)) {
			f = json_object_new_object();
			json_object_object_add(f, "path",
					       json_object_new_string(path));
			json_object_object_add(f, "ranges",
					       json_object_new_array());
			json_object_array_add(files, f);
			json_object_object_add(by_path, path,
					       json_object_get(f));
		}
		json_object_object_get_ex(f, "ranges", &ranges);
		json_object_object_del(x, "path");
		json_object_array_add(ranges, json_object_get(x));
	}
	json_object_put(by_path);
	json_object_object_del(doc, "findings");
	json_object_object_add(doc, "files", files);
	return doc;
}

char *control_heal_info(struct control *ctl)
{
	struct json_object *o = json_object_new_object();
	struct json_object *children = json_object_new_array();
	struct child *m[CHILDREN_MAX];
	int n = children_members(ctl->set, m);
	char *text;

	for (int i = 0; i < n; i++) {
		json_object_array_add(children, child_json(ctl, m[i]));
		child_put(m[i]);
	}
	json_object_object_add(o, "mountpoint",
			       json_object_new_string(ctl->cfg->mountpoint));
	json_object_object_add(o, "children", children);
	json_object_object_add(o, "unrecoverable", unrecoverable_json(ctl));
	text = strdup(json_object_to_json_string_ext(
		o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return text;
}
