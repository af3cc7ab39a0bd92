/*
 * Replication children: the primary's end of a replication stream.
 *
 * A replication child takes every change the tree makes (it is in the
 * views, with no vote) and is never read. What is particular to it lives
 * here: its stage, which QEMU's replication driver names, and the latch
 * of its failed forwards. In stage RUNNING a failed forward changes
 * nothing for the caller; it is latched, as QEMU's replication_co_writev
 * keeps s->error, and an orchestrator asks for it with `get-error`.
 *
 * Locks: the stage changes under the set's lock (children.c: it decides
 * whether the child is in the views); the latch has a lock of its own, a
 * leaf, since requests latch from any thread and may hold range claims.
 */
#define _GNU_SOURCE
#include "children/children.h"
#include "children/children_i.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "events/events.h"

const char *repl_stage_name(enum repl_stage s)
{
	static const char *const names[] = {"NONE", "RUNNING", "FAILOVER",
					    "FAILOVER_FAILED", "DONE"};

	return names[s];
}

enum repl_stage child_stage(const struct child *c)
{
	return atomic_load(&c->stage);
}

int child_latch_new(struct child *c)
{
	c->latch = calloc(1, sizeof(*c->latch));
	if (!c->latch)
		return -ENOMEM;
	pthread_mutex_init(&c->latch->lock, NULL);
	return 0;
}

void child_latch_free(struct child *c)
{
	if (!c->latch)
		return;
	json_object_put(c->latch->first_doc);
	json_object_put(c->latch->last_doc);
	pthread_mutex_destroy(&c->latch->lock);
	free(c->latch);
	c->latch = NULL;
}

/* One failed forward, as status shows it. */
static struct json_object *forward_doc(int error, const char *op,
				       const char *file, uint64_t off,
				       uint64_t len)
{
	struct json_object *d = json_object_new_object();

	json_object_object_add(d, "errno", json_object_new_int(-error));
	json_object_object_add(d, "error",
			       json_object_new_string(strerror(-error)));
	json_object_object_add(d, "op", json_object_new_string(op));
	json_object_object_add(d, "file", json_object_new_string(file));
	json_object_object_add(d, "offset", json_object_new_int64(off));
	json_object_object_add(d, "length", json_object_new_int64(len));
	json_object_object_add(d, "time", json_object_new_int64(time(NULL)));
	return d;
}

void child_latch(struct event_log *log, struct child *c, int error,
		 const char *op, const char *file, uint64_t off, uint64_t len)
{
	struct child_latch *l = c->latch;
	struct json_object *doc = forward_doc(error, op, file, off, len);

	pthread_mutex_lock(&l->lock);
	if (!l->first) {
		l->first = error;
		json_object_put(l->first_doc);
		l->first_doc = json_object_get(doc);
	}
	l->last = error;
	l->count++;
	json_object_put(l->last_doc);
	l->last_doc = doc;
	pthread_mutex_unlock(&l->lock);
	event_log_replication_error(log, c->name, op, off, len, error, file);
}

int child_latched(struct child *c)
{
	int error;

	pthread_mutex_lock(&c->latch->lock);
	error = c->latch->first;
	pthread_mutex_unlock(&c->latch->lock);
	return error;
}

void child_clear_latch(struct child *c)
{
	struct child_latch *l = c->latch;

	pthread_mutex_lock(&l->lock);
	l->first = l->last = 0;
	l->count = 0;
	json_object_put(l->first_doc);
	json_object_put(l->last_doc);
	l->first_doc = l->last_doc = NULL;
	pthread_mutex_unlock(&l->lock);
}

void child_count_forward(struct child *c, uint64_t bytes)
{
	atomic_fetch_add_explicit(&c->forwarded_ops, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&c->forwarded_bytes, bytes,
				  memory_order_relaxed);
}

static struct json_object *forwarded_status(const struct child *c)
{
	struct json_object *f = json_object_new_object();

	json_object_object_add(
		f, "ops",
		json_object_new_int64(atomic_load(&c->forwarded_ops)));
	json_object_object_add(
		f, "bytes",
		json_object_new_int64(atomic_load(&c->forwarded_bytes)));
	return f;
}

/* QEMU's query-xen-replication-status: error and desc. */
struct json_object *child_replica_status(struct child *c)
{
	struct json_object *o = json_object_new_object();
	struct child_latch *l = c->latch;
	enum repl_stage s = child_stage(c);

	json_object_object_add(o, "mode", json_object_new_string("primary"));
	json_object_object_add(o, "stage",
			       json_object_new_string(repl_stage_name(s)));
	pthread_mutex_lock(&l->lock);
	json_object_object_add(o, "error", json_object_new_boolean(l->first));
	json_object_object_add(
		o, "desc",
		json_object_new_string(l->first ? "I/O error occurred" : ""));
	json_object_object_add(o, "first-error", json_object_get(l->first_doc));
	json_object_object_add(o, "last-error", json_object_get(l->last_doc));
	json_object_object_add(o, "errors", json_object_new_int64(l->count));
	pthread_mutex_unlock(&l->lock);
	json_object_object_add(o, "forwarded", forwarded_status(c));
	return o;
}
