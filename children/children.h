/*
 * children: the set of child directories and the pool that fans I/O out
 * to them.
 *
 * A child is one replica directory: its name (default: its absolute path),
 * an open handle of its root, a fixed slot number and a state. The set
 * publishes its configuration as immutable, reference-counted *views*: an
 * operation takes the current view once and uses it from start to end, so
 * a membership or threshold change never alters an operation half way. A
 * change builds a new view and swaps it in; children and views are freed
 * by their last user.
 *
 * The pool runs the per-child parts of one operation in parallel. The
 * calling thread runs one part itself, so an operation on N children costs
 * N - 1 hand-offs, and a pool task never waits for another pool task, so
 * the pool cannot deadlock on itself.
 */
#ifndef QFS_CHILDREN_H
#define QFS_CHILDREN_H

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* Most children one set holds, matching VOTE_MAX_BALLOTS. */
#define CHILDREN_MAX 32
/* Alignment of every buffer handed to a child (O_DIRECT on ext4/xfs). */
#define CHILD_IO_ALIGN 4096
/* The largest request: the kernel sends at most 1 MiB (max_write and
 * max_pages), and resync and scrub work in 1 MiB chunks. */
#define CHILD_IO_MAX (1024 * 1024)
/* Device-error reads in a row that fail a child. */
#define CHILD_READ_ERROR_LIMIT 3

enum child_state {
	CHILD_OK,      /* votes and receives everything */
	CHILD_SYNCING, /* receives writes, does not vote, is being filled */
	CHILD_FAILED,  /* I/O errors or timeouts past the limit */
	CHILD_STALE,   /* missed writes; must resync before voting */
};

/*
 * What a child is for. A data child holds a copy and votes once in step.
 * A replication child is the primary's end of a replication stream (QEMU's
 * replication driver in mode primary): it receives every change, inside
 * the writer's range claim, but never votes and is never read, and in
 * stage RUNNING its errors are latched instead of failing anything.
 */
enum child_kind {
	CHILD_DATA,
	CHILD_REPLICATION,
	CHILD_WITNESS,
};

/*
 * A witness child holds the tree's names and metadata and, for each
 * regular file, one SHA-256 digest per CHILD_WITNESS_BLOCK block instead
 * of the data (tree/witness.c has the layout). It takes every change and
 * votes like a data child once in step, but is never read for data and
 * never a source: a read's ballot from it is the digest list of the
 * range, asked for only when the data children disagree.
 */
#define CHILD_WITNESS_BLOCK 4096

/* A replication child's stage: QEMU's ReplicationStage, with its names. */
enum repl_stage {
	REPL_NONE,    /* filling and kept in step; errors fail the child */
	REPL_RUNNING, /* streaming; errors are latched */
	REPL_FAILOVER,
	REPL_FAILOVER_FAILED,
	REPL_DONE, /* the stream ended: nothing is sent any more */
};

enum read_pattern {
	READ_PATTERN_QUORUM,
	READ_PATTERN_FIFO,
};

enum child_op {
	CHILD_OP_READ,
	CHILD_OP_WRITE,
	CHILD_OP_FLUSH,
};

struct child;
struct child_set;
struct event_log;
struct json_object;

/*
 * A snapshot of the set: the children that receive I/O (states ok and
 * syncing), in configured order (the command line's, then `add`'s), and
 * the voting rules in force. Read-only for callers; valid until
 * children_view_put().
 */
struct child_view {
	int n; /* children receiving I/O */
	struct child *child[CHILDREN_MAX];
	bool votes[CHILDREN_MAX]; /* child[i] is ok: it votes */
	int voters;		  /* how many votes[] are true */
	/* child[i] is a witness: it votes (when votes[i]) but holds digests,
	 * so nothing reads data, sizes or free space from it. */
	bool witness[CHILDREN_MAX];
	int witnesses; /* how many witness[] are true */
	int threshold;
	enum read_pattern read_pattern;
	bool rewrite_corrupted;
	bool blkverify;
};

