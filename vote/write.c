/*
 * The write rule and the size vote: what a change that went to every
 * child amounts to, and who is at fault when it failed.
 *
 * QEMU's quorum driver counts a write done when threshold children took
 * it (quorum_aio_finalize) and otherwise returns the error most children
 * gave (quorum_vote_error). One case QEMU does not have: a directory of
 * files gets requests that every child refuses for the same reason (a
 * name that exists, a directory not empty, QEMU's own 1-byte O_DIRECT
 * probe). Such a refusal is the request's fault, not any child's, so it
 * reaches the caller and nothing is reported. A device error stays a
 * child's fault even when every child gives it: three full disks are
 * three reports.
 */
#include "vote/vote.h"

#include <errno.h>

bool vote_device_error(int error)
{
	switch (-error) {
	case EIO:
	case ENOSPC:
	case EDQUOT:
	case EROFS:
	case ETIMEDOUT:
	case ENODEV:
	case ENXIO:
	case ESTALE:
	case ENOTCONN:
	case EBADF:
	case ENOMEM:
		return true;
	default:
		return false;
	}
}

bool vote_refused_by_all(const int *error, int n)
{
	for (int i = 1; i < n; i++)
		if (error[i] != error[0])
			return false;
	return n > 0 && error[0] && !vote_device_error(error[0]);
}

int vote_write(const int *error, int n, int threshold,
	       struct vote_write_result *r)
{
	struct vote_ballot b[VOTE_MAX_BALLOTS];

	*r = (struct vote_write_result){.error = 0};
	if (n > VOTE_MAX_BALLOTS)
		n = VOTE_MAX_BALLOTS;
	if (vote_refused_by_all(error, n)) {
		r->nobody_at_fault = true;
		r->error = error[0];
		return r->error;
	}
	for (int i = 0; i < n; i++) {
		r->successes += error[i] == 0;
		b[i] = (struct vote_ballot){.error = error[i]};
	}
	if (r->successes < threshold)
		r->error = vote_error(b, n);
	return r->error;
}

int vote_sizes(const int64_t *size, const int *error, int n, int threshold,
	       bool by_value, struct vote_result *r)
{
	struct vote_ballot b[VOTE_MAX_BALLOTS];

	for (int i = 0; i < n && i < VOTE_MAX_BALLOTS; i++)
		b[i] = (struct vote_ballot){
			.error = error[i],
			.data = &size[i],
			.len = by_value && !error[i] ? sizeof(size[i]) : 0};
	return vote_whole(b, n, threshold, r);
}
