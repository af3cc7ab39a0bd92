/*
 * One request to every child of a view, answered within io-timeout.
 *
 * A struct child_request is md raid1's r1bio for calls that are not data
 * I/O (lookups, opens, namespace changes, stats, record updates): one
 * part per child of the view, each run by a pool worker, and a count of
 * the parts still running. Data reads and writes go through the ring
 * instead (child_io_run), which bounds them itself.
 *
 * Those calls are plain system calls: one that a hung child holds cannot
 * be taken back. So with an io-timeout every part runs on the pool and
 * the caller waits until all have answered or the timeout has passed.
 * Then it gives up on the parts still running: their answer is
 * -ETIMEDOUT, they count as orphans of their child (a resync waits for
 * them), and the watchdog's late callback hears of each such child
 * (watchdog_report), so the layer above fails it and no later request
 * waits for it. A part given up on finishes on its own when its child
 * answers; the request is reference-counted (the caller and each part)
 * and its argument stays valid until the last part is done, when
 * release() frees what the late parts left there.
 *
 * Rules for the parts and the caller, which keep them from racing:
 *   - a part writes only its own index of the argument's per-child
 *     arrays, and on failure frees what it made there;
 *   - after child_request_run() the caller looks at index i only when
 *     ret[i] == 0 (a late part's answer is -ETIMEDOUT): the rest belongs
 *     to the late parts and to release();
 *   - whatever the parts read (names, values, nodes, files) is owned by
 *     the argument, copied or referenced, never borrowed from the caller.
 *
 * Without an io-timeout (0: wait for ever) the calling thread runs part 0
 * itself and waits for the rest: one hand-off fewer.
 */
#define _GNU_SOURCE
#include "children/children.h"
#include "children/children_i.h"

#include <errno.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

struct watchdog {
	int timeout_ms; /* 0: wait for ever */
	child_late_fn *late;
	void *arg;
};

struct part {
	struct pool_task task; /* first: the pool hands this back */
	struct child_request *rq;
	int index;
};

/* The request behind the caller's view of it. Its fields: the public
 * part, what the parts share (body, release, references, completion) and
 * one task per part. */
struct request_holder {
	struct child_request rq;
	int (*body)(struct child_request *rq, int i);
	void (*release)(struct child_request *rq);
	atomic_int refs;
	pthread_mutex_t lock;
	pthread_cond_t done;
	int remaining; /* guarded by lock: parts still running */
	struct part part[CHILDREN_MAX];
	alignas(max_align_t) unsigned char arg[];
};

/* Requests alive anywhere, so teardown can wait for the last late part
 * (child_requests_wait). */
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_none = PTHREAD_COND_INITIALIZER;
static int live; /* guarded by live_lock */

static void live_count(int delta)
{
	pthread_mutex_lock(&live_lock);
	live += delta;
	if (live == 0)
		pthread_cond_broadcast(&live_none);
	pthread_mutex_unlock(&live_lock);
}

bool child_requests_wait(int ms)
{
	struct timespec until;
	bool none;

	children_deadline(CLOCK_REALTIME, ms, &until);
	pthread_mutex_lock(&live_lock);
	while (live > 0 && pthread_cond_timedwait(&live_none, &live_lock,
						  &until) != ETIMEDOUT)
		;
	none = live == 0;
	pthread_mutex_unlock(&live_lock);
	return none;
}

static struct request_holder *holder_of(struct child_request *rq)
{
	return (struct request_holder *)rq;
}

struct child_request *child_request_new(const struct child_view *view,
					size_t arg_size,
					void (*release)(struct child_request *))
{
	struct request_holder *h = calloc(1, sizeof(*h) + arg_size);
	pthread_condattr_t attr;

	if (!h)
		return NULL;
	h->rq.view = children_view_hold(view);
	h->rq.arg = h->arg;
	h->release = release;
	atomic_init(&h->refs, 1);
	pthread_mutex_init(&h->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&h->done, &attr);
	pthread_condattr_destroy(&attr);
	live_count(1);
	return &h->rq;
}

void child_request_put(struct child_request *rq)
{
	struct request_holder *h;

	if (!rq)
		return;
	h = holder_of(rq);
	if (atomic_fetch_sub(&h->refs, 1) != 1)
		return;
	if (h->release)
		h->release(rq);
	children_view_put(rq->view);
	pthread_cond_destroy(&h->done);
	pthread_mutex_destroy(&h->lock);
	free(h);
	live_count(-1);
}

