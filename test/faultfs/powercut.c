/*
 * The power-cut journal: what powercut.h describes, for the durability
 * model README.md states.
 *
 * Locking. pc->lock guards everything in struct powercut. It is held
 * across each journaled change: the copy of the old bytes or the making
 * of the record, the change itself, and the record's joining the
 * journal; across a sync's forgetting; and across the cut. So the cut
 * never sees half a change, and a change that waited for the lock while
 * the cut ran finds pc->dead and is refused. No call made under it waits
 * for another faultfs operation.
 *
 * Data. A file's entry keeps its size at the last sync and a copy of
 * every 4 KiB block (as far as that size) changed since, taken before the
 * first change to the block: a block not copied still holds its bytes of
 * the last sync. Bytes past the end that the file had at its last sync
 * were copied when a truncation cut them off, so an append copies
 * nothing.
 *
 * Names. Records are kept newest first. A directory is known by the
 * inode of an O_PATH handle the journal holds, which also keeps the inode
 * number from being reused while a record names it.
 */
#define _GNU_SOURCE
#include "powercut.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOCK 4096

struct pc_dir {
	dev_t dev;
	ino_t ino;
	int fd; /* O_PATH */
	int refs;
	struct pc_dir *next;
};

struct pc_block {
	off_t index;
	size_t len;
	char *data;
};

struct pc_file {
	dev_t dev;
	ino_t ino;
	int fd;			/* read-write, ours: outlives the caller's */
	off_t size;		/* at the last sync */
	struct pc_block *block; /* sorted by index */
	size_t nblocks, cap;
	struct pc_file *next;
};

enum pc_kind {
	PC_CREATED,   /* dir[0]/name[0] was made: inode ino */
	PC_REMOVED,   /* dir[0]/name[0] is now the graveyard's entry grave */
	PC_RENAMED,   /* dir[0]/name[0] became dir[1]/name[1], over grave */
	PC_EXCHANGED, /* dir[0]/name[0] and dir[1]/name[1] were swapped */
};

static const char *const kind_names[] = {
	[PC_CREATED] = "creation",
	[PC_REMOVED] = "removal",
	[PC_RENAMED] = "rename",
	[PC_EXCHANGED] = "exchange",
};

struct pc_record {
	enum pc_kind kind;
	struct pc_dir *dir[2]; /* dir[1]: renames and exchanges only */
	char *name[2];
	unsigned int synced; /* bit i: dir[i] was fsync'd since */
	bool keep;
	ino_t ino;
	unsigned long long grave; /* 0: none */
	struct pc_record *older;
};

struct powercut {
	pthread_mutex_t lock;
	int root_fd;  /* BACKING_DIR, borrowed */
	int grave_fd; /* the graveyard, O_PATH */
	bool dead;
	unsigned long long graves; /* the last graveyard name given */
	struct pc_dir *dirs;
	struct pc_file *files;
	struct pc_record *newest;
};

/* ---- the backing tree ---- */

static int remove_contents(int fd);

