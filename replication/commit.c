/*
 * Failover: the secondary takes over. Its base must become what its view
 * shows, V: hidden's names and every cluster it holds go back into B
 * (the primary's changes since the last checkpoint are undone), then
 * active's names and clusters go in over them (the secondary VM's own
 * changes are kept), each with sizes and metadata (cnames.c does the
 * names). The inbound mount refuses changes from
 * the start (a returning old primary must not write into the new
 * primary's base), the view waits for the commit, and then the layers
 * are emptied and the mount is an ordinary one (stage DONE). A step that
 * fails leaves stage FAILOVER_FAILED with the error latched.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "children/children.h"

/* One entry to commit: a copy of what the layer says of it. */
struct item {
	struct layer *l;
	char *path;  /* the entry's own path (C or V) */
	char *bpath; /* where its object lies in B */
	uint64_t obj;
	bool has_size, has_meta;
	uint64_t size;
	struct layer_meta meta;
};

struct items {
	struct item *v;
	int n, cap;
	struct secondary *sec;
	struct layer *l;
	int ret;
};

static void items_free(struct items *it)
{
	for (int i = 0; i < it->n; i++) {
		free(it->v[i].path);
		free(it->v[i].bpath);
	}
	free(it->v);
}

/* Where entry e's object lies in B: once commit_names() ran, at its
 * own path, which its lower says. */
static char *entry_bpath(const struct layer_entry *e)
{
	return strdup(e->lower ? e->lower : e->path);
}

static int collect(void *arg, const struct layer_entry *e)
{
	struct items *it = arg;
	struct item *x;

	if (e->absent || (!e->obj && !e->has_size && !e->has_meta))
		return 0;
	if (it->n == it->cap) {
		int cap = it->cap ? 2 * it->cap : 16;
		struct item *v = realloc(it->v, cap * sizeof(*v));

		if (!v)
			return it->ret = -ENOMEM;
		it->v = v;
		it->cap = cap;
	}
	x = &it->v[it->n];
	*x = (struct item){.l = it->l,
			   .path = strdup(e->path),
			   .bpath = entry_bpath(e),
			   .obj = e->obj,
			   .has_size = e->has_size,
			   .has_meta = e->has_meta,
			   .size = e->size,
			   .meta = e->meta};
	it->n++;
	if (!x->path || !x->bpath)
		return it->ret = -ENOMEM;
	return 0;
}

/* Every entry of l with something to commit, under sec->lock. */
static int collect_layer(struct secondary *sec, struct layer *l,
			 struct items *it)
{
	*it = (struct items){.sec = sec, .l = l};
	pthread_mutex_lock(&sec->lock);
	layer_each(l, collect, it);
	pthread_mutex_unlock(&sec->lock);
	return it->ret;
}

/* Write the clusters x's layer holds into B, up to size bytes. */
static int commit_data(struct secondary *sec, const struct item *x,
		       struct tree_file *f, uint64_t size)
{
	unsigned int cl = sec->cfg->cluster;
	char *buf = malloc(cl);
	int ret = buf ? 0 : -ENOMEM;

	for (uint64_t k = 0; !ret && x->obj && k * cl < size; k++) {
		size_t n = size - k * cl < cl ? (size_t)(size - k * cl) : cl;
		bool held;
		ssize_t w;

		pthread_mutex_lock(&sec->lock);
		held = layer_obj_has(x->l, x->obj, k);
		if (held)
			ret = layer_obj_read(x->l, x->obj, buf, n,
					     (off_t)(k * cl));
		pthread_mutex_unlock(&sec->lock);
		if (!held || ret)
			continue;
		w = tree_write(sec->tree, f, buf, n, (off_t)(k * cl), NULL);
		if (w < 0)
			ret = (int)w;
	}
	free(buf);
	return ret;
}

/* The size x's layer gives its object, else B's. */
static uint64_t item_size(struct secondary *sec, const struct item *x,
			  uint64_t ino)
{
	struct stat st;

	if (x->has_size)
		return x->size;
	return tree_getattr(sec->tree, ino, &st) ? 0 : (uint64_t)st.st_size;
}

