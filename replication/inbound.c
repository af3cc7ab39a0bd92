/*
 * The inbound mount: the primary's changes to B. In stage RUNNING each
 * change is preceded by copy-before-write: what C can see and the change
 * would destroy is copied into the hidden layer first, once per cluster
 * and epoch ("never overwrite what the buffer holds", as QEMU's backup
 * job), with C's size and metadata before the first change of them.
 * The base file's cbw claim (cbw.c) is held exclusively across the copy
 * and the change, so a view read sees the old bytes, in B or in hidden.
 * A hidden layer that cannot take the copy (full, failing) fails the
 * change with its errno, B untouched, and latches the error.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>

#include "children/children.h"

/* One change of one base file, as copy-before-write sees it. */
struct change {
	struct tree_file *f;
	struct tree_file *rf; /* for reading the old bytes: f may be
			       * write-only; opened on first need */
	uint64_t ino;
	char *bpath, *cpath; /* cpath NULL: C cannot see this file */
	uint64_t bsize;
};

static void change_free(struct secondary *sec, struct change *c)
{
	if (c->rf)
		tree_release(sec->tree, c->rf);
	free(c->bpath);
	free(c->cpath);
}

/* B's bytes [start, start + n) of the changed file into buf (which
 * holds zeros past what B has). */
static int read_old(struct secondary *sec, struct change *c, char *buf,
		    uint64_t start, uint64_t n)
{
	struct tree_answer ans;
	size_t done = 0;
	int ret = c->rf ? 0 : tree_open(sec->tree, c->ino, O_RDONLY, &c->rf);

	if (ret || !n)
		return ret;
	ret = tree_read(sec->tree, c->rf, (off_t)start, n, &ans);
	for (int i = 0; !ret && i < ans.iovcnt && done < n; i++) {
		size_t len = ans.iov[i].iov_len;

		memcpy(buf + done, ans.iov[i].iov_base,
		       len < n - done ? len : n - done);
		done += len;
	}
	if (!ret)
		tree_answer_release(&ans);
	return ret;
}

/* Which C object f is, if any, and B's size of it now. */
static int change_get(struct secondary *sec, struct tree_file *f,
		      struct change *c)
{
	struct tree_node *n = tree_file_node(f);
	struct stat st;
	int ret;

	*c = (struct change){.f = f, .ino = tree_node_ino(sec->tree, n)};
	c->bpath = tree_node_path(sec->tree, n);
	if (!c->bpath)
		return -ENOMEM;
	ret = tree_getattr(sec->tree, c->ino, &st);
	if (ret)
		return ret;
	c->bsize = (uint64_t)st.st_size;
	pthread_rwlock_rdlock(&sec->names);
	pthread_mutex_lock(&sec->lock);
	c->cpath = b_to_c(sec, c->bpath);
	pthread_mutex_unlock(&sec->lock);
	pthread_rwlock_unlock(&sec->names);
	return 0;
}

/* A full or failing hidden layer fails the change and is latched. */
static int latch(struct secondary *sec, int ret)
{
	if (ret)
		atomic_store(&sec->error, ret);
	return ret;
}

/* The hidden entry of c's C object, made with a data object if need
 * be; sec->lock held. */
static int hidden_entry(struct secondary *sec, const struct change *c,
			struct layer_entry *e)
{
	const struct layer_entry *h = layer_find(sec->hidden, c->cpath);
	int ret = 0;

	*e = h ? *h : (struct layer_entry){.path = c->cpath, .lower = c->bpath};
	if (!e->obj) {
		ret = layer_obj_new(sec->hidden, &e->obj);
		if (!ret)
			ret = layer_put(sec->hidden, e);
	}
	return ret;
}

static bool over_limit(struct secondary *sec)
{
	uint64_t limit = sec->cfg->limit;

	return limit &&
	       (layer_clusters(sec->hidden) + 1) * sec->cfg->cluster > limit;
}

