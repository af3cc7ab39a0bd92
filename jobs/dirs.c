/*
 * Comparing a directory across the voting children, and settling it by
 * vote: what scrub does for every directory, and what settling after a
 * crash does for the directories and entries the intent log names.
 *
 * Each voting child's own listing is read (not the voted one), in one
 * request bounded by the io-timeout like any other (a child that does
 * not answer is failed, as a request would fail it), and for every name
 * any voter has two votes are held:
 *   1. presence: each voter's ballot is the entry's type, or "none" where
 *      it lacks the name. The winner must reach the threshold (settling
 *      after a crash votes at threshold 1: the most common answer wins,
 *      ties to the highest index, as reads break them), else the name has
 *      no quorum and is left alone. Voters that disagree are repaired: an
 *      entry the vote says is not there is removed with what is below it;
 *      one it says is there is copied whole from a voter that won
 *      (copy.c); one of the wrong type is both;
 *   2. metadata, among the voters that have the entry: mode, owner,
 *      symlink target and extended attributes, each voted on its own.
 *      Times are not compared: copies made a moment apart differ there
 *      legitimately. Sizes and data are the data scrub's.
 * Findings go to a report callback (scrub's, or none when settling).
 *
 * Locks: the directory's range claim exclusively while its names are
 * compared and repaired (namespace changes in it hold it shared), and an
 * entry's own claim exclusively while its metadata is compared again
 * before a repair (setattr and xattr changes hold that shared), so
 * nothing half applied is repaired. Repairs are plain calls on the
 * scrub's thread: a child that hangs between the read and the repair
 * holds the directory until it answers.
 */
#define _GNU_SOURCE
#include "jobs/jobs_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

/* What one child holds under a name. */
struct copy_of {
	int error; /* 0, -ENOENT (none), or why it cannot be asked */
	struct stat st;
	char *target; /* a symlink's */
	char *xattrs; /* "name\0len value" items, sorted by name */
	size_t xlen;
};

struct named {
	char *name;
	struct copy_of c;
};

/* One child's listing, sorted by name. */
struct listing {
	size_t n;
	struct named *item;
};

/* The request's shared part: what each part reads, by view index. */
struct dir_read {
	struct tree *tree;
	struct tree_node *dir; /* referenced for the request's life */
	char *only;	       /* one name, or NULL: every name */
	struct listing list[CHILDREN_MAX];
};

/* One directory being compared. */
struct dir_job {
	struct jobs *jobs;
	struct tree_node *dir;
	const struct child_view *view;
	int threshold;
	bool repair;
	const struct dir_report *report;
	int n;			 /* voting children */
	int index[CHILDREN_MAX]; /* view index of voter k */
	int fd[CHILDREN_MAX];	 /* voter k's directory (O_PATH), or -1 */
	struct child_request *rq;
};

/* ---- reading what each child has ---- */

static int by_string(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct named *)a)->name,
		      ((const struct named *)b)->name);
}

/* Append one item to blob: "name\0len value". */
static int xattr_item(char **blob, size_t *at, const char *name,
		      const char *value, ssize_t vlen)
{
	size_t need = *at + strlen(name) + 1 + 24 + vlen;
	char *grown = realloc(*blob, need);

	if (!grown)
		return -ENOMEM;
	*blob = grown;
	*at += sprintf(grown + *at, "%s%c%zd ", name, 0, vlen);
	memcpy(grown + *at, value, vlen);
	*at += vlen;
	return 0;
}

/* An entry's xattrs as one comparable blob, by its /proc path. */
static int xattr_blob(const char *proc, char **out, size_t *outlen)
{
	ssize_t len = listxattr(proc, NULL, 0), vlen;
	char *list = NULL, *value = NULL, **item = NULL;
	size_t n = 0;
	int ret = 0;

	if (len <= 0)
		return len < 0 && errno != ENOTSUP ? -errno : 0;
	list = malloc(len);
	value = malloc(XATTR_SIZE_MAX);
	item = calloc(len, sizeof(*item));
	len = list ? listxattr(proc, list, len) : -1;
	if (!list || !value || !item || len < 0) {
		ret = list && value && item ? -errno : -ENOMEM;
		goto out;
	}
	for (ssize_t i = 0; i < len; i += strlen(list + i) + 1)
		item[n++] = list + i;
	qsort(item, n, sizeof(*item), by_string);
	for (size_t i = 0; !ret && i < n; i++) {
		vlen = getxattr(proc, item[i], value, XATTR_SIZE_MAX);
		if (vlen >= 0)
			ret = xattr_item(out, outlen, item[i], value, vlen);
	}
out:
	free(item);
	free(list);
	free(value);
	return ret;
}

