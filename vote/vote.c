/*
 * vote: QEMU's quorum vote (block/quorum.c) as a pure function, plus a
 * per-block vote that rescues requests QEMU would fail.
 *
 * Every vote has the same steps, each a function below:
 *
 *   1. the voters: ballots with error == 0; too few of them and the
 *      request gets the error vote instead (quorum_vote_error);
 *   2. the fast path: memcmp every voter's bytes against the first voter's.
 *      When they all agree, which is nearly always, the first voter wins;
 *   3. the tally: only on disagreement, group the voters into versions by
 *      comparing each one's bytes with the first member of every version
 *      seen so far, versions kept in the order they were first seen. The
 *      voters the fast path already placed are not compared again;
 *   4. the winner: the largest version, ties to the one first seen at the
 *      highest ballot index. QEMU gets that order by inserting new versions
 *      at the head of a list and keeping the first strictly larger count;
 *      walking our array forwards and keeping the last largest count picks
 *      the same version. Under threshold the vote fails with -EIO.
 *
 * QEMU groups by SHA-256 digest. Equal digests stand for equal bytes
 * (barring a collision nobody has found), so comparing the bytes forms the
 * same versions, hence the same winner, losers and ties; it is exact where
 * a digest is only nearly so, and costs a fraction: memcmp runs at memory
 * speed and stops at the first differing byte, so a voter costs at most
 * one full comparison (with its own version) and a prefix per other
 * version. With one corrupt child of three, a 1 MiB vote took 1.6 ms
 * hashing and 0.05 ms comparing. Comparing is quadratic only in the
 * number of versions; its worst case, 32 ballots all different and only
 * in their last byte, still took 12.6 ms against 16.4 ms hashing, so
 * nothing is hashed at all.
 *
 * Nothing here allocates: versions for VOTE_MAX_BALLOTS ballots live on
 * the stack. Voter sets are uint32_t masks, hence the static assertion
 * below.
 */
#include "vote/vote.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

_Static_assert(VOTE_MAX_BALLOTS <= 32, "ballot masks are uint32_t");

/* The bytes one ballot puts to a vote: all of them, or one block. */
struct vote_slice {
	const unsigned char *data;
	size_t len;
};

/* The successful ballots, in ballot order so that ties follow QEMU. */
struct vote_voters {
	int index[VOTE_MAX_BALLOTS];
	int count;
};

/*
 * One version: the ballots that gave the same value. For a data vote the
 * value is the bytes of its first member, for the error vote it is error.
 */
struct vote_version {
	struct vote_slice bytes;
	int error;
	int first; /* ballot index that first gave this value */
	int count;
};

/* Versions in the order they were first seen, as QEMU's list reversed. */
struct vote_tally {
	struct vote_version version[VOTE_MAX_BALLOTS];
	int count;
};

/* What one data vote decided. */
struct vote_outcome {
	int winner;	 /* ballot index holding the winning bytes */
	int count;	 /* ballots in the winning version */
	bool unanimous;	 /* the fast path saw no disagreement */
	uint32_t losers; /* voters outside the winning version */
};

static bool vote_arguments_valid(int n, int threshold)
{
	return n >= 1 && n <= VOTE_MAX_BALLOTS && threshold >= 1 &&
	       threshold <= n;
}

static void vote_collect_voters(const struct vote_ballot *ballots, int n,
				struct vote_voters *voters)
{
	voters->count = 0;
	for (int i = 0; i < n; i++)
		if (ballots[i].error == 0)
			voters->index[voters->count++] = i;
}

static bool vote_slices_equal(const struct vote_slice *a,
			      const struct vote_slice *b)
{
	/* Checked first: memcmp's pointers must be valid even for 0 bytes. */
	if (a->len != b->len)
		return false;
	return a->len == 0 || memcmp(a->data, b->data, a->len) == 0;
}

/*
 * Step 2, like quorum_vote()'s loop over quorum_compare() before hashing:
 * how many voters, from the first on, hold the first voter's bytes. All of
 * them when the voters agree; otherwise the tally starts from this.
 */
static int vote_agreeing_prefix(const struct vote_slice *slice,
				const struct vote_voters *voters)
{
	const struct vote_slice *first = &slice[voters->index[0]];
	int k = 1;

	while (k < voters->count &&
	       vote_slices_equal(first, &slice[voters->index[k]]))
		k++;
	return k;
}

/*
 * Step 4, quorum_get_vote_winner(): the version index with the largest
 * count, ties to the version first seen last. tally->count must be >= 1.
 */
static int vote_tally_winner(const struct vote_tally *tally)
{
	int best = 0;

	for (int v = 1; v < tally->count; v++)
		if (tally->version[v].count >= tally->version[best].count)
			best = v;
	return best;
}

