/*
 * The child set and its views.
 *
 * The set keeps its members (every child, whatever its state) and the
 * voting rules under set->lock, and publishes them as immutable views.
 * Changing anything means building a new view and swapping it in; an
 * operation keeps the view it took until it ends.
 *
 * Lock order: set->lock, then set->drain_lock (a leaf that only guards the
 * drain's condition variable). Events are queued without blocking.
 *
 * Lifetimes: a child is reference-counted. The set's member list holds
 * one reference and every view naming the child holds one, so a child
 * removed from the set lives on until the last operation that could still
 * touch it has finished. child->views counts the live views naming it:
 * `remove` waits for it to reach zero (the drain).
 */
#define _GNU_SOURCE
#include "children/children.h"
#include "children/children_i.h"

#include <errno.h>
#include <ftw.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/vfs.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "events/events.h"

/* The view callers see, plus what its release needs. Every live view is
 * on the set's list (under drain_lock), oldest first, for the barrier. */
struct view_holder {
	struct child_view view;
	atomic_int refs;
	struct child_set *set;
	uint64_t serial;
	struct view_holder *prev, *next; /* guarded by set->drain_lock */
	/* A view with other rules (children_view_rules) holds the view it
	 * was made from, which stands for it in the drain and the barrier;
	 * it is in no list of its own. */
	struct view_holder *base;
};

/* The voting rules in force, copied into every view. */
struct set_rules {
	int threshold;
	enum read_pattern read_pattern;
	bool rewrite_corrupted;
	bool blkverify;
};

struct child_set {
	pthread_mutex_t lock;
	pthread_mutex_t drain_lock;
	pthread_cond_t drained;	  /* a view was freed; under drain_lock */
	struct view_holder *live; /* every live view, oldest first; ditto */
	uint64_t serial;	  /* the newest view's; under lock */
	struct event_log *log;
	/* All guarded by lock: */
	struct view_holder *current;
	/* The highest threshold a directory's policy asks for (0: none),
	 * and that directory, for the refusals it causes. */
	int floor;
	char floor_dir[256];
	int nmembers;
	struct child *member[CHILDREN_MAX];
	bool slot_used[CHILDREN_MAX];
	struct set_rules rules;
};

static int fail(char *err, size_t errlen, int ret, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return ret;
}

void child_get(struct child *c)
{
	atomic_fetch_add(&c->refs, 1);
}

void child_put(struct child *c)
{
	if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	if (c->root_fd >= 0)
		close(c->root_fd);
	if (c->lock_fd >= 0)
		close(c->lock_fd);
	child_latch_free(c);
	free(c->name);
	free(c->path);
	free(c);
}

/*
 * One mount a child: a second daemon over the same directory would write
 * its records and its data behind this one's back. A file system that
 * has no flock (some network ones) cannot tell, and is let be.
 */
static int lock_root(struct child *c, const char *path)
{
	c->lock_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c->lock_fd < 0)
		return -errno;
	if (flock(c->lock_fd, LOCK_EX | LOCK_NB) == 0)
		return 0;
	if (errno == EWOULDBLOCK)
		return -EBUSY;
	return 0;
}

/* FUSE (sshfs), NFS, CephFS, SMB: the file systems a child on another
 * machine lives on. */
static bool is_remote(int fd)
{
	static const long magic[] = {0x65735546, 0x6969, 0x00c36400, 0xfe534d42,
				     (long)0xff534d42};
	struct statfs st;

	if (fstatfs(fd, &st))
		return false;
	for (size_t i = 0; i < sizeof(magic) / sizeof(magic[0]); i++)
		if ((long)st.f_type == magic[i])
			return true;
	return false;
}

static int child_new(const char *path, const char *name, int slot,
		     enum child_kind kind, enum child_state state,
		     struct child **out)
{
	struct child *c;
	int ret = 0;

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	atomic_init(&c->refs, 1);
	atomic_init(&c->state, state);
	atomic_init(&c->stage, REPL_NONE);
	c->slot = slot;
	c->kind = kind;
	c->root_fd = c->lock_fd = -1;
	if (kind == CHILD_REPLICATION && (ret = child_latch_new(c)))
		goto out;
	c->root_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (c->root_fd < 0) {
		ret = -errno;
		goto out;
	}
	ret = lock_root(c, path);
	if (ret)
		goto out;
	c->remote = is_remote(c->root_fd);
	c->path = strdup(path);
	c->name = strdup(name ? name : path);
	if (!c->path || !c->name) {
		ret = -ENOMEM;
		goto out;
	}
	*out = c;
	c = NULL;
out:
	child_put(c);
	return ret;
}

