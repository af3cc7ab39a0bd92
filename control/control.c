/*
 * The control file's commands and status.
 *
 * A command is parsed whole by config_parse_command() before anything
 * changes; each verb then makes one change through the child set, whose
 * own checks (threshold bounds, blkverify, voting children left) refuse
 * what QEMU refuses, and through the tree, the record and the jobs.
 * Commands run one at a time. Every refusal is logged as CONTROL_ERROR
 * and kept for the status.
 */
#define _GNU_SOURCE
#include "control/control_i.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The quarantine entries the status shows (the socket lists them all). */
#define CONTROL_QUARANTINE_RECENT 64
/* How long `remove` waits for in-flight I/O to the child. */
#define REMOVE_DRAIN_MS 30000

static int cmd_add(struct control *ctl, const struct config_command *cmd,
		   char *err, size_t errlen)
{
	int roots[CHILDREN_MAX], n = children_roots(ctl->set, roots), ret;
	struct child *c;
	char *real = NULL;

	ret = config_check_new_child(cmd->path, ctl->cfg->mountpoint,
				     &ctl->mount_st, roots, n, &real, err,
				     errlen);
	if (!ret && cmd->replication && ctl->secondary)
		ret = secondary_check_add(ctl->secondary, err, errlen);
	if (!ret && ctl->record)
		ret = record_check_new(ctl->record, real, err, errlen);
	if (!ret)
		ret = children_add(ctl->set, real, cmd->name,
				   cmd->replication ? CHILD_REPLICATION
				   : cmd->witness   ? CHILD_WITNESS
						    : CHILD_DATA,
				   &c, err, errlen);
	free(real);
	if (ret)
		return ret;
	/* Without its root handle the child misses entries, which its
	 * resync copies anyway. */
	tree_child_added(ctl->tree, c);
	quarantine_attach(ctl->quarantine, ctl->set, c);
	if (ctl->record && record_added(ctl->record, ctl->set, c))
		jobs_fail_child(ctl->jobs, c,
				"cannot write its .quorumfs record");
	else if (jobs_resync_added(ctl->jobs, c))
		jobs_fail_child(ctl->jobs, c, "cannot start its resync");
	child_put(c);
	return 0;
}

static struct child *find_child(struct control *ctl, const char *name,
				char *err, size_t errlen)
{
	struct child *c = children_find(ctl->set, name);

	if (!c)
		snprintf(err, errlen, "no child is named '%s'", name);
	return c;
}

/*
 * How long `remove` waits for operations that still use the child. A
 * failed child is in no new view, and every request gives up on it
 * within io-timeout: waiting longer would only wait for a hung child.
 */
static int drain_ms(struct control *ctl, struct child *c)
{
	int timeout = ctl->cfg->io_timeout_ms;

	if (child_state(c) == CHILD_FAILED && timeout > 0 &&
	    timeout < REMOVE_DRAIN_MS)
		return timeout;
	return REMOVE_DRAIN_MS;
}

static int cmd_remove(struct control *ctl, const struct config_command *cmd,
		      char *err, size_t errlen)
{
	struct child *c = find_child(ctl, cmd->name, err, errlen);
	int ret, slot;

	if (!c)
		return -ENOENT;
	slot = child_slot(c);
	/* A syncing child never holds up the threshold, so stopping its copy
	 * first loses nothing if the removal is refused. */
	if (child_state(c) != CHILD_OK)
		jobs_resync_stop(ctl->jobs, c);
	replication_child_removed(ctl->set, c); /* a stream stops first */
	ret = children_remove(ctl->set, c, drain_ms(ctl, c), err, errlen);
	if (ret >= 0) {
		jobs_resync_stop(ctl->jobs, c); /* reap a finished copy */
		if (ctl->record)
			record_removed(ctl->record, ctl->set, c);
		jobs_scrub_forget_child(ctl->jobs, child_name(c));
		quarantine_detach(ctl->quarantine, c);
	}
	/* Only a drained child's handles can be closed and its slot reused;
	 * a hung one keeps its slot. */
	if (ret == 0) {
		tree_child_removed(ctl->tree, slot);
		children_release_slot(ctl->set, slot);
	}
	child_put(c);
	return ret < 0 ? ret : 0;
}

static int cmd_resync(struct control *ctl, const struct config_command *cmd,
		      char *err, size_t errlen)
{
	struct child *c = find_child(ctl, cmd->name, err, errlen);
	int ret;

	if (!c)
		return -ENOENT;
	ret = jobs_resync(ctl->jobs, c, err, errlen);
	if (!ret)
		quarantine_attach(ctl->quarantine, ctl->set, c);
	child_put(c);
	return ret;
}

static int cmd_scrub(struct control *ctl, const struct config_command *cmd,
		     char *err, size_t errlen)
{
	if (cmd->scrub == CONFIG_SCRUB_STOP)
		return jobs_scrub_stop(ctl->jobs, err, errlen);
	return jobs_scrub_start(ctl->jobs, cmd->scrub == CONFIG_SCRUB_REPAIR,
				cmd->rate, err, errlen);
}

/* A rule changed through .control is what the next mount uses, unless
 * its command line says otherwise: the record keeps it. */
static int keep_rules(struct control *ctl, int ret)
{
	struct persist_rules r;

	if (ret || !ctl->record)
		return ret;
	children_get_rules(ctl->set, &r.threshold, &r.read_pattern,
			   &r.rewrite_corrupted);
	record_set_rules(ctl->record, ctl->set, &r);
	return 0;
}