/* What the child has under name in directory dfd. */
static void read_copy(int dfd, const char *name, struct copy_of *c)
{
	char target[PATH_MAX + 1], proc[64];
	ssize_t len;
	int fd;

	*c = (struct copy_of){0};
	if (fstatat(dfd, name, &c->st, AT_SYMLINK_NOFOLLOW)) {
		c->error = -errno;
		return;
	}
	if (S_ISLNK(c->st.st_mode)) {
		len = readlinkat(dfd, name, target, sizeof(target) - 1);
		target[len < 0 ? 0 : len] = '\0';
		c->target = strdup(target);
		c->error = c->target ? 0 : -ENOMEM;
		return;
	}
	fd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		c->error = -errno;
		return;
	}
	child_proc_path(fd, proc);
	c->error = xattr_blob(proc, &c->xattrs, &c->xlen);
	close(fd);
}

/* Add name to the listing, with what the child has under it. */
static int list_add(struct listing *l, int dfd, const char *name)
{
	struct named *grown = realloc(l->item, (l->n + 1) * sizeof(*grown));

	if (!grown)
		return -ENOMEM;
	l->item = grown;
	grown[l->n].name = strdup(name);
	if (!grown[l->n].name)
		return -ENOMEM;
	read_copy(dfd, name, &grown[l->n++].c);
	return 0;
}

static int list_all(struct listing *l, int dfd, bool root)
{
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	struct dirent *de;
	int ret = d ? 0 : fd < 0 ? -errno : -ENOMEM;

	while (!ret && d && (de = readdir(d))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") &&
		    !(root && tree_reserved_name(TREE_ROOT_INO, de->d_name)))
			ret = list_add(l, dfd, de->d_name);
	}
	if (d)
		closedir(d);
	else if (fd >= 0)
		close(fd);
	if (!ret && l->n)
		qsort(l->item, l->n, sizeof(*l->item), by_name);
	return ret;
}

static int read_body(struct child_request *rq, int i)
{
	struct dir_read *op = rq->arg;
	struct listing *l = &op->list[i];
	int dfd =
		tree_node_fd(op->tree, op->dir, child_slot(rq->view->child[i]));

	if (dfd < 0)
		return dfd;
	if (op->only)
		return list_add(l, dfd, op->only);
	return list_all(l, dfd, op->dir == tree_root(op->tree));
}

static void read_release(struct child_request *rq)
{
	struct dir_read *op = rq->arg;

	for (int i = 0; i < CHILDREN_MAX; i++) {
		for (size_t k = 0; k < op->list[i].n; k++) {
			free(op->list[i].item[k].name);
			free(op->list[i].item[k].c.target);
			free(op->list[i].item[k].c.xattrs);
		}
		free(op->list[i].item);
	}
	free(op->only);
	tree_node_unref(op->tree, op->dir);
}

/* Read every voter's listing (or only one name of it) into j->rq. */
static int dir_read(struct dir_job *j, const char *only)
{
	struct dir_read *op;

	child_request_put(j->rq);
	j->rq = child_request_new(j->view, sizeof(*op), read_release);
	op = j->rq ? j->rq->arg : NULL;
	if (!op || (only && !(op->only = strdup(only))))
		return -ENOMEM;
	op->tree = j->jobs->tree;
	op->dir = j->dir;
	tree_node_ref(op->tree, op->dir);
	child_request_run(j->rq, j->jobs->pool, j->jobs->wd, read_body);
	watchdog_report(j->jobs->wd, j->rq);
	return 0;
}

/* ---- the votes ---- */

/* Voter k's copy of name: found by the cursor walking its listing. */
static struct copy_of voter_copy(struct dir_job *j, int k, size_t *cursor,
				 const char *name)
{
	const struct dir_read *op = j->rq->arg;
	int i = j->index[k];
	const struct listing *l = &op->list[i];

	if (j->rq->ret[i])
		return (struct copy_of){.error = j->rq->ret[i]};
	if (*cursor < l->n && !strcmp(l->item[*cursor].name, name))
		return l->item[(*cursor)++].c;
	return (struct copy_of){.error = -ENOENT};
}

