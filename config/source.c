/*
 * The set as one source string, the way mount(8) and fstab carry a
 * file system's source: the children joined by colons, a colon or a
 * backslash inside a path written \: or \\ (mergerfs's convention for
 * its branches). The mount's fsname is this string, so that df and
 * /proc/mounts show the set and `mount -a` recognises an fstab line
 * that is already mounted. The command line takes the same string: each
 * child argument is split at its unescaped colons, so a whole set fits
 * the one source an fstab line has.
 */
#define _GNU_SOURCE
#include "config/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Append path to buf at *n, a colon or backslash in it escaped. The
 * caller checked that it fits. */
static void put_path(char *buf, size_t *n, const char *path)
{
	for (const char *p = path; *p; p++) {
		if (*p == ':' || *p == '\\')
			buf[(*n)++] = '\\';
		buf[(*n)++] = *p;
	}
}

/* The bytes path takes in the joined string, escapes included. */
static size_t escaped_length(const char *path)
{
	size_t n = 0;

	for (const char *p = path; *p; p++)
		n += (*p == ':' || *p == '\\') ? 2 : 1;
	return n;
}

int config_join_source(const struct config_args *a, char *buf, size_t size)
{
	/* Room kept for ":+N" when children are left out. */
	const size_t reserve = 8;
	int children = a->npaths - 1, kept = 0;
	size_t n = 0, total = 0;

	if (size <= reserve)
		return -ENAMETOOLONG;
	for (int i = 0; i < children; i++)
		total += escaped_length(a->path[i]) + (i > 0);
	for (; kept < children; kept++) {
		size_t add = escaped_length(a->path[kept]) + (kept > 0);

		if (n + add >= (total < size ? size : size - reserve))
			break;
		if (kept > 0)
			buf[n++] = ':';
		put_path(buf, &n, a->path[kept]);
	}
	buf[n] = '\0';
	if (kept < children)
		snprintf(buf + n, size - n, "%s+%d", kept ? ":" : "",
			 children - kept);
	return children > kept ? children - kept : 0;
}

/*
 * Unescape one child list into *out, each child NUL-terminated, and
 * advance *out past them; the first CHILDREN_MAX starts go to child[],
 * *n counts them all. Returns 0, or -EINVAL for an empty child.
 */
static int split_one(const char *list, char **out, const char **child, int *n,
		     char *err, size_t errlen)
{
	const char *p = list;

	for (;;) {
		char *start = *out, *o = *out;

		for (; *p && *p != ':'; p++)
			*o++ = (*p == '\\' && p[1]) ? *++p : *p;
		*o++ = '\0';
		*out = o;
		if (!*start) {
			snprintf(err, errlen,
				 "the children '%s' name an empty one (a "
				 "colon too many?)",
				 list);
			return -EINVAL;
		}
		if (*n < CHILDREN_MAX)
			child[*n] = start;
		(*n)++;
		if (!*p++)
			return 0;
	}
}

int config_split_source(struct config_args *a, char **store, char *err,
			size_t errlen)
{
	const char *child[CHILDREN_MAX + 1];
	size_t total = 1;
	int n = 0, ret = 0;
	char *out;

	*store = NULL;
	if (a->npaths < 2)
		return 0;
	for (int i = 0; i < a->npaths - 1; i++)
		total += strlen(a->path[i]) + 1;
	out = *store = malloc(total);
	if (!out)
		return -ENOMEM;
	for (int i = 0; i < a->npaths - 1 && !ret; i++)
		ret = split_one(a->path[i], &out, child, &n, err, errlen);
	if (ret)
		return ret;
	if (n > CHILDREN_MAX) {
		a->too_many_paths = true;
		n = CHILDREN_MAX;
	}
	child[n] = a->path[a->npaths - 1];
	a->npaths = n + 1;
	memcpy(a->path, child, a->npaths * sizeof(child[0]));
	return 0;
}
