/*
 * B, the base, through the tree: a path looked up one name at a time,
 * each answer voted like any lookup on the mount.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "persist/persist.h"

/* Where a walk of bpath starts: the root, or the graveyard (whose name
 * no lookup reaches) with *rest past it. */
static int walk_start(struct secondary *sec, char *copy, char **rest,
		      uint64_t *at)
{
	size_t n = strlen(PERSIST_GRAVEYARD);

	*at = TREE_ROOT_INO;
	*rest = copy;
	if (strncmp(copy, PERSIST_GRAVEYARD, n) || (copy[n] && copy[n] != '/'))
		return 0;
	*rest = copy + n;
	return tree_graveyard(sec->tree, at);
}

int base_lookup(struct secondary *sec, const char *bpath, uint64_t *ino)
{
	uint64_t at;
	char *copy = strdup(bpath), *save = NULL, *name, *rest = NULL;
	struct tree_entry e;
	int ret = copy ? walk_start(sec, copy, &rest, &at) : -ENOMEM;

	for (name = ret ? NULL : strtok_r(rest, "/", &save); name && !ret;
	     name = strtok_r(NULL, "/", &save)) {
		ret = tree_lookup(sec->tree, at, name, &e);
		if (at != TREE_ROOT_INO)
			tree_forget(sec->tree, at, 1);
		if (!ret)
			at = e.ino;
	}
	free(copy);
	if (ret)
		return ret;
	*ino = at;
	return 0;
}

void base_forget(struct secondary *sec, uint64_t ino)
{
	if (ino != TREE_ROOT_INO) /* the root was never looked up */
		tree_forget(sec->tree, ino, 1);
}

int base_stat(struct secondary *sec, const char *bpath, struct stat *st)
{
	uint64_t ino;
	int ret = base_lookup(sec, bpath, &ino);

	if (ret)
		return ret;
	ret = tree_getattr(sec->tree, ino, st);
	base_forget(sec, ino);
	return ret;
}
