/*
 * The primary's stage machine, one replication child at a time (see
 * replication.h). Every refusal carries QEMU 7.2's text and errno, so an
 * orchestrator written for QEMU's replication reads the same answers.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "children/children.h"
#include "config/config.h"

/* replication_start(), after QEMU's checks: a child not in step yet
 * would stream changes to a copy that lacks what came before. */
static int start(struct child_set *set, struct child *c, int mode, char *err,
		 size_t errlen)
{
	enum repl_stage s = child_stage(c);
	enum child_state st = child_state(c);

	if (s == REPL_DONE || s == REPL_FAILOVER)
		return 0;
	if (s != REPL_NONE)
		return refuse(err, errlen, -EBUSY, RUNNING_OR_DONE);
	if (mode != 0)
		return refuse(err, errlen, -EINVAL, MODE_INVALID, 0, mode);
	if (st == CHILD_FAILED)
		return refuse(err, errlen, -EBUSY,
			      "replication child %s is failed", child_name(c));
	if (st != CHILD_OK)
		return refuse(err, errlen, -EBUSY,
			      "replication child %s is still syncing",
			      child_name(c));
	child_clear_latch(c);
	children_set_stage(set, c, REPL_RUNNING, "replication start");
	return 0;
}

static int get_error(struct child *c, char *err, size_t errlen)
{
	if (child_stage(c) == REPL_NONE)
		return refuse(err, errlen, -EINVAL, NOT_RUNNING);
	if (child_latched(c))
		return refuse(err, errlen, -EIO, IO_ERROR);
	return 0;
}

static int stop(struct child_set *set, struct child *c, char *err,
		size_t errlen)
{
	enum repl_stage s = child_stage(c);

	if (s == REPL_DONE || s == REPL_FAILOVER)
		return 0;
	if (s != REPL_RUNNING)
		return refuse(err, errlen, -EINVAL, NOT_RUNNING);
	children_set_stage(set, c, REPL_DONE, "replication stop");
	child_clear_latch(c);
	return 0;
}

static int one(struct child_set *set, struct child *c,
	       const struct config_command *cmd, char *err, size_t errlen)
{
	switch (cmd->repl) {
	case CONFIG_REPL_START:
		return start(set, c, cmd->mode, err, errlen);
	case CONFIG_REPL_GET_ERROR:
		return get_error(c, err, errlen);
	case CONFIG_REPL_STOP:
		return stop(set, c, err, errlen);
	case CONFIG_REPL_CHECKPOINT:
		break; /* the barrier below covers every child at once */
	case CONFIG_REPL_COMMIT:
		return refuse(err, errlen, -EINVAL,
			      "commit retries a secondary's failover; %s is "
			      "a primary's replication child",
			      child_name(c));
	}
	return 0;
}

/* The children the command is for: one by name, else every replication
 * child in order. Returns how many, each with a reference; 0 with the
 * reason in err. */
static int targets(struct child_set *set, const char *name, struct child **out,
		   char *err, size_t errlen)
{
	struct child *m[CHILDREN_MAX];
	int n, k = 0;

	if (name) {
		out[0] = children_find(set, name);
		if (out[0] && child_kind(out[0]) == CHILD_REPLICATION)
			return 1;
		if (out[0])
			child_put(out[0]);
		return refuse(err, errlen, 0,
			      "no replication child is named '%s'", name);
	}
	n = children_members(set, m);
	for (int i = 0; i < n; i++) {
		if (child_kind(m[i]) == CHILD_REPLICATION)
			out[k++] = m[i];
		else
			child_put(m[i]);
	}
	if (!k)
		refuse(err, errlen, 0, "no replication child");
	return k;
}

int refuse(char *err, size_t errlen, int ret, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return ret;
}

int replication_primary(struct child_set *set, const struct config_command *cmd,
			int timeout_ms, char *err, size_t errlen)
{
	struct child *c[CHILDREN_MAX] = {NULL};
	int n = targets(set, cmd->name, c, err, errlen), ret = n ? 0 : -ENOENT;

	if (cmd->repl == CONFIG_REPL_START && cmd->mode < 0 && n)
		ret = refuse(err, errlen, -EINVAL,
			     "usage: replication start primary [NAME]");
	for (int i = 0; i < n && !ret; i++)
		ret = one(set, c[i], cmd, err, errlen);
	if (!ret && n && cmd->repl == CONFIG_REPL_CHECKPOINT &&
	    children_barrier(set, timeout_ms > 0 ? timeout_ms : 30000))
		ret = refuse(err, errlen, -ETIMEDOUT,
			     "forwards did not drain within %d ms", timeout_ms);
	for (int i = 0; i < n; i++)
		child_put(c[i]);
	return ret;
}

void replication_child_removed(struct child_set *set, struct child *c)
{
	if (child_kind(c) == CHILD_REPLICATION &&
	    child_stage(c) == REPL_RUNNING)
		children_set_stage(set, c, REPL_DONE, "removed");
}
