/*
 * rangelock: per-file byte-range locks that order requests.
 *
 * A request claims [start, end) of a file, shared (a read) or exclusive
 * (a write), and holds the claim for as long as any child works on it.
 * Claims are granted in arrival order: a claim waits while any earlier
 * claim, granted or not, overlaps it and either of the two is exclusive.
 * So overlapping writes reach every child in the same order, a read never
 * sees a write half applied, a waiting writer blocks the readers that
 * come after it (no starvation), and claims that do not overlap run in
 * parallel.
 *
 * Conventions: a struct range_claim is a plain value on the requester's
 * stack, filled by range_lock() and valid until range_unlock(). Calls
 * never fail. The set's mutex is a leaf: nothing else is taken under it.
 * The range lock is the only lock the project holds across child I/O,
 * since ordering that I/O is its purpose.
 */
#ifndef QFS_RANGELOCK_H
#define QFS_RANGELOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* An end that means "to the end of the file, however it grows". */
#define RANGE_END INT64_MAX

/* One request's claim on [start, end) of a file. */
struct range_claim {
	off_t start, end;
	bool exclusive;
	struct range_claim *next; /* guarded by the set's mutex */
};

/* Every claim of one file, granted or waiting, in arrival order. */
struct range_locks {
	pthread_mutex_t mutex;
	pthread_cond_t changed;
	struct range_claim *head, *tail; /* guarded by mutex */
};

void range_locks_init(struct range_locks *rl);
/* No claim may be held or waiting. */
void range_locks_destroy(struct range_locks *rl);

/* Queue c for [start, end) and block until it is granted. */
void range_lock(struct range_locks *rl, struct range_claim *c, off_t start,
		off_t end, bool exclusive);
void range_unlock(struct range_locks *rl, struct range_claim *c);

#endif