const char *child_name(const struct child *c)
{
	return c->name;
}

const char *child_path(const struct child *c)
{
	return c->path;
}

int child_root_fd(const struct child *c)
{
	return c->root_fd;
}

int child_slot(const struct child *c)
{
	return c->slot;
}

enum child_state child_state(const struct child *c)
{
	return atomic_load(&c->state);
}

enum child_kind child_kind(const struct child *c)
{
	return c->kind;
}

const char *child_kind_name(enum child_kind k)
{
	static const char *const names[] = {"data", "replication", "witness"};

	return names[k];
}

bool child_votes(const struct child *c)
{
	return c->kind != CHILD_REPLICATION && child_state(c) == CHILD_OK;
}

const char *child_state_name(enum child_state s)
{
	static const char *const names[] = {"ok", "syncing", "failed", "stale"};

	return names[s];
}

void child_count_error(struct child *c, enum child_op op)
{
	atomic_fetch_add_explicit(&c->errors[op], 1, memory_order_relaxed);
}

uint64_t child_errors(const struct child *c, enum child_op op)
{
	return atomic_load_explicit(&c->errors[op], memory_order_relaxed);
}

int child_orphans(const struct child *c)
{
	return atomic_load(&c->orphans);
}

void child_orphan(struct child *c, int delta)
{
	atomic_fetch_add(&c->orphans, delta);
}

int child_error_streak(struct child *c, bool failed)
{
	if (failed)
		return atomic_fetch_add(&c->streak, 1) + 1;
	/* Reads succeed far more often than not: write only to end a run. */
	if (atomic_load_explicit(&c->streak, memory_order_relaxed))
		atomic_store(&c->streak, 0);
	return 0;
}

void child_set_progress(struct child *c, uint64_t bytes_done,
			uint64_t bytes_total, uint64_t files_done,
			uint64_t files_total)
{
	atomic_store(&c->bytes_done, bytes_done);
	atomic_store(&c->bytes_total, bytes_total);
	atomic_store(&c->files_done, files_done);
	atomic_store(&c->files_total, files_total);
}

void children_deadline(clockid_t clock, int ms, struct timespec *out)
{
	clock_gettime(clock, out);
	out->tv_sec += ms / 1000;
	out->tv_nsec += (long)(ms % 1000) * 1000000;
	if (out->tv_nsec >= 1000000000) {
		out->tv_sec++;
		out->tv_nsec -= 1000000000;
	}
}

void child_proc_path(int fd, char buf[64])
{
	snprintf(buf, 64, "/proc/self/fd/%d", fd);
}

