/*
 * Unit tests for vote/: each test states one rule of QEMU's quorum vote
 * (block/quorum.c, see docs in vote/vote.h) or of the per-block rescue.
 *
 * Data is built from seeded patterns: ballots made with the same seed hold
 * the same bytes, a different seed gives a different version. Failed
 * ballots carry a NULL data pointer and a bogus length, so a vote that
 * looked at them would crash under the sanitizers instead of passing.
 */
#include "vote/vote.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test/unit/unit.h"

#define BS 4096
#define MIB (1024 * 1024)

/* Fills buf with bytes determined by seed alone. */
static void fill(unsigned char *buf, size_t len, unsigned seed)
{
	unsigned x = seed * 2654435761u + 1;

	for (size_t i = 0; i < len; i++) {
		x = x * 1103515245u + 12345u;
		buf[i] = (unsigned char)(x >> 16);
	}
}

static struct vote_ballot ok(const void *data, size_t len)
{
	return (struct vote_ballot){.error = 0, .data = data, .len = len};
}

static struct vote_ballot failed(int error)
{
	return (struct vote_ballot){.error = error, .data = NULL, .len = 999};
}

/* Versions A, B, C, D: three blocks each, all different everywhere. */
static unsigned char A[3 * BS], B[3 * BS], C[3 * BS], D[3 * BS];

/* A_first and A_last: A with only its first, or only its last, byte changed. */
static unsigned char A_first[3 * BS], A_last[3 * BS];

static void make_versions(void)
{
	fill(A, sizeof(A), 1);
	fill(B, sizeof(B), 2);
	fill(C, sizeof(C), 3);
	fill(D, sizeof(D), 4);
	memcpy(A_first, A, sizeof(A));
	A_first[0] ^= 1;
	memcpy(A_last, A, sizeof(A));
	A_last[sizeof(A) - 1] ^= 1;
}

static int count_losers(const struct vote_result *r)
{
	int losers = 0;

	for (int i = 0; i < VOTE_MAX_BALLOTS; i++)
		losers += r->loser[i];
	return losers;
}

static int count_bad(const struct vote_blocks_result *r)
{
	int bad = 0;

	for (int i = 0; i < VOTE_MAX_BALLOTS; i++)
		bad += r->bad[i];
	return bad;
}

/* ---- vote_whole ---- */

static void test_all_agree_returns_first_without_losers(void)
{
	struct vote_ballot b[3] = {ok(A, BS), ok(A, BS), ok(A, BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 3, 2, &r), 0);
	CHECK_EQ(r.error, 0);
	CHECK_EQ(r.winner, 0);
	CHECK_EQ(r.count, 3);
	CHECK_EQ(r.successes, 3);
	CHECK(r.unanimous);
	CHECK_EQ(count_losers(&r), 0);
}

static void test_all_agree_after_failures_returns_first_success(void)
{
	struct vote_ballot b[3] = {failed(-EIO), ok(A, BS), ok(A, BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 3, 2, &r), 0);
	CHECK_EQ(r.winner, 1);
	CHECK_EQ(r.count, 2);
	CHECK_EQ(r.successes, 2);
	CHECK(r.unanimous);
	CHECK_EQ(count_losers(&r), 0);
}

static void test_one_corrupt_child_of_three_is_the_only_loser(void)
{
	struct vote_ballot b[3] = {ok(A, BS), ok(B, BS), ok(A, BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 3, 2, &r), 0);
	CHECK_EQ(r.winner, 0);
	CHECK_EQ(r.count, 2);
	CHECK(!r.unanimous);
	CHECK(!r.loser[0]);
	CHECK(r.loser[1]);
	CHECK(!r.loser[2]);
}

static void test_two_identically_corrupt_children_outvote_the_good_one(void)
{
	/* A is the true data, B the identical corruption on c1 and c2. */
	struct vote_ballot b[3] = {ok(A, BS), ok(B, BS), ok(B, BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 3, 2, &r), 0);
	CHECK_EQ(r.winner, 1);
	CHECK_EQ(r.count, 2);
	CHECK(r.loser[0]);
	CHECK(!r.loser[1]);
	CHECK(!r.loser[2]);
}

static void test_disagreement_below_threshold_returns_eio_without_losers(void)
{
	struct vote_ballot b[3] = {ok(A, BS), ok(B, BS), ok(C, BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 3, 2, &r), -EIO);
	CHECK_EQ(r.error, -EIO);
	CHECK_EQ(r.winner, -1);
	CHECK_EQ(r.count, 0);
	CHECK_EQ(r.successes, 3);
	CHECK(!r.unanimous);
	CHECK_EQ(count_losers(&r), 0);
}

static void test_too_few_successes_returns_the_error_vote(void)
{
	struct vote_ballot b[3] = {ok(A, BS), failed(-ENOSPC), failed(-ENOSPC)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 3, 2, &r), -ENOSPC);
	CHECK_EQ(r.error, -ENOSPC);
	CHECK_EQ(r.winner, -1);
	CHECK_EQ(r.count, 0);
	CHECK_EQ(r.successes, 1);
	CHECK(!r.unanimous);
	CHECK_EQ(count_losers(&r), 0);
}

static void test_failed_ballots_are_never_losers(void)
{
	struct vote_ballot b[4] = {ok(A, BS), failed(-EIO), ok(B, BS),
				   ok(A, BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 4, 2, &r), 0);
	CHECK_EQ(r.winner, 0);
	CHECK_EQ(r.successes, 3);
	CHECK(!r.loser[0]);
	CHECK(!r.loser[1]);
	CHECK(r.loser[2]);
	CHECK(!r.loser[3]);
}