/* A part has answered: keep its answer unless the caller gave up on it,
 * which made it an orphan of its child until now. */
static void part_done(struct request_holder *h, int i, int ret)
{
	pthread_mutex_lock(&h->lock);
	if (h->rq.late & (1u << i))
		child_orphan(h->rq.view->child[i], -1);
	else
		h->rq.ret[i] = ret;
	if (--h->remaining == 0)
		pthread_cond_signal(&h->done);
	pthread_mutex_unlock(&h->lock);
}

static void part_run(struct pool_task *task)
{
	struct part *p = (struct part *)task;
	struct request_holder *h = holder_of(p->rq);

	part_done(h, p->index, h->body(p->rq, p->index));
	child_request_put(p->rq);
}

/* Queue parts first..n-1 on the pool, each holding a reference. */
static void submit_parts(struct request_holder *h, struct pool *pool, int first)
{
	struct pool_task *tasks[CHILDREN_MAX];
	int n = h->rq.view->n;

	for (int i = first; i < n; i++) {
		h->part[i] = (struct part){
			.task.fn = part_run, .rq = &h->rq, .index = i};
		tasks[i - first] = &h->part[i].task;
		atomic_fetch_add(&h->refs, 1);
	}
	if (n > first)
		pool_submit(pool, tasks, n - first);
}

/* Wait for every part, or until deadline (NULL: for ever); then give up
 * on the parts still running. */
static void wait_parts(struct request_holder *h, const struct timespec *until)
{
	pthread_mutex_lock(&h->lock);
	while (h->remaining > 0) {
		if (!until)
			pthread_cond_wait(&h->done, &h->lock);
		else if (pthread_cond_timedwait(&h->done, &h->lock, until) ==
			 ETIMEDOUT)
			break;
	}
	for (int i = 0; h->remaining > 0 && i < h->rq.view->n; i++) {
		if (h->rq.ret[i] != 1)
			continue; /* answered */
		h->rq.late |= 1u << i;
		h->rq.ret[i] = -ETIMEDOUT;
		child_orphan(h->rq.view->child[i], 1);
	}
	pthread_mutex_unlock(&h->lock);
}

void child_request_run(struct child_request *rq, struct pool *pool,
		       const struct watchdog *wd,
		       int (*body)(struct child_request *rq, int i))
{
	struct request_holder *h = holder_of(rq);
	int n = rq->view->n, timeout = wd ? wd->timeout_ms : 0;
	struct timespec until;

	h->body = body;
	h->remaining = n;
	rq->late = 0;
	/* 1: not answered yet (no errno is positive). */
	for (int i = 0; i < n; i++)
		rq->ret[i] = 1;
	if (!pool) {
		/* Before the pool exists (at mount): one child after another,
		 * on this thread. */
		for (int i = 0; i < n; i++)
			part_done(h, i, body(rq, i));
		return;
	}
	if (timeout > 0) {
		children_deadline(CLOCK_MONOTONIC, timeout, &until);
		submit_parts(h, pool, 0);
		wait_parts(h, &until);
		return;
	}
	submit_parts(h, pool, 1);
	if (n > 0)
		part_done(h, 0, body(rq, 0));
	wait_parts(h, NULL);
}

/* ---- the watchdog: the timeout, and who hears of a late child ---- */

int watchdog_new(int timeout_ms, struct watchdog **out)
{
	struct watchdog *wd = calloc(1, sizeof(*wd));

	if (!wd)
		return -ENOMEM;
	wd->timeout_ms = timeout_ms;
	*out = wd;
	return 0;
}

void watchdog_free(struct watchdog *wd)
{
	free(wd);
}

void watchdog_set_late(struct watchdog *wd, child_late_fn *late, void *arg)
{
	if (!wd)
		return;
	wd->late = late;
	wd->arg = arg;
}

int watchdog_timeout_ms(const struct watchdog *wd)
{
	return wd ? wd->timeout_ms : 0;
}

void watchdog_report(const struct watchdog *wd, const struct child_request *rq)
{
	for (int i = 0; wd && wd->late && i < rq->view->n; i++)
		if (rq->late & (1u << i))
			wd->late(wd->arg, rq->view->child[i]);
}
