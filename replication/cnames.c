/*
 * Failover's names: B takes the names a layer gives over it. Run for the
 * hidden layer first (B's names become C's: the primary's changes since
 * the checkpoint are undone), then for the active one (C's become V's).
 *
 * A layer's entries are upper paths with where their object lies below
 * (lower), a whiteout, or an object only the layer has. In three passes,
 * so that no move lands on a name still in use:
 *   1. every object that lies elsewhere than its upper path is moved
 *      aside, into the graveyard (entries below it follow);
 *   2. shallowest first, each entry's path in B is cleared of what is
 *      there (what B made that the layer does not have), then takes
 *      its object back, or is made (an object only the layer has), or
 *      stays empty (a whiteout);
 *   3. every entry then says its object lies at its own path, for the
 *      commit of data, sizes and metadata that follows.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "persist/persist.h"

/* B's directory of path and the last name of path. */
static int parent_of(struct secondary *sec, const char *path, uint64_t *dir,
		     const char **name)
{
	char *parent = path_parent(path);
	const char *slash = strrchr(path, '/');
	int ret = parent ? base_lookup(sec, parent, dir) : -ENOMEM;

	*name = slash ? slash + 1 : path;
	free(parent);
	return ret;
}

/* Remove B's path and everything below it; absent: nothing to do. */
static int base_remove(struct secondary *sec, const char *path)
{
	struct tree_dir *d = NULL;
	const char *name, *last;
	struct stat st;
	uint64_t ino, dir;
	int ret = base_lookup(sec, path, &ino);

	if (ret)
		return ret == -ENOENT ? 0 : ret;
	if (!tree_getattr(sec->tree, ino, &st) && S_ISDIR(st.st_mode))
		ret = tree_opendir(sec->tree, ino, &d);
	for (size_t i = 0; !ret && d && tree_dir_entry(d, i, &name, &st); i++) {
		char *below = strcmp(name, ".") && strcmp(name, "..")
				      ? path_join(path, name)
				      : NULL;

		if (below)
			ret = base_remove(sec, below);
		free(below);
	}
	if (d)
		tree_releasedir(d);
	base_forget(sec, ino);
	if (!ret && !(ret = parent_of(sec, path, &dir, &last))) {
		ret = d ? tree_rmdir(sec->tree, dir, last)
			: tree_unlink(sec->tree, dir, last);
		base_forget(sec, dir);
	}
	return ret;
}

/* Rename B's from to `to`. */
static int base_move(struct secondary *sec, const char *from, const char *to)
{
	const char *a, *b;
	uint64_t da, db;
	int ret = parent_of(sec, from, &da, &a);

	if (ret)
		return ret;
	ret = parent_of(sec, to, &db, &b);
	if (!ret) {
		ret = tree_rename(sec->tree, da, a, db, b, 0);
		base_forget(sec, db);
	}
	base_forget(sec, da);
	return ret;
}

/* Make the object e has only in the layer at B's e->path. */
static int base_make(struct secondary *sec, const struct layer_entry *e)
{
	struct tree_caller who = {.uid = e->meta.uid, .gid = e->meta.gid};
	mode_t mode = e->meta.mode;
	struct tree_entry out;
	const char *name;
	uint64_t dir;
	int ret = parent_of(sec, e->path, &dir, &name);

	if (ret)
		return ret;
	if (S_ISDIR(mode))
		ret = tree_mkdir(sec->tree, dir, name, mode & 07777, &who,
				 &out);
	else if (S_ISLNK(mode))
		ret = tree_symlink(sec->tree, e->target ? e->target : "", dir,
				   name, &who, &out);
	else
		ret = tree_mknod(sec->tree, dir, name, mode, 0, &who, &out);
	if (!ret)
		tree_forget(sec->tree, out.ino, 1);
	base_forget(sec, dir);
	return ret;
}

/* ---- the passes ---- */