/* Copy cluster k of B into hidden, unless hidden holds it already. */
static int cbw_cluster(struct secondary *sec, struct change *c, uint64_t k,
		       char *buf)
{
	unsigned int cl = sec->cfg->cluster;
	uint64_t start = k * cl, n = c->bsize > start ? c->bsize - start : 0;
	struct layer_entry e;
	int ret;

	pthread_mutex_lock(&sec->lock);
	ret = hidden_entry(sec, c, &e);
	if (!ret && layer_obj_has(sec->hidden, e.obj, k))
		ret = 1;
	else if (!ret && over_limit(sec))
		ret = -ENOSPC;
	pthread_mutex_unlock(&sec->lock);
	if (ret)
		return ret > 0 ? 0 : ret;
	memset(buf, 0, cl);
	ret = read_old(sec, c, buf, start, n < cl ? n : cl);
	pthread_mutex_lock(&sec->lock);
	if (!ret)
		ret = layer_obj_write(sec->hidden, e.obj, buf, cl,
				      (off_t)start);
	if (!ret)
		ret = layer_obj_hold(sec->hidden, e.obj, k, 1);
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

/* C's size, before the first change of B's size this epoch. */
static int cbw_size(struct secondary *sec, const struct change *c)
{
	const struct layer_entry *h;
	struct layer_entry e;
	int ret = 0;

	pthread_mutex_lock(&sec->lock);
	h = layer_find(sec->hidden, c->cpath);
	if (!h || !h->has_size) {
		e = h ? *h
		      : (struct layer_entry){.path = c->cpath,
					     .lower = c->bpath};
		e.has_size = true;
		e.size = c->bsize;
		ret = layer_put(sec->hidden, &e);
	}
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

/* Whether hidden keeps C's size of c's object already (for this epoch:
 * the caller holds sec->epoch). */
static bool c_size_kept(struct secondary *sec, const struct change *c)
{
	const struct layer_entry *h;
	bool kept;

	if (!c->cpath)
		return true; /* C cannot see it: nothing to keep */
	pthread_mutex_lock(&sec->lock);
	h = layer_find(sec->hidden, c->cpath);
	kept = h && h->has_size;
	pthread_mutex_unlock(&sec->lock);
	return kept;
}

/* C's size of c's object: hidden's, else B's now. */
static uint64_t c_size(struct secondary *sec, const struct change *c)
{
	const struct layer_entry *h;
	uint64_t size = c->bsize;

	pthread_mutex_lock(&sec->lock);
	h = layer_find(sec->hidden, c->cpath);
	if (h && h->has_size)
		size = h->size;
	pthread_mutex_unlock(&sec->lock);
	return size;
}

/* Copy-before-write of [off, end) and, if B's size may change, of C's
 * size. Nothing to do for a file C cannot see. */
static int cbw(struct secondary *sec, struct change *c, uint64_t off,
	       uint64_t end, bool resize)
{
	unsigned int cl = sec->cfg->cluster;
	uint64_t limit;
	char *buf;
	int ret = 0;

	if (!c->cpath)
		return 0;
	limit = c_size(sec, c);
	if (resize)
		ret = cbw_size(sec, c);
	if (end > limit)
		end = limit; /* past C's size there is nothing to keep */
	buf = ret || off >= end ? NULL : malloc(cl);
	if (!ret && off < end && !buf)
		ret = -ENOMEM;
	for (uint64_t k = off / cl; !ret && buf && k * cl < end; k++)
		ret = cbw_cluster(sec, c, k, buf);
	free(buf);
	return latch(sec, ret);
}

/* ---- the changes ---- */

/* After failover the inbound mount takes nothing more. */
static int read_only(struct secondary *sec)
{
	return atomic_load(&sec->read_only) ? -EROFS : 0;
}

int inbound_may_change(struct secondary *sec)
{
	return read_only(sec);
}

/*
 * The claim a change of [off, end) needs: the whole file while it may
 * change B's size before C's size is kept (so no other change slips in
 * between the look at the size and the keeping), else the clusters it
 * touches, so that changes of other clusters copy and write in parallel.
 * *resize is false once C's size is kept: there is nothing to do for it.
 */
static int claim_for(struct secondary *sec, const struct change *c,
		     uint64_t off, uint64_t end, bool *resize,
		     struct cbw_claim *claim)
{
	uint64_t cl = sec->cfg->cluster, lo = off - off % cl, hi = RANGE_END;

	if (*resize && !c_size_kept(sec, c))
		return cbw_claim(sec, c->ino, 0, RANGE_END, true, claim);
	*resize = false;
	if (end < (uint64_t)RANGE_END - cl)
		hi = end + (cl - end % cl) % cl;
	return cbw_claim(sec, c->ino, (off_t)lo, (off_t)hi, true, claim);
}

/* Run change(arg) on f, after copy-before-write of [off, end) (and of
 * the size with resize) when RUNNING, all under f's claim. */
static ssize_t guarded(struct secondary *sec, struct tree_file *f, uint64_t off,
		       uint64_t end, bool resize,
		       ssize_t (*change)(struct secondary *sec, void *arg),
		       void *arg)
{
	struct cbw_claim claim = {0};
	struct change c = {0};
	ssize_t ret = read_only(sec);

	if (ret)
		return ret;
	pthread_rwlock_rdlock(&sec->epoch);
	if (atomic_load(&sec->stage) == REPL_RUNNING) {
		ret = change_get(sec, f, &c);
		if (!ret)
			ret = claim_for(sec, &c, off, end, &resize, &claim);
		if (!ret)
			ret = cbw(sec, &c, off, end, resize);
		if (!ret)
			failpoint("cbw");
	}
	if (!ret)
		ret = change(sec, arg);
	cbw_release(sec, &claim);
	change_free(sec, &c);
	pthread_rwlock_unlock(&sec->epoch);
	return ret;
}

struct write_arg {
	struct tree_file *f;
	const void *buf;
	size_t size;
	off_t off;
	const struct tree_caller *who;
};

static ssize_t do_write(struct secondary *sec, void *arg)
{
	struct write_arg *w = arg;

	return tree_write(sec->tree, w->f, w->buf, w->size, w->off, w->who);
}

ssize_t inbound_write(struct secondary *sec, struct tree_file *f,
		      const void *buf, size_t size, off_t off,
		      const struct tree_caller *who)
{
	struct write_arg w = {f, buf, size, off, who};
	uint64_t end = (uint64_t)off + size;
	/* Whether it grows the file is known under the claim only; saving
	 * C's size costs nothing once saved. */
	ssize_t ret = guarded(sec, f, (uint64_t)off, end, true, do_write, &w);

	if (ret > 0) {
		atomic_fetch_add(&sec->inbound_writes, 1);
		atomic_fetch_add(&sec->inbound_bytes, (uint64_t)ret);
	}
	return ret;
}

struct setattr_arg {
	uint64_t ino;
	struct tree_file *f;
	const struct stat *attr;
	int to_set;
	struct stat *st;
};

static ssize_t do_setattr(struct secondary *sec, void *arg)
{
	struct setattr_arg *a = arg;

	return tree_setattr(sec->tree, a->ino, a->f, a->attr, a->to_set, a->st);
}

/* C's metadata, before the first change of it this epoch. */
static int cbw_meta(struct secondary *sec, uint64_t ino)
{
	struct tree_node *n = tree_node(sec->tree, ino);
	char *bpath = tree_node_path(sec->tree, n), *cpath = NULL;
	const struct layer_entry *h;
	struct layer_entry e;
	struct stat st;
	int ret = bpath ? tree_getattr(sec->tree, ino, &st) : -ENOMEM;

	pthread_rwlock_rdlock(&sec->names);
	pthread_mutex_lock(&sec->lock);
	if (!ret && (cpath = b_to_c(sec, bpath)) &&
	    (!(h = layer_find(sec->hidden, cpath)) || !h->has_meta)) {
		e = h ? *h
		      : (struct layer_entry){.path = cpath, .lower = bpath};
		e.has_meta = true;
		e.meta = (struct layer_meta){st.st_mode, st.st_uid, st.st_gid,
					     st.st_atim, st.st_mtim};
		ret = layer_put(sec->hidden, &e);
	}
	pthread_mutex_unlock(&sec->lock);
	pthread_rwlock_unlock(&sec->names);
	free(bpath);
	free(cpath);
	return latch(sec, ret);
}

int inbound_setattr(struct secondary *sec, uint64_t ino, struct tree_file *f,
		    const struct stat *attr, int to_set, struct stat *st)
{
	struct setattr_arg a = {ino, f, attr, to_set, st};
	struct tree_file *own = NULL;
	uint64_t size = (uint64_t)attr->st_size;
	ssize_t ret = read_only(sec);

	if (!ret && (to_set & ~TREE_SET_SIZE) &&
	    atomic_load(&sec->stage) == REPL_RUNNING)
		ret = cbw_meta(sec, ino);
	if (ret || !(to_set & TREE_SET_SIZE))
		return ret ? (int)ret : (int)do_setattr(sec, &a);
	/* A truncate needs an open file to copy through. */
	if (!f && (ret = tree_open(sec->tree, ino, O_RDWR, &own)))
		return (int)ret;
	ret = guarded(sec, f ? f : own, size, UINT64_MAX, true, do_setattr, &a);
	if (own)
		tree_release(sec->tree, own);
	return (int)ret;
}

struct fallocate_arg {
	struct tree_file *f;
	int mode;
	off_t off, len;
};

static ssize_t do_fallocate(struct secondary *sec, void *arg)
{
	struct fallocate_arg *a = arg;

	return tree_fallocate(sec->tree, a->f, a->mode, a->off, a->len);
}

int inbound_fallocate(struct secondary *sec, struct tree_file *f, int mode,
		      off_t off, off_t len)
{
	struct fallocate_arg a = {f, mode, off, len};
	uint64_t end = (uint64_t)(off + len);

	/* Allocating changes no byte; every other mode may change some, a
	 * collapse or insert all those after off. */
	if (!(mode & ~FALLOC_FL_KEEP_SIZE))
		end = (uint64_t)off;
	else if (mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE))
		end = UINT64_MAX;
	return (int)guarded(sec, f, (uint64_t)off, end,
			    !(mode & FALLOC_FL_KEEP_SIZE), do_fallocate, &a);
}
