/*
 * What a change does to a witness child's digest lists (digest.c has the
 * layout), and a witness filled from the vote for the jobs.
 *
 * The digests are computed by the tree from the bytes it writes, and,
 * for the partial blocks at a change's edges, from the voted old block,
 * read under the change's own range claim (aligned to whole blocks while
 * the set has a witness, so two changes never share a block unordered).
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint64_t blocks_of(int64_t size)
{
	return ((uint64_t)size + WITNESS_BLOCK - 1) / WITNESS_BLOCK;
}

/* ---- digests of a change, computed by the tree ---- */

int witness_old_block(struct tree *tree, const struct child_view *view,
		      struct tree_node *n, uint64_t block, char *out)
{
	struct tree_file *reader = file_reader(tree, n);
	struct tree_answer a;
	size_t pos = 0;
	int ret;

	if (!reader)
		return -ENOMEM;
	ret = tree_read_locked(tree, view, reader, (off_t)block * WITNESS_BLOCK,
			       WITNESS_BLOCK, &a);
	for (int k = 0; !ret && k < a.iovcnt; k++) {
		memcpy(out + pos, a.iov[k].iov_base, a.iov[k].iov_len);
		pos += a.iov[k].iov_len;
	}
	if (!ret)
		tree_answer_release(&a);
	memset(out + pos, 0, WITNESS_BLOCK - pos);
	file_put(tree, reader);
	return ret;
}

void witness_change_free(struct witness_change *wc)
{
	free(wc->digest);
	wc->digest = NULL;
}

/* Block blk of a write of buf at [off, off + size), hashed: a partial
 * block is the voted old one with the written bytes laid over it. */
static int write_block_digest(struct tree *tree, const struct child_view *view,
			      struct tree_node *n, const char *buf, size_t size,
			      off_t off, uint64_t blk, unsigned char *out)
{
	off_t start = (off_t)blk * WITNESS_BLOCK, from, to;
	char *old;
	int ret;

	if (start >= off && start + WITNESS_BLOCK <= off + (off_t)size) {
		witness_digest(buf + (start - off), out);
		return 0;
	}
	old = malloc(WITNESS_BLOCK);
	if (!old)
		return -ENOMEM;
	ret = witness_old_block(tree, view, n, blk, old);
	from = off > start ? off : start;
	to = off + (off_t)size < start + WITNESS_BLOCK ? off + (off_t)size
						       : start + WITNESS_BLOCK;
	if (!ret) {
		memcpy(old + (from - start), buf + (from - off), to - from);
		witness_digest(old, out);
	}
	free(old);
	return ret;
}

int witness_prepare_write(struct tree *tree, const struct child_view *view,
			  struct tree_node *n, const char *buf, size_t size,
			  off_t off, struct witness_change *wc)
{
	uint64_t first = (uint64_t)off / WITNESS_BLOCK;
	uint64_t last = ((uint64_t)off + size - 1) / WITNESS_BLOCK;
	int ret = 0;

	*wc = (struct witness_change){.first = first, .end = off + size};
	if (!size)
		return 0;
	wc->n = last - first + 1;
	wc->digest = malloc(wc->n * WITNESS_DIGEST);
	if (!wc->digest)
		return -ENOMEM;
	for (uint64_t b = first; b <= last && !ret; b++)
		ret = write_block_digest(tree, view, n, buf, size, off, b,
					 wc->digest +
						 (b - first) * WITNESS_DIGEST);
	if (ret)
		witness_change_free(wc);
	return ret;
}

/* The partial blocks at the edges of [off, off + len) with that range
 * zeroed, for a punched hole or a zeroed range. */
int witness_prepare_zero(struct tree *tree, const struct child_view *view,
			 struct tree_node *n, off_t off, off_t len,
			 struct witness_change *wc)
{
	off_t edges[2] = {off, off + len};
	char *old = malloc(WITNESS_BLOCK);
	int ret = 0;

	*wc = (struct witness_change){.end = 0};
	wc->digest = malloc(2 * WITNESS_DIGEST);
	if (!old || !wc->digest) {
		ret = -ENOMEM;
		goto out;
	}
	for (int k = 0; k < 2 && !ret; k++) {
		uint64_t blk = (uint64_t)edges[k] / WITNESS_BLOCK;
		off_t start = (off_t)blk * WITNESS_BLOCK, from, to;

		if (edges[k] % WITNESS_BLOCK == 0 ||
		    (wc->n && wc->edge[0] == blk))
			continue;
		ret = witness_old_block(tree, view, n, blk, old);
		from = off > start ? off : start;
		to = off + len < start + WITNESS_BLOCK ? off + len
						       : start + WITNESS_BLOCK;
		memset(old + (from - start), 0, to - from);
		wc->edge[wc->n] = blk;
		witness_digest(old, wc->digest + wc->n++ * WITNESS_DIGEST);
	}
out:
	free(old);
	if (ret)
		witness_change_free(wc);
	return ret;
}

/* The digest of the block size ends in, for a truncate to size. */
int witness_prepare_truncate(struct tree *tree, const struct child_view *view,
			     struct tree_node *n, int64_t size,
			     unsigned char *last)
{
	char *old = malloc(WITNESS_BLOCK);
	uint64_t blk = (uint64_t)size / WITNESS_BLOCK;
	size_t keep = (size_t)(size % WITNESS_BLOCK);
	int ret;

	if (!old)
		return -ENOMEM;
	ret = witness_old_block(tree, view, n, blk, old);
	if (!ret) {
		memset(old + keep, 0, WITNESS_BLOCK - keep);
		witness_digest(old, last);
	}
	free(old);
	return ret;
}

/* ---- for the jobs: a witness filled from, or checked against, the vote */

/* Digests of the voted blocks [off, off + len) of f, zero-padded past the
 * end of file; *got: the bytes the vote returned. */
static int voted_digests(struct tree *tree, const struct child_view *view,
			 struct tree_file *f, off_t off, size_t len,
			 unsigned char *d, size_t *got)
{
	struct tree_answer a;
	char *buf = malloc(len);
	size_t pos = 0;
	int ret = buf ? 0 : -ENOMEM;

	if (!ret)
		ret = tree_read_locked(tree, view, f, off, len, &a);
	for (int k = 0; !ret && k < a.iovcnt; k++) {
		memcpy(buf + pos, a.iov[k].iov_base, a.iov[k].iov_len);
		pos += a.iov[k].iov_len;
	}
	if (!ret) {
		tree_answer_release(&a);
		memset(buf + pos, 0, len - pos);
		for (size_t b = 0; b * WITNESS_BLOCK < pos; b++)
			witness_digest(buf + b * WITNESS_BLOCK,
				       d + b * WITNESS_DIGEST);
		*got = pos;
	}
	free(buf);
	return ret;
}

ssize_t tree_witness_fill(struct tree *tree, const struct child_view *view,
			  struct tree_file *f, int out, off_t off, size_t len)
{
	unsigned char *d = malloc(len / WITNESS_BLOCK * WITNESS_DIGEST);
	size_t got = 0;
	int ret = d ? 0 : -ENOMEM;

	if (!ret)
		ret = voted_digests(tree, view, f, off, len, d, &got);
	if (!ret && got)
		ret = witness_put(out, (uint64_t)off / WITNESS_BLOCK, d,
				  blocks_of((int64_t)got));
	free(d);
	return ret ? ret : (ssize_t)got;
}

int tree_witness_finish(int out, int64_t size)
{
	/* The last partial entry is the fill's or a later change's: only the
	 * list's length and the header follow the size. */
	return witness_truncate(out, size, NULL);
}
