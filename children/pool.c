/*
 * The fan-out pool.
 *
 * One FIFO of tasks shared by all workers. A fan-out queues its tasks in
 * one go under the queue lock, runs task 0 on the calling thread and then
 * waits on its own completion counter. The tasks and the counter live on
 * the caller's stack: the caller cannot return before every task finished,
 * so nothing here is allocated per request.
 */
#define _GNU_SOURCE
#include "children/children.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct pool_batch {
	pool_fn *fn;
	void *arg;
	int remaining; /* guarded by lock */
	pthread_mutex_t lock;
	pthread_cond_t done;
};

struct task {
	struct pool_batch *batch;
	int index;
	struct task *next; /* guarded by pool->lock */
};

struct pool {
	pthread_mutex_t lock;
	pthread_cond_t work;
	struct task *head; /* guarded by lock */
	struct task *tail; /* guarded by lock */
	bool stopping;	   /* guarded by lock */
	int nthreads;
	pthread_t thread[];
};

static void batch_finish(struct pool_batch *f)
{
	pthread_mutex_lock(&f->lock);
	if (--f->remaining == 0)
		pthread_cond_signal(&f->done);
	pthread_mutex_unlock(&f->lock);
}

static struct task *pool_take(struct pool *pool)
{
	struct task *t;

	pthread_mutex_lock(&pool->lock);
	while (!pool->head && !pool->stopping)
		pthread_cond_wait(&pool->work, &pool->lock);
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
	struct task *t;

	while ((t = pool_take(pool))) {
		struct pool_batch *f = t->batch;

		f->fn(f->arg, t->index);
		batch_finish(f);
	}
	return NULL;
}

int pool_new(int threads, struct pool **out)
{
	struct pool *pool;
	int ret = 0;

	pool = calloc(1, sizeof(*pool) + threads * sizeof(pthread_t));
	if (!pool)
		return -ENOMEM;
	pthread_mutex_init(&pool->lock, NULL);
	pthread_cond_init(&pool->work, NULL);
	for (; pool->nthreads < threads; pool->nthreads++) {
		char name[16];

		ret = -pthread_create(&pool->thread[pool->nthreads], NULL,
				      pool_worker, pool);
		if (ret)
			goto out;
		snprintf(name, sizeof(name), "qfs-io%d", pool->nthreads);
		pthread_setname_np(pool->thread[pool->nthreads], name);
	}
	*out = pool;
	pool = NULL;
out:
	pool_free(pool);
	return ret;
}

void pool_free(struct pool *pool)
{
	if (!pool)
		return;
	pthread_mutex_lock(&pool->lock);
	pool->stopping = true;
	pthread_cond_broadcast(&pool->work);
	pthread_mutex_unlock(&pool->lock);
	for (int i = 0; i < pool->nthreads; i++)
		pthread_join(pool->thread[i], NULL);
	pthread_cond_destroy(&pool->work);
	pthread_mutex_destroy(&pool->lock);
	free(pool);
}

void pool_run(struct pool *pool, int n, pool_fn *fn, void *arg)
{
	struct task task[CHILDREN_MAX];
	struct pool_batch f = {.fn = fn, .arg = arg, .remaining = n - 1};

	if (n > 1) {
		pthread_mutex_init(&f.lock, NULL);
		pthread_cond_init(&f.done, NULL);
		for (int i = 1; i < n; i++)
			task[i] = (struct task){.batch = &f, .index = i};
		pthread_mutex_lock(&pool->lock);
		for (int i = 1; i < n; i++) {
			if (pool->tail)
				pool->tail->next = &task[i];
			else
				pool->head = &task[i];
			pool->tail = &task[i];
		}
		/* One worker per task: a broadcast would wake every idle
		 * worker for two tasks, and that herd cost more than the I/O
		 * for small requests. */
		for (int i = 1; i < n; i++)
			pthread_cond_signal(&pool->work);
		pthread_mutex_unlock(&pool->lock);
	}
	if (n > 0)
		fn(arg, 0);
	if (n > 1) {
		pthread_mutex_lock(&f.lock);
		while (f.remaining > 0)
			pthread_cond_wait(&f.done, &f.lock);
		pthread_mutex_unlock(&f.lock);
		pthread_cond_destroy(&f.done);
		pthread_mutex_destroy(&f.lock);
	}
}
