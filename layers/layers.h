/*
 * layers: the store of a replication secondary's active and hidden
 * layers, one directory each.
 *
 *   LAYER/.qfslayer/state   JSON, replaced atomically: the set's id, the
 *                           role (active or hidden), the cluster size,
 *                           the epoch, the stage and whether it was
 *                           closed cleanly
 *   LAYER/E<epoch>/journal  the entries' changes, one JSON line each,
 *                           appended (and made durable with sync on)
 *   LAYER/E<epoch>/o/<id>   an object's data at its file offsets, sparse
 *   LAYER/E<epoch>/o/<id>.map  which clusters of it the layer holds, a
 *                           bit each
 *
 * A layer maps paths of its own namespace to entries: a name it hides (a
 * whiteout), or a name whose object lies below at another path (`lower`,
 * after a rename) or only here (no lower: created in this layer), with
 * optionally data clusters held here, a size and metadata of its own.
 * Paths not in the map pass through unchanged, so an epoch costs only
 * what it touched, and a new epoch starts empty: switching is O(1),
 * whatever the layer holds. What the entries mean for a view is the
 * business of the layer above (replication/); here they are only kept
 * and made durable.
 *
 * Paths are relative, without leading or trailing slashes ("" is the
 * root). Functions return 0 or -errno; err gets a reason where taken.
 * A layer is not thread-safe: its user serializes calls (object data
 * reads and writes may run in parallel once the object exists).
 */
#ifndef QFS_LAYERS_H
#define QFS_LAYERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct layer;

/* Metadata a layer may keep for an entry (has_meta). */
struct layer_meta {
	mode_t mode; /* with the file type bits */
	uid_t uid;
	gid_t gid;
	struct timespec atime, mtime;
};

struct layer_entry {
	const char *path;
	bool absent;	   /* a whiteout: nothing else counts */
	const char *lower; /* its object below, at this path; NULL: here only */
	uint64_t obj;	   /* data held here (layer_obj_*), 0: none */
	bool has_size;	   /* size overrides what lies below */
	uint64_t size;
	bool has_meta; /* meta overrides what lies below */
	struct layer_meta meta;
	const char *target; /* a symlink only here: its target */
};

/* What the state file says. */
struct layer_state {
	char set[33];
	uint64_t epoch;
	int stage;
	bool clean;
	bool failed_over; /* a failover began: the inbound side is closed */
};

/*
 * Open the layer in dir for role ("active" or "hidden"), with cluster
 * bytes a cluster; sync makes every change durable before it returns.
 * A directory with no state becomes an empty layer of epoch 0; one of
 * another role or cluster size is refused (-EINVAL, reason in err). The
 * current epoch's journal is replayed. Returns 0 and *out.
 */
int layer_open(const char *dir, const char *role, unsigned int cluster,
	       bool sync, struct layer **out, char *err, size_t errlen);
/* Mark it closed cleanly (when clean) and free it. NULL accepted. */
void layer_close(struct layer *l, bool clean);

void layer_get_state(const struct layer *l, struct layer_state *st);
/* Replace the state file with st (the epoch is not changed here). */
int layer_set_state(struct layer *l, const struct layer_state *st);
/*
 * Start epoch `epoch`, empty: a fresh E<epoch>/, then the state names
 * it (the commit point), then the entries and objects of the old one
 * are forgotten. Nothing changes on failure. The old epoch's files stay
 * until layer_gc().
 */
int layer_switch(struct layer *l, uint64_t epoch);
/* Remove every E<n>/ with n below `below`. Safe beside the layer's other
 * calls: it touches old epochs only, which nothing refers to. */
void layer_gc(struct layer *l, uint64_t below);

/* ---- entries ---- */

/* The entry at path, or NULL; valid until the next change. */
const struct layer_entry *layer_find(const struct layer *l, const char *path);
/* Set the entry e->path to e (strings copied), journaled first. */
int layer_put(struct layer *l, const struct layer_entry *e);
/* Forget the entry at path (none: 0). */
int layer_drop(struct layer *l, const char *path);
/* Rename from to `to`: the entry at from and every entry below it. */
int layer_move(struct layer *l, const char *from, const char *to);
/* The objects that lay at from or below it now lie at `to`: every
 * entry's lower that is from, or below it, is rewritten. */
int layer_move_lower(struct layer *l, const char *from, const char *to);
/* Each entry, in no order, until fn returns non-zero (returned). fn
 * must not change the layer. */
int layer_each(const struct layer *l,
	       int (*fn)(void *arg, const struct layer_entry *e), void *arg);
int layer_entries(const struct layer *l);

/* ---- objects ---- */

/* A new empty object, its id in *id (ids start at 1). */
int layer_obj_new(struct layer *l, uint64_t *id);
/* Whether the layer holds cluster k of object id. */
bool layer_obj_has(const struct layer *l, uint64_t id, uint64_t k);
/* Bytes [off, off + len) of the object's data file (zeros in holes). */
int layer_obj_read(struct layer *l, uint64_t id, void *buf, size_t len,
		   off_t off);
/* Write data at off; the clusters are not held until layer_obj_hold. */
int layer_obj_write(struct layer *l, uint64_t id, const void *buf, size_t len,
		    off_t off);
/* Zeros over [off, off + len) of the data file (a hole where whole
 * blocks allow). */
int layer_obj_zero(struct layer *l, uint64_t id, off_t off, size_t len);
/* Make the object's data written so far durable (sync on). */
int layer_obj_sync(struct layer *l, uint64_t id);
/* Make the data written so far durable (sync on), then hold clusters
 * [first, first + n): from now on reads of them come from here. */
int layer_obj_hold(struct layer *l, uint64_t id, uint64_t first, uint64_t n);
/* Clusters held, over every object, and bytes they stand for. */
uint64_t layer_clusters(const struct layer *l);
unsigned int layer_cluster_bytes(const struct layer *l);
const char *layer_dir(const struct layer *l);

#endif
