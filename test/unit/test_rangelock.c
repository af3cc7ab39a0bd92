/*
 * Unit tests for rangelock/: each test states one rule of the range
 * locks (rangelock/rangelock.h). A claim that must wait runs on a thread
 * of its own; the test waits until that claim is queued, which settles
 * whether it can be granted: once queued behind a conflicting claim it
 * stays waiting until that claim is released, so no timing is involved.
 */
#include "rangelock/rangelock.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

#include "test/unit/unit.h"

struct claimer {
	struct range_locks *rl;
	struct range_claim claim;
	off_t start, end;
	bool exclusive;
	atomic_bool granted;
	atomic_bool release;
	pthread_t thread;
};

static void *claim_thread(void *arg)
{
	struct claimer *c = arg;

	range_lock(c->rl, &c->claim, c->start, c->end, c->exclusive);
	atomic_store(&c->granted, true);
	while (!atomic_load(&c->release))
		sched_yield();
	range_unlock(c->rl, &c->claim);
	return NULL;
}

static bool queued(struct range_locks *rl, const struct range_claim *c)
{
	bool found = false;

	pthread_mutex_lock(&rl->mutex);
	for (const struct range_claim *p = rl->head; p; p = p->next)
		found |= p == c;
	pthread_mutex_unlock(&rl->mutex);
	return found;
}

/* Start a claimer and return once its claim is queued (or granted). */
static void start(struct claimer *c, struct range_locks *rl, off_t start,
		  off_t end, bool exclusive)
{
	*c = (struct claimer){
		.rl = rl, .start = start, .end = end, .exclusive = exclusive};
	atomic_init(&c->granted, false);
	atomic_init(&c->release, false);
	pthread_create(&c->thread, NULL, claim_thread, c);
	while (!atomic_load(&c->granted) && !queued(rl, &c->claim))
		sched_yield();
}

static void wait_granted(struct claimer *c)
{
	while (!atomic_load(&c->granted))
		sched_yield();
}

static void finish(struct claimer *c)
{
	atomic_store(&c->release, true);
	pthread_join(c->thread, NULL);
}

static void test_claims_that_do_not_overlap_run_in_parallel(void)
{
	struct range_locks rl;
	struct range_claim mine;
	struct claimer other;

	range_locks_init(&rl);
	range_lock(&rl, &mine, 0, 4096, true);
	start(&other, &rl, 4096, 8192, true);
	wait_granted(&other);
	CHECK(atomic_load(&other.granted));
	finish(&other);
	range_unlock(&rl, &mine);
	range_locks_destroy(&rl);
}

static void test_shared_claims_of_the_same_range_run_in_parallel(void)
{
	struct range_locks rl;
	struct range_claim mine;
	struct claimer other;

	range_locks_init(&rl);
	range_lock(&rl, &mine, 0, RANGE_END, false);
	start(&other, &rl, 100, 200, false);
	wait_granted(&other);
	CHECK(atomic_load(&other.granted));
	finish(&other);
	range_unlock(&rl, &mine);
	range_locks_destroy(&rl);
}

static void test_an_overlapping_writer_waits_for_the_reader(void)
{
	struct range_locks rl;
	struct range_claim mine;
	struct claimer writer;

	range_locks_init(&rl);
	range_lock(&rl, &mine, 0, 8192, false);
	start(&writer, &rl, 4096, 12288, true);
	CHECK(!atomic_load(&writer.granted));
	range_unlock(&rl, &mine);
	wait_granted(&writer);
	finish(&writer);
	range_locks_destroy(&rl);
}

static void test_a_waiting_writer_blocks_later_readers(void)
{
	struct range_locks rl;
	struct range_claim mine;
	struct claimer writer, reader;

	range_locks_init(&rl);
	range_lock(&rl, &mine, 0, 4096, false);
	start(&writer, &rl, 0, 4096, true);
	/* Compatible with the granted reader, but behind the writer. */
	start(&reader, &rl, 0, 4096, false);
	CHECK(!atomic_load(&writer.granted));
	CHECK(!atomic_load(&reader.granted));
	range_unlock(&rl, &mine);
	wait_granted(&writer);
	CHECK(!atomic_load(&reader.granted));
	finish(&writer);
	wait_granted(&reader);
	finish(&reader);
	range_locks_destroy(&rl);
}

static void test_claims_are_granted_in_arrival_order(void)
{
	struct range_locks rl;
	struct range_claim mine;
	struct claimer first, second;

	range_locks_init(&rl);
	range_lock(&rl, &mine, 0, RANGE_END, true);
	start(&first, &rl, 0, 10, true);
	start(&second, &rl, 5, 15, true);
	range_unlock(&rl, &mine);
	wait_granted(&first);
	CHECK(!atomic_load(&second.granted));
	finish(&first);
	wait_granted(&second);
	finish(&second);
	range_locks_destroy(&rl);
}

static void test_a_claim_to_the_end_covers_any_growth(void)
{
	struct range_locks rl;
	struct range_claim mine;
	struct claimer far;

	range_locks_init(&rl);
	range_lock(&rl, &mine, 1 << 20, RANGE_END, true);
	start(&far, &rl, (off_t)1 << 40, ((off_t)1 << 40) + 1, false);
	CHECK(!atomic_load(&far.granted));
	range_unlock(&rl, &mine);
	wait_granted(&far);
	finish(&far);
	range_locks_destroy(&rl);
}

static void test_touching_ranges_do_not_conflict(void)
{
	struct range_locks rl;
	struct range_claim a, b;

	range_locks_init(&rl);
	range_lock(&rl, &a, 0, 100, true);
	range_lock(&rl, &b, 100, 200, true); /* would hang if it conflicted */
	range_unlock(&rl, &a);
	range_unlock(&rl, &b);
	CHECK(rl.head == NULL && rl.tail == NULL);
	range_locks_destroy(&rl);
}

int main(void)
{
	alarm(60); /* a lost wake-up fails the run instead of stalling it */
	RUN(test_claims_that_do_not_overlap_run_in_parallel);
	RUN(test_shared_claims_of_the_same_range_run_in_parallel);
	RUN(test_an_overlapping_writer_waits_for_the_reader);
	RUN(test_a_waiting_writer_blocks_later_readers);
	RUN(test_claims_are_granted_in_arrival_order);
	RUN(test_a_claim_to_the_end_covers_any_growth);
	RUN(test_touching_ranges_do_not_conflict);
	return unit_summary();
}
