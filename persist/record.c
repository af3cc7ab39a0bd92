/*
 * The set's record at mount and at runtime (see persist.h).
 *
 * Lock order: record->lock, then the child set's locks (views are taken
 * under it). Nothing here waits for a range lock.
 */
#define _GNU_SOURCE
#include "persist/persist.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ANNOUNCED_MAX 65536
/* Writes one call under the lock may make. */
#define RECORD_PENDING 4

struct announced {
	uint64_t id; /* the file's announcement identity, see persist.h */
	int64_t region;
};

/* Most of these fields are the record's memory of every slot; the rest
 * are the announcement cache and the bounded writes. */
struct record {
	pthread_mutex_t lock;
	struct persist_state set; /* generation: the current one */
	bool fresh_set;		  /* no child had a record */
	bool unclean;
	char id[CHILDREN_MAX][PERSIST_ID_LEN + 1]; /* by slot */
	uint64_t gen[CHILDREN_MAX];		   /* by slot: last in step */
	bool behind[CHILDREN_MAX];		   /* by slot */
	bool tree[CHILDREN_MAX];       /* by slot: missed more than data */
	char why[CHILDREN_MAX][160];   /* by slot: why behind */
	bool failed[CHILDREN_MAX];     /* by slot: failed before: stays out */
	int write_error[CHILDREN_MAX]; /* by slot: its last record write */
	bool tree_announced;
	_Atomic uint64_t generation; /* set.generation, readable unlocked */
	atomic_int members;	     /* set.n, likewise, for the status */
	struct announced *announced; /* this generation's, unordered */
	size_t nannounced;
	int nextra;
	char *extra_path[CHILDREN_MAX], *extra_name[CHILDREN_MAX];
	/* Writes to the children's records run on the pool, bounded by the
	 * watchdog's io-timeout (record_set_io; before it, on the caller's
	 * thread). Those that gave up on a child wait here, under lock,
	 * until the lock is dropped: the late callback takes it again. */
	struct pool *pool;
	struct watchdog *wd;
	struct child_request *pending[RECORD_PENDING];
	int npending;
};

static int refuse(char *err, size_t errlen, const char *fmt, const char *a,
		  const char *b)
{
	snprintf(err, errlen, fmt, a, b);
	return -EINVAL;
}

static struct record *record_new(void)
{
	struct record *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	pthread_mutex_init(&r->lock, NULL);
	return r;
}

void record_free(struct record *r)
{
	if (!r)
		return;
	for (int i = 0; i < r->nextra; i++) {
		free(r->extra_path[i]);
		free(r->extra_name[i]);
	}
	persist_clear(&r->set);
	free(r->announced);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* ---- mount: reading every child's record ---- */

static int load_path(const char *path, struct persist_state *st, char *why,
		     size_t whylen)
{
	int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC), ret;

	if (fd < 0)
		return -errno;
	ret = persist_load(fd, st, why, whylen);
	close(fd);
	return ret;
}

/* The newest record among the command line's children, or -1. */
static int newest(const struct persist_state *st, const int *loaded, int n)
{
	int best = -1;

	for (int i = 0; i < n; i++)
		if (loaded[i] == 0 &&
		    (best < 0 || st[i].generation > st[best].generation))
			best = i;
	return best;
}

static int check_member(struct record *r, const struct persist_state *st,
			const char *path, char *err, size_t errlen)
{
	if (strcmp(st->set, r->set.set))
		return refuse(err, errlen,
			      "child '%s' belongs to another quorumfs set "
			      "(%s/.quorumfs names a different set); refusing "
			      "to mix sets",
			      path, path);
	if (!persist_member(&r->set, st->child))
		return refuse(err, errlen,
			      "child '%s' was removed from this set; leave it "
			      "out, or delete %s/.quorumfs to add it back as a "
			      "new child",
			      path, path);
	return 0;
}

/* Whether path is a directory with nothing in it. */
static bool empty_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	bool empty = d != NULL;

	while (empty && (de = readdir(d)))
		empty = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
	if (d)
		closedir(d);
	return empty;
}

static bool member_path(const struct persist_state *set, const char *path)
{
	for (int m = 0; m < set->n; m++)
		if (strcmp(set->member[m].path, path) == 0)
			return true;
	return false;
}

/* A child whose record was lost or wiped joins under a new identity:
 * the member its path stood for is gone. */
static void forget_path(struct persist_state *set, const char *path)
{
	for (int m = set->n - 1; m >= 0; m--)
		if (strcmp(set->member[m].path, path) == 0)
			persist_remove_member(set, set->member[m].id);
}

