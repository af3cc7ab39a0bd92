/*
 * The fs object, the fan-out helper and the write vote that every
 * modifying operation shares.
 */
#define _GNU_SOURCE
#include "fs/fs_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vote/vote.h"

int fs_new(struct child_set *set, struct pool *pool, struct event_log *log,
	   struct fs **out)
{
	struct fs *fs = calloc(1, sizeof(*fs));
	int ret;

	if (!fs)
		return -ENOMEM;
	fs->set = set;
	fs->pool = pool;
	fs->log = log;
	fs->as_root = geteuid() == 0;
	atomic_init(&fs->fatal, false);
	pthread_mutex_init(&fs->files_lock, NULL);
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
	files_release_all(fs);
	nodes_destroy(fs);
	pthread_mutex_destroy(&fs->files_lock);
	free(fs);
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
}

void fanout_run(struct fanout *fo)
{
	pool_run(fo->fs->pool, fo->view->n, fanout_task, fo);
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

int fanout_tally(struct fanout *fo, const char *type, struct node *n,
		 uint64_t off, uint64_t len)
{
	const struct child_view *view = fo->view;
	bool flush = strcmp(type, "flush") == 0;
	int successes = 0, failures = 0;
	char *path = NULL;

	if (refused_by_all(fo->ret, view->n))
		return fo->ret[0];

	for (int i = 0; i < view->n; i++) {
		if (!fo->ret[i]) {
			successes += view->votes[i];
			continue;
		}
		failures++;
		child_count_error(view->child[i],
				  flush ? CHILD_OP_FLUSH : CHILD_OP_WRITE);
	}
	if (failures)
		path = node_path(fo->fs, n);
	for (int i = 0; i < view->n; i++)
		if (fo->ret[i])
			event_log_report_bad(fo->fs->log, type,
					     child_name(view->child[i]),
					     flush ? 0 : off, flush ? 0 : len,
					     fo->ret[i], path ? path : "");
	if (successes >= view->threshold) {
		free(path);
		return 0;
	}
	if (!flush)
		event_log_quorum_failure(fo->fs->log, path ? path : "", off,
					 len);
	free(path);
	return fanout_error_vote(fo);
}
