/*
 * Private to the replication module: the secondary and what its files
 * lend each other.
 *
 * Three trees, as QEMU's replication names them on one image:
 *   B  the base: the children, voted by the tree; the primary's changes
 *      arrive in it through the inbound mount;
 *   C  the tree at the last checkpoint: the hidden layer over B. Before
 *      the primary overwrites anything C can see, the old bytes are
 *      copied into hidden (copy-before-write), once per cluster and
 *      epoch; before it changes a name, hidden remembers where C's
 *      object went. C never changes between checkpoints;
 *   V  the secondary VM's view: the active layer over C.
 * A checkpoint starts a new, empty epoch in both layers: then V = C = B.
 *
 * Paths are relative, without leading slash ("" is the root). A hidden
 * entry is keyed by a C path and names in `lower` where its object lies
 * in B now (or absent: a name C does not have); an active entry is keyed
 * by a V path and names in `lower` the C path its object comes from, or
 * none for an object only the active layer has. Data clusters a layer
 * holds override what lies below.
 *
 * Locks, outermost first:
 *   1. sec->epoch (rwlock): every view and inbound request holds it
 *      shared for its whole length; a checkpoint, start and stop hold it
 *      exclusively, so they see no request half done;
 *   2. sec->names (rwlock): an inbound change of names holds it
 *      exclusively across the change of B and of hidden; a view request
 *      resolving names holds it shared;
 *   3. a base file's cbw range claim (cbw.c): an inbound data change
 *      claims its range exclusively across copy-before-write and the
 *      write to B; a view read of B claims it shared across its look at
 *      hidden's map and its read of B;
 *   4. sec->lock (mutex): the layers' entries and maps, the node table.
 *      Held only between calls into the tree, never across one.
 */
#ifndef QFS_REPLICATION_I_H
#define QFS_REPLICATION_I_H

#include "replication/replication.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "events/events.h"
#include "layers/layers.h"
#include "rangelock/rangelock.h"
#include "tree/tree.h"

/* QEMU 7.2's texts, for both sides. */
#define NOT_RUNNING "Block replication is not running"
#define RUNNING_OR_DONE "Block replication is running or done"
#define MODE_INVALID                                                           \
	"The parameter mode's value is invalid, needs %d, but got %d"
#define IO_ERROR "I/O error occurred"
#define JOB_CANCELLED "Backup job was cancelled unexpectedly"
#define NO_BACKEND "The secondary disk doesn't have block backend"
#define IN_USE "Block device is in use by internal backup job"