/* Slot i's standing from its own record (loaded: persist_load's result). */
static int place(struct record *r, int i, const struct persist_state *st,
		 int loaded, const char *path, char *err, size_t errlen)
{
	int ret;

	if (loaded != 0) {
		persist_new_id(r->id[i]);
		if (r->fresh_set)
			return 0;
		/* An empty directory where a member was is as likely a file
		 * system that is not mounted (an NFS export at boot) as a
		 * wiped disk: filling it would fill the file system beneath
		 * and drop the member. */
		if (loaded == -ENOENT && member_path(&r->set, path) &&
		    empty_dir(path))
			return refuse(err, errlen,
				      "child '%s' is an empty directory where "
				      "a member of this set was: is its file "
				      "system mounted? Mount it, or leave '%s' "
				      "out (the set mounts without it), or "
				      "enrol it anew with 'add' at runtime",
				      path, path);
		forget_path(&r->set, path);
		r->behind[i] = true;
		snprintf(r->why[i], sizeof(r->why[i]), "%s",
			 loaded == -ENOENT
				 ? "new child: copying the whole tree"
				 : "its record is unreadable: copying the "
				   "whole tree");
		return 0;
	}
	ret = check_member(r, st, path, err, errlen);
	if (ret)
		return ret;
	memcpy(r->id[i], st->child, sizeof(r->id[i]));
	r->gen[i] = st->generation;
	if (persist_member(&r->set, st->child)->failed) {
		/* An operator must look at it first, as before the restart. */
		r->behind[i] = r->failed[i] = r->tree[i] = true;
		snprintf(r->why[i], sizeof(r->why[i]),
			 "failed before the last unmount: %s",
			 persist_member(&r->set, st->child)->failed);
	} else if (st->generation < r->set.generation) {
		r->behind[i] = true;
		snprintf(r->why[i], sizeof(r->why[i]),
			 "behind: generation %llu, the set is at %llu",
			 (unsigned long long)st->generation,
			 (unsigned long long)r->set.generation);
	} else if (!st->clean) {
		r->unclean = true;
	}
	return 0;
}

static bool on_command_line(const struct record *r, int n, const char *id)
{
	for (int i = 0; i < n; i++)
		if (strcmp(r->id[i], id) == 0)
			return true;
	return false;
}

/* The member's directory is there but its record is not, or is garbage
 * (an unreachable directory is merely absent and keeps its place, and so
 * is an empty one: a file system not mounted yet, see place()). */
static bool lost_record(const char *path)
{
	struct persist_state st;
	char why[128];
	struct stat dir;
	int ret;

	if (stat(path, &dir) || !S_ISDIR(dir.st_mode) || empty_dir(path))
		return false;
	ret = load_path(path, &st, why, sizeof(why));
	persist_clear(&st);
	return ret == -ENOENT || ret == -EINVAL;
}

/* Mount member pm as cfg's next child. */
static int add_extra(struct record *r, struct children_config *cfg,
		     const struct persist_member *pm)
{
	r->extra_path[r->nextra] = strdup(pm->path);
	r->extra_name[r->nextra] = strdup(pm->name);
	if (!r->extra_path[r->nextra] || !r->extra_name[r->nextra])
		return -ENOMEM;
	cfg->path[cfg->n] = r->extra_path[r->nextra];
	cfg->name[cfg->n] = r->extra_name[r->nextra++];
	cfg->kind[cfg->n] = pm->kind;
	return 0;
}

/*
 * A replication child has no record of its own: it is mounted from the
 * data children's, when its directory is there, and refilled, since
 * whatever changed while the mount was down never reached it. One that
 * was failed stays failed until `resync NAME`.
 */
static int add_replica(struct record *r, struct children_config *cfg,
		       const struct persist_member *pm)
{
	struct stat dir;
	int i = cfg->n, ret;

	if (stat(pm->path, &dir) || !S_ISDIR(dir.st_mode))
		return 0;
	ret = add_extra(r, cfg, pm);
	if (ret)
		return ret;
	memcpy(r->id[i], pm->id, sizeof(r->id[i]));
	r->behind[i] = r->tree[i] = true;
	r->failed[i] = pm->failed != NULL;
	snprintf(r->why[i], sizeof(r->why[i]), "%s%s",
		 pm->failed ? "failed before the last unmount: "
			    : "replication child: refilled after a restart",
		 pm->failed ? pm->failed : "");
	cfg->n++;
	return 0;
}

/* Members the command line left out: mount the ones still reachable. */
static int add_extras(struct record *r, struct children_config *cfg)
{
	int n = cfg->n;

	for (int m = 0; m < r->set.n && cfg->n < CHILDREN_MAX; m++) {
		const struct persist_member *pm = &r->set.member[m];
		struct persist_state st;
		char why[128];
		int i = cfg->n;

		if (on_command_line(r, n, pm->id))
			continue;
		if (pm->kind == CHILD_REPLICATION) {
			if (add_replica(r, cfg, pm))
				return -ENOMEM;
			continue;
		}
		if (lost_record(pm->path)) {
			/* Its identity is gone: offered again, it joins anew.
			 */
			persist_remove_member(&r->set, pm->id);
			m--;
			continue;
		}
		if (load_path(pm->path, &st, why, sizeof(why)))
			continue;
		if (strcmp(st.set, r->set.set) || strcmp(st.child, pm->id)) {
			persist_clear(&st);
			continue;
		}
		if (add_extra(r, cfg, pm)) {
			persist_clear(&st);
			return -ENOMEM;
		}
		place(r, i, &st, 0, pm->path, why, sizeof(why));
		persist_clear(&st);
		cfg->n++;
	}
	return 0;
}

