/*
 * The secondary VM's changes of names, in the view. While the layers are
 * in use they go to the active layer only, B is never touched:
 *   - a new name is an entry only active has (no lower), with its mode,
 *     owner and times, and for a symlink its target;
 *   - a removed name is a whiteout;
 *   - a rename moves the entry (made first for a name that had none, so
 *     that it keeps pointing at its object in C) and everything below
 *     it, and leaves a whiteout behind.
 * In stage DONE the view is B and each change goes to the tree; before
 * start (NONE) the view takes no change (EIO, as its data).
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "children/children.h"

/* The V path of parent/name (caller frees), NULL for an unknown parent
 * or one renamed over. */
static char *vpath_of(struct secondary *sec, uint64_t parent, const char *name)
{
	char *dir = vnode_path(sec, parent), *path = NULL;

	if (dir && *dir != '/')
		path = path_join(dir, name);
	free(dir);
	return path;
}

/* What V has at vpath: 0 and its attributes, or -errno. Names held. */
static int v_stat(struct secondary *sec, const char *vpath, struct stat *st)
{
	struct vinfo vi;
	int ret = vinfo_get(sec, vpath, &vi);

	if (!ret)
		ret = vinfo_stat(sec, &vi, st);
	vinfo_free(&vi);
	return ret;
}

/* Whether V's directory vpath has no entry; names held. */
static int v_empty(struct secondary *sec, uint64_t ino)
{
	struct view_dir *d;
	const char *n;
	struct stat st;
	int ret = view_opendir_locked(sec, ino, &d), seen = 0;

	for (size_t i = 0; !ret && view_dir_entry(d, i, &n, &st); i++)
		seen += strcmp(n, ".") && strcmp(n, "..");
	if (!ret)
		view_releasedir(d);
	return ret ? ret : seen ? -ENOTEMPTY : 0;
}

/* ---- new names ---- */

/* What a new name needs to be made: its kind and mode, owner, target. */
struct birth {
	mode_t mode;
	uid_t uid;
	gid_t gid;
	const char *target;
};

static int make_own(struct secondary *sec, const char *vpath,
		    const struct birth *b)
{
	struct timespec now;
	struct layer_entry e = {.path = vpath,
				.has_meta = true,
				.has_size = true,
				.target = b->target};
	char *parent = path_parent(vpath);
	struct stat st;
	int ret = parent ? v_stat(sec, parent, &st) : -ENOMEM;

	if (!ret && !S_ISDIR(st.st_mode))
		ret = -ENOTDIR;
	if (!ret && (ret = v_stat(sec, vpath, &st)) != -ENOENT)
		ret = ret ? ret : -EEXIST;
	else if (ret == -ENOENT)
		ret = 0;
	clock_gettime(CLOCK_REALTIME, &now);
	e.meta = (struct layer_meta){b->mode, b->uid, b->gid, now, now};
	e.size = b->target ? strlen(b->target) : 0;
	if (!ret) {
		pthread_mutex_lock(&sec->lock);
		ret = layer_put(sec->active, &e);
		pthread_mutex_unlock(&sec->lock);
	}
	free(parent);
	return ret;
}

/* In DONE: B's node of V's directory ino (the view is B), with one
 * lookup the caller drops with base_forget(). */
static int base_dir(struct secondary *sec, uint64_t ino, uint64_t *bino)
{
	char *vpath = vnode_path(sec, ino);
	int ret = vpath && *vpath != '/' ? base_lookup(sec, vpath, bino)
					 : -ENOENT;

	free(vpath);
	return ret;
}

/* Lock names for a change of them: -EIO before start. */
static int names_begin(struct secondary *sec)
{
	if (atomic_load(&sec->stage) == REPL_NONE)
		return -EIO;
	pthread_rwlock_rdlock(&sec->epoch);
	pthread_rwlock_wrlock(&sec->names);
	return 0;
}

static void names_end(struct secondary *sec)
{
	atomic_fetch_add(&sec->ns_gen, 1);
	pthread_rwlock_unlock(&sec->names);
	pthread_rwlock_unlock(&sec->epoch);
}

