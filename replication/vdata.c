/*
 * The view's data (view.c says what comes from where). An open view
 * file keeps what its path resolved to, and the base file behind it
 * open, until names change (sec->ns_gen moves on: a rename, a
 * checkpoint); then it resolves again. Every read and write holds the
 * epoch lock shared, so a checkpoint waits for it and never comes in
 * between.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "children/children.h"

struct view_file {
	uint64_t ino;
	int flags;
	uint64_t gen; /* the ns_gen it was resolved at */
	char *vpath;
	struct vinfo vi;
	uint64_t base_ino; /* 0: no base file */
	struct tree_file *base;
	/* Requests hold it shared while they use the fields above; a
	 * refresh changes them holding it exclusively. */
	pthread_rwlock_t lock;
};

/* What one request reads and writes, taken from the layers at its
 * start. More than 8 bytes apart, so a struct, not a return value. */
struct layout {
	uint64_t aobj, hobj;
	uint64_t vsize, csize, bsize;
	bool c; /* an object of C */
};

static void close_base(struct secondary *sec, struct view_file *f)
{
	if (f->base)
		tree_release(sec->tree, f->base);
	if (f->base_ino)
		base_forget(sec, f->base_ino);
	f->base = NULL;
	f->base_ino = 0;
}

/* Resolve f again if names changed since; f->lock held exclusively. */
static int refresh_locked(struct secondary *sec, struct view_file *f)
{
	uint64_t gen = atomic_load(&sec->ns_gen);
	int ret = 0,
	    want = (f->flags & O_ACCMODE) == O_RDONLY ? O_RDONLY : O_RDWR;

	if (f->vpath && f->gen == gen)
		return 0;
	close_base(sec, f);
	vinfo_free(&f->vi);
	free(f->vpath);
	f->vpath = vnode_path(sec, f->ino);
	if (!f->vpath || *f->vpath == '/')
		return -ENOENT;
	pthread_rwlock_rdlock(&sec->names);
	ret = vinfo_get(sec, f->vpath, &f->vi);
	if (!ret && f->vi.kind == V_ABSENT)
		ret = -ENOENT;
	if (!ret && f->vi.kind == V_C && f->vi.bpath)
		ret = base_lookup(sec, f->vi.bpath, &f->base_ino);
	if (!ret && f->base_ino) {
		ret = tree_open(sec->tree, f->base_ino, want, &f->base);
		if (ret == -EISDIR || ret == -ENXIO)
			ret = 0; /* a directory or a device: no data */
	}
	pthread_rwlock_unlock(&sec->names);
	if (!ret)
		f->gen = gen;
	return ret;
}

/* Hold f shared, resolved as names are now. */
static int use_file(struct secondary *sec, struct view_file *f)
{
	int ret;

	for (;;) {
		pthread_rwlock_rdlock(&f->lock);
		if (f->vpath && f->gen == atomic_load(&sec->ns_gen))
			return 0;
		pthread_rwlock_unlock(&f->lock);
		pthread_rwlock_wrlock(&f->lock);
		ret = refresh_locked(sec, f);
		pthread_rwlock_unlock(&f->lock);
		if (ret)
			return ret;
	}
}

static void done_file(struct view_file *f)
{
	pthread_rwlock_unlock(&f->lock);
}

int view_open(struct secondary *sec, uint64_t ino, int flags,
	      struct view_file **out)
{
	struct view_file *f = calloc(1, sizeof(*f));
	int ret;

	if (!f)
		return -ENOMEM;
	f->ino = ino;
	f->flags = flags;
	pthread_rwlock_init(&f->lock, NULL);
	ret = use_file(sec, f);
	if (!ret)
		done_file(f);
	if (ret) {
		view_release(sec, f);
		return ret;
	}
	*out = f;
	return 0;
}

void view_release(struct secondary *sec, struct view_file *f)
{
	close_base(sec, f);
	vinfo_free(&f->vi);
	free(f->vpath);
	pthread_rwlock_destroy(&f->lock);
	free(f);
}

/* The layers' part of f now; the base's size from the tree. */
static int layout_get(struct secondary *sec, struct view_file *f,
		      struct layout *lo)
{
	const struct layer_entry *a, *h;
	struct stat st;

