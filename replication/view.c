/*
 * The view, V: what the secondary VM sees, the active layer over C.
 *
 * Names: a V path is resolved through the layers (resolve.c) to an
 * object of C, which lies somewhere in B, or to an object only the
 * active layer has. Attributes are B's, with the sizes and metadata the
 * layers keep over them.
 *
 * Data, per cluster: the active layer's copy if it holds one; else, for
 * an object of C, hidden's copy if it holds one, else B's bytes; zeros
 * past the size each tree had. A view write goes to the active layer: a
 * cluster it does not hold yet is first filled from below, as qcow2
 * fills a new cluster from its backing file. B is never written, but in
 * stage DONE, where the view is B.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "children/children.h"

void vinfo_free(struct vinfo *vi)
{
	free(vi->cpath);
	free(vi->bpath);
	free(vi->target);
	memset(vi, 0, sizeof(*vi));
}

/* A layer entry without its strings: they belong to the layer. */
static void copy_entry(struct layer_entry *dst, const struct layer_entry *e)
{
	*dst = e ? *e : (struct layer_entry){0};
	dst->path = e ? "" : NULL;
	dst->lower = NULL;
	dst->target = NULL;
}

/* Resolve vpath; the caller holds sec->names (shared at least). */
int vinfo_get(struct secondary *sec, const char *vpath, struct vinfo *vi)
{
	struct v_place p;
	int ret = 0;

	memset(vi, 0, sizeof(*vi));
	pthread_mutex_lock(&sec->lock);
	v_resolve(sec, vpath, &p);
	vi->kind = p.kind;
	copy_entry(&vi->a, p.a);
	copy_entry(&vi->h, p.h);
	if (p.kind == V_C) {
		vi->cpath = p.cpath;
		p.cpath = NULL;
		vi->bpath = c_to_b(sec, vi->cpath);
	}
	if (p.kind == V_OWN && p.a && p.a->target &&
	    !(vi->target = strdup(p.a->target)))
		ret = -ENOMEM;
	pthread_mutex_unlock(&sec->lock);
	v_place_free(&p);
	return ret;
}

static void apply_meta(struct stat *st, const struct layer_entry *e)
{
	if (!e->path || !e->has_meta)
		return;
	st->st_mode = e->meta.mode;
	st->st_uid = e->meta.uid;
	st->st_gid = e->meta.gid;
	st->st_atim = e->meta.atime;
	st->st_mtim = e->meta.mtime;
}

static void apply_size(struct stat *st, const struct layer_entry *e)
{
	if (e->path && e->has_size) {
		st->st_size = (off_t)e->size;
		st->st_blocks = (blkcnt_t)((e->size + 511) / 512);
	}
}

int vinfo_stat(struct secondary *sec, const struct vinfo *vi, struct stat *st)
{
	int ret;

	memset(st, 0, sizeof(*st));
	if (vi->kind == V_OWN) {
		st->st_nlink = S_ISDIR(vi->a.meta.mode) ? 2 : 1;
		st->st_blksize = 4096;
		apply_meta(st, &vi->a);
		apply_size(st, &vi->a);
		return 0;
	}
	if (vi->kind != V_C || !vi->bpath)
		return -ENOENT;
	ret = base_stat(sec, vi->bpath, st);
	if (ret)
		return ret;
	apply_meta(st, &vi->h);
	apply_size(st, &vi->h);
	apply_meta(st, &vi->a);
	apply_size(st, &vi->a);
	return 0;
}

/* Attributes of V path vpath; the caller holds the names lock. */
static int vpath_stat(struct secondary *sec, const char *vpath, struct stat *st)
{
	struct vinfo vi;
	int ret;

	if (*vpath == '/')
		return -ENOENT; /* renamed over */
	ret = vinfo_get(sec, vpath, &vi);
	if (!ret)
		ret = vinfo_stat(sec, &vi, st);
	vinfo_free(&vi);
	return ret;
}

