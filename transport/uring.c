/*
 * FUSE over io_uring beneath libfuse 3.14 (see transport.h).
 *
 * A slot is one request buffer the kernel knows (a ring entry) with an
 * io_uring of its own; each CPU's queue has a few. Workers are threads
 * that serve slots: a worker waits on a free slot's ring, serves the
 * request that arrives there, and answers it. The answer and the fetch
 * of the slot's next request are one command, so the moment a handler
 * replies its slot is armed again; but the handler may go on (a read
 * answers on a majority, then checks its late children, for up to
 * io-timeout when one hangs). So a worker lets go of its slot when it
 * answers, another worker waits on it, and the first one picks up a
 * free slot once its handler returns. Twice as many workers as slots
 * keep every armed slot watched while as many handlers finish late.
 *
 * A handler must not read its request after it answered: the slot's
 * buffers may already hold the next request. libfuse's own code does
 * not; ours answers last or reads only its own memory afterwards.
 *
 * The payload buffer is page-aligned and the request's headers are
 * copied just in front of it, so libfuse sees one contiguous message
 * and a write's data stays page-aligned: an O_DIRECT child takes it
 * without the copy /dev/fuse's 80-byte offset forces.
 */
#define _GNU_SOURCE
#include "transport/transport.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

/* The kernel's ABI from protocol 7.42 (Debian 12's headers are 7.38). */
#define URING_FLAG (1ULL << 41) /* FUSE_OVER_IO_URING */
#define URING_HEADER_SZ 128
#define URING_OP_IN_SZ 128
#define URING_CMD_REGISTER 1
#define URING_CMD_COMMIT_AND_FETCH 2
#ifndef FUSE_INIT_EXT
#define FUSE_INIT_EXT (1U << 30)
#endif

struct uring_ent_in_out {
	uint64_t flags;
	uint64_t commit_id;
	uint32_t payload_sz;
	uint32_t padding;
	uint64_t reserved;
};

struct uring_req_header {
	char in_out[URING_HEADER_SZ];
	char op_in[URING_OP_IN_SZ];
	struct uring_ent_in_out ent;
};

struct uring_cmd_req {
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};

#define STAGING 4096 /* in front of the payload: the request's headers */
#define ENABLE_PARAM "/sys/module/fuse/parameters/enable_uring"

enum { TAG_SLOT = 1, TAG_STOP = 2 };

struct slot {
	unsigned qid;
	bool registered;
	struct io_uring ring;
	struct uring_req_header hdr;
	char *area; /* STAGING bytes, then the payload */
	struct iovec iov[2];
	uint64_t unique; /* of the request being served */
	struct slot *next_free;
};

/* One per process: the hooks libfuse calls get no pointer of ours. */
static struct {
	struct fuse_session *se;
	int fd, stop_fd;
	unsigned queues, per_queue, nr_slots, nr_workers;
	size_t payload;
	struct slot *slots;
	pthread_t *workers;
	pthread_mutex_t lock; /* the fields below */
	pthread_cond_t cond;
	struct slot *free; /* armed slots no worker waits on */
	bool go, stop, failed;
	_Atomic uint64_t init_unique;
	char describe[128];
} T = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
	.stop_fd = -1,
	.describe = "/dev/fuse",
};

/* The slot whose request the calling worker serves, until answered;
 * and whether its handler still runs. */
static _Thread_local struct slot *current;
static _Thread_local bool serving;

const char *transport_describe(void)
{
	return T.describe;
}

bool transport_serving(void)
{
	return serving;
}

void transport_shape(unsigned *queues, unsigned *slots)
{
	bool on = T.nr_slots && !T.failed;

	*queues = on ? T.queues : 0;
	*slots = on ? T.per_queue : 0;
}

static void fail(const char *what, int err)
{
	pthread_mutex_lock(&T.lock);
	if (!T.failed)
		snprintf(T.describe, sizeof(T.describe),
			 "/dev/fuse (io_uring failed: %s: %s)", what,
			 strerror(err));
	T.failed = true;
	pthread_mutex_unlock(&T.lock);
	fuse_log(FUSE_LOG_ERR, "quorumfs: FUSE over io_uring: %s: %s\n", what,
		 strerror(err));
}

/* Everything stops: the workers, and libfuse's loop through hook_read. */
static void stop_all(void)
{
	pthread_mutex_lock(&T.lock);
	T.stop = true;
	pthread_cond_broadcast(&T.cond);
	pthread_mutex_unlock(&T.lock);
	if (T.stop_fd >= 0)
		eventfd_write(T.stop_fd, 1);
}

/* ---- the slots ---- */

