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
 * One job at a time walks the voted tree. For each regular file:
 *   1. size: under a claim on the whole file (exclusive when repairing)
 *      every voting copy is stat'ed and the sizes voted. A copy of another
 *      size is one finding; repair cuts a longer copy to the voted size and
 *      extends a shorter one, whose new tail the data pass then fills with
 *      the voted bytes. A copy that is missing is reported and left to
 *      resync, which creates files with their metadata.
 *   2. data, in SCRUB_CHUNK pieces up to the voted size: under a shared
 *      claim on the chunk's range (writes claim exclusively, so a busy
 *      image never shows a half-applied write) every voting copy is read
 *      into its own aligned buffer and compared. Only when they differ is
 *      each FS_VOTE_BLOCK block voted on its own; a child's run of lost
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
 * Locks: s->lock is a leaf. Commands take it under fs->control_lock, the
 * job under a file's range lock while it records a finding. The job never
 * takes control_lock, so a command may wait for the job to end.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vote/vote.h"

#define SCRUB_CHUNK FS_BUF_SIZE
#define SCRUB_BLOCKS (SCRUB_CHUNK / FS_VOTE_BLOCK)
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

enum finding_kind {
	FINDING_DATA,	   /* a child's run of blocks lost the vote */
	FINDING_SIZE,	   /* a child's size lost the vote */
	FINDING_MISSING,   /* a voting child lacks the file */
	FINDING_NO_QUORUM, /* no version reached threshold: no child blamed */
};

static const char *const kind_names[] = {
	[FINDING_DATA] = "data",
	[FINDING_SIZE] = "size",
	[FINDING_MISSING] = "missing",
	[FINDING_NO_QUORUM] = "no-quorum",
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
};

struct scrub {
	struct fs *fs;
	pthread_t thread;
	bool joinable; /* guarded by fs->control_lock */
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
	struct node *node;
	off_t size; /* how far the data pass compares: the voted size */
	/* By slot: a shorter copy's own end; its blocks past it do not vote
	 * (FS_OFF_MAX for every other copy). */
	off_t own_end[CHILDREN_MAX];
	/* By slot: a size finding, recorded after the data pass filled the
	 * tail of a copy that repair extended. */
	struct {
		bool pending, repaired;
		uint64_t off, len;
		char *node;
	} sized[CHILDREN_MAX];
};

/*
 * One chunk of a file as every voting child holds it. Ballot k is view
 * index index[k]; block masks have bit k for ballot k.
 */
