/*
 * The mount's lifecycle: what comes up in which order, and goes down in
 * the reverse one (control.h draws both).
 *
 * Teardown order, and why:
 *   0. the operator's socket: commands use everything below; then a
 *      secondary's layers, which views and commands used (the sessions
 *      have ended);
 *   1. the jobs: no copy or scrub may run (or log) past UNMOUNTED, and
 *      each holds the tree;
 *   2. the throttled events, then UNMOUNTED, the log's last word;
 *   3. the tree: no request runs any more (the session ended);
 *   4. the record, marked clean only after a clean stop: every child
 *      synced, the intent log cleared when all members are in step;
 *   5. the watchdog, the pool and the log, which everything above used;
 *   6. the set and the record's memory; the buffer cache.
 */
#define _GNU_SOURCE
#include "control/control_i.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* How long teardown waits for requests a hung child still holds. */
#define TEARDOWN_WAIT_MS 2000

/*
 * Check the log file can be opened before the daemon detaches, so a bad
 * path is reported on the terminal. The log itself starts later.
 */
static int check_log(const char *path, char *err, size_t errlen)
{
	int fd;

	if (!path)
		return 0;
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		snprintf(err, errlen, "log=%s cannot be opened: %s", path,
			 strerror(errno));
		return -errno;
	}
	close(fd);
	return 0;
}

/*
 * Open the children as their .quorumfs records say: members the command
 * line left out join, children that are behind start stale, a child of
 * another set is refused.
 */
static int open_children(struct control *ctl, char *err, size_t errlen)
{
	struct children_config cc = ctl->cfg->children, recorded = {0};
	struct persist_rules rules;
	int ret = record_scan(&cc, ctl->cfg->sync_from, &ctl->record, err,
			      errlen);

	if (ret)
		return ret;
	record_rules(ctl->record, &rules);
	recorded.threshold = rules.threshold;
	recorded.read_pattern = rules.read_pattern;
	recorded.rewrite_corrupted = rules.rewrite_corrupted;
	ret = config_resolve_rules(ctl->cfg, &cc, &recorded, err, errlen);
	if (ret)
		return ret;
	/* Filling a first mount's children from one of them: that one
	 * alone votes until the others are in step (control_start). */
	ctl->threshold = cc.threshold;
	if (ctl->cfg->sync_from >= 0)
		cc.threshold = 1;
	ret = children_new(&cc, &ctl->set, err, errlen);
	if (ret)
		return ret;
	return record_start(ctl->record, ctl->set, err, errlen);
}

int control_open(const struct config *cfg, const struct stat *mount_st,
		 struct control **out, char *err, size_t errlen)
{
	struct control *ctl = calloc(1, sizeof(*ctl));
	int ret;

	if (!ctl) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	ctl->cfg = cfg;
	ctl->mount_st = *mount_st;
	pthread_mutex_init(&ctl->command_lock, NULL);
	pthread_mutex_init(&ctl->error_lock, NULL);
	ret = check_log(cfg->log_path, err, errlen);
	if (!ret && cfg->secondary.on)
		ret = secondary_open(&cfg->secondary, &ctl->secondary, err,
				     errlen);
	if (!ret)
		ret = open_children(ctl, err, errlen);
	if (ret) {
		control_stop(ctl, false);
		return ret;
	}
	*out = ctl;
	return 0;
}

static void emit_mounted(struct control *ctl)
{
	const struct config *cfg = ctl->cfg;
	struct json_object *data = json_object_new_object();
	struct json_object *children = json_object_new_array();

	for (int i = 0; i < cfg->children.n; i++)
		json_object_array_add(children, json_object_new_string(
							cfg->children.path[i]));
	json_object_object_add(data, "mountpoint",
			       json_object_new_string(cfg->mountpoint));
	json_object_object_add(data, "children", children);
	json_object_object_add(
		data, "threshold",
		json_object_new_int(children_threshold(ctl->set)));
	event_log_emit(ctl->log, "MOUNTED", data);
}

/* UNMOUNTED names the children and threshold in force at the end. */
static void emit_unmounted(struct control *ctl)
{
	struct json_object *status = children_status(ctl->set), *list, *v;
	struct json_object *data = json_object_new_object(), *children;

	json_object_object_add(data, "mountpoint",
			       json_object_new_string(ctl->cfg->mountpoint));
	children = json_object_new_array();
	if (json_object_object_get_ex(status, "children", &list))
		for (size_t i = 0; i < json_object_array_length(list); i++)
			if (json_object_object_get_ex(
				    json_object_array_get_idx(list, i), "path",
				    &v))
				json_object_array_add(children,
						      json_object_get(v));
	json_object_object_add(data, "children", children);
	if (json_object_object_get_ex(status, "threshold", &v))
		json_object_object_add(data, "threshold", json_object_get(v));
	json_object_put(status);
	event_log_emit(ctl->log, "UNMOUNTED", data);
}

/* The quarantine (unless quarantine-limit=0) knows every member's
 * entries before any repair may add one. */
static int start_quarantine(struct control *ctl)
{
	struct child *m[CHILDREN_MAX];
	int n, ret;

	if (!ctl->cfg->quarantine_limit)
		return 0;
	ret = quarantine_new(ctl->cfg->quarantine_limit, ctl->log, ctl->pool,
			     ctl->watchdog, &ctl->quarantine);
	if (ret)
		return ret;
	tree_set_quarantine(ctl->tree, ctl->quarantine);
	n = children_members(ctl->set, m);
	for (int i = 0; i < n; i++) {
		quarantine_attach(ctl->quarantine, ctl->set, m[i]);
		child_put(m[i]);
	}
	return 0;
}

