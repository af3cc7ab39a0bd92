/*
 * The chunk vote-and-repair of the jobs: one piece of a file as every
 * voting child stores it, read, voted block by block, and the winning
 * bytes written over the copies that lost. Scrub uses it for every file;
 * settling after a crash (settle.c) uses it for the regions the intent
 * log names.
 *
 * Reads go to the copies themselves, not through an open file of the
 * mount: with O_DIRECT where the copy's file system allows it, so a job
 * checks what is stored rather than what is cached, and does not push the
 * VMs' data out of the page cache. A copy's blocks past its own end (a
 * copy shorter than the voted size) never vote: they would vote for the
 * zeros a repair extends it with; they are marked for filling instead.
 *
 * The caller holds the chunk's range claim: shared to look, exclusive to
 * repair (reading and voting again under it, since a write may have
 * changed the chunk meanwhile).
 */
#define _GNU_SOURCE
#include "jobs/jobs_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* ---- reading copies ---- */

int copy_open(struct jobs *jobs, struct tree_node *n, int slot, int flags,
	      uint32_t *buffered, bool *direct)
{
	int pfd = tree_node_fd(jobs->tree, n, slot), fd;
	char proc[64];

	*direct = false;
	if (pfd < 0)
		return pfd;
	child_proc_path(pfd, proc);
	if (flags == O_RDONLY && !(*buffered & (1u << slot))) {
		fd = open(proc, O_RDONLY | O_DIRECT | O_CLOEXEC);
		if (fd >= 0) {
			*direct = true;
			return fd;
		}
		if (errno != EINVAL)
			return -errno;
		*buffered |= 1u << slot; /* tmpfs: no O_DIRECT */
	}
	fd = open(proc, flags | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* Finish a read that came back short: at end of file for O_DIRECT, else
 * read on. Returns the bytes read or -errno. */
static ssize_t read_rest(int fd, bool direct, char *buf, size_t want, off_t off,
			 ssize_t got)
{
	ssize_t more;

	if (got < 0 || direct || (size_t)got >= want)
		return got;
	more = child_rw_full(fd, false, false, buf + got, want - got,
			     off + got);
	return more < 0 ? more : got + more;
}

/*
 * A copy whose file system takes O_DIRECT opens but refuses the reads
 * (an alignment larger than CHILD_IO_ALIGN): read it through the page
 * cache, from now on.
 */
static ssize_t read_buffered(struct chunk *c, int k, size_t want)
{
	int slot = child_slot(c->view->child[c->index[k]]);
	bool direct;
	ssize_t got;
	int fd;

	*c->buffered |= 1u << slot;
	fd = copy_open(c->jobs, c->node, slot, O_RDONLY, c->buffered, &direct);
	if (fd < 0)
		return fd;
	got = read_rest(fd, false, c->buf[k], want, c->off, 0);
	close(fd);
	return got;
}

/* How many bytes of the chunk lie before a copy's own end. */
static size_t own_bytes(const struct chunk *c, off_t end)
{
	if (end <= c->off)
		return 0;
	return min_u64((uint64_t)(end - c->off), c->len);
}

/* Voting child i becomes ballot k: its buffer, and its part of the read
 * (io->fd < 0 when it cannot be read; the ballot then holds why). */
static void read_prepare(struct chunk *c, int i, int k, size_t want,
			 struct child_io *io, bool *direct)
{
	int slot = child_slot(c->view->child[i]), fd;

	c->index[k] = i;
	c->ballot[k] = (struct vote_ballot){0};
	c->own_len[k] = own_bytes(c, c->own_end[slot]);
	*io = (struct child_io){.fd = -1};
	if (!c->buf[k])
		c->buf[k] = child_buf_get(CHILD_IO_MAX);
	fd = c->buf[k] ? copy_open(c->jobs, c->node, slot, O_RDONLY,
				   c->buffered, direct)
		       : -ENOMEM;
	if (fd < 0)
		c->ballot[k].error = fd;
	else
		*io = (struct child_io){.fd = fd,
					.buf = c->buf[k],
					.child = c->view->child[i],
					.own_buf = true,
					.len = want,
					.off = c->off};
}

/* Ballot k from its finished part. */
static void read_collect(struct chunk *c, int k, size_t want,
			 const struct child_io *io, bool direct)
{
	ssize_t got;

	if (io->orphaned) {
		c->buf[k] = NULL; /* the ring frees it when done */
		c->ballot[k].error = -ETIMEDOUT;
		close(io->fd);
		return;
	}
	got = read_rest(io->fd, direct, c->buf[k], want, c->off, io->ret);
	close(io->fd);
	if (got == -EINVAL && direct)
		got = read_buffered(c, k, want);
	if (got < 0)
		c->ballot[k].error = (int)got;
	else
		c->ballot[k] = (struct vote_ballot){
			.data = c->buf[k],
			.len = min_u64((uint64_t)got, c->len)};
}

/* Witness j's digests of the chunk's blocks (the chunk starts on a
 * block). */
static int read_witness(struct chunk *c, int j)
{
	int slot = child_slot(c->view->child[c->windex[j]]), fd, ret;
	size_t n = (c->len + TREE_VOTE_BLOCK - 1) / TREE_VOTE_BLOCK;
	bool direct;

	if (!c->wdig[j])
		c->wdig[j] = malloc(CHILD_IO_MAX / TREE_VOTE_BLOCK *
				    TREE_WITNESS_DIGEST);
	if (!c->wdig[j])
		return -ENOMEM;
	fd = copy_open(c->jobs, c->node, slot, O_RDWR, c->buffered, &direct);
	if (fd < 0)
		return fd;
	ret = tree_witness_get(fd, (uint64_t)c->off / TREE_VOTE_BLOCK,
			       c->wdig[j], n);
	close(fd);
	return ret;
}

static void read_witnesses(struct chunk *c)
{
	c->nw = 0;
	for (int i = 0; i < c->view->n; i++) {
		if (!c->view->votes[i] || !c->view->witness[i])
			continue;
		c->windex[c->nw] = i;
		c->werr[c->nw] = read_witness(c, c->nw);
		c->nw++;
	}
}

void chunk_read(struct chunk *c)
{
	struct child_io io[CHILDREN_MAX];
	bool direct[CHILDREN_MAX] = {false};
	/* O_DIRECT reads whole blocks; the tail past len is not used. */
	size_t want =
		(c->len + CHILD_IO_ALIGN - 1) / CHILD_IO_ALIGN * CHILD_IO_ALIGN;

	c->n = 0;
	for (int i = 0; i < c->view->n; i++) {
		if (!view_reads(c->view, i))
			continue;
		read_prepare(c, i, c->n, want, &io[c->n], &direct[c->n]);
		c->n++;
	}
	child_io_run(c->jobs->pool, io, c->n, c->jobs->timeout_ms);
	for (int k = 0; k < c->n; k++)
		if (io[k].fd >= 0)
			read_collect(c, k, want, &io[k], direct[k]);
	read_witnesses(c);
}

void chunk_release(struct chunk *c)
{
	for (int k = 0; k < CHILDREN_MAX; k++) {
		child_buf_put(c->buf[k], CHILD_IO_MAX);
		c->buf[k] = NULL;
		free(c->wdig[k]);
		c->wdig[k] = NULL;
	}
}

/* ---- the vote ---- */

size_t chunk_blocks(const struct chunk *c)
{
	return (c->len + TREE_VOTE_BLOCK - 1) / TREE_VOTE_BLOCK;
}

/* The memcmp fast path: every copy read the whole chunk, all alike. */
static bool chunk_identical(const struct chunk *c)
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
static struct vote_ballot block_of(const struct chunk *c, int k, size_t start,
				   size_t size)
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

/* Mark what block b's vote decided: r's losers, and the copies left out
 * (past their own end) that differ from winner w. */
static void block_marks(struct chunk *c, size_t b, int w,
			const struct vote_blocks_result *r,
			const struct vote_ballot *own,
			const struct vote_ballot *voted)
{
	struct chunk_votes *v = &c->votes;

	for (int k = 0; k < c->n + c->nw; k++) {
		if (r->bad[k])
			v->bad[b] |= 1u << k;
		if ((v->excluded[b] & (1u << k)) &&
		    !same_bytes(&own[k], &voted[w]))
			v->fill[b] |= 1u << k;
	}
	v->dirty |= v->bad[b] || v->fill[b];
}

/*
 * Block b voted by digest: each data ballot's block hashed (zero-padded
 * past the end of file), each witness's ballot its stored digest. The
 * winner is a data ballot whose digest reaches the threshold: a witness
 * alone holds no bytes to give.
 */
static int digest_vote(const struct chunk *c, size_t b,
		       const struct vote_ballot *bb, int *w,
		       struct vote_blocks_result *r)
{
	unsigned char d[CHILDREN_MAX][TREE_WITNESS_DIGEST];
	struct vote_ballot db[CHILDREN_MAX];
	char block[TREE_VOTE_BLOCK];
	int ret;

	for (int k = 0; k < c->n; k++) {
		db[k] = (struct vote_ballot){.error = bb[k].error};
		if (bb[k].error)
			continue;
		memset(block, 0, sizeof(block));
		memcpy(block, bb[k].data, bb[k].len);
		tree_witness_digest(block, d[k]);
		db[k] = (struct vote_ballot){.data = d[k],
					     .len = TREE_WITNESS_DIGEST};
	}
	for (int j = 0; j < c->nw; j++)
		db[c->n + j] =
			c->werr[j] ? (struct vote_ballot){.error = c->werr[j]}
				   : (struct vote_ballot){
					     .data = c->wdig[j] +
						     b * TREE_WITNESS_DIGEST,
					     .len = TREE_WITNESS_DIGEST};
	ret = vote_blocks(db, c->n + c->nw, c->threshold, TREE_WITNESS_DIGEST,
			  w, r);
	for (int k = 0; !ret && *w >= c->n && k < c->n; k++)
		if (!db[k].error &&
		    !memcmp(db[k].data, db[*w].data, TREE_WITNESS_DIGEST))
			*w = k;
	if (!ret && *w >= c->n)
		*w = -1;
	return ret;
}

/* Vote block b alone (vote_blocks() over the one block). */
static int block_vote(struct chunk *c, size_t b)
{
	size_t start = b * TREE_VOTE_BLOCK;
	size_t size = min_u64(TREE_VOTE_BLOCK, c->len - start);
	struct vote_ballot bb[CHILDREN_MAX], own[CHILDREN_MAX];
	struct chunk_votes *v = &c->votes;
	struct vote_blocks_result r;
	int w = -1, ret;

	v->bad[b] = v->fill[b] = v->excluded[b] = v->no_quorum[b] = 0;
	for (int k = 0; k < c->n; k++) {
		own[k] = bb[k] = block_of(c, k, start, size);
		if (!bb[k].error && start + size > c->own_len[k]) {
			v->excluded[b] |= 1u << k;
			bb[k] = (struct vote_ballot){.error = -ENODATA};
		}
	}
	if (c->nw)
		ret = digest_vote(c, b, bb, &w, &r);
	else
		ret = vote_blocks(bb, c->n, c->threshold, TREE_VOTE_BLOCK, &w,
				  &r);
	if (ret == -ENOMEM)
		return ret;
	/* Every voter is at end of file here: nothing to differ. */
	for (int k = 0; !ret && !c->nw && w < 0 && k < c->n; k++)
		w = bb[k].error ? -1 : k;
	v->winner[b] = w;
	if (ret || w < 0) {
		v->no_quorum[b] = 1;
		v->dirty = true;
		return 0;
	}
	block_marks(c, b, w, &r, own, bb);
	return 0;
}

int chunk_vote(struct chunk *c)
{
	size_t nblocks = chunk_blocks(c);
	int ret = 0;

	c->votes.dirty = false;
	/* A witness's digests are checked even where the copies agree. */
	if (c->n == 0 || (!c->nw && chunk_identical(c)))
		return 0;
	for (size_t b = 0; !ret && b < nblocks; b++)
		ret = block_vote(c, b);
	return ret;
}

bool chunk_next_run(const struct chunk *c, const uint32_t *mask, uint32_t bit,
		    size_t *b, size_t *start, size_t *end)
{
	size_t nblocks = chunk_blocks(c);

	while (*b < nblocks && !(mask[*b] & bit))
		(*b)++;
	if (*b == nblocks)
		return false;
	*start = *b * TREE_VOTE_BLOCK;
	while (*b < nblocks && (mask[*b] & bit))
		(*b)++;
	*end = min_u64(*b * TREE_VOTE_BLOCK, c->len);
	return true;
}

bool chunk_marked(const struct chunk *c, const uint32_t *mask, int k)
{
	for (size_t b = 0; b < chunk_blocks(c); b++)
		if (mask[b] & (1u << k))
			return true;
	return false;
}

/* ---- repair ---- */

static int pwrite_full(int fd, const char *buf, size_t len, off_t off)
{
	ssize_t r = child_rw_full(fd, true, false, (void *)buf, len, off);

	if (r < 0)
		return (int)r;
	return (size_t)r < len ? -EIO : 0;
}

/* Write the voted bytes of [start, end) of the chunk at fd. */
static int write_run(const struct chunk *c, int fd, size_t start, size_t end)
{
	int ret = 0;

	for (size_t at = start; !ret && at < end; at += TREE_VOTE_BLOCK) {
		size_t b = at / TREE_VOTE_BLOCK;
		struct vote_ballot w =
			block_of(c, c->votes.winner[b], at,
				 min_u64(TREE_VOTE_BLOCK, end - at));

		ret = pwrite_full(fd, w.data, w.len, c->off + at);
	}
	return ret;
}

/* Write every run of ballot k that mask marks; false if any failed. */
static bool write_runs(const struct chunk *c, int fd, int k,
		       const uint32_t *mask)
{
	size_t b = 0, start, end;
	bool ok = true;

	while (chunk_next_run(c, mask, 1u << k, &b, &start, &end))
		ok &= write_run(c, fd, start, end) == 0;
	return ok;
}

/* ---- the quarantine: what a repair overwrites, saved first ---- */

/* Save ballot k's bytes of [start, end) of the chunk before the voted
 * ones replace them. */
static int save_run(const struct chunk *c, int k, size_t start, size_t end,
		    const char *path)
{
	size_t have = min_u64(c->ballot[k].len, c->own_len[k]), len = 0;
	char *win = malloc(end - start);
	int ret;

	if (!win)
		return -ENOMEM;
	for (size_t at = start; at < end; at += TREE_VOTE_BLOCK) {
		struct vote_ballot w =
			block_of(c, c->votes.winner[at / TREE_VOTE_BLOCK], at,
				 min_u64(TREE_VOTE_BLOCK, end - at));

		memcpy(win + len, w.data, w.len);
		len += w.len;
	}
	/* Bytes past what the winners hold are the size pass's to cut. */
	have = min_u64(have, start + len);
	ret = quarantine_save(
		c->jobs->quarantine, c->view, c->index[k],
		&(struct quarantine_bytes){
			.path = path,
			.off = c->off + start,
			.old = (const char *)c->ballot[k].data + start,
			.old_len =
				have > start ? min_u64(have, end) - start : 0,
			.new = win,
			.new_len = len,
			.why = c->why});
	free(win);
	return ret;
}

/* Save every run of ballot k a repair is about to overwrite. */
static int save_runs(const struct chunk *c, int k)
{
	uint32_t mask[CHILD_IO_MAX / TREE_VOTE_BLOCK];
	size_t b = 0, start, end;
	char *path;
	int ret = 0;

	if (!c->jobs->quarantine)
		return 0;
	for (size_t i = 0; i < chunk_blocks(c); i++)
		mask[i] = c->votes.bad[i] | c->votes.fill[i];
	path = tree_node_path(c->jobs->tree, c->node);
	while (!ret && chunk_next_run(c, mask, 1u << k, &b, &start, &end))
		ret = save_run(c, k, start, end, path ? path : "");
	free(path);
	return ret;
}

bool chunk_repair_copy(struct chunk *c, int k)
{
	struct child *child = c->view->child[c->index[k]];
	bool direct, ok;
	int fd;

	/* A vote can be wrong: what it overwrites may be the only good
	 * copy, so it is kept first, or not overwritten. */
	if (save_runs(c, k))
		return false;
	fd = copy_open(c->jobs, c->node, child_slot(child), O_WRONLY,
		       c->buffered, &direct);
	if (fd < 0)
		return false;
	ok = write_runs(c, fd, k, c->votes.bad);
	ok &= write_runs(c, fd, k, c->votes.fill);
	ok &= fdatasync(fd) == 0;
	close(fd);
	if (!ok)
		child_count_error(child, CHILD_OP_WRITE);
	return ok;
}

bool chunk_repair_witness(struct chunk *c, int j)
{
	struct child *child = c->view->child[c->windex[j]];
	uint32_t bit = 1u << (c->n + j);
	char block[TREE_VOTE_BLOCK];
	unsigned char d[TREE_WITNESS_DIGEST];
	bool direct, ok = true;
	int fd = copy_open(c->jobs, c->node, child_slot(child), O_RDWR,
			   c->buffered, &direct);

	if (fd < 0)
		return false;
	for (size_t b = 0; b < chunk_blocks(c); b++) {
		struct vote_ballot w;

		if (!(c->votes.bad[b] & bit))
			continue;
		w = block_of(c, c->votes.winner[b], b * TREE_VOTE_BLOCK,
			     TREE_VOTE_BLOCK);
		memset(block, 0, sizeof(block));
		memcpy(block, w.data, w.len);
		tree_witness_digest(block, d);
		ok &= tree_witness_put(fd,
				       (uint64_t)c->off / TREE_VOTE_BLOCK + b,
				       d, 1) == 0;
	}
	ok &= fdatasync(fd) == 0;
	close(fd);
	if (!ok)
		child_count_error(child, CHILD_OP_WRITE);
	return ok;
}
