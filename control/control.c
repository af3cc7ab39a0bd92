/*
 * The control file's commands and status.
 *
 * A command is parsed whole by config_parse_command() before anything
 * changes; each verb then makes one change through the child set, whose
 * own checks (threshold bounds, blkverify, voting children left) refuse
 * what QEMU refuses. Commands run one at a time. Every refusal is logged
 * as CONTROL_ERROR and kept for the status.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"

/* How long `remove` waits for in-flight I/O to the child. */
#define REMOVE_DRAIN_MS 30000

int fs_set_mount(struct fs *fs, const char *mountpoint,
		 const struct stat *before)
{
	fs->mountpoint = strdup(mountpoint);
	fs->mount_st = *before;
	return fs->mountpoint ? 0 : -ENOMEM;
}

static int cmd_add(struct fs *fs, const struct config_command *cmd, char *err,
		   size_t errlen)
{
	int roots[CHILDREN_MAX], n = children_roots(fs->set, roots), ret, fd;
	struct child *c;
	char *real = NULL;

	ret = config_check_new_child(cmd->path, fs->mountpoint, &fs->mount_st,
				     roots, n, &real, err, errlen);
	if (!ret && fs->record)
		ret = record_check_new(fs->record, real, err, errlen);
	if (ret) {
		free(real);
		return ret;
	}
	ret = children_add(fs->set, real, cmd->name, &c, err, errlen);
	free(real);
	if (ret)
		return ret;
	/* Until the root handle is in place the child simply misses
	 * entries, which its resync copies anyway. */
	fd = dup(child_root_fd(c));
	if (fd >= 0)
		atomic_store(&fs->root.fd[child_slot(c)], fd);
	if (fs->record && record_added(fs->record, fs->set, c))
		children_set_state(fs->set, c, CHILD_FAILED,
				   "cannot write its .quorumfs record");
	else if (resync_start(fs, c, false))
		children_set_state(fs->set, c, CHILD_FAILED,
				   "cannot start its resync");
	child_put(c);
	return 0;
}

static int cmd_remove(struct fs *fs, const struct config_command *cmd,
		      char *err, size_t errlen)
{
	struct child *c = children_find(fs->set, cmd->name);
	int ret, slot;

	if (!c) {
		snprintf(err, errlen, "no child is named '%s'", cmd->name);
		return -ENOENT;
	}
	slot = child_slot(c);
	/* A syncing child never holds up the threshold, so stopping its copy
	 * first loses nothing if the removal is refused. */
	if (child_state(c) != CHILD_OK)
		resync_stop(fs, c);
	ret = children_remove(fs->set, c, REMOVE_DRAIN_MS, err, errlen);
	/* Only a drained child's handles can be closed and its slot reused;
	 * a hung one keeps its slot. */
	if (ret >= 0)
		resync_stop(fs, c); /* reap a finished copy */
	if (ret >= 0 && fs->record)
		record_removed(fs->record, fs->set, c);
	if (ret >= 0)
		scrub_forget_child(fs, child_name(c));
	if (ret == 0) {
		node_forget_slot(fs, slot);
		files_forget_slot(fs, slot);
		children_release_slot(fs->set, slot);
	}
	child_put(c);
	return ret < 0 ? ret : 0;
}

static int cmd_resync(struct fs *fs, const struct config_command *cmd,
		      char *err, size_t errlen)
{
	struct child *c = children_find(fs->set, cmd->name);
	int ret;

	if (!c) {
		snprintf(err, errlen, "no child is named '%s'", cmd->name);
		return -ENOENT;
	}
	if (child_orphans(c) > 0) {
		snprintf(err, errlen,
			 "%d requests to '%s' timed out and are still running "
			 "there; try again once they end",
			 child_orphans(c), child_name(c));
		child_put(c);
		return -EBUSY;
	}
	resync_stop(fs, c);
	ret = children_begin_resync(fs->set, c, err, errlen);
	if (!ret && resync_start(fs, c, false))
		children_set_state(fs->set, c, CHILD_FAILED,
				   "cannot start its resync");
	child_put(c);
	return ret;
}