/* The next name after those done: the smallest at any voter's cursor. */
static const char *next_name(struct dir_job *j, const size_t *cursor)
{
	const struct dir_read *op = j->rq->arg;
	const char *best = NULL;

	for (int k = 0; k < j->n; k++) {
		const struct listing *l = &op->list[j->index[k]];

		if (j->rq->ret[j->index[k]] || cursor[k] >= l->n)
			continue;
		if (!best || strcmp(l->item[cursor[k]].name, best) < 0)
			best = l->item[cursor[k]].name;
	}
	return best;
}

/* Vote ballots b[0..n) of voters map[]; the winning voter, or -1 without
 * quorum. bad[k]: voter k lost. */
static int ballot_vote(const struct dir_job *j, const struct vote_ballot *b,
		       const int *map, int n, bool *bad)
{
	int threshold = j->threshold < n ? j->threshold : n;
	struct vote_result r;

	for (int k = 0; k < j->n; k++)
		bad[k] = false;
	if (n == 0 || vote_whole(b, n, threshold, &r))
		return -1;
	for (int i = 0; i < n; i++)
		bad[map[i]] = r.loser[i];
	return map[r.winner];
}

/* Presence: each voter's ballot is the type it has, 0 for none, at the
 * full threshold (a voter that cannot answer still counts against it).
 * The winning voter (its c.error is -ENOENT when "none" won), or -1. */
static int presence_vote(const struct dir_job *j, const struct copy_of *c,
			 bool *bad)
{
	struct vote_ballot b[CHILDREN_MAX];
	mode_t type[CHILDREN_MAX];
	struct vote_result r;

	if (j->n == 0 || j->n < j->threshold)
		return -1;
	for (int k = 0; k < j->n; k++) {
		type[k] = c[k].error ? 0 : c[k].st.st_mode & S_IFMT;
		b[k] = (struct vote_ballot){
			.error = c[k].error == -ENOENT ? 0 : c[k].error,
			.data = &type[k],
			.len = sizeof(type[k])};
	}
	if (vote_whole(b, j->n, j->threshold, &r))
		return -1;
	for (int k = 0; k < j->n; k++)
		bad[k] = r.loser[k];
	return r.winner;
}

enum field { FIELD_MODE, FIELD_OWNER, FIELD_TARGET, FIELD_XATTRS, FIELDS };

static const enum finding_kind field_finding[FIELDS] = {
	[FIELD_MODE] = FINDING_MODE,
	[FIELD_OWNER] = FINDING_OWNER,
	[FIELD_TARGET] = FINDING_TARGET,
	[FIELD_XATTRS] = FINDING_XATTRS,
};

/* Voter k's ballot for field f; false when the field does not apply. */
static bool field_ballot(const struct copy_of *c, enum field f, uid_t *owner,
			 mode_t *mode, struct vote_ballot *b)
{
	bool link = S_ISLNK(c->st.st_mode);

	*b = (struct vote_ballot){0};
	if (f == FIELD_MODE && !link) {
		*mode = c->st.st_mode & 07777;
		*b = (struct vote_ballot){.data = mode, .len = sizeof(*mode)};
	} else if (f == FIELD_OWNER) {
		owner[0] = c->st.st_uid;
		owner[1] = c->st.st_gid;
		*b = (struct vote_ballot){.data = owner,
					  .len = 2 * sizeof(*owner)};
	} else if (f == FIELD_TARGET && link) {
		*b = (struct vote_ballot){.data = c->target,
					  .len = strlen(c->target)};
	} else if (f == FIELD_XATTRS && !link) {
		*b = (struct vote_ballot){.data = c->xattrs, .len = c->xlen};
	} else {
		return false;
	}
	return true;
}

/* Field f's vote among the voters with the winning type (voter w's). */
static int field_vote(const struct dir_job *j, const struct copy_of *c, int w,
		      enum field f, bool *bad)
{
	struct vote_ballot b[CHILDREN_MAX];
	uid_t owner[CHILDREN_MAX][2];
	mode_t mode[CHILDREN_MAX];
	int map[CHILDREN_MAX], n = 0;

	for (int k = 0; k < j->n; k++) {
		if (c[k].error ||
		    ((c[k].st.st_mode ^ c[w].st.st_mode) & S_IFMT))
			continue;
		if (!field_ballot(&c[k], f, owner[n], &mode[n], &b[n]))
			return -2; /* not a field of this type */
		map[n++] = k;
	}
	return ballot_vote(j, b, map, n, bad);
}

/* ---- repairs ---- */

static struct child *voter_child(const struct dir_job *j, int k)
{
	return j->view->child[j->index[k]];
}