static void test_data_tie_goes_to_the_version_first_seen_at_highest_index(void)
{
	/* A first seen at 0, B at 1: B was inserted last in QEMU's list. */
	struct vote_ballot b[4] = {ok(A, BS), ok(B, BS), ok(A, BS), ok(B, BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 4, 2, &r), 0);
	CHECK_EQ(r.winner, 1);
	CHECK_EQ(r.count, 2);
	CHECK(r.loser[0]);
	CHECK(!r.loser[1]);
	CHECK(r.loser[2]);
	CHECK(!r.loser[3]);
}

static void test_data_tie_follows_first_sighting_not_last_member(void)
{
	/* A's last member (3) is later than B's, but B was first seen later. */
	struct vote_ballot b[4] = {ok(A, BS), ok(B, BS), ok(B, BS), ok(A, BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 4, 2, &r), 0);
	CHECK_EQ(r.winner, 1);
	CHECK(r.loser[0]);
	CHECK(!r.loser[1]);
	CHECK(!r.loser[2]);
	CHECK(r.loser[3]);
}

static void test_threshold_one_lets_a_lone_version_win(void)
{
	struct vote_ballot distinct[3] = {ok(A, BS), ok(B, BS), ok(C, BS)};
	struct vote_ballot pair[3] = {ok(A, BS), ok(B, BS), ok(B, BS)};
	struct vote_ballot single[1] = {ok(A, BS)};
	struct vote_result r;

	/* Three versions of one: the tie goes to the last one seen. */
	CHECK_EQ(vote_whole(distinct, 3, 1, &r), 0);
	CHECK_EQ(r.winner, 2);
	CHECK_EQ(r.count, 1);
	CHECK(r.loser[0]);
	CHECK(r.loser[1]);
	CHECK(!r.loser[2]);

	CHECK_EQ(vote_whole(pair, 3, 1, &r), 0);
	CHECK_EQ(r.winner, 1);
	CHECK_EQ(r.count, 2);

	CHECK_EQ(vote_whole(single, 1, 1, &r), 0);
	CHECK_EQ(r.winner, 0);
	CHECK(r.unanimous);
}

static void test_whole_vote_treats_a_short_read_as_another_version(void)
{
	/* c2 returned a prefix of the others' bytes: a different answer. */
	struct vote_ballot b[3] = {ok(A, 2 * BS), ok(A, 2 * BS), ok(A, 100)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 3, 2, &r), 0);
	CHECK_EQ(r.winner, 0);
	CHECK_EQ(r.count, 2);
	CHECK(!r.unanimous);
	CHECK(r.loser[2]);
	CHECK_EQ(count_losers(&r), 1);
}

static void test_whole_vote_lets_agreeing_short_reads_win_at_eof(void)
{
	struct vote_ballot same[3] = {ok(A, 100), ok(A, 100), ok(A, 100)};
	struct vote_ballot longer[3] = {ok(A, 100), ok(A, BS), ok(A, 100)};
	struct vote_result r;

	CHECK_EQ(vote_whole(same, 3, 2, &r), 0);
	CHECK(r.unanimous);

	CHECK_EQ(vote_whole(longer, 3, 2, &r), 0);
	CHECK_EQ(r.winner, 0);
	CHECK_EQ(r.count, 2);
	CHECK(r.loser[1]);
	CHECK_EQ(count_losers(&r), 1);
}

static void test_empty_ballots_agree(void)
{
	struct vote_ballot b[3] = {ok(NULL, 0), ok(NULL, 0), ok(A, BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 2, 2, &r), 0);
	CHECK_EQ(r.winner, 0);
	CHECK(r.unanimous);

	CHECK_EQ(vote_whole(b, 3, 2, &r), 0);
	CHECK_EQ(r.winner, 0);
	CHECK_EQ(r.count, 2);
	CHECK(r.loser[2]);
}

static void test_five_ballots_across_thresholds_one_to_five(void)
{
	struct vote_ballot b[5] = {ok(A, BS), ok(B, BS), ok(A, BS), ok(C, BS),
				   ok(A, BS)};
	struct vote_result r;

	for (int threshold = 1; threshold <= 3; threshold++) {
		CHECK_EQ(vote_whole(b, 5, threshold, &r), 0);
		CHECK_EQ(r.winner, 0);
		CHECK_EQ(r.count, 3);
		CHECK(!r.loser[0] && r.loser[1] && !r.loser[2]);
		CHECK(r.loser[3] && !r.loser[4]);
	}
	for (int threshold = 4; threshold <= 5; threshold++) {
		CHECK_EQ(vote_whole(b, 5, threshold, &r), -EIO);
		CHECK_EQ(r.winner, -1);
		CHECK_EQ(count_losers(&r), 0);
	}
}