/* err gets fmt's sentence; returns ret. */
int refuse(char *err, size_t errlen, int ret, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

struct cbw_lock;
struct vnode_table;

/* The secondary; more than 16 fields, grouped: what it uses, its
 * stage, its locks, and the counters status shows. */
struct secondary {
	struct tree *tree;
	struct event_log *log;
	const struct config_secondary *cfg;
	int timeout_ms;
	struct layer *active, *hidden;

	_Atomic int stage;	 /* enum repl_stage */
	atomic_int error;	 /* the latched error (-errno), 0: none */
	atomic_bool inbound_up;	 /* the inbound mount is mounted */
	atomic_bool read_only;	 /* failover began: inbound refuses */
	_Atomic uint64_t ns_gen; /* bumped by every change of names */
	_Atomic uint64_t graves; /* the next graveyard name's number */

	pthread_rwlock_t epoch;
	pthread_rwlock_t names;
	pthread_mutex_t fill; /* a view write filling a new active cluster */
	pthread_mutex_t lock;
	struct cbw_lock *cbw; /* under lock: the base files claimed */
	struct vnode_table *vnodes;
	struct reaper *reaper; /* NULL before secondary_start() */

	atomic_uint_fast64_t inbound_writes, inbound_bytes;
	uint64_t checkpoints, last_checkpoint_ms, max_checkpoint_ms;
	int64_t last_checkpoint_time;
};

enum v_kind {
	V_ABSENT,
	V_C,   /* an object of C, at cpath */
	V_OWN, /* an object only the active layer has */
};

/* ---- view.c ---- */

int vnodes_new(struct secondary *sec);
void vnodes_free(struct secondary *sec);
/* vnodes.c: the node id of V path (one lookup more), 0 when out of
 * memory; the path of a node id (caller frees; NULL: unknown); a rename
 * of the nodes at from and below to `to`. A path starting with '/' is a
 * node whose name was renamed over: it resolves to nothing. */
uint64_t vnode_ref(struct secondary *sec, const char *path);
char *vnode_path(struct secondary *sec, uint64_t ino);
int vnodes_move(struct secondary *sec, const char *from, const char *to);

/* What a V path is, copied out of the layers (view.c). */
struct vinfo {
	enum v_kind kind;
	char *cpath; /* V_C */
	char *bpath; /* V_C: where it lies in B; NULL: C lacks the name */
	struct layer_entry a, h; /* copies without strings; path NULL: none */
	char *target;		 /* V_OWN symlink */
};
/* Resolve vpath (the caller holds sec->names, shared at least, and not
 * sec->lock); its attributes as V shows them. */
int vinfo_get(struct secondary *sec, const char *vpath, struct vinfo *vi);
int vinfo_stat(struct secondary *sec, const struct vinfo *vi, struct stat *st);
void vinfo_free(struct vinfo *vi);

/* view.c: view_lookup() and view_opendir() for a caller that holds
 * sec->names already (a change of names, exclusively). */
int view_lookup_locked(struct secondary *sec, uint64_t parent, const char *name,
		       struct tree_entry *e);
int view_opendir_locked(struct secondary *sec, uint64_t ino,
			struct view_dir **d);

/* ---- stage.c ---- */

/* Record stage `now` (enum repl_stage) in the active layer's state, then
 * take it and log REPLICATION_STAGE_CHANGED. */
int secondary_set_stage(struct secondary *sec, int now, const char *reason);
/* Empty both layers: a new epoch in active (the commit point), then in
 * hidden; *epoch is the new one. The old epochs' files stay for
 * layer_gc(). The caller holds sec->epoch exclusively; takes sec->lock. */
int secondary_new_epoch(struct secondary *sec, uint64_t *epoch);
/* A point where the tests may cut the daemon short (QFS_FAILPOINT). */
void failpoint(const char *name);

struct paths;

/* ---- reap.c: what checkpoints leave, removed in the background ---- */

int reaper_start(struct secondary *sec);
/* Stops the thread; work still queued is left for the next start. */
void reaper_stop(struct secondary *sec);
/* Remove the layers' epochs below `below` and the graveyard's `graves`
 * (taken over; NULL: none), soon. */
void reaper_queue(struct secondary *sec, uint64_t below, struct paths *graves);

/* ---- commit.c: failover ---- */

/* RUNNING -> FAILOVER -> DONE (or FAILOVER_FAILED): commit the layers
 * into the base, so that it becomes what the view shows. */
int secondary_failover(struct secondary *sec, char *err, size_t errlen);
/* Paths: a layer's, shallowest first, or the graveyard's names. */
struct paths {
	char **p;
	int n, cap;
};

/* cnames.c: what the graveyard holds now, and its removal, which may run
 * after the epoch lock is dropped: new burials get new names. */
int graveyard_list(struct secondary *sec, struct paths **out);
void graveyard_clear(struct secondary *sec, struct paths *ps);
void graveyard_free(struct paths *ps);
/* cnames.c: B's names become those layer l gives over it; afterwards
 * every entry's lower is its own path. Holds nothing; the caller holds
 * sec->epoch and sec->names exclusively. */
int commit_names(struct secondary *sec, struct layer *l);

/* ---- resolve.c: the trees' names, under sec->lock ---- */

/* Where C path cpath lies in B now, or NULL when C has no such name.
 * The caller frees the result. */
char *c_to_b(struct secondary *sec, const char *cpath);
/* The C path whose object lies at B path bpath now, or NULL (B made it
 * after the checkpoint). The caller frees the result. */
char *b_to_c(struct secondary *sec, const char *bpath);

/* What a V path is. */
struct v_place {
	enum v_kind kind;
	char *cpath; /* V_C: its C path; caller frees with v_place_free */
	const struct layer_entry *a; /* the active entry at exactly vpath */
	const struct layer_entry *h; /* V_C: the hidden entry at cpath */
};
int v_resolve(struct secondary *sec, const char *vpath, struct v_place *p);
void v_place_free(struct v_place *p);

/* "a/b" + "c" -> "a/b/c"; "" + "c" -> "c". NULL when out of memory. */
char *path_join(const char *dir, const char *name);
/* The parent of path ("" for a top-level name), caller frees. */
char *path_parent(const char *path);

/* ---- base.c: B through the tree ---- */

/*
 * Look up B path bpath in the tree: its node id, with one lookup the
 * caller drops with base_forget(). Returns 0, -ENOENT, or another
 * -errno of a lookup.
 */
int base_lookup(struct secondary *sec, const char *bpath, uint64_t *ino);
void base_forget(struct secondary *sec, uint64_t ino);
/* The voted attributes of B path bpath. */
int base_stat(struct secondary *sec, const char *bpath, struct stat *st);

/* ---- cbw.c: the base files' claims, and the view files' ---- */

/* The claims of a view file, by its node id: apart from the base
 * files', whose node ids are the tree's. */
#define VIEW_CLAIM(ino) ((ino) | (1ull << 63))

struct cbw_claim {
	struct cbw_lock *lock;
	struct range_claim claim;
};
/* Claim [start, end) of base file ino; -ENOMEM leaves nothing claimed. */
int cbw_claim(struct secondary *sec, uint64_t ino, off_t start, off_t end,
	      bool exclusive, struct cbw_claim *c);
void cbw_release(struct secondary *sec, struct cbw_claim *c);

#endif