static int commit_attrs(struct secondary *sec, const struct item *x,
			uint64_t ino, struct tree_file *f)
{
	struct stat attr = {0}, st;
	int to_set = 0;

	if (x->has_size) {
		attr.st_size = (off_t)x->size;
		to_set |= TREE_SET_SIZE;
	}
	if (x->has_meta) {
		attr.st_mode = x->meta.mode;
		attr.st_uid = x->meta.uid;
		attr.st_gid = x->meta.gid;
		attr.st_atim = x->meta.atime;
		attr.st_mtim = x->meta.mtime;
		to_set |= TREE_SET_MODE | TREE_SET_UID | TREE_SET_GID |
			  TREE_SET_ATIME | TREE_SET_MTIME;
	}
	return to_set ? tree_setattr(sec->tree, ino, f, &attr, to_set, &st) : 0;
}

/* One entry into B: data up to the larger size, then size and
 * metadata, then made durable. */
static int commit_item(struct secondary *sec, const struct item *x)
{
	struct tree_file *f = NULL;
	struct stat st;
	uint64_t ino, size;
	int ret;

	if (!x->bpath)
		return 0; /* nothing of B to commit into */
	ret = base_lookup(sec, x->bpath, &ino);
	if (ret)
		return ret;
	if (!tree_getattr(sec->tree, ino, &st) && S_ISREG(st.st_mode))
		ret = tree_open(sec->tree, ino, O_RDWR, &f);
	size = item_size(sec, x, ino);
	if (!ret && f)
		ret = commit_data(sec, x, f,
				  size > (uint64_t)st.st_size
					  ? size
					  : (uint64_t)st.st_size);
	if (!ret)
		ret = commit_attrs(sec, x, ino, f);
	if (!ret && f)
		ret = tree_fsync(sec->tree, f, false);
	if (f)
		tree_release(sec->tree, f);
	base_forget(sec, ino);
	return ret;
}

/* Names first, then each entry's data, size and metadata. */
static int commit_layer(struct secondary *sec, struct layer *l)
{
	struct items it;
	int ret = commit_names(sec, l);

	if (ret)
		return ret;
	ret = collect_layer(sec, l, &it);

	for (int i = 0; !ret && i < it.n; i++)
		ret = commit_item(sec, &it.v[i]);
	items_free(&it);
	return ret;
}

/* Once B is C again, hidden has nothing more to say: an empty hidden
 * layer keeps the view right while the active one is committed, and a
 * failover that stops here and goes on later. */
static int empty_hidden(struct secondary *sec)
{
	struct layer_state st;
	int ret;

	layer_get_state(sec->hidden, &st);
	pthread_mutex_lock(&sec->lock);
	ret = layer_switch(sec->hidden, st.epoch);
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

static int mark_failed_over(struct secondary *sec)
{
	struct layer_state st;

	layer_get_state(sec->active, &st);
	if (st.failed_over)
		return 0;
	st.failed_over = true;
	return layer_set_state(sec->active, &st);
}

int secondary_failover(struct secondary *sec, char *err, size_t errlen)
{
	struct paths *graves = NULL;
	uint64_t epoch = 0;
	int ret;

	atomic_store(&sec->read_only, true);
	pthread_rwlock_wrlock(&sec->epoch);
	pthread_rwlock_wrlock(&sec->names);
	ret = mark_failed_over(sec);
	if (!ret)
		ret = secondary_set_stage(sec, REPL_FAILOVER,
					  "replication stop failover");
	/* Hidden first: C's bytes come back; then the VM's own over them. */
	if (!ret)
		ret = commit_layer(sec, sec->hidden);
	if (!ret) {
		failpoint("commit");
		ret = empty_hidden(sec);
	}
	if (!ret)
		ret = commit_layer(sec, sec->active);
	if (!ret)
		ret = secondary_new_epoch(sec, &epoch);
	if (!ret)
		ret = secondary_set_stage(sec, REPL_DONE, "failover committed");
	if (!ret)
		graveyard_list(sec, &graves);
	if (ret) {
		atomic_store(&sec->error, -EIO);
		secondary_set_stage(sec, REPL_FAILOVER_FAILED, strerror(-ret));
	}
	atomic_fetch_add(&sec->ns_gen, 1);
	pthread_rwlock_unlock(&sec->names);
	pthread_rwlock_unlock(&sec->epoch);
	/* Here, not in the background: the base is whole when stop returns. */
	layer_gc(sec->active, epoch);
	layer_gc(sec->hidden, epoch);
	graveyard_clear(sec, graves);
	/* QEMU's stop with failover drops the commit's error: the stage
	 * and get-error tell it. */
	(void)err;
	(void)errlen;
	return 0;
}
