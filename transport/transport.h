/*
 * How FUSE requests reach the daemon: through read() and writev() on
 * /dev/fuse (libfuse's own loop), or through io_uring (the kernel's
 * FUSE-over-io_uring, protocol 7.42), where each CPU has a queue of
 * request slots, a request is delivered to a slot of the queue of the
 * CPU that issued it, and the answer and the wait for the next request
 * are one io_uring submission.
 *
 * libfuse 3.14 knows only /dev/fuse. The transport sits beneath it:
 * it installs read/writev hooks on the session (fuse_session_custom_io),
 * asks for io_uring in the INIT answer, and feeds each request that
 * arrives on a ring to fuse_session_process_buf() on the slot's own
 * thread; the handlers' replies come back through the writev hook and
 * are committed to the slot. Requests the kernel still sends through
 * /dev/fuse (INIT, interrupts, forgets, notifications) keep using
 * libfuse's loop, which runs beside the rings.
 *
 * One transport per process (the mount's session; a secondary's inbound
 * session stays on /dev/fuse).
 */
#ifndef QFS_TRANSPORT_H
#define QFS_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>

struct fuse_session;

enum transport_uring {
	TRANSPORT_URING_AUTO, /* io_uring when the kernel offers it */
	TRANSPORT_URING_ON,   /* io_uring or refuse to mount */
	TRANSPORT_URING_OFF,  /* /dev/fuse */
};

/* Before anything is mounted: -EOPNOTSUPP with a sentence in err when
 * mode is uring=on and the kernel does not offer io_uring. */
int transport_check(enum transport_uring mode, char *err, size_t errlen);

/* Decide the transport for se, after fuse_session_mount(): with io_uring
 * wanted and possible, install the hooks and start the slot threads
 * (they register once the INIT answer has gone out). -errno with a
 * sentence in err when uring=on cannot be had. */
int transport_start(struct fuse_session *se, enum transport_uring mode,
		    char *err, size_t errlen);

/* Stop the slot threads (after the session's loop ended). */
void transport_stop(void);

/* "io_uring", "/dev/fuse", or "/dev/fuse (io_uring failed: ...)" for the
 * status document. */
const char *transport_describe(void);

/* Is the calling thread serving a request that came through a ring? */
bool transport_serving(void);

/* Queues and slots per queue in use; 0 and 0 on /dev/fuse. */
void transport_shape(unsigned *queues, unsigned *slots);

#endif
