/*
 * Child health, applied: children/health.c decides what a failure makes
 * of a child; here the decision takes effect, synchronously, on the
 * request's thread, before the caller is answered:
 *   1. the record first notes what the child missed (record_set_behind),
 *   2. then the child's state changes (a new view: later requests leave
 *      it out, or no longer count its vote),
 *   3. then the set's generation moves on without it (record_demoted),
 *      so no restart can let it vote on its old data,
 *   4. and a stale child is handed up (the child_stale hook) for its
 *      resync, which cannot start here: this thread may hold a range
 *      claim the copy needs.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "vote/vote.h"

static void apply(struct tree *tree, struct child *c, struct child_verdict v,
		  const char *reason)
{
	if (!v.changes)
		return;
	if (tree->record)
		record_set_behind(tree->record, c, v.whole_tree);
	if (children_set_state(tree->set, c, v.to, reason) == v.to)
		return; /* another thread got there first */
	if (tree->record && v.to == CHILD_FAILED)
		record_set_failed(tree->record, c, reason);
	if (tree->record)
		record_demoted(tree->record, tree->set);
	if (v.to == CHILD_STALE && tree->hooks.child_stale)
		tree->hooks.child_stale(tree->hooks.arg, c);
}

void health_missed(struct tree *tree, struct child *c, const char *type,
		   const char *path, int error)
{
	struct child_verdict v = child_health_missed(
		child_state(c), strcmp(type, "write") == 0, error);
	char reason[256];

	if (error == -ETIMEDOUT)
		snprintf(reason, sizeof(reason),
			 "did not answer a %s of '%s' within %d ms", type, path,
			 tree->timeout_ms);
	else
		snprintf(reason, sizeof(reason), "missed a %s of '%s': %s",
			 type, path, strerror(-error));
	apply(tree, c, v, reason);
}

/*
 * A child being resynced misses files and directories the copy has not
 * reached yet; those errors are expected and the copy will fix them. A
 * device error, though, means the child cannot keep up: it fails, not
 * the caller's request. Its resync is not the record's concern.
 */
void health_syncing_failed(struct tree *tree, struct child *c, int error)
{
	struct child_verdict v =
		child_health_syncing_failed(child_state(c), error);
	char reason[128];

	if (!v.changes)
		return;
	snprintf(reason, sizeof(reason), "write failed during resync: %s",
		 strerror(-error));
	if (children_set_state(tree->set, c, v.to, reason) == v.to ||
	    !tree->record)
		return;
	record_set_failed(tree->record, c, reason);
	record_demoted(tree->record, tree->set);
}

/*
 * In stage RUNNING a failed forward is none of the caller's business: it
 * is latched (QEMU's replication_return_value), and only a child that
 * did not answer in time is failed, so that no writer waits for it again.
 * Before the stream starts the child is being filled or kept in step: a
 * syncing one follows the syncing rule, one in step fails, since it no
 * longer holds what the primary holds.
 */
void health_forward_failed(struct tree *tree, struct child *c, int error,
			   const char *type, const char *path, uint64_t off,
			   uint64_t len)
{
	struct child_verdict v = {.to = CHILD_FAILED, .changes = true};
	char reason[256];

	/* The watchdog got there first, and latched it (health_late). */
	if (error == -ETIMEDOUT && child_state(c) == CHILD_FAILED)
		return;
	if (child_stage(c) == REPL_RUNNING) {
		child_latch(tree->log, c, error, type, path, off, len);
		if (error != -ETIMEDOUT)
			return;
	} else if (child_state(c) == CHILD_SYNCING) {
		health_syncing_failed(tree, c, error);
		return;
	}
	if (error == -ETIMEDOUT)
		snprintf(reason, sizeof(reason),
			 "did not answer a forward of '%s' within %d ms", path,
			 tree->timeout_ms);
	else
		snprintf(reason, sizeof(reason),
			 "a forward of '%s' (%s) failed: %s", path, type,
			 strerror(-error));
	apply(tree, c, v, reason);
}

void health_read_error(struct tree *tree, struct child *c, int error)
{
	int streak = vote_device_error(error) && error != -ETIMEDOUT
			     ? child_error_streak(c, true)
			     : 0;
	struct child_verdict v =
		child_health_read_failed(child_state(c), error, streak);
	char reason[256];

	if (error == -ETIMEDOUT)
		snprintf(reason, sizeof(reason),
			 "did not answer a read within %d ms",
			 tree->timeout_ms);
	else
		snprintf(reason, sizeof(reason), "%d reads in a row failed: %s",
			 streak, strerror(-error));
	apply(tree, c, v, reason);
}

void health_late(void *arg, struct child *c)
{
	struct tree *tree = arg;
	char reason[128];

	snprintf(reason, sizeof(reason),
		 "did not answer a metadata call within %d ms",
		 tree->timeout_ms);
	if (child_kind(c) == CHILD_REPLICATION &&
	    child_stage(c) == REPL_RUNNING && child_state(c) != CHILD_FAILED)
		child_latch(tree->log, c, -ETIMEDOUT, "metadata call", "", 0,
			    0);
	apply(tree, c, child_health_late(child_state(c)), reason);
}