static int cmd_scrub(struct fs *fs, const struct config_command *cmd, char *err,
		     size_t errlen)
{
	if (cmd->scrub == CONFIG_SCRUB_STOP)
		return scrub_stop(fs, err, errlen);
	return scrub_start(fs, cmd->scrub == CONFIG_SCRUB_REPAIR, cmd->rate,
			   err, errlen);
}

static int run_command(struct fs *fs, const struct config_command *cmd,
		       char *err, size_t errlen)
{
	switch (cmd->verb) {
	case CMD_ADD:
		return cmd_add(fs, cmd, err, errlen);
	case CMD_REMOVE:
		return cmd_remove(fs, cmd, err, errlen);
	case CMD_RESYNC:
		return cmd_resync(fs, cmd, err, errlen);
	case CMD_THRESHOLD:
		return children_set_threshold(fs->set, cmd->number, err,
					      errlen);
	case CMD_READ_PATTERN:
		return children_set_read_pattern(fs->set, cmd->read_pattern,
						 err, errlen);
	case CMD_REWRITE_CORRUPTED:
		return children_set_rewrite(fs->set, cmd->on, err, errlen);
	case CMD_SCRUB:
		return cmd_scrub(fs, cmd, err, errlen);
	}
	return -EINVAL;
}

/* The command as text fit for a log: printable bytes only, bounded. */
static void printable(char *out, size_t outlen, const char *buf, size_t len)
{
	size_t n = 0;

	for (size_t i = 0; i < len && n + 1 < outlen; i++)
		out[n++] = buf[i] >= 0x20 && buf[i] < 0x7f ? buf[i] : '?';
	out[n] = '\0';
}

static void control_error(struct fs *fs, const char *buf, size_t len, int ret,
			  const char *reason)
{
	struct json_object *d = json_object_new_object();

	if (len && buf[len - 1] == '\n')
		len--;
	printable(fs->last_command, sizeof(fs->last_command), buf, len);
	snprintf(fs->last_error, sizeof(fs->last_error), "%s", reason);
	json_object_object_add(d, "command",
			       json_object_new_string(fs->last_command));
	json_object_object_add(d, "reason", json_object_new_string(reason));
	json_object_object_add(d, "error",
			       json_object_new_string(strerror(-ret)));
	event_log_emit(fs->log, "CONTROL_ERROR", d);
}

int fs_control(struct fs *fs, const char *buf, size_t len)
{
	char line[CONFIG_COMMAND_MAX], err[256] = "";
	struct config_command cmd;
	int ret;

	pthread_mutex_lock(&fs->control_lock);
	ret = config_parse_command(buf, len, line, &cmd, err, sizeof(err));
	if (!ret)
		ret = run_command(fs, &cmd, err, sizeof(err));
	if (ret)
		control_error(fs, buf, len, ret, err[0] ? err : strerror(-ret));
	pthread_mutex_unlock(&fs->control_lock);
	return ret;
}

char *fs_status(struct fs *fs)
{
	struct json_object *o = children_status(fs->set), *e;
	char *text;

	json_object_object_add(
		o, "mountpoint",
		json_object_new_string(fs->mountpoint ? fs->mountpoint : ""));
	json_object_object_add(o, "io-timeout-ms",
			       json_object_new_int(fs->timeout_ms));
	if (fs->record)
		json_object_object_add(o, "set", record_status(fs->record));
	pthread_mutex_lock(&fs->control_lock);
	e = NULL;
	if (fs->last_error[0]) {
		e = json_object_new_object();
		json_object_object_add(
			e, "command", json_object_new_string(fs->last_command));
		json_object_object_add(e, "reason",
				       json_object_new_string(fs->last_error));
	}
	scrub_status(fs, o);
	pthread_mutex_unlock(&fs->control_lock);
	json_object_object_add(o, "last-control-error", e);
	json_object_object_add(
		o, "events-dropped",
		json_object_new_int64(event_log_dropped(fs->log)));
	text = strdup(json_object_to_json_string_ext(
		o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return text;
}