/*
 * A set none of whose children has a record: their trees must agree, or
 * sync_from names the one to fill the others from (they start behind,
 * for the whole tree).
 */
static int first_mount(struct record *r, const struct children_config *cfg,
		       int sync_from, char *err, size_t errlen)
{
	const char *data[CHILDREN_MAX];
	int n = 0;

	/* A witness holds digests: it is filled from the voted data. */
	for (int i = 0; i < cfg->n; i++) {
		if (cfg->kind[i] != CHILD_WITNESS) {
			data[n++] = cfg->path[i];
			continue;
		}
		r->behind[i] = r->tree[i] = true;
		snprintf(r->why[i], sizeof(r->why[i]),
			 "new witness: digests of the whole tree");
	}
	if (sync_from < 0)
		return persist_first_check(data, n, err, errlen);
	for (int i = 0; i < cfg->n; i++) {
		if (i == sync_from || cfg->kind[i] == CHILD_WITNESS)
			continue;
		r->behind[i] = r->tree[i] = true;
		snprintf(r->why[i], sizeof(r->why[i]),
			 "filled from '%s' (sync-from)", cfg->path[sync_from]);
	}
	return 0;
}

int record_scan(struct children_config *cfg, int sync_from, struct record **out,
		char *err, size_t errlen)
{
	struct persist_state *st = calloc(CHILDREN_MAX, sizeof(*st));
	struct record *r = record_new();
	int loaded[CHILDREN_MAX], best, ret = -ENOMEM;

	if (!st || !r)
		goto out;
	for (int i = 0; i < cfg->n; i++) {
		char why[128];

		loaded[i] = load_path(cfg->path[i], &st[i], why, sizeof(why));
		if (loaded[i] && loaded[i] != -ENOENT && loaded[i] != -EINVAL) {
			ret = refuse(err, errlen, "child '%s': %s",
				     cfg->path[i], why);
			goto out;
		}
	}
	best = newest(st, loaded, cfg->n);
	r->fresh_set = best < 0;
	if (r->fresh_set)
		persist_new_id(r->set.set);
	else if ((ret = persist_copy(&r->set, &st[best])))
		goto out;
	for (int i = 0; i < cfg->n; i++)
		if ((ret = place(r, i, &st[i], loaded[i], cfg->path[i], err,
				 errlen)))
			goto out;
	if (r->fresh_set)
		ret = first_mount(r, cfg, sync_from, err, errlen);
	else if (sync_from >= 0)
		ret = refuse(err, errlen,
			     "sync-from=%s is only for a first mount: the "
			     "children already have .quorumfs records%s",
			     cfg->path[sync_from], "");
	else
		ret = add_extras(r, cfg);
	if (!ret) {
		*out = r;
		r = NULL;
	}
out:
	for (int i = 0; st && i < CHILDREN_MAX; i++)
		persist_clear(&st[i]);
	free(st);
	record_free(r);
	return ret;
}

/* ---- writing to the children's records ---- */

enum record_op {
	RECORD_STATE,	  /* save text[i] as the state */
	RECORD_APPEND,	  /* append text[i] to the intent log */
	RECORD_LOG_RESET, /* empty the intent log */
	RECORD_SYNC,	  /* syncfs() the child's file system */
	RECORD_FINDINGS,  /* save text[i] as the scrub's findings */
};

/* One operation on some children of a view (those with text[i], or
 * marked in the mask for the operations without text); the request owns
 * the texts. */
struct record_write {
	enum record_op op;
	uint32_t mask;		  /* by view index: children to act on */
	char *text[CHILDREN_MAX]; /* by view index */
};

