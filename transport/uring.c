/*
 * FUSE over io_uring beneath libfuse 3.14 (see transport.h).
 *
 * Each CPU's queue gets TRANSPORT_SLOTS slots, each slot one thread
 * with an io_uring of its own, pinned to the queue's CPU: handlers block
 * (a read waits for its children), so a slot serves one request at a
 * time and a queue as many as it has slots, like libfuse's worker
 * threads do on /dev/fuse.
 *
 * A slot's ring is created with DEFER_TASKRUN: the kernel copies the
 * next request into the slot's buffers only when its thread waits on
 * the ring. So the answer can be committed, and the next request
 * fetched, from inside the handler's reply (a read answers before it
 * collects its late children), with no risk that the next request
 * overwrites buffers the handler still reads.
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
#include <sched.h>
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

#define TRANSPORT_SLOTS 8
#define STAGING 4096 /* in front of the payload: the request's headers */
#define ENABLE_PARAM "/sys/module/fuse/parameters/enable_uring"

enum { TAG_SLOT = 1, TAG_STOP = 2 };

struct slot {
	pthread_t thread;
	unsigned qid;
	struct io_uring ring;
	struct uring_req_header hdr;
	char *area; /* STAGING bytes, then the payload */
	struct iovec iov[2];
	bool committed;
	uint64_t unique;
};

/* One per process: the hooks libfuse calls get no pointer of ours. */
static struct {
	struct fuse_session *se;
	int fd, stop_fd;
	unsigned nr_slots, created;
	size_t payload;
	struct slot *slots;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool go, stop, failed;
	_Atomic uint64_t init_unique;
	char describe[128];
} T = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
	.stop_fd = -1,
	.describe = "/dev/fuse",
};

static _Thread_local struct slot *current;

const char *transport_describe(void)
{
	return T.describe;
}

bool transport_serving(void)
{
	return current != NULL;
}

