/*
 * The blocks, sizes, names and metadata a scrub found no version could
 * win (FINDING_NO_QUORUM) are what an operator must restore by hand, so
 * they are kept beyond the status's last 64 findings: a bounded list per
 * run, written at its end to every voting child's .quorumfs/findings,
 * where `quorumctl heal-info` (control/heal.c) reads them, also after a
 * restart.
 */
#define _GNU_SOURCE
#include "jobs/jobs_i.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

/* Stay well under the record's 256 KiB. */
#define LOST_TEXT_MAX (192 * 1024)

void scrub_lost_add(struct scrub_lost *l, const char *path, uint64_t off,
		    uint64_t len)
{
	struct scrub_lost_range *grown;

	if (l->n >= SCRUB_LOST_MAX)
		return;
	if (l->n % 64 == 0) {
		grown = realloc(l->range, (l->n + 64) * sizeof(*l->range));
		if (!grown)
			return;
		l->range = grown;
	}
	l->range[l->n].path = strdup(path ? path : "");
	l->range[l->n].off = off;
	l->range[l->n].len = len;
	if (l->range[l->n].path)
		l->n++;
}

void scrub_lost_clear(struct scrub_lost *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->range[i].path);
	free(l->range);
	l->range = NULL;
	l->n = 0;
}

static void add_u64(struct json_object *o, const char *key, uint64_t n)
{
	json_object_object_add(o, key, json_object_new_int64((int64_t)n));
}

/* The kept ranges as an array, as many as fit LOST_TEXT_MAX. */
static struct json_object *ranges_json(const struct scrub_lost *l, size_t *kept)
{
	struct json_object *a = json_object_new_array();
	size_t bytes = 0;

	for (*kept = 0; *kept < l->n; (*kept)++) {
		struct json_object *r = json_object_new_object();

		bytes += strlen(l->range[*kept].path) + 64;
		if (bytes > LOST_TEXT_MAX) {
			json_object_put(r);
			break;
		}
		json_object_object_add(
			r, "path",
			json_object_new_string(l->range[*kept].path));
		add_u64(r, "offset", l->range[*kept].off);
		add_u64(r, "length", l->range[*kept].len);
		json_object_array_add(a, r);
	}
	return a;
}

char *scrub_lost_text(const struct scrub_lost *l, const char *result,
		      bool repair, time_t finished, uint64_t unrecoverable)
{
	struct json_object *o = json_object_new_object();
	struct json_object *ranges;
	size_t kept;
	char *text;

	ranges = ranges_json(l, &kept);
	json_object_object_add(o, "result", json_object_new_string(result));
	json_object_object_add(o, "repair", json_object_new_boolean(repair));
	add_u64(o, "finished", (uint64_t)finished);
	add_u64(o, "unrecoverable", unrecoverable);
	add_u64(o, "kept", kept);
	json_object_object_add(o, "findings", ranges);
	text = strdup(json_object_to_json_string_ext(
		o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return text;
}

void scrub_lost_save(struct jobs *jobs, const char *text)
{
	if (jobs->record && text)
		record_save_findings(jobs->record, jobs->set, text);
}
