/*
 * The primary's changes of names, on the inbound mount. While RUNNING,
 * C (the tree at the last checkpoint) must not see them, so before each
 * one the hidden layer learns what it undoes, journaled before B
 * changes:
 *   - a name that appears in B (create, mkdir, link, ...) where C has
 *     none: a whiteout of C's name;
 *   - a name that goes (unlink, rmdir, rename over it) while C's object
 *     is there: the object is moved into the graveyard instead of being
 *     removed, a rename on each base child, O(1) whatever its size, and
 *     C's entry follows it there;
 *   - a rename: C's entry (and every entry below it) follows the object.
 * sec->names is held exclusively across the hidden layer's change and
 * B's, so no view resolves a name half way.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "persist/persist.h"

/* B's path of parent/name; the caller frees it. */
static char *bpath_of(struct secondary *sec, uint64_t parent, const char *name)
{
	return tree_entry_path(sec->tree, tree_node(sec->tree, parent), name);
}

/* The C path that B's parent/name has, or NULL when C does not reach
 * that directory. Whether C has such a name is another question. */
static char *c_name(struct secondary *sec, uint64_t parent, const char *name)
{
	char *bdir = tree_node_path(sec->tree, tree_node(sec->tree, parent));
	char *cdir = NULL, *cpath = NULL;

	pthread_mutex_lock(&sec->lock);
	if (bdir)
		cdir = b_to_c(sec, bdir);
	pthread_mutex_unlock(&sec->lock);
	if (cdir)
		cpath = path_join(cdir, name);
	free(bdir);
	free(cdir);
	return cpath;
}

/* Put e, or leave an entry already there; under sec->lock. */
static int put_once(struct secondary *sec, const struct layer_entry *e)
{
	if (layer_find(sec->hidden, e->path))
		return 0;
	return layer_put(sec->hidden, e);
}

/* Hold names for a change of them, unless the inbound mount refuses
 * changes now; inbound_named() lets go. */
static int names_lock(struct secondary *sec)
{
	int ret = inbound_may_change(sec);

	if (ret)
		return ret;
	pthread_rwlock_rdlock(&sec->epoch);
	pthread_rwlock_wrlock(&sec->names);
	return 0;
}

/* B's parent/name is about to appear: C, which has no such name, must
 * not see it. Names held. */
static int whiteout_name(struct secondary *sec, uint64_t parent,
			 const char *name)
{
	char *cpath;
	int ret = 0;

	cpath = c_name(sec, parent, name);
	if (cpath) {
		struct layer_entry w = {.path = cpath, .absent = true};

		pthread_mutex_lock(&sec->lock);
		ret = put_once(sec, &w);
		pthread_mutex_unlock(&sec->lock);
	}
	free(cpath);
	return ret;
}

int inbound_naming(struct secondary *sec, uint64_t parent, const char *name)
{
	int ret = names_lock(sec);

	if (ret)
		return ret;
	if (atomic_load(&sec->stage) != REPL_RUNNING)
		return 0;
	ret = whiteout_name(sec, parent, name);
	if (ret)
		inbound_named(sec);
	return ret;
}

void inbound_named(struct secondary *sec)
{
	atomic_fetch_add(&sec->ns_gen, 1);
	pthread_rwlock_unlock(&sec->names);
	pthread_rwlock_unlock(&sec->epoch);
}

/* A fresh name in the graveyard, "EPOCH-N". */
static void grave_name(struct secondary *sec, char *buf, size_t size)
{
	struct layer_state st;

	layer_get_state(sec->active, &st);
	snprintf(buf, size, "%" PRIu64 "-%" PRIu64, st.epoch,
		 atomic_fetch_add(&sec->graves, 1));
}

/*
 * B's parent/name, at bpath, whose object C knows as cpath: into the
 * graveyard. Hidden learns it first: cpath's entry (and every entry
 * below bpath) now lies in the graveyard.
 */
