/*
 * One request to every child of a view, and the watchdog over them.
 *
 * A struct child_request is md raid1's r1bio for calls that are not data
 * I/O (lookups, opens, namespace changes, stats): one slot per child of
 * the view, filled by the request's body on the pool, and the request
 * returns once every slot is. Data reads and writes go through the ring
 * instead (child_io_run), which bounds them by io-timeout itself.
 *
 * Those calls are plain system calls: one that a hung child holds cannot
 * be taken back. The watchdog keeps every running request on a list; its
 * thread (qfs-watchdog) looks at the list a few times per io-timeout and,
 * for a request older than io-timeout, reports each child whose slot is
 * still open through the late callback, once per request. The tree then
 * fails that child, so every later request leaves it out; the call it
 * holds returns when the child answers.
 *
 * Locks: wd->lock guards the list and each request's overdue flag; it is
 * a leaf, and the late callback runs without it.
 */
#define _GNU_SOURCE
#include "children/children.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

struct watchdog {
	int timeout_ms; /* 0: nothing is watched and no thread runs */
	child_late_fn *late;
	void *arg;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct child_request *running; /* guarded by lock */
	bool stop;		       /* guarded by lock */
	pthread_t thread;
};

static void request_task(void *arg, int i)
{
	struct child_request *rq = arg;

	rq->body(rq, i);
	atomic_store(&rq->done[i], true);
}

static void watch(struct watchdog *wd, struct child_request *rq)
{
	clock_gettime(CLOCK_MONOTONIC, &rq->started);
	for (int i = 0; i < rq->view->n; i++)
		atomic_init(&rq->done[i], false);
	rq->overdue = false;
	pthread_mutex_lock(&wd->lock);
	rq->prev = NULL;
	rq->next = wd->running;
	if (rq->next)
		rq->next->prev = rq;
	wd->running = rq;
	pthread_mutex_unlock(&wd->lock);
}

static void unwatch(struct watchdog *wd, struct child_request *rq)
{
	pthread_mutex_lock(&wd->lock);
	if (rq->prev)
		rq->prev->next = rq->next;
	else
		wd->running = rq->next;
	if (rq->next)
		rq->next->prev = rq->prev;
	pthread_mutex_unlock(&wd->lock);
}

void child_request_run(struct child_request *rq, struct pool *pool,
		       struct watchdog *wd)
{
	bool watched = wd && wd->timeout_ms > 0;

	if (watched)
		watch(wd, rq);
	pool_run(pool, rq->view->n, request_task, rq);
	if (watched)
		unwatch(wd, rq);
}

static long long ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - t->tv_sec) * 1000LL +
	       (now.tv_nsec - t->tv_nsec) / 1000000;
}

/* Children of overdue requests (references), each once; lock held. */
static int overdue_locked(struct watchdog *wd, struct child **late)
{
	int n = 0;

	for (struct child_request *rq = wd->running; rq; rq = rq->next) {
		if (rq->overdue || ms_since(&rq->started) < wd->timeout_ms)
			continue;
		rq->overdue = true;
		for (int i = 0; i < rq->view->n && n < CHILDREN_MAX; i++) {
			if (atomic_load(&rq->done[i]))
				continue;
			child_get(rq->view->child[i]);
			late[n++] = rq->view->child[i];
		}
	}
	return n;
}

static void watchdog_sleep(struct watchdog *wd)
{
	int ms = wd->timeout_ms / 4 > 100 ? wd->timeout_ms / 4 : 100;
	struct timespec until;

	children_deadline(CLOCK_REALTIME, ms, &until);
	pthread_cond_timedwait(&wd->wake, &wd->lock, &until);
}

static void *watchdog_thread(void *arg)
{
	struct watchdog *wd = arg;
	struct child *late[CHILDREN_MAX];
	int n;

	pthread_mutex_lock(&wd->lock);
	while (!wd->stop) {
		n = overdue_locked(wd, late);
		pthread_mutex_unlock(&wd->lock);
		for (int i = 0; i < n; i++) {
			wd->late(wd->arg, late[i]);
			child_put(late[i]);
		}
		pthread_mutex_lock(&wd->lock);
		if (!wd->stop)
			watchdog_sleep(wd);
	}
	pthread_mutex_unlock(&wd->lock);
	return NULL;
}

int watchdog_new(int timeout_ms, child_late_fn *late, void *arg,
		 struct watchdog **out)
{
	struct watchdog *wd = calloc(1, sizeof(*wd));
	int ret;

	if (!wd)
		return -ENOMEM;
	wd->timeout_ms = timeout_ms;
	wd->late = late;
	wd->arg = arg;
	pthread_mutex_init(&wd->lock, NULL);
	pthread_cond_init(&wd->wake, NULL);
	if (timeout_ms > 0) {
		ret = -pthread_create(&wd->thread, NULL, watchdog_thread, wd);
		if (ret) {
			wd->timeout_ms = 0;
			watchdog_free(wd);
			return ret;
		}
		pthread_setname_np(wd->thread, "qfs-watchdog");
	}
	*out = wd;
	return 0;
}

void watchdog_free(struct watchdog *wd)
{
	if (!wd)
		return;
	if (wd->timeout_ms > 0) {
		pthread_mutex_lock(&wd->lock);
		wd->stop = true;
		pthread_cond_signal(&wd->wake);
		pthread_mutex_unlock(&wd->lock);
		pthread_join(wd->thread, NULL);
	}
	pthread_cond_destroy(&wd->wake);
	pthread_mutex_destroy(&wd->lock);
	free(wd);
}