static void test_five_ballots_with_errors_across_thresholds_one_to_five(void)
{
	struct vote_ballot b[5] = {ok(A, BS), failed(-EIO), ok(A, BS),
				   failed(-ENOSPC), ok(A, BS)};
	struct vote_result r;

	for (int threshold = 1; threshold <= 3; threshold++) {
		CHECK_EQ(vote_whole(b, 5, threshold, &r), 0);
		CHECK_EQ(r.winner, 0);
		CHECK_EQ(r.count, 3);
		CHECK(r.unanimous);
		CHECK_EQ(count_losers(&r), 0);
	}
	/* One EIO, one ENOSPC: ENOSPC was first seen at the higher index. */
	for (int threshold = 4; threshold <= 5; threshold++) {
		CHECK_EQ(vote_whole(b, 5, threshold, &r), -ENOSPC);
		CHECK_EQ(r.successes, 3);
		CHECK_EQ(count_losers(&r), 0);
	}
}

static void test_thirty_two_agreeing_ballots_are_unanimous(void)
{
	struct vote_ballot b[VOTE_MAX_BALLOTS];
	struct vote_result r;

	for (int i = 0; i < VOTE_MAX_BALLOTS; i++)
		b[i] = ok(A, BS);
	CHECK_EQ(vote_whole(b, VOTE_MAX_BALLOTS, VOTE_MAX_BALLOTS, &r), 0);
	CHECK_EQ(r.count, VOTE_MAX_BALLOTS);
	CHECK(r.unanimous);
}

static void
test_thirty_two_distinct_ballots_go_to_the_last_at_threshold_one(void)
{
	static unsigned char data[VOTE_MAX_BALLOTS][64];
	struct vote_ballot b[VOTE_MAX_BALLOTS];
	struct vote_result r;

	for (int i = 0; i < VOTE_MAX_BALLOTS; i++) {
		fill(data[i], sizeof(data[i]), 100 + i);
		b[i] = ok(data[i], sizeof(data[i]));
	}
	CHECK_EQ(vote_whole(b, VOTE_MAX_BALLOTS, 1, &r), 0);
	CHECK_EQ(r.winner, VOTE_MAX_BALLOTS - 1);
	CHECK_EQ(r.count, 1);
	CHECK_EQ(count_losers(&r), VOTE_MAX_BALLOTS - 1);
	CHECK(r.loser[0]);
	CHECK(r.loser[30]);
	CHECK(!r.loser[31]);
}

/* ---- vote_whole: grouping disagreeing ballots into versions ---- */

