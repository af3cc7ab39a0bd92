/*
 * jobs: the background work on the voted tree, md's resync and check in
 * a directory's shape.
 *
 *   resync  fills a child that is not in step (new, returning, or asked
 *           for with `resync NAME`) with the voted content, then lets it
 *           vote;
 *   scrub   reads and votes every file, and with repair rewrites the
 *           copies that lost;
 *   settle  after an unclean stop, before the mount serves, makes the
 *           regions the intent log names identical on every child in
 *           step.
 *
 * A stale child is handed to the jobs by the tree (the child_stale hook
 * the jobs register), and a launcher thread (qfs-jobs) starts its
 * resync: the request that demoted it may hold a range claim the copy
 * needs, so it cannot start on that thread.
 *
 * Conventions: functions return 0 or -errno; err receives a one-sentence
 * reason for a refusal. Calls from above (control commands) may come
 * from several threads; each command's effect is whole. No call takes a
 * range claim while the caller holds one, so the caller must hold none.
 */
#ifndef QFS_JOBS_H
#define QFS_JOBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct child;
struct child_set;
struct event_log;
struct json_object;
struct pool;
struct quarantine;
struct record;
struct tree;
struct watchdog;
struct jobs;

/* What the jobs work with; every pointer must outlive the jobs. */
struct jobs_config {
	struct child_set *set;
	struct tree *tree;
	struct pool *pool;
	struct watchdog *wd;   /* bounds the jobs' metadata requests */
	struct record *record; /* NULL: no record is kept */
	struct event_log *log;
	struct quarantine *quarantine; /* what repairs overwrite; NULL none */
	int timeout_ms;		       /* a child's answer; 0: wait for ever */
	int scrub_rate; /* MiB/s of a scrub started without rate=; 0 none */
};

/*
 * Start the launcher and register with the tree; children already stale
 * at mount are logged (why they are behind) and their resync starts.
 * Returns 0 and *out, or -errno with nothing started.
 */
int jobs_new(const struct jobs_config *cfg, struct jobs **out);
/* Stop every job and the launcher, wait for them, free. NULL is fine. */
void jobs_free(struct jobs *jobs);

/*
 * After an unclean stop, before serving: make the regions the intent
 * log names identical on every child in step (each block voted, the
 * winner written over the others). Returns 0, or -errno when a region
 * could not be settled.
 */
int jobs_settle(struct jobs *jobs);

/*
 * Resync child c again: stop its running copy, make it syncing (refused
 * with -EINVAL when that would leave fewer voting children than the
 * threshold, or in blkverify mode), copy the whole tree. Refused with
 * -EBUSY while timed-out requests to c still run there (a late write
 * would land over the copy). A thread that cannot start leaves c failed.
 */
int jobs_resync(struct jobs *jobs, struct child *c, char *err, size_t errlen);
/* Copy the whole tree to c, a child just added (syncing). */
int jobs_resync_added(struct jobs *jobs, struct child *c);
/* Fail c for reason: out of every view, and kept failed by the record
 * until `resync NAME`. */
void jobs_fail_child(struct jobs *jobs, struct child *c, const char *reason);
/* End c's copy, if any, and wait for it. */
void jobs_resync_stop(struct jobs *jobs, struct child *c);

/*
 * Scrub. start: rate in MiB/s, 0 unlimited, -1 the mount's scrub-rate;
 * -EBUSY, with nothing changed, while a scrub runs; if its thread cannot
 * start, the new run shows as failed. stop: -EINVAL when none runs;
 * returns once the job has ended and logged SCRUB_COMPLETED. status adds
 * "scrub" to status and "scrub-mismatches" to each of its "children".
 * forget_child: a removed child's count starts again at zero.
 */
int jobs_scrub_start(struct jobs *jobs, bool repair, int rate, char *err,
		     size_t errlen);
int jobs_scrub_stop(struct jobs *jobs, char *err, size_t errlen);
void jobs_scrub_status(struct jobs *jobs, struct json_object *status);
void jobs_scrub_forget_child(struct jobs *jobs, const char *name);

/*
 * Writes an operator asks for (repair.c), each through the tree like any
 * write of the mount: voted, to every child, announced in the intent
 * log, and fsync'd before the call returns. path is relative to the
 * mount. 0, or -errno with one sentence in err.
 *   jobs_write_file: len bytes of buf at off (`quarantine restore`).
 *   jobs_repair_from: child c's own bytes of [off, off + len) of the
 *     file, or with whole the whole file and its size (`repair FILE
 *     from=CHILD`, GlusterFS's source-brick): for blocks no version
 *     could win. c must be in step (ok).
 */
int jobs_write_file(struct jobs *jobs, const char *path, uint64_t off,
		    const void *buf, size_t len, char *err, size_t errlen);
int jobs_repair_from(struct jobs *jobs, const char *path, struct child *c,
		     bool whole, uint64_t off, uint64_t len, char *err,
		     size_t errlen);

#endif
