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
#include "children/children_i.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RING_ENTRIES CHILDREN_MAX
/* Parts in flight on one ring, orphans included. */
#define RING_SLOTS 256

/*
 * A ring and what its submissions are for. An entry's user data is a slot
 * number: the slot points at the caller's part while the caller waits,
 * and is cut loose (io NULL) when the part is orphaned, so a completion
 * that comes after the caller gave up touches nothing of the caller's.
 */
struct ring {
	struct io_uring uring;
	struct slot {
		struct child_io *io; /* NULL: orphaned */
		struct child *child; /* an orphan's child (a reference) */
		void *buf;	     /* an orphan's buffer, freed at the end */
		bool busy;
	} slot[RING_SLOTS];
	int orphans;
};

static pthread_key_t ring_key;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
static bool ring_broken; /* io_uring refused once: never try again */

static void slot_end(struct ring *r, int k, int res);

/*
 * A ring its thread left while orphans were still in flight: a detached
 * thread waits for them, so their child's count of running parts still
 * drops (a resync waits for it), while neither the leaving thread nor the
 * daemon's exit waits for a child that may never answer.
 */
static void *reap_orphans(void *arg)
{
	struct ring *r = arg;
	struct io_uring_cqe *cqe;

	while (r->orphans > 0 && io_uring_wait_cqe(&r->uring, &cqe) == 0) {
		slot_end(r, (int)io_uring_cqe_get_data64(cqe), cqe->res);
		io_uring_cqe_seen(&r->uring, cqe);
	}
	io_uring_queue_exit(&r->uring);
	free(r);
	return NULL;
}

static void *reaper_thread(void *arg)
{
	pthread_setname_np(pthread_self(), "qfs-reaper");
	return reap_orphans(arg);
}

/* Reap what has ended; a ring with orphans left goes to a reaper. */
static void ring_free(void *arg)
{
	struct ring *r = arg;
	struct io_uring_cqe *cqe;
	pthread_attr_t attr;
	pthread_t t;

	while (r->orphans > 0 && io_uring_peek_cqe(&r->uring, &cqe) == 0) {
		slot_end(r, (int)io_uring_cqe_get_data64(cqe), cqe->res);
		io_uring_cqe_seen(&r->uring, cqe);
	}
	if (r->orphans > 0) {
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&t, &attr, reaper_thread, r) == 0)
			r = NULL; /* else: wait here, as the last resort */
		pthread_attr_destroy(&attr);
		if (!r)
			return;
	}
	reap_orphans(r);
}

static void ring_key_create(void)
{
	if (pthread_key_create(&ring_key, ring_free))
		ring_broken = true;
}

/* This thread's ring, or NULL when io_uring cannot be used. */
static struct ring *thread_ring(void)
{
	struct ring *ring;

