/*
 * The inode table.
 *
 * A node stands for one file of the mirrored tree and keeps an O_PATH
 * handle of that file in every child, like libfuse's passthrough_ll does
 * for one backing tree. Handles follow renames by themselves, and every
 * later operation starts from them with *at() calls, so no path is ever
 * glued together and nothing resolves outside a child root.
 *
 * Nodes are found by the identity (device, inode) of the file in the first
 * voting child that has it, so hard links share one node and one set of
 * range locks. The node id given to the kernel is the node's address (the
 * root is FS_ROOT_INO). A node lives while the kernel holds a lookup on it
 * or something references it: an open file, or a node naming it as parent.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static size_t hash_index(const struct fs *fs, uint64_t dev, uint64_t ino)
{
	uint64_t h = ino * 0x9E3779B97F4A7C15ull ^ dev;

	return (size_t)(h ^ (h >> 29)) & (fs->hash_size - 1);
}

static void node_init_fds(struct node *n)
{
	for (int s = 0; s < CHILDREN_MAX; s++)
		atomic_init(&n->fd[s], -1);
}

int nodes_init(struct fs *fs)
{
	struct child *m[CHILDREN_MAX];
	int n = children_members(fs->set, m), ret = 0;

	pthread_mutex_init(&fs->table_lock, NULL);
	fs->hash_size = 1024;
	fs->hash = calloc(fs->hash_size, sizeof(*fs->hash));
	if (!fs->hash) {
		ret = -ENOMEM;
		goto out;
	}
	node_init_fds(&fs->root);
	fs->root.type = S_IFDIR;
	fs->root.nlookup = 1;
	range_locks_init(&fs->root.ranges);
	/* Every member, also those behind: their resync starts here. */
	for (int i = 0; i < n; i++) {
		int fd = dup(child_root_fd(m[i]));

		if (fd < 0) {
			ret = -errno;
			goto out;
		}
		atomic_store(&fs->root.fd[child_slot(m[i])], fd);
	}
out:
	for (int i = 0; i < n; i++)
		child_put(m[i]);
	return ret;
}

static void node_close_fds(struct node *n)
{
	for (int s = 0; s < CHILDREN_MAX; s++) {
		int fd = atomic_load(&n->fd[s]);

		if (fd >= 0)
			close(fd);
	}
}

static void node_free(struct node *n)
{
	node_close_fds(n);
	for (int i = 0; i < n->nretired; i++)
		close(n->retired[i]);
	free(n->retired);
	range_locks_destroy(&n->ranges);
	free(n->name);
	free(n);
}

void nodes_destroy(struct fs *fs)
{
	/* At unmount the kernel may not have forgotten everything. */
	for (size_t i = 0; fs->hash && i < fs->hash_size; i++) {
		struct node *n = fs->hash[i], *next;

		for (; n; n = next) {
			next = n->hash_next;
			node_free(n);
		}
	}
	free(fs->hash);
	node_close_fds(&fs->root);
	range_locks_destroy(&fs->root.ranges);
	pthread_mutex_destroy(&fs->table_lock);
}

struct node *node_get(struct fs *fs, uint64_t ino)
{
	if (ino == FS_ROOT_INO)
		return &fs->root;
	return (struct node *)(uintptr_t)ino;
}

uint64_t node_ino(const struct fs *fs, const struct node *n)
{
	if (n == &fs->root)
		return FS_ROOT_INO;
	return (uint64_t)(uintptr_t)n;
}

static struct node *hash_find(struct fs *fs, uint64_t dev, uint64_t ino)
{
	struct node *n = fs->hash[hash_index(fs, dev, ino)];

	while (n && (n->key_dev != dev || n->key_ino != ino))
		n = n->hash_next;
	return n;
}

static void hash_grow(struct fs *fs)
{
	size_t old_size = fs->hash_size;
	struct node **old = fs->hash, **grown;

	grown = calloc(old_size * 2, sizeof(*grown));
	if (!grown)
		return; /* a longer chain is slower, not wrong */
	fs->hash = grown;
	fs->hash_size = old_size * 2;
	for (size_t i = 0; i < old_size; i++) {
		struct node *n = old[i], *next;

		for (; n; n = next) {
			size_t h = hash_index(fs, n->key_dev, n->key_ino);

			next = n->hash_next;
			n->hash_next = fs->hash[h];
			fs->hash[h] = n;
		}
	}
	free(old);
}