int view_lookup(struct secondary *sec, uint64_t parent, const char *name,
		struct tree_entry *e)
{
	int ret;

	pthread_rwlock_rdlock(&sec->names);
	ret = view_lookup_locked(sec, parent, name, e);
	pthread_rwlock_unlock(&sec->names);
	return ret;
}

int view_lookup_locked(struct secondary *sec, uint64_t parent, const char *name,
		       struct tree_entry *e)
{
	char *dir = vnode_path(sec, parent), *vpath = NULL;
	int ret = -ENOENT;

	if (dir && *dir != '/')
		vpath = path_join(dir, name);
	if (vpath)
		ret = vpath_stat(sec, vpath, &e->attr);
	if (!ret) {
		e->ino = vnode_ref(sec, vpath);
		e->attr.st_ino = e->ino;
		ret = e->ino ? 0 : -ENOMEM;
	}
	free(dir);
	free(vpath);
	return ret;
}

int view_getattr(struct secondary *sec, uint64_t ino, struct stat *st)
{
	char *vpath = vnode_path(sec, ino);
	int ret = -ENOENT;

	pthread_rwlock_rdlock(&sec->names);
	if (vpath)
		ret = vpath_stat(sec, vpath, st);
	pthread_rwlock_unlock(&sec->names);
	if (!ret)
		st->st_ino = ino;
	free(vpath);
	return ret;
}

/* ---- listings ---- */

struct view_dir {
	size_t n, cap;
	char **name;
	struct stat *st;
};

static int dir_add(struct view_dir *d, const char *name)
{
	for (size_t i = 0; i < d->n; i++)
		if (strcmp(d->name[i], name) == 0)
			return 0;
	if (d->n == d->cap) {
		size_t cap = d->cap ? 2 * d->cap : 32;
		char **names = realloc(d->name, cap * sizeof(*names));

		if (!names)
			return -ENOMEM;
		d->name = names;
		d->cap = cap;
	}
	d->name[d->n] = strdup(name);
	return d->name[d->n++] ? 0 : -ENOMEM;
}

/* The names B has in directory bpath. */
static int add_base_names(struct secondary *sec, const char *bpath,
			  struct view_dir *d)
{
	struct tree_dir *td = NULL;
	const char *name;
	struct stat st;
	uint64_t ino;
	int ret = base_lookup(sec, bpath, &ino);

	if (ret)
		return ret == -ENOENT ? 0 : ret;
	ret = tree_opendir(sec->tree, ino, &td);
	for (size_t i = 0; !ret && tree_dir_entry(td, i, &name, &st); i++)
		if (strcmp(name, ".") && strcmp(name, ".."))
			ret = dir_add(d, name);
	if (td)
		tree_releasedir(td);
	base_forget(sec, ino);
	return ret;
}

struct children_arg {
	const char *dir;
	struct view_dir *d;
};

/* An entry right below arg->dir adds its name. */
static int add_child_name(void *arg, const struct layer_entry *e)
{
	struct children_arg *a = arg;
	size_t n = strlen(a->dir);
	const char *rest = e->path + n + (n ? 1 : 0);

	if (strncmp(e->path, a->dir, n) || (n && e->path[n] != '/') || !*rest ||
	    strchr(rest, '/'))
		return 0;
	return dir_add(a->d, rest) ? 1 : 0;
}

