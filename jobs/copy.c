/*
 * Copying an entry from one child to another, whole: what repairing a
 * directory does for a child that lacks an entry the vote says belongs
 * there (dirs.c). Unlike resync, which writes the voted tree into a child
 * that does not vote, this copies one child's own entry, the one that
 * won, into a child whose copy lost; the caller holds the directory's
 * range claim exclusively, so nothing else changes it meanwhile.
 *
 * What is copied: the entry's type, data (holes stay holes), owner, mode,
 * extended attributes and times; a directory with everything below it.
 * Another name of a hard-linked file becomes a copy of its own.
 */
#define _GNU_SOURCE
#include "jobs/jobs_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

#define COPY_BUF CHILD_IO_MAX

/* The data regions of in, written to out; holes are left as holes. */
static int copy_data(int in, int out, off_t size)
{
	char *buf = malloc(COPY_BUF);
	off_t off = 0;
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	while (!ret && off < size) {
		off_t data = lseek(in, off, SEEK_DATA), hole;
		ssize_t got;

		if (data < 0)
			break; /* no data past off */
		hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0)
			hole = size;
		if (hole - data > COPY_BUF)
			hole = data + COPY_BUF;
		got = child_rw_full(in, false, false, buf, hole - data, data);
		if (got == 0)
			break; /* it shrank under us: the size below stands */
		if (got < 0)
			ret = (int)got;
		else if (child_rw_full(out, true, false, buf, got, data) != got)
			ret = -EIO;
		off = got > 0 ? data + got : hole;
	}
	free(buf);
	if (!ret)
		ret = child_result(ftruncate(out, size));
	return ret ? ret : child_result(fsync(out));
}

static int copy_file(int from, int to, const char *name, const struct stat *st)
{
	int in = openat(from, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), out;
	int ret;

	if (in < 0)
		return -errno;
	out = openat(to, name,
		     O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		     st->st_mode & 07777);
	ret = out < 0 ? -errno : copy_data(in, out, st->st_size);
	if (out >= 0)
		close(out);
	close(in);
	return ret;
}

