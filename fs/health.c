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
#include "fs/fs_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void demote(struct fs *fs, struct child *c, enum child_state to,
		   const char *reason, bool tree)
{
	enum child_state now = child_state(c);

	/* failed outranks stale; a syncing child is resync's business */
	if (now == CHILD_FAILED || now == CHILD_SYNCING || now == to)
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

static void *health_thread(void *arg)
{
	struct fs *fs = arg;
	unsigned int wanted;

	pthread_mutex_lock(&fs->health_lock);
	while (!fs->health_stop) {
		wanted = fs->want_resync;
		fs->want_resync = 0;
		if (!wanted) {
			pthread_cond_wait(&fs->health_wake, &fs->health_lock);
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