/* Every name that might be in V directory vpath; vinfo_stat decides. */
static int candidates(struct secondary *sec, const char *vpath,
		      const struct vinfo *vi, struct view_dir *d)
{
	struct children_arg a = {.dir = vpath, .d = d};
	int ret = 0;

	if (vi->kind == V_C && vi->bpath)
		ret = add_base_names(sec, vi->bpath, d);
	pthread_mutex_lock(&sec->lock);
	if (!ret && layer_each(sec->active, add_child_name, &a))
		ret = -ENOMEM;
	a.dir = vi->cpath ? vi->cpath : "";
	if (!ret && vi->kind == V_C &&
	    layer_each(sec->hidden, add_child_name, &a))
		ret = -ENOMEM;
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

/* A number for a path, never 0. */
static ino_t path_number(const char *path)
{
	uint64_t h = 14695981039346656037ull;

	while (*path)
		h = (h ^ (unsigned char)*path++) * 1099511628211ull;
	return (ino_t)(h | 1);
}

/* Keep the names V has, with their attributes. */
static int keep_present(struct secondary *sec, const char *vpath,
			struct view_dir *d)
{
	size_t kept = 0;
	int ret = 0;

	d->st = calloc(d->n ? d->n : 1, sizeof(*d->st));
	if (!d->st)
		return -ENOMEM;
	for (size_t i = 0; i < d->n; i++) {
		char *path = ret ? NULL : path_join(vpath, d->name[i]);
		struct vinfo vi = {0};

		if (!ret)
			ret = path ? vinfo_get(sec, path, &vi) : -ENOMEM;
		if (!ret && vinfo_stat(sec, &vi, &d->st[kept]) == 0) {
			/* A listing hides an entry of inode 0: an object only
			 * the layer has needs a number of its own. */
			if (!d->st[kept].st_ino)
				d->st[kept].st_ino = path_number(path);
			d->name[kept++] = d->name[i];
		} else {
			free(d->name[i]);
		}
		vinfo_free(&vi);
		free(path);
	}
	d->n = kept;
	return ret;
}

/* "." and ".." first, as every listing has them. */
static int add_dots(struct view_dir *d, const struct stat *dir)
{
	char **names = realloc(d->name, (d->n + 2) * sizeof(*names));
	struct stat *st =
		names ? realloc(d->st, (d->n + 2) * sizeof(*st)) : NULL;

	if (names)
		d->name = names;
	if (!st)
		return -ENOMEM;
	d->st = st;
	memmove(d->name + 2, d->name, d->n * sizeof(*d->name));
	memmove(d->st + 2, d->st, d->n * sizeof(*d->st));
	d->name[0] = strdup(".");
	d->name[1] = strdup("..");
	d->st[0] = d->st[1] = *dir;
	d->n += 2;
	d->cap = d->n;
	return d->name[0] && d->name[1] ? 0 : -ENOMEM;
}

int view_opendir(struct secondary *sec, uint64_t ino, struct view_dir **out)
{
	int ret;

	pthread_rwlock_rdlock(&sec->names);
	ret = view_opendir_locked(sec, ino, out);
	pthread_rwlock_unlock(&sec->names);
	return ret;
}

int view_opendir_locked(struct secondary *sec, uint64_t ino,
			struct view_dir **out)
{
	char *vpath = vnode_path(sec, ino);
	struct view_dir *d = calloc(1, sizeof(*d));
	struct vinfo vi = {0};
	struct stat st;
	int ret = vpath && d ? 0 : -ENOMEM;

	if (!ret)
		ret = vinfo_get(sec, vpath, &vi);
	if (!ret)
		ret = vinfo_stat(sec, &vi, &st);
	if (!ret && !S_ISDIR(st.st_mode))
		ret = -ENOTDIR;
	if (!ret)
		ret = candidates(sec, vpath, &vi, d);
	if (!ret)
		ret = keep_present(sec, vpath, d);
	if (!ret)
		ret = add_dots(d, &st);
	vinfo_free(&vi);
	free(vpath);
	if (ret) {
		view_releasedir(d);
		return ret;
	}
	*out = d;
	return 0;
}

bool view_dir_entry(const struct view_dir *d, size_t i, const char **name,
		    struct stat *st)
{
	if (i >= d->n)
		return false;
	*name = d->name[i];
	*st = d->st[i];
	return true;
}

void view_releasedir(struct view_dir *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n; i++)
		free(d->name[i]);
	free(d->name);
	free(d->st);
	free(d);
}