/* What a new set starts with; a plain value the caller fills. */
struct children_config {
	int n;
	const char *path[CHILDREN_MAX]; /* absolute, already validated */
	const char *name[CHILDREN_MAX]; /* NULL: the path is the name */
	enum child_kind kind[CHILDREN_MAX];
	int threshold;
	enum read_pattern read_pattern;
	bool rewrite_corrupted;
	bool blkverify;
};

/*
 * Open every child's root directory, take its lock (a child serves one
 * mount: another's is -EBUSY) and build the first view. Returns 0 and
 * *out (owned by the caller, freed with children_free()), or -errno
 * with the reason in err and nothing allocated.
 */
int children_new(const struct children_config *cfg, struct child_set **out,
		 char *err, size_t errlen);

/* Free the set. No view may still be held. NULL is accepted. */
void children_free(struct child_set *set);

/* Where membership and state events go (NULL: nowhere). */
void children_set_log(struct child_set *set, struct event_log *log);

/*
 * The current view, with a reference the caller must drop with
 * children_view_put(). Never fails. Takes the set's lock briefly.
 */
const struct child_view *children_view_get(struct child_set *set);
void children_view_put(const struct child_view *view);
/* A view of the member called name (or whose path is name) alone,
 * whatever its state, voting nothing, never current: for calls to that
 * child only. NULL when there is no such member (or no memory). */
const struct child_view *children_view_one(struct child_set *set,
					   const char *name);
/* A view like base with other rules, for the requests under a
 * directory's policy; it holds base. Never fails (out of memory: base
 * itself, held once more). */
const struct child_view *children_view_rules(const struct child_view *base,
					     int threshold,
					     enum read_pattern read_pattern,
					     bool rewrite_corrupted);
/* Another reference to a view already held; returns view. */
const struct child_view *children_view_hold(const struct child_view *view);

/*
 * Membership and rules. Each change publishes a new view, logs its event
 * and returns 0, or returns -errno with the set unchanged and a
 * one-sentence reason in err. Operations that already hold a view keep
 * using it; the next view they take sees the change.
 */

/* Add a child of kind in state syncing (it receives writes, does not
 * vote). *out gets a reference (child_put()). -ENOSPC when all slots are
 * used, -EEXIST for a name in use, -EINVAL in blkverify mode. */
int children_add(struct child_set *set, const char *path, const char *name,
		 enum child_kind kind, struct child **out, char *err,
		 size_t errlen);
/*
 * Drop c from the set. Refused (-EINVAL) if fewer voting children than the
 * threshold would remain. Waits up to drain_ms for operations that hold a
 * view naming c (a hung child must not hang the caller forever): returns 0
 * once drained, 1 if removed but some operation may still use the child.
 * The child's slot stays reserved until children_release_slot().
 */
int children_remove(struct child_set *set, struct child *c, int drain_ms,
		    char *err, size_t errlen);
void children_release_slot(struct child_set *set, int slot);
/* Wait until no view names c, or ms have passed; true if none does. Only
 * a child out of the views (failed, stale, removed) can drain. */
bool children_drain(struct child_set *set, struct child *c, int ms);
/* The rules in force. */
void children_get_rules(struct child_set *set, int *threshold,
			enum read_pattern *read_pattern,
			bool *rewrite_corrupted);
int children_threshold(struct child_set *set);
int children_set_threshold(struct child_set *set, int threshold, char *err,
			   size_t errlen);
int children_set_read_pattern(struct child_set *set, enum read_pattern p,
			      char *err, size_t errlen);
int children_set_rewrite(struct child_set *set, bool on, char *err,
			 size_t errlen);
/* Move c to a new state, with a reason for status and the event. */
enum child_state children_set_state(struct child_set *set, struct child *c,
				    enum child_state state, const char *reason);

/* Log c's current state as a change from ok, with its reason: for
 * states set at mount, before the event log existed. */
void children_log_state(struct child_set *set, struct child *c);

/* The highest threshold a directory's policy asks for, and that
 * directory (0, NULL: none): a removal or resync of a voting child that
 * would leave fewer voting children is refused naming it. The caller
 * checked the threshold against the voting children. */
