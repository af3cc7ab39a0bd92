/*
 * I/O buffers for child parts. Requests are at most CHILD_IO_MAX bytes,
 * so one size serves all; reusing buffers spares each request the page
 * faults of fresh memory (three 1 MiB buffers a read). At most
 * BUFS_KEEP are kept, which bounds what an idle daemon holds. The cache
 * is the process's, like malloc's: every set and job draws from it.
 */
#include "children/children.h"

#include <pthread.h>
#include <stdlib.h>

#define BUFS_KEEP 48

static pthread_mutex_t bufs_lock = PTHREAD_MUTEX_INITIALIZER;
static void *bufs[BUFS_KEEP]; /* guarded by bufs_lock: idle buffers */
static int nbufs;	      /* guarded by bufs_lock */

void *child_buf_alloc(size_t size)
{
	void *p;

	if (posix_memalign(&p, CHILD_IO_ALIGN, size ? size : CHILD_IO_ALIGN))
		return NULL;
	return p;
}

void *child_buf_get(size_t size)
{
	void *buf = NULL;

	if (size > CHILD_IO_MAX)
		return child_buf_alloc(size);
	pthread_mutex_lock(&bufs_lock);
	if (nbufs)
		buf = bufs[--nbufs];
	pthread_mutex_unlock(&bufs_lock);
	return buf ? buf : child_buf_alloc(CHILD_IO_MAX);
}

void child_buf_put(void *buf, size_t size)
{
	if (buf && size <= CHILD_IO_MAX) {
		pthread_mutex_lock(&bufs_lock);
		if (nbufs < BUFS_KEEP) {
			bufs[nbufs++] = buf;
			buf = NULL;
		}
		pthread_mutex_unlock(&bufs_lock);
	}
	free(buf);
}

void child_bufs_release(void)
{
	pthread_mutex_lock(&bufs_lock);
	while (nbufs)
		free(bufs[--nbufs]);
	pthread_mutex_unlock(&bufs_lock);
}
