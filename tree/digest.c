/*
 * A witness child's files: digests instead of data.
 *
 * Layout. A witness holds the same tree of names, modes, owners, times
 * and xattrs as a data child; each regular file's content is replaced by
 *   - a 32-byte header: the magic "QFSWITN1", then the file's logical
 *     size as a little-endian 64-bit number, then 16 zero bytes;
 *   - then, for block k (bytes [k * 4096, (k + 1) * 4096) of the data),
 *     its SHA-256 digest at offset 32 + 32 * k.
 * A file shorter than the header (a file just created, or truncated by
 * an open with O_TRUNC) has logical size 0. The digest of a block is over
 * all 4096 bytes, the part past the end of file counted as zeros: so the
 * last partial block's digest is that of the block zero-padded, and a
 * file that grows never changes the digests it had. An entry of 32 zero
 * bytes stands for a block of zeros (a grown file's new blocks, a punched
 * hole): no SHA-256 digest is all zeros in practice, and a grow then
 * needs no hashing. The witness is 32 bytes per 4 KiB of data (0.8 %),
 * plus its tree.
 *
 * This file reads and writes that layout; witness.c computes what goes
 * in it.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WITNESS_MAGIC "QFSWITN1"

static const char zero_block[WITNESS_BLOCK];
static unsigned char zero_block_digest[WITNESS_DIGEST];
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;

/* Each thread keeps one digest context, freed when the thread ends. */
static pthread_key_t ctx_key;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static bool ctx_keyless;

static void ctx_free(void *ctx)
{
	EVP_MD_CTX_free(ctx);
}

static void ctx_key_create(void)
{
	ctx_keyless = pthread_key_create(&ctx_key, ctx_free) != 0;
}

static EVP_MD_CTX *thread_ctx(void)
{
	EVP_MD_CTX *ctx;

	pthread_once(&ctx_once, ctx_key_create);
	if (ctx_keyless)
		return NULL;
	ctx = pthread_getspecific(ctx_key);
	if (!ctx && (ctx = EVP_MD_CTX_new()) &&
	    pthread_setspecific(ctx_key, ctx)) {
		EVP_MD_CTX_free(ctx);
		ctx = NULL;
	}
	return ctx;
}

void witness_digest(const void *block, unsigned char *out)
{
	EVP_MD_CTX *ctx = thread_ctx();
	unsigned int len = WITNESS_DIGEST;

	if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ||
	    !EVP_DigestUpdate(ctx, block, WITNESS_BLOCK) ||
	    !EVP_DigestFinal_ex(ctx, out, &len))
		EVP_Digest(block, WITNESS_BLOCK, out, &len, EVP_sha256(), NULL);
}

static void zero_init(void)
{
	witness_digest(zero_block, zero_block_digest);
}

/* An entry as read: the all-zero entry is the digest of a zero block. */
static void entry_normalize(unsigned char *e)
{
	if (memcmp(e, zero_block, WITNESS_DIGEST))
		return;
	pthread_once(&zero_once, zero_init);
	memcpy(e, zero_block_digest, WITNESS_DIGEST);
}

int witness_size(int fd, int64_t *size)
{
	unsigned char h[WITNESS_HEADER];
	uint64_t le;
	ssize_t r = pread(fd, h, sizeof(h), 0);

	if (r < 0)
		return -errno;
	*size = 0;
	if (r < (ssize_t)sizeof(h))
		return 0; /* created, or truncated by an open: empty */
	if (memcmp(h, WITNESS_MAGIC, 8))
		return -EIO; /* not a witness's file: its record is wrong */
	memcpy(&le, h + 8, sizeof(le));
	*size = (int64_t)le64toh(le);
	return *size < 0 ? -EIO : 0;
}

static int put_size(int fd, int64_t size)
{
	unsigned char h[WITNESS_HEADER] = {0};
	uint64_t le = htole64((uint64_t)size);

	memcpy(h, WITNESS_MAGIC, 8);
	memcpy(h + 8, &le, sizeof(le));
	return child_rw_full(fd, true, false, h, sizeof(h), 0) ==
			       (ssize_t)sizeof(h)
		       ? 0
		       : -EIO;
}

static off_t entry_off(uint64_t block)
{
	return WITNESS_HEADER + (off_t)block * WITNESS_DIGEST;
}

static uint64_t blocks_of(int64_t size)
{
	return ((uint64_t)size + WITNESS_BLOCK - 1) / WITNESS_BLOCK;
}