static void hash_remove(struct fs *fs, struct node *n)
{
	struct node **pp = &fs->hash[hash_index(fs, n->key_dev, n->key_ino)];

	while (*pp != n)
		pp = &(*pp)->hash_next;
	*pp = n->hash_next;
	fs->nodes--;
}

/* Called with table_lock held; frees n and any parents it was keeping. */
static void node_release_locked(struct fs *fs, struct node *n)
{
	while (n && n != &fs->root && n->nlookup == 0 && n->refs == 0) {
		struct node *parent = n->parent;

		hash_remove(fs, n);
		node_free(n);
		n = parent;
		if (n)
			n->refs--;
	}
}

static bool deleted(int fd)
{
	struct stat st;

	return fstat(fd, &st) == 0 && st.st_nlink == 0;
}

/* Called with table_lock held. */
static void retire_deleted_locked(struct node *n,
				  const bool asked[CHILDREN_MAX])
{
	for (int s = 0; s < CHILDREN_MAX; s++) {
		int fd = atomic_load(&n->fd[s]);
		int *grown;

		if (!asked[s] || fd < 0 || !deleted(fd))
			continue;
		grown = realloc(n->retired, (n->nretired + 1) * sizeof(int));
		if (!grown)
			continue; /* keep it: stale, but never a reused number
				   */
		n->retired = grown;
		n->retired[n->nretired++] = fd;
		atomic_store(&n->fd[s], -1);
	}
}

static void install_fds(struct node *n, int fd[CHILDREN_MAX])
{
	for (int s = 0; s < CHILDREN_MAX; s++) {
		int expected = -1;

		if (fd[s] < 0)
			continue;
		if (!atomic_compare_exchange_strong(&n->fd[s], &expected,
						    fd[s]))
			close(fd[s]);
		fd[s] = -1;
	}
}

static struct node *node_new_locked(struct fs *fs, struct node *parent,
				    const char *name, const struct stat *key_st)
{
	struct node *n = calloc(1, sizeof(*n));

	if (!n)
		return NULL;
	n->name = strdup(name);
	if (!n->name) {
		free(n);
		return NULL;
	}
	node_init_fds(n);
	n->key_dev = key_st->st_dev;
	n->key_ino = key_st->st_ino;
	n->type = key_st->st_mode & S_IFMT;
	range_locks_init(&n->ranges);
	atomic_init(&n->size_hint, key_st->st_size);
	n->parent = parent;
	parent->refs++;
	if (fs->nodes * 2 > fs->hash_size)
		hash_grow(fs);
	n->hash_next = fs->hash[hash_index(fs, n->key_dev, n->key_ino)];
	fs->hash[hash_index(fs, n->key_dev, n->key_ino)] = n;
	fs->nodes++;
	return n;
}

struct node *node_install(struct fs *fs, struct node *parent, const char *name,
			  int fd[CHILDREN_MAX], const bool asked[CHILDREN_MAX],
			  const struct stat *key_st)
{
	struct node *n;

	pthread_mutex_lock(&fs->table_lock);
	n = hash_find(fs, key_st->st_dev, key_st->st_ino);
	if (!n)
		n = node_new_locked(fs, parent, name, key_st);
	if (n) {
		retire_deleted_locked(n, asked);
		install_fds(n, fd);
		n->nlookup++;
	}
	pthread_mutex_unlock(&fs->table_lock);
	for (int s = 0; s < CHILDREN_MAX; s++)
		if (fd[s] >= 0)
			close(fd[s]);
	return n;
}

void node_ref(struct fs *fs, struct node *n)
{
	pthread_mutex_lock(&fs->table_lock);
	n->refs++;
	pthread_mutex_unlock(&fs->table_lock);
}