static int bury(struct secondary *sec, uint64_t parent, const char *name,
		const char *bpath, const char *cpath)
{
	struct layer_entry e = {.path = cpath, .lower = bpath};
	char gname[64], *gpath;
	uint64_t grave;
	int ret = tree_graveyard(sec->tree, &grave);

	if (ret)
		return ret;
	grave_name(sec, gname, sizeof(gname));
	gpath = path_join(PERSIST_GRAVEYARD, gname);
	pthread_mutex_lock(&sec->lock);
	ret = gpath ? put_once(sec, &e) : -ENOMEM;
	if (!ret)
		ret = layer_move_lower(sec->hidden, bpath, gpath);
	pthread_mutex_unlock(&sec->lock);
	if (!ret) {
		ret = tree_rename(sec->tree, parent, name, grave, gname, 0);
		if (ret) { /* it stayed where it was: so does hidden */
			pthread_mutex_lock(&sec->lock);
			layer_move_lower(sec->hidden, gpath, bpath);
			pthread_mutex_unlock(&sec->lock);
		}
	}
	tree_forget(sec->tree, grave, 1);
	free(gpath);
	return ret;
}

/* What B has at parent/name: 0 and its attributes, or -errno. */
static int b_stat(struct secondary *sec, uint64_t parent, const char *name,
		  struct stat *st)
{
	struct tree_entry e;
	int ret = tree_lookup(sec->tree, parent, name, &e);

	if (ret)
		return ret;
	*st = e.attr;
	tree_forget(sec->tree, e.ino, 1);
	return 0;
}

/* Whether B's directory parent/name has no entry. */
static int b_empty_dir(struct secondary *sec, uint64_t parent, const char *name)
{
	struct tree_entry e;
	struct tree_dir *d = NULL;
	const char *n;
	struct stat st;
	int ret = tree_lookup(sec->tree, parent, name, &e), seen = 0;

	if (ret)
		return ret;
	ret = tree_opendir(sec->tree, e.ino, &d);
	for (size_t i = 0; !ret && tree_dir_entry(d, i, &n, &st); i++)
		seen += strcmp(n, ".") && strcmp(n, "..");
	if (d)
		tree_releasedir(d);
	tree_forget(sec->tree, e.ino, 1);
	return ret ? ret : seen ? -ENOTEMPTY : 0;
}

/* What a removal of B's parent/name may do, as unlink(2) and rmdir(2)
 * would answer: 0 to go on. */
static int may_remove(struct secondary *sec, uint64_t parent, const char *name,
		      bool dir)
{
	struct stat st;
	int ret = b_stat(sec, parent, name, &st);

	if (ret)
		return ret;
	if (dir != S_ISDIR(st.st_mode))
		return dir ? -ENOTDIR : -EISDIR;
	return dir ? b_empty_dir(sec, parent, name) : 0;
}

/* Remove B's parent/name, or bury it when C has it; names held. */
static int remove_locked(struct secondary *sec, uint64_t parent,
			 const char *name, bool dir)
{
	char *bpath = bpath_of(sec, parent, name), *cpath = NULL;
	int ret = bpath ? may_remove(sec, parent, name, dir) : -ENOMEM;

	if (!ret) {
		pthread_mutex_lock(&sec->lock);
		cpath = b_to_c(sec, bpath);
		pthread_mutex_unlock(&sec->lock);
	}
	if (!ret && cpath)
		ret = bury(sec, parent, name, bpath, cpath);
	else if (!ret)
		ret = dir ? tree_rmdir(sec->tree, parent, name)
			  : tree_unlink(sec->tree, parent, name);
	free(bpath);
	free(cpath);
	return ret;
}

int inbound_remove(struct secondary *sec, uint64_t parent, const char *name,
		   bool dir)
{
	int ret = names_lock(sec);

	if (ret)
		return ret;
	if (atomic_load(&sec->stage) == REPL_RUNNING)
		ret = remove_locked(sec, parent, name, dir);
	else
		ret = dir ? tree_rmdir(sec->tree, parent, name)
			  : tree_unlink(sec->tree, parent, name);
	inbound_named(sec);
	return ret;
}

/* What a rename of B's a onto b may do, as rename(2) would answer,
 * before anything moves: 0 to go on, 1 when b is there to be replaced. */
