/*
 * The tree object: what it is made of and its lifetime. The rules live in
 * the other files: nodes.c (the inode table), files.c (open files),
 * namespace.c, attr.c, dir.c, read.c and write.c (the operations),
 * fanout.c and health.c (what answers amount to and whom they demote),
 * intent.c (the write-intent announcements) and incomplete.c (what a
 * syncing child still lacks).
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* The witnesses the set starts with. */
static void note_witnesses(struct tree *tree)
{
	struct child *m[CHILDREN_MAX];
	int n = children_members(tree->set, m);

	for (int i = 0; i < n; i++) {
		if (child_kind(m[i]) == CHILD_WITNESS)
			atomic_fetch_or(&tree->witness_slots,
					1u << child_slot(m[i]));
		child_put(m[i]);
	}
}

int tree_new(struct child_set *set, struct pool *pool, struct watchdog *wd,
	     struct event_log *log, struct record *record, struct tree **out)
{
	struct tree *tree = calloc(1, sizeof(*tree));
	int ret;

	if (!tree)
		return -ENOMEM;
	ret = init_barrier(&tree->ns_barrier);
	if (ret) {
		free(tree);
		return ret;
	}
	tree->set = set;
	tree->pool = pool;
	tree->log = log;
	tree->record = record;
	tree->watchdog = wd;
	tree->timeout_ms = watchdog_timeout_ms(wd);
	tree->as_root = geteuid() == 0;
	atomic_init(&tree->fatal, false);
	pthread_mutex_init(&tree->files.lock, NULL);
	incomplete_init(&tree->incomplete);
	policies_init(tree);
	ret = nodes_init(tree);
	if (!ret)
		watchdog_set_late(wd, health_late, tree);
	if (!ret)
		note_witnesses(tree);
	if (ret) {
		tree_free(tree);
		return ret;
	}
	*out = tree;
	return 0;
}

void tree_free(struct tree *tree)
{
	if (!tree)
		return;
	watchdog_set_late(tree->watchdog, NULL, NULL);
	incomplete_destroy(tree);
	files_release_all(tree);
	nodes_destroy(tree);
	pthread_mutex_destroy(&tree->files.lock);
	policies_destroy(tree);
	pthread_rwlock_destroy(&tree->ns_barrier);
	free(tree);
}

void tree_set_hooks(struct tree *tree, const struct tree_hooks *hooks)
{
	tree->hooks = *hooks;
}

void tree_set_quarantine(struct tree *tree, struct quarantine *q)
{
	tree->quarantine = q;
}

bool tree_fatal(const struct tree *tree)
{
	return atomic_load(&tree->fatal);
}

int tree_child_added(struct tree *tree, struct child *c)
{
	int fd;

	if (child_kind(c) == CHILD_WITNESS)
		atomic_fetch_or(&tree->witness_slots, 1u << child_slot(c));
	fd = dup(child_root_fd(c));
	/* Until the root handle is in place the child simply misses
	 * entries, which its resync copies anyway. */
	if (fd < 0)
		return -errno;
	atomic_store(&tree->table.root.fd[child_slot(c)], fd);
	return 0;
}

void tree_child_removed(struct tree *tree, int slot)
{
	node_forget_slot(tree, slot);
	files_forget_slot(tree, slot);
	atomic_fetch_and(&tree->witness_slots, ~(1u << slot));
}

int tree_child_reopen(struct tree *tree, struct child *c)
{
	tree_child_removed(tree, child_slot(c));
	return tree_child_added(tree, c);
}

void tree_barrier_raise(struct tree *tree)
{
	pthread_rwlock_wrlock(&tree->ns_barrier);
}

void tree_barrier_lower(struct tree *tree)
{
	pthread_rwlock_unlock(&tree->ns_barrier);
}
