/*
 * Failing a child from the jobs or the commands: the state, and the
 * record that keeps it failed across restarts until `resync NAME`. Apart
 * from jobs.c, since a resync that fails on its child calls it too.
 */
#include "jobs/jobs_i.h"

void jobs_fail_child(struct jobs *jobs, struct child *c, const char *reason)
{
	if (children_set_state(jobs->set, c, CHILD_FAILED, reason) ==
	    CHILD_FAILED)
		return;
	if (jobs->record) {
		record_set_failed(jobs->record, c, reason);
		record_demoted(jobs->record, jobs->set);
	}
}