/* Delete dir_fd/name, and all it holds if it is a directory. */
static int remove_tree(int dir_fd, const char *name)
{
	struct stat st;
	int fd, ret;

	if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return unlinkat(dir_fd, name, 0) ? -errno : 0;
	fd = openat(dir_fd, name,
		    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ret = remove_contents(fd);
	if (!ret && unlinkat(dir_fd, name, AT_REMOVEDIR))
		ret = -errno;
	return ret;
}

static bool is_dot(const char *name)
{
	return strcmp(name, ".") == 0 || strcmp(name, "..") == 0;
}

/* Delete everything in the open directory fd, which this closes. */
static int remove_contents(int fd)
{
	DIR *dp = fdopendir(fd);
	struct dirent *d;
	int ret = 0;

	if (!dp) {
		ret = -errno;
		close(fd);
		return ret;
	}
	while ((d = readdir(dp))) {
		int r = 0;

		if (!is_dot(d->d_name))
			r = remove_tree(dirfd(dp), d->d_name);
		if (r && !ret)
			ret = r;
	}
	closedir(dp);
	return ret;
}

/* 0 when dir_fd/name is an empty directory, else -ENOTEMPTY or why not. */
static int dir_empty(int dir_fd, const char *name)
{
	int fd = openat(dir_fd, name,
			O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct dirent *d;
	int ret = 0;
	DIR *dp;

	if (fd < 0)
		return -errno;
	dp = fdopendir(fd);
	if (!dp) {
		ret = -errno;
		close(fd);
		return ret;
	}
	while (!ret && (d = readdir(dp)))
		if (!is_dot(d->d_name))
			ret = -ENOTEMPTY;
	closedir(dp);
	return ret;
}

static int pwrite_all(int fd, const char *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n =
			pwrite(fd, buf + done, len - done, off + (off_t)done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		done += (size_t)n;
	}
	return 0;
}

/* ---- the graveyard ---- */

static void grave_name(unsigned long long grave, char *buf, size_t len)
{
	snprintf(buf, len, "%llu", grave);
}

/* Move dir_fd/name into the graveyard; *grave is its name there. */
static int bury(struct powercut *pc, int dir_fd, const char *name,
		unsigned long long *grave)
{
	char g[24];

	grave_name(++pc->graves, g, sizeof(g));
	if (renameat2(dir_fd, name, pc->grave_fd, g, RENAME_NOREPLACE))
		return -errno;
	*grave = pc->graves;
	return 0;
}

static int unbury(struct powercut *pc, unsigned long long grave, int dir_fd,
		  const char *name)
{
	char g[24];

	grave_name(grave, g, sizeof(g));
	return renameat2(pc->grave_fd, g, dir_fd, name, RENAME_NOREPLACE)
		       ? -errno
		       : 0;
}

/* The removal is durable: the entry goes for good. */
static void forget_grave(struct powercut *pc, unsigned long long grave)
{
	char g[24];

	if (!grave)
		return;
	grave_name(grave, g, sizeof(g));
	remove_tree(pc->grave_fd, g);
}

/* ---- directories ---- */

static struct pc_dir *dir_find(struct powercut *pc, const struct stat *st)
{
	for (struct pc_dir *d = pc->dirs; d; d = d->next)
		if (d->dev == st->st_dev && d->ino == st->st_ino)
			return d;
	return NULL;
}

/* A reference to the journal's entry of the directory open at fd, which
 * this takes: one entry per inode. */
static int dir_of(struct powercut *pc, int fd, struct pc_dir **out)
{
	struct pc_dir *d;
	struct stat st;
	int ret;

	if (fstat(fd, &st)) {
		ret = -errno;
		close(fd);
		return ret;
	}
	d = dir_find(pc, &st);
	if (d) {
		close(fd);
		d->refs++;
		*out = d;
		return 0;
	}
	d = malloc(sizeof(*d));
	if (!d) {
		close(fd);
		return -ENOMEM;
	}
	*d = (struct pc_dir){.dev = st.st_dev,
			     .ino = st.st_ino,
			     .fd = fd,
			     .refs = 1,
			     .next = pc->dirs};
	pc->dirs = d;
	*out = d;
	return 0;
}

static void dir_put(struct powercut *pc, struct pc_dir *d)
{
	if (!d || --d->refs)
		return;
	for (struct pc_dir **p = &pc->dirs; *p; p = &(*p)->next) {
		if (*p == d) {
			*p = d->next;
			break;
		}
	}
	close(d->fd);
	free(d);
}

/* The directory holding path's last name, and that name (in path). */
static int parent_of(struct powercut *pc, const char *path, struct pc_dir **dir,
		     const char **name)
{
	const char *slash = strrchr(path, '/');
	char *parent;
	int fd;

	if (!slash || !slash[1])
		return -EINVAL;
	*name = slash + 1;
	if (strlen(*name) > NAME_MAX)
		return -ENAMETOOLONG;
	parent = slash == path ? strdup(".")
			       : strndup(path + 1, (size_t)(slash - path - 1));
	if (!parent)
		return -ENOMEM;
	fd = openat(pc->root_fd, parent, O_PATH | O_DIRECTORY | O_CLOEXEC);
	free(parent);
	if (fd < 0)
		return -errno;
	return dir_of(pc, fd, dir);
}

/* ---- records ---- */

static void record_free(struct powercut *pc, struct pc_record *r)
{
	for (int i = 0; i < 2; i++) {
		dir_put(pc, r->dir[i]);
		free(r->name[i]);
	}
	free(r);
}

static int record_side(struct powercut *pc, struct pc_record *r, int i,
		       const char *path)
{
	const char *name;
	int ret = parent_of(pc, path, &r->dir[i], &name);

	if (!ret && !(r->name[i] = strdup(name)))
		ret = -ENOMEM;
	return ret;
}

/*
 * Start a change of names: take the lock and a record naming the entries
 * it changes (path, and to for a rename). On success the lock stays held
 * until end(), and the change is made through the record's handles.
 */
static int begin(struct powercut *pc, enum pc_kind kind, const char *path,
		 const char *to, struct pc_record **out)
{
	struct pc_record *r = NULL;
	int ret = 0;

	pthread_mutex_lock(&pc->lock);
	if (pc->dead)
		ret = -EIO;
	else if (!(r = calloc(1, sizeof(*r))))
		ret = -ENOMEM;
	if (!ret) {
		r->kind = kind;
		ret = record_side(pc, r, 0, path);
	}
	if (!ret && to)
		ret = record_side(pc, r, 1, to);
	if (ret) {
		if (r)
			record_free(pc, r);
		pthread_mutex_unlock(&pc->lock);
		return ret;
	}
	*out = r;
	return 0;
}

/* The change was made (ret 0), failed (-errno) or changed nothing (1):
 * the record joins the journal or is dropped, and the lock goes. */
static int end(struct powercut *pc, struct pc_record *r, int ret)
{
	struct stat st;

	if (!ret && r->kind == PC_CREATED &&
	    !fstatat(r->dir[0]->fd, r->name[0], &st, AT_SYMLINK_NOFOLLOW))
		r->ino = st.st_ino;
	if (ret) {
		record_free(pc, r);
	} else {
		r->older = pc->newest;
		pc->newest = r;
	}
	pthread_mutex_unlock(&pc->lock);
	return ret > 0 ? 0 : ret;
}

/* The record's change is durable. */
static void keep(struct powercut *pc, struct pc_record *r)
{
	forget_grave(pc, r->grave);
	record_free(pc, r);
}

static bool same_entry(const struct pc_record *a, const struct pc_record *b)
{
	for (int i = 0; i < 2; i++)
		for (int j = 0; j < 2; j++)
			if (a->dir[i] && a->dir[i] == b->dir[j] &&
			    strcmp(a->name[i], b->name[j]) == 0)
				return true;
	return false;
}

/*
 * Directory d was fsync'd. A record is kept once every directory it
 * changed was, and so is every older record that changed an entry a kept
 * one changed: the durable directory holds that entry as both left it.
 * Newest first, so what a kept record pulls in is reached after it.
 */
static void dir_synced(struct powercut *pc, struct pc_dir *d)
{
	struct pc_record **p, *r;

	for (r = pc->newest; r; r = r->older) {
		for (int i = 0; i < 2; i++)
			if (r->dir[i] == d)
				r->synced |= 1u << i;
		if (r->synced == (r->dir[1] ? 3u : 1u))
			r->keep = true;
	}
	for (r = pc->newest; r; r = r->older)
		for (struct pc_record *q = r->older; r->keep && q; q = q->older)
			if (same_entry(q, r))
				q->keep = true;
	for (p = &pc->newest; (r = *p);) {
		if (r->keep) {
			*p = r->older;
			keep(pc, r);
		} else {
			p = &r->older;
		}
	}
}

/* Undo r, the newest record left. Fails mostly when the directory r
 * changed was removed, durably, since: it went with all it held. */
static int undo(struct powercut *pc, const struct pc_record *r)
{
	int fd0 = r->dir[0]->fd, fd1 = r->dir[1] ? r->dir[1]->fd : -1;
	struct stat st;

	switch (r->kind) {
	case PC_CREATED:
		if (fstatat(fd0, r->name[0], &st, AT_SYMLINK_NOFOLLOW))
			return -errno;
		if (st.st_ino != r->ino)
			return -ESTALE;
		return remove_tree(fd0, r->name[0]);
	case PC_REMOVED:
		return unbury(pc, r->grave, fd0, r->name[0]);
	case PC_RENAMED:
		if (renameat2(fd1, r->name[1], fd0, r->name[0],
			      RENAME_NOREPLACE))
			return -errno;
		return r->grave ? unbury(pc, r->grave, fd1, r->name[1]) : 0;
	case PC_EXCHANGED:
		return renameat2(fd1, r->name[1], fd0, r->name[0],
				 RENAME_EXCHANGE)
			       ? -errno
			       : 0;
	}
	return -EINVAL;
}

/* ---- files ---- */

static void file_free(struct pc_file *f)
{
	for (size_t i = 0; i < f->nblocks; i++)
		free(f->block[i].data);
	free(f->block);
	close(f->fd);
	free(f);
}

static struct pc_file **file_find(struct powercut *pc, dev_t dev, ino_t ino)
{
	struct pc_file **p;

	for (p = &pc->files; *p; p = &(*p)->next)
		if ((*p)->dev == dev && (*p)->ino == ino)
			break;
	return p;
}

/* The journal's entry of the file open at fd, made at its first change
 * since its last sync; *out is NULL for anything but a regular file. */
static int file_of(struct powercut *pc, int fd, struct pc_file **out)
{
	struct pc_file *f;
	char proc[32];
	struct stat st;
	int ret;

	*out = NULL;
	if (pc->dead)
		return -EIO;
	if (fstat(fd, &st))
		return -errno;
	if (!S_ISREG(st.st_mode))
		return 0;
	*out = *file_find(pc, st.st_dev, st.st_ino);
	if (*out)
		return 0;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	/* Our own handle, read-write whatever the caller's is. */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	f->fd = open(proc, O_RDWR | O_CLOEXEC);
	if (f->fd < 0) {
		ret = -errno;
		free(f);
		return ret;
	}
	f->dev = st.st_dev;
	f->ino = st.st_ino;
	f->size = st.st_size;
	f->next = pc->files;
	pc->files = f;
	*out = f;
	return 0;
}

static size_t block_slot(const struct pc_file *f, off_t k)
{
	size_t lo = 0, hi = f->nblocks;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (f->block[mid].index < k)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int read_block(int fd, char *data, size_t len, off_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, data + got, len - got, off + (off_t)got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	/* Short only if BACKING_DIR was changed behind faultfs's back. */
	memset(data + got, 0, len - got);
	return 0;
}

/* Copy block k of f as it was at the last sync, unless that is done. */
static int save_block(struct pc_file *f, off_t k)
{
	size_t i = block_slot(f, k), len;
	off_t left = f->size - k * BLOCK;
	char *data;
	int ret;

	if (i < f->nblocks && f->block[i].index == k)
		return 0;
	if (f->nblocks == f->cap) {
		size_t cap = f->cap ? 2 * f->cap : 16;
		struct pc_block *grown =
			realloc(f->block, cap * sizeof(f->block[0]));

		if (!grown)
			return -ENOMEM;
		f->block = grown;
		f->cap = cap;
	}
	len = left < BLOCK ? (size_t)left : BLOCK;
	data = malloc(len);
	if (!data)
		return -ENOMEM;
	ret = read_block(f->fd, data, len, k * BLOCK);
	if (ret) {
		free(data);
		return ret;
	}
	memmove(&f->block[i + 1], &f->block[i],
		(f->nblocks - i) * sizeof(f->block[0]));
	f->block[i] = (struct pc_block){.index = k, .len = len, .data = data};
	f->nblocks++;
	return 0;
}

/* Before [off, off + len) of f changes: copy what the last sync had. */
static int save_range(struct pc_file *f, off_t off, off_t len)
{
	off_t end = len > INT64_MAX - off ? INT64_MAX : off + len;
	int ret = 0;

	if (end > f->size)
		end = f->size;
	for (off_t k = off / BLOCK; off < end && !ret && k <= (end - 1) / BLOCK;
	     k++)
		ret = save_block(f, k);
	return ret;
}

/* Put f back as it was at its last sync. */
static int file_rollback(const struct pc_file *f)
{
	int ret = ftruncate(f->fd, f->size) ? -errno : 0;

	for (size_t i = 0; i < f->nblocks && !ret; i++)
		ret = pwrite_all(f->fd, f->block[i].data, f->block[i].len,
				 f->block[i].index * BLOCK);
	return ret;
}

/* ---- the journal ---- */

int powercut_new(int root_fd, struct powercut **out)
{
	struct powercut *pc = calloc(1, sizeof(*pc));
	int ret;

	if (!pc)
		return -ENOMEM;
	pc->root_fd = root_fd;
	ret = remove_tree(root_fd, POWERCUT_GRAVEYARD);
	if (ret == -ENOENT)
		ret = 0;
	if (!ret && mkdirat(root_fd, POWERCUT_GRAVEYARD, 0700))
		ret = -errno;
	if (!ret) {
		pc->grave_fd =
			openat(root_fd, POWERCUT_GRAVEYARD,
			       O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (pc->grave_fd < 0)
			ret = -errno;
	}
	if (ret) {
		free(pc);
		return ret;
	}
	pthread_mutex_init(&pc->lock, NULL);
	*out = pc;
	return 0;
}

void powercut_free(struct powercut *pc)
{
	if (!pc)
		return;
	while (pc->newest) {
		struct pc_record *r = pc->newest;

		pc->newest = r->older;
		keep(pc, r);
	}
	while (pc->files) {
		struct pc_file *f = pc->files;

		pc->files = f->next;
		file_free(f);
	}
	close(pc->grave_fd);
	remove_tree(pc->root_fd, POWERCUT_GRAVEYARD);
	pthread_mutex_destroy(&pc->lock);
	free(pc);
}

/* Every file back to its last sync; returns how many. */
static int rollback_files(struct powercut *pc)
{
	int n = 0;

	while (pc->files) {
		struct pc_file *f = pc->files;
		int ret = file_rollback(f);

		if (ret)
			fprintf(stderr,
				"faultfs: power cut: cannot restore inode "
				"%llu: %s\n",
				(unsigned long long)f->ino, strerror(-ret));
		pc->files = f->next;
		file_free(f);
		n++;
	}
	return n;
}

/* Every record undone, newest first; returns how many. */
static int rollback_names(struct powercut *pc)
{
	int n = 0;

	while (pc->newest) {
		struct pc_record *r = pc->newest;
		int ret = undo(pc, r);

		if (ret)
			fprintf(stderr,
				"faultfs: power cut: the %s of '%s' stays: "
				"%s\n",
				kind_names[r->kind], r->name[0],
				strerror(-ret));
		pc->newest = r->older;
		record_free(pc, r);
		n++;
	}
	return n;
}

void powercut_cut(struct powercut *pc)
{
	int files, names;

	pthread_mutex_lock(&pc->lock);
	if (pc->dead) {
		pthread_mutex_unlock(&pc->lock);
		return;
	}
	pc->dead = true;
	files = rollback_files(pc);
	names = rollback_names(pc);
	/* What is left there lost its name for good: a removal that was
	 * durable, or an entry of a directory that was durably removed. The
	 * disk is dead now, so the graveyard goes too. */
	remove_tree(pc->root_fd, POWERCUT_GRAVEYARD);
	fprintf(stderr,
		"faultfs: power cut: %d files back to their last sync, %d "
		"changes of names undone\n",
		files, names);
	pthread_mutex_unlock(&pc->lock);
}

bool powercut_hides(const char *path)
{
	size_t n = strlen(POWERCUT_GRAVEYARD);

	return path && path[0] == '/' &&
	       strncmp(path + 1, POWERCUT_GRAVEYARD, n) == 0 &&
	       (path[n + 1] == '\0' || path[n + 1] == '/');
}

/* ---- data ---- */

/* The file is durable as it is now: its entry goes. */
static void file_synced(struct powercut *pc, dev_t dev, ino_t ino)
{
	struct pc_file **p = file_find(pc, dev, ino), *f = *p;

	if (f) {
		*p = f->next;
		file_free(f);
	}
}

ssize_t powercut_write(struct powercut *pc, int fd, const void *buf, size_t n,
		       off_t off, int flags)
{
	struct pc_file *f;
	ssize_t ret;

	pthread_mutex_lock(&pc->lock);
	ret = file_of(pc, fd, &f);
	/* An append lands past the end: nothing there to copy (above). */
	if (!ret && f && !(flags & O_APPEND))
		ret = save_range(f, off, (off_t)n);
	if (!ret) {
		ret = pwrite(fd, buf, n, off);
		if (ret < 0)
			ret = -errno;
	}
	if (ret >= 0 && f && (flags & O_DSYNC))
		file_synced(pc, f->dev, f->ino);
	pthread_mutex_unlock(&pc->lock);
	return ret;
}

static int truncate_locked(struct powercut *pc, int fd, off_t size)
{
	struct pc_file *f;
	int ret = file_of(pc, fd, &f);

	if (!ret && f)
		ret = save_range(f, size, INT64_MAX);
	if (!ret)
		ret = ftruncate(fd, size) ? -errno : 0;
	return ret;
}

int powercut_truncate(struct powercut *pc, int fd, off_t size)
{
	int ret;

	pthread_mutex_lock(&pc->lock);
	ret = truncate_locked(pc, fd, size);
	pthread_mutex_unlock(&pc->lock);
	return ret;
}

int powercut_fallocate(struct powercut *pc, int fd, int mode, off_t off,
		       off_t len)
{
	/* These two move every byte after off. */
	int shifts = mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE);
	struct pc_file *f;
	int ret;

	pthread_mutex_lock(&pc->lock);
	ret = file_of(pc, fd, &f);
	if (!ret && f)
		ret = save_range(f, off, shifts ? INT64_MAX : len);
	if (!ret)
		ret = fallocate(fd, mode, off, len) ? -errno : 0;
	pthread_mutex_unlock(&pc->lock);
	return ret;
}

/* Through our read-write handle: O_TRUNC empties a file opened O_RDONLY
 * too. */
static int open_trunc_locked(struct powercut *pc, int fd)
{
	struct pc_file *f;
	int ret = file_of(pc, fd, &f);

	if (!ret && f)
		ret = save_range(f, 0, INT64_MAX);
	if (!ret && f)
		ret = ftruncate(f->fd, 0) ? -errno : 0;
	return ret;
}

int powercut_open_trunc(struct powercut *pc, int fd)
{
	int ret;

	pthread_mutex_lock(&pc->lock);
	ret = open_trunc_locked(pc, fd);
	pthread_mutex_unlock(&pc->lock);
	return ret;
}

int powercut_fsync(struct powercut *pc, int fd, bool datasync)
{
	int ret = (datasync ? fdatasync(fd) : fsync(fd)) ? -errno : 0;
	struct stat st;

	pthread_mutex_lock(&pc->lock);
	if (pc->dead)
		ret = -EIO;
	else if (!ret && fstat(fd, &st))
		ret = -errno;
	if (!ret)
		file_synced(pc, st.st_dev, st.st_ino);
	pthread_mutex_unlock(&pc->lock);
	return ret;
}

int powercut_fsyncdir(struct powercut *pc, int dir_fd, bool datasync)
{
	int ret = (datasync ? fdatasync(dir_fd) : fsync(dir_fd)) ? -errno : 0;
	struct pc_dir *d;
	struct stat st;

	pthread_mutex_lock(&pc->lock);
	if (pc->dead)
		ret = -EIO;
	else if (!ret && fstat(dir_fd, &st))
		ret = -errno;
	if (!ret && (d = dir_find(pc, &st)))
		dir_synced(pc, d);
	pthread_mutex_unlock(&pc->lock);
	return ret;
}

/* ---- names ---- */

/* create() of a name that exists: a plain open, no record. */
static int open_existing(struct powercut *pc, struct pc_record *r, int flags)
{
	int fd = openat(r->dir[0]->fd, r->name[0],
			(flags & ~(O_CREAT | O_EXCL | O_TRUNC)) | O_CLOEXEC);
	int ret = fd < 0 ? -errno : 0;

	if (!ret && (flags & O_TRUNC))
		ret = open_trunc_locked(pc, fd);
	if (ret && fd >= 0)
		close(fd);
	end(pc, r, ret ? ret : 1); /* no record either way */
	return ret ? ret : fd;
}

int powercut_create(struct powercut *pc, const char *path, int flags,
		    mode_t mode)
{
	struct pc_record *r;
	int fd, ret = begin(pc, PC_CREATED, path, NULL, &r);

	if (ret)
		return ret;
	fd = openat(r->dir[0]->fd, r->name[0],
		    (flags & ~O_TRUNC) | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0 && errno == EEXIST && !(flags & O_EXCL))
		return open_existing(pc, r, flags);
	ret = end(pc, r, fd < 0 ? -errno : 0);
	return ret ? ret : fd;
}

int powercut_mknod(struct powercut *pc, const char *path, mode_t mode,
		   dev_t rdev)
{
	struct pc_record *r;
	int ret = begin(pc, PC_CREATED, path, NULL, &r);

	if (ret)
		return ret;
	ret = mknodat(r->dir[0]->fd, r->name[0], mode, rdev) ? -errno : 0;
	return end(pc, r, ret);
}

int powercut_mkdir(struct powercut *pc, const char *path, mode_t mode)
{
	struct pc_record *r;
	int ret = begin(pc, PC_CREATED, path, NULL, &r);

	if (ret)
		return ret;
	ret = mkdirat(r->dir[0]->fd, r->name[0], mode) ? -errno : 0;
	return end(pc, r, ret);
}

int powercut_symlink(struct powercut *pc, const char *target, const char *path)
{
	struct pc_record *r;
	int ret = begin(pc, PC_CREATED, path, NULL, &r);

	if (ret)
		return ret;
	ret = symlinkat(target, r->dir[0]->fd, r->name[0]) ? -errno : 0;
	return end(pc, r, ret);
}

int powercut_link(struct powercut *pc, const char *from, const char *to)
{
	struct pc_record *r;
	int ret = begin(pc, PC_CREATED, to, NULL, &r);

	if (ret)
		return ret;
	ret = linkat(pc->root_fd, from[1] ? from + 1 : ".", r->dir[0]->fd,
		     r->name[0], 0)
		      ? -errno
		      : 0;
	return end(pc, r, ret);
}

int powercut_unlink(struct powercut *pc, const char *path)
{
	struct pc_record *r;
	struct stat st;
	int ret = begin(pc, PC_REMOVED, path, NULL, &r);

	if (ret)
		return ret;
	if (fstatat(r->dir[0]->fd, r->name[0], &st, AT_SYMLINK_NOFOLLOW))
		ret = -errno;
	else if (S_ISDIR(st.st_mode))
		ret = -EISDIR;
	else
		ret = bury(pc, r->dir[0]->fd, r->name[0], &r->grave);
	return end(pc, r, ret);
}

int powercut_rmdir(struct powercut *pc, const char *path)
{
	struct pc_record *r;
	struct stat st;
	int ret = begin(pc, PC_REMOVED, path, NULL, &r);

	if (ret)
		return ret;
	if (fstatat(r->dir[0]->fd, r->name[0], &st, AT_SYMLINK_NOFOLLOW))
		ret = -errno;
	else if (!S_ISDIR(st.st_mode))
		ret = -ENOTDIR;
	else
		ret = dir_empty(r->dir[0]->fd, r->name[0]);
	if (!ret)
		ret = bury(pc, r->dir[0]->fd, r->name[0], &r->grave);
	return end(pc, r, ret);
}

/*
 * A rename that may replace an entry buries that entry first, so the
 * undo can bring it back; moving it away would skip the kernel's checks
 * of the replacement, so they are made here. Returns 1 when the two names
 * are links to one inode: rename() then does nothing.
 */
static int rename_over(struct powercut *pc, struct pc_record *r)
{
	int fd0 = r->dir[0]->fd, fd1 = r->dir[1]->fd, ret;
	struct stat from, to;

	if (fstatat(fd1, r->name[1], &to, AT_SYMLINK_NOFOLLOW)) {
		if (errno != ENOENT)
			return -errno;
		return renameat2(fd0, r->name[0], fd1, r->name[1],
				 RENAME_NOREPLACE)
			       ? -errno
			       : 0;
	}
	if (fstatat(fd0, r->name[0], &from, AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (from.st_dev == to.st_dev && from.st_ino == to.st_ino)
		return 1;
	if (S_ISDIR(from.st_mode) != S_ISDIR(to.st_mode))
		return S_ISDIR(to.st_mode) ? -EISDIR : -ENOTDIR;
	if (S_ISDIR(to.st_mode) && (ret = dir_empty(fd1, r->name[1])))
		return ret;
	ret = bury(pc, fd1, r->name[1], &r->grave);
	if (ret)
		return ret;
	if (renameat2(fd0, r->name[0], fd1, r->name[1], RENAME_NOREPLACE)) {
		ret = -errno;
		unbury(pc, r->grave, fd1, r->name[1]);
		r->grave = 0;
	}
	return ret;
}

int powercut_rename(struct powercut *pc, const char *from, const char *to,
		    unsigned int flags)
{
	struct pc_record *r;
	int ret;

	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	ret = begin(pc, flags & RENAME_EXCHANGE ? PC_EXCHANGED : PC_RENAMED,
		    from, to, &r);
	if (ret)
		return ret;
	if (flags)
		ret = renameat2(r->dir[0]->fd, r->name[0], r->dir[1]->fd,
				r->name[1], flags)
			      ? -errno
			      : 0;
	else
		ret = rename_over(pc, r);
	return end(pc, r, ret);
}