void node_unref(struct fs *fs, struct node *n)
{
	pthread_mutex_lock(&fs->table_lock);
	n->refs--;
	node_release_locked(fs, n);
	pthread_mutex_unlock(&fs->table_lock);
}

void node_forget(struct fs *fs, struct node *n, uint64_t nlookup)
{
	pthread_mutex_lock(&fs->table_lock);
	n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup;
	node_release_locked(fs, n);
	pthread_mutex_unlock(&fs->table_lock);
}

void node_moved(struct fs *fs, const struct stat *key_st,
		struct node *newparent, const char *newname)
{
	struct node *n;
	char *name = strdup(newname);

	if (!name)
		return; /* only event paths go stale */
	pthread_mutex_lock(&fs->table_lock);
	n = hash_find(fs, key_st->st_dev, key_st->st_ino);
	if (n) {
		struct node *old_parent = n->parent;

		free(n->name);
		n->name = name;
		name = NULL;
		n->parent = newparent;
		newparent->refs++;
		old_parent->refs--;
		node_release_locked(fs, old_parent);
	}
	pthread_mutex_unlock(&fs->table_lock);
	free(name);
}

char *node_path(struct fs *fs, struct node *n)
{
	size_t len = 0, pos;
	char *path;

	pthread_mutex_lock(&fs->table_lock);
	for (struct node *p = n; p && p != &fs->root; p = p->parent)
		len += strlen(p->name) + 1;
	len -= len > 0; /* no slash before the first name */
	path = malloc(len + 1);
	if (path) {
		pos = len;
		path[pos] = '\0';
		for (struct node *p = n; p && p != &fs->root; p = p->parent) {
			size_t l = strlen(p->name);

			pos -= l;
			memcpy(path + pos, p->name, l);
			if (pos > 0)
				path[--pos] = '/';
		}
	}
	pthread_mutex_unlock(&fs->table_lock);
	return path;
}

int node_fd(struct fs *fs, struct node *n, int slot)
{
	char name[NAME_MAX + 1];
	struct node *parent;
	struct stat st;
	int fd = atomic_load(&n->fd[slot]), pfd, expected = -1;

	if (fd >= 0)
		return fd;
	pthread_mutex_lock(&fs->table_lock);
	parent = n->parent;
	if (parent)
		snprintf(name, sizeof(name), "%s", n->name);
	pthread_mutex_unlock(&fs->table_lock);
	if (!parent)
		return -ENOENT; /* the root of a child not set up yet */
	pfd = node_fd(fs, parent, slot);
	if (pfd < 0)
		return pfd;
	fd = openat(pfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) || (st.st_mode & S_IFMT) != n->type) {
		close(fd);
		return -ENOENT; /* another kind of file: not this node */
	}
	if (!atomic_compare_exchange_strong(&n->fd[slot], &expected, fd)) {
		close(fd);
		fd = expected;
	}
	return fd;
}

void node_adopt_fd(struct fs *fs, struct node *n, int slot, int handle)
{
	bool asked[CHILDREN_MAX] = {false};
	int expected = -1, copy = dup(handle);

	if (copy < 0)
		return;
	asked[slot] = true;
	pthread_mutex_lock(&fs->table_lock);
	retire_deleted_locked(n, asked);
	if (atomic_compare_exchange_strong(&n->fd[slot], &expected, copy))
		copy = -1;
	pthread_mutex_unlock(&fs->table_lock);
	if (copy >= 0)
		close(copy);
}

static void forget_slot(struct node *n, int slot)
{
	int fd = atomic_exchange(&n->fd[slot], -1);

	if (fd >= 0)
		close(fd);
}

void node_forget_slot(struct fs *fs, int slot)
{
	pthread_mutex_lock(&fs->table_lock);
	forget_slot(&fs->root, slot);
	for (size_t i = 0; i < fs->hash_size; i++)
		for (struct node *n = fs->hash[i]; n; n = n->hash_next)
			forget_slot(n, slot);
	pthread_mutex_unlock(&fs->table_lock);
}

void fd_proc_path(int fd, char buf[64])
{
	snprintf(buf, 64, "/proc/self/fd/%d", fd);
}