static void report(const struct dir_job *j, const char *name, int k,
		   enum finding_kind kind, bool repaired)
{
	if (j->report)
		j->report->finding(j->report->arg, j->dir, name,
				   k < 0 ? NULL : child_name(voter_child(j, k)),
				   kind, repaired);
}

/* Make voter k's name what voter w has (nothing, when w has none). */
static bool repair_entry(const struct dir_job *j, int k, int w,
			 const char *name, bool present)
{
	int ret = j->fd[k] < 0 ? j->fd[k] : remove_tree(j->fd[k], name);

	if (!ret && present && j->view->witness[j->index[k]])
		ret = copy_entry_witness(j->fd[w], j->fd[k], name);
	else if (!ret && present)
		ret = copy_entry(j->fd[w], j->fd[k], name);
	/* A repair a power cut of the child can undo is not one. */
	if (!ret)
		ret = child_sync_dir(j->fd[k], ".", false);
	if (ret)
		child_count_error(voter_child(j, k), CHILD_OP_WRITE);
	return !ret;
}

/* The symlink's target, by replacing the link. */
static int relink(const struct dir_job *j, int k, const char *name,
		  const struct copy_of *w)
{
	int ret = remove_tree(j->fd[k], name);

	if (!ret)
		ret = child_result(symlinkat(w->target, j->fd[k], name));
	return ret ? ret : child_sync_dir(j->fd[k], ".", false);
}