int view_make(struct secondary *sec, uint64_t parent, const char *name,
	      mode_t mode, dev_t rdev, const char *target,
	      const struct tree_caller *who, struct tree_entry *e)
{
	struct birth b = {mode, who->uid, who->gid, target};
	char *vpath = vpath_of(sec, parent, name);
	uint64_t bdir;
	int ret = vpath ? names_begin(sec) : -ENOENT;

	if (ret)
		goto out;
	if (atomic_load(&sec->stage) == REPL_DONE &&
	    !(ret = base_dir(sec, parent, &bdir))) {
		ret = S_ISDIR(mode)
			      ? tree_mkdir(sec->tree, bdir, name, mode, who, e)
		      : S_ISLNK(mode) ? tree_symlink(sec->tree, target, bdir,
						     name, who, e)
				      : tree_mknod(sec->tree, bdir, name, mode,
						   rdev, who, e);
		if (!ret)
			tree_forget(sec->tree, e->ino, 1);
		base_forget(sec, bdir);
	} else if (atomic_load(&sec->stage) != REPL_DONE) {
		ret = (S_ISCHR(mode) || S_ISBLK(mode)) && rdev
			      ? -EPERM
			      : make_own(sec, vpath, &b);
	}
	names_end(sec);
	if (!ret)
		ret = view_lookup(sec, parent, name, e);
out:
	free(vpath);
	return ret;
}

/* ---- removals ---- */

struct below_arg {
	const char *dir;
	char *found;
};

/* The first entry strictly below arg->dir. */
static int find_below(void *arg, const struct layer_entry *e)
{
	struct below_arg *a = arg;
	size_t n = strlen(a->dir);

	if (strncmp(e->path, a->dir, n) || e->path[n] != '/')
		return 0;
	a->found = strdup(e->path);
	return 1;
}

/* Drop every active entry strictly below vpath (they are hidden by
 * what replaces it); sec->lock held. */
static int drop_below(struct secondary *sec, const char *vpath)
{
	struct below_arg a = {.dir = vpath};
	int ret = 0;

	while (!ret && layer_each(sec->active, find_below, &a)) {
		ret = layer_drop(sec->active, a.found);
		free(a.found);
		a.found = NULL;
	}
	return ret;
}

