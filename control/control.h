/*
 * control: the mount's lifecycle, its control commands and its status.
 *
 * One struct control per mount owns everything below it and brings it
 * up and down in one explicit order (control/mount.c):
 *   control_open   before the daemon detaches: read every child's record
 *                  and decide (a foreign child, too few in step: refuse),
 *                  open the child set;
 *   control_start  after it detached (fork() would leave threads
 *                  behind): the event log, the pool, the tree, the jobs;
 *                  settle an unclean stop; MOUNTED;
 *   control_stop   after the FUSE session ended: the jobs, UNMOUNTED, the
 *                  tree, the record (clean only on a clean stop), the
 *                  pool, the log, the set.
 * Commands (the bytes of one write to .control) run one at a time; a
 * status read never waits for a command.
 *
 * Conventions: functions return 0 or -errno; err receives one sentence
 * for the operator. control_stop() accepts NULL and frees everything,
 * also after a failed control_start().
 */
#ifndef QFS_CONTROL_H
#define QFS_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

struct config;
struct control;
struct event_log;
struct tree;

/* cfg must outlive the control. mount_st is the mountpoint's directory
 * before mounting, so that `add` can refuse children inside the mount. */
int control_open(const struct config *cfg, const struct stat *mount_st,
		 struct control **out, char *err, size_t errlen);
int control_start(struct control *ctl, char *err, size_t errlen);
void control_stop(struct control *ctl, bool clean);

/* What the FUSE handlers work on, and the log SIGHUP reopens (NULL
 * without log=); valid between control_start() and control_stop(). */
struct tree *control_tree(struct control *ctl);
struct copies;
struct copies *control_copies(struct control *ctl);
struct event_log *control_log(struct control *ctl);
/* A replication secondary's (replication.h), or NULL: valid from
 * control_open() on. */
struct secondary;
struct secondary *control_secondary(struct control *ctl);

/*
 * Carry out one control command. Returns 0, or -errno (EINVAL for a
 * malformed or refused command, or the real errno, e.g. ENOENT for a
 * missing directory) with nothing changed and CONTROL_ERROR logged; the
 * reason is kept for the status.
 */
int control_command(struct control *ctl, const char *buf, size_t len);

/* The status as one JSON document (NUL-terminated; caller frees), or
 * NULL when out of memory. */
char *control_status(struct control *ctl);

#endif