void children_set_floor(struct child_set *set, int threshold, const char *dir);

/* Stop c voting and mark it syncing, unless that would leave fewer
 * voting children than the threshold (-EINVAL). */
int children_begin_resync(struct child_set *set, struct child *c, char *err,
			  size_t errlen);

/* The member called name, or whose path is name; a reference or NULL. */
struct child *children_find(struct child_set *set, const char *name);
/* Every member, whatever its state, each with a reference the caller
 * drops (child_put); returns how many. */
int children_members(struct child_set *set, struct child **out);
/* O_PATH root handles of every member, for duplicate checks. */
int children_roots(struct child_set *set, int *fds);

/* Status of every member and the rules, as a JSON object (caller owns). */
struct json_object *children_status(struct child_set *set);

/* A child's fixed properties; valid while a reference or a view holding
 * it is held. */
void child_get(struct child *c);
void child_put(struct child *c);
const char *child_name(const struct child *c);
const char *child_path(const struct child *c);
int child_root_fd(const struct child *c); /* O_PATH directory handle */
int child_slot(const struct child *c);	  /* 0..CHILDREN_MAX-1 */
enum child_state child_state(const struct child *c);
const char *child_state_name(enum child_state s);

enum child_kind child_kind(const struct child *c);
/* "data", "replication" or "witness": status's and the record's word. */
const char *child_kind_name(enum child_kind k);
/* Whether c votes now: a data child or a witness in state ok. */
bool child_votes(const struct child *c);

/* Whether view index i is read for data: a voting child, not a witness. */
static inline bool view_reads(const struct child_view *v, int i)
{
	return v->votes[i] && !v->witness[i];
}

/* Count an I/O error of the given kind against the child. Lock-free. */
void child_count_error(struct child *c, enum child_op op);
uint64_t child_errors(const struct child *c, enum child_op op);
/* Failures in a row: count one (failed) and return the run's length, or
 * end the run (a success) and return 0. Lock-free. */
int child_error_streak(struct child *c, bool failed);

/* Resync progress shown in status. Lock-free. */
void child_set_progress(struct child *c, uint64_t bytes_done,
			uint64_t bytes_total, uint64_t files_done,
			uint64_t files_total);

/* ---- replication children (replica.c) ---- */

const char *repl_stage_name(enum repl_stage s);
/* c's stage; REPL_NONE for a data child. Lock-free. */
enum repl_stage child_stage(const struct child *c);
/*
 * Move replication child c to stage `to`, logging
 * REPLICATION_STAGE_CHANGED {node-name, mode, old, new, reason}. The view
 * is republished when c starts or stops receiving changes (DONE). Returns
 * the old stage. Takes the set's lock.
 */
enum repl_stage children_set_stage(struct child_set *set, struct child *c,
				   enum repl_stage to, const char *reason);
/*
 * A forward to replication child c failed with error (-errno): op is the
 * request's type ("write", "flush", "create", ...), file the path in the
 * mount, [off, off + len) its range (0, 0 for none). The first error is
 * kept until the latch is cleared, the last one and the count always;
 * REPLICATION_ERROR goes to log (throttled per child, as QEMU's
 * QUORUM_REPORT_BAD). Takes c's own lock, a leaf.
 */
void child_latch(struct event_log *log, struct child *c, int error,
		 const char *op, const char *file, uint64_t off, uint64_t len);
/* The latched error (-errno) or 0; child_clear_latch() forgets it. */
int child_latched(struct child *c);
void child_clear_latch(struct child *c);
/* A forward to c succeeded, carrying bytes of data. Lock-free. */
void child_count_forward(struct child *c, uint64_t bytes);
/*
 * Wait until every view taken before this call has been released: every
 * request that could send c a change before now has ended. Returns 0, or
 * -ETIMEDOUT after ms with some still running (nothing is changed either
 * way).
 */
int children_barrier(struct child_set *set, int ms);

struct pool;

