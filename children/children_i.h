/* Private to the children module: what children.c lends io.c. */
#ifndef QFS_CHILDREN_I_H
#define QFS_CHILDREN_I_H

#include "children/children.h"

#include <pthread.h>

/* What replica.c keeps of a replication child's stream, under its
 * lock (a leaf). */
struct child_latch {
	pthread_mutex_t lock;
	int first, last; /* -errno of the first and the last failed forward */
	uint64_t count;	 /* failed forwards, since the latch was cleared */
	struct json_object *first_doc, *last_doc; /* their details */
};

/* A child's identity, its state, and the counters status shows, each
 * lock-free; more than 16 fields because every one is read on its own. */
struct child {
	char *name;
	char *path;
	int root_fd;
	int lock_fd; /* holds flock(LOCK_EX) of the root: one mount a child */
	int slot;
	enum child_kind kind;
	/* On FUSE or a network file system: io_uring would issue its I/O
	 * on the submitting thread, where such a file system can block it
	 * beyond io-timeout (FUSE's wait for a request slot is not
	 * interruptible), so its parts go to io_uring's workers. */
	bool remote;
	atomic_int refs;
	atomic_int views; /* live views naming this child */
	_Atomic enum child_state state;
	_Atomic enum repl_stage stage;
	char reason[256];		/* guarded by the set's lock */
	atomic_uint_fast64_t errors[3]; /* indexed by enum child_op */
	atomic_int streak;		/* failed reads in a row */
	atomic_int orphans;		/* timed-out parts still running */
	atomic_uint_fast64_t bytes_done, bytes_total, files_done, files_total;
	/* Witnesses only: the bytes the last walk of its tree counted, and
	 * when (CLOCK_MONOTONIC seconds): status walks it at most once a
	 * second. */
	atomic_uint_fast64_t disk_bytes, disk_walked;
	/* Replication children only (replica.c). */
	atomic_uint_fast64_t forwarded_ops, forwarded_bytes;
	struct child_latch *latch;
};

/* A replication child's latch: made with the child, freed with it. */
int child_latch_new(struct child *c);
void child_latch_free(struct child *c);
/* The "replication" object of c's status (caller owns). */
struct json_object *child_replica_status(struct child *c);

/* Count c's parts that timed out and still run (delta +1 or -1). */
void child_orphan(struct child *c, int delta);

/*
 * A task for the pool, embedded in its submitter's object: fn(task) runs
 * on a worker. pool_submit() queues tasks[0..n) in that order, and adds
 * workers when none is idle (pool.c).
 */
struct pool_task {
	void (*fn)(struct pool_task *task);
	struct pool_task *next; /* the pool's */
};
struct pool;
void pool_submit(struct pool *pool, struct pool_task **tasks, int n);

#endif