static struct io_uring_sqe *slot_cmd(struct slot *s, unsigned op,
				     uint64_t commit_id)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	struct uring_cmd_req *req;

	if (!sqe)
		return NULL;
	io_uring_prep_rw(IORING_OP_URING_CMD, sqe, T.fd, NULL, 0, 0);
	sqe->cmd_op = op;
	memset(sqe->cmd, 0, 80);
	req = (struct uring_cmd_req *)sqe->cmd;
	req->commit_id = commit_id;
	req->qid = (uint16_t)s->qid;
	io_uring_sqe_set_data64(sqe, TAG_SLOT);
	return sqe;
}

/* A worker is done with s: the next free worker waits on it. */
static void slot_release(struct slot *s)
{
	pthread_mutex_lock(&T.lock);
	s->next_free = T.free;
	T.free = s;
	pthread_cond_signal(&T.cond);
	pthread_mutex_unlock(&T.lock);
}

/* Answer the slot's request (header and payload already in place),
 * fetch its next one, and let go of the slot. */
static void slot_commit(struct slot *s, size_t payload)
{
	uint64_t id = s->hdr.ent.commit_id;

	s->hdr.ent.payload_sz = (uint32_t)payload;
	current = NULL;
	if (!slot_cmd(s, URING_CMD_COMMIT_AND_FETCH, id) ||
	    io_uring_submit(&s->ring) < 0) {
		/* Cannot happen on a ring of 4 entries that only this
		 * worker uses now; were it to, the request would stay
		 * unanswered until the mount ends, and the slot unused. */
		fail("commit", EIO);
		return;
	}
	slot_release(s);
}

static void slot_answer_error(struct slot *s, int err)
{
	struct fuse_out_header out = {
		.len = sizeof(out),
		.error = -err,
		.unique = s->hdr.ent.commit_id,
	};

	memcpy(s->hdr.in_out, &out, sizeof(out));
	slot_commit(s, 0);
}

/* One request from the ring: its in-header and fixed per-op part go in
 * front of the payload, so that libfuse parses one message. */
static void slot_serve(struct slot *s)
{
	struct fuse_in_header in;
	size_t payload = s->hdr.ent.payload_sz, oplen;
	char *msg;

	memcpy(&in, s->hdr.in_out, sizeof(in));
	if (payload > T.payload || in.len < sizeof(in) + payload ||
	    in.len - sizeof(in) - payload > URING_OP_IN_SZ) {
		slot_answer_error(s, EIO);
		return;
	}
	oplen = in.len - sizeof(in) - payload;
	msg = s->area + STAGING - oplen - sizeof(in);
	memcpy(msg, &in, sizeof(in));
	memcpy(msg + sizeof(in), s->hdr.op_in, oplen);
	s->unique = in.unique;
	current = s;
	serving = true;
	fuse_session_process_buf(
		T.se, &(struct fuse_buf){.mem = msg, .size = in.len});
	serving = false;
	if (current) /* every request is answered on its worker */
		slot_answer_error(s, EIO);
	if (fuse_session_exited(T.se)) /* blkverify, or a signal here */
		stop_all();
}

/* The payload's size is known from the INIT answer, so its memory is
 * mapped only at the slot's first use (mapped, not touched: it costs
 * memory once used). The stop poll ends a wait on the ring. */
static int slot_register(struct slot *s)
{
	struct io_uring_sqe *sqe;

	s->area = mmap(NULL, STAGING + T.payload, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->area == MAP_FAILED) {
		s->area = NULL;
		return -errno;
	}
	sqe = io_uring_get_sqe(&s->ring);
	io_uring_prep_poll_add(sqe, T.stop_fd, POLLIN);
	io_uring_sqe_set_data64(sqe, TAG_STOP);
	sqe = slot_cmd(s, URING_CMD_REGISTER, 0);
	s->iov[0] = (struct iovec){&s->hdr, sizeof(s->hdr)};
	s->iov[1] = (struct iovec){s->area + STAGING, T.payload};
	sqe->addr = (uintptr_t)s->iov;
	sqe->len = 2;
	s->registered = true;
	return io_uring_submit(&s->ring) < 0 ? -EIO : 0;
}

/* The INIT answer asked for io_uring, so the kernel holds every request
 * until each queue has a slot. A slot that cannot register must still
 * tell it: a registration the kernel refuses (two buffers are required)
 * turns io_uring off for the mount, and requests flow on /dev/fuse. */
static void slot_refuse(struct slot *s)
{
	struct io_uring_sqe *sqe = slot_cmd(s, URING_CMD_REGISTER, 0);
	struct io_uring_cqe *cqe;

	if (sqe && io_uring_submit(&s->ring) > 0 &&
	    io_uring_wait_cqe(&s->ring, &cqe) == 0)
		io_uring_cqe_seen(&s->ring, cqe);
}

/* Wait on s for a request and serve it; false when the worker should
 * stop (the ring ended, or everything stops). */