/*
 * Start a pool of `threads` workers named qfs-io<N>. Returns 0 and *out,
 * or -errno.
 */
int pool_new(int threads, struct pool **out);

/* Stop the workers and free the pool. No pool_run() may be running. */
void pool_free(struct pool *pool);

typedef void pool_fn(void *arg, int i);

/*
 * Run fn(arg, i) for every i in 0..n-1, in parallel, and return when all
 * have returned. The caller runs i == 0 itself. fn must not call
 * pool_run() on the same pool.
 */
void pool_run(struct pool *pool, int n, pool_fn *fn, void *arg);

/*
 * One positioned read or write of one child, a part of a request that
 * goes to every child. A plain value the caller fills; fd < 0 skips it.
 */
struct child_io {
	int fd;
	bool write;
	int sync; /* CHILD_IO_FSYNC or _FDATASYNC: a sync, not a read/write */
	void *buf;
	size_t len;
	off_t off;
	bool cached; /* buffered I/O: try it inline before queueing it */
	struct child *child; /* whose part: counts it while orphaned */
	bool own_buf;	     /* buf may be handed over (freed with free()) */
	int ret;	     /* out: bytes done, or -errno */
	bool done;	     /* out: ret is set (set false before the call) */
	bool refused; /* out: the file refuses inline tries: stop trying */
	/* out: not answered within the timeout: ret is -ETIMEDOUT and the
	 * part still runs in the kernel; if own_buf, buf now belongs to
	 * the ring, which frees it when the part ends. */
	bool orphaned;
	bool in_ring; /* private: still running on the caller's ring */
};

enum { CHILD_IO_FSYNC = 1, CHILD_IO_FDATASYNC };

/*
 * Do every part at once and return when all are done: submitted together
 * to the calling thread's io_uring, or, where io_uring is unavailable, on
 * the pool. Cached parts are first tried inline without blocking
 * (RWF_NOWAIT): a page-cache hit costs less than any queueing. A part may
 * complete short, as pread/pwrite may; the caller finishes it.
 * With timeout_ms > 0, parts on the ring that take longer are orphaned
 * (see struct child_io), so one hung child cannot hold the request; the
 * pool's fallback has no timeout.
 */
void child_io_run(struct pool *pool, struct child_io *io, int n,
		  int timeout_ms);

/*
 * The same, but it may return before every part is done: after each
 * completion, enough(arg, io, n) is asked whether the answers so far
 * suffice. Returns true when it left parts running (done still false);
 * then child_io_finish() must be called on the same thread before io is
 * freed, to wait for them (until the same deadline, orphaning what misses
 * it).
 */
struct child_io_wait {
	bool (*enough)(void *arg, const struct child_io *io, int n);
	void *arg;
	struct timespec deadline; /* private */
	bool timed;		  /* private */
};
bool child_io_start(struct pool *pool, struct child_io *io, int n,
		    int timeout_ms, struct child_io_wait *w);
void child_io_finish(struct child_io *io, int n, struct child_io_wait *w);

/* Parts of c that timed out and still run in the kernel. A resync must
 * wait for them: a late write would land over the copy. */
int child_orphans(const struct child *c);

/* A system call's result as the project returns it: 0 when r >= 0, else
 * -errno. */
static inline int child_result(int r)
{
	return r < 0 ? -errno : 0;
}

/*
 * pread() (write: pwrite()) until len bytes are done, end of file, or an
 * error; EINTR is retried. direct: the file is O_DIRECT, where a short
 * transfer ends it (going on from an unaligned offset fails: a short
 * read is end of file, a short write a full disk). Returns the bytes
 * done, or -errno when a call failed.
 */
ssize_t child_rw_full(int fd, bool write, bool direct, void *buf, size_t len,
		      off_t off);

/* The path /proc/self/fd/FD, for calls that take a path, not a handle. */
void child_proc_path(int fd, char buf[64]);

/* fsync (fdatasync with datasync) the directory name of dfd, "." for dfd
 * itself (an O_PATH handle will do), so that the creations, removals and
 * renames in it are on the child's disk. 0 or -errno. */