	pthread_once(&ring_once, ring_key_create);
	if (ring_broken)
		return NULL;
	ring = pthread_getspecific(ring_key);
	if (ring)
		return ring;
	ring = calloc(1, sizeof(*ring));
	if (!ring || io_uring_queue_init(RING_ENTRIES, &ring->uring, 0)) {
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

static int slot_take(struct ring *r, struct child_io *io)
{
	for (int k = 0; k < RING_SLOTS; k++) {
		if (!r->slot[k].busy) {
			r->slot[k] = (struct slot){.io = io, .busy = true};
			return k;
		}
	}
	return -1;
}

/* A completion: the waiting caller's part, or an orphan's end. */
static void slot_end(struct ring *r, int k, int res)
{
	struct slot *sl = &r->slot[k];

	if (sl->io) {
		sl->io->ret = res;
		sl->io->done = true;
		sl->io->in_ring = false;
	} else {
		free(sl->buf);
		if (sl->child) {
			child_orphan(sl->child, -1);
			child_put(sl->child);
		}
		r->orphans--;
	}
	sl->busy = false;
}

/* The caller gives up on a part: it ends as -ETIMEDOUT for the caller,
 * and the ring keeps what the kernel may still touch. */
static void slot_orphan(struct ring *r, int k)
{
	struct slot *sl = &r->slot[k];
	struct child_io *io = sl->io;

	io->ret = -ETIMEDOUT;
	io->done = true;
	io->orphaned = true;
	io->in_ring = false;
	sl->buf = io->own_buf ? io->buf : NULL;
	sl->child = io->child;
	if (sl->child) {
		child_get(sl->child);
		child_orphan(sl->child, 1);
	}
	sl->io = NULL;
	r->orphans++;
}

static void prep(struct io_uring_sqe *sqe, struct child_io *io, int k)
{
	if (io->sync)
		io_uring_prep_fsync(sqe, io->fd,
				    io->sync == CHILD_IO_FDATASYNC
					    ? IORING_FSYNC_DATASYNC
					    : 0);
	else if (io->write)
		io_uring_prep_write(sqe, io->fd, io->buf, io->len, io->off);
	else
		io_uring_prep_read(sqe, io->fd, io->buf, io->len, io->off);
	if (io->child && io->child->remote)
		sqe->flags |= IOSQE_ASYNC;
	io_uring_sqe_set_data64(sqe, (uint64_t)k);
}

/* A ring that failed may hold unsubmitted entries: never reuse it. Its
 * orphans keep it alive until they end (ring_free). */
static void ring_drop(struct ring *ring)
{
	pthread_setspecific(ring_key, NULL);
	ring_free(ring);
}

static struct __kernel_timespec until(const struct timespec *deadline)
{
	struct timespec now;
	long long ns;

	clock_gettime(CLOCK_MONOTONIC, &now);
	ns = (deadline->tv_sec - now.tv_sec) * 1000000000LL +
	     (deadline->tv_nsec - now.tv_nsec);
	if (ns < 0)
		ns = 0;
	return (struct __kernel_timespec){.tv_sec = ns / 1000000000LL,
					  .tv_nsec = ns % 1000000000LL};
}

/* Wait for one completion, until the deadline if there is one. */
static int wait_one(struct ring *r, struct io_uring_cqe **cqe,
		    const struct timespec *deadline)
{
	struct __kernel_timespec ts;

	if (!deadline)
		return io_uring_wait_cqe(&r->uring, cqe);
	ts = until(deadline);
	return io_uring_wait_cqe_timeout(&r->uring, cqe, &ts);
}

static int submit_parts(struct ring *r, struct child_io *io, int n)
{
	int queued = 0, k;

	for (int i = 0; i < n; i++) {
		if (io[i].fd < 0 || io[i].done)
			continue;
		k = slot_take(r, &io[i]);
		if (k < 0)
			continue; /* the pool does it */
		prep(io_uring_get_sqe(&r->uring), &io[i], k);
		io[i].in_ring = true;
		queued++;
	}
	return queued;
}

static int count_in_ring(const struct child_io *io, int n)
{
	int queued = 0;

	for (int i = 0; i < n; i++)
		queued += io[i].in_ring && !io[i].done;
	return queued;
}

/* Take every completion already there, without waiting. */
static void reap_ready(struct ring *r)
{
	struct io_uring_cqe *cqe;

	while (io_uring_peek_cqe(&r->uring, &cqe) == 0) {
		slot_end(r, (int)io_uring_cqe_get_data64(cqe), cqe->res);
		io_uring_cqe_seen(&r->uring, cqe);
	}
}

/*
 * Collect completions until every part of io is done, or enough() says
 * the answers so far suffice, or the deadline passes: then the parts left
 * are orphaned. Completions that are already there are all taken before
 * enough() is asked, so parts the page cache served never look late.
 */
static void ring_wait(struct ring *r, struct child_io *io, int n,
		      const struct child_io_wait *w)
{
	struct io_uring_cqe *cqe;
	bool failed = false;
	int ret;

	reap_ready(r);
	while (count_in_ring(io, n) > 0) {
		if (w->enough && w->enough(w->arg, io, n))
			return;
		ret = wait_one(r, &cqe, w->timed ? &w->deadline : NULL);
		if (ret == -EINTR)
			continue;
		if (ret == -ETIME)
			break;
		if (ret) {
			failed = true;
			break;
		}
		reap_ready(r);
	}
	for (int k = 0; k < RING_SLOTS && count_in_ring(io, n) > 0; k++) {
		struct child_io *p = r->slot[k].io;

		for (int i = 0; p && r->slot[k].busy && i < n; i++)
			if (p == &io[i])
				slot_orphan(r, k);
	}
	/* A ring with orphans goes to a reaper thread at once, so that they
	 * are counted off when they end even if this thread never does I/O
	 * again (a resync waits for them); the thread takes a new ring.
	 * Nothing else is in flight on it: a thread runs one request at a
	 * time. */
	if (failed || r->orphans > 0)
		ring_drop(r);
}

/* Submit every part and collect what completes; parts left undone on
 * failure are for the caller to finish another way. */
static void ring_run(struct ring *r, struct child_io *io, int n,
		     const struct child_io_wait *w)
{
	int queued = submit_parts(r, io, n), ret;

	ret = io_uring_submit(&r->uring);
	if (ret < queued) {
		for (int k = 0; k < RING_SLOTS; k++)
			for (int i = 0; i < n; i++)
				if (r->slot[k].busy && r->slot[k].io == &io[i])
					r->slot[k].busy = false;
		for (int i = 0; i < n; i++)
			io[i].in_ring = false;
		ring_drop(r);
		return;
	}
	ring_wait(r, io, n, w);
}

static void pool_io_one(void *arg, int i)
{
	struct child_io *io = (struct child_io *)arg + i;
	ssize_t r;

	if (io->fd < 0 || io->done || io->in_ring)
		return;
	if (io->sync)
		r = io->sync == CHILD_IO_FDATASYNC ? fdatasync(io->fd)
						   : fsync(io->fd);
	else
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

ssize_t child_rw_full(int fd, bool write, bool direct, void *buf, size_t len,
		      off_t off)
{
	size_t done = 0;

	while (done < len) {
		char *at = (char *)buf + done;
		ssize_t r = write ? pwrite(fd, at, len - done, off + done)
				  : pread(fd, at, len - done, off + done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		done += r;
		if (r == 0 || (direct && done < len))
			break;
	}
	return done;
}

bool child_io_start(struct pool *pool, struct child_io *io, int n,
		    int timeout_ms, struct child_io_wait *w)
{
	struct ring *ring;
	bool undone = false;

	for (int i = 0; i < n; i++) {
		io[i].in_ring = false;
		if (io[i].fd >= 0 && io[i].cached &&
		    !(io[i].child && io[i].child->remote))
			try_inline(&io[i]);
	}
	w->timed = timeout_ms > 0;
	if (w->timed)
		children_deadline(CLOCK_MONOTONIC, timeout_ms, &w->deadline);
	ring = thread_ring();
	if (ring)
		ring_run(ring, io, n, w);
	for (int i = 0; i < n; i++)
		undone |= io[i].fd >= 0 && !io[i].done && !io[i].in_ring;
	if (undone)
		pool_run(pool, n, pool_io_one, io);
	return count_in_ring(io, n) > 0;
}

void child_io_finish(struct child_io *io, int n, struct child_io_wait *w)
{
	struct ring *ring;

	if (count_in_ring(io, n) == 0)
		return;
	ring = pthread_getspecific(ring_key);
	w->enough = NULL;
	ring_wait(ring, io, n, w);
}

void child_io_run(struct pool *pool, struct child_io *io, int n, int timeout_ms)
{
	struct child_io_wait w = {0};

	child_io_start(pool, io, n, timeout_ms, &w);
}
