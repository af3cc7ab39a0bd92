/*
 * stats: how many data requests the mount answered and how long each
 * took, for the status ("requests") and quorumctl's metrics.
 *
 * Reads, writes and flushes (fsync and flush) are counted by class:
 * requests, failed ones, bytes, and a histogram of the time from the
 * kernel's request reaching the handler to its answer, in fixed buckets
 * (Prometheus' le bounds). Counters are process-wide atomics, updated
 * with relaxed ordering: a reader may see one request counted in its
 * class but not yet in its bucket, never a torn number. Lock-free, so
 * counting costs a request two clock reads and a few atomic adds.
 */
#ifndef QFS_STATS_H
#define QFS_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

enum stats_op {
	STATS_READ,
	STATS_WRITE,
	STATS_FLUSH,
	STATS_OPS,
};

/* Upper bounds of the buckets, in seconds; one more bucket, +Inf,
 * follows the last. */
#define STATS_BUCKETS 15
extern const double stats_bounds[STATS_BUCKETS];

/* Now, for stats_done(): CLOCK_MONOTONIC in nanoseconds. */
uint64_t stats_start(void);

/* A request of class op that started at start ended; bytes it moved. */
void stats_done(enum stats_op op, uint64_t start, bool failed, uint64_t bytes);

/* The request just counted was served through a FUSE-over-io_uring
 * queue (transport/). */
void stats_via_ring(enum stats_op op);

/*
 * The counts as JSON (caller puts it): {"le": [bounds...], "read":
 * {"count", "errors", "bytes", "seconds" (the sum), "buckets": [count
 * per bucket, not cumulative, the last one +Inf], "ring": those served
 * through io_uring}, "write": ...,
 * "flush": ...}. NULL when out of memory.
 */
struct json_object *stats_json(void);

#endif
