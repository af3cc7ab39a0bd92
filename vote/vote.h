/*
 * vote: decide what a set of children agree on.
 *
 * The module is pure: it looks at the answers (ballots) the children gave
 * and says which one wins; it does no I/O and keeps no state, so every rule
 * can be unit-tested alone.
 *
 * The rules are QEMU's block/quorum.c (quorum_vote, quorum_vote_error):
 *   - if fewer than threshold ballots succeeded, the request fails with the
 *     most common error (the error vote);
 *   - if every successful ballot holds the same bytes, that is the answer
 *     (memcmp fast path);
 *   - otherwise ballots are grouped into versions of equal bytes; the
 *     largest version wins, and if it has fewer than threshold members the
 *     request fails with -EIO. QEMU groups by SHA-256 digest; we compare
 *     the bytes with one member of each version instead, which forms the
 *     same versions (equal digests stand for equal bytes) at a fraction of
 *     the cost, since memcmp stops at the first differing byte;
 *   - ties, in data votes and error votes alike, go to the version first
 *     seen at the highest ballot index (QEMU inserts each new version at the
 *     head of its list and takes the first strictly larger count).
 *
 * Going beyond QEMU, vote_blocks() votes each block of a request on its own,
 * so children corrupted in different places still give correct data. It is
 * only consulted when the whole-request vote fails, so wherever QEMU returns
 * data quorumfs returns the same data.
 *
 * Ballot indexes are positions in the caller's array, which must be in the
 * children's configured order for the tie rule to match QEMU's.
 */
#ifndef QFS_VOTE_H
#define QFS_VOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Most children a vote handles; matches the child set's limit. */
#define VOTE_MAX_BALLOTS 32

/* One child's answer. A plain value the caller fills. */
struct vote_ballot {
	int error;	  /* 0 on success, else a negative errno */
	const void *data; /* the child's bytes; ignored when error != 0 */
	size_t len;	  /* how many bytes the child returned */
};

/* The outcome of vote_whole(). */
struct vote_result {
	/*
	 * 0 when a version reached threshold; the error vote's -errno when
	 * fewer than threshold ballots succeeded; -EIO when they succeeded
	 * but disagreed so that no version reached threshold.
	 */
	int error;
	int winner;	/* index of a ballot holding the winning bytes, or -1 */
	int count;	/* ballots in the winning version (0 if none) */
	int successes;	/* ballots with error == 0 */
	bool unanimous; /* every successful ballot held the same bytes */
	/*
	 * loser[i] is true for a successful ballot outside the winning
	 * version. Only set when error == 0; failed ballots are never losers
	 * (QEMU reports them as errors, not as corruption).
	 */
	bool loser[VOTE_MAX_BALLOTS];
};

/*
 * Vote over whole ballots, two ballots agreeing when their lengths and
 * bytes are equal. n is 1..VOTE_MAX_BALLOTS, threshold 1..n.
 * Returns r->error (0 or -errno) and fills *r in every case.
 */
int vote_whole(const struct vote_ballot *ballots, int n, int threshold,
	       struct vote_result *r);

/*
 * The error vote alone: the most common error among the failed ballots,
 * ties to the error first seen at the highest index. Returns -EIO if no
 * ballot failed (a caller bug, answered safely).
 */
int vote_error(const struct vote_ballot *ballots, int n);

/* The outcome of vote_blocks(). */
struct vote_blocks_result {
	size_t len; /* bytes of voted data: the answer's length */
	/*
	 * For each ballot that lost at least one block: bad[i] is true and
	 * [bad_start[i], bad_end[i]) is the byte range, relative to the
	 * request, from its first to the end of its last losing block.
	 */
	bool bad[VOTE_MAX_BALLOTS];
	size_t bad_start[VOTE_MAX_BALLOTS];
	size_t bad_end[VOTE_MAX_BALLOTS];
};

/*
 * Vote each block_size block of the request on its own. Block b of a
 * ballot is its bytes [b * block_size, min(len, (b + 1) * block_size));
 * two ballots agree on a block when those bytes (and their count) are
 * equal. winner[b] receives the index of a ballot holding block b's
 * winning bytes; the caller provides room for
 * ceil(max ballot len / block_size) entries.
 *
 * The answer is the winning blocks up to and including the first one that
 * is shorter than block_size (where the winning children hit end of file).
 *
 * Needs at least threshold successful ballots (else returns the error
 * vote). Returns 0 with *r filled, or -EIO when some block inside the
 * answer has no version with threshold members.
 */
int vote_blocks(const struct vote_ballot *ballots, int n, int threshold,
		size_t block_size, int *winner, struct vote_blocks_result *r);

/*
 * Offset of the first byte where a and b differ, comparing
 * min(alen, blen) bytes; if those are equal and the lengths differ, the
 * shorter length; if both are equal, -1. Used by blkverify mode, which
 * reports the exact first differing byte like QEMU does.
 */
ssize_t vote_first_difference(const void *a, size_t alen, const void *b,
			      size_t blen);

/* ---- the write rule (vote/write.c) ---- */

/*
 * True for an errno that means a device or its space failed (EIO,
 * ENOSPC, EDQUOT, EROFS, ETIMEDOUT, ENOTCONN...), as opposed to one that
 * says the request itself was wrong (EEXIST, ENOTEMPTY, EINVAL from an
 * O_DIRECT alignment probe...). error is a negative errno.
 */
bool vote_device_error(int error);

/*
 * True when all n answers are the same failure and it is not a device
 * error: every child refused the request alike, so the caller gets that
 * errno and no child is at fault. False for n == 0.
 */
bool vote_refused_by_all(const int *error, int n);

/* The outcome of vote_write(). */
struct vote_write_result {
	/* 0 when at least threshold voters took the change; otherwise the
	 * errno the caller gets: the common refusal, or the error vote. */
	int error;
	int successes;	      /* voters that took it */
	bool nobody_at_fault; /* vote_refused_by_all(): report nothing */
};

/*
 * QEMU's write rule (quorum_aio_finalize for writes): error[0..n) are the
 * voting children's answers (0 or -errno). Success when at least
 * threshold of them succeeded; else the most common error, ties to the
 * one first seen at the highest index. Returns r->error; n may be 0
 * (then -EIO).
 */
int vote_write(const int *error, int n, int threshold,
	       struct vote_write_result *r);

/*
 * The size vote: sizes are voted like data (vote_whole) so that one
 * truncated child cannot take a file down. error[i] != 0 excludes
 * size[i]. With by_value false only existence is voted (directory sizes
 * differ between file systems): every success agrees.
 */
int vote_sizes(const int64_t *size, const int *error, int n, int threshold,
	       bool by_value, struct vote_result *r);

#endif
