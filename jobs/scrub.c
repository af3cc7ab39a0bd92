/*
 * Scrub: read and vote every regular file in the background, and with
 * repair write the voted bytes over the copies that lost.
 *
 * It is md's check/repair and ZFS's scrub, except that no copy is
 * trusted first: every voting child's copy is read and voted as a read
 * through the mount would be (vote/vote.h), so the copy that is odd one
 * out is named, and repaired from the copies that agree. Children that do
 * not vote (syncing, failed, stale) are resync's business and are skipped.
 *
 * One job at a time walks the voted tree. Each directory, before what is
 * in it, has its names and their metadata compared (dirs.c): an entry a
 * voting child lacks, has in excess or has of another type, and a mode,
 * owner, symlink target or set of xattrs that lost its vote, is one
 * finding each, repaired from the children that won. For each regular
 * file then:
 *   1. size: under a claim on the whole file (exclusive when repairing)
 *      every voting copy is stat'ed and the sizes voted. A copy of another
 *      size is one finding; repair cuts a longer copy to the voted size and
 *      extends a shorter one, whose new tail the data pass then fills with
 *      the voted bytes.
 *   2. data, in SCRUB_CHUNK pieces up to the voted size: under a shared
 *      claim on the chunk's range (writes claim exclusively, so a busy
 *      image never shows a half-applied write) every voting copy is read
 *      into its own aligned buffer and compared. Only when they differ is
 *      each TREE_VOTE_BLOCK block voted on its own; a child's run of lost
 *      blocks is one finding, a run of blocks without quorum is one
 *      unrecoverable finding and is never repaired. With repair the chunk
 *      is then claimed exclusively, read and voted again (a write may have
 *      changed it meanwhile) and the winning bytes are written over each
 *      losing copy's runs.
 * A copy's blocks past its own end never vote (they would vote for zeros
 * after a repair extends it); the size finding covers them.
 *
 * Copies are read with O_DIRECT where their file system allows it, so a
 * scrub checks what is stored rather than what is cached, and does not
 * push the VMs' data out of the page cache.
 *
 * Between chunks the job sleeps long enough to keep to its rate, on a
 * condition variable that scrub_stop() and unmount signal, so both end a
 * scrub at once.
 *
 * The same pass, quiet (no events, no status) and at threshold 1, settles
 * the regions a crash left in flight (scrub_settle_file, for settle.c).
 *
 * Locks: s->lock is a leaf. Commands take it under jobs->lock, the job
 * under a file's range lock while it records a finding. The job never
 * takes jobs->lock, so a command may wait for the job to end.
 */
#define _GNU_SOURCE
#include "jobs/jobs_i.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vote/vote.h"

#define SCRUB_CHUNK CHILD_IO_MAX
/* The status keeps the last findings, for an operator to act on. */
#define SCRUB_FINDINGS 64
#define MIB (1024 * 1024)

enum scrub_state {
	SCRUB_IDLE,
	SCRUB_RUNNING,
	SCRUB_COMPLETED,
	SCRUB_STOPPED,
	SCRUB_FAILED,
};

static const char *const state_names[] = {
	[SCRUB_IDLE] = "idle",		 [SCRUB_RUNNING] = "running",
	[SCRUB_COMPLETED] = "completed", [SCRUB_STOPPED] = "stopped",
	[SCRUB_FAILED] = "failed",
};

static const char *const kind_names[] = {
	[FINDING_DATA] = "data",       [FINDING_SIZE] = "size",
	[FINDING_MISSING] = "missing", [FINDING_NO_QUORUM] = "no-quorum",
	[FINDING_EXTRA] = "extra",     [FINDING_TYPE] = "type",
	[FINDING_MODE] = "mode",       [FINDING_OWNER] = "owner",
	[FINDING_TARGET] = "target",   [FINDING_XATTRS] = "xattrs",
};

struct scrub_finding {
	char *path;
	char *node; /* the child's name; NULL when no child is to blame */
	enum finding_kind kind;
	uint64_t off, len;
	bool repaired;
};

/* Mismatches by child name. */
struct scrub_count {
	char *name;
	uint64_t n;
};

struct scrub_counts {
	struct scrub_count *entry;
	size_t n;
};

/* One run's settings and findings. */
struct scrub_run {
	/* Written only while no job runs; the job reads them unlocked. */
	bool repair;
	int rate; /* MiB/s, 0 unlimited */
	/* The rest is guarded by scrub->lock. */
	uint64_t files_done, files_total, bytes_done, bytes_total;
	uint64_t mismatches, repaired, unrecoverable;
	struct scrub_counts children;
	time_t started, finished;
	char reason[256];			      /* why a run failed */
	struct scrub_finding finding[SCRUB_FINDINGS]; /* a ring */
	uint64_t findings; /* recorded in this run; the ring holds the last */
	struct scrub_lost lost; /* its no-quorum findings, for heal-info */
};

