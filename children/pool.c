/*
 * The pool: worker threads (qfs-io<N>) that run the per-child parts of
 * requests, from one FIFO.
 *
 * A task is a struct pool_task the submitter owns and embeds in its own
 * object (a request's part, a batch's slot), so queueing allocates
 * nothing. Order guarantee: tasks start in the order they were queued;
 * a request's parts, queued together, start before any later request's.
 *
 * A worker may be held by a child that hangs inside a system call, and
 * a request gives up on such a part after io-timeout (request.c). So
 * that held workers never starve the others, the pool adds a worker
 * whenever a task is queued and none is idle, up to POOL_MAX_THREADS. At
 * the end, pool_free() waits a moment for the workers; one that a hung
 * child still holds is left to finish on its own, and the pool with it.
 */
#define _GNU_SOURCE
#include "children/children.h"
#include "children/children_i.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define POOL_MAX_THREADS 512
/* How long pool_free() waits for a worker a hung child may hold. */
#define POOL_JOIN_MS 2000

struct worker {
	pthread_t thread;
	struct worker *next;
};

struct pool {
	pthread_mutex_t lock;
	pthread_cond_t work;
	struct pool_task *head; /* guarded by lock */
	struct pool_task *tail; /* guarded by lock */
	int idle;		/* guarded by lock: workers waiting */
	int nthreads;		/* guarded by lock */
	bool stopping;		/* guarded by lock */
	struct worker *workers; /* guarded by lock */
};

static struct pool_task *pool_take(struct pool *pool)
{
	struct pool_task *t;

	pthread_mutex_lock(&pool->lock);
	pool->idle++;
	while (!pool->head && !pool->stopping)
		pthread_cond_wait(&pool->work, &pool->lock);
	pool->idle--;
	t = pool->head;
	if (t) {
		pool->head = t->next;
		if (!pool->head)
			pool->tail = NULL;
	}
	pthread_mutex_unlock(&pool->lock);
	return t;
}

static void *pool_worker(void *arg)
{
	struct pool *pool = arg;
	struct pool_task *t;

	while ((t = pool_take(pool)))
		t->fn(t);
	return NULL;
}

/* One more worker; pool->lock held. A failure leaves the others to do
 * the work. */
static int add_worker_locked(struct pool *pool)
{
	struct worker *w = calloc(1, sizeof(*w));
	char name[16];
	int ret;

	if (!w)
		return -ENOMEM;
	ret = -pthread_create(&w->thread, NULL, pool_worker, pool);
	if (ret) {
		free(w);
		return ret;
	}
	snprintf(name, sizeof(name), "qfs-io%d", pool->nthreads++);
	pthread_setname_np(w->thread, name);
	w->next = pool->workers;
	pool->workers = w;
	return 0;
}

int pool_new(int threads, struct pool **out)
{
	struct pool *pool = calloc(1, sizeof(*pool));
	int ret = 0;

	if (!pool)
		return -ENOMEM;
	pthread_mutex_init(&pool->lock, NULL);
	pthread_cond_init(&pool->work, NULL);
	pthread_mutex_lock(&pool->lock);
	for (int i = 0; i < threads && !ret; i++)
		ret = add_worker_locked(pool);
	pthread_mutex_unlock(&pool->lock);
	if (ret) {
		pool_free(pool);
		return ret;
	}
	*out = pool;
	return 0;
}

/* Join w, waiting until deadline at most; false if it is still held. */
static bool join_worker(struct worker *w, const struct timespec *deadline)
{
	return pthread_timedjoin_np(w->thread, NULL, deadline) == 0;
}

void pool_free(struct pool *pool)
{
	struct timespec deadline;
	struct worker *w, *next;
	bool all = true;

	if (!pool)
		return;
	pthread_mutex_lock(&pool->lock);
	pool->stopping = true;
	pthread_cond_broadcast(&pool->work);
	w = pool->workers;
	pool->workers = NULL;
	pthread_mutex_unlock(&pool->lock);
	children_deadline(CLOCK_REALTIME, POOL_JOIN_MS, &deadline);
	for (; w; w = next) {
		next = w->next;
		if (join_worker(w, &deadline)) {
			free(w);
			continue;
		}
		pthread_detach(w->thread); /* held by a hung child */
		all = false;
	}
	if (!all)
		return; /* the held workers still use the pool */
	pthread_cond_destroy(&pool->work);
	pthread_mutex_destroy(&pool->lock);
	free(pool);
}

void pool_submit(struct pool *pool, struct pool_task **tasks, int n)
{
	pthread_mutex_lock(&pool->lock);
	for (int i = 0; i < n; i++) {
		tasks[i]->next = NULL;
		if (pool->tail)
			pool->tail->next = tasks[i];
		else
			pool->head = tasks[i];
		pool->tail = tasks[i];
	}
	for (int i = pool->idle; i < n && pool->nthreads < POOL_MAX_THREADS;
	     i++)
		if (add_worker_locked(pool))
			break;
	/* One worker per task: a broadcast would wake every idle worker for
	 * two tasks, and that herd cost more than the I/O for small
	 * requests. */
	for (int i = 0; i < n; i++)
		pthread_cond_signal(&pool->work);
	pthread_mutex_unlock(&pool->lock);
}

/* ---- a batch the caller waits for (pool_run) ---- */

struct pool_batch {
	pool_fn *fn;
	void *arg;
	int remaining; /* guarded by lock */
	pthread_mutex_t lock;
	pthread_cond_t done;
};

struct batch_task {
	struct pool_task task; /* first: the pool hands this back */
	struct pool_batch *batch;
	int index;
};

static void batch_task(struct pool_task *t)
{
	struct batch_task *bt = (struct batch_task *)t;
	struct pool_batch *b = bt->batch;

	b->fn(b->arg, bt->index);
	pthread_mutex_lock(&b->lock);
	if (--b->remaining == 0)
		pthread_cond_signal(&b->done);
	pthread_mutex_unlock(&b->lock);
}

void pool_run(struct pool *pool, int n, pool_fn *fn, void *arg)
{
	struct batch_task task[CHILDREN_MAX];
	struct pool_task *queued[CHILDREN_MAX];
	struct pool_batch b = {.fn = fn, .arg = arg, .remaining = n - 1};

	if (n > 1) {
		pthread_mutex_init(&b.lock, NULL);
		pthread_cond_init(&b.done, NULL);
		for (int i = 1; i < n; i++) {
			task[i] = (struct batch_task){
				.task.fn = batch_task, .batch = &b, .index = i};
			queued[i - 1] = &task[i].task;
		}
		pool_submit(pool, queued, n - 1);
	}
	if (n > 0)
		fn(arg, 0);
	if (n > 1) {
		pthread_mutex_lock(&b.lock);
		while (b.remaining > 0)
			pthread_cond_wait(&b.done, &b.lock);
		pthread_mutex_unlock(&b.lock);
		pthread_cond_destroy(&b.done);
		pthread_mutex_destroy(&b.lock);
	}
}