	*lo = (struct layout){.c = f->vi.kind == V_C};
	pthread_mutex_lock(&sec->lock);
	a = layer_find(sec->active, f->vpath);
	h = lo->c ? layer_find(sec->hidden, f->vi.cpath) : NULL;
	lo->aobj = a ? a->obj : 0;
	lo->hobj = h ? h->obj : 0;
	lo->vsize = a && a->has_size ? a->size : UINT64_MAX;
	lo->csize = h && h->has_size ? h->size : UINT64_MAX;
	pthread_mutex_unlock(&sec->lock);
	if (f->base_ino) {
		int ret = tree_getattr(sec->tree, f->base_ino, &st);

		if (ret)
			return ret; /* a size of 0 would cut the view */
		lo->bsize = (uint64_t)st.st_size;
	}
	if (lo->csize == UINT64_MAX)
		lo->csize = lo->c ? lo->bsize : 0;
	if (lo->vsize == UINT64_MAX)
		lo->vsize = lo->csize;
	return 0;
}

static bool holds(struct secondary *sec, struct layer *l, uint64_t obj,
		  uint64_t k)
{
	bool held;

	if (!obj)
		return false;
	pthread_mutex_lock(&sec->lock);
	held = layer_obj_has(l, obj, k);
	pthread_mutex_unlock(&sec->lock);
	return held;
}