struct scrub {
	struct jobs *jobs;
	bool quiet; /* settling after a crash: no events, threshold 1 */
	pthread_t thread;
	bool joinable; /* guarded by jobs->lock */
	atomic_bool stop;
	pthread_mutex_t lock;
	pthread_cond_t wake;	   /* CLOCK_MONOTONIC; signalled on stop */
	enum scrub_state state;	   /* guarded by lock */
	struct scrub_run run;	   /* guarded by lock, see above */
	struct scrub_counts total; /* guarded by lock: since mount or add */
	/* Only the job's thread touches the rest. */
	struct timespec pace_start, last_progress;
	uint64_t paced;
	uint32_t buffered; /* by slot: the copy refused O_DIRECT */
};

/* One file being scrubbed; the job's own. */
struct scrub_file {
	struct tree_node *node;
	off_t size; /* how far the data pass compares: the voted size */
	/* By slot: a shorter copy's own end; its blocks past it do not vote
	 * (RANGE_END for every other copy). */
	off_t own_end[CHILDREN_MAX];
	/* By slot: a size finding, recorded after the data pass filled the
	 * tail of a copy that repair extended. */
	struct {
		bool pending, repaired;
		uint64_t off, len;
		char *node;
	} sized[CHILDREN_MAX];
};

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* ---- counts by child name ---- */

static struct scrub_count *count_find(struct scrub_counts *t, const char *name)
{
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->entry[i].name, name) == 0)
			return &t->entry[i];
	return NULL;
}

/* Add n to name's count, making it if needed; lost when out of memory. */
static void count_add(struct scrub_counts *t, const char *name, uint64_t n)
{
	struct scrub_count *c = count_find(t, name), *grown;
	char *copy;

	if (c) {
		c->n += n;
		return;
	}
	copy = strdup(name);
	grown = copy ? realloc(t->entry, (t->n + 1) * sizeof(*grown)) : NULL;
	if (!grown) {
		free(copy);
		return;
	}
	t->entry = grown;
	t->entry[t->n++] = (struct scrub_count){.name = copy, .n = n};
}

static void count_remove(struct scrub_counts *t, const char *name)
{
	struct scrub_count *c = count_find(t, name);

	if (!c)
		return;
	free(c->name);
	*c = t->entry[--t->n];
}

static void counts_release(struct scrub_counts *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->entry[i].name);
	free(t->entry);
	*t = (struct scrub_counts){0};
}

static struct json_object *counts_json(const struct scrub_counts *t)
{
	struct json_object *o = json_object_new_object();

	for (size_t i = 0; i < t->n; i++)
		json_object_object_add(o, t->entry[i].name,
				       json_object_new_int64(t->entry[i].n));
	return o;
}

/* ---- the run's record ---- */

static void run_release(struct scrub_run *run)
{
	for (int i = 0; i < SCRUB_FINDINGS; i++) {
		free(run->finding[i].path);
		free(run->finding[i].node);
	}
	counts_release(&run->children);
	scrub_lost_clear(&run->lost);
	memset(run, 0, sizeof(*run));
}

static void add_int(struct json_object *o, const char *key, uint64_t n)
{
	json_object_object_add(o, key, json_object_new_int64(n));
}

static struct json_object *string_or_null(const char *s)
{
	return s ? json_object_new_string(s) : NULL;
}

/* sector-num and sectors-count of a byte range, as QEMU counts them. */
static void add_sectors(struct json_object *o, uint64_t off, uint64_t len)
{
	uint64_t first = off / 512, end = (off + len + 511) / 512;

	add_int(o, "sector-num", first);
	add_int(o, "sectors-count", end - first);
}

static struct json_object *finding_event(const struct scrub_finding *f)
{
	struct json_object *d = json_object_new_object();

	json_object_object_add(d, "path",
			       json_object_new_string(f->path ? f->path : ""));
	json_object_object_add(d, "node-name", string_or_null(f->node));
	json_object_object_add(d, "kind",
			       json_object_new_string(kind_names[f->kind]));
	add_int(d, "offset", f->off);
	add_int(d, "length", f->len);
	add_sectors(d, f->off, f->len);
	json_object_object_add(d, "repaired",
			       json_object_new_boolean(f->repaired));
	return d;
}

/*
 * Count a finding, keep it for the status and log SCRUB_MISMATCH. The file
 * is n, or the entry leaf of directory n; node is the child's name, or
 * NULL where no child can be blamed (no quorum).
 */
