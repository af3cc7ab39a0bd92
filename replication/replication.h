/*
 * replication: QEMU's replication driver (block/replication.c, the block
 * half of COLO) for a tree of files.
 *
 * The primary side: a replication child (children.h, CHILD_REPLICATION)
 * receives every change of the tree inside the writer's range claim and
 * never votes; this module is its stage machine, driven by the
 * `replication ...` control commands with QEMU's rules and texts:
 *
 *   start primary   NONE -> RUNNING, the latch cleared; refused while
 *                   the child is not yet in step (syncing, stale,
 *                   failed), and in RUNNING or FAILOVER_FAILED;
 *   checkpoint      a barrier: returns once every change sent before it
 *                   has been answered (bounded by io-timeout);
 *   get-error       "Block replication is not running" in NONE, "I/O
 *                   error occurred" when a forward failed;
 *   stop            RUNNING -> DONE: the stream ends, nothing more is
 *                   sent; refused in NONE and FAILOVER_FAILED.
 *
 * DONE and FAILOVER accept start, checkpoint and stop silently, as QEMU
 * 7.2 does for a promoted secondary.
 */
#ifndef QFS_REPLICATION_H
#define QFS_REPLICATION_H

#include <stddef.h>

struct child;
struct child_set;
struct config_command;

/*
 * Run one `replication ...` command on the primary's replication
 * children: the one cmd->name names, else each in the set's order,
 * stopping at the first refusal (QEMU's replication_*_all). timeout_ms
 * bounds checkpoint's wait. Returns 0, or -errno with QEMU's text in
 * err; children before a refused one keep what the command did to them.
 * Takes the set's lock briefly; call it with no range claim held.
 */
int replication_primary(struct child_set *set, const struct config_command *cmd,
			int timeout_ms, char *err, size_t errlen);

/* c is leaving the set: a running stream ends first (stage DONE). */
void replication_child_removed(struct child_set *set, struct child *c);

#endif
