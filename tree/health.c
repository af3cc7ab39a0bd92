/*
 * Child health: when a child stops voting, and bringing it back.
 *
 *   - A voting child that fails a change the quorum took (a write, a
 *     truncate, a namespace change, a flush) has missed it: it turns
 *     stale at once, before the writer hears of success, and the set's
 *     record moves to a new generation without it, so no restart can let
 *     it vote on its old data. Its resync starts in the background and
 *     copies what the intent log says it missed.
 *   - A child that times out, or fails FS_ERROR_LIMIT reads in a row,
 *     turns failed: it is out until an operator asks for `resync NAME`
 *     (its device needs a look first).
 *
 * Resyncs cannot start on the request's thread: that thread holds a
 * range lock the copy may need. A small thread starts them instead.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void demote(struct fs *fs, struct child *c, enum child_state to,
		   const char *reason, bool tree)
{
	enum child_state now = child_state(c);

	/* failed outranks stale; a syncing child is resync's business
	 * unless it stops answering */
	if (now == CHILD_FAILED || now == to ||
	    (now == CHILD_SYNCING && to == CHILD_STALE))
		return;
	if (fs->record)
		record_set_behind(fs->record, c, tree);
	if (children_set_state(fs->set, c, to, reason) == to)
		return; /* another thread got there first */
	if (fs->record)
		record_demoted(fs->record, fs->set);
	if (to != CHILD_STALE)
		return;
	pthread_mutex_lock(&fs->health_lock);
	fs->want_resync |= 1u << child_slot(c);
	pthread_cond_signal(&fs->health_wake);
	pthread_mutex_unlock(&fs->health_lock);
}

void health_demote(struct fs *fs, struct child *c, enum child_state to,
		   const char *reason)
{
	demote(fs, c, to, reason, true);
}

/*
 * Only a data write that failed on the device leaves the child's tree as
 * it was, with the intent log naming what it lacks; anything else (a file
 * it does not have, a failed flush or namespace change) needs the tree.
 */
void health_missed(struct fs *fs, struct child *c, const char *type,
		   const char *path, int error)
{
	char reason[256];

	if (error == -ETIMEDOUT)
		snprintf(reason, sizeof(reason),
			 "did not answer a %s of '%s' within %d ms", type, path,
			 fs->timeout_ms);
	else
		snprintf(reason, sizeof(reason), "missed a %s of '%s': %s",
			 type, path, strerror(-error));
	demote(fs, c, error == -ETIMEDOUT ? CHILD_FAILED : CHILD_STALE, reason,
	       !(strcmp(type, "write") == 0 && fs_device_error(error)));
}

void health_read_error(struct fs *fs, struct child *c, int error)
{
	char reason[256];
	int streak;

	if (error == -ETIMEDOUT) {
		snprintf(reason, sizeof(reason),
			 "did not answer a read within %d ms", fs->timeout_ms);
		health_demote(fs, c, CHILD_FAILED, reason);
		return;
	}
	if (!fs_device_error(error))
		return;
	streak = child_error_streak(c, true);
	if (streak < FS_ERROR_LIMIT)
		return;
	snprintf(reason, sizeof(reason), "%d reads in a row failed: %s", streak,
		 strerror(-error));
	health_demote(fs, c, CHILD_FAILED, reason);
}

/* Start the resync of each stale child that asked; under control_lock,
 * so that no control command races it. */
static void start_wanted(struct fs *fs, unsigned int wanted)
{
	struct child *m[CHILDREN_MAX];
	int n = children_members(fs->set, m);
	char err[256];

	pthread_mutex_lock(&fs->control_lock);
	for (int i = 0; i < n; i++) {
		if ((wanted & (1u << child_slot(m[i]))) &&
		    child_state(m[i]) == CHILD_STALE &&
		    !children_begin_resync(fs->set, m[i], err, sizeof(err)) &&
		    resync_start(fs, m[i], true))
			children_set_state(fs->set, m[i], CHILD_FAILED,
					   "cannot start its resync");
		child_put(m[i]);
	}
	pthread_mutex_unlock(&fs->control_lock);
}

/* ---- the watchdog of pool fan-outs ---- */