static bool slot_wait(struct slot *s)
{
	struct io_uring_cqe *cqe;
	int ret;

	if (!s->registered && (ret = slot_register(s))) {
		fail("register", -ret);
		slot_refuse(s);
		return false;
	}
	do
		ret = io_uring_wait_cqe(&s->ring, &cqe);
	while (ret == -EINTR);
	if (ret < 0 || io_uring_cqe_get_data64(cqe) == TAG_STOP)
		return false;
	ret = cqe->res;
	io_uring_cqe_seen(&s->ring, cqe);
	if (ret < 0) {
		if (ret != -ENOTCONN && ret != -ECANCELED)
			fail(s->hdr.ent.commit_id ? "fetch" : "register", -ret);
		return false;
	}
	slot_serve(s);
	return true;
}

/* A free slot to wait on, once the INIT answer went out; NULL to stop. */
static struct slot *slot_take(void)
{
	struct slot *s = NULL;

	pthread_mutex_lock(&T.lock);
	while (!T.stop && (!T.go || !T.free))
		pthread_cond_wait(&T.cond, &T.lock);
	if (!T.stop) {
		s = T.free;
		T.free = s->next_free;
	}
	pthread_mutex_unlock(&T.lock);
	return s;
}

static void *worker_main(void *arg)
{
	struct slot *s;

	(void)arg;
	while ((s = slot_take()))
		if (!slot_wait(s))
			break;
	stop_all();
	return NULL;
}

/* ---- libfuse's hooks ---- */

/* libfuse's loop reads the requests that still come through /dev/fuse;
 * once everything stops it is told the device went away, which ends
 * the loop as an unmount does. */
static ssize_t hook_read(int fd, void *buf, size_t len, void *userdata)
{
	struct pollfd p[2] = {{.fd = fd, .events = POLLIN},
			      {.fd = T.stop_fd, .events = POLLIN}};
	const struct fuse_in_header *in = buf;
	ssize_t n;

	(void)userdata;
	if (poll(p, 2, -1) < 0)
		return -1;
	if (p[1].revents) {
		errno = ENODEV;
		return -1;
	}
	n = read(fd, buf, len);
	if (n >= (ssize_t)sizeof(*in) && in->opcode == FUSE_INIT)
		atomic_store(&T.init_unique, in->unique);
	return n;
}

/* The INIT answer asks for io_uring; the rings' payload must hold the
 * largest request the kernel will send, which that answer decides. */
static void ask_for_uring(struct iovec *iov, int count)
{
	struct fuse_init_out *o;
	size_t pages = 32; /* the kernel's default without FUSE_MAX_PAGES */

	if (count < 2 ||
	    iov[1].iov_len <
		    offsetof(struct fuse_init_out, flags2) + sizeof(uint32_t))
		return;
	o = iov[1].iov_base;
	o->flags |= FUSE_INIT_EXT;
	o->flags2 |= (uint32_t)(URING_FLAG >> 32);
	if (o->flags & FUSE_MAX_PAGES)
		pages = o->max_pages;
	T.payload = pages * 4096;
	if (T.payload < o->max_write)
		T.payload = o->max_write;
	if (T.payload < 8192)
		T.payload = 8192;
	T.payload = (T.payload + 4095) & ~(size_t)4095;
}

/* A reply for the slot's request: the out-header into the slot's header,
 * the rest into its payload. */
static ssize_t slot_reply(struct slot *s, const struct iovec *iov, int count)
{
	size_t head = 0, n = 0, total = 0;
	char *payload = s->area + STAGING;

	for (int i = 0; i < count; i++) {
		const char *p = iov[i].iov_base;
		size_t len = iov[i].iov_len;

		total += len;
		if (head < sizeof(struct fuse_out_header)) {
			size_t take = sizeof(struct fuse_out_header) - head;

			take = take < len ? take : len;
			memcpy(s->hdr.in_out + head, p, take);
			head += take, p += take, len -= take;
		}
		if (n + len > T.payload) {
			slot_answer_error(s, E2BIG);
			return (ssize_t)total;
		}
		memcpy(payload + n, p, len);
		n += len;
	}
	slot_commit(s, n);
	return (ssize_t)total;
}

static ssize_t hook_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	const struct fuse_out_header *out = iov[0].iov_base;
	uint64_t init = atomic_load(&T.init_unique);
	ssize_t n;

	(void)userdata;
	if (current && out->unique == current->unique)
		return slot_reply(current, iov, count);
	if (!init || out->unique != init || out->error)
		return writev(fd, iov, count);
	ask_for_uring(iov, count);
	n = writev(fd, iov, count);
	pthread_mutex_lock(&T.lock);
	T.go = n > 0; /* the kernel took it: the rings may register now */
	pthread_cond_broadcast(&T.cond);
	pthread_mutex_unlock(&T.lock);
	atomic_store(&T.init_unique, 0);
	return n;
}