static int start_jobs(struct control *ctl)
{
	const struct jobs_config jc = {.set = ctl->set,
				       .tree = ctl->tree,
				       .pool = ctl->pool,
				       .wd = ctl->watchdog,
				       .record = ctl->record,
				       .log = ctl->log,
				       .quarantine = ctl->quarantine,
				       .timeout_ms = ctl->cfg->io_timeout_ms,
				       .scrub_rate = ctl->cfg->scrub_rate};

	return jobs_new(&jc, &ctl->jobs);
}

/* Every member is ok, or one failed: 0 to wait on, 1 done, or -EIO. */
static int fill_state(struct control *ctl, char *err, size_t errlen)
{
	struct child *m[CHILDREN_MAX];
	int n = children_members(ctl->set, m), ret = 1;

	for (int i = 0; i < n; i++) {
		enum child_state s = child_state(m[i]);

		if (s == CHILD_FAILED && ret > 0) {
			snprintf(err, errlen,
				 "cannot fill '%s' from the sync-from child; "
				 "see its reason in the event log",
				 child_path(m[i]));
			ret = -EIO;
		} else if (s != CHILD_OK && ret > 0) {
			ret = 0;
		}
		child_put(m[i]);
	}
	return ret;
}

/*
 * sync-from: the first mount serves once every other child holds the
 * source's tree (their resyncs start with the jobs), and only then does
 * the threshold asked for take effect.
 */
static int fill_from_source(struct control *ctl, char *err, size_t errlen)
{
	const struct timespec pause = {.tv_nsec = 50 * 1000 * 1000};
	int ret;

	while ((ret = fill_state(ctl, err, errlen)) == 0)
		nanosleep(&pause, NULL);
	if (ret < 0)
		return ret;
	ret = children_set_threshold(ctl->set, ctl->threshold, err, errlen);
	if (!ret && ctl->record) {
		struct persist_rules r;

		children_get_rules(ctl->set, &r.threshold, &r.read_pattern,
				   &r.rewrite_corrupted);
		record_set_rules(ctl->record, ctl->set, &r);
	}
	return ret;
}

int control_start(struct control *ctl, char *err, size_t errlen)
{
	const struct config *cfg = ctl->cfg;
	int ret = control_open_events(ctl);

	if (!ret)
		ret = pool_new(cfg->threads, &ctl->pool);
	if (!ret)
		ret = watchdog_new(cfg->io_timeout_ms, &ctl->watchdog);
	children_set_log(ctl->set, ctl->log);
	if (!ret)
		ret = tree_new(ctl->set, ctl->pool, ctl->watchdog, ctl->log,
			       ctl->record, &ctl->tree);
	if (!ret)
		record_set_io(ctl->record, ctl->pool, ctl->watchdog);
	if (!ret)
		control_policies_start(ctl);
	if (!ret)
		ret = copies_new(ctl->set, ctl->pool, ctl->watchdog, geteuid(),
				 getegid(), &ctl->copies);
	if (!ret)
		ret = start_quarantine(ctl);
	if (!ret)
		ret = start_jobs(ctl);
	if (ret) {
		snprintf(err, errlen, "cannot start: %s", strerror(-ret));
		return ret;
	}
	if (ctl->secondary)
		secondary_start(ctl->secondary, ctl->tree, ctl->log,
				cfg->io_timeout_ms);
	ret = jobs_settle(ctl->jobs);
	if (ret) {
		snprintf(err, errlen,
			 "cannot settle the writes of an unclean shutdown: %s",
			 strerror(-ret));
		return ret;
	}
	if (cfg->sync_from >= 0) {
		ret = fill_from_source(ctl, err, errlen);
		if (ret)
			return ret;
	}
	if (cfg->control_socket) {
		err[0] = '\0';
		ret = control_socket_start(ctl, cfg->control_socket,
					   &ctl->socket, err, errlen);
		if (ret)
			return ret;
	}
	emit_mounted(ctl);
	ctl->started = true;
	return 0;
}

void control_stop(struct control *ctl, bool clean)
{
	bool held;

	if (!ctl)
		return;
	control_socket_stop(ctl->socket);
	secondary_close(ctl->secondary, clean);
	jobs_free(ctl->jobs);
	if (ctl->started) {
		event_log_flush_throttled(ctl->log);
		emit_unmounted(ctl);
	}
	/* A part a hung child still holds uses the tree and the set: both
	 * are left to it, and to the process's end. */
	held = !child_requests_wait(TEARDOWN_WAIT_MS);
	if (!held)
		tree_free(ctl->tree);
	copies_free(ctl->copies); /* late parts own all they use */
	if (!held)
		quarantine_free(ctl->quarantine);
	if (clean && ctl->started)
		record_unmount(ctl->record, ctl->set);
	if (ctl->record)
		record_set_io(ctl->record, NULL, NULL);
	if (!held)
		watchdog_free(ctl->watchdog);
	pool_free(ctl->pool);
	event_log_close(ctl->log);
	if (!held)
		children_free(ctl->set);
	record_free(ctl->record);
	child_bufs_release();
	pthread_mutex_destroy(&ctl->error_lock);
	pthread_mutex_destroy(&ctl->command_lock);
	free(ctl);
}

struct tree *control_tree(struct control *ctl)
{
	return ctl->tree;
}

struct copies *control_copies(struct control *ctl)
{
	return ctl->copies;
}

struct event_log *control_log(struct control *ctl)
{
	return ctl->log;
}

struct secondary *control_secondary(struct control *ctl)
{
	return ctl->secondary;
}
