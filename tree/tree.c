/*
 * The fs object, the fan-out helper and the write vote that every
 * modifying operation shares.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vote/vote.h"

/* Writers first: a resync waiting to make its child vote must not starve
 * behind a stream of namespace changes (which never nest the lock). */
static int init_barrier(pthread_rwlock_t *lock)
{
	pthread_rwlockattr_t attr;
	int ret;

	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(
		&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	ret = -pthread_rwlock_init(lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	return ret;
}

int fs_new(struct child_set *set, struct pool *pool, struct event_log *log,
	   struct fs **out)
{
	struct fs *fs = calloc(1, sizeof(*fs));
	int ret;

	if (!fs)
		return -ENOMEM;
	ret = init_barrier(&fs->ns_barrier);
	if (ret) {
		free(fs);
		return ret;
	}
	fs->set = set;
	fs->pool = pool;
	fs->log = log;
	fs->as_root = geteuid() == 0;
	atomic_init(&fs->fatal, false);
	pthread_mutex_init(&fs->files_lock, NULL);
	pthread_mutex_init(&fs->bufs_lock, NULL);
	pthread_mutex_init(&fs->resync_lock, NULL);
	pthread_mutex_init(&fs->control_lock, NULL);
	pthread_mutex_init(&fs->health_lock, NULL);
	pthread_cond_init(&fs->health_wake, NULL);
	ret = nodes_init(fs);
	if (ret) {
		fs_free(fs);
		return ret;
	}
	*out = fs;
	return 0;
}

void fs_free(struct fs *fs)
{
	if (!fs)
		return;
	health_stop(fs);
	scrub_free(fs);
	resync_stop(fs, NULL);
	for (int slot = 0; slot < CHILDREN_MAX; slot++)
		resync_forget_dirty(fs, slot);
	files_release_all(fs);
	nodes_destroy(fs);
	pthread_mutex_destroy(&fs->files_lock);
	while (fs->nbufs)
		free(fs->bufs[--fs->nbufs]);
	pthread_mutex_destroy(&fs->bufs_lock);
	pthread_mutex_destroy(&fs->resync_lock);
	pthread_rwlock_destroy(&fs->ns_barrier);
	pthread_mutex_destroy(&fs->control_lock);
	pthread_cond_destroy(&fs->health_wake);
	pthread_mutex_destroy(&fs->health_lock);
	free(fs->mountpoint);
	free(fs);
}

int fs_start_health(struct fs *fs, struct record *record, int timeout_ms)
{
	struct child *m[CHILDREN_MAX];
	int n = children_members(fs->set, m);

	fs->record = record;
	fs->timeout_ms = timeout_ms;
	/* Children that were behind at mount: say why, and start their
	 * copy at once. */
	for (int i = 0; i < n; i++) {
		if (child_state(m[i]) == CHILD_STALE) {
			children_log_state(fs->set, m[i]);
			fs->want_resync |= 1u << child_slot(m[i]);
		}
		child_put(m[i]);
	}
	return health_start(fs);
}

bool fs_fatal(const struct fs *fs)
{
	return atomic_load(&fs->fatal);
}

bool fs_reserved_name(uint64_t parent, const char *name)
{
	return parent == FS_ROOT_INO && (strcmp(name, ".control") == 0 ||
					 strcmp(name, ".quorumfs") == 0);
}

/*
 * I/O buffers. Requests are at most FS_BUF_SIZE, so one size serves all;
 * reusing buffers spares each request the page faults of fresh memory
 * (three 1 MiB buffers a read). At most FS_BUF_KEEP are kept, which bounds
 * what an idle daemon holds.
 */
void *fs_buf_get(struct fs *fs, size_t size)
{
	void *buf = NULL;

	if (size > FS_BUF_SIZE)
		return aligned_alloc_or_null(size);
	pthread_mutex_lock(&fs->bufs_lock);
	if (fs->nbufs)
		buf = fs->bufs[--fs->nbufs];
	pthread_mutex_unlock(&fs->bufs_lock);
	return buf ? buf : aligned_alloc_or_null(FS_BUF_SIZE);
}

void fs_buf_put(struct fs *fs, void *buf, size_t size)
{
	if (buf && size <= FS_BUF_SIZE) {
		pthread_mutex_lock(&fs->bufs_lock);
		if (fs->nbufs < FS_BUF_KEEP) {
			fs->bufs[fs->nbufs++] = buf;
			buf = NULL;
		}
		pthread_mutex_unlock(&fs->bufs_lock);
	}
	free(buf);
}

void *aligned_alloc_or_null(size_t size)
{
	void *p;

	if (posix_memalign(&p, FS_ALIGN, size ? size : FS_ALIGN))
		return NULL;
	return p;
}

static void fanout_task(void *arg, int i)
{
	struct fanout *fo = arg;

	fo->body(fo, i);
	atomic_store(&fo->done[i], true);
}

void fanout_run(struct fanout *fo)
{
	health_watch(fo->fs, fo);
	pool_run(fo->fs->pool, fo->view->n, fanout_task, fo);
	health_unwatch(fo->fs, fo);
}

int fanout_error_vote(const struct fanout *fo)
{
	struct vote_ballot b[CHILDREN_MAX];
	int n = 0;

	for (int i = 0; i < fo->view->n; i++)
		if (fo->view->votes[i] && fo->ret[i])
			b[n++] = (struct vote_ballot){.error = fo->ret[i]};
	return vote_error(b, n);
}

bool fs_device_error(int error)
{
	switch (-error) {
	case EIO:
	case ENOSPC:
	case EDQUOT:
	case EROFS:
	case ETIMEDOUT:
	case ENODEV:
	case ENXIO:
	case ESTALE:
	case ENOTCONN:
	case EBADF:
	case ENOMEM:
		return true;
	default:
		return false;
	}
}

bool refused_by_all(const int *ret, int n)
{
	for (int i = 0; i < n; i++)
		if (ret[i] != ret[0])
			return false;
	return n > 0 && ret[0] && !fs_device_error(ret[0]);
}

/*
 * A child being resynced misses files and directories the copy has not
 * reached yet; those errors are expected and the copy will fix them. A
 * device error, though, means the child cannot keep up: it fails, not
 * the caller's request.
 */
static void syncing_child_failed(struct fanout *fo, int i)
{
	char reason[128];

	if (!fs_device_error(fo->ret[i]))
		return;
	snprintf(reason, sizeof(reason), "write failed during resync: %s",
		 strerror(-fo->ret[i]));
	children_set_state(fo->fs->set, fo->view->child[i], CHILD_FAILED,
			   reason);
}

/* Bits of the node's intent cache for [off, off + len), or 0 when the
 * range reaches past what the cache covers. */
static uint64_t intent_bits(off_t off, off_t len)
{
	int64_t first = off / PERSIST_REGION;
	int64_t last = (off + (len ? len : 1) - 1) / PERSIST_REGION;

	if (last >= 64)
		return 0;
	return (last == 63 ? ~0ULL : (1ULL << (last + 1)) - 1) &
	       ~((1ULL << first) - 1);
}

/*
 * Every write asks; almost every answer is "already announced", so the
 * node caches that for its first 64 regions and the record's lock is
 * only taken for a region new in this generation.
 */
void fs_announce_write(struct fs *fs, struct node *n, off_t off, off_t len)
{
	uint64_t bits = intent_bits(off, len), gen;
	char *path;

	if (!fs->record)
		return;
	gen = record_generation(fs->record);
	if (bits && atomic_load(&n->intent_gen) == gen &&
	    (atomic_load(&n->intent_mask) & bits) == bits)
		return;
	if (!record_announced(fs->record, n->key_dev, n->key_ino, off, len)) {
		path = node_path(fs, n);
		if (!path)
			return; /* not announced: nothing to cache */
		record_announce(fs->record, fs->set, n->key_dev, n->key_ino,
				path, off, len);
		free(path);
	}
	/* A lost race only costs another trip to the record. */
	if (atomic_load(&n->intent_gen) != gen) {
		atomic_store(&n->intent_mask, 0);
		atomic_store(&n->intent_gen, gen);
	}
	atomic_fetch_or(&n->intent_mask, bits);
}

void fs_announce_tree(struct fs *fs)
{
	if (fs->record)
		record_announce_tree(fs->record, fs->set);
}

/*
 * The quorum took a change some voting children did not: they missed it
 * and must not vote again before they have it (health.c). Opening a file
 * changes nothing and is left out.
 */
static void demote_missed(struct fanout *fo, const char *type, const char *path)
{
	for (int i = 0; i < fo->view->n && !fo->probe; i++)
		if (fo->view->votes[i] && fo->ret[i])
			health_missed(fo->fs, fo->view->child[i], type,
				      path ? path : "", fo->ret[i]);
}

int fanout_tally(struct fanout *fo, const char *type, struct node *n,
		 uint64_t off, uint64_t len)
{
	const struct child_view *view = fo->view;
	bool flush = strcmp(type, "flush") == 0;
	int errors[CHILDREN_MAX], voters = 0, successes = 0;
	char *path = NULL;

	for (int i = 0; i < view->n; i++)
		if (view->votes[i])
			errors[voters++] = fo->ret[i];
	if (refused_by_all(errors, voters))
		return errors[0];
	for (int i = 0; i < view->n; i++) {
		if (!fo->ret[i]) {
			successes += view->votes[i];
			continue;
		}
		if (!view->votes[i]) {
			syncing_child_failed(fo, i);
			continue;
		}
		child_count_error(view->child[i],
				  flush ? CHILD_OP_FLUSH : CHILD_OP_WRITE);
		if (!path)
			path = node_path(fo->fs, n);
		event_log_report_bad(fo->fs->log, type,
				     child_name(view->child[i]),
				     flush ? 0 : off, flush ? 0 : len,
				     fo->ret[i], path ? path : "");
	}
	if (successes >= view->threshold) {
		demote_missed(fo, type, path);
		free(path);
		return 0;
	}
	if (!flush) {
		if (!path)
			path = node_path(fo->fs, n);
		event_log_quorum_failure(fo->fs->log, path ? path : "", off,
					 len);
	}
	free(path);
	return fanout_error_vote(fo);
}
