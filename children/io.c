/*
 * Data I/O to every child at once.
 *
 * A read or write of one request goes to every child. Handing each
 * child's part to a pool thread costs a cross-core wake-up per child,
 * which dwarfs a page-cache hit. Instead, the calling thread submits all
 * parts to its own io_uring in one system call: parts the kernel can
 * serve at once (page cache) complete inline, the others (block I/O,
 * network file systems) proceed in parallel in the kernel, and the caller
 * sleeps once for all of them.
 *
 * Each thread that does I/O gets a ring on first use, freed when the
 * thread exits. Where io_uring is unavailable (an old kernel, a sandbox
 * that forbids it) the pool does the work instead.
 */
#define _GNU_SOURCE
#include "children/children.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#define RING_ENTRIES CHILDREN_MAX

static pthread_key_t ring_key;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
static bool ring_broken; /* io_uring refused once: never try again */

static void ring_free(void *ring)
{
	io_uring_queue_exit(ring);
	free(ring);
}

static void ring_key_create(void)
{
	if (pthread_key_create(&ring_key, ring_free))
		ring_broken = true;
}

/* This thread's ring, or NULL when io_uring cannot be used. */
static struct io_uring *thread_ring(void)
{
	struct io_uring *ring;

	pthread_once(&ring_once, ring_key_create);
	if (ring_broken)
		return NULL;
	ring = pthread_getspecific(ring_key);
	if (ring)
		return ring;
	ring = calloc(1, sizeof(*ring));
	if (!ring || io_uring_queue_init(RING_ENTRIES, ring, 0)) {
		free(ring);
		ring_broken = true;
		return NULL;
	}
	if (pthread_setspecific(ring_key, ring)) {
		ring_free(ring);
		return NULL;
	}
	return ring;
}

static void prep(struct io_uring_sqe *sqe, struct child_io *io)
{
	if (io->write)
		io_uring_prep_write(sqe, io->fd, io->buf, io->len, io->off);
	else
		io_uring_prep_read(sqe, io->fd, io->buf, io->len, io->off);
	io_uring_sqe_set_data(sqe, io);
}

/* A ring that failed may hold unsubmitted entries: never reuse it. */
static void ring_drop(struct io_uring *ring)
{
	pthread_setspecific(ring_key, NULL);
	ring_free(ring);
}

/* Submit every part and collect what completes; parts left undone on
 * failure are for the caller to finish another way. */
static void ring_run(struct io_uring *ring, struct child_io *io, int n)
{
	struct child_io *part;
	struct io_uring_cqe *cqe;
	int queued = 0, ret;
	bool failed = false;

	for (int i = 0; i < n; i++) {
		if (io[i].fd < 0 || io[i].done)
			continue;
		prep(io_uring_get_sqe(ring), &io[i]);
		queued++;
	}
	ret = io_uring_submit(ring);
	if (ret < queued) {
		queued = ret < 0 ? 0 : ret;
		failed = true;
	}
	while (queued > 0) {
		ret = io_uring_wait_cqe(ring, &cqe);
		if (ret == -EINTR)
			continue;
		if (ret) {
			failed = true;
			break;
		}
		part = io_uring_cqe_get_data(cqe);
		part->ret = cqe->res;
		part->done = true;
		io_uring_cqe_seen(ring, cqe);
		queued--;
	}
	if (failed)
		ring_drop(ring);
}

static void pool_io_one(void *arg, int i)
{
	struct child_io *io = (struct child_io *)arg + i;
	ssize_t r;

	if (io->fd < 0 || io->done)
		return;
	r = io->write ? pwrite(io->fd, io->buf, io->len, io->off)
		      : pread(io->fd, io->buf, io->len, io->off);
	io->ret = r < 0 ? -errno : (int)r;
	io->done = true;
}

/*
 * Buffered I/O that the page cache can serve at once: done here, inline.
 * Without RWF_NOWAIT support (EOPNOTSUPP) or when it would block (EAGAIN)
 * the part is left for the ring. Even the ring would hand buffered writes
 * on most file systems to a kernel worker thread, a wake-up per part.
 */
static void try_inline(struct child_io *io)
{
	struct iovec iov = {.iov_base = io->buf, .iov_len = io->len};
	ssize_t r;

	r = io->write ? pwritev2(io->fd, &iov, 1, io->off, RWF_NOWAIT)
		      : preadv2(io->fd, &iov, 1, io->off, RWF_NOWAIT);
	if (r < 0 && (errno == EAGAIN || errno == EOPNOTSUPP)) {
		/* EAGAIN passes; EOPNOTSUPP is the file system's nature
		 * (ext4 buffered writes, tmpfs reads). */
		io->refused = errno == EOPNOTSUPP;
		return;
	}
	io->ret = r < 0 ? -errno : (int)r;
	io->done = true;
}

void child_io_run(struct pool *pool, struct child_io *io, int n)
{
	struct io_uring *ring;
	bool undone = false;

	for (int i = 0; i < n; i++)
		if (io[i].fd >= 0 && io[i].cached)
			try_inline(&io[i]);
	ring = thread_ring();
	if (ring)
		ring_run(ring, io, n);
	for (int i = 0; i < n; i++)
		undone |= io[i].fd >= 0 && !io[i].done;
	if (undone)
		pool_run(pool, n, pool_io_one, io);
}