static void record(struct scrub *s, struct tree_node *n, const char *leaf,
		   const char *node, enum finding_kind kind, uint64_t off,
		   uint64_t len, bool repaired)
{
	struct scrub_finding f = {
		.path = leaf ? tree_entry_path(s->jobs->tree, n, leaf)
			     : tree_node_path(s->jobs->tree, n),
		.node = node ? strdup(node) : NULL,
		.kind = kind,
		.off = off,
		.len = len,
		.repaired = repaired};
	struct json_object *d;
	struct scrub_finding *slot;

	if (s->quiet) {
		free(f.path);
		free(f.node);
		return;
	}
	d = finding_event(&f);

	pthread_mutex_lock(&s->lock);
	s->run.mismatches++;
	s->run.repaired += repaired;
	s->run.unrecoverable += kind == FINDING_NO_QUORUM;
	if (kind == FINDING_NO_QUORUM)
		scrub_lost_add(&s->run.lost, f.path, off, len);
	if (node) {
		count_add(&s->run.children, node, 1);
		count_add(&s->total, node, 1);
	}
	slot = &s->run.finding[s->run.findings++ % SCRUB_FINDINGS];
	free(slot->path);
	free(slot->node);
	*slot = f;
	pthread_mutex_unlock(&s->lock);
	event_log_emit(s->jobs->log, "SCRUB_MISMATCH", d);
}

/* SCRUB_PROGRESS, at most once a second. */
static void progress(struct scrub *s)
{
	struct json_object *d;
	struct timespec now;

	if (s->quiet)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (now.tv_sec - s->last_progress.tv_sec < 1)
		return;
	s->last_progress = now;
	d = json_object_new_object();
	pthread_mutex_lock(&s->lock);
	add_int(d, "files-done", s->run.files_done);
	add_int(d, "files-total", s->run.files_total);
	add_int(d, "bytes-done", s->run.bytes_done);
	add_int(d, "bytes-total", s->run.bytes_total);
	add_int(d, "mismatches", s->run.mismatches);
	pthread_mutex_unlock(&s->lock);
	event_log_emit(s->jobs->log, "SCRUB_PROGRESS", d);
}

/* Why the run failed, for the status. */
static void set_reason(struct scrub *s, const char *reason)
{
	pthread_mutex_lock(&s->lock);
	if (!s->run.reason[0])
		snprintf(s->run.reason, sizeof(s->run.reason), "%s", reason);
	pthread_mutex_unlock(&s->lock);
}

static bool stopping(struct scrub *s)
{
	return atomic_load(&s->stop);
}

/*
 * Sleep until bytes scrubbed so far fit the rate, or a stop. The clock
 * is monotonic, so setting the time of day never stalls a scrub.
 */
static void pace(struct scrub *s, uint64_t bytes)
{
	double seconds;
	struct timespec until;

	s->paced += bytes;
	if (s->run.rate == 0)
		return;
	seconds = (double)s->paced / ((double)s->run.rate * MIB);
	until = s->pace_start;
	until.tv_sec += (time_t)seconds;
	until.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&s->lock);
	while (!stopping(s) &&
	       pthread_cond_timedwait(&s->wake, &s->lock, &until) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&s->lock);
}

/* A read failure other than a missing file is the child's read error. */
static void report_read_errors(struct scrub *s, const struct chunk *c)
{
	char *path = NULL;

	for (int k = 0; k < c->n && !s->quiet; k++) {
		struct child *child = c->view->child[c->index[k]];
		int error = c->ballot[k].error;

		if (!error || error == -ENOENT || error == -ENOMEM)
			continue;
		if (!path)
			path = tree_node_path(s->jobs->tree, c->node);
		child_count_error(child, CHILD_OP_READ);
		event_log_report_bad(s->jobs->log, "read", child_name(child),
				     c->off, c->len, error, path ? path : "");
	}
	free(path);
}

/*
 * Ballot k's part of a vote: repair its copy when asked, then record each
 * run of lost blocks. A tail that could not be filled leaves the copy's
 * size finding unrepaired.
 */
static void settle_copy(struct scrub *s, struct scrub_file *f, struct chunk *c,
			int k, bool repair)
{
	struct child *child = c->view->child[c->index[k]];
	bool lost = chunk_marked(c, c->votes.bad, k);
	bool fill = chunk_marked(c, c->votes.fill, k);
	bool ok = (lost || fill) && repair && chunk_repair_copy(c, k);
	bool tail_lost = false;
	size_t b = 0, start, end;

	for (size_t i = 0; i < chunk_blocks(c); i++)
		tail_lost |= c->votes.no_quorum[i] &&
			     (c->votes.excluded[i] & (1u << k));
	if ((fill && !ok) || tail_lost)
		f->sized[child_slot(child)].repaired = false;
	while (chunk_next_run(c, c->votes.bad, 1u << k, &b, &start, &end))
		record(s, c->node, NULL, child_name(child), FINDING_DATA,
		       c->off + start, end - start, ok);
}

/* Witness j's part: its lost blocks' digests rewritten when asked, each
 * run recorded like a data copy's. */
static void settle_witness(struct scrub *s, struct chunk *c, int j, bool repair)
{
	struct child *child = c->view->child[c->windex[j]];
	bool lost = chunk_marked(c, c->votes.bad, c->n + j);
	bool ok = lost && repair && chunk_repair_witness(c, j);
	size_t b = 0, start, end;

	while (chunk_next_run(c, c->votes.bad, 1u << (c->n + j), &b, &start,
			      &end))
		record(s, c->node, NULL, child_name(child), FINDING_DATA,
		       c->off + start, end - start, ok);
}

