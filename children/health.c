/*
 * Child health: what becomes of a child after a failure. Pure decisions;
 * the tree applies them (tree/health.c) and keeps the record in step.
 *
 *   - A voting child that fails a change the quorum took has missed it:
 *     stale, to be resynced. Only a data write that failed on the device
 *     leaves the child's tree as it was, so its resync may copy just the
 *     regions the intent log names; anything else (a file it lacks, a
 *     failed flush or namespace change) needs the whole tree.
 *   - A child that does not answer within io-timeout, or fails
 *     CHILD_READ_ERROR_LIMIT reads in a row with device errors, is failed:
 *     it is out until an operator asks for `resync NAME`, since its device
 *     needs a look first. A read refused for another reason (ENOENT while
 *     a file is being created) is no sign of a bad device.
 *   - A syncing child is its resync's business: it is not made stale
 *     (the copy will bring it up to date) but fails on a device error,
 *     since it cannot keep up.
 *   - failed outranks stale, and a state is never "changed" to itself.
 */
#include "children/children.h"

#include <errno.h>

#include "vote/vote.h"

/* The verdict that moves a child from now to to, if that is a move. */
static struct child_verdict move(enum child_state now, enum child_state to,
				 bool whole_tree)
{
	bool moves = now != to && now != CHILD_FAILED &&
		     !(now == CHILD_SYNCING && to == CHILD_STALE);

	return (struct child_verdict){.to = moves ? to : now,
				      .changes = moves,
				      .whole_tree = whole_tree};
}

struct child_verdict child_health_missed(enum child_state now, bool data_write,
					 int error)
{
	if (error == -ETIMEDOUT)
		return move(now, CHILD_FAILED, true);
	return move(now, CHILD_STALE,
		    !(data_write && vote_device_error(error)));
}

struct child_verdict child_health_late(enum child_state now)
{
	return move(now, CHILD_FAILED, true);
}

struct child_verdict child_health_read_failed(enum child_state now, int error,
					      int streak)
{
	if (error == -ETIMEDOUT)
		return child_health_late(now);
	if (!vote_device_error(error) || streak < CHILD_READ_ERROR_LIMIT)
		return move(now, now, false);
	return move(now, CHILD_FAILED, true);
}

struct child_verdict child_health_syncing_failed(enum child_state now,
						 int error)
{
	if (now != CHILD_SYNCING || !vote_device_error(error))
		return move(now, now, false);
	return move(now, CHILD_FAILED, true);
}