static int add_path(void *arg, const struct layer_entry *e)
{
	struct paths *ps = arg;

	if (ps->n == ps->cap) {
		int cap = ps->cap ? 2 * ps->cap : 16;
		char **p = realloc(ps->p, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		ps->p = p;
		ps->cap = cap;
	}
	ps->p[ps->n] = strdup(e->path);
	return ps->p[ps->n++] ? 0 : -ENOMEM;
}

static int depth(const char *p)
{
	int d = 0;

	while (*p)
		d += *p++ == '/';
	return d;
}

static int shallower(const void *a, const void *b)
{
	return depth(*(char *const *)a) - depth(*(char *const *)b);
}

static void paths_free(struct paths *ps)
{
	for (int i = 0; i < ps->n; i++)
		free(ps->p[i]);
	free(ps->p);
}

/* A copy of the entry at path (strings owned by the caller's copy). */
static int entry_copy_of(struct secondary *sec, struct layer *l,
			 const char *path, struct layer_entry *e, char **lower,
			 char **target)
{
	const struct layer_entry *f;

	pthread_mutex_lock(&sec->lock);
	f = layer_find(l, path);
	*e = f ? *f : (struct layer_entry){0};
	*lower = f && f->lower ? strdup(f->lower) : NULL;
	*target = f && f->target ? strdup(f->target) : NULL;
	pthread_mutex_unlock(&sec->lock);
	e->path = path;
	e->lower = *lower;
	e->target = *target;
	return f ? 0 : -ENOENT;
}

/* Pass 1: move aside an object that lies elsewhere than its path. */
static int set_aside(struct secondary *sec, struct layer *l, const char *path)
{
	char *lower, *target, *spot = NULL;
	struct layer_entry e;
	int ret = entry_copy_of(sec, l, path, &e, &lower, &target);

	if (!ret && !e.absent && e.lower && strcmp(e.lower, path) &&
	    asprintf(&spot, "%s/commit-%" PRIu64, PERSIST_GRAVEYARD,
		     atomic_fetch_add(&sec->graves, 1)) < 0)
		ret = -ENOMEM;
	if (!ret && spot) {
		uint64_t grave;

		ret = tree_graveyard(sec->tree, &grave);
		if (!ret)
			tree_forget(sec->tree, grave, 1);
		if (!ret)
			ret = base_move(sec, e.lower, spot);
		pthread_mutex_lock(&sec->lock);
		if (!ret)
			ret = layer_move_lower(l, e.lower, spot);
		pthread_mutex_unlock(&sec->lock);
	}
	free(spot);
	free(lower);
	free(target);
	return ret;
}

/* Pass 2 and 3: B's path gets what the entry says, and then the entry
 * says its object lies there. */
static int put_back(struct secondary *sec, struct layer *l, const char *path)
{
	char *lower, *target;
	struct layer_entry e;
	int ret = entry_copy_of(sec, l, path, &e, &lower, &target);
	bool here = e.lower && strcmp(e.lower, path) == 0;

	if (!ret && !here)
		ret = base_remove(sec, path);
	if (!ret && !here && !e.absent)
		ret = e.lower ? base_move(sec, e.lower, path)
			      : base_make(sec, &e);
	if (!ret && !e.absent) {
		e.lower = path;
		pthread_mutex_lock(&sec->lock);
		ret = layer_put(l, &e);
		pthread_mutex_unlock(&sec->lock);
	}
	free(lower);
	free(target);
	return ret;
}

int commit_names(struct secondary *sec, struct layer *l)
{
	struct paths ps = {0};
	int ret;

	pthread_mutex_lock(&sec->lock);
	ret = layer_each(l, add_path, &ps);
	pthread_mutex_unlock(&sec->lock);
	if (!ret && ps.n) /* qsort() wants an array, even of none */
		qsort(ps.p, ps.n, sizeof(*ps.p), shallower);
	for (int i = 0; !ret && i < ps.n; i++)
		ret = set_aside(sec, l, ps.p[i]);
	for (int i = 0; !ret && i < ps.n; i++)
		ret = put_back(sec, l, ps.p[i]);
	paths_free(&ps);
	return ret;
}

/* ---- the graveyard ---- */

int graveyard_list(struct secondary *sec, struct paths **out)
{
	struct paths *ps = calloc(1, sizeof(*ps));
	struct tree_dir *d = NULL;
	struct layer_entry e = {0};
	const char *name;
	struct stat st;
	uint64_t grave;
	int ret = ps ? tree_graveyard(sec->tree, &grave) : -ENOMEM;

	if (!ret)
		ret = tree_opendir(sec->tree, grave, &d);
	for (size_t i = 0; !ret && tree_dir_entry(d, i, &name, &st); i++) {
		if (!strcmp(name, ".") || !strcmp(name, ".."))
			continue;
		e.path = name;
		ret = add_path(ps, &e);
	}
	if (d)
		tree_releasedir(d);
	if (ps && !ret)
		tree_forget(sec->tree, grave, 1);
	if (ret) {
		if (ps)
			paths_free(ps);
		free(ps);
		return ret;
	}
	*out = ps;
	return 0;
}

void graveyard_clear(struct secondary *sec, struct paths *ps)
{
	for (int i = 0; ps && i < ps->n; i++) {
		char *path = path_join(PERSIST_GRAVEYARD, ps->p[i]);

		if (path)
			base_remove(sec, path);
		free(path);
	}
	graveyard_free(ps);
}

void graveyard_free(struct paths *ps)
{
	if (ps)
		paths_free(ps);
	free(ps);
}