/*
 * Record what the vote found, after repairing it when asked (the caller
 * then holds the chunk exclusively).
 */
static void chunk_settle(struct scrub *s, struct scrub_file *f, struct chunk *c,
			 bool repair)
{
	size_t b = 0, start, end;

	for (int k = 0; k < c->n; k++)
		settle_copy(s, f, c, k, repair);
	for (int j = 0; j < c->nw; j++)
		settle_witness(s, c, j, repair);
	while (chunk_next_run(c, c->votes.no_quorum, 1, &b, &start, &end))
		record(s, c->node, NULL, NULL, FINDING_NO_QUORUM,
		       c->off + start, end - start, false);
}

/*
 * Scrub [off, off + len) of the file: read and vote under a shared claim;
 * with repair, claim it exclusively and read, vote and write again.
 */
static int scrub_chunk(struct scrub *s, struct scrub_file *f, off_t off,
		       size_t len)
{
	struct chunk c = {.jobs = s->jobs,
			  .node = f->node,
			  .own_end = f->own_end,
			  .buffered = &s->buffered,
			  .view = children_view_get(s->jobs->set),
			  .off = off,
			  .len = len};
	struct range_locks *ranges = tree_node_ranges(f->node);
	struct range_claim claim;
	int ret;

	c.threshold = s->quiet ? 1 : c.view->threshold;
	c.why = s->quiet ? QUARANTINE_SETTLE : QUARANTINE_SCRUB;
	range_lock(ranges, &claim, off, off + len, false);
	chunk_read(&c);
	ret = chunk_vote(&c);
	range_unlock(ranges, &claim);
	report_read_errors(s, &c);
	if (!ret && c.votes.dirty && s->run.repair) {
		range_lock(ranges, &claim, off, off + len, true);
		chunk_read(&c);
		ret = chunk_vote(&c);
		if (!ret && c.votes.dirty)
			chunk_settle(s, f, &c, true);
		range_unlock(ranges, &claim);
	} else if (!ret && c.votes.dirty) {
		chunk_settle(s, f, &c, false);
	}
	chunk_release(&c);
	children_view_put(c.view);
	return ret;
}

/* ---- sizes ---- */

static bool is_witness(const struct child *child)
{
	return child_kind(child) == CHILD_WITNESS;
}

/* Read len bytes at off of fd (child's), bounded by io-timeout, into a
 * new buffer (*out, caller frees): how many, or -errno. */
static ssize_t read_tail(struct scrub *s, struct child *child, int fd,
			 off_t off, size_t len, char **out)
{
	struct child_io io = {.fd = fd,
			      .child = child,
			      .buf = malloc(len),
			      .own_buf = true,
			      .len = len,
			      .off = off};

	if (!io.buf)
		return -ENOMEM;
	child_io_run(s->jobs->pool, &io, 1, s->jobs->timeout_ms);
	if (io.orphaned)
		return -ETIMEDOUT; /* the ring frees the buffer */
	if (io.ret < 0)
		free(io.buf);
	else
		*out = io.buf;
	return io.ret;
}

/* Save a longer copy's tail [size, have) in its quarantine, a chunk an
 * entry, before the copy is cut: 0, or why it must not be cut (a tail
 * the quarantine cannot hold whole). */
static int save_tail(struct scrub *s, struct tree_node *n,
		     const struct child_view *v, int i, off_t size, off_t have)
{
	struct quarantine *q = s->jobs->quarantine;
	int pfd = tree_node_fd(s->jobs->tree, n, child_slot(v->child[i]));
	char proc[64], *path = NULL;
	int fd = -1, ret = 0;

	if (!quarantine_capacity(q) || have <= size)
		return 0;
	if ((unsigned long long)(have - size) > quarantine_capacity(q))
		return -EFBIG;
	if (pfd >= 0)
		child_proc_path(pfd, proc);
	fd = pfd < 0 ? pfd : open(proc, O_RDONLY | O_CLOEXEC);
	path = tree_node_path(s->jobs->tree, n);
	ret = fd < 0 ? (pfd < 0 ? pfd : -errno) : path ? 0 : -ENOMEM;
	for (off_t off = size; !ret && off < have; off += CHILD_IO_MAX) {
		char *old = NULL;
		ssize_t got =
			read_tail(s, v->child[i], fd, off,
				  min_u64(CHILD_IO_MAX, have - off), &old);

		ret = got < 0 ? (int)got
			      : quarantine_save(
					q, v, i,
					&(struct quarantine_bytes){
						.path = path,
						.off = off,
						.old = old,
						.old_len = (size_t)got,
						.new = "",
						.new_len = 0,
						.why = s->quiet
							       ? QUARANTINE_SETTLE
							       : QUARANTINE_SCRUB});
		free(old);
	}
	if (fd >= 0)
		close(fd);
	free(path);
	return ret;
}

