/* Private to the children module: what children.c lends io.c. */
#ifndef QFS_CHILDREN_I_H
#define QFS_CHILDREN_I_H

#include "children/children.h"

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