/* Set voter w's field f on voter k's entry. */
static bool repair_field(const struct dir_job *j, int k, int w,
			 const char *name, const struct copy_of *wc,
			 enum field f)
{
	int fd = openat(j->fd[k], name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	int wfd = openat(j->fd[w], name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	int ret = fd < 0 || wfd < 0 ? -errno : 0;
	char proc[64], from[64];

	child_proc_path(fd, proc);
	child_proc_path(wfd, from);
	if (!ret && f == FIELD_MODE)
		ret = child_result(chmod(proc, wc->st.st_mode & 07777));
	else if (!ret && f == FIELD_OWNER)
		ret = child_result(fchownat(fd, "", wc->st.st_uid,
					    wc->st.st_gid, AT_EMPTY_PATH));
	else if (!ret && f == FIELD_TARGET)
		ret = relink(j, k, name, wc);
	else if (!ret && f == FIELD_XATTRS)
		ret = copy_child_xattrs(from, proc);
	if (fd >= 0)
		close(fd);
	if (wfd >= 0)
		close(wfd);
	if (ret)
		child_count_error(voter_child(j, k), CHILD_OP_WRITE);
	return !ret;
}

/* ---- one name ---- */

/* Vote and, with repair, set every metadata field of name; c are the
 * voters' copies, read under the entry's exclusive claim when
 * repairing. Returns whether any voter lost. */
static bool metadata_pass(struct dir_job *j, const char *name,
			  const struct copy_of *c, int w, bool fix)
{
	bool bad[CHILDREN_MAX], any = false;

	for (enum field f = 0; f < FIELDS; f++) {
		int win = field_vote(j, c, w, f, bad);

		if (win == -1 && fix)
			report(j, name, -1, FINDING_NO_QUORUM, false);
		for (int k = 0; win >= 0 && k < j->n; k++) {
			if (!bad[k])
				continue;
			any = true;
			if (fix)
				report(j, name, k, field_finding[f],
				       j->repair &&
					       repair_field(j, k, win, name,
							    &c[win], f));
		}
	}
	return any;
}

/* A lookup drops the node's handles of copies a repair replaced (a
 * relinked symlink), so that no later call reaches the old one. */
static void refresh_handles(struct dir_job *j, const char *name)
{
	struct tree *tree = j->jobs->tree;
	struct tree_entry e;

	if (!tree_lookup(tree, tree_node_ino(tree, j->dir), name, &e))
		tree_forget(tree, e.ino, 1);
}

/* Read name again under its own exclusive claim, then vote and repair
 * its metadata: a setattr half applied when the listing was read has
 * finished by then. */
static void metadata_settle(struct dir_job *j, const char *name)
{
	struct tree *tree = j->jobs->tree;
	struct copy_of c[CHILDREN_MAX];
	struct range_claim claim;
	struct tree_entry e;
	size_t cursor[CHILDREN_MAX] = {0};
	bool bad[CHILDREN_MAX], refresh = false;
	int w;

	/* The lookup also drops the handles of copies the presence repair
	 * replaced. */
	if (tree_lookup(tree, tree_node_ino(tree, j->dir), name, &e))
		return; /* gone, or without quorum: the presence vote's */
	range_lock(tree_node_ranges(tree_node(tree, e.ino)), &claim, 0,
		   RANGE_END, true);
	if (!dir_read(j, name)) {
		for (int k = 0; k < j->n; k++)
			c[k] = voter_copy(j, k, &cursor[k], name);
		w = presence_vote(j, c, bad);
		refresh = w >= 0 && !c[w].error &&
			  metadata_pass(j, name, c, w, true) && j->repair;
	}
	range_unlock(tree_node_ranges(tree_node(tree, e.ino)), &claim);
	/* A lookup claims the entry itself: only once it is released. */
	if (refresh)
		refresh_handles(j, name);
	tree_forget(tree, e.ino, 1);
}

/* Copies come from a data voter of the winning version: a witness's
 * files are digests. -1 when only witnesses have the entry. */
static int data_source(const struct dir_job *j, const struct copy_of *c, int w,
		       const bool *bad)
{
	if (w < 0 || c[w].error || !j->view->witness[j->index[w]])
		return w;
	for (int k = 0; k < j->n; k++)
		if (!bad[k] && !c[k].error && !j->view->witness[j->index[k]])
			return k;
	return -1;
}

/* Both votes on one name; c are the voters' copies from the listing. */
static void compare_name(struct dir_job *j, const char *name,
			 const struct copy_of *c)
{
	bool bad[CHILDREN_MAX], mismatch;
	int w = data_source(j, c, presence_vote(j, c, bad), bad);

	if (w < 0) {
		report(j, name, -1, FINDING_NO_QUORUM, false);
		return;
	}
	mismatch = false;
	for (int k = 0; k < j->n; k++) {
		bool had = !c[k].error, wins = !c[w].error;
		enum finding_kind kind = !had	 ? FINDING_MISSING
					 : !wins ? FINDING_EXTRA
						 : FINDING_TYPE;

		if (!bad[k])
			continue;
		report(j, name, k, kind,
		       j->repair && repair_entry(j, k, w, name, wins));
		mismatch = true;
	}
	if (!c[w].error && (mismatch || metadata_pass(j, name, c, w, false)))
		metadata_settle(j, name);
}

/* ---- a directory ---- */

/* Every name of the listing read, in order. */
static void compare_names(struct dir_job *j, atomic_bool *stop)
{
	size_t cursor[CHILDREN_MAX] = {0};
	struct copy_of c[CHILDREN_MAX];
	struct child_request *listing = j->rq;
	const char *name;

	/* metadata_settle reads again: keep the listing's request. */
	j->rq = NULL;
	for (;;) {
		j->rq = listing;
		name = next_name(j, cursor);
		if (!name || (stop && atomic_load(stop)))
			break;
		for (int k = 0; k < j->n; k++)
			c[k] = voter_copy(j, k, &cursor[k], name);
		j->rq = NULL;
		compare_name(j, name, c);
		if (j->rq)
			child_request_put(j->rq);
	}
	j->rq = listing;
}

/* The voters of the view, and their handles of dir. */
static void dir_voters(struct dir_job *j)
{
	for (int i = 0; i < j->view->n; i++) {
		if (!j->view->votes[i])
			continue;
		j->index[j->n] = i;
		j->fd[j->n++] = tree_node_fd(j->jobs->tree, j->dir,
					     child_slot(j->view->child[i]));
	}
}

/* A voter that lacks the directory itself is the parent's finding: it
 * has no say in what the directory holds, and nothing to repair in it. */
static void drop_absent(struct dir_job *j)
{
	int n = 0;

	for (int k = 0; k < j->n; k++) {
		if (j->rq->ret[j->index[k]] == -ENOENT)
			continue;
		j->index[n] = j->index[k];
		j->fd[n++] = j->fd[k];
	}
	j->n = n;
}

int dir_compare(struct jobs *jobs, struct tree_node *dir, const char *only,
		const struct dir_compare_how *how)
{
	struct dir_job j = {.jobs = jobs,
			    .dir = dir,
			    .view = children_view_get(jobs->set),
			    .repair = how->repair,
			    .report = how->report};
	struct range_claim claim;
	int ret;

	j.threshold = how->threshold ? how->threshold : j.view->threshold;
	range_lock(tree_node_ranges(dir), &claim, 0, RANGE_END, true);
	dir_voters(&j);
	ret = dir_read(&j, only);
	if (!ret) {
		drop_absent(&j);
		compare_names(&j, how->stop);
	}
	range_unlock(tree_node_ranges(dir), &claim);
	child_request_put(j.rq);
	children_view_put(j.view);
	return ret;
}
