/*
 * B, the base, through the tree: a path looked up one name at a time,
 * each answer voted like any lookup on the mount.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int base_lookup(struct secondary *sec, const char *bpath, uint64_t *ino)
{
	uint64_t at = TREE_ROOT_INO;
	char *copy = strdup(bpath), *save = NULL, *name;
	struct tree_entry e;
	int ret = copy ? 0 : -ENOMEM;

	for (name = copy ? strtok_r(copy, "/", &save) : NULL; name && !ret;
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