/* Give view index i's copy the voted size (have: its own); the data pass
 * fills a shorter one. What cutting a longer one removes is saved
 * first, or it is not cut. */
static bool resize_copy(struct scrub *s, struct tree_node *n,
			const struct child_view *v, int i, off_t size,
			off_t have)
{
	struct child *child = v->child[i];
	bool direct, ok;
	int fd;

	/* A witness's digest list follows its size: nothing to save. */
	if (!is_witness(child) && save_tail(s, n, v, i, size, have))
		return false;
	fd = copy_open(s->jobs, n, child_slot(child),
		       is_witness(child) ? O_RDWR : O_WRONLY, &s->buffered,
		       &direct);
	if (fd < 0)
		return false;
	if (is_witness(child))
		ok = tree_witness_finish(fd, size) == 0 && fdatasync(fd) == 0;
	else
		ok = ftruncate(fd, size) == 0 && fdatasync(fd) == 0;
	close(fd);
	if (!ok)
		child_count_error(child, CHILD_OP_WRITE);
	return ok;
}

/* The size a witness's copy keeps in its header. */
static int witness_size_of(struct scrub *s, struct tree_node *n,
			   struct child *child, off_t *size)
{
	bool direct;
	int64_t have = 0;
	int fd = copy_open(s->jobs, n, child_slot(child), O_RDWR, &s->buffered,
			   &direct),
	    ret;

	if (fd < 0)
		return fd;
	ret = tree_witness_size(fd, &have);
	close(fd);
	*size = (off_t)have;
	return ret;
}