static void test_several_versions_are_counted_apart(void)
{
	/* After a failure: A twice, B three times, C and D once each. */
	struct vote_ballot b[8] = {failed(-EIO), ok(A, BS), ok(A, BS),
				   ok(B, BS),	 ok(C, BS), ok(B, BS),
				   ok(D, BS),	 ok(B, BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(b, 8, 3, &r), 0);
	CHECK_EQ(r.winner, 3);
	CHECK_EQ(r.count, 3);
	CHECK_EQ(r.successes, 7);
	CHECK(!r.unanimous);
	CHECK(!r.loser[0]);
	CHECK(r.loser[1] && r.loser[2] && r.loser[4] && r.loser[6]);
	CHECK(!r.loser[3] && !r.loser[5] && !r.loser[7]);

	CHECK_EQ(vote_whole(b, 8, 4, &r), -EIO);
	CHECK_EQ(r.winner, -1);
	CHECK_EQ(count_losers(&r), 0);
}

static void test_a_tie_of_three_versions_goes_to_the_last_first_seen(void)
{
	/* Two each; C was first seen last, at index 2. */
	struct vote_ballot three[6] = {ok(A, BS), ok(B, BS), ok(C, BS),
				       ok(C, BS), ok(B, BS), ok(A, BS)};
	/* A and B tie at two; C, seen later, is smaller and out of it. */
	struct vote_ballot two[5] = {ok(A, BS), ok(B, BS), ok(A, BS), ok(B, BS),
				     ok(C, BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(three, 6, 2, &r), 0);
	CHECK_EQ(r.winner, 2);
	CHECK_EQ(r.count, 2);
	CHECK(r.loser[0] && r.loser[1] && r.loser[4] && r.loser[5]);
	CHECK(!r.loser[2] && !r.loser[3]);

	CHECK_EQ(vote_whole(two, 5, 2, &r), 0);
	CHECK_EQ(r.winner, 1);
	CHECK_EQ(r.count, 2);
	CHECK(r.loser[0] && r.loser[2] && r.loser[4]);
	CHECK(!r.loser[1] && !r.loser[3]);
}

static void test_prefixes_of_the_same_bytes_are_versions_by_length(void)
{
	/* 2 blocks twice (first at 0), 1 block twice (first at 1), 100 once. */
	struct vote_ballot tie[5] = {ok(A, 2 * BS), ok(A, BS), ok(A, 2 * BS),
				     ok(A, BS), ok(A, 100)};
	struct vote_ballot longest[6] = {ok(A, 2 * BS), ok(A, BS),
					 ok(A, 2 * BS), ok(A, BS),
					 ok(A, 100),	ok(A, 2 * BS)};
	struct vote_result r;

	CHECK_EQ(vote_whole(tie, 5, 2, &r), 0);
	CHECK_EQ(r.winner, 1);
	CHECK_EQ(r.count, 2);
	CHECK(r.loser[0] && r.loser[2] && r.loser[4]);
	CHECK(!r.loser[1] && !r.loser[3]);

	CHECK_EQ(vote_whole(longest, 6, 2, &r), 0);
	CHECK_EQ(r.winner, 0);
	CHECK_EQ(r.count, 3);
	CHECK(r.loser[1] && r.loser[3] && r.loser[4]);
	CHECK_EQ(count_losers(&r), 3);
}

static void test_versions_differing_only_in_the_last_byte_are_apart(void)
{
	/* The first two agree; the other three differ only at the end. */
	struct vote_ballot after[5] = {
		ok(A, sizeof(A)), ok(A, sizeof(A)), ok(A_last, sizeof(A)),
		ok(A_last, sizeof(A)), ok(A_last, sizeof(A))};
	struct vote_ballot before[3] = {ok(A_last, sizeof(A)), ok(A, sizeof(A)),
					ok(A, sizeof(A))};
	struct vote_result r;

	CHECK_EQ(vote_whole(after, 5, 2, &r), 0);
	CHECK_EQ(r.winner, 2);
	CHECK_EQ(r.count, 3);
	CHECK(r.loser[0] && r.loser[1]);
	CHECK_EQ(count_losers(&r), 2);

	CHECK_EQ(vote_whole(before, 3, 2, &r), 0);
	CHECK_EQ(r.winner, 1);
	CHECK_EQ(r.count, 2);
	CHECK(r.loser[0]);
	CHECK_EQ(count_losers(&r), 1);
}

static void test_the_last_byte_of_a_mebibyte_splits_the_vote(void)
{
	unsigned char *good = malloc(MIB), *bad = malloc(MIB);
	struct vote_ballot b[4] = {ok(bad, MIB), ok(good, MIB), ok(bad, MIB),
				   ok(good, MIB)};
	struct vote_result r;

	fill(good, MIB, 7);
	memcpy(bad, good, MIB);
	bad[MIB - 1] ^= 0x80;
	/* Two each: good was first seen later, at index 1. */
	CHECK_EQ(vote_whole(b, 4, 2, &r), 0);
	CHECK_EQ(r.winner, 1);
	CHECK(r.loser[0] && r.loser[2]);
	CHECK_EQ(count_losers(&r), 2);
	CHECK_EQ(vote_whole(b, 4, 3, &r), -EIO);
	free(good);
	free(bad);
}

static void test_versions_differing_only_in_the_first_byte_are_apart(void)
{
	/* Two each: A_first was first seen later, at index 1. */
	struct vote_ballot tie[4] = {ok(A, sizeof(A)), ok(A_first, sizeof(A)),
				     ok(A_first, sizeof(A)), ok(A, sizeof(A))};
	struct vote_ballot majority[3] = {ok(A_first, sizeof(A)),
					  ok(A, sizeof(A)),
					  ok(A_first, sizeof(A))};
	struct vote_result r;

	CHECK_EQ(vote_whole(tie, 4, 2, &r), 0);
	CHECK_EQ(r.winner, 1);
	CHECK_EQ(r.count, 2);
	CHECK(r.loser[0] && r.loser[3]);
	CHECK_EQ(count_losers(&r), 2);

	CHECK_EQ(vote_whole(majority, 3, 2, &r), 0);
	CHECK_EQ(r.winner, 0);
	CHECK_EQ(r.count, 2);
	CHECK(r.loser[1]);
	CHECK_EQ(count_losers(&r), 1);
}

static bool same_bytes(const struct vote_ballot *a, const struct vote_ballot *b)
{
	return a->len == b->len &&
	       (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

/* How many successful ballots hold ballot i's bytes. */
static int holders(const struct vote_ballot *b, int n, int i)
{
	int count = 0;

	for (int j = 0; j < n; j++)
		count += b[j].error == 0 && same_bytes(&b[i], &b[j]);
	return count;
}

/* Whether no successful ballot before i holds its bytes. */
static bool first_sighting(const struct vote_ballot *b, int i)
{
	for (int j = 0; j < i; j++)
		if (b[j].error == 0 && same_bytes(&b[i], &b[j]))
			return false;
	return true;
}

/*
 * The data vote restated the slow way, as a specification: the winner is
 * the first sighting of the bytes most ballots hold, ties to the latest
 * first sighting. Returns the winning ballot, or -1 under threshold.
 */
static int reference_winner(const struct vote_ballot *b, int n, int threshold)
{
	int best = -1, best_count = 0;

	for (int i = 0; i < n; i++) {
		if (b[i].error || !first_sighting(b, i))
			continue;
		if (holders(b, n, i) >= best_count) {
			best = i;
			best_count = holders(b, n, i);
		}
	}
	return best_count >= threshold ? best : -1;
}

static void check_against_reference(const struct vote_ballot *b, int n,
				    int threshold)
{
	int expected = reference_winner(b, n, threshold);
	struct vote_result r;

	CHECK_EQ(vote_whole(b, n, threshold, &r), expected < 0 ? -EIO : 0);
	CHECK_EQ(r.winner, expected);
	if (expected < 0)
		return;
	CHECK_EQ(r.count, holders(b, n, expected));
	CHECK_EQ(r.unanimous, r.count == r.successes);
	for (int i = 0; i < n; i++)
		CHECK_EQ(r.loser[i],
			 b[i].error == 0 && !same_bytes(&b[i], &b[expected]));
}

static void test_random_ballots_are_grouped_as_the_reference_says(void)
{
	/* Answers that differ at the start, at the end, in length, or not. */
	const struct vote_ballot answers[] = {
		ok(A, sizeof(A)),      ok(A_first, sizeof(A)),
		ok(A_last, sizeof(A)), ok(A, 2 * BS),
		ok(A_last, 2 * BS), /* the same bytes as A, 2 * BS */
		ok(B, sizeof(B)),      ok(NULL, 0),
		failed(-EIO),
	};
	const int kinds = sizeof(answers) / sizeof(answers[0]);
	unsigned state = 12345;

	for (int round = 0; round < 5000; round++) {
		struct vote_ballot b[10];
		int n, threshold, successes = 0;

		state = state * 1103515245u + 12345u;
		n = 1 + (int)(state >> 16) % 10;
		for (int i = 0; i < n; i++) {
			state = state * 1103515245u + 12345u;
			b[i] = answers[(state >> 16) % kinds];
			successes += b[i].error == 0;
		}
		state = state * 1103515245u + 12345u;
		threshold = 1 + (int)(state >> 16) % n;
		if (successes >= threshold)
			check_against_reference(b, n, threshold);
	}
}

static void test_invalid_arguments_are_refused_with_einval(void)
{
	struct vote_ballot b[VOTE_MAX_BALLOTS + 1];
	struct vote_blocks_result br;
	struct vote_result r;
	int winner[4];

	for (int i = 0; i <= VOTE_MAX_BALLOTS; i++)
		b[i] = ok(A, BS);
	CHECK_EQ(vote_whole(b, 0, 1, &r), -EINVAL);
	CHECK_EQ(r.error, -EINVAL);
	CHECK_EQ(r.winner, -1);
	CHECK_EQ(vote_whole(b, 3, 0, &r), -EINVAL);
	CHECK_EQ(vote_whole(b, 3, 4, &r), -EINVAL);
	CHECK_EQ(vote_whole(b, VOTE_MAX_BALLOTS + 1, 1, &r), -EINVAL);
	CHECK_EQ(vote_blocks(b, 3, 2, 0, winner, &br), -EINVAL);
	CHECK_EQ(vote_blocks(b, 3, 4, BS, winner, &br), -EINVAL);
}

/* ---- vote_error ---- */

static void test_error_tie_goes_to_the_error_first_seen_at_highest_index(void)
{
	struct vote_ballot eio_enospc[2] = {failed(-EIO), failed(-ENOSPC)};
	struct vote_ballot enospc_eio[2] = {failed(-ENOSPC), failed(-EIO)};
	struct vote_result r;

	CHECK_EQ(vote_error(eio_enospc, 2), -ENOSPC);
	CHECK_EQ(vote_error(enospc_eio, 2), -EIO);
	CHECK_EQ(vote_whole(eio_enospc, 2, 1, &r), -ENOSPC);
	CHECK_EQ(vote_whole(enospc_eio, 2, 1, &r), -EIO);
}

static void test_most_common_error_wins_over_a_later_one(void)
{
	struct vote_ballot majority[3] = {failed(-EIO), failed(-EIO),
					  failed(-ENOSPC)};
	struct vote_ballot tie[5] = {failed(-EIO), failed(-ENOSPC), ok(A, BS),
				     failed(-ENOSPC), failed(-EIO)};

	CHECK_EQ(vote_error(majority, 3), -EIO);
	/* Two each: ENOSPC was first seen at 1, after EIO at 0. */
	CHECK_EQ(vote_error(tie, 5), -ENOSPC);
}

static void test_error_vote_without_failures_answers_eio(void)
{
	struct vote_ballot b[2] = {ok(A, BS), ok(B, BS)};

	CHECK_EQ(vote_error(b, 2), -EIO);
}

/* ---- vote_blocks ---- */

static void test_blocks_all_agree_gives_every_block_to_the_first_voter(void)
{
	struct vote_ballot b[3] = {failed(-EIO), ok(A, 3 * BS), ok(A, 3 * BS)};
	struct vote_blocks_result r;
	int winner[3] = {-7, -7, -7};

	CHECK_EQ(vote_blocks(b, 3, 2, BS, winner, &r), 0);
	CHECK_EQ(r.len, 3 * BS);
	CHECK_EQ(winner[0], 1);
	CHECK_EQ(winner[1], 1);
	CHECK_EQ(winner[2], 1);
	CHECK_EQ(count_bad(&r), 0);
}

static void test_disjoint_corruption_fails_the_whole_vote_with_eio(void)
{
	static unsigned char c0[3 * BS], c1[3 * BS];
	struct vote_ballot b[3] = {ok(c0, 3 * BS), ok(c1, 3 * BS),
				   ok(A, 3 * BS)};
	struct vote_result r;

	memcpy(c0, A, sizeof(c0));
	memcpy(c1, A, sizeof(c1));
	c0[10] ^= 1;
	c1[BS + 10] ^= 1;
	CHECK_EQ(vote_whole(b, 3, 2, &r), -EIO);
	CHECK_EQ(count_losers(&r), 0);
}

static void test_disjoint_corruption_is_rescued_block_by_block(void)
{
	/* c0 is corrupt in blocks 0 and 2, c1 in block 1, c2 is clean. */
	static unsigned char c0[3 * BS], c1[3 * BS], answer[3 * BS];
	struct vote_ballot b[3] = {ok(c0, 3 * BS), ok(c1, 3 * BS),
				   ok(A, 3 * BS)};
	struct vote_blocks_result r;
	int winner[3] = {-7, -7, -7};

	memcpy(c0, A, sizeof(c0));
	memcpy(c1, A, sizeof(c1));
	c0[0] ^= 0xff;
	c0[3 * BS - 1] ^= 0xff;
	c1[BS + 2000] ^= 0xff;

	CHECK_EQ(vote_blocks(b, 3, 2, BS, winner, &r), 0);
	CHECK_EQ(r.len, 3 * BS);
	CHECK_EQ(winner[0], 1);
	CHECK_EQ(winner[1], 0);
	CHECK_EQ(winner[2], 1);
	for (int k = 0; k < 3; k++)
		memcpy(answer + k * BS,
		       (const unsigned char *)b[winner[k]].data + k * BS, BS);
	CHECK(memcmp(answer, A, sizeof(answer)) == 0);

	CHECK(r.bad[0]);
	CHECK_EQ(r.bad_start[0], 0);
	CHECK_EQ(r.bad_end[0], 3 * BS);
	CHECK(r.bad[1]);
	CHECK_EQ(r.bad_start[1], BS);
	CHECK_EQ(r.bad_end[1], 2 * BS);
	CHECK(!r.bad[2]);
}

static void test_blocks_tie_rule_applies_to_each_block(void)
{
	/* Block 0 reads A,B,A,B; block 1 reads A,A,B,B. */
	static unsigned char c1[2 * BS], c2[2 * BS];
	struct vote_ballot b[4] = {ok(A, 2 * BS), ok(c1, 2 * BS),
				   ok(c2, 2 * BS), ok(B, 2 * BS)};
	struct vote_blocks_result r;
	int winner[2];

	memcpy(c1, B, BS);
	memcpy(c1 + BS, A + BS, BS);
	memcpy(c2, A, BS);
	memcpy(c2 + BS, B + BS, BS);

	CHECK_EQ(vote_blocks(b, 4, 2, BS, winner, &r), 0);
	CHECK_EQ(winner[0], 1);
	CHECK_EQ(winner[1], 2);
	CHECK_EQ(r.bad_start[0], 0);
	CHECK_EQ(r.bad_end[0], 2 * BS);
	CHECK_EQ(r.bad_start[1], BS);
	CHECK_EQ(r.bad_end[1], 2 * BS);
	CHECK_EQ(r.bad_start[2], 0);
	CHECK_EQ(r.bad_end[2], BS);
	CHECK(!r.bad[3]);
}

static void test_blocks_fail_with_eio_when_a_block_has_no_quorum(void)
{
	static unsigned char c1[2 * BS], c2[2 * BS];
	struct vote_ballot b[3] = {ok(A, 2 * BS), ok(c1, 2 * BS),
				   ok(c2, 2 * BS)};
	struct vote_blocks_result r;
	int winner[2];

	memcpy(c1, A, BS);
	memcpy(c1 + BS, B + BS, BS);
	memcpy(c2, A, BS);
	memcpy(c2 + BS, C + BS, BS);

	CHECK_EQ(vote_blocks(b, 3, 2, BS, winner, &r), -EIO);
	CHECK_EQ(r.len, 0);
	CHECK_EQ(count_bad(&r), 0);
	/* At threshold 1 the same ballots give block 1 to the last seen. */
	CHECK_EQ(vote_blocks(b, 3, 1, BS, winner, &r), 0);
	CHECK_EQ(winner[1], 2);
}

static void test_blocks_with_too_few_successes_return_the_error_vote(void)
{
	struct vote_ballot b[3] = {failed(-EDQUOT), ok(A, BS), failed(-EROFS)};
	struct vote_blocks_result r;
	int winner[1];

	CHECK_EQ(vote_blocks(b, 3, 2, BS, winner, &r), -EROFS);
}

static void test_blocks_short_tail_is_part_of_the_answer(void)
{
	struct vote_ballot b[3] = {ok(A, 10000), ok(A, 10000), ok(A, 10000)};
	struct vote_blocks_result r;
	int winner[3];

	CHECK_EQ(vote_blocks(b, 3, 2, BS, winner, &r), 0);
	CHECK_EQ(r.len, 10000);
	CHECK_EQ(winner[2], 0);
	CHECK_EQ(count_bad(&r), 0);
}

static void test_blocks_child_missing_the_tail_loses_only_the_tail(void)
{
	struct vote_ballot b[3] = {ok(A, 10000), ok(A, 2 * BS), ok(A, 10000)};
	struct vote_blocks_result r;
	int winner[3];

	CHECK_EQ(vote_blocks(b, 3, 2, BS, winner, &r), 0);
	CHECK_EQ(r.len, 10000);
	CHECK_EQ(winner[0], 0);
	CHECK_EQ(winner[2], 0);
	CHECK(r.bad[1]);
	CHECK_EQ(r.bad_start[1], 2 * BS);
	CHECK_EQ(r.bad_end[1], 10000);
	CHECK_EQ(count_bad(&r), 1);
}

static void test_blocks_majority_at_eof_ends_the_answer_on_a_boundary(void)
{
	/* Two children end at 8192: block 2 is won by the empty version. */
	struct vote_ballot b[3] = {ok(A, 2 * BS), ok(A, 2 * BS), ok(A, 10000)};
	struct vote_blocks_result r;
	int winner[3];

	CHECK_EQ(vote_blocks(b, 3, 2, BS, winner, &r), 0);
	CHECK_EQ(r.len, 2 * BS);
	CHECK_EQ(winner[2], 0);
	CHECK(r.bad[2]);
	CHECK_EQ(r.bad_start[2], 2 * BS);
	CHECK_EQ(r.bad_end[2], 10000);
	CHECK_EQ(count_bad(&r), 1);
}

static void test_blocks_first_block_won_by_empty_gives_length_zero(void)
{
	struct vote_ballot b[3] = {ok(NULL, 0), ok(A, 0), ok(A, BS)};
	struct vote_blocks_result r;
	int winner[1] = {-7};

	CHECK_EQ(vote_blocks(b, 3, 2, BS, winner, &r), 0);
	CHECK_EQ(r.len, 0);
	CHECK_EQ(winner[0], 0);
	CHECK(r.bad[2]);
	CHECK_EQ(r.bad_start[2], 0);
	CHECK_EQ(r.bad_end[2], BS);
}

static void test_blocks_of_empty_ballots_give_length_zero(void)
{
	struct vote_ballot b[2] = {ok(NULL, 0), ok(NULL, 0)};
	struct vote_blocks_result r;
	int winner[1] = {-7};

	CHECK_EQ(vote_blocks(b, 2, 2, BS, winner, &r), 0);
	CHECK_EQ(r.len, 0);
	/* No ballot has a block, so the caller owes no room at all. */
	CHECK_EQ(winner[0], -7);
	CHECK_EQ(count_bad(&r), 0);
}

static void test_blocks_stop_at_the_first_short_winning_block(void)
{
	/*
	 * c0..c2 end at 5000. c3 and c4 run on to 3 blocks and disagree in
	 * block 1 with everyone: they lose it, and blocks past the answer
	 * are neither voted nor counted against anyone.
	 */
	static unsigned char c3[3 * BS], c4[3 * BS];
	struct vote_ballot b[5] = {ok(A, 5000), ok(A, 5000), ok(A, 5000),
				   ok(c3, 3 * BS), ok(c4, 3 * BS)};
	struct vote_blocks_result r;
	int winner[3] = {-7, -7, -7};

	memcpy(c3, A, sizeof(c3));
	memcpy(c4, A, sizeof(c4));
	c4[BS + 4000] ^= 1;
	c3[2 * BS] ^= 1;

	CHECK_EQ(vote_blocks(b, 5, 2, BS, winner, &r), 0);
	CHECK_EQ(r.len, 5000);
	CHECK_EQ(winner[0], 0);
	CHECK_EQ(winner[1], 0);
	CHECK_EQ(winner[2], -7);
	CHECK_EQ(count_bad(&r), 2);
	CHECK_EQ(r.bad_start[3], BS);
	CHECK_EQ(r.bad_end[3], 2 * BS);
	CHECK_EQ(r.bad_start[4], BS);
	CHECK_EQ(r.bad_end[4], 2 * BS);
}

static void test_blocks_across_thresholds_one_to_five(void)
{
	/*
	 * Five children, each corrupt in its own block, c4 clean: every
	 * block has four agreeing ballots, so thresholds 1..4 rescue it
	 * while 5 fails.
	 */
	static unsigned char c[5][5 * BS];
	struct vote_ballot b[5];
	struct vote_blocks_result r;
	int winner[5];

	for (int i = 0; i < 5; i++) {
		fill(c[i], sizeof(c[i]), 9);
		if (i < 4)
			c[i][i * BS + 17] ^= 0x80;
		b[i] = ok(c[i], sizeof(c[i]));
	}
	for (int threshold = 1; threshold <= 4; threshold++) {
		CHECK_EQ(vote_blocks(b, 5, threshold, BS, winner, &r), 0);
		CHECK_EQ(r.len, 5 * BS);
		CHECK_EQ(winner[0], 1);
		CHECK_EQ(winner[1], 0);
		CHECK_EQ(winner[4], 0);
		for (int i = 0; i < 4; i++) {
			CHECK(r.bad[i]);
			CHECK_EQ(r.bad_start[i], (size_t)i * BS);
			CHECK_EQ(r.bad_end[i], (size_t)(i + 1) * BS);
		}
		CHECK(!r.bad[4]);
	}
	CHECK_EQ(vote_blocks(b, 5, 5, BS, winner, &r), -EIO);
}

static void test_blocks_rescue_scattered_corruption_in_a_mebibyte(void)
{
	/* The hot-path shape: 1 MiB in 256 blocks of 4 KiB, three children. */
	enum { BLOCKS = MIB / BS };
	unsigned char *good = malloc(MIB), *c[3];
	struct vote_ballot b[3];
	struct vote_blocks_result r;
	int winner[BLOCKS];
	bool all_from_good_copy = true;

	fill(good, MIB, 42);
	for (int i = 0; i < 3; i++) {
		c[i] = malloc(MIB);
		memcpy(c[i], good, MIB);
		b[i] = ok(c[i], MIB);
	}
	c[0][10 * BS] ^= 1;
	c[1][100 * BS + 5] ^= 1;
	c[1][200 * BS + 4095] ^= 1;
	c[2][MIB - 1] ^= 1;

	CHECK_EQ(vote_blocks(b, 3, 2, BS, winner, &r), 0);
	CHECK_EQ(r.len, MIB);
	for (int k = 0; k < BLOCKS; k++) {
		const unsigned char *data = b[winner[k]].data;

		if (memcmp(data + (size_t)k * BS, good + (size_t)k * BS, BS))
			all_from_good_copy = false;
	}
	CHECK(all_from_good_copy);
	CHECK_EQ(winner[10], 1);
	CHECK_EQ(winner[100], 0);
	CHECK_EQ(r.bad_start[0], 10 * BS);
	CHECK_EQ(r.bad_end[0], 11 * BS);
	CHECK_EQ(r.bad_start[1], 100 * BS);
	CHECK_EQ(r.bad_end[1], 201 * BS);
	CHECK_EQ(r.bad_start[2], MIB - BS);
	CHECK_EQ(r.bad_end[2], MIB);

	for (int i = 0; i < 3; i++)
		free(c[i]);
	free(good);
}

/* ---- vote_first_difference ---- */

static void test_first_difference_of_equal_buffers_is_minus_one(void)
{
	CHECK_EQ(vote_first_difference(A, sizeof(A), A, sizeof(A)), -1);
	CHECK_EQ(vote_first_difference(NULL, 0, NULL, 0), -1);
}

static void test_first_difference_finds_the_first_differing_byte(void)
{
	unsigned char *a = malloc(MIB), *b = malloc(MIB);
	static const size_t offsets[] = {0, 1, 255, 256, 1000, MIB - 1};

	fill(a, MIB, 5);
	for (size_t k = 0; k < sizeof(offsets) / sizeof(offsets[0]); k++) {
		memcpy(b, a, MIB);
		b[offsets[k]] ^= 0x10;
		if (offsets[k] + 3 < MIB)
			b[offsets[k] + 3] ^= 0x10;
		CHECK_EQ(vote_first_difference(a, MIB, b, MIB), offsets[k]);
	}
	free(a);
	free(b);
}

static void test_first_difference_of_a_prefix_is_the_shorter_length(void)
{
	CHECK_EQ(vote_first_difference(A, 100, A, 5000), 100);
	CHECK_EQ(vote_first_difference(A, 5000, A, 100), 100);
	CHECK_EQ(vote_first_difference(NULL, 0, A, 10), 0);
}

static void test_first_difference_prefers_a_byte_over_the_length(void)
{
	unsigned char b[BS];

	memcpy(b, A, sizeof(b));
	b[50] ^= 1;
	CHECK_EQ(vote_first_difference(A, 2 * BS, b, 100), 50);
}

int main(void)
{
	make_versions();
	RUN(test_all_agree_returns_first_without_losers);
	RUN(test_all_agree_after_failures_returns_first_success);
	RUN(test_one_corrupt_child_of_three_is_the_only_loser);
	RUN(test_two_identically_corrupt_children_outvote_the_good_one);
	RUN(test_disagreement_below_threshold_returns_eio_without_losers);
	RUN(test_too_few_successes_returns_the_error_vote);
	RUN(test_failed_ballots_are_never_losers);
	RUN(test_data_tie_goes_to_the_version_first_seen_at_highest_index);
	RUN(test_data_tie_follows_first_sighting_not_last_member);
	RUN(test_threshold_one_lets_a_lone_version_win);
	RUN(test_whole_vote_treats_a_short_read_as_another_version);
	RUN(test_whole_vote_lets_agreeing_short_reads_win_at_eof);
	RUN(test_empty_ballots_agree);
	RUN(test_five_ballots_across_thresholds_one_to_five);
	RUN(test_five_ballots_with_errors_across_thresholds_one_to_five);
	RUN(test_thirty_two_agreeing_ballots_are_unanimous);
	RUN(test_thirty_two_distinct_ballots_go_to_the_last_at_threshold_one);
	RUN(test_several_versions_are_counted_apart);
	RUN(test_a_tie_of_three_versions_goes_to_the_last_first_seen);
	RUN(test_prefixes_of_the_same_bytes_are_versions_by_length);
	RUN(test_versions_differing_only_in_the_last_byte_are_apart);
	RUN(test_the_last_byte_of_a_mebibyte_splits_the_vote);
	RUN(test_versions_differing_only_in_the_first_byte_are_apart);
	RUN(test_random_ballots_are_grouped_as_the_reference_says);
	RUN(test_invalid_arguments_are_refused_with_einval);
	RUN(test_error_tie_goes_to_the_error_first_seen_at_highest_index);
	RUN(test_most_common_error_wins_over_a_later_one);
	RUN(test_error_vote_without_failures_answers_eio);
	RUN(test_blocks_all_agree_gives_every_block_to_the_first_voter);
	RUN(test_disjoint_corruption_fails_the_whole_vote_with_eio);
	RUN(test_disjoint_corruption_is_rescued_block_by_block);
	RUN(test_blocks_tie_rule_applies_to_each_block);
	RUN(test_blocks_fail_with_eio_when_a_block_has_no_quorum);
	RUN(test_blocks_with_too_few_successes_return_the_error_vote);
	RUN(test_blocks_short_tail_is_part_of_the_answer);
	RUN(test_blocks_child_missing_the_tail_loses_only_the_tail);
	RUN(test_blocks_majority_at_eof_ends_the_answer_on_a_boundary);
	RUN(test_blocks_first_block_won_by_empty_gives_length_zero);
	RUN(test_blocks_of_empty_ballots_give_length_zero);
	RUN(test_blocks_stop_at_the_first_short_winning_block);
	RUN(test_blocks_across_thresholds_one_to_five);
	RUN(test_blocks_rescue_scattered_corruption_in_a_mebibyte);
	RUN(test_first_difference_of_equal_buffers_is_minus_one);
	RUN(test_first_difference_finds_the_first_differing_byte);
	RUN(test_first_difference_of_a_prefix_is_the_shorter_length);
	RUN(test_first_difference_prefers_a_byte_over_the_length);
	return unit_summary();
}