/* Opens a version of count members, the first of them ballot. */
static int vote_tally_open(struct vote_tally *tally, int ballot,
			   const struct vote_slice *slice, int count)
{
	tally->version[tally->count] = (struct vote_version){
		.bytes = *slice, .first = ballot, .count = count};
	return tally->count++;
}

/*
 * Adds a ballot's bytes to the version holding the same bytes, opening a
 * new one if unseen. Returns the version's index.
 */
static int vote_tally_data(struct vote_tally *tally, int ballot,
			   const struct vote_slice *slice)
{
	for (int v = 0; v < tally->count; v++) {
		if (vote_slices_equal(&tally->version[v].bytes, slice)) {
			tally->version[v].count++;
			return v;
		}
	}
	return vote_tally_open(tally, ballot, slice, 1);
}

/*
 * Step 3. The fast path found the first agreeing voters equal and the next
 * one different from them: those make the first two versions without
 * being compared again. version_of[k] receives voter k's version.
 */
static void vote_tally_voters(struct vote_tally *tally,
			      const struct vote_slice *slice,
			      const struct vote_voters *voters, int agreeing,
			      int *version_of)
{
	int first = voters->index[0], next = voters->index[agreeing];

	vote_tally_open(tally, first, &slice[first], agreeing);
	for (int k = 0; k < agreeing; k++)
		version_of[k] = 0;
	version_of[agreeing] = vote_tally_open(tally, next, &slice[next], 1);
	for (int k = agreeing + 1; k < voters->count; k++) {
		int i = voters->index[k];

		version_of[k] = vote_tally_data(tally, i, &slice[i]);
	}
}

/*
 * Steps 3 and 4 for voters that disagree after the first agreeing ones.
 * Returns 0 with *out filled, or -EIO when no version reaches threshold
 * (out->losers left empty: QEMU reports no corruption when the vote fails).
 */
static int vote_tally_slices(const struct vote_slice *slice,
			     const struct vote_voters *voters, int agreeing,
			     int threshold, struct vote_outcome *out)
{
	struct vote_tally tally = {.count = 0};
	int version_of[VOTE_MAX_BALLOTS];
	const struct vote_version *winner;
	int best;

	vote_tally_voters(&tally, slice, voters, agreeing, version_of);
	best = vote_tally_winner(&tally);
	winner = &tally.version[best];
	if (winner->count < threshold)
		return -EIO;

	out->winner = winner->first;
	out->count = winner->count;
	for (int k = 0; k < voters->count; k++)
		if (version_of[k] != best)
			out->losers |= UINT32_C(1) << voters->index[k];
	return 0;
}

/* Steps 2 to 4 over one slice per ballot; voters->count must be >= 1. */
static int vote_slices(const struct vote_slice *slice,
		       const struct vote_voters *voters, int threshold,
		       struct vote_outcome *out)
{
	int agreeing = vote_agreeing_prefix(slice, voters);

	*out = (struct vote_outcome){.winner = -1};
	if (agreeing == voters->count) {
		out->winner = voters->index[0];
		out->count = voters->count;
		out->unanimous = true;
		/* Every voter is one version: it fails only if too few. */
		return voters->count < threshold ? -EIO : 0;
	}
	return vote_tally_slices(slice, voters, agreeing, threshold, out);
}

int vote_error(const struct vote_ballot *ballots, int n)
{
	struct vote_tally tally = {.count = 0};
	int v;

	if (n > VOTE_MAX_BALLOTS)
		return -EINVAL;

	/* quorum_vote_error(): the same tally, keyed by the errno value. */
	for (int i = 0; i < n; i++) {
		if (ballots[i].error == 0)
			continue;
		for (v = 0; v < tally.count; v++)
			if (tally.version[v].error == ballots[i].error)
				break;
		if (v == tally.count) {
			tally.version[v].error = ballots[i].error;
			tally.version[v].first = i;
			tally.version[v].count = 0;
			tally.count++;
		}
		tally.version[v].count++;
	}

	if (tally.count == 0)
		return -EIO;
	return tally.version[vote_tally_winner(&tally)].error;
}

int vote_whole(const struct vote_ballot *ballots, int n, int threshold,
	       struct vote_result *r)
{
	struct vote_slice slice[VOTE_MAX_BALLOTS];
	struct vote_voters voters;
	struct vote_outcome out;

	memset(r, 0, sizeof(*r));
	r->winner = -1;
	if (!vote_arguments_valid(n, threshold)) {
		r->error = -EINVAL;
		return r->error;
	}