/* The size of view index i's copy in *size, or -errno. */
static int stat_copy(struct scrub *s, struct tree_node *n, struct child *child,
		     off_t *size)
{
	int pfd = tree_node_fd(s->jobs->tree, n, child_slot(child));
	struct stat st;

	if (pfd < 0)
		return pfd;
	if (is_witness(child))
		return witness_size_of(s, n, child, size);
	if (fstatat(pfd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
		return -errno;
	*size = st.st_size;
	return 0;
}

/* A copy of another size: note it, and with repair resize it. */
static void size_mismatch(struct scrub *s, struct scrub_file *f,
			  const struct child_view *v, int i, off_t have)
{
	struct child *child = v->child[i];
	int slot = child_slot(child);
	bool shorter = have < f->size;

	f->sized[slot].pending = true;
	f->sized[slot].node = strdup(child_name(child));
	f->sized[slot].off = shorter ? have : f->size;
	f->sized[slot].len = shorter ? f->size - have : have - f->size;
	if (shorter)
		f->own_end[slot] = have;
	if (s->run.repair)
		f->sized[slot].repaired =
			resize_copy(s, f->node, v, i, f->size, have);
}

/*
 * Vote the copies' sizes: f->size becomes the voted size (the smallest
 * when there is no quorum, which is one unrecoverable finding), and each
 * copy that is missing or of another size is noted.
 */
static void size_settle(struct scrub *s, struct scrub_file *f,
			const struct child_view *v, const off_t *size,
			const int *error)
{
	int index[CHILDREN_MAX], err[CHILDREN_MAX], n = 0;
	off_t smallest = RANGE_END, largest = 0;
	int64_t sz[CHILDREN_MAX];
	struct vote_result r;

	for (int i = 0; i < v->n; i++) {
		if (!v->votes[i])
			continue;
		index[n] = i;
		err[n] = error[i];
		sz[n++] = size[i];
		if (!error[i] && size[i] < smallest)
			smallest = size[i];
		if (!error[i] && size[i] > largest)
			largest = size[i];
	}
	f->size = 0;
	if (n == 0 ||
	    vote_sizes(sz, err, n, s->quiet ? 1 : v->threshold, true, &r)) {
		if (smallest == RANGE_END)
			return;
		f->size = smallest;
		if (largest > smallest)
			record(s, f->node, NULL, NULL, FINDING_NO_QUORUM,
			       smallest, largest - smallest, false);
		return;
	}
	f->size = size[index[r.winner]];
	for (int k = 0; k < n; k++)
		if (r.loser[k])
			size_mismatch(s, f, v, index[k], size[index[k]]);
}

static void size_check(struct scrub *s, struct scrub_file *f)
{
	const struct child_view *v = children_view_get(s->jobs->set);
	off_t size[CHILDREN_MAX] = {0};
	int error[CHILDREN_MAX] = {0};
	struct range_claim claim;

	range_lock(tree_node_ranges(f->node), &claim, 0, RANGE_END,
		   s->run.repair);
	for (int i = 0; i < v->n; i++)
		if (v->votes[i])
			error[i] = stat_copy(s, f->node, v->child[i], &size[i]);
	size_settle(s, f, v, size, error);
	range_unlock(tree_node_ranges(f->node), &claim);
	/* A copy that is missing is the directory pass's finding. */
	for (int i = 0; i < v->n; i++) {
		if (!v->votes[i])
			continue;
		pthread_mutex_lock(&s->lock);
		count_add(&s->run.children, child_name(v->child[i]), 0);
		pthread_mutex_unlock(&s->lock);
	}
	children_view_put(v);
}

/* Size findings wait for the data pass, which fills an extended tail. */
static void size_report(struct scrub *s, struct scrub_file *f)
{
	for (int slot = 0; slot < CHILDREN_MAX; slot++) {
		if (!f->sized[slot].pending)
			continue;
		record(s, f->node, NULL, f->sized[slot].node, FINDING_SIZE,
		       f->sized[slot].off, f->sized[slot].len,
		       f->sized[slot].repaired);
		free(f->sized[slot].node);
	}
}

/* ---- files ---- */

static void add_bytes(struct scrub *s, uint64_t *field, uint64_t n)
{
	pthread_mutex_lock(&s->lock);
	*field += n;
	pthread_mutex_unlock(&s->lock);
}

static void file_start(struct scrub *s, struct scrub_file *f,
		       const struct tree_entry *e)
{
	*f = (struct scrub_file){.node = tree_node(s->jobs->tree, e->ino)};
	for (int slot = 0; slot < CHILDREN_MAX; slot++)
		f->own_end[slot] = RANGE_END;
	size_check(s, f);
}

/* The data pass over [off, end) of the file, up to its voted size. */
static int scrub_range(struct scrub *s, struct scrub_file *f, off_t off,
		       off_t end)
{
	int ret = 0;

	if (end > f->size)
		end = f->size;
	for (; !ret && off < end; off += SCRUB_CHUNK) {
		size_t len = min_u64(SCRUB_CHUNK, end - off);

		if (stopping(s))
			return -ECANCELED;
		ret = scrub_chunk(s, f, off, len);
		add_bytes(s, &s->run.bytes_done, len);
		progress(s);
		pace(s, len);
	}
	return ret;
}

static int scrub_file(struct scrub *s, const struct tree_entry *e)
{
	struct scrub_file f;
	int ret;

	file_start(s, &f, e);
	ret = scrub_range(s, &f, 0, f.size);
	size_report(s, &f);
	add_bytes(s, &s->run.files_done, 1);
	progress(s);
	return ret;
}

/* ---- walking the voted tree ---- */

static void dir_finding(void *arg, struct tree_node *dir, const char *name,
			const char *child, enum finding_kind kind,
			bool repaired)
{
	record(arg, dir, name, child, kind, 0, 0, repaired);
}

/* The names of dir and their metadata, before the walk goes in. */
static int scrub_dir(struct scrub *s, struct tree_node *dir)
{
	const struct dir_report report = {.finding = dir_finding, .arg = s};
	const struct dir_compare_how how = {
		.repair = s->run.repair, .report = &report, .stop = &s->stop};

	if (stopping(s))
		return -ECANCELED;
	return dir_compare(s->jobs, dir, NULL, &how);
}

static int walk_file(struct walk *w, struct tree_node *dir, const char *name,
		     const struct tree_entry *e)
{
	struct scrub *s = w->arg;

	(void)dir;
	(void)name;
	if (S_ISDIR(e->attr.st_mode))
		return scrub_dir(s, tree_node(s->jobs->tree, e->ino));
	if (!S_ISREG(e->attr.st_mode))
		return 0;
	return scrub_file(s, e);
}

static int count_file(struct walk *w, struct tree_node *dir, const char *name,
		      const struct tree_entry *e)
{
	struct scrub *s = w->arg;

	(void)dir;
	(void)name;
	if (!S_ISREG(e->attr.st_mode))
		return 0;
	pthread_mutex_lock(&s->lock);
	s->run.files_total++;
	s->run.bytes_total += e->attr.st_size;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* Only the root's listing must succeed: a directory may go away while it
 * is walked. */
static int walk_unlisted(struct walk *w, struct tree_node *dir, int error)
{
	struct scrub *s = w->arg;
	bool root = dir == tree_root(s->jobs->tree);
	char reason[128];

	snprintf(reason, sizeof(reason), "cannot list %s: %s",
		 root ? "the root" : "a directory", strerror(-error));
	if (root || error == -ENOMEM)
		set_reason(s, reason);
	return root || error == -ENOMEM ? error : 0;
}

/* Listed, but its kind or size has no quorum: a finding (once, in the
 * pass that scrubs). */
static int walk_unvoted(struct walk *w, struct tree_node *dir, const char *name,
			int error)
{
	struct scrub *s = w->arg;

	if (error == -ENOMEM)
		return error;
	if (w->entry == walk_file)
		record(s, dir, name, NULL, FINDING_NO_QUORUM, 0, 0, false);
	return 0;
}

static int scrub_walk(struct scrub *s,
		      int (*entry)(struct walk *w, struct tree_node *dir,
				   const char *name,
				   const struct tree_entry *e))
{
	struct walk w = {.tree = s->jobs->tree,
			 .entry = entry,
			 .unlisted = walk_unlisted,
			 .unvoted = walk_unvoted,
			 .stop = &s->stop,
			 .arg = s};

	return walk_tree(&w, tree_root(s->jobs->tree));
}

/* ---- the job ---- */

static void scrub_finish(struct scrub *s, int ret)
{
	enum scrub_state state = ret == -ECANCELED ? SCRUB_STOPPED
				 : ret		   ? SCRUB_FAILED
						   : SCRUB_COMPLETED;
	struct json_object *d = json_object_new_object();
	char *lost;

	if (state == SCRUB_FAILED)
		set_reason(s, strerror(-ret));
	pthread_mutex_lock(&s->lock);
	json_object_object_add(d, "result",
			       json_object_new_string(state_names[state]));
	json_object_object_add(d, "repair",
			       json_object_new_boolean(s->run.repair));
	add_int(d, "files", s->run.files_done);
	add_int(d, "bytes", s->run.bytes_done);
	add_int(d, "mismatches", s->run.mismatches);
	add_int(d, "repaired", s->run.repaired);
	add_int(d, "unrecoverable", s->run.unrecoverable);
	json_object_object_add(d, "children", counts_json(&s->run.children));
	s->run.finished = time(NULL);
	lost = s->quiet ? NULL
			: scrub_lost_text(&s->run.lost, state_names[state],
					  s->run.repair, s->run.finished,
					  s->run.unrecoverable);
	pthread_mutex_unlock(&s->lock);
	/* Saved before anyone hears the run ended: heal-info, which an
	 * event program may run at SCRUB_COMPLETED, reads what was saved. */
	scrub_lost_save(s->jobs, lost);
	free(lost);
	pthread_mutex_lock(&s->lock);
	s->state = state;
	pthread_mutex_unlock(&s->lock);
	event_log_emit(s->jobs->log, "SCRUB_COMPLETED", d);
}

static void *scrub_thread(void *arg)
{
	struct scrub *s = arg;
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &s->pace_start);
	s->last_progress = s->pace_start;
	ret = scrub_walk(s, count_file);
	if (!ret)
		ret = scrub_dir(s, tree_root(s->jobs->tree));
	if (!ret)
		ret = scrub_walk(s, walk_file);
	scrub_finish(s, ret);
	return NULL;
}

static int scrub_new(struct jobs *jobs, struct scrub **out)
{
	struct scrub *s = calloc(1, sizeof(*s));
	pthread_condattr_t attr;

	if (!s)
		return -ENOMEM;
	s->jobs = jobs;
	atomic_init(&s->stop, false);
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&s->wake, &attr);
	pthread_condattr_destroy(&attr);
	s->run.rate = jobs->scrub_rate;
	*out = s;
	return 0;
}

static void scrub_destroy(struct scrub *s)
{
	run_release(&s->run);
	counts_release(&s->total);
	pthread_cond_destroy(&s->wake);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* Make every copy durable: a settled file must not come back different
 * after a power cut. */
static int sync_copies(struct scrub *s, struct tree_node *n)
{
	const struct child_view *v = children_view_get(s->jobs->set);
	int ret = 0;

	for (int i = 0; i < v->n; i++) {
		bool direct;
		int fd = copy_open(s->jobs, n, child_slot(v->child[i]),
				   O_WRONLY, &s->buffered, &direct);

		if (fd == -ENOENT)
			continue;
		if (fd < 0 || fsync(fd))
			ret = ret ? ret : fd < 0 ? fd : -errno;
		if (fd >= 0)
			close(fd);
	}
	children_view_put(v);
	return ret;
}

int scrub_settle_file(struct jobs *jobs, const struct tree_entry *e,
		      const int64_t *region, int nregions)
{
	struct scrub *s;
	struct scrub_file f;
	int ret = scrub_new(jobs, &s);

	if (ret)
		return ret;
	s->quiet = true;
	s->run.repair = true;
	s->run.rate = 0;
	file_start(s, &f, e);
	for (int k = 0; !ret && k < nregions; k++)
		ret = scrub_range(s, &f, region[k] * PERSIST_REGION,
				  (region[k] + 1) * PERSIST_REGION);
	size_report(s, &f);
	if (!ret)
		ret = sync_copies(s, f.node);
	scrub_destroy(s);
	return ret;
}

/* End the job, if any, and wait for its thread. */
static void scrub_join(struct scrub *s)
{
	if (!s->joinable)
		return;
	pthread_mutex_lock(&s->lock);
	atomic_store(&s->stop, true);
	pthread_cond_broadcast(&s->wake);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->thread, NULL);
	s->joinable = false;
}

static bool scrub_running(struct scrub *s)
{
	bool running;

	pthread_mutex_lock(&s->lock);
	running = s->state == SCRUB_RUNNING;
	pthread_mutex_unlock(&s->lock);
	return running;
}

int scrub_init(struct jobs *jobs)
{
	return scrub_new(jobs, &jobs->scrub);
}

int scrub_start(struct jobs *jobs, bool repair, int rate, char *err,
		size_t errlen)
{
	struct scrub *s = jobs->scrub;
	int ret;

	if (scrub_running(s)) {
		snprintf(err, errlen,
			 "a scrub is already running (scrub stop ends it)");
		return -EBUSY;
	}
	scrub_join(s); /* a finished job's thread */
	pthread_mutex_lock(&s->lock);
	run_release(&s->run);
	s->run.repair = repair;
	s->run.rate = rate < 0 ? jobs->scrub_rate : rate;
	s->run.started = time(NULL);
	s->state = SCRUB_RUNNING;
	atomic_store(&s->stop, false);
	s->paced = 0;
	s->buffered = 0;
	pthread_mutex_unlock(&s->lock);
	ret = -pthread_create(&s->thread, NULL, scrub_thread, s);
	if (ret) {
		snprintf(err, errlen, "cannot start the scrub: %s",
			 strerror(-ret));
		set_reason(s, err);
		pthread_mutex_lock(&s->lock);
		s->state = SCRUB_FAILED;
		pthread_mutex_unlock(&s->lock);
		return ret;
	}
	pthread_setname_np(s->thread, "qfs-scrub");
	s->joinable = true;
	return 0;
}

int scrub_stop(struct jobs *jobs, char *err, size_t errlen)
{
	if (!scrub_running(jobs->scrub)) {
		snprintf(err, errlen, "no scrub is running");
		return -EINVAL;
	}
	scrub_join(jobs->scrub);
	return 0;
}

void scrub_free(struct jobs *jobs)
{
	if (!jobs->scrub)
		return;
	scrub_join(jobs->scrub);
	scrub_destroy(jobs->scrub);
	jobs->scrub = NULL;
}

void scrub_forget_child(struct jobs *jobs, const char *name)
{
	pthread_mutex_lock(&jobs->scrub->lock);
	count_remove(&jobs->scrub->total, name);
	pthread_mutex_unlock(&jobs->scrub->lock);
}

/* ---- status ---- */

static struct json_object *time_or_null(time_t t)
{
	return t ? json_object_new_int64(t) : NULL;
}

/* The kept findings, oldest first. */
static struct json_object *findings_json(const struct scrub_run *run)
{
	struct json_object *list = json_object_new_array();
	uint64_t first = run->findings > SCRUB_FINDINGS
				 ? run->findings - SCRUB_FINDINGS
				 : 0;

	for (uint64_t i = first; i < run->findings; i++) {
		const struct scrub_finding *f =
			&run->finding[i % SCRUB_FINDINGS];
		struct json_object *o = json_object_new_object();

		json_object_object_add(
			o, "path",
			json_object_new_string(f->path ? f->path : ""));
		json_object_object_add(o, "node-name", string_or_null(f->node));
		json_object_object_add(
			o, "kind", json_object_new_string(kind_names[f->kind]));
		add_int(o, "offset", f->off);
		add_int(o, "length", f->len);
		json_object_object_add(o, "repaired",
				       json_object_new_boolean(f->repaired));
		json_object_array_add(list, o);
	}
	return list;
}

static struct json_object *run_json(const struct scrub_run *run,
				    enum scrub_state state)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "state",
			       json_object_new_string(state_names[state]));
	json_object_object_add(o, "repair",
			       json_object_new_boolean(run->repair));
	add_int(o, "rate", run->rate);
	add_int(o, "files-done", run->files_done);
	add_int(o, "files-total", run->files_total);
	add_int(o, "bytes-done", run->bytes_done);
	add_int(o, "bytes-total", run->bytes_total);
	add_int(o, "mismatches", run->mismatches);
	add_int(o, "repaired", run->repaired);
	add_int(o, "unrecoverable", run->unrecoverable);
	json_object_object_add(o, "children", counts_json(&run->children));
	json_object_object_add(o, "started", time_or_null(run->started));
	json_object_object_add(o, "finished", time_or_null(run->finished));
	json_object_object_add(o, "reason",
			       json_object_new_string(run->reason));
	json_object_object_add(o, "findings", findings_json(run));
	return o;
}

/* Each child's "scrub-mismatches", from the counts since mount. */
static void add_child_counts(struct json_object *status,
			     struct scrub_counts *total)
{
	struct json_object *list, *name;

	if (!json_object_object_get_ex(status, "children", &list))
		return;
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		struct json_object *c = json_object_array_get_idx(list, i);
		struct scrub_count *n = NULL;

		if (json_object_object_get_ex(c, "name", &name))
			n = count_find(total, json_object_get_string(name));
		add_int(c, "scrub-mismatches", n ? n->n : 0);
	}
}

void scrub_status(struct jobs *jobs, struct json_object *status)
{
	struct scrub *s = jobs->scrub;

	pthread_mutex_lock(&s->lock);
	json_object_object_add(status, "scrub", run_json(&s->run, s->state));
	add_child_counts(status, &s->total);
	pthread_mutex_unlock(&s->lock);
}