static int layer_read(struct secondary *sec, struct layer *l, uint64_t obj,
		      char *buf, size_t n, off_t pos)
{
	int ret;

	pthread_mutex_lock(&sec->lock);
	ret = layer_obj_read(l, obj, buf, n, pos);
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

/* B's bytes [pos, pos + n), zeros past its end. */
static int base_read(struct secondary *sec, struct view_file *f, char *buf,
		     size_t n, off_t pos)
{
	struct tree_answer ans;
	size_t done = 0;
	int ret;

	memset(buf, 0, n);
	if (!f->base)
		return 0;
	ret = tree_read(sec->tree, f->base, pos, n, &ans);
	if (ret)
		return ret;
	for (int i = 0; i < ans.iovcnt && done < n; i++) {
		size_t len = ans.iov[i].iov_len < n - done ? ans.iov[i].iov_len
							   : n - done;

		memcpy(buf + done, ans.iov[i].iov_base, len);
		done += len;
	}
	tree_answer_release(&ans);
	return 0;
}

/* C's bytes [pos, pos + n) within one cluster: hidden's copy, or B's,
 * zeros past C's size. The caller holds the base file's cbw claim. */
static int c_read(struct secondary *sec, struct view_file *f,
		  const struct layout *lo, char *buf, size_t n, off_t pos)
{
	unsigned int cl = sec->cfg->cluster;
	size_t inside = 0;

	if (lo->c && (uint64_t)pos < lo->csize)
		inside = lo->csize - (uint64_t)pos < n
				 ? (size_t)(lo->csize - (uint64_t)pos)
				 : n;
	memset(buf + inside, 0, n - inside);
	if (!inside)
		return 0;
	if (holds(sec, sec->hidden, lo->hobj, (uint64_t)pos / cl))
		return layer_read(sec, sec->hidden, lo->hobj, buf, inside, pos);
	return base_read(sec, f, buf, inside, pos);
}

/* V's bytes [pos, pos + n) within one cluster. */
static int v_read(struct secondary *sec, struct view_file *f,
		  const struct layout *lo, char *buf, size_t n, off_t pos)
{
	if (holds(sec, sec->active, lo->aobj,
		  (uint64_t)pos / sec->cfg->cluster))
		return layer_read(sec, sec->active, lo->aobj, buf, n, pos);
	return c_read(sec, f, lo, buf, n, pos);
}

/* The piece of [pos, end) that lies in pos's cluster. */
static size_t piece(unsigned int cl, off_t pos, off_t end)
{
	off_t stop = (pos / cl + 1) * (off_t)cl;

	return (size_t)((stop < end ? stop : end) - pos);
}

static ssize_t layered_read(struct secondary *sec, struct view_file *f,
			    char *buf, size_t size, off_t off)
{
	struct layout lo;
	struct cbw_claim claim = {0}, mine = {0};
	off_t pos = off, end = off + (off_t)size;
	/* The view's own writes are ordered with its reads, as the tree's
	 * are: a read never sees half a write. */
	int ret = cbw_claim(sec, VIEW_CLAIM(f->ino), off, end, false, &mine);

	if (!ret)
		ret = layout_get(sec, f, &lo);
	if (ret || (uint64_t)off >= lo.vsize) {
		cbw_release(sec, &mine);
		return ret;
	}
	if (size > lo.vsize - (uint64_t)off)
		size = (size_t)(lo.vsize - (uint64_t)off);
	end = off + (off_t)size;
	if (f->base_ino)
		ret = cbw_claim(sec, f->base_ino, off, end, false, &claim);
	while (!ret && pos < end) {
		size_t n = piece(sec->cfg->cluster, pos, end);

		ret = v_read(sec, f, &lo, buf + (pos - off), n, pos);
		pos += (off_t)n;
	}
	cbw_release(sec, &claim);
	cbw_release(sec, &mine);
	return ret ? ret : (ssize_t)size;
}

ssize_t view_read(struct secondary *sec, struct view_file *f, char *buf,
		  size_t size, off_t off)
{
	ssize_t ret;

	if (atomic_load(&sec->stage) == REPL_NONE)
		return -EIO; /* QEMU's view reads fail before start */
	pthread_rwlock_rdlock(&sec->epoch);
	ret = use_file(sec, f);
	if (!ret) {
		ret = layered_read(sec, f, buf, size, off);
		done_file(f);
	}
	pthread_rwlock_unlock(&sec->epoch);
	return ret;
}

/* ---- writes ---- */

/* The active entry of f with a data object, made if need be: its id. */
static int active_object(struct secondary *sec, struct view_file *f,
			 uint64_t *obj)
{
	const struct layer_entry *a;
	struct layer_entry e;
	int ret = 0;

	pthread_mutex_lock(&sec->lock);
	a = layer_find(sec->active, f->vpath);
	if (a && a->obj) {
		*obj = a->obj;
		goto out;
	}
	e = a ? *a
	      : (struct layer_entry){.path = f->vpath, .lower = f->vi.cpath};
	ret = layer_obj_new(sec->active, &e.obj);
	if (!ret)
		ret = layer_put(sec->active, &e);
	if (!ret)
		*obj = e.obj;
out:
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

static int layer_write(struct secondary *sec, struct layer *l, uint64_t obj,
		       const char *buf, size_t n, off_t pos, bool hold)
{
	unsigned int cl = sec->cfg->cluster;
	int ret;

	pthread_mutex_lock(&sec->lock);
	ret = layer_obj_write(l, obj, buf, n, pos);
	if (!ret && hold)
		ret = layer_obj_hold(l, obj, (uint64_t)pos / cl, 1);
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

/* After a failed failover, a cluster neither layer holds is written to
 * B, as QEMU routes a write by bdrv_is_allocated_above there. */
static bool to_base(struct secondary *sec, const struct view_file *f,
		    const struct layout *lo, uint64_t k)
{
	return atomic_load(&sec->stage) == REPL_FAILOVER_FAILED && f->base &&
	       !holds(sec, sec->hidden, lo->hobj, k);
}

/* Write [pos, pos + n) of one cluster into the active layer: a cluster
 * it does not hold yet is first filled from C, whole. */
static int write_piece(struct secondary *sec, struct view_file *f,
		       const struct layout *lo, const char *buf, size_t n,
		       off_t pos)
{
	unsigned int cl = sec->cfg->cluster;
	off_t start = pos - pos % cl;
	struct cbw_claim claim = {0};
	char *whole;
	int ret;

	if (holds(sec, sec->active, lo->aobj, (uint64_t)pos / cl))
		return layer_write(sec, sec->active, lo->aobj, buf, n, pos,
				   false);
	if (to_base(sec, f, lo, (uint64_t)pos / cl)) {
		ssize_t w = tree_write(sec->tree, f->base, buf, n, pos, NULL);

		return w < 0 ? (int)w : 0;
	}
	whole = malloc(cl);
	if (!whole)
		return -ENOMEM;
	ret = f->base_ino ? cbw_claim(sec, f->base_ino, start, start + cl,
				      false, &claim)
			  : 0;
	if (!ret)
		ret = c_read(sec, f, lo, whole, cl, start);
	cbw_release(sec, &claim);
	memcpy(whole + (pos - start), buf, n);
	if (!ret)
		ret = layer_write(sec, sec->active, lo->aobj, whole, cl, start,
				  true);
	free(whole);
	return ret;
}

/* The view's size is now `size` (only_up: unless it is larger already):
 * the active entry says so. */
static int resize(struct secondary *sec, struct view_file *f, uint64_t size,
		  bool only_up)
{
	const struct layer_entry *a;
	struct layer_entry e;
	int ret = 0;

	pthread_mutex_lock(&sec->lock);
	a = layer_find(sec->active, f->vpath);
	if (a && (!only_up || !a->has_size || a->size < size)) {
		e = *a;
		e.has_size = true;
		e.size = size;
		ret = layer_put(sec->active, &e);
	}
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

static ssize_t layered_write(struct secondary *sec, struct view_file *f,
			     const char *buf, size_t size, off_t off)
{
	struct layout lo;
	struct cbw_claim mine;
	off_t pos = off, end = off + (off_t)size;
	int ret = layout_get(sec, f, &lo);

	/* A write that may grow the file claims to its end, as the tree's
	 * do, so that a read past the old end is before or after it. */
	if (!ret)
		ret = cbw_claim(sec, VIEW_CLAIM(f->ino), off,
				(uint64_t)end > lo.vsize ? RANGE_END : end,
				true, &mine);
	if (ret)
		return ret;

	if (!ret && !lo.aobj)
		ret = active_object(sec, f, &lo.aobj);
	/* One fill at a time: two writers of a new cluster would each fill
	 * it from below and the later fill would undo the earlier write. */
	pthread_mutex_lock(&sec->fill);
	while (!ret && pos < end) {
		size_t n = piece(sec->cfg->cluster, pos, end);

		ret = write_piece(sec, f, &lo, buf + (pos - off), n, pos);
		pos += (off_t)n;
	}
	pthread_mutex_unlock(&sec->fill);
	if (!ret && (uint64_t)end > lo.vsize)
		ret = resize(sec, f, (uint64_t)end, true);
	cbw_release(sec, &mine);
	return ret ? ret : (ssize_t)size;
}

ssize_t view_write(struct secondary *sec, struct view_file *f, const char *buf,
		   size_t size, off_t off)
{
	int stage = atomic_load(&sec->stage);
	ssize_t ret;

	if (stage == REPL_NONE)
		return -EIO;
	pthread_rwlock_rdlock(&sec->epoch);
	ret = use_file(sec, f);
	if (ret)
		goto out;
	if (stage == REPL_DONE && f->base)
		ret = tree_write(sec->tree, f->base, buf, size, off, NULL);
	else
		ret = layered_write(sec, f, buf, size, off);
	done_file(f);
out:
	pthread_rwlock_unlock(&sec->epoch);
	return ret;
}

int view_fsync(struct secondary *sec, struct view_file *f, bool datasync)
{
	struct layout lo;
	int ret;

	pthread_rwlock_rdlock(&sec->epoch);
	ret = use_file(sec, f);
	if (ret)
		goto out;
	ret = layout_get(sec, f, &lo);
	if (!ret && lo.aobj) {
		pthread_mutex_lock(&sec->lock);
		ret = layer_obj_sync(sec->active, lo.aobj);
		pthread_mutex_unlock(&sec->lock);
	}
	if (!ret && f->base && atomic_load(&sec->stage) == REPL_DONE)
		ret = tree_fsync(sec->tree, f->base, datasync);
	done_file(f);
out:
	pthread_rwlock_unlock(&sec->epoch);
	return ret;
}

/* ---- truncate ---- */

/* Zeros over [from, to) of the view, as the model of QEMU's qcow2 layer
 * has it: what is cut must read as zeros if the file grows again, not
 * as what lies below. Whole clusters are held as holes; a partial one
 * is filled and zeroed like any write. */
static int cut(struct secondary *sec, struct view_file *f,
	       const struct layout *lo, uint64_t from, uint64_t to)
{
	unsigned int cl = sec->cfg->cluster;
	uint64_t whole = (from + cl - 1) / cl * cl;
	char *zeros;
	int ret = 0;

	if (whole > from) {
		size_t n = (size_t)((whole < to ? whole : to) - from);

		zeros = calloc(1, n);
		ret = zeros ? write_piece(sec, f, lo, zeros, n, (off_t)from)
			    : -ENOMEM;
		free(zeros);
	}
	if (ret || whole >= to)
		return ret;
	pthread_mutex_lock(&sec->lock);
	ret = layer_obj_zero(sec->active, lo->aobj, (off_t)whole,
			     (size_t)(to - whole));
	if (!ret)
		ret = layer_obj_hold(sec->active, lo->aobj, whole / cl,
				     (to - whole + cl - 1) / cl);
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

static int set_size_claimed(struct secondary *sec, struct view_file *f,
			    uint64_t size)
{
	struct layout lo;
	int ret = layout_get(sec, f, &lo);

	if (!ret && !lo.aobj)
		ret = active_object(sec, f, &lo.aobj);
	pthread_mutex_lock(&sec->fill);
	if (!ret && size < lo.vsize)
		ret = cut(sec, f, &lo, size, lo.vsize);
	pthread_mutex_unlock(&sec->fill);
	return ret ? ret : resize(sec, f, size, false);
}

static int set_size(struct secondary *sec, struct view_file *f, uint64_t size)
{
	struct cbw_claim mine;
	int ret = cbw_claim(sec, VIEW_CLAIM(f->ino), 0, RANGE_END, true, &mine);

	if (ret)
		return ret;
	ret = set_size_claimed(sec, f, size);
	cbw_release(sec, &mine);
	return ret;
}

/* The fields of attr that to_set names, over the metadata now. */
static void new_meta(struct layer_meta *m, const struct stat *now,
		     const struct stat *attr, int to_set)
{
	struct timespec t;

	clock_gettime(CLOCK_REALTIME, &t);
	*m = (struct layer_meta){.mode = now->st_mode,
				 .uid = now->st_uid,
				 .gid = now->st_gid,
				 .atime = now->st_atim,
				 .mtime = now->st_mtim};
	if (to_set & TREE_SET_MODE)
		m->mode = (now->st_mode & S_IFMT) | (attr->st_mode & 07777);
	if (to_set & TREE_SET_UID)
		m->uid = attr->st_uid;
	if (to_set & TREE_SET_GID)
		m->gid = attr->st_gid;
	if (to_set & (TREE_SET_ATIME | TREE_SET_ATIME_NOW))
		m->atime = to_set & TREE_SET_ATIME_NOW ? t : attr->st_atim;
	if (to_set & (TREE_SET_MTIME | TREE_SET_MTIME_NOW))
		m->mtime = to_set & TREE_SET_MTIME_NOW ? t : attr->st_mtim;
}

/* Mode, owner and times go to the active entry, over what lies below. */
static int set_meta(struct secondary *sec, struct view_file *f,
		    const struct stat *attr, int to_set)
{
	const struct layer_entry *a;
	struct layer_entry e;
	struct stat now;
	int ret = vinfo_stat(sec, &f->vi, &now);

	if (ret)
		return ret;
	pthread_mutex_lock(&sec->lock);
	a = layer_find(sec->active, f->vpath);
	e = a ? *a
	      : (struct layer_entry){.path = f->vpath, .lower = f->vi.cpath};
	if (a && a->has_meta) {
		now.st_mode = a->meta.mode;
		now.st_uid = a->meta.uid;
		now.st_gid = a->meta.gid;
		now.st_atim = a->meta.atime;
		now.st_mtim = a->meta.mtime;
	}
	e.has_meta = true;
	new_meta(&e.meta, &now, attr, to_set);
	ret = layer_put(sec->active, &e);
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

int view_setattr(struct secondary *sec, uint64_t ino, struct view_file *f,
		 const struct stat *attr, int to_set, struct stat *st)
{
	struct view_file *own = NULL;
	int ret = 0;

	if (atomic_load(&sec->stage) == REPL_NONE)
		return -EIO;
	if (!f)
		ret = view_open(sec, ino, O_RDWR, &own);
	if (ret)
		return ret;
	f = f ? f : own;
	pthread_rwlock_rdlock(&sec->epoch);
	ret = use_file(sec, f);
	if (ret)
		goto out;
	if (atomic_load(&sec->stage) == REPL_DONE && f->base_ino)
		ret = tree_setattr(sec->tree, f->base_ino, f->base, attr,
				   to_set, st);
	else if (to_set & TREE_SET_SIZE)
		ret = set_size(sec, f, (uint64_t)attr->st_size);
	if (!ret && atomic_load(&sec->stage) != REPL_DONE &&
	    (to_set & ~(TREE_SET_SIZE | TREE_SET_CTIME)))
		ret = set_meta(sec, f, attr, to_set);
	done_file(f);
out:
	pthread_rwlock_unlock(&sec->epoch);
	if (own)
		view_release(sec, own);
	return ret ? ret : view_getattr(sec, ino, st);
}