	vote_collect_voters(ballots, n, &voters);
	r->successes = voters.count;
	if (voters.count < threshold) {
		/* No data vote at all, so nothing is unanimous or a loser. */
		r->error = vote_error(ballots, n);
		return r->error;
	}

	for (int k = 0; k < voters.count; k++) {
		int i = voters.index[k];

		slice[i] = (struct vote_slice){ballots[i].data, ballots[i].len};
	}
	r->error = vote_slices(slice, &voters, threshold, &out);
	if (r->error < 0)
		return r->error;

	r->winner = out.winner;
	r->count = out.count;
	r->unanimous = out.unanimous;
	for (int i = 0; i < n; i++)
		r->loser[i] = out.losers & (UINT32_C(1) << i);
	return 0;
}

/* Block b of a ballot: what it returned in [start, start + block_size). */
static struct vote_slice vote_block_of(const struct vote_ballot *ballot,
				       size_t start, size_t block_size)
{
	size_t left;

	if (ballot->len <= start)
		return (struct vote_slice){NULL, 0};
	left = ballot->len - start;
	return (struct vote_slice){(const unsigned char *)ballot->data + start,
				   left < block_size ? left : block_size};
}

static void vote_slice_block(const struct vote_ballot *ballots,
			     const struct vote_voters *voters, size_t start,
			     size_t block_size, struct vote_slice *slice)
{
	for (int k = 0; k < voters->count; k++) {
		int i = voters->index[k];

		slice[i] = vote_block_of(&ballots[i], start, block_size);
	}
}

static size_t vote_longest(const struct vote_ballot *ballots,
			   const struct vote_voters *voters)
{
	size_t longest = 0;

	for (int k = 0; k < voters->count; k++)
		if (ballots[voters->index[k]].len > longest)
			longest = ballots[voters->index[k]].len;
	return longest;
}

/*
 * Records that the losers of the block at start lost it. The range ends
 * where the longer of the two differing blocks ends: a block never runs
 * past what some child returned, so the range stays inside the request.
 */
static void vote_mark_bad(struct vote_blocks_result *r, uint32_t losers,
			  const struct vote_slice *slice, size_t start,
			  size_t winner_len)
{
	for (int i = 0; losers; i++, losers >>= 1) {
		size_t len;

		if (!(losers & 1))
			continue;
		if (!r->bad[i]) {
			r->bad[i] = true;
			r->bad_start[i] = start;
		}
		len = slice[i].len > winner_len ? slice[i].len : winner_len;
		r->bad_end[i] = start + len;
	}
}

int vote_blocks(const struct vote_ballot *ballots, int n, int threshold,
		size_t block_size, int *winner, struct vote_blocks_result *r)
{
	struct vote_slice slice[VOTE_MAX_BALLOTS];
	struct vote_voters voters;
	struct vote_outcome out;
	size_t longest, start = 0;

	memset(r, 0, sizeof(*r));
	if (!vote_arguments_valid(n, threshold) || block_size == 0)
		return -EINVAL;

	vote_collect_voters(ballots, n, &voters);
	if (voters.count < threshold)
		return vote_error(ballots, n);
	longest = vote_longest(ballots, &voters);

	/*
	 * Past the longest ballot every block is empty and agrees, so the
	 * loop ends there unless a shorter winning block ends it earlier.
	 */
	for (size_t b = 0; start < longest; b++, start += block_size) {
		size_t winner_len;
		int ret;

		vote_slice_block(ballots, &voters, start, block_size, slice);
		ret = vote_slices(slice, &voters, threshold, &out);
		if (ret < 0) {
			memset(r, 0, sizeof(*r));
			return ret;
		}

		winner[b] = out.winner;
		winner_len = slice[out.winner].len;
		vote_mark_bad(r, out.losers, slice, start, winner_len);
		if (winner_len < block_size) {
			/* The winning children hit end of file here. */
			r->len = start + winner_len;
			return 0;
		}
	}
	r->len = start;
	return 0;
}

ssize_t vote_first_difference(const void *a, size_t alen, const void *b,
			      size_t blen)
{
	/* memcmp finds the differing chunk fast; bytes pinpoint it. */
	enum { CHUNK = 256 };
	const unsigned char *pa = a, *pb = b;
	size_t common = alen < blen ? alen : blen;
	size_t off = 0;

	while (off < common) {
		size_t step = common - off < CHUNK ? common - off : CHUNK;

		if (memcmp(pa + off, pb + off, step) != 0) {
			while (pa[off] == pb[off])
				off++;
			return (ssize_t)off;
		}
		off += step;
	}
	return alen == blen ? -1 : (ssize_t)common;
}