void transport_shape(unsigned *queues, unsigned *slots)
{
	bool on = T.nr_slots && !T.failed;

	*queues = on ? T.nr_slots / TRANSPORT_SLOTS : 0;
	*slots = on ? TRANSPORT_SLOTS : 0;
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

static int slot_register(struct slot *s)
{
	struct io_uring_sqe *sqe = slot_cmd(s, URING_CMD_REGISTER, 0);

	if (!sqe)
		return -EBUSY;
	s->iov[0] = (struct iovec){&s->hdr, sizeof(s->hdr)};
	s->iov[1] = (struct iovec){s->area + STAGING, T.payload};
	sqe->addr = (uintptr_t)s->iov;
	sqe->len = 2;
	return io_uring_submit(&s->ring) < 0 ? -EIO : 0;
}

/* Answer the slot's request with out (and payload bytes already in
 * place) and fetch the next one. */
static void slot_commit(struct slot *s, size_t payload)
{
	uint64_t id = s->hdr.ent.commit_id;

	s->hdr.ent.payload_sz = (uint32_t)payload;
	s->committed = true;
	if (!slot_cmd(s, URING_CMD_COMMIT_AND_FETCH, id) ||
	    io_uring_submit(&s->ring) < 0)
		fail("commit", EIO);
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
	s->committed = false;
	s->unique = in.unique;
	current = s;
	fuse_session_process_buf(
		T.se, &(struct fuse_buf){.mem = msg, .size = in.len});
	current = NULL;
	if (!s->committed) /* every request is answered on its thread */
		slot_answer_error(s, EIO);
}

static void pin(unsigned cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* The slot's ring is made (or not) before the mount answers INIT:
 * transport_start waits for every slot's word. Then the slot waits for
 * the INIT answer to have gone out. */
static int slot_ring(struct slot *s)
{
	struct io_uring_params p = {
		.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER |
			 IORING_SETUP_DEFER_TASKRUN,
	};
	struct io_uring_sqe *sqe;
	int ret = io_uring_queue_init_params(4, &s->ring, &p);

	if (ret)
		return ret;
	sqe = io_uring_get_sqe(&s->ring);
	io_uring_prep_poll_add(sqe, T.stop_fd, POLLIN);
	io_uring_sqe_set_data64(sqe, TAG_STOP);
	return 0;
}

static bool slot_wait_go(int made)
{
	bool go;

	pthread_mutex_lock(&T.lock);
	if (made)
		T.failed = true;
	T.created++;
	pthread_cond_broadcast(&T.cond);
	while (!T.go && !T.stop)
		pthread_cond_wait(&T.cond, &T.lock);
	go = T.go && !T.stop && !T.failed;
	pthread_mutex_unlock(&T.lock);
	return go;
}

/* The payload's size is known from the INIT answer, so its memory is
 * mapped only now (mapped, not touched: it costs memory once used). */
static int slot_buffers(struct slot *s)
{
	s->area = mmap(NULL, STAGING + T.payload, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->area == MAP_FAILED) {
		s->area = NULL;
		return -errno;
	}
	return slot_register(s);
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

static void slot_loop(struct slot *s)
{
	struct io_uring_cqe *cqe;
	int ret;

	for (;;) {
		ret = io_uring_wait_cqe(&s->ring, &cqe);
		if (ret == -EINTR)
			continue;
		if (ret < 0 || io_uring_cqe_get_data64(cqe) == TAG_STOP)
			return;
		ret = cqe->res;
		io_uring_cqe_seen(&s->ring, cqe);
		if (ret < 0) {
			if (ret != -ENOTCONN && ret != -ECANCELED)
				fail("fetch", -ret);
			return;
		}
		slot_serve(s);
	}
}

static void *slot_main(void *arg)
{
	struct slot *s = arg;
	int made, ret;

	pin(s->qid);
	made = slot_ring(s);
	if (!slot_wait_go(made))
		goto out;
	ret = slot_buffers(s);
	if (ret) {
		fail("register", -ret);
		slot_refuse(s);
	} else {
		slot_loop(s);
	}
out:
	if (made == 0)
		io_uring_queue_exit(&s->ring);
	if (s->area)
		munmap(s->area, STAGING + T.payload);
	return NULL;
}

/* ---- libfuse's hooks ---- */

static ssize_t hook_read(int fd, void *buf, size_t len, void *userdata)
{
	ssize_t n = read(fd, buf, len);
	const struct fuse_in_header *in = buf;

	(void)userdata;
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
	if (current && !current->committed && out->unique == current->unique)
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

static int start_slots(unsigned queues)
{
	T.nr_slots = queues * TRANSPORT_SLOTS;
	T.slots = calloc(T.nr_slots, sizeof(*T.slots));
	if (!T.slots)
		return -ENOMEM;
	for (unsigned i = 0; i < T.nr_slots; i++) {
		T.slots[i].qid = i / TRANSPORT_SLOTS;
		if (pthread_create(&T.slots[i].thread, NULL, slot_main,
				   &T.slots[i])) {
			T.nr_slots = i;
			return -EAGAIN;
		}
	}
	pthread_mutex_lock(&T.lock);
	while (T.created < T.nr_slots)
		pthread_cond_wait(&T.cond, &T.lock);
	pthread_mutex_unlock(&T.lock);
	return T.failed ? -EOPNOTSUPP : 0;
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
	ret = T.stop_fd < 0 ? -errno : start_slots(possible_cpus());
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
	pthread_mutex_lock(&T.lock);
	T.stop = true;
	pthread_cond_broadcast(&T.cond);
	pthread_mutex_unlock(&T.lock);
	if (T.stop_fd >= 0)
		eventfd_write(T.stop_fd, 1);
	for (unsigned i = 0; i < T.nr_slots; i++)
		pthread_join(T.slots[i].thread, NULL);
	free(T.slots);
	T.slots = NULL;
	T.nr_slots = 0;
	if (T.stop_fd >= 0)
		close(T.stop_fd);
	T.stop_fd = -1;
}