static int may_rename(struct secondary *sec, uint64_t parent, const char *name,
		      uint64_t newparent, const char *newname,
		      unsigned int flags)
{
	struct stat a, b;
	int ret = b_stat(sec, parent, name, &a);

	if (ret)
		return ret;
	ret = b_stat(sec, newparent, newname, &b);
	if (ret == -ENOENT)
		return flags & RENAME_EXCHANGE ? -ENOENT : 0;
	if (ret)
		return ret;
	if (a.st_ino == b.st_ino)
		return -EINVAL; /* the same object, renamed onto itself */
	if (flags & RENAME_NOREPLACE)
		return -EEXIST;
	if (flags & RENAME_EXCHANGE)
		return 1;
	if (S_ISDIR(a.st_mode) != S_ISDIR(b.st_mode))
		return S_ISDIR(a.st_mode) ? -ENOTDIR : -EISDIR;
	if (S_ISDIR(b.st_mode) && (ret = b_empty_dir(sec, newparent, newname)))
		return ret;
	return 1;
}

/* C's entry of the object at bpath (made if need be), for its lower to
 * follow; 0 when C does not have it. Under sec->lock. */
static int follow(struct secondary *sec, const char *bpath)
{
	char *cpath = b_to_c(sec, bpath);
	struct layer_entry e = {.path = cpath, .lower = bpath};
	int ret = cpath ? put_once(sec, &e) : 0;

	free(cpath);
	return ret;
}

/* An exchange: each object's C entry follows the other's path. */
static int swap_lowers(struct secondary *sec, const char *a, const char *b)
{
	static const char tmp[] = "\001exchange";
	int ret;

	pthread_mutex_lock(&sec->lock);
	ret = follow(sec, a);
	if (!ret)
		ret = follow(sec, b);
	if (!ret)
		ret = layer_move_lower(sec->hidden, a, tmp);
	if (!ret)
		ret = layer_move_lower(sec->hidden, b, a);
	if (!ret)
		ret = layer_move_lower(sec->hidden, tmp, b);
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

/* Rename B's a (at parent/name) to b (at newparent/newname). */
static int rename_locked(struct secondary *sec, uint64_t parent,
			 const char *name, uint64_t newparent,
			 const char *newname, unsigned int flags)
{
	char *a = bpath_of(sec, parent, name);
	char *b = bpath_of(sec, newparent, newname), *cb = NULL;
	int ret = a && b ? may_rename(sec, parent, name, newparent, newname,
				      flags)
			 : -ENOMEM;

	if (ret == 1 && (flags & RENAME_EXCHANGE)) {
		ret = swap_lowers(sec, a, b);
		goto rename;
	}
	if (ret == 1) { /* b goes: into the graveyard if C has it */
		pthread_mutex_lock(&sec->lock);
		cb = b_to_c(sec, b);
		pthread_mutex_unlock(&sec->lock);
		ret = cb ? bury(sec, newparent, newname, b, cb) : 0;
	}
	if (!ret && !cb)
		ret = whiteout_name(sec, newparent, newname);
	if (!ret) {
		pthread_mutex_lock(&sec->lock);
		ret = follow(sec, a);
		if (!ret)
			ret = layer_move_lower(sec->hidden, a, b);
		pthread_mutex_unlock(&sec->lock);
	}
rename:
	if (!ret)
		ret = tree_rename(sec->tree, parent, name, newparent, newname,
				  flags & RENAME_EXCHANGE);
	free(a);
	free(b);
	free(cb);
	return ret;
}

int inbound_rename(struct secondary *sec, uint64_t parent, const char *name,
		   uint64_t newparent, const char *newname, unsigned int flags)
{
	int ret = names_lock(sec);

	if (ret)
		return ret;
	if (atomic_load(&sec->stage) == REPL_RUNNING)
		ret = rename_locked(sec, parent, name, newparent, newname,
				    flags);
	else
		ret = tree_rename(sec->tree, parent, name, newparent, newname,
				  flags);
	inbound_named(sec);
	return ret;
}