struct scrub_chunk {
	struct scrub_file *file;
	const struct child_view *view;
	off_t off;
	size_t len;
	int n;
	int index[CHILDREN_MAX];
	char *buf[CHILDREN_MAX];
	struct vote_ballot ballot[CHILDREN_MAX];
	size_t own_len[CHILDREN_MAX];	  /* bytes of ballot k that vote */
	int winner[SCRUB_BLOCKS];	  /* ballot holding the voted bytes */
	uint32_t bad[SCRUB_BLOCKS];	  /* lost the vote: reported */
	uint32_t fill[SCRUB_BLOCKS];	  /* differs past its own end */
	uint32_t excluded[SCRUB_BLOCKS];  /* past its own end: no vote */
	uint32_t no_quorum[SCRUB_BLOCKS]; /* bit 0: no version won */
	bool dirty;			  /* any mask above is set */
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

/* The path of n, or of the entry leaf in directory n. Caller frees. */
static char *entry_path(struct scrub *s, struct node *n, const char *leaf)
{
	char *dir = node_path(s->fs, n), *path = NULL;

	if (!leaf || !dir)
		return dir;
	if (asprintf(&path, "%s%s%s", dir, *dir ? "/" : "", leaf) < 0)
		path = NULL;
	free(dir);
	return path;
}

/*
 * Count a finding, keep it for the status and log SCRUB_MISMATCH. The file
 * is n, or the entry leaf of directory n; node is the child's name, or
 * NULL where no child can be blamed (no quorum).
 */
static void record(struct scrub *s, struct node *n, const char *leaf,
		   const char *node, enum finding_kind kind, uint64_t off,
		   uint64_t len, bool repaired)
{
	struct scrub_finding f = {.path = entry_path(s, n, leaf),
				  .node = node ? strdup(node) : NULL,
				  .kind = kind,
				  .off = off,
				  .len = len,
				  .repaired = repaired};
	struct json_object *d = finding_event(&f);
	struct scrub_finding *slot;

	pthread_mutex_lock(&s->lock);
	s->run.mismatches++;
	s->run.repaired += repaired;
	s->run.unrecoverable += kind == FINDING_NO_QUORUM;
	if (node) {
		count_add(&s->run.children, node, 1);
		count_add(&s->total, node, 1);
	}
	slot = &s->run.finding[s->run.findings++ % SCRUB_FINDINGS];
	free(slot->path);
	free(slot->node);
	*slot = f;
	pthread_mutex_unlock(&s->lock);
	event_log_emit(s->fs->log, "SCRUB_MISMATCH", d);
}

/* SCRUB_PROGRESS, at most once a second. */
static void progress(struct scrub *s)
{
	struct json_object *d;
	struct timespec now;

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
	event_log_emit(s->fs->log, "SCRUB_PROGRESS", d);
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

/* ---- reading and writing copies ---- */

/*
 * Open slot's copy of n. Reads use O_DIRECT unless the copy's file system
 * refused it once (tmpfs); writes are buffered. Returns an fd or -errno
 * (-ENOENT: the child has no such file).
 */
static int open_copy(struct scrub *s, struct node *n, int slot, int flags,
		     bool *direct)
{
	int pfd = node_fd(s->fs, n, slot), fd;
	char proc[64];

	*direct = false;
	if (pfd < 0)
		return pfd;
	fd_proc_path(pfd, proc);
	if (flags == O_RDONLY && !(s->buffered & (1u << slot))) {
		fd = open(proc, O_RDONLY | O_DIRECT | O_CLOEXEC);
		if (fd >= 0) {
			*direct = true;
			return fd;
		}
		if (errno != EINVAL)
			return -errno;
		s->buffered |= 1u << slot;
	}
	fd = open(proc, flags | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* Finish a read that came back short: at end of file for O_DIRECT, else
 * read on. Returns the bytes read or -errno. */
static ssize_t read_rest(int fd, bool direct, char *buf, size_t want, off_t off,
			 ssize_t got)
{
	while (got >= 0 && (size_t)got < want && !direct) {
		ssize_t r = pread(fd, buf + got, want - got, off + got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : got;
		got += r;
	}
	return got;
}

/*
 * A copy whose file system takes O_DIRECT opens but refuses the reads
 * (an alignment larger than FS_ALIGN): read it through the page cache,
 * from now on.
 */
static ssize_t read_buffered(struct scrub *s, struct scrub_chunk *c, int k,
			     size_t want)
{
	int slot = child_slot(c->view->child[c->index[k]]);
	bool direct;
	ssize_t got;
	int fd;

	s->buffered |= 1u << slot;
	fd = open_copy(s, c->file->node, slot, O_RDONLY, &direct);
	if (fd < 0)
		return fd;
	got = read_rest(fd, false, c->buf[k], want, c->off, 0);
	close(fd);
	return got;
}

/* How many bytes of the chunk lie before a copy's own end. */
static size_t own_bytes(const struct scrub_chunk *c, off_t end)
{
	if (end <= c->off)
		return 0;
	return min_u64((uint64_t)(end - c->off), c->len);
}

/* Read every voting copy of the chunk into its own buffer, at once. */
static void chunk_read(struct scrub *s, struct scrub_chunk *c)
{
	struct child_io io[CHILDREN_MAX];
	bool direct[CHILDREN_MAX];
	/* O_DIRECT reads whole blocks; the tail past len is not used. */
	size_t want = (c->len + FS_ALIGN - 1) / FS_ALIGN * FS_ALIGN;

	c->n = 0;
	for (int i = 0; i < c->view->n; i++) {
		int k, slot, fd;
		off_t end;

		if (!c->view->votes[i])
			continue;
		k = c->n++;
		slot = child_slot(c->view->child[i]);
		end = c->file->own_end[slot];
		c->index[k] = i;
		c->ballot[k] = (struct vote_ballot){0};
		c->own_len[k] = own_bytes(c, end);
		io[k] = (struct child_io){.fd = -1};
		if (!c->buf[k])
			c->buf[k] = fs_buf_get(s->fs, SCRUB_CHUNK);
		fd = c->buf[k] ? open_copy(s, c->file->node, slot, O_RDONLY,
					   &direct[k])
			       : -ENOMEM;
		if (fd < 0)
			c->ballot[k].error = fd;
		else
			io[k] = (struct child_io){.fd = fd,
						  .buf = c->buf[k],
						  .child = c->view->child[i],
						  .own_buf = true,
						  .len = want,
						  .off = c->off};
	}
	child_io_run(s->fs->pool, io, c->n, s->fs->timeout_ms);
	for (int k = 0; k < c->n; k++) {
		ssize_t got;

		if (io[k].fd < 0)
			continue;
		if (io[k].orphaned) {
			c->buf[k] = NULL; /* the ring frees it when done */
			c->ballot[k].error = -ETIMEDOUT;
			close(io[k].fd);
			continue;
		}
		got = read_rest(io[k].fd, direct[k], c->buf[k], want, c->off,
				io[k].ret);
		close(io[k].fd);
		if (got == -EINVAL && direct[k])
			got = read_buffered(s, c, k, want);
		if (got < 0)
			c->ballot[k].error = (int)got;
		else
			c->ballot[k] = (struct vote_ballot){
				.data = c->buf[k],
				.len = min_u64((uint64_t)got, c->len)};
	}
}

static void chunk_release(struct scrub *s, struct scrub_chunk *c)
{
	for (int k = 0; k < CHILDREN_MAX; k++) {
		fs_buf_put(s->fs, c->buf[k], SCRUB_CHUNK);
		c->buf[k] = NULL;
	}
}

/* A read failure other than a missing file is the child's read error. */
static void report_read_errors(struct scrub *s, const struct scrub_chunk *c)
{
	char *path = NULL;

	for (int k = 0; k < c->n; k++) {
		struct child *child = c->view->child[c->index[k]];
		int error = c->ballot[k].error;

		if (!error || error == -ENOENT || error == -ENOMEM)
			continue;
		if (!path)
			path = node_path(s->fs, c->file->node);
		child_count_error(child, CHILD_OP_READ);
		event_log_report_bad(s->fs->log, "read", child_name(child),
				     c->off, c->len, error, path ? path : "");
	}
	free(path);
}

/* ---- the vote ---- */

static size_t chunk_blocks(const struct scrub_chunk *c)
{
	return (c->len + FS_VOTE_BLOCK - 1) / FS_VOTE_BLOCK;
}

/* The memcmp fast path: every copy read the whole chunk, all alike. */
static bool chunk_identical(const struct scrub_chunk *c)
{
	const struct vote_ballot *first = &c->ballot[0];

	for (int k = 0; k < c->n; k++) {
		const struct vote_ballot *b = &c->ballot[k];

		if (b->error || c->own_len[k] < c->len || b->len != first->len)
			return false;
		if (k > 0 && memcmp(b->data, first->data, b->len))
			return false;
	}
	return c->n > 0;
}

/* Ballot k's block: its bytes in [start, start + size). */
static struct vote_ballot block_of(const struct scrub_chunk *c, int k,
				   size_t start, size_t size)
{
	const struct vote_ballot *b = &c->ballot[k];

	if (b->error)
		return (struct vote_ballot){.error = b->error};
	if (b->len <= start)
		return (struct vote_ballot){.data = b->data, .len = 0};
	return (struct vote_ballot){.data = (const char *)b->data + start,
				    .len = min_u64(b->len - start, size)};
}

static bool same_bytes(const struct vote_ballot *a, const struct vote_ballot *b)
{
	return a->len == b->len &&
	       (!a->len || !memcmp(a->data, b->data, a->len));
}

/*
 * Vote block b alone (vote_blocks() over the one block) and mark what it
 * decided. Copies past their own end are left out of the vote and marked
 * for filling where they differ from the winner.
 */
static int block_vote(struct scrub_chunk *c, size_t b, int threshold)
{
	size_t start = b * FS_VOTE_BLOCK;
	size_t size = min_u64(FS_VOTE_BLOCK, c->len - start);
	struct vote_ballot bb[CHILDREN_MAX], own[CHILDREN_MAX];
	struct vote_blocks_result r;
	int w = -1, ret;

	c->bad[b] = c->fill[b] = c->excluded[b] = c->no_quorum[b] = 0;
	for (int k = 0; k < c->n; k++) {
		own[k] = bb[k] = block_of(c, k, start, size);
		if (!bb[k].error && start + size > c->own_len[k]) {
			c->excluded[b] |= 1u << k;
			bb[k] = (struct vote_ballot){.error = -ENODATA};
		}
	}
	ret = vote_blocks(bb, c->n, threshold, FS_VOTE_BLOCK, &w, &r);
	if (ret == -ENOMEM)
		return ret;
	if (!ret && w < 0) {
		/* Every voter is at end of file here: nothing to differ. */
		for (int k = 0; k < c->n && w < 0; k++)
			w = bb[k].error ? -1 : k;
	}
	c->winner[b] = w;
	if (ret || w < 0) {
		c->no_quorum[b] = 1;
		c->dirty = true;
		return 0;
	}
	for (int k = 0; k < c->n; k++) {
		if (r.bad[k])
			c->bad[b] |= 1u << k;
		if ((c->excluded[b] & (1u << k)) &&
		    !same_bytes(&own[k], &bb[w]))
			c->fill[b] |= 1u << k;
	}
	c->dirty |= c->bad[b] || c->fill[b];
	return 0;
}

static int chunk_vote(struct scrub_chunk *c)
{
	size_t nblocks = chunk_blocks(c);
	int ret = 0;

	c->dirty = false;
	if (c->n == 0 || chunk_identical(c))
		return 0;
	for (size_t b = 0; !ret && b < nblocks; b++)
		ret = block_vote(c, b, c->view->threshold);
	return ret;
}

/* A run of consecutive blocks whose mask has bit: [start, end) in the
 * chunk. *b is where to look next. */
static bool next_run(const struct scrub_chunk *c, const uint32_t *mask,
		     uint32_t bit, size_t *b, size_t *start, size_t *end)
{
	size_t nblocks = chunk_blocks(c);

	while (*b < nblocks && !(mask[*b] & bit))
		(*b)++;
	if (*b == nblocks)
		return false;
	*start = *b * FS_VOTE_BLOCK;
	while (*b < nblocks && (mask[*b] & bit))
		(*b)++;
	*end = min_u64(*b * FS_VOTE_BLOCK, c->len);
	return true;
}

/* ---- repair ---- */

static int pwrite_full(int fd, const char *buf, size_t len, off_t off)
{
	while (len > 0) {
		ssize_t r = pwrite(fd, buf, len, off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		buf += r;
		len -= r;
		off += r;
	}
	return 0;
}

/* Write the voted bytes of [start, end) of the chunk at fd. */
static int write_run(const struct scrub_chunk *c, int fd, size_t start,
		     size_t end)
{
	int ret = 0;

	for (size_t at = start; !ret && at < end; at += FS_VOTE_BLOCK) {
		size_t b = at / FS_VOTE_BLOCK;
		struct vote_ballot w = block_of(
			c, c->winner[b], at, min_u64(FS_VOTE_BLOCK, end - at));

		ret = pwrite_full(fd, w.data, w.len, c->off + at);
	}
	return ret;
}

/* Write every run of ballot k that mask marks; false if any failed. */
static bool write_runs(const struct scrub_chunk *c, int fd, int k,
		       const uint32_t *mask)
{
	size_t b = 0, start, end;
	bool ok = true;

	while (next_run(c, mask, 1u << k, &b, &start, &end))
		ok &= write_run(c, fd, start, end) == 0;
	return ok;
}

/*
 * Write the voted bytes over ballot k's lost and missing blocks and make
 * them durable. Returns true when all of it reached the copy.
 */
static bool repair_copy(struct scrub *s, const struct scrub_chunk *c, int k)
{
	struct child *child = c->view->child[c->index[k]];
	bool direct, ok;
	int fd = open_copy(s, c->file->node, child_slot(child), O_WRONLY,
			   &direct);

	if (fd < 0)
		return false;
	ok = write_runs(c, fd, k, c->bad);
	ok &= write_runs(c, fd, k, c->fill);
	ok &= fdatasync(fd) == 0;
	close(fd);
	if (!ok)
		child_count_error(child, CHILD_OP_WRITE);
	return ok;
}

static bool ballot_marked(const struct scrub_chunk *c, const uint32_t *mask,
			  int k)
{
	for (size_t b = 0; b < chunk_blocks(c); b++)
		if (mask[b] & (1u << k))
			return true;
	return false;
}

/*
 * Ballot k's part of a vote: repair its copy when asked, then record each
 * run of lost blocks. A tail that could not be filled leaves the copy's
 * size finding unrepaired.
 */
static void settle_copy(struct scrub *s, struct scrub_chunk *c, int k,
			bool repair)
{
	struct child *child = c->view->child[c->index[k]];
	bool lost = ballot_marked(c, c->bad, k);
	bool fill = ballot_marked(c, c->fill, k);
	bool ok = (lost || fill) && repair && repair_copy(s, c, k);
	bool tail_lost = false;
	size_t b = 0, start, end;

	for (size_t i = 0; i < chunk_blocks(c); i++)
		tail_lost |= c->no_quorum[i] && (c->excluded[i] & (1u << k));
	if ((fill && !ok) || tail_lost)
		c->file->sized[child_slot(child)].repaired = false;
	while (next_run(c, c->bad, 1u << k, &b, &start, &end))
		record(s, c->file->node, NULL, child_name(child), FINDING_DATA,
		       c->off + start, end - start, ok);
}

/*
 * Record what the vote found, after repairing it when asked (the caller
 * then holds the chunk exclusively).
 */
static void chunk_settle(struct scrub *s, struct scrub_chunk *c, bool repair)
{
	size_t b = 0, start, end;

	for (int k = 0; k < c->n; k++)
		settle_copy(s, c, k, repair);
	while (next_run(c, c->no_quorum, 1, &b, &start, &end))
		record(s, c->file->node, NULL, NULL, FINDING_NO_QUORUM,
		       c->off + start, end - start, false);
}

/*
 * Scrub [off, off + len) of the file: read and vote under a shared claim;
 * with repair, claim it exclusively and read, vote and write again.
 */
static int scrub_chunk(struct scrub *s, struct scrub_file *f, off_t off,
		       size_t len)
{
	struct scrub_chunk c = {.file = f, .off = off, .len = len};
	struct range_locks *ranges = &f->node->ranges;
	struct range_claim claim;
	int ret;

	c.view = children_view_get(s->fs->set);
	range_lock(ranges, &claim, off, off + len, false);
	chunk_read(s, &c);
	ret = chunk_vote(&c);
	range_unlock(ranges, &claim);
	report_read_errors(s, &c);
	if (!ret && c.dirty && s->run.repair) {
		range_lock(ranges, &claim, off, off + len, true);
		chunk_read(s, &c);
		ret = chunk_vote(&c);
		if (!ret && c.dirty)
			chunk_settle(s, &c, true);
		range_unlock(ranges, &claim);
	} else if (!ret && c.dirty) {
		chunk_settle(s, &c, false);
	}
	chunk_release(s, &c);
	children_view_put(c.view);
	return ret;
}

/* ---- sizes ---- */

/* Give slot's copy the voted size; the data pass fills a longer one. */
static bool resize_copy(struct scrub *s, struct node *n, struct child *child,
			off_t size)
{
	bool direct, ok;
	int fd = open_copy(s, n, child_slot(child), O_WRONLY, &direct);

	if (fd < 0)
		return false;
	ok = ftruncate(fd, size) == 0 && fdatasync(fd) == 0;
	close(fd);
	if (!ok)
		child_count_error(child, CHILD_OP_WRITE);
	return ok;
}

/* The size of view index i's copy in *size, or -errno. */
static int stat_copy(struct scrub *s, struct node *n, struct child *child,
		     off_t *size)
{
	int pfd = node_fd(s->fs, n, child_slot(child));
	struct stat st;

	if (pfd < 0)
		return pfd;
	if (fstatat(pfd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
		return -errno;
	*size = st.st_size;
	return 0;
}

/* A copy of another size: note it, and with repair resize it. */
static void size_mismatch(struct scrub *s, struct scrub_file *f,
			  struct child *child, off_t have)
{
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
			resize_copy(s, f->node, child, f->size);
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
	struct vote_ballot b[CHILDREN_MAX];
	int index[CHILDREN_MAX], n = 0;
	off_t smallest = FS_OFF_MAX, largest = 0;
	struct vote_result r;

	for (int i = 0; i < v->n; i++) {
		if (!v->votes[i])
			continue;
		index[n] = i;
		b[n++] = (struct vote_ballot){.error = error[i],
					      .data = &size[i],
					      .len = sizeof(*size)};
		if (!error[i] && size[i] < smallest)
			smallest = size[i];
		if (!error[i] && size[i] > largest)
			largest = size[i];
	}
	f->size = 0;
	if (n == 0 || vote_whole(b, n, v->threshold, &r)) {
		if (smallest == FS_OFF_MAX)
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
			size_mismatch(s, f, v->child[index[k]], size[index[k]]);
}

static void size_check(struct scrub *s, struct scrub_file *f)
{
	const struct child_view *v = children_view_get(s->fs->set);
	off_t size[CHILDREN_MAX] = {0};
	int error[CHILDREN_MAX] = {0};
	struct range_claim claim;

	range_lock(&f->node->ranges, &claim, 0, FS_OFF_MAX, s->run.repair);
	for (int i = 0; i < v->n; i++)
		if (v->votes[i])
			error[i] = stat_copy(s, f->node, v->child[i], &size[i]);
	size_settle(s, f, v, size, error);
	range_unlock(&f->node->ranges, &claim);
	for (int i = 0; i < v->n; i++) {
		const char *name = child_name(v->child[i]);

		if (!v->votes[i])
			continue;
		pthread_mutex_lock(&s->lock);
		count_add(&s->run.children, name, 0);
		pthread_mutex_unlock(&s->lock);
		/* Creating a file with its metadata is resync's work. */
		if (error[i] == -ENOENT)
			record(s, f->node, NULL, name, FINDING_MISSING, 0,
			       f->size, false);
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

/* ---- walking the voted tree ---- */

static void add_bytes(struct scrub *s, uint64_t *field, uint64_t n)
{
	pthread_mutex_lock(&s->lock);
	*field += n;
	pthread_mutex_unlock(&s->lock);
}

static int scrub_file(struct scrub *s, const struct fs_entry *e)
{
	struct scrub_file f = {.node = node_get(s->fs, e->ino)};
	int ret = 0;

	for (int slot = 0; slot < CHILDREN_MAX; slot++)
		f.own_end[slot] = FS_OFF_MAX;
	size_check(s, &f);
	for (off_t off = 0; !ret && off < f.size; off += SCRUB_CHUNK) {
		size_t len = min_u64(SCRUB_CHUNK, f.size - off);

		if (stopping(s)) {
			ret = -ECANCELED;
			break;
		}
		ret = scrub_chunk(s, &f, off, len);
		add_bytes(s, &s->run.bytes_done, len);
		progress(s);
		pace(s, len);
	}
	size_report(s, &f);
	add_bytes(s, &s->run.files_done, 1);
	progress(s);
	return ret;
}

typedef int entry_fn(struct scrub *s, const struct fs_entry *e);

/* Call fn for every entry of dir's voted listing. Only the root's
 * listing must succeed: a directory may go away while it is walked. */
static int walk_dir(struct scrub *s, struct node *dir, entry_fn *fn)
{
	struct fs *fs = s->fs;
	struct fs_dir *d;
	const char *name;
	struct stat st;
	int ret = fs_opendir(fs, node_ino(fs, dir), &d);

	if (ret) {
		char reason[128];

		snprintf(reason, sizeof(reason), "cannot list %s: %s",
			 dir == &fs->root ? "the root" : "a directory",
			 strerror(-ret));
		if (dir == &fs->root || ret == -ENOMEM)
			set_reason(s, reason);
		return dir == &fs->root || ret == -ENOMEM ? ret : 0;
	}
	for (size_t i = 0; !ret && fs_dir_entry(d, i, &name, &st); i++) {
		struct fs_entry e;
		int found;

		if (stopping(s)) {
			ret = -ECANCELED;
			break;
		}
		if (!strcmp(name, ".") || !strcmp(name, ".."))
			continue;
		found = fs_lookup(fs, node_ino(fs, dir), name, &e);
		if (found == -ENOENT)
			continue; /* gone since the listing */
		if (found == -ENOMEM) {
			ret = found;
			break;
		}
		if (found) {
			/* Listed, but its kind or size has no quorum. */
			if (fn == scrub_file)
				record(s, dir, name, NULL, FINDING_NO_QUORUM, 0,
				       0, false);
			continue;
		}
		if (S_ISDIR(e.attr.st_mode))
			ret = walk_dir(s, node_get(fs, e.ino), fn);
		else if (S_ISREG(e.attr.st_mode))
			ret = fn(s, &e);
		fs_forget(fs, e.ino, 1);
	}
	fs_releasedir(d);
	return ret;
}

static int count_file(struct scrub *s, const struct fs_entry *e)
{
	pthread_mutex_lock(&s->lock);
	s->run.files_total++;
	s->run.bytes_total += e->attr.st_size;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* ---- the job ---- */

static void scrub_finish(struct scrub *s, int ret)
{
	enum scrub_state state = ret == -ECANCELED ? SCRUB_STOPPED
				 : ret		   ? SCRUB_FAILED
						   : SCRUB_COMPLETED;
	struct json_object *d = json_object_new_object();

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
	s->state = state;
	pthread_mutex_unlock(&s->lock);
	event_log_emit(s->fs->log, "SCRUB_COMPLETED", d);
}

static void *scrub_thread(void *arg)
{
	struct scrub *s = arg;
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &s->pace_start);
	s->last_progress = s->pace_start;
	ret = walk_dir(s, &s->fs->root, count_file);
	if (!ret)
		ret = walk_dir(s, &s->fs->root, scrub_file);
	scrub_finish(s, ret);
	return NULL;
}

static int scrub_new(struct fs *fs, struct scrub **out)
{
	struct scrub *s = calloc(1, sizeof(*s));
	pthread_condattr_t attr;

	if (!s)
		return -ENOMEM;
	s->fs = fs;
	atomic_init(&s->stop, false);
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&s->wake, &attr);
	pthread_condattr_destroy(&attr);
	s->run.rate = fs->scrub_rate;
	*out = s;
	return 0;
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

int scrub_start(struct fs *fs, bool repair, int rate, char *err, size_t errlen)
{
	struct scrub *s;
	int ret;

	if (!fs->scrub && (ret = scrub_new(fs, &fs->scrub)))
		return ret;
	s = fs->scrub;
	if (scrub_running(s)) {
		snprintf(err, errlen,
			 "a scrub is already running (scrub stop ends it)");
		return -EBUSY;
	}
	scrub_join(s); /* a finished job's thread */
	pthread_mutex_lock(&s->lock);
	run_release(&s->run);
	s->run.repair = repair;
	s->run.rate = rate < 0 ? fs->scrub_rate : rate;
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

int scrub_stop(struct fs *fs, char *err, size_t errlen)
{
	if (!fs->scrub || !scrub_running(fs->scrub)) {
		snprintf(err, errlen, "no scrub is running");
		return -EINVAL;
	}
	scrub_join(fs->scrub);
	return 0;
}

void scrub_free(struct fs *fs)
{
	struct scrub *s = fs->scrub;

	if (!s)
		return;
	scrub_join(s);
	run_release(&s->run);
	counts_release(&s->total);
	pthread_cond_destroy(&s->wake);
	pthread_mutex_destroy(&s->lock);
	free(s);
	fs->scrub = NULL;
}

void scrub_forget_child(struct fs *fs, const char *name)
{
	if (!fs->scrub)
		return;
	pthread_mutex_lock(&fs->scrub->lock);
	count_remove(&fs->scrub->total, name);
	pthread_mutex_unlock(&fs->scrub->lock);
}

void fs_set_scrub_rate(struct fs *fs, int rate)
{
	fs->scrub_rate = rate;
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

		if (total && json_object_object_get_ex(c, "name", &name))
			n = count_find(total, json_object_get_string(name));
		add_int(c, "scrub-mismatches", n ? n->n : 0);
	}
}

void scrub_status(struct fs *fs, struct json_object *status)
{
	struct scrub *s = fs->scrub;
	struct scrub_run idle = {.rate = fs->scrub_rate};

	if (!s) {
		json_object_object_add(status, "scrub",
				       run_json(&idle, SCRUB_IDLE));
		add_child_counts(status, NULL);
		return;
	}
	pthread_mutex_lock(&s->lock);
	json_object_object_add(status, "scrub", run_json(&s->run, s->state));
	add_child_counts(status, &s->total);
	pthread_mutex_unlock(&s->lock);
}
