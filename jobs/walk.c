/*
 * The voted-tree walker shared by the jobs: what the mount would list
 * and look up, directory by directory, so a job sees the tree the votes
 * decide, never one child's.
 */
#define _GNU_SOURCE
#include "jobs/jobs_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static bool dot_or_dotdot(const char *name)
{
	return !strcmp(name, ".") || !strcmp(name, "..");
}

/* One listed name: look it up, hand it over, and descend. */
static int walk_entry(struct walk *w, struct tree_node *dir, const char *name)
{
	struct tree *tree = w->tree;
	struct tree_entry e;
	int ret = tree_lookup(tree, tree_node_ino(tree, dir), name, &e);

	if (ret == -ENOENT)
		return 0; /* gone since the listing */
	if (ret)
		return w->unvoted ? w->unvoted(w, dir, name, ret) : ret;
	ret = w->entry(w, dir, name, &e);
	if (!ret && S_ISDIR(e.attr.st_mode))
		ret = walk_tree(w, tree_node(tree, e.ino));
	tree_forget(tree, e.ino, 1);
	return ret;
}

int walk_tree(struct walk *w, struct tree_node *dir)
{
	struct tree *tree = w->tree;
	struct tree_dir *d;
	const char *name;
	struct stat st;
	int ret = tree_opendir(tree, tree_node_ino(tree, dir), &d);

	if (ret)
		return w->unlisted ? w->unlisted(w, dir, ret) : ret;
	for (size_t i = 0; !ret && tree_dir_entry(d, i, &name, &st); i++) {
		if (atomic_load(w->stop))
			ret = -ECANCELED;
		else if (!dot_or_dotdot(name))
			ret = walk_entry(w, dir, name);
	}
	tree_releasedir(d);
	return ret;
}

int walk_lookup_path(struct tree *tree, const char *path, struct tree_entry *e)
{
	char *copy = strdup(path), *save = NULL, *name;
	uint64_t dir = TREE_ROOT_INO;
	int ret = copy ? 0 : -ENOMEM;

	/* The root's entry, for an empty path: no lookup fills it. */
	*e = (struct tree_entry){.ino = TREE_ROOT_INO, .attr.st_mode = S_IFDIR};
	for (name = copy ? strtok_r(copy, "/", &save) : NULL; name && !ret;
	     name = strtok_r(NULL, "/", &save)) {
		ret = tree_lookup(tree, dir, name, e);
		if (dir != TREE_ROOT_INO)
			tree_forget(tree, dir, 1);
		/* A failed lookup took no reference, and set nothing. */
		dir = ret ? TREE_ROOT_INO : e->ino;
	}
	free(copy);
	return ret;
}