/* syncfs() wants a real handle, not the O_PATH one of the root. */
static int sync_root(int root)
{
	int fd = openat(root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int ret;

	if (fd < 0)
		return -errno;
	ret = syncfs(fd) ? -errno : 0;
	close(fd);
	return ret;
}

static int record_write_body(struct child_request *rq, int i)
{
	struct record_write *w = rq->arg;
	int root = child_root_fd(rq->view->child[i]);

	if (!(w->mask & (1u << i)))
		return 0;
	switch (w->op) {
	case RECORD_STATE:
		return persist_save_text(root, w->text[i]);
	case RECORD_APPEND:
		return persist_log_append(root, w->text[i]);
	case RECORD_LOG_RESET:
		return persist_log_reset(root);
	case RECORD_SYNC:
		return sync_root(root);
	case RECORD_FINDINGS:
		return persist_save_findings(root, w->text[i]);
	}
	return -EINVAL;
}

static void record_write_release(struct child_request *rq)
{
	struct record_write *w = rq->arg;

	for (int i = 0; i < CHILDREN_MAX; i++)
		free(w->text[i]);
}

static struct child_request *write_new(const struct child_view *v,
				       enum record_op op)
{
	struct child_request *rq = child_request_new(
		v, sizeof(struct record_write), record_write_release);

	if (rq)
		((struct record_write *)rq->arg)->op = op;
	return rq;
}

/* Run the writes, each bounded; r->lock held. The request is kept for
 * record_unlock() to report its late children. Returns 0, or the first
 * child's error (a caller may care about one child only). */
static int write_run_locked(struct record *r, struct child_request *rq)
{
	const struct record_write *w = rq->arg;
	int ret = 0;

	child_request_run(rq, r->pool, r->wd, record_write_body);
	for (int i = 0; i < rq->view->n; i++) {
		if (!(w->mask & (1u << i)))
			continue;
		r->write_error[child_slot(rq->view->child[i])] = rq->ret[i];
		if (!ret)
			ret = rq->ret[i];
	}
	if (rq->late && r->npending < RECORD_PENDING)
		r->pending[r->npending++] = rq;
	else
		child_request_put(rq);
	return ret;
}

/* op on the voting children of v, each bounded; r->lock held. */
static int voters_locked(struct record *r, const struct child_view *v,
			 enum record_op op)
{
	struct child_request *rq = write_new(v, op);

	if (!rq)
		return -ENOMEM;
	for (int i = 0; i < v->n; i++)
		if (v->votes[i])
			((struct record_write *)rq->arg)->mask |= 1u << i;
	return write_run_locked(r, rq);
}

/* Drop the lock, then tell the watchdog of the children a write gave up
 * on (its callback fails them, which comes back here). */
static void record_unlock(struct record *r)
{
	struct child_request *late[RECORD_PENDING];
	int n = r->npending;

	memcpy(late, r->pending, sizeof(late));
	r->npending = 0;
	atomic_store(&r->members, r->set.n);
	pthread_mutex_unlock(&r->lock);
	for (int i = 0; i < n; i++) {
		watchdog_report(r->wd, late[i]);
		child_request_put(late[i]);
	}
}

void record_set_io(struct record *r, struct pool *pool, struct watchdog *wd)
{
	pthread_mutex_lock(&r->lock);
	r->pool = pool;
	r->wd = wd;
	pthread_mutex_unlock(&r->lock);
}

/* c's record at generation gen (the set's own fields otherwise), as the
 * text of its state file; NULL when out of memory. */
static char *state_text(struct record *r, struct child *c, uint64_t gen,
			bool clean)
{
	struct persist_state st = r->set; /* shallow: members are shared */

	memcpy(st.child, r->id[child_slot(c)], sizeof(st.child));
	st.generation = gen;
	st.clean = clean;
	return persist_state_text(&st);
}

/* Save the state at gen on every voting child of v, or on c alone. */
static int save_locked(struct record *r, const struct child_view *v,
		       struct child *only, uint64_t gen, bool clean)
{
	struct child_request *rq = write_new(v, RECORD_STATE);
	struct record_write *w;

	if (!rq)
		return -ENOMEM;
	w = rq->arg;
	for (int i = 0; i < v->n; i++) {
		if (only ? v->child[i] != only : !v->votes[i])
			continue;
		w->text[i] = state_text(r, v->child[i], gen, clean);
		if (!w->text[i]) {
			child_request_put(rq);
			return -ENOMEM;
		}
		w->mask |= 1u << i;
	}
	return write_run_locked(r, rq);
}

/* c alone, whether in the view or not (a child just added or found). */
static int save_child(struct record *r, struct child *c, uint64_t gen,
		      bool clean)
{
	char *text = state_text(r, c, gen, clean);
	int ret = text ? persist_save_text(child_root_fd(c), text) : -ENOMEM;

	free(text);
	return ret;
}

/* A new generation on every voting child; announcements start over. */
static void bump_locked(struct record *r, struct child_set *set)
{
	const struct child_view *v = children_view_get(set);

	r->set.generation++;
	atomic_store(&r->generation, r->set.generation);
	r->nannounced = 0;
	r->tree_announced = false;
	save_locked(r, v, NULL, r->set.generation, false);
	children_view_put(v);
}

static int member_locked(struct record *r, struct child *c)
{
	const char *id = r->id[child_slot(c)];

	if (persist_member(&r->set, id))
		return 0;
	return persist_add_member(&r->set, id, child_name(c), child_path(c),
				  child_kind(c));
}

static void mark_behind(struct record *r, struct child_set *set)
{
	struct child *m[CHILDREN_MAX];
	int n = children_members(set, m);

	for (int i = 0; i < n; i++) {
		int slot = child_slot(m[i]);

		if (r->behind[slot])
			children_set_state(set, m[i],
					   r->failed[slot] ? CHILD_FAILED
							   : CHILD_STALE,
					   r->why[slot]);
		member_locked(r, m[i]);
		/* A new child is a member from now on, behind everyone. */
		if (r->behind[slot] && !r->gen[slot] &&
		    child_kind(m[i]) != CHILD_REPLICATION)
			save_child(r, m[i], 0, false);
		child_put(m[i]);
	}
}

/*
 * A child whose record could not be written at mount (a read-only file
 * system) cannot take a write either: it is failed at once, with the
 * reason, rather than at the first write. Fewer than threshold left
 * refuses the mount.
 */
static int fail_unwritable_locked(struct record *r, struct child_set *set,
				  char *err, size_t errlen)
{
	const struct child_view *v = children_view_get(set);
	int voters = v->voters, threshold = v->threshold;
	char why[200];

	for (int i = 0; i < v->n; i++) {
		int slot = child_slot(v->child[i]), e = r->write_error[slot];

		if (!v->votes[i] || !e)
			continue;
		snprintf(why, sizeof(why),
			 "cannot write its .quorumfs record: %s", strerror(-e));
		persist_set_failed(&r->set, r->id[slot], why);
		r->behind[slot] = r->failed[slot] = true;
		children_set_state(set, v->child[i], CHILD_FAILED, why);
		voters--;
	}
	children_view_put(v);
	if (voters >= threshold)
		return 0;
	snprintf(err, errlen,
		 "only %d children can write their .quorumfs record, below the "
		 "threshold %d; see the failed children's reasons",
		 voters, threshold);
	return -EINVAL;
}

int record_start(struct record *r, struct child_set *set, char *err,
		 size_t errlen)
{
	const struct child_view *v;
	int ret = 0;

	pthread_mutex_lock(&r->lock);
	mark_behind(r, set);
	v = children_view_get(set);
	if (v->voters < v->threshold) {
		snprintf(err, errlen,
			 "only %d children are in step with the set "
			 "(generation %llu), below the threshold %d; see "
			 "their .quorumfs/state",
			 v->voters, (unsigned long long)r->set.generation,
			 v->threshold);
		ret = -EINVAL;
	}
	children_view_put(v);
	if (!ret) {
		if (r->fresh_set)
			r->set.log_since = 1;
		bump_locked(r, set);
		ret = fail_unwritable_locked(r, set, err, errlen);
	}
	record_unlock(r);
	return ret;
}

void record_unmount(struct record *r, struct child_set *set)
{
	const struct child_view *v = children_view_get(set);
	struct child *m[CHILDREN_MAX];
	int n = children_members(set, m);
	bool all = v->voters == n && n == r->set.n;

	pthread_mutex_lock(&r->lock);
	if (voters_locked(r, v, RECORD_SYNC))
		all = false;
	if (all && !voters_locked(r, v, RECORD_LOG_RESET))
		r->set.log_since = r->set.generation;
	save_locked(r, v, NULL, r->set.generation, true);
	record_unlock(r);
	for (int i = 0; i < n; i++)
		child_put(m[i]);
	children_view_put(v);
}

/* ---- runtime ---- */

void record_demoted(struct record *r, struct child_set *set)
{
	pthread_mutex_lock(&r->lock);
	bump_locked(r, set);
	record_unlock(r);
}

void record_promoted(struct record *r, struct child_set *set, struct child *c)
{
	const struct child_view *v = children_view_get(set);

	pthread_mutex_lock(&r->lock);
	r->behind[child_slot(c)] = false;
	r->tree[child_slot(c)] = false;
	r->failed[child_slot(c)] = false;
	persist_set_failed(&r->set, r->id[child_slot(c)], NULL);
	if (child_kind(c) != CHILD_REPLICATION)
		save_locked(r, v, c, r->set.generation, false);
	else /* its membership is in the data children's records */
		bump_locked(r, set);
	record_unlock(r);
	children_view_put(v);
}

int record_added(struct record *r, struct child_set *set, struct child *c)
{
	int slot = child_slot(c), ret;

	pthread_mutex_lock(&r->lock);
	persist_new_id(r->id[slot]);
	r->behind[slot] = true;
	r->tree[slot] = true;
	r->gen[slot] = 0;
	/* Enrolled anew: an absent member that had its path is gone. */
	forget_path(&r->set, child_path(c));
	ret = member_locked(r, c);
	if (!ret && child_kind(c) != CHILD_REPLICATION) {
		const struct child_view *v = children_view_get(set);

		ret = save_locked(r, v, c, 0, false);
		children_view_put(v);
	}
	if (!ret)
		bump_locked(r, set);
	record_unlock(r);
	return ret;
}

void record_removed(struct record *r, struct child_set *set, struct child *c)
{
	int slot = child_slot(c);

	pthread_mutex_lock(&r->lock);
	persist_remove_member(&r->set, r->id[slot]);
	bump_locked(r, set);
	record_unlock(r);
}

static bool announced_locked(const struct record *r, uint64_t id,
			     int64_t region)
{
	for (size_t i = 0; i < r->nannounced; i++)
		if (r->announced[i].region == region &&
		    r->announced[i].id == id)
			return true;
	return false;
}

bool record_announced(struct record *r, uint64_t id, off_t off, off_t len)
{
	bool all = true;

	pthread_mutex_lock(&r->lock);
	for (int64_t k = off / PERSIST_REGION;
	     all && k <= (off + (len ? len : 1) - 1) / PERSIST_REGION; k++)
		all = announced_locked(r, id, k);
	pthread_mutex_unlock(&r->lock);
	return all;
}

/*
 * Lines on every voting child's log, each append bounded: a child that
 * cannot take them is left to fail the change itself, a child that does
 * not answer is failed (record_unlock). Each line ends in a newline and
 * all go in one append: a torn line is only ever the last, which
 * persist_log_missed() ignores.
 */
static void append_locked(struct record *r, struct child_set *set,
			  const char *lines)
{
	const struct child_view *v = children_view_get(set);
	struct child_request *rq = write_new(v, RECORD_APPEND);
	struct record_write *w = rq ? rq->arg : NULL;

	for (int i = 0; w && i < v->n; i++) {
		if (v->votes[i] && (w->text[i] = strdup(lines)))
			w->mask |= 1u << i;
	}
	if (rq)
		write_run_locked(r, rq);
	children_view_put(v);
}

/* o as one line of the log, added to *lines (grown; NULL on failure). */
static void add_line(char **lines, struct json_object *o)
{
	char *grown = NULL;

	if (*lines &&
	    asprintf(&grown, "%s%s\n", *lines,
		     json_object_to_json_string_ext(
			     o, JSON_C_TO_STRING_PLAIN |
					JSON_C_TO_STRING_NOSLASHESCAPE)) < 0)
		grown = NULL;
	free(*lines);
	*lines = grown;
	json_object_put(o);
}

static void remember_locked(struct record *r, uint64_t id, int64_t region)
{
	struct announced *a;

	if (r->nannounced == ANNOUNCED_MAX)
		r->nannounced = 0; /* forgetting only costs a repeated line */
	if (r->nannounced % 256 == 0) {
		a = realloc(r->announced, (r->nannounced + 256) * sizeof(*a));
		if (!a)
			return;
		r->announced = a;
	}
	r->announced[r->nannounced++] =
		(struct announced){.id = id, .region = region};
}

void record_announce(struct record *r, struct child_set *set, uint64_t id,
		     const char *path, off_t off, off_t len)
{
	char *lines = strdup("");
	bool any = false;

	pthread_mutex_lock(&r->lock);
	for (int64_t k = off / PERSIST_REGION;
	     k <= (off + (len ? len : 1) - 1) / PERSIST_REGION; k++) {
		struct json_object *o;

		if (announced_locked(r, id, k))
			continue;
		o = json_object_new_object();
		json_object_object_add(
			o, "g",
			json_object_new_int64((int64_t)r->set.generation));
		json_object_object_add(o, "p", json_object_new_string(path));
		json_object_object_add(o, "r", json_object_new_int64(k));
		add_line(&lines, o);
		remember_locked(r, id, k);
		any = true;
	}
	if (any && lines)
		append_locked(r, set, lines);
	record_unlock(r);
	free(lines);
}

void record_announce_entry(struct record *r, struct child_set *set, uint64_t id,
			   const char *path, bool listing)
{
	/* Entries share the cache of regions, under regions no file has. */
	int64_t key = listing ? -1 : -2;
	struct json_object *o;
	char *lines = strdup("");

	pthread_mutex_lock(&r->lock);
	if (!announced_locked(r, id, key)) {
		o = json_object_new_object();
		json_object_object_add(
			o, "g",
			json_object_new_int64((int64_t)r->set.generation));
		json_object_object_add(o, listing ? "d" : "e",
				       json_object_new_string(path));
		add_line(&lines, o);
		if (lines)
			append_locked(r, set, lines);
		remember_locked(r, id, key);
	}
	record_unlock(r);
	free(lines);
}

void record_announce_move(struct record *r, struct child_set *set,
			  const char *from, const char *to, bool exchange)
{
	struct json_object *o = json_object_new_object();
	char *lines = strdup("");

	pthread_mutex_lock(&r->lock);
	json_object_object_add(
		o, "g", json_object_new_int64((int64_t)r->set.generation));
	json_object_object_add(o, "mv", json_object_new_string(from));
	json_object_object_add(o, "to", json_object_new_string(to));
	if (exchange)
		json_object_object_add(o, "x", json_object_new_boolean(true));
	add_line(&lines, o);
	if (lines)
		append_locked(r, set, lines);
	record_unlock(r);
	free(lines);
}

void record_announce_tree(struct record *r, struct child_set *set)
{
	const struct child_view *v = children_view_get(set);
	bool all = v->voters == r->set.n;
	struct json_object *o;
	char *lines = strdup("");

	children_view_put(v);
	pthread_mutex_lock(&r->lock);
	if (!all && !r->tree_announced) {
		o = json_object_new_object();
		json_object_object_add(
			o, "g",
			json_object_new_int64((int64_t)r->set.generation));
		json_object_object_add(o, "tree", json_object_new_boolean(1));
		add_line(&lines, o);
		if (lines)
			append_locked(r, set, lines);
		r->tree_announced = true;
	}
	record_unlock(r);
	free(lines);
}

/* ---- reading the voters' records, bounded like the writes ---- */

enum record_read_op {
	READ_LOG,      /* the intent log's lines since since */
	READ_FINDINGS, /* the last scrub's findings */
};

/* One voter's answer. A read given up on at io-timeout may still be
 * filling it when the caller has moved on: the request owns it. */
struct record_read {
	enum record_read_op op;
	int only; /* the view index read */
	uint64_t since;
	struct persist_missed missed;
	char *text;
};

static int record_read_body(struct child_request *rq, int i)
{
	struct record_read *rd = rq->arg;
	int root = child_root_fd(rq->view->child[i]);

	if (i != rd->only)
		return 0;
	if (rd->op == READ_LOG)
		return persist_log_missed(root, rd->since, &rd->missed);
	return persist_load_findings(root, &rd->text);
}

static void record_read_release(struct child_request *rq)
{
	struct record_read *rd = rq->arg;

	persist_missed_free(&rd->missed);
	free(rd->text);
}

/*
 * op on the voters of v, one after the other until one answers (0, or
 * with any anything but -ENOENT), each read on the pool and bounded by
 * io-timeout: a voter whose disk hangs is failed (the watchdog hears of
 * it) and the next one is asked, instead of the read holding a resync's
 * start, the settle or heal-info for ever. Returns the request of the
 * voter that answered, its answer in ret[only], or NULL.
 */
static struct child_request *read_voters(struct record *r,
					 const struct child_view *v,
					 enum record_read_op op, uint64_t since,
					 bool any)
{
	const struct watchdog *wd;
	struct pool *pool;

	pthread_mutex_lock(&r->lock);
	pool = r->pool;
	wd = r->wd;
	pthread_mutex_unlock(&r->lock);
	for (int i = 0; i < v->n; i++) {
		struct child_request *rq;
		struct record_read *rd;

		if (!v->votes[i])
			continue;
		rq = child_request_new(v, sizeof(*rd), record_read_release);
		if (!rq)
			return NULL;
		rd = rq->arg;
		*rd = (struct record_read){.op = op, .only = i, .since = since};
		child_request_run(rq, pool, wd, record_read_body);
		if (rq->late)
			watchdog_report(wd, rq);
		else if (any ? rq->ret[i] != -ENOENT : rq->ret[i] == 0)
			return rq;
		child_request_put(rq);
	}
	return NULL;
}

/* Move the log a voter answered with into *m. */
static void take_missed(struct child_request *rq, struct persist_missed *m)
{
	struct record_read *rd = rq->arg;

	*m = rd->missed;
	memset(&rd->missed, 0, sizeof(rd->missed));
}

int record_missed(struct record *r, struct child_set *set, struct child *c,
		  struct persist_missed *m)
{
	const struct child_view *v = children_view_get(set);
	struct child_request *rq = NULL;
	int slot = child_slot(c);
	uint64_t since;
	bool tree;

	pthread_mutex_lock(&r->lock);
	since = r->gen[slot];
	tree = r->tree[slot];
	pthread_mutex_unlock(&r->lock);
	memset(m, 0, sizeof(*m));
	/* A new child, or a log that no longer reaches back far enough. */
	if (tree || since == 0 || since < r->set.log_since)
		m->tree = true;
	if (!m->tree && (rq = read_voters(r, v, READ_LOG, since, false)))
		take_missed(rq, m);
	else
		m->tree = true;
	if (rq)
		child_request_put(rq);
	children_view_put(v);
	return 0;
}

void record_set_behind(struct record *r, struct child *c, bool tree)
{
	int slot = child_slot(c);

	pthread_mutex_lock(&r->lock);
	if (!r->behind[slot]) {
		r->behind[slot] = true;
		r->gen[slot] = r->set.generation;
	}
	r->tree[slot] |= tree;
	pthread_mutex_unlock(&r->lock);
}

struct json_object *record_status(struct record *r)
{
	struct json_object *o = json_object_new_object();

	/* Without the lock: a write to a hung child may hold it for an
	 * io-timeout, and the status must answer at once. The set's id is
	 * fixed once the record is read. */
	json_object_object_add(o, "set", json_object_new_string(r->set.set));
	json_object_object_add(
		o, "generation",
		json_object_new_int64((int64_t)atomic_load(&r->generation)));
	json_object_object_add(o, "members",
			       json_object_new_int(atomic_load(&r->members)));
	return o;
}

int record_check_new(struct record *r, const char *path, char *err,
		     size_t errlen)
{
	struct persist_state st;
	char why[128];
	int ret = load_path(path, &st, why, sizeof(why));

	if (ret)
		return 0; /* no record, or an unreadable one: a new child */
	pthread_mutex_lock(&r->lock);
	ret = strcmp(st.set, r->set.set)
		      ? refuse(err, errlen,
			       "'%s' belongs to another quorumfs set "
			       "(%s/.quorumfs "
			       "names a different set); refusing to mix sets",
			       path, path)
		      : 0;
	pthread_mutex_unlock(&r->lock);
	persist_clear(&st);
	return ret;
}

void record_set_failed(struct record *r, struct child *c, const char *reason)
{
	int slot = child_slot(c);

	pthread_mutex_lock(&r->lock);
	r->failed[slot] = true;
	persist_set_failed(&r->set, r->id[slot], reason);
	pthread_mutex_unlock(&r->lock);
}

void record_rules(struct record *r, struct persist_rules *out)
{
	pthread_mutex_lock(&r->lock);
	*out = r->set.rules;
	pthread_mutex_unlock(&r->lock);
}

void record_set_rules(struct record *r, struct child_set *set,
		      const struct persist_rules *rules)
{
	const struct child_view *v = children_view_get(set);

	pthread_mutex_lock(&r->lock);
	r->set.rules = *rules;
	save_locked(r, v, NULL, r->set.generation, false);
	record_unlock(r);
	children_view_put(v);
}

int record_policies(struct record *r, struct persist_policy *out)
{
	int n;

	pthread_mutex_lock(&r->lock);
	n = r->set.npolicies;
	memcpy(out, r->set.policy, n * sizeof(*out));
	pthread_mutex_unlock(&r->lock);
	return n;
}

void record_set_policies(struct record *r, struct child_set *set,
			 const struct persist_policy *p, int n)
{
	const struct child_view *v = children_view_get(set);

	pthread_mutex_lock(&r->lock);
	r->set.npolicies = n;
	memcpy(r->set.policy, p, n * sizeof(*p));
	save_locked(r, v, NULL, r->set.generation, false);
	record_unlock(r);
	children_view_put(v);
}

bool record_unclean(struct record *r)
{
	return r->unclean;
}

int record_in_flight(struct record *r, struct child_set *set,
		     struct persist_missed *m)
{
	const struct child_view *v = children_view_get(set);
	struct child_request *rq =
		read_voters(r, v, READ_LOG, r->set.log_since, true);
	int ret = -ENOENT;

	memset(m, 0, sizeof(*m));
	if (rq) {
		ret = rq->ret[((struct record_read *)rq->arg)->only];
		take_missed(rq, m);
		child_request_put(rq);
	}
	children_view_put(v);
	return ret;
}

uint64_t record_generation(struct record *r)
{
	return atomic_load(&r->generation);
}

int record_save_findings(struct record *r, struct child_set *set,
			 const char *text)
{
	const struct child_view *v = children_view_get(set);
	struct child_request *rq;
	struct record_write *w;
	int ret = -ENOMEM;

	pthread_mutex_lock(&r->lock);
	rq = write_new(v, RECORD_FINDINGS);
	for (int i = 0; rq && i < v->n; i++) {
		w = rq->arg;
		if (!v->votes[i])
			continue;
		w->text[i] = strdup(text);
		if (!w->text[i]) {
			child_request_put(rq);
			rq = NULL;
		}
		w->mask |= 1u << i;
	}
	if (rq)
		ret = write_run_locked(r, rq);
	record_unlock(r);
	children_view_put(v);
	return ret;
}

int record_load_findings(struct record *r, struct child_set *set, char **text)
{
	const struct child_view *v = children_view_get(set);
	struct child_request *rq = read_voters(r, v, READ_FINDINGS, 0, false);

	*text = NULL;
	if (rq) {
		*text = ((struct record_read *)rq->arg)->text;
		((struct record_read *)rq->arg)->text = NULL;
		child_request_put(rq);
	}
	children_view_put(v);
	return rq ? 0 : -ENOENT;
}