/*
 * Metadata calls (lookup, open, close...) run on the pool, synchronously:
 * one that a hung child holds cannot be taken back. The watchdog fails
 * that child once it is io-timeout late, so that every later request
 * leaves it out; the call it holds returns when the child answers.
 */
void health_watch(struct fs *fs, struct fanout *fo)
{
	if (fs->timeout_ms <= 0)
		return;
	clock_gettime(CLOCK_MONOTONIC, &fo->started);
	for (int i = 0; i < fo->view->n; i++)
		atomic_init(&fo->done[i], false);
	fo->overdue = false;
	pthread_mutex_lock(&fs->health_lock);
	fo->prev = NULL;
	fo->next = fs->running;
	if (fo->next)
		fo->next->prev = fo;
	fs->running = fo;
	pthread_mutex_unlock(&fs->health_lock);
}

void health_unwatch(struct fs *fs, struct fanout *fo)
{
	if (fs->timeout_ms <= 0)
		return;
	pthread_mutex_lock(&fs->health_lock);
	if (fo->prev)
		fo->prev->next = fo->next;
	else
		fs->running = fo->next;
	if (fo->next)
		fo->next->prev = fo->prev;
	pthread_mutex_unlock(&fs->health_lock);
}

static long long ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - t->tv_sec) * 1000LL +
	       (now.tv_nsec - t->tv_nsec) / 1000000;
}

/* Children of overdue fan-outs (references), each once; health_lock held. */
static int overdue_locked(struct fs *fs, struct child **late)
{
	int n = 0;

	for (struct fanout *fo = fs->running; fo; fo = fo->next) {
		if (fo->overdue || ms_since(&fo->started) < fs->timeout_ms)
			continue;
		fo->overdue = true;
		for (int i = 0; i < fo->view->n && n < CHILDREN_MAX; i++) {
			if (atomic_load(&fo->done[i]))
				continue;
			child_get(fo->view->child[i]);
			late[n++] = fo->view->child[i];
		}
	}
	return n;
}

static void fail_late(struct fs *fs, struct child **late, int n)
{
	char reason[128];

	snprintf(reason, sizeof(reason),
		 "did not answer a metadata call within %d ms", fs->timeout_ms);
	for (int i = 0; i < n; i++) {
		health_demote(fs, late[i], CHILD_FAILED, reason);
		child_put(late[i]);
	}
}

static void health_sleep(struct fs *fs)
{
	struct timespec until;
	int ms = fs->timeout_ms / 4 > 100 ? fs->timeout_ms / 4 : 100;

	if (fs->timeout_ms <= 0) {
		pthread_cond_wait(&fs->health_wake, &fs->health_lock);
		return;
	}
	children_deadline(CLOCK_REALTIME, ms, &until);
	pthread_cond_timedwait(&fs->health_wake, &fs->health_lock, &until);
}

static void *health_thread(void *arg)
{
	struct fs *fs = arg;
	struct child *late[CHILDREN_MAX];
	unsigned int wanted;
	int nlate;

	pthread_mutex_lock(&fs->health_lock);
	while (!fs->health_stop) {
		nlate = overdue_locked(fs, late);
		if (nlate) {
			pthread_mutex_unlock(&fs->health_lock);
			fail_late(fs, late, nlate);
			pthread_mutex_lock(&fs->health_lock);
		}
		wanted = fs->want_resync;
		fs->want_resync = 0;
		if (!wanted) {
			health_sleep(fs);
			continue;
		}
		pthread_mutex_unlock(&fs->health_lock);
		start_wanted(fs, wanted);
		pthread_mutex_lock(&fs->health_lock);
	}
	pthread_mutex_unlock(&fs->health_lock);
	return NULL;
}

int health_start(struct fs *fs)
{
	int ret = -pthread_create(&fs->health, NULL, health_thread, fs);

	if (!ret) {
		pthread_setname_np(fs->health, "qfs-health");
		fs->health_running = true;
	}
	return ret;
}

void health_stop(struct fs *fs)
{
	if (!fs->health_running)
		return;
	pthread_mutex_lock(&fs->health_lock);
	fs->health_stop = true;
	pthread_cond_signal(&fs->health_wake);
	pthread_mutex_unlock(&fs->health_lock);
	pthread_join(fs->health, NULL);
	fs->health_running = false;
}