int witness_get(int fd, uint64_t block, unsigned char *d, size_t n)
{
	ssize_t r = child_rw_full(fd, false, false, d, n * WITNESS_DIGEST,
				  entry_off(block));

	if (r < 0)
		return (int)r;
	/* Past the end of the list: blocks of zeros. */
	memset(d + r, 0, n * WITNESS_DIGEST - (size_t)r);
	for (size_t k = 0; k < n; k++)
		entry_normalize(d + k * WITNESS_DIGEST);
	return 0;
}

int witness_put(int fd, uint64_t block, const unsigned char *d, size_t n)
{
	ssize_t r = child_rw_full(fd, true, false, (void *)d,
				  n * WITNESS_DIGEST, entry_off(block));

	if (r < 0)
		return (int)r;
	return (size_t)r < n * WITNESS_DIGEST ? -ENOSPC : 0;
}

int witness_write(int fd, const struct witness_change *wc)
{
	int64_t size;
	int ret = witness_size(fd, &size);

	/* The size first: a crash in between leaves entries missing, which
	 * a size vote cannot miss, not entries past the size, which it can. */
	if (!ret && wc->end > size)
		ret = put_size(fd, wc->end);
	if (!ret && wc->n)
		ret = witness_put(fd, wc->first, wc->digest, wc->n);
	return ret;
}

/*
 * The list made to end at size's last block: cut (shrinking) or grown
 * with zero entries, which are blocks of zeros. last is the new last
 * partial block's digest (NULL when size ends on a block boundary).
 */
int witness_truncate(int fd, int64_t size, const unsigned char *last)
{
	uint64_t n = blocks_of(size);
	int ret = child_result(ftruncate(fd, entry_off(n)));

	if (!ret && last && n)
		ret = witness_put(fd, n - 1, last, 1);
	if (!ret)
		ret = put_size(fd, size);
	return ret;
}

/* Zero entries for blocks [first, first + n): a punched hole. */
static int put_zeros(int fd, uint64_t first, uint64_t n)
{
	static const unsigned char zeros[64 * WITNESS_DIGEST];
	int ret = 0;

	while (n && !ret) {
		uint64_t k = n < 64 ? n : 64;

		ret = witness_put(fd, first, zeros, k);
		first += k;
		n -= k;
	}
	return ret;
}

/*
 * fallocate on the witness: a hole punched or a range zeroed is zero
 * entries for its whole blocks and wc's digests for its partial edge
 * blocks (wc->first, wc->n: the first edge; wc->last_digest, the other),
 * clipped to the file; a range allocated past the end grows the file.
 */
int witness_fallocate(int fd, const struct witness_change *wc, int mode,
		      off_t off, off_t len)
{
	bool zeroes = mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE);
	int64_t size, end = off + len;
	uint64_t full_first, full_end;
	int ret = witness_size(fd, &size);

	if (ret || !zeroes || off >= size)
		goto grow;
	if (end > size)
		end = size;
	full_first = blocks_of(off);
	full_end = (uint64_t)end / WITNESS_BLOCK;
	if (end == size)
		full_end = blocks_of(size);
	if (full_first < full_end)
		ret = put_zeros(fd, full_first, full_end - full_first);
	for (size_t k = 0; !ret && k < wc->n; k++)
		if (wc->edge[k] < blocks_of(size))
			ret = witness_put(fd, wc->edge[k],
					  wc->digest + k * WITNESS_DIGEST, 1);
grow:
	if (!ret && !(mode & FALLOC_FL_KEEP_SIZE) && off + len > size)
		ret = witness_truncate(fd, off + len, NULL);
	return ret;
}

/* The file of a node's O_PATH handle opened with flags. */
int witness_open(int pathfd, int flags)
{
	char proc[64];
	int fd;

	child_proc_path(pathfd, proc);
	fd = open(proc, flags | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* ---- the same for the jobs (tree.h) ---- */

void tree_witness_digest(const void *block, unsigned char *out)
{
	witness_digest(block, out);
}

int tree_witness_get(int fd, uint64_t block, unsigned char *d, size_t n)
{
	return witness_get(fd, block, d, n);
}

int tree_witness_put(int fd, uint64_t block, const unsigned char *d, size_t n)
{
	return witness_put(fd, block, d, n);
}

int tree_witness_size(int fd, int64_t *size)
{
	return witness_size(fd, size);
}
