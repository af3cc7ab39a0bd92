/*
 * Settling after an unclean stop (kill -9, power loss): the writes in
 * flight when the daemon died may have reached some children and not
 * others. The intent log names every region written in the generations
 * since the last clean unmount; before the mount serves, each of them is
 * voted block by block across the children in step and the winner
 * written over the others, so the children are identical again. An
 * acknowledged write reached every voting child (a child that missed one
 * was demoted, durably, before the acknowledgement), so settling never
 * loses an fsync'd write: its blocks win everywhere.
 *
 * A file some children lack, or whose kind has no quorum, is left to the
 * vote of later reads and to scrub.
 */
#define _GNU_SOURCE
#include "jobs/jobs_i.h"

#include <errno.h>

static int settle_one(struct jobs *jobs, const struct persist_file *pf)
{
	struct tree_entry e;
	int ret = walk_lookup_path(jobs->tree, pf->path, &e);

	if (ret)
		return ret == -ENOMEM ? ret : 0;
	if (S_ISREG(e.attr.st_mode))
		ret = scrub_settle_file(jobs, &e, pf->region, pf->nregions);
	tree_forget(jobs->tree, e.ino, 1);
	return ret == -ENOENT ? 0 : ret;
}

int jobs_settle(struct jobs *jobs)
{
	struct persist_missed m;
	int ret;

	if (!jobs->record || !record_unclean(jobs->record))
		return 0;
	ret = record_in_flight(jobs->record, jobs->set, &m);
	if (ret == -ENOENT)
		return 0; /* nothing was announced: nothing was in flight */
	for (int i = 0; !ret && i < m.nfiles; i++)
		ret = settle_one(jobs, &m.file[i]);
	persist_missed_free(&m);
	return ret;
}