int child_sync_dir(int dfd, const char *name, bool datasync);

/* out = now on clock, plus ms: a deadline for timed waits. */
void children_deadline(clockid_t clock, int ms, struct timespec *out);

/* ---- buffers (buffers.c) ---- */

/*
 * A CHILD_IO_ALIGN-aligned buffer of at least size bytes, reused from a
 * small process-wide cache when size <= CHILD_IO_MAX; NULL when out of
 * memory. Give it back with child_buf_put() with the same size (NULL is
 * accepted). child_buf_alloc() is a fresh one, freed with free().
 * child_bufs_release() frees the cache, at exit.
 */
void *child_buf_alloc(size_t size);
void *child_buf_get(size_t size);
void child_buf_put(void *buf, size_t size);
void child_bufs_release(void);

/* ---- health (health.c): what a failure makes of a child ---- */

/* A state to move to, or none (changes false, to == the state now). */
struct child_verdict {
	enum child_state to;
	bool changes;
	bool whole_tree; /* its resync must copy the whole tree */
};

/*
 * Pure decisions, given the child's state now:
 *   missed:   a voting child failed a change the quorum took (data_write:
 *             a write of file data, error its -errno);
 *   late:     it did not answer within io-timeout;
 *   read_failed: a read failed with error; streak counts the failed
 *             reads in a row, this one included (child_error_streak);
 *   syncing_failed: a syncing child failed a write.
 */
struct child_verdict child_health_missed(enum child_state now, bool data_write,
					 int error);
struct child_verdict child_health_late(enum child_state now);
struct child_verdict child_health_read_failed(enum child_state now, int error,
					      int streak);
struct child_verdict child_health_syncing_failed(enum child_state now,
						 int error);

/* ---- one request to every child, bounded (request.c) ---- */

/*
 * The watchdog: the io-timeout a request waits for its children (0: for
 * ever), and who hears of a child that did not answer in time: late(arg,
 * c), registered from above with watchdog_set_late() before serving.
 * Returns 0 and *out, or -ENOMEM. Free it once no request runs.
 */
typedef void child_late_fn(void *arg, struct child *c);
struct watchdog;
struct child_request;
int watchdog_new(int timeout_ms, struct watchdog **out);
void watchdog_free(struct watchdog *wd);
void watchdog_set_late(struct watchdog *wd, child_late_fn *late, void *arg);
int watchdog_timeout_ms(const struct watchdog *wd);
/* Tell late() of every child rq gave up on. Call it holding no lock that
 * late() may take. */
void watchdog_report(const struct watchdog *wd, const struct child_request *rq);

/*
 * One call sent to every child of a view, md raid1's r1bio (request.c
 * says how the caller and the parts share it):
 *   child_request_new: a request with arg_size zeroed bytes at arg for
 *     the parts to share; it holds its own reference to view. release(rq)
 *     runs when the last part has ended, for what late parts left in
 *     arg. NULL when out of memory.
 *   child_request_run: body(rq, i) for every view index i, on the pool,
 *     each part's answer (0 or -errno) in ret[i]; returns once every part
 *     answered, or after wd's io-timeout with the late ones given up on:
 *     their bit in late, ret -ETIMEDOUT. wd NULL: wait for ever; pool
 *     NULL: every part on the calling thread, in turn. Run it once per
 *     request.
 *   child_request_put: the caller is done with it.
 */
struct child_request {
	const struct child_view *view;
	void *arg;
	int ret[CHILDREN_MAX];
	uint32_t late; /* bit i: part i was given up on */
};
struct child_request *
child_request_new(const struct child_view *view, size_t arg_size,
		  void (*release)(struct child_request *));
void child_request_run(struct child_request *rq, struct pool *pool,
		       const struct watchdog *wd,
		       int (*body)(struct child_request *rq, int i));
void child_request_put(struct child_request *rq);
/* Wait up to ms for every request to end (the late parts included);
 * false when some still run, held by a hung child. */
bool child_requests_wait(int ms);

#endif