static int copy_dir(int from, int to, const char *name, const struct stat *st)
{
	int in, out, ret;
	struct dirent *de;
	DIR *d;

	if (mkdirat(to, name, st->st_mode & 07777))
		return -errno;
	in = openat(from, name,
		    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	out = openat(to, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	d = in < 0 ? NULL : fdopendir(in);
	ret = !d || out < 0 ? -errno : 0;
	while (!ret && (de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			ret = copy_entry(dirfd(d), out, de->d_name);
	if (!ret)
		ret = child_sync_dir(out, ".", false);
	if (d)
		closedir(d);
	else if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	return ret;
}

/* Remove the xattrs of to that from lacks. */
static int drop_extra_xattrs(const char *from, const char *to)
{
	ssize_t len = listxattr(to, NULL, 0);
	char *list = len > 0 ? malloc(len) : NULL;
	int ret = 0;

	if (len <= 0)
		return 0;
	if (!list)
		return -ENOMEM;
	len = listxattr(to, list, len);
	for (ssize_t i = 0; !ret && len > 0 && i < len;
	     i += strlen(list + i) + 1)
		if (getxattr(from, list + i, NULL, 0) < 0 && errno == ENODATA)
			ret = child_result(removexattr(to, list + i));
	free(list);
	return ret;
}

int copy_child_xattrs(const char *from, const char *to)
{
	char *list = NULL, *value = NULL;
	ssize_t len = listxattr(from, NULL, 0), vlen;
	int ret = drop_extra_xattrs(from, to);

	if (ret || len <= 0)
		return ret ? ret : len < 0 && errno != ENOTSUP ? -errno : 0;
	list = malloc(len);
	value = malloc(XATTR_SIZE_MAX);
	if (!list || !value) {
		ret = -ENOMEM;
		goto out;
	}
	len = listxattr(from, list, len);
	for (ssize_t i = 0; !ret && len > 0 && i < len;
	     i += strlen(list + i) + 1) {
		vlen = getxattr(from, list + i, value, XATTR_SIZE_MAX);
		if (vlen >= 0)
			ret = child_result(
				setxattr(to, list + i, value, vlen, 0));
	}
out:
	free(list);
	free(value);
	return ret;
}

/* Owner, mode, xattrs and times of name, as from has them; times last,
 * since the rest changes them. */
static int copy_metadata(int from, int to, const char *name,
			 const struct stat *st)
{
	struct timespec ts[2] = {st->st_atim, st->st_mtim};
	bool link = S_ISLNK(st->st_mode);
	int a = openat(from, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	int b = openat(to, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	char pa[64], pb[64];
	int ret = a < 0 || b < 0 ? -errno : 0;

	if (!ret)
		ret = child_result(
			fchownat(b, "", st->st_uid, st->st_gid,
				 AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
	child_proc_path(a, pa);
	child_proc_path(b, pb);
	if (!ret && !link)
		ret = child_result(chmod(pb, st->st_mode & 07777));
	if (!ret && !link)
		ret = copy_child_xattrs(pa, pb);
	if (!ret)
		ret = child_result(utimensat(
			b, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
	if (a >= 0)
		close(a);
	if (b >= 0)
		close(b);
	return ret;
}

int copy_entry(int from, int to, const char *name)
{
	char target[PATH_MAX + 1];
	struct stat st;
	ssize_t len;
	int ret;

	if (fstatat(from, name, &st, AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (S_ISREG(st.st_mode)) {
		ret = copy_file(from, to, name, &st);
	} else if (S_ISDIR(st.st_mode)) {
		ret = copy_dir(from, to, name, &st);
	} else if (S_ISLNK(st.st_mode)) {
		len = readlinkat(from, name, target, sizeof(target) - 1);
		if (len >= 0)
			target[len] = '\0';
		ret = len < 0 ? -errno
			      : child_result(symlinkat(target, to, name));
	} else {
		ret = child_result(mknodat(to, name, st.st_mode, st.st_rdev));
	}
	return ret ? ret : copy_metadata(from, to, name, &st);
}

/* A copied file's data turned into its digest list, in place. */
static int digest_file(int dfd, const char *name)
{
	int fd = openat(dfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC), ret = 0;
	char *buf = malloc(COPY_BUF);
	unsigned char *d = NULL;
	struct stat st;
	uint64_t nblocks = 0;

	if (fd < 0 || !buf || fstat(fd, &st)) {
		ret = fd < 0 || !buf ? (fd < 0 ? -errno : -ENOMEM) : -errno;
		goto out;
	}
	nblocks =
		((uint64_t)st.st_size + TREE_VOTE_BLOCK - 1) / TREE_VOTE_BLOCK;
	d = malloc(nblocks ? nblocks * TREE_WITNESS_DIGEST : 1);
	if (!d) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint64_t b = 0; !ret && b < nblocks;
	     b += COPY_BUF / TREE_VOTE_BLOCK) {
		ssize_t got = child_rw_full(fd, false, false, buf, COPY_BUF,
					    (off_t)(b * TREE_VOTE_BLOCK));

		if (got < 0) {
			ret = (int)got;
			break;
		}
		memset(buf + got, 0, COPY_BUF - (size_t)got);
		for (uint64_t k = 0; k * TREE_VOTE_BLOCK < (uint64_t)got; k++)
			tree_witness_digest(buf + k * TREE_VOTE_BLOCK,
					    d + (b + k) * TREE_WITNESS_DIGEST);
	}
	if (!ret)
		ret = child_result(ftruncate(fd, 0));
	if (!ret && nblocks)
		ret = tree_witness_put(fd, 0, d, nblocks);
	if (!ret)
		ret = tree_witness_finish(fd, st.st_size);
out:
	free(d);
	free(buf);
	if (fd >= 0)
		close(fd);
	return ret;
}

/* Every regular file at or below name turned into its digest list. */
static int digest_tree(int dfd, const char *name)
{
	struct dirent *de;
	struct stat st;
	DIR *dir;
	int fd, ret = 0;

	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (S_ISREG(st.st_mode))
		return digest_file(dfd, name);
	if (!S_ISDIR(st.st_mode))
		return 0;
	fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	dir = fd < 0 ? NULL : fdopendir(fd);
	if (!dir) {
		ret = -errno;
		if (fd >= 0)
			close(fd);
		return ret;
	}
	while (!ret && (de = readdir(dir)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			ret = digest_tree(dirfd(dir), de->d_name);
	closedir(dir);
	return ret;
}

int copy_entry_witness(int from, int to, const char *name)
{
	int ret = copy_entry(from, to, name);

	return ret ? ret : digest_tree(to, name);
}

static int remove_contents(int fd)
{
	DIR *d = fdopendir(fd);
	struct dirent *de;
	int ret = 0;

	if (!d) {
		close(fd);
		return -ENOMEM;
	}
	while (!ret && (de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			ret = remove_tree(dirfd(d), de->d_name);
	closedir(d);
	return ret;
}

int remove_tree(int dfd, const char *name)
{
	int fd, ret;

	if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ret = remove_contents(fd);
	return ret ? ret : child_result(unlinkat(dfd, name, AT_REMOVEDIR));
}