/* ---- starting and stopping ---- */

static bool kernel_offers_uring(void)
{
	char c = 'N';
	int fd = open(ENABLE_PARAM, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return false;
	if (read(fd, &c, 1) != 1)
		c = 'N';
	close(fd);
	return c == 'Y';
}

/* CPUs the kernel may run on: it makes one queue per possible CPU and
 * serves a request from the queue of the CPU that issued it. */
static unsigned possible_cpus(void)
{
	unsigned first = 0, last = 0;
	FILE *f = fopen("/sys/devices/system/cpu/possible", "re");

	if (f) {
		if (fscanf(f, "%u-%u", &first, &last) < 2)
			last = first;
		fclose(f);
	}
	return last + 1;
}

/* Few CPUs get 8 slots per queue, many get fewer (the kernel makes a
 * queue for each): some 32 slots in all, 2 per queue at least. */
static unsigned slots_per_queue(unsigned queues)
{
	unsigned n = 32 / queues;

	return n < 2 ? 2 : n > 8 ? 8 : n;
}

/* Every slot's ring, made here so that a failure is known before the
 * INIT answer asks for io_uring. */
static int make_rings(unsigned queues)
{
	T.queues = queues;
	T.per_queue = slots_per_queue(queues);
	T.slots = calloc(queues * T.per_queue, sizeof(*T.slots));
	if (!T.slots)
		return -ENOMEM;
	for (unsigned i = 0; i < queues * T.per_queue; i++) {
		struct slot *s = &T.slots[i];
		int ret = io_uring_queue_init(4, &s->ring, IORING_SETUP_SQE128);

		if (ret)
			return ret;
		s->qid = i / T.per_queue;
		s->next_free = T.free;
		T.free = s;
		T.nr_slots++;
	}
	return 0;
}

/* Workers take no signals: libfuse's loop handles them (a signal that
 * ends the mount must interrupt its read of /dev/fuse). */
static int start_workers(void)
{
	sigset_t all, old;
	int ret = 0;

	T.workers = calloc(2 * T.nr_slots, sizeof(*T.workers));
	if (!T.workers)
		return -ENOMEM;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	while (T.nr_workers < 2 * T.nr_slots && ret == 0) {
		ret = -pthread_create(&T.workers[T.nr_workers], NULL,
				      worker_main, NULL);
		T.nr_workers += ret == 0;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return ret;
}

static const struct fuse_custom_io hooks = {
	.read = hook_read,
	.writev = hook_writev,
};

int transport_check(enum transport_uring mode, char *err, size_t errlen)
{
	if (mode != TRANSPORT_URING_ON || kernel_offers_uring())
		return 0;
	snprintf(err, errlen,
		 "uring=on: this kernel does not offer FUSE over io_uring (it "
		 "needs Linux 6.14 or later, and root must write Y to %s)",
		 ENABLE_PARAM);
	return -EOPNOTSUPP;
}

int transport_start(struct fuse_session *se, enum transport_uring mode,
		    char *err, size_t errlen)
{
	int ret;

	if (mode == TRANSPORT_URING_OFF || !kernel_offers_uring())
		return transport_check(mode, err, errlen);
	T.se = se;
	T.fd = fuse_session_fd(se);
	T.stop_fd = eventfd(0, EFD_CLOEXEC);
	ret = T.stop_fd < 0 ? -errno : make_rings(possible_cpus());
	if (ret == 0)
		ret = start_workers();
	if (ret == 0)
		ret = fuse_session_custom_io(se, &hooks, T.fd);
	if (ret == 0) {
		snprintf(T.describe, sizeof(T.describe), "io_uring");
		return 0;
	}
	transport_stop();
	snprintf(T.describe, sizeof(T.describe),
		 "/dev/fuse (io_uring cannot be set up: %s)", strerror(-ret));
	if (mode == TRANSPORT_URING_AUTO)
		return 0;
	snprintf(err, errlen, "uring=on: io_uring cannot be set up: %s",
		 strerror(-ret));
	return ret;
}

void transport_stop(void)
{
	stop_all();
	for (unsigned i = 0; i < T.nr_workers; i++)
		pthread_join(T.workers[i], NULL);
	for (unsigned i = 0; i < T.nr_slots; i++) {
		io_uring_queue_exit(&T.slots[i].ring);
		if (T.slots[i].area)
			munmap(T.slots[i].area, STAGING + T.payload);
	}
	free(T.workers);
	free(T.slots);
	T.workers = NULL;
	T.slots = NULL;
	T.nr_workers = T.nr_slots = 0;
	T.free = NULL;
	if (T.stop_fd >= 0)
		close(T.stop_fd);
	T.stop_fd = -1;
}