static int remove_own(struct secondary *sec, uint64_t ino, const char *vpath,
		      bool dir)
{
	struct layer_entry w = {.path = vpath, .absent = true};
	struct stat st;
	int ret = v_stat(sec, vpath, &st);

	if (!ret && dir != S_ISDIR(st.st_mode))
		ret = dir ? -ENOTDIR : -EISDIR;
	if (!ret && dir)
		ret = v_empty(sec, ino);
	if (ret)
		return ret;
	pthread_mutex_lock(&sec->lock);
	ret = drop_below(sec, vpath);
	if (!ret)
		ret = layer_put(sec->active, &w);
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

int view_remove(struct secondary *sec, uint64_t parent, const char *name,
		bool dir)
{
	char *vpath = vpath_of(sec, parent, name);
	struct tree_entry e;
	uint64_t bdir;
	int ret = vpath ? names_begin(sec) : -ENOENT;

	if (ret)
		goto out;
	if (atomic_load(&sec->stage) == REPL_DONE &&
	    !(ret = base_dir(sec, parent, &bdir))) {
		ret = dir ? tree_rmdir(sec->tree, bdir, name)
			  : tree_unlink(sec->tree, bdir, name);
		base_forget(sec, bdir);
	} else if (atomic_load(&sec->stage) != REPL_DONE) {
		/* The node of vpath, for the listing of a directory. */
		ret = view_lookup_locked(sec, parent, name, &e);
		if (!ret) {
			ret = remove_own(sec, e.ino, vpath, dir);
			view_forget(sec, e.ino, 1);
		}
	}
	names_end(sec);
out:
	free(vpath);
	return ret;
}

/* ---- renames ---- */

/* The active entry of vpath, made if it has none: a name of C that now
 * says where its object is, so that it keeps it when it moves. */
static int materialize(struct secondary *sec, const char *vpath)
{
	struct vinfo vi;
	struct layer_entry e = {.path = vpath};
	int ret = 0;

	pthread_mutex_lock(&sec->lock);
	if (layer_find(sec->active, vpath)) {
		pthread_mutex_unlock(&sec->lock);
		return 0;
	}
	pthread_mutex_unlock(&sec->lock);
	ret = vinfo_get(sec, vpath, &vi);
	e.lower = vi.cpath;
	if (!ret && vi.kind != V_C)
		ret = -ENOENT;
	pthread_mutex_lock(&sec->lock);
	if (!ret)
		ret = layer_put(sec->active, &e);
	pthread_mutex_unlock(&sec->lock);
	vinfo_free(&vi);
	return ret;
}

/* What rename(2) would refuse: 0 to go on, 1 when b is replaced. */
static int may_rename(struct secondary *sec, const char *a, const char *b,
		      uint64_t bino, unsigned int flags)
{
	struct stat sa, sb;
	size_t n = strlen(a);
	int ret = v_stat(sec, a, &sa);

	if (ret)
		return ret;
	if (!strncmp(b, a, n) && b[n] == '/')
		return -EINVAL; /* into itself */
	ret = v_stat(sec, b, &sb);
	if (ret == -ENOENT)
		return flags & RENAME_EXCHANGE ? -ENOENT : 0;
	if (ret || (flags & RENAME_EXCHANGE))
		return ret ? ret : 1;
	if (flags & RENAME_NOREPLACE)
		return -EEXIST;
	if (S_ISDIR(sa.st_mode) != S_ISDIR(sb.st_mode))
		return S_ISDIR(sa.st_mode) ? -ENOTDIR : -EISDIR;
	if (S_ISDIR(sb.st_mode) && (ret = v_empty(sec, bino)))
		return ret;
	return 1;
}

static int move_names(struct secondary *sec, const char *a, const char *b,
		      bool exchange)
{
	static const char tmp[] = "/exchange";
	struct layer_entry w = {.path = a, .absent = true};
	int ret = materialize(sec, a);

	if (!ret && exchange)
		ret = materialize(sec, b);
	pthread_mutex_lock(&sec->lock);
	if (!ret && exchange) {
		ret = layer_move(sec->active, a, tmp);
		if (!ret)
			ret = layer_move(sec->active, b, a);
		if (!ret)
			ret = layer_move(sec->active, tmp, b);
	} else if (!ret) {
		ret = layer_move(sec->active, a, b);
		if (!ret)
			ret = layer_put(sec->active, &w);
	}
	pthread_mutex_unlock(&sec->lock);
	if (!ret && exchange) {
		vnodes_move(sec, a, tmp);
		vnodes_move(sec, b, a);
		vnodes_move(sec, tmp, b);
	} else if (!ret) {
		vnodes_move(sec, a, b);
	}
	return ret;
}

static int rename_layered(struct secondary *sec, uint64_t newparent,
			  const char *a, const char *b, const char *newname,
			  unsigned int flags)
{
	struct tree_entry e = {0};
	int ret = view_lookup_locked(sec, newparent, newname, &e);

	if (ret && ret != -ENOENT)
		return ret;
	ret = may_rename(sec, a, b, e.ino, flags);
	if (e.ino)
		view_forget(sec, e.ino, 1);
	if (ret >= 0)
		ret = move_names(sec, a, b, flags & RENAME_EXCHANGE);
	return ret;
}

static int rename_base(struct secondary *sec, uint64_t parent, const char *name,
		       uint64_t newparent, const char *newname,
		       unsigned int flags)
{
	uint64_t from, to;
	int ret = base_dir(sec, parent, &from);

	if (ret)
		return ret;
	ret = base_dir(sec, newparent, &to);
	if (!ret) {
		ret = tree_rename(sec->tree, from, name, to, newname, flags);
		base_forget(sec, to);
	}
	base_forget(sec, from);
	return ret;
}

int view_rename(struct secondary *sec, uint64_t parent, const char *name,
		uint64_t newparent, const char *newname, unsigned int flags)
{
	char *a = vpath_of(sec, parent, name);
	char *b = vpath_of(sec, newparent, newname);
	int ret = a && b ? names_begin(sec) : -ENOENT;

	if (ret)
		goto out;
	if (atomic_load(&sec->stage) == REPL_DONE)
		ret = rename_base(sec, parent, name, newparent, newname, flags);
	else
		ret = rename_layered(sec, newparent, a, b, newname, flags);
	names_end(sec);
out:
	free(a);
	free(b);
	return ret;
}

ssize_t view_readlink(struct secondary *sec, uint64_t ino, char *buf,
		      size_t size)
{
	char *vpath = vnode_path(sec, ino);
	struct vinfo vi = {0};
	uint64_t bino;
	ssize_t ret = vpath && *vpath != '/' ? 0 : -ENOENT;

	pthread_rwlock_rdlock(&sec->names);
	if (!ret)
		ret = vinfo_get(sec, vpath, &vi);
	if (!ret && vi.kind == V_OWN) {
		ret = vi.target ? (ssize_t)strlen(vi.target) : -EINVAL;
		if (ret > 0)
			memcpy(buf, vi.target,
			       (size_t)ret < size ? (size_t)ret : size);
	} else if (!ret && vi.kind == V_C && vi.bpath &&
		   !(ret = base_lookup(sec, vi.bpath, &bino))) {
		ret = tree_readlink(sec->tree, bino, buf, size);
		base_forget(sec, bino);
	} else if (!ret) {
		ret = -ENOENT;
	}
	pthread_rwlock_unlock(&sec->names);
	vinfo_free(&vi);
	free(vpath);
	return ret;
}