static int run_command(struct control *ctl, const struct config_command *cmd,
		       char *err, size_t errlen)
{
	switch (cmd->verb) {
	case CMD_ADD:
		return cmd_add(ctl, cmd, err, errlen);
	case CMD_REMOVE:
		return cmd_remove(ctl, cmd, err, errlen);
	case CMD_RESYNC:
		return cmd_resync(ctl, cmd, err, errlen);
	case CMD_THRESHOLD:
		return keep_rules(ctl,
				  children_set_threshold(ctl->set, cmd->number,
							 err, errlen));
	case CMD_READ_PATTERN:
		return keep_rules(
			ctl, children_set_read_pattern(
				     ctl->set, cmd->read_pattern, err, errlen));
	case CMD_REWRITE_CORRUPTED:
		return keep_rules(ctl, children_set_rewrite(ctl->set, cmd->on,
							    err, errlen));
	case CMD_SCRUB:
		return cmd_scrub(ctl, cmd, err, errlen);
	case CMD_POLICY:
		return control_policy(ctl, cmd, err, errlen);
	case CMD_QUARANTINE:
		return control_quarantine(ctl, cmd, err, errlen);
	case CMD_REPAIR:
		return control_repair(ctl, cmd, err, errlen);
	case CMD_REPLICATION:
		if (ctl->secondary &&
		    replication_route(ctl->secondary, ctl->set))
			return replication_secondary(ctl->secondary, cmd, err,
						     errlen);
		return replication_primary(
			ctl->set, cmd, ctl->cfg->io_timeout_ms, err, errlen);
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

static void control_error(struct control *ctl, const char *buf, size_t len,
			  int ret, const char *reason)
{
	struct json_object *d = json_object_new_object();
	char command[sizeof(ctl->last_command)];

	if (len && buf[len - 1] == '\n')
		len--;
	printable(command, sizeof(command), buf, len);
	pthread_mutex_lock(&ctl->error_lock);
	memcpy(ctl->last_command, command, sizeof(command));
	snprintf(ctl->last_error, sizeof(ctl->last_error), "%s", reason);
	pthread_mutex_unlock(&ctl->error_lock);
	json_object_object_add(d, "command", json_object_new_string(command));
	json_object_object_add(d, "reason", json_object_new_string(reason));
	json_object_object_add(d, "error",
			       json_object_new_string(strerror(-ret)));
	event_log_emit(ctl->log, "CONTROL_ERROR", d);
}

int control_run(struct control *ctl, const char *buf, size_t len, char *err,
		size_t errlen)
{
	char line[CONFIG_COMMAND_MAX];
	struct config_command cmd;
	int ret;

	err[0] = '\0';
	pthread_mutex_lock(&ctl->command_lock);
	ret = config_parse_command(buf, len, line, &cmd, err, errlen);
	if (!ret)
		ret = run_command(ctl, &cmd, err, errlen);
	if (ret && !err[0])
		snprintf(err, errlen, "%s", strerror(-ret));
	if (ret)
		control_error(ctl, buf, len, ret, err);
	pthread_mutex_unlock(&ctl->command_lock);
	return ret;
}

int control_command(struct control *ctl, const char *buf, size_t len)
{
	char err[256];

	return control_run(ctl, buf, len, err, sizeof(err));
}

static struct json_object *last_error_json(struct control *ctl)
{
	struct json_object *e = NULL;

	pthread_mutex_lock(&ctl->error_lock);
	if (ctl->last_error[0]) {
		e = json_object_new_object();
		json_object_object_add(
			e, "command",
			json_object_new_string(ctl->last_command));
		json_object_object_add(e, "reason",
				       json_object_new_string(ctl->last_error));
	}
	pthread_mutex_unlock(&ctl->error_lock);
	return e;
}

char *control_status(struct control *ctl)
{
	struct json_object *o = children_status(ctl->set), *children;
	char *text;

	if (json_object_object_get_ex(o, "children", &children))
		copies_status(ctl->set, children);
	json_object_object_add(o, "policies", control_policies_json(ctl));
	json_object_object_add(o, "mountpoint",
			       json_object_new_string(ctl->cfg->mountpoint));
	json_object_object_add(o, "io-timeout-ms",
			       json_object_new_int(ctl->cfg->io_timeout_ms));
	json_object_object_add(
		o, "control-socket",
		ctl->socket ? json_object_new_string(ctl->cfg->control_socket)
			    : NULL);
	if (ctl->record)
		json_object_object_add(o, "set", record_status(ctl->record));
	jobs_scrub_status(ctl->jobs, o);
	if (json_object_object_get_ex(o, "children", &children))
		quarantine_status(ctl->quarantine, children);
	/* What `.control` alone shows of the quarantine: its newest
	 * entries, as the scrub's last findings. */
	json_object_object_add(
		o, "quarantine-entries",
		quarantine_recent(ctl->quarantine, CONTROL_QUARANTINE_RECENT));
	if (ctl->secondary)
		secondary_status(ctl->secondary, o);
	control_status_about(ctl, o);
	json_object_object_add(o, "last-control-error", last_error_json(ctl));
	json_object_object_add(
		o, "events-dropped",
		json_object_new_int64(event_log_dropped(ctl->log)));
	text = strdup(json_object_to_json_string_ext(
		o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return text;
}
