/*
 * The jobs object: starting and stopping resyncs and scrubs, and the
 * launcher thread (qfs-jobs) that starts the resync of every child the
 * tree reports stale.
 *
 * The tree calls child_stale() on a request's thread, which may hold a
 * range claim that the copy (or the end of an earlier copy of the same
 * child) needs, so the hook only records the child and wakes the
 * launcher, which starts the copy under jobs->lock like a command would.
 */
#define _GNU_SOURCE
#include "jobs/jobs_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void want_resync(struct jobs *jobs, int slot)
{
	pthread_mutex_lock(&jobs->wake_lock);
	jobs->wanted |= 1u << slot;
	pthread_cond_signal(&jobs->wake);
	pthread_mutex_unlock(&jobs->wake_lock);
}

static void child_stale(void *arg, struct child *c)
{
	want_resync(arg, child_slot(c));
}

/* Start the resync of each stale child that asked; a copy that cannot
 * start leaves its child failed. */
static void start_wanted(struct jobs *jobs, unsigned int wanted)
{
	struct child *m[CHILDREN_MAX];
	int n = children_members(jobs->set, m);
	char err[256];

	pthread_mutex_lock(&jobs->lock);
	for (int i = 0; i < n; i++) {
		if ((wanted & (1u << child_slot(m[i]))) &&
		    child_state(m[i]) == CHILD_STALE &&
		    !children_begin_resync(jobs->set, m[i], err, sizeof(err)) &&
		    resync_start(jobs, m[i], true))
			jobs_fail_child(jobs, m[i], "cannot start its resync");
		child_put(m[i]);
	}
	pthread_mutex_unlock(&jobs->lock);
}

static void *launcher_thread(void *arg)
{
	struct jobs *jobs = arg;
	unsigned int wanted;

	pthread_mutex_lock(&jobs->wake_lock);
	while (!jobs->stop) {
		wanted = jobs->wanted;
		jobs->wanted = 0;
		if (!wanted) {
			pthread_cond_wait(&jobs->wake, &jobs->wake_lock);
			continue;
		}
		pthread_mutex_unlock(&jobs->wake_lock);
		start_wanted(jobs, wanted);
		pthread_mutex_lock(&jobs->wake_lock);
	}
	pthread_mutex_unlock(&jobs->wake_lock);
	return NULL;
}

/* Children that were out at mount: say why, and start the copy of those
 * that are behind. */
static void want_stale_at_mount(struct jobs *jobs)
{
	struct child *m[CHILDREN_MAX];
	int n = children_members(jobs->set, m);

	for (int i = 0; i < n; i++) {
		enum child_state s = child_state(m[i]);

		/* A failed one waits for `resync NAME`. */
		if (s == CHILD_STALE || s == CHILD_FAILED)
			children_log_state(jobs->set, m[i]);
		if (s == CHILD_STALE)
			want_resync(jobs, child_slot(m[i]));
		child_put(m[i]);
	}
}

int jobs_new(const struct jobs_config *cfg, struct jobs **out)
{
	struct jobs *jobs = calloc(1, sizeof(*jobs));
	struct tree_hooks hooks = {.child_stale = child_stale, .arg = jobs};
	int ret;

	if (!jobs)
		return -ENOMEM;
	*jobs = (struct jobs){.set = cfg->set,
			      .tree = cfg->tree,
			      .pool = cfg->pool,
			      .wd = cfg->wd,
			      .record = cfg->record,
			      .log = cfg->log,
			      .quarantine = cfg->quarantine,
			      .timeout_ms = cfg->timeout_ms,
			      .scrub_rate = cfg->scrub_rate};
	pthread_mutex_init(&jobs->lock, NULL);
	pthread_mutex_init(&jobs->resync_lock, NULL);
	pthread_mutex_init(&jobs->wake_lock, NULL);
	pthread_cond_init(&jobs->wake, NULL);
	ret = scrub_init(jobs);
	if (!ret)
		ret = -pthread_create(&jobs->launcher, NULL, launcher_thread,
				      jobs);
	if (ret) {
		scrub_free(jobs);
		pthread_cond_destroy(&jobs->wake);
		free(jobs);
		return ret;
	}
	pthread_setname_np(jobs->launcher, "qfs-jobs");
	tree_set_hooks(cfg->tree, &hooks);
	want_stale_at_mount(jobs);
	*out = jobs;
	return 0;
}

