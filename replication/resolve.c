/*
 * Names of the three trees (replication_i.h): where a C path lies in B,
 * which C path a B path is, and what a V path is. Pure walks over the
 * layers' entries, component by component, so that a renamed directory
 * takes everything below it along: a name with no entry of its own lies
 * under wherever its parent lies. The caller holds sec->lock.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *path_join(const char *dir, const char *name)
{
	char *out;

	if (asprintf(&out, "%s%s%s", dir, *dir && *name ? "/" : "", name) < 0)
		return NULL;
	return out;
}

char *path_parent(const char *path)
{
	const char *slash = strrchr(path, '/');

	return strndup(path, slash ? (size_t)(slash - path) : 0);
}

/* The first len bytes of path, as a string of its own. */
static char *prefix(const char *path, size_t len)
{
	return strndup(path, len);
}

/* The location after one more component, here (the prefix so far) with
 * name: its entry's lower, or one name down from loc. NULL: absent. */
static char *step(const struct layer *l, const char *loc, const char *here,
		  const char *name, bool *own)
{
	const struct layer_entry *e = layer_find(l, here);

	if (e && e->absent)
		return NULL;
	if (e) {
		*own = e->lower == NULL;
		return strdup(e->lower ? e->lower : here);
	}
	/* Below an entry only this layer has, only its entries exist. */
	if (*own)
		return NULL;
	return path_join(loc, name);
}

/*
 * Walk path through layer l: each prefix with an entry moves the
 * location to the entry's lower; one without moves it one name down.
 * Returns the location, which the caller frees, or NULL when a whiteout
 * hides the path. *own is set when it ends in (or below) an entry with
 * no lower: an object only this layer has.
 */
static char *walk(const struct layer *l, const char *path, bool *own)
{
	char *loc = strdup("");
	size_t at = 0, len = strlen(path);

	*own = false;
	while (loc && at < len) {
		size_t end = at;
		char *here, *name, *next = NULL;

		while (end < len && path[end] != '/')
			end++;
		here = prefix(path, end);
		name = strndup(path + at, end - at);
		if (here && name)
			next = step(l, loc, here, name, own);
		free(here);
		free(name);
		free(loc);
		loc = next;
		at = end + 1;
	}
	return loc;
}

char *c_to_b(struct secondary *sec, const char *cpath)
{
	bool own;

	return walk(sec->hidden, cpath, &own);
}

struct b_to_c_arg {
	struct secondary *sec;
	const char *bpath;
	char *found;
};

/* An entry whose object lies at bpath or above it: the C path it gives
 * bpath, if C really resolves that back to bpath. */
static int match_lower(void *arg, const struct layer_entry *e)
{
	struct b_to_c_arg *a = arg;
	size_t n = e->lower ? strlen(e->lower) : 0;
	char *cand, *back;

	if (e->absent || !e->lower || strncmp(a->bpath, e->lower, n) ||
	    (a->bpath[n] && a->bpath[n] != '/' && n))
		return 0;
	if (asprintf(&cand, "%s%s", e->path, a->bpath + n) < 0)
		return 0;
	back = c_to_b(a->sec, cand);
	if (back && strcmp(back, a->bpath) == 0) {
		free(back);
		a->found = cand;
		return 1;
	}
	free(back);
	free(cand);
	return 0;
}

char *b_to_c(struct secondary *sec, const char *bpath)
{
	struct b_to_c_arg a = {.sec = sec, .bpath = bpath};
	char *back;

	if (layer_each(sec->hidden, match_lower, &a))
		return a.found;
	back = c_to_b(sec, bpath);
	if (back && strcmp(back, bpath) == 0) {
		free(back);
		return strdup(bpath);
	}
	free(back);
	return NULL;
}

int v_resolve(struct secondary *sec, const char *vpath, struct v_place *p)
{
	bool own;
	char *loc = walk(sec->active, vpath, &own);

	*p = (struct v_place){.kind = V_ABSENT};
	p->a = layer_find(sec->active, vpath);
	if (!loc)
		return 0;
	if (own) {
		p->kind = V_OWN;
		free(loc);
		return 0;
	}
	p->kind = V_C;
	p->cpath = loc;
	p->h = layer_find(sec->hidden, loc);
	return 0;
}

void v_place_free(struct v_place *p)
{
	free(p->cpath);
	p->cpath = NULL;
}