int child_sync_dir(int dfd, const char *name, bool datasync)
{
	int fd = openat(dfd, name,
			O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int ret;

	if (fd < 0)
		return -errno;
	ret = child_result(datasync ? fdatasync(fd) : fsync(fd));
	close(fd);
	return ret;
}

/* ---- views ---- */

static void view_free(struct view_holder *h)
{
	struct child_set *set = h->set;

	if (h->base) {
		children_view_put(&h->base->view);
		free(h);
		return;
	}
	for (int i = 0; i < h->view.n; i++) {
		atomic_fetch_sub(&h->view.child[i]->views, 1);
		child_put(h->view.child[i]);
	}
	pthread_mutex_lock(&set->drain_lock);
	if (h->prev)
		h->prev->next = h->next;
	else
		set->live = h->next;
	if (h->next)
		h->next->prev = h->prev;
	pthread_cond_broadcast(&set->drained);
	pthread_mutex_unlock(&set->drain_lock);
	free(h);
}

void children_view_put(const struct child_view *view)
{
	struct view_holder *h = (struct view_holder *)view;

	if (h && atomic_fetch_sub(&h->refs, 1) == 1)
		view_free(h);
}

const struct child_view *children_view_hold(const struct child_view *view)
{
	struct view_holder *h = (struct view_holder *)view;

	atomic_fetch_add(&h->refs, 1);
	return view;
}

const struct child_view *children_view_rules(const struct child_view *base,
					     int threshold,
					     enum read_pattern read_pattern,
					     bool rewrite_corrupted)
{
	struct view_holder *h = calloc(1, sizeof(*h));

	if (!h)
		return children_view_hold(base);
	atomic_init(&h->refs, 1);
	h->base = (struct view_holder *)children_view_hold(base);
	h->set = h->base->set;
	h->view = *base;
	h->view.threshold = threshold;
	h->view.read_pattern = read_pattern;
	h->view.rewrite_corrupted = rewrite_corrupted;
	return &h->view;
}

const struct child_view *children_view_get(struct child_set *set)
{
	struct view_holder *h;

	pthread_mutex_lock(&set->lock);
	h = set->current;
	atomic_fetch_add(&h->refs, 1);
	pthread_mutex_unlock(&set->lock);
	return &h->view;
}

/* Ok and syncing children take every change; a replication child only
 * until its stream ends. */
static bool receives_io(const struct child *c)
{
	enum child_state s = child_state(c);

	if (c->kind == CHILD_REPLICATION && child_stage(c) == REPL_DONE)
		return false;
	return s == CHILD_OK || s == CHILD_SYNCING;
}

/* Put h at the young end of the live list; set->lock held. */
static void link_live_locked(struct child_set *set, struct view_holder *h)
{
	struct view_holder **end = &set->live, *prev = NULL;

	h->serial = ++set->serial;
	pthread_mutex_lock(&set->drain_lock);
	while (*end) {
		prev = *end;
		end = &(*end)->next;
	}
	h->prev = prev;
	*end = h;
	pthread_mutex_unlock(&set->drain_lock);
}

/*
 * Build a view from the members and rules and make it current. Called with
 * set->lock held. On allocation failure the old view stays: the change is
 * then refused by the caller.
 */
static int publish_locked(struct child_set *set)
{
	struct view_holder *h = calloc(1, sizeof(*h)), *old = set->current;

	if (!h)
		return -ENOMEM;
	atomic_init(&h->refs, 1);
	h->set = set;
	for (int i = 0; i < set->nmembers; i++) {
		struct child *c = set->member[i];

		if (!receives_io(c))
			continue;
		child_get(c);
		atomic_fetch_add(&c->views, 1);
		h->view.votes[h->view.n] = child_votes(c);
		h->view.voters += child_votes(c);
		h->view.witness[h->view.n] = c->kind == CHILD_WITNESS;
		h->view.witnesses += c->kind == CHILD_WITNESS;
		h->view.child[h->view.n++] = c;
	}
	h->view.threshold = set->rules.threshold;
	h->view.read_pattern = set->rules.read_pattern;
	h->view.rewrite_corrupted = set->rules.rewrite_corrupted;
	h->view.blkverify = set->rules.blkverify;
	link_live_locked(set, h);
	set->current = h;
	if (old && atomic_fetch_sub(&old->refs, 1) == 1)
		view_free(old);
	return 0;
}

/* ---- the set ---- */

/* Why child path cannot be opened, for the operator. */
static void open_failed(char *err, size_t errlen, const char *path, int ret)
{
	if (ret == -EBUSY)
		snprintf(err, errlen,
			 "child '%s' is in use by another quorumfs mount",
			 path);
	else
		snprintf(err, errlen, "cannot open child '%s': %s", path,
			 strerror(-ret));
}

int children_new(const struct children_config *cfg, struct child_set **out,
		 char *err, size_t errlen)
{
	struct child_set *set = calloc(1, sizeof(*set));
	int ret = 0;

	if (!set)
		return -ENOMEM;
	pthread_mutex_init(&set->lock, NULL);
	pthread_mutex_init(&set->drain_lock, NULL);
	pthread_cond_init(&set->drained, NULL);
	for (int i = 0; i < cfg->n && !ret; i++) {
		ret = child_new(cfg->path[i], cfg->name[i], i, cfg->kind[i],
				CHILD_OK, &set->member[i]);
		if (!ret) {
			set->slot_used[i] = true;
			set->nmembers++;
		} else {
			open_failed(err, errlen, cfg->path[i], ret);
		}
	}
	set->rules.threshold = cfg->threshold;
	set->rules.read_pattern = cfg->read_pattern;
	set->rules.rewrite_corrupted = cfg->rewrite_corrupted;
	set->rules.blkverify = cfg->blkverify;
	if (!ret) {
		pthread_mutex_lock(&set->lock);
		ret = publish_locked(set);
		pthread_mutex_unlock(&set->lock);
	}
	if (ret) {
		children_free(set);
		return ret;
	}
	*out = set;
	return 0;
}

void children_free(struct child_set *set)
{
	if (!set)
		return;
	if (set->current)
		children_view_put(&set->current->view);
	for (int i = 0; i < set->nmembers; i++)
		child_put(set->member[i]);
	pthread_cond_destroy(&set->drained);
	pthread_mutex_destroy(&set->drain_lock);
	pthread_mutex_destroy(&set->lock);
	free(set);
}

void children_set_log(struct child_set *set, struct event_log *log)
{
	set->log = log;
}

/* Whether a view older than serial is still alive; drain_lock held. */
static bool older_live_locked(const struct child_set *set, uint64_t serial)
{
	return set->live && set->live->serial < serial;
}

int children_barrier(struct child_set *set, int ms)
{
	struct timespec deadline;
	uint64_t serial;
	int ret = 0;

	pthread_mutex_lock(&set->lock);
	ret = publish_locked(set);
	serial = set->serial;
	pthread_mutex_unlock(&set->lock);
	if (ret)
		return ret;
	children_deadline(CLOCK_REALTIME, ms, &deadline);
	pthread_mutex_lock(&set->drain_lock);
	while (older_live_locked(set, serial) && !ret)
		if (pthread_cond_timedwait(&set->drained, &set->drain_lock,
					   &deadline) == ETIMEDOUT)
			ret = older_live_locked(set, serial) ? -ETIMEDOUT : 0;
	pthread_mutex_unlock(&set->drain_lock);
	return ret;
}

static int voting_members_locked(const struct child_set *set)
{
	int n = 0;

	for (int i = 0; i < set->nmembers; i++)
		n += child_votes(set->member[i]);
	return n;
}

/* Whether some data child other than c votes: a set whose voters are
 * witnesses only holds no data to serve. */
static bool other_data_voter_locked(const struct child_set *set,
				    const struct child *c)
{
	for (int i = 0; i < set->nmembers; i++) {
		const struct child *m = set->member[i];

		if (m != c && m->kind == CHILD_DATA && child_votes(m))
			return true;
	}
	return false;
}

static struct json_object *child_event_data(const struct child *c)
{
	struct json_object *d = json_object_new_object();

	json_object_object_add(d, "node-name", json_object_new_string(c->name));
	json_object_object_add(d, "path", json_object_new_string(c->path));
	return d;
}

static struct child *find_locked(struct child_set *set, const char *name)
{
	for (int i = 0; i < set->nmembers; i++) {
		struct child *c = set->member[i];

		if (strcmp(c->name, name) == 0 || strcmp(c->path, name) == 0)
			return c;
	}
	return NULL;
}

struct child *children_find(struct child_set *set, const char *name)
{
	struct child *c;

	pthread_mutex_lock(&set->lock);
	c = find_locked(set, name);
	if (c)
		child_get(c);
	pthread_mutex_unlock(&set->lock);
	return c;
}

/*
 * A view of one member alone, voting nothing: what a look at that child's
 * own copy runs its calls under, so that they are bounded by io-timeout
 * like any request and a removal drains them like any view. Never made
 * current.
 */
const struct child_view *children_view_one(struct child_set *set,
					   const char *name)
{
	struct view_holder *h = calloc(1, sizeof(*h));
	struct child *c;

	if (!h)
		return NULL;
	atomic_init(&h->refs, 1);
	h->set = set;
	pthread_mutex_lock(&set->lock);
	c = find_locked(set, name);
	if (c) {
		child_get(c);
		atomic_fetch_add(&c->views, 1);
		h->view.child[h->view.n++] = c;
		h->view.threshold = set->rules.threshold;
		link_live_locked(set, h);
	}
	pthread_mutex_unlock(&set->lock);
	if (!c) {
		free(h);
		return NULL;
	}
	return &h->view;
}

int children_members(struct child_set *set, struct child **out)
{
	int n;

	pthread_mutex_lock(&set->lock);
	for (n = 0; n < set->nmembers; n++) {
		out[n] = set->member[n];
		child_get(out[n]);
	}
	pthread_mutex_unlock(&set->lock);
	return n;
}

int children_roots(struct child_set *set, int *fds)
{
	int n;

	pthread_mutex_lock(&set->lock);
	for (n = 0; n < set->nmembers; n++)
		fds[n] = set->member[n]->root_fd;
	pthread_mutex_unlock(&set->lock);
	return n;
}

static int free_slot_locked(const struct child_set *set)
{
	for (int s = 0; s < CHILDREN_MAX; s++)
		if (!set->slot_used[s])
			return s;
	return -1;
}

static int add_locked(struct child_set *set, const char *path, const char *name,
		      enum child_kind kind, struct child **out, char *err,
		      size_t errlen)
{
	int slot = free_slot_locked(set), ret;

	if (set->rules.blkverify)
		return fail(err, errlen, -EINVAL,
			    "cannot add a child in blkverify mode");
	if (slot < 0 || set->nmembers == CHILDREN_MAX)
		return fail(err, errlen, -ENOSPC, "at most %d children",
			    CHILDREN_MAX);
	if (find_locked(set, name ? name : path))
		return fail(err, errlen, -EEXIST, "a child named '%s' exists",
			    name ? name : path);
	ret = child_new(path, name, slot, kind, CHILD_SYNCING, out);
	if (ret) {
		open_failed(err, errlen, path, ret);
		return ret;
	}
	set->member[set->nmembers++] = *out;
	set->slot_used[slot] = true;
	snprintf((*out)->reason, sizeof((*out)->reason), "added");
	ret = publish_locked(set);
	if (ret) {
		set->nmembers--;
		set->slot_used[slot] = false;
		child_put(*out);
		return fail(err, errlen, ret, "out of memory");
	}
	child_get(*out); /* the caller's reference */
	return 0;
}

int children_add(struct child_set *set, const char *path, const char *name,
		 enum child_kind kind, struct child **out, char *err,
		 size_t errlen)
{
	int ret;

	pthread_mutex_lock(&set->lock);
	ret = add_locked(set, path, name, kind, out, err, errlen);
	pthread_mutex_unlock(&set->lock);
	if (!ret)
		event_log_emit(set->log, "CHILD_ADDED", child_event_data(*out));
	return ret;
}

static void unlink_member_locked(struct child_set *set, struct child *c)
{
	int i = 0;

	while (set->member[i] != c)
		i++;
	memmove(&set->member[i], &set->member[i + 1],
		(set->nmembers - i - 1) * sizeof(set->member[0]));
	set->nmembers--;
}

bool children_drain(struct child_set *set, struct child *c, int ms)
{
	struct timespec deadline;
	bool drained;

	children_deadline(CLOCK_REALTIME, ms, &deadline);
	pthread_mutex_lock(&set->drain_lock);
	while (atomic_load(&c->views) > 0)
		if (pthread_cond_timedwait(&set->drained, &set->drain_lock,
					   &deadline) == ETIMEDOUT)
			break;
	drained = atomic_load(&c->views) == 0;
	pthread_mutex_unlock(&set->drain_lock);
	return drained;
}

int children_remove(struct child_set *set, struct child *c, int drain_ms,
		    char *err, size_t errlen)
{
	int voting, ret;

	pthread_mutex_lock(&set->lock);
	voting = voting_members_locked(set) - child_votes(c);
	if (!find_locked(set, c->name)) {
		ret = fail(err, errlen, -ENOENT, "no such child");
	} else if (voting < set->rules.threshold) {
		ret = fail(err, errlen, -EINVAL,
			   "removing '%s' would leave %d voting children, "
			   "below the threshold %d",
			   c->name, voting, set->rules.threshold);
	} else if (child_votes(c) && voting < set->floor) {
		ret = fail(err, errlen, -EINVAL,
			   "removing '%s' would leave %d voting children, "
			   "below the threshold %d of directory '%s'",
			   c->name, voting, set->floor, set->floor_dir);
	} else if (child_votes(c) && c->kind == CHILD_DATA &&
		   !other_data_voter_locked(set, c)) {
		ret = fail(err, errlen, -EINVAL,
			   "removing '%s' would leave no data child voting: "
			   "a witness holds digests, not data",
			   c->name);
	} else {
		unlink_member_locked(set, c);
		ret = publish_locked(set);
		if (ret)
			set->member[set->nmembers++] = c;
	}
	pthread_mutex_unlock(&set->lock);
	if (ret)
		return ret;
	ret = children_drain(set, c, drain_ms) ? 0 : 1;
	event_log_emit(set->log, "CHILD_REMOVED", child_event_data(c));
	child_put(c); /* the member list's reference */
	return ret;
}

void children_release_slot(struct child_set *set, int slot)
{
	pthread_mutex_lock(&set->lock);
	set->slot_used[slot] = false;
	pthread_mutex_unlock(&set->lock);
}

/* Refuse rules QEMU's quorum_open() refuses; voting: children ok now. */
static int check_rules(const struct set_rules *now, const struct set_rules *r,
		       int voting, char *err, size_t errlen)
{
	if (r->threshold != now->threshold &&
	    (r->threshold < 1 || r->threshold > voting))
		return fail(err, errlen, -EINVAL,
			    "threshold %d is outside 1..%d (the voting "
			    "children)",
			    r->threshold, voting);
	if (r->blkverify && r->threshold != 2)
		return fail(err, errlen, -EINVAL,
			    "blkverify needs threshold 2");
	if (r->blkverify && r->read_pattern == READ_PATTERN_FIFO)
		return fail(err, errlen, -EINVAL,
			    "blkverify cannot be combined with "
			    "read-pattern fifo");
	if (r->blkverify && r->rewrite_corrupted)
		return fail(err, errlen, -EINVAL,
			    "blkverify cannot be combined with "
			    "rewrite-corrupted");
	return 0;
}

enum rule { RULE_THRESHOLD, RULE_READ_PATTERN, RULE_REWRITE };

/* Change one rule in a new view, or nothing; *old gets its old value. */
static int set_rule(struct child_set *set, enum rule which, int value, int *old,
		    char *err, size_t errlen)
{
	struct set_rules was, r;
	int ret;

	pthread_mutex_lock(&set->lock);
	was = r = set->rules;
	switch (which) {
	case RULE_THRESHOLD:
		*old = r.threshold;
		r.threshold = value;
		break;
	case RULE_READ_PATTERN:
		*old = r.read_pattern;
		r.read_pattern = value;
		break;
	case RULE_REWRITE:
		*old = r.rewrite_corrupted;
		r.rewrite_corrupted = value;
		break;
	}
	ret = check_rules(&was, &r, voting_members_locked(set), err, errlen);
	if (!ret) {
		set->rules = r;
		ret = publish_locked(set);
		if (ret)
			set->rules = was;
	}
	pthread_mutex_unlock(&set->lock);
	return ret;
}

void children_get_rules(struct child_set *set, int *threshold,
			enum read_pattern *read_pattern,
			bool *rewrite_corrupted)
{
	pthread_mutex_lock(&set->lock);
	*threshold = set->rules.threshold;
	*read_pattern = set->rules.read_pattern;
	*rewrite_corrupted = set->rules.rewrite_corrupted;
	pthread_mutex_unlock(&set->lock);
}

int children_threshold(struct child_set *set)
{
	int threshold;
	enum read_pattern p;
	bool rewrite;

	children_get_rules(set, &threshold, &p, &rewrite);
	return threshold;
}

int children_set_threshold(struct child_set *set, int threshold, char *err,
			   size_t errlen)
{
	int old, ret = set_rule(set, RULE_THRESHOLD, threshold, &old, err,
				errlen);
	struct json_object *d;

	if (ret)
		return ret;
	d = json_object_new_object();
	json_object_object_add(d, "old", json_object_new_int(old));
	json_object_object_add(d, "new", json_object_new_int(threshold));
	event_log_emit(set->log, "THRESHOLD_CHANGED", d);
	return 0;
}

int children_set_read_pattern(struct child_set *set, enum read_pattern p,
			      char *err, size_t errlen)
{
	int old;

	return set_rule(set, RULE_READ_PATTERN, p, &old, err, errlen);
}

int children_set_rewrite(struct child_set *set, bool on, char *err,
			 size_t errlen)
{
	int old;

	return set_rule(set, RULE_REWRITE, on, &old, err, errlen);
}

/* CHILD_STATE_CHANGED, or REPLICATION_STAGE_CHANGED with the mode. */
static void emit_change(struct child_set *set, struct child *c,
			const char *event, const char *mode, const char *old,
			const char *now, const char *reason)
{
	struct json_object *d = child_event_data(c);

	if (mode)
		json_object_object_add(d, "mode", json_object_new_string(mode));
	json_object_object_add(d, "old", json_object_new_string(old));
	json_object_object_add(d, "new", json_object_new_string(now));
	json_object_object_add(d, "reason", json_object_new_string(reason));
	event_log_emit(set->log, event, d);
}

static void emit_state(struct child_set *set, struct child *c,
		       enum child_state old, enum child_state state,
		       const char *reason)
{
	emit_change(set, c, "CHILD_STATE_CHANGED", NULL, child_state_name(old),
		    child_state_name(state), reason);
}

/* Returns the old state; the view is republished if it changed. */
static enum child_state set_state_locked(struct child_set *set, struct child *c,
					 enum child_state state,
					 const char *reason)
{
	enum child_state old = atomic_exchange(&c->state, state);

	snprintf(c->reason, sizeof(c->reason), "%s", reason);
	if (old == state)
		return old;
	if (publish_locked(set)) {
		atomic_store(&c->state, old); /* no memory: keep the view */
		return state;
	}
	/* A copy's progress means nothing once the child is out. */
	if (state == CHILD_FAILED || state == CHILD_STALE)
		child_set_progress(c, 0, 0, 0, 0);
	/* Logged under the lock, so events keep the order of the changes
	 * (the log only queues them). */
	emit_state(set, c, old, state, reason);
	return old;
}

enum child_state children_set_state(struct child_set *set, struct child *c,
				    enum child_state state, const char *reason)
{
	enum child_state old;

	pthread_mutex_lock(&set->lock);
	old = set_state_locked(set, c, state, reason);
	pthread_mutex_unlock(&set->lock);
	if (state == CHILD_OK)
		atomic_store(&c->streak, 0);
	return old;
}

void children_log_state(struct child_set *set, struct child *c)
{
	char reason[sizeof(c->reason)];

	pthread_mutex_lock(&set->lock);
	memcpy(reason, c->reason, sizeof(reason));
	pthread_mutex_unlock(&set->lock);
	emit_state(set, c, CHILD_OK, child_state(c), reason);
}

void children_set_floor(struct child_set *set, int threshold, const char *dir)
{
	pthread_mutex_lock(&set->lock);
	set->floor = threshold;
	snprintf(set->floor_dir, sizeof(set->floor_dir), "%s", dir ? dir : "");
	pthread_mutex_unlock(&set->lock);
}

int children_begin_resync(struct child_set *set, struct child *c, char *err,
			  size_t errlen)
{
	int ret = 0, voting;

	pthread_mutex_lock(&set->lock);
	voting = voting_members_locked(set) - child_votes(c);
	if (set->rules.blkverify)
		ret = fail(err, errlen, -EINVAL,
			   "cannot resync a child in blkverify mode");
	else if (voting < set->rules.threshold)
		ret = fail(err, errlen, -EINVAL,
			   "resyncing '%s' would leave %d voting children, "
			   "below the threshold %d",
			   c->name, voting, set->rules.threshold);
	else if (child_votes(c) && voting < set->floor)
		ret = fail(err, errlen, -EINVAL,
			   "resyncing '%s' would leave %d voting children, "
			   "below the threshold %d of directory '%s'",
			   c->name, voting, set->floor, set->floor_dir);
	else if (child_votes(c) && c->kind == CHILD_DATA &&
		 !other_data_voter_locked(set, c))
		ret = fail(err, errlen, -EINVAL,
			   "resyncing '%s' would leave no data child voting: "
			   "a witness holds digests, not data",
			   c->name);
	else
		set_state_locked(set, c, CHILD_SYNCING, "resync requested");
	pthread_mutex_unlock(&set->lock);
	return ret;
}

/* ---- replication stages ---- */

enum repl_stage children_set_stage(struct child_set *set, struct child *c,
				   enum repl_stage to, const char *reason)
{
	enum repl_stage old;

	pthread_mutex_lock(&set->lock);
	old = atomic_exchange(&c->stage, to);
	if (old != to) {
		/* DONE takes it out of the views; no memory for a new view
		 * leaves the old one, which only sends it a little more. */
		if (old == REPL_DONE || to == REPL_DONE)
			publish_locked(set);
		emit_change(set, c, "REPLICATION_STAGE_CHANGED", "primary",
			    repl_stage_name(old), repl_stage_name(to), reason);
	}
	pthread_mutex_unlock(&set->lock);
	return old;
}

/* ---- status ---- */

static struct json_object *child_status_locked(const struct child *c)
{
	struct json_object *o = child_event_data(c), *sync, *err;
	uint64_t done = atomic_load(&c->bytes_done);
	uint64_t total = atomic_load(&c->bytes_total);

	json_object_object_add(o, "name", json_object_new_string(c->name));
	json_object_object_del(o, "node-name");
	json_object_object_add(
		o, "state",
		json_object_new_string(child_state_name(child_state(c))));
	json_object_object_add(o, "reason", json_object_new_string(c->reason));
	json_object_object_add(
		o, "kind", json_object_new_string(child_kind_name(c->kind)));
	json_object_object_add(o, "votes",
			       json_object_new_boolean(child_votes(c)));
	sync = json_object_new_object();
	json_object_object_add(sync, "bytes-done", json_object_new_int64(done));
	json_object_object_add(sync, "bytes-total",
			       json_object_new_int64(total));
	json_object_object_add(sync, "files-done",
			       json_object_new_int64(c->files_done));
	json_object_object_add(sync, "files-total",
			       json_object_new_int64(c->files_total));
	json_object_object_add(
		sync, "percent",
		json_object_new_int(
			total ? (int)(done * 100 / total)
			      : (child_state(c) == CHILD_OK ? 100 : 0)));
	json_object_object_add(o, "resync", sync);
	err = json_object_new_object();
	json_object_object_add(
		err, "read",
		json_object_new_int64(child_errors(c, CHILD_OP_READ)));
	json_object_object_add(
		err, "write",
		json_object_new_int64(child_errors(c, CHILD_OP_WRITE)));
	json_object_object_add(
		err, "flush",
		json_object_new_int64(child_errors(c, CHILD_OP_FLUSH)));
	json_object_object_add(o, "errors", err);
	json_object_object_add(o, "timed-out-requests",
			       json_object_new_int(child_orphans(c)));
	if (c->kind == CHILD_REPLICATION)
		json_object_object_add(o, "replication",
				       child_replica_status((struct child *)c));
	return o;
}

/* Bytes the walk has counted so far: nftw() takes no argument. */
static _Thread_local uint64_t walk_bytes;

static int count_blocks(const char *path, const struct stat *st, int flag,
			struct FTW *ftw)
{
	(void)path;
	(void)flag;
	(void)ftw;
	walk_bytes += (uint64_t)st->st_blocks * 512;
	return 0;
}

/* "size-on-disk" of each witness: the blocks its whole tree takes, its
 * record included, walked at most once a second (status is polled).
 * witness[i] is member i's reference, or NULL. */
static void add_witness_sizes(struct json_object *list, struct child **witness,
			      int n)
{
	for (int i = 0; i < n; i++) {
		struct child *c = witness[i];
		struct timespec now;

		if (!c)
			continue;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (atomic_load(&c->disk_walked) != (uint64_t)now.tv_sec) {
			walk_bytes = 0;
			nftw(c->path, count_blocks, 16, FTW_PHYS | FTW_MOUNT);
			atomic_store(&c->disk_bytes, walk_bytes);
			atomic_store(&c->disk_walked, (uint64_t)now.tv_sec);
		}
		json_object_object_add(
			json_object_array_get_idx(list, i), "size-on-disk",
			json_object_new_int64(atomic_load(&c->disk_bytes)));
		child_put(c);
	}
}

struct json_object *children_status(struct child_set *set)
{
	struct json_object *o = json_object_new_object();
	struct json_object *list = json_object_new_array();
	struct child *witness[CHILDREN_MAX];
	uint64_t total[3] = {0};
	int voting, nlist;

	pthread_mutex_lock(&set->lock);
	voting = voting_members_locked(set);
	json_object_object_add(o, "threshold",
			       json_object_new_int(set->rules.threshold));
	json_object_object_add(
		o, "read-pattern",
		json_object_new_string(set->rules.read_pattern ==
						       READ_PATTERN_FIFO
					       ? "fifo"
					       : "quorum"));
	json_object_object_add(
		o, "rewrite-corrupted",
		json_object_new_boolean(set->rules.rewrite_corrupted));
	json_object_object_add(o, "blkverify",
			       json_object_new_boolean(set->rules.blkverify));
	for (int i = 0; i < set->nmembers; i++) {
		json_object_array_add(list,
				      child_status_locked(set->member[i]));
		for (int op = 0; op < 3; op++)
			total[op] += child_errors(set->member[i], op);
		witness[i] = NULL;
		if (set->member[i]->kind == CHILD_WITNESS) {
			witness[i] = set->member[i];
			child_get(witness[i]);
		}
	}
	nlist = set->nmembers;
	json_object_object_add(o, "children", list);
	list = json_object_new_object();
	json_object_object_add(list, "children",
			       json_object_new_int(set->nmembers));
	json_object_object_add(list, "voting", json_object_new_int(voting));
	json_object_object_add(list, "read-errors",
			       json_object_new_int64(total[CHILD_OP_READ]));
	json_object_object_add(list, "write-errors",
			       json_object_new_int64(total[CHILD_OP_WRITE]));
	json_object_object_add(list, "flush-errors",
			       json_object_new_int64(total[CHILD_OP_FLUSH]));
	json_object_object_add(o, "totals", list);
	pthread_mutex_unlock(&set->lock);
	/* A walk of the witness's tree, outside the set's lock. */
	add_witness_sizes(json_object_object_get(o, "children"), witness,
			  nlist);
	return o;
}