void jobs_free(struct jobs *jobs)
{
	struct tree_hooks none = {0};

	if (!jobs)
		return;
	tree_set_hooks(jobs->tree, &none);
	pthread_mutex_lock(&jobs->wake_lock);
	jobs->stop = true;
	pthread_cond_signal(&jobs->wake);
	pthread_mutex_unlock(&jobs->wake_lock);
	pthread_join(jobs->launcher, NULL);
	pthread_mutex_lock(&jobs->lock);
	scrub_free(jobs);
	resync_stop(jobs, NULL);
	pthread_mutex_unlock(&jobs->lock);
	pthread_cond_destroy(&jobs->wake);
	pthread_mutex_destroy(&jobs->wake_lock);
	pthread_mutex_destroy(&jobs->resync_lock);
	pthread_mutex_destroy(&jobs->lock);
	free(jobs);
}

/*
 * A child brought back from failed or stale gets new handles: whatever
 * failed it may have left the old ones useless (a network filesystem
 * that reconnected answers EIO on files opened before). Only once no
 * request uses them, which a failed child reaches within io-timeout.
 */
static int fresh_handles(struct jobs *jobs, struct child *c, char *err,
			 size_t errlen)
{
	enum child_state s = child_state(c);
	int ms = jobs->timeout_ms > 0 ? jobs->timeout_ms : 30000, ret;

	if (s != CHILD_FAILED && s != CHILD_STALE)
		return 0;
	if (!children_drain(jobs->set, c, ms)) {
		snprintf(err, errlen,
			 "requests that began before '%s' left the set still "
			 "use it; try again once they end",
			 child_name(c));
		return -EBUSY;
	}
	ret = tree_child_reopen(jobs->tree, c);
	if (ret)
		snprintf(err, errlen, "cannot open '%s' again: %s",
			 child_name(c), strerror(-ret));
	return ret;
}

int jobs_resync(struct jobs *jobs, struct child *c, char *err, size_t errlen)
{
	int ret;

	if (child_orphans(c) > 0) {
		snprintf(err, errlen,
			 "%d requests to '%s' timed out and are still running "
			 "there; try again once they end",
			 child_orphans(c), child_name(c));
		return -EBUSY;
	}
	ret = fresh_handles(jobs, c, err, errlen);
	if (ret)
		return ret;
	pthread_mutex_lock(&jobs->lock);
	resync_stop(jobs, c);
	ret = children_begin_resync(jobs->set, c, err, errlen);
	if (!ret && resync_start(jobs, c, false))
		jobs_fail_child(jobs, c, "cannot start its resync");
	pthread_mutex_unlock(&jobs->lock);
	return ret;
}

int jobs_resync_added(struct jobs *jobs, struct child *c)
{
	int ret;

	pthread_mutex_lock(&jobs->lock);
	ret = resync_start(jobs, c, false);
	pthread_mutex_unlock(&jobs->lock);
	return ret;
}

void jobs_resync_stop(struct jobs *jobs, struct child *c)
{
	pthread_mutex_lock(&jobs->lock);
	resync_stop(jobs, c);
	pthread_mutex_unlock(&jobs->lock);
}

int jobs_scrub_start(struct jobs *jobs, bool repair, int rate, char *err,
		     size_t errlen)
{
	int ret;

	pthread_mutex_lock(&jobs->lock);
	ret = scrub_start(jobs, repair, rate, err, errlen);
	pthread_mutex_unlock(&jobs->lock);
	return ret;
}

int jobs_scrub_stop(struct jobs *jobs, char *err, size_t errlen)
{
	int ret;

	pthread_mutex_lock(&jobs->lock);
	ret = scrub_stop(jobs, err, errlen);
	pthread_mutex_unlock(&jobs->lock);
	return ret;
}

/* The scrub's own lock suffices: a status read never waits for a
 * command. */
void jobs_scrub_status(struct jobs *jobs, struct json_object *status)
{
	scrub_status(jobs, status);
}

void jobs_scrub_forget_child(struct jobs *jobs, const char *name)
{
	scrub_forget_child(jobs, name);
}
