/* Request counts and latency histograms (stats.h). */
#define _GNU_SOURCE
#include "stats/stats.h"

#include <json-c/json.h>
#include <stdatomic.h>
#include <time.h>

const double stats_bounds[STATS_BUCKETS] = {
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
	0.05,	0.1,	 0.25,	 0.5,	1,	2.5,   10,
};

static const char *const op_names[STATS_OPS] = {
	[STATS_READ] = "read",
	[STATS_WRITE] = "write",
	[STATS_FLUSH] = "flush",
};

struct op_counts {
	atomic_uint_fast64_t count, errors, bytes, ns, ring;
	atomic_uint_fast64_t bucket[STATS_BUCKETS + 1];
};

static struct op_counts counts[STATS_OPS];

uint64_t stats_start(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void stats_done(enum stats_op op, uint64_t start, bool failed, uint64_t bytes)
{
	uint64_t ns = stats_start() - start;
	struct op_counts *c = &counts[op];
	int b = 0;

	while (b < STATS_BUCKETS && ns > stats_bounds[b] * 1e9)
		b++;
	atomic_fetch_add_explicit(&c->bucket[b], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&c->ns, ns, memory_order_relaxed);
	atomic_fetch_add_explicit(&c->bytes, bytes, memory_order_relaxed);
	atomic_fetch_add_explicit(&c->errors, failed, memory_order_relaxed);
	atomic_fetch_add_explicit(&c->count, 1, memory_order_relaxed);
}

void stats_via_ring(enum stats_op op)
{
	atomic_fetch_add_explicit(&counts[op].ring, 1, memory_order_relaxed);
}

static int64_t load(atomic_uint_fast64_t *v)
{
	return (int64_t)atomic_load_explicit(v, memory_order_relaxed);
}

static struct json_object *op_json(struct op_counts *c)
{
	struct json_object *o = json_object_new_object();
	struct json_object *buckets = json_object_new_array();

	for (int b = 0; b <= STATS_BUCKETS; b++)
		json_object_array_add(
			buckets, json_object_new_int64(load(&c->bucket[b])));
	json_object_object_add(o, "count",
			       json_object_new_int64(load(&c->count)));
	json_object_object_add(o, "errors",
			       json_object_new_int64(load(&c->errors)));
	json_object_object_add(o, "bytes",
			       json_object_new_int64(load(&c->bytes)));
	json_object_object_add(o, "seconds",
			       json_object_new_double(load(&c->ns) / 1e9));
	json_object_object_add(o, "buckets", buckets);
	json_object_object_add(o, "ring",
			       json_object_new_int64(load(&c->ring)));
	return o;
}

struct json_object *stats_json(void)
{
	struct json_object *o = json_object_new_object();
	struct json_object *le = json_object_new_array();

	for (int b = 0; b < STATS_BUCKETS; b++)
		json_object_array_add(le,
				      json_object_new_double(stats_bounds[b]));
	json_object_object_add(o, "le", le);
	for (int op = 0; op < STATS_OPS; op++)
		json_object_object_add(o, op_names[op], op_json(&counts[op]));
	return o;
}
