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
 * root is TREE_ROOT_INO). A node lives while the kernel holds a lookup on it
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

/* Node serials; 0 is the root's (made apart, zeroed). */
static _Atomic uint64_t next_serial = 1;

static size_t hash_index(const struct tree *tree, uint64_t dev, uint64_t ino)
{
	uint64_t h = ino * 0x9E3779B97F4A7C15ull ^ dev;

	return (size_t)(h ^ (h >> 29)) & (tree->table.size - 1);
}

static void node_init_fds(struct tree_node *n)
{
	for (int s = 0; s < CHILDREN_MAX; s++)
		atomic_init(&n->fd[s], -1);
}

int nodes_init(struct tree *tree)
{
	struct child *m[CHILDREN_MAX];
	int n = children_members(tree->set, m), ret = 0;

	pthread_mutex_init(&tree->table.lock, NULL);
	tree->table.size = 1024;
	tree->table.hash = calloc(tree->table.size, sizeof(*tree->table.hash));
	if (!tree->table.hash) {
		ret = -ENOMEM;
		goto out;
	}
	node_init_fds(&tree->table.root);
	tree->table.root.type = S_IFDIR;
	tree->table.root.nlookup = 1;
	range_locks_init(&tree->table.root.ranges);
	/* Every member, also those behind: their resync starts here. */
	for (int i = 0; i < n; i++) {
		int fd = dup(child_root_fd(m[i]));

		if (fd < 0) {
			ret = -errno;
			goto out;
		}
		atomic_store(&tree->table.root.fd[child_slot(m[i])], fd);
	}
out:
	for (int i = 0; i < n; i++)
		child_put(m[i]);
	return ret;
}

static void node_close_fds(struct tree_node *n)
{
	for (int s = 0; s < CHILDREN_MAX; s++) {
		int fd = atomic_load(&n->fd[s]);

		if (fd >= 0)
			close(fd);
	}
}

static void node_free(struct tree_node *n)
{
	node_close_fds(n);
	for (int i = 0; i < n->nretired; i++)
		close(n->retired[i]);
	free(n->retired);
	range_locks_destroy(&n->ranges);
	free(n->name);
	free(n);
}

void nodes_destroy(struct tree *tree)
{
	/* At unmount the kernel may not have forgotten everything. */
	for (size_t i = 0; tree->table.hash && i < tree->table.size; i++) {
		struct tree_node *n = tree->table.hash[i], *next;

		for (; n; n = next) {
			next = n->hash_next;
			node_free(n);
		}
	}
	free(tree->table.hash);
	node_close_fds(&tree->table.root);
	range_locks_destroy(&tree->table.root.ranges);
	pthread_mutex_destroy(&tree->table.lock);
}

struct tree_node *tree_node(struct tree *tree, uint64_t ino)
{
	if (ino == TREE_ROOT_INO)
		return &tree->table.root;
	return (struct tree_node *)(uintptr_t)ino;
}

uint64_t tree_node_ino(const struct tree *tree, const struct tree_node *n)
{
	if (n == &tree->table.root)
		return TREE_ROOT_INO;
	return (uint64_t)(uintptr_t)n;
}

static struct tree_node *hash_find(struct tree *tree, uint64_t dev,
				   uint64_t ino)
{
	struct tree_node *n = tree->table.hash[hash_index(tree, dev, ino)];

	while (n && (n->key_dev != dev || n->key_ino != ino))
		n = n->hash_next;
	return n;
}

static void hash_grow(struct tree *tree)
{
	size_t old_size = tree->table.size;
	struct tree_node **old = tree->table.hash, **grown;

	grown = calloc(old_size * 2, sizeof(*grown));
	if (!grown)
		return; /* a longer chain is slower, not wrong */
	tree->table.hash = grown;
	tree->table.size = old_size * 2;
	for (size_t i = 0; i < old_size; i++) {
		struct tree_node *n = old[i], *next;

		for (; n; n = next) {
			size_t h = hash_index(tree, n->key_dev, n->key_ino);

			next = n->hash_next;
			n->hash_next = tree->table.hash[h];
			tree->table.hash[h] = n;
		}
	}
	free(old);
}

static void hash_remove(struct tree *tree, struct tree_node *n)
{
	struct tree_node **pp =
		&tree->table.hash[hash_index(tree, n->key_dev, n->key_ino)];

	while (*pp != n)
		pp = &(*pp)->hash_next;
	*pp = n->hash_next;
	tree->table.count--;
}

/* Called with table_lock held; frees n and any parents it was keeping. */
static void node_release_locked(struct tree *tree, struct tree_node *n)
{
	while (n && n != &tree->table.root && n->nlookup == 0 && n->refs == 0) {
		struct tree_node *parent = n->parent;

		hash_remove(tree, n);
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
static void retire_deleted_locked(struct tree_node *n,
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

static void install_fds(struct tree_node *n, int fd[CHILDREN_MAX])
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

static struct tree_node *node_new_locked(struct tree *tree,
					 struct tree_node *parent,
					 const char *name,
					 const struct stat *key_st)
{
	struct tree_node *n = calloc(1, sizeof(*n));

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
	n->serial = atomic_fetch_add(&next_serial, 1);
	n->type = key_st->st_mode & S_IFMT;
	range_locks_init(&n->ranges);
	atomic_init(&n->size_hint, key_st->st_size);
	atomic_init(&n->setid, S_ISREG(key_st->st_mode) &&
				       (key_st->st_mode & (S_ISUID | S_ISGID)));
	n->parent = parent;
	parent->refs++;
	if (tree->table.count * 2 > tree->table.size)
		hash_grow(tree);
	n->hash_next =
		tree->table.hash[hash_index(tree, n->key_dev, n->key_ino)];
	tree->table.hash[hash_index(tree, n->key_dev, n->key_ino)] = n;
	tree->table.count++;
	return n;
}

struct tree_node *node_install(struct tree *tree, struct tree_node *parent,
			       const char *name, int fd[CHILDREN_MAX],
			       const bool asked[CHILDREN_MAX],
			       const struct stat *key_st)
{
	struct tree_node *n;

	pthread_mutex_lock(&tree->table.lock);
	n = hash_find(tree, key_st->st_dev, key_st->st_ino);
	if (!n)
		n = node_new_locked(tree, parent, name, key_st);
	if (n) {
		retire_deleted_locked(n, asked);
		install_fds(n, fd);
		n->nlookup++;
	}
	pthread_mutex_unlock(&tree->table.lock);
	for (int s = 0; s < CHILDREN_MAX; s++)
		if (fd[s] >= 0)
			close(fd[s]);
	return n;
}

void tree_node_ref(struct tree *tree, struct tree_node *n)
{
	pthread_mutex_lock(&tree->table.lock);
	n->refs++;
	pthread_mutex_unlock(&tree->table.lock);
}

void tree_node_unref(struct tree *tree, struct tree_node *n)
{
	pthread_mutex_lock(&tree->table.lock);
	n->refs--;
	node_release_locked(tree, n);
	pthread_mutex_unlock(&tree->table.lock);
}

void node_forget(struct tree *tree, struct tree_node *n, uint64_t nlookup)
{
	pthread_mutex_lock(&tree->table.lock);
	n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup;
	node_release_locked(tree, n);
	pthread_mutex_unlock(&tree->table.lock);
}

void node_moved(struct tree *tree, const struct stat *key_st,
		struct tree_node *newparent, const char *newname)
{
	struct tree_node *n;
	char *name = strdup(newname);

	if (!name)
		return; /* only event paths go stale */
	pthread_mutex_lock(&tree->table.lock);
	n = hash_find(tree, key_st->st_dev, key_st->st_ino);
	if (n) {
		struct tree_node *old_parent = n->parent;

		free(n->name);
		n->name = name;
		name = NULL;
		n->parent = newparent;
		newparent->refs++;
		old_parent->refs--;
		node_release_locked(tree, old_parent);
	}
	pthread_mutex_unlock(&tree->table.lock);
	free(name);
}

char *tree_node_path(struct tree *tree, struct tree_node *n)
{
	size_t len = 0, pos;
	char *path;

	pthread_mutex_lock(&tree->table.lock);
	for (struct tree_node *p = n; p && p != &tree->table.root;
	     p = p->parent)
		len += strlen(p->name) + 1;
	len -= len > 0; /* no slash before the first name */
	path = malloc(len + 1);
	if (path) {
		pos = len;
		path[pos] = '\0';
		for (struct tree_node *p = n; p && p != &tree->table.root;
		     p = p->parent) {
			size_t l = strlen(p->name);

			pos -= l;
			memcpy(path + pos, p->name, l);
			if (pos > 0)
				path[--pos] = '/';
		}
	}
	pthread_mutex_unlock(&tree->table.lock);
	return path;
}

int tree_node_fd(struct tree *tree, struct tree_node *n, int slot)
{
	char name[NAME_MAX + 1];
	struct tree_node *parent;
	struct stat st;
	int fd = atomic_load(&n->fd[slot]), pfd, expected = -1;

	if (fd >= 0)
		return fd;
	pthread_mutex_lock(&tree->table.lock);
	parent = n->parent;
	if (parent)
		snprintf(name, sizeof(name), "%s", n->name);
	pthread_mutex_unlock(&tree->table.lock);
	if (!parent)
		return -ENOENT; /* the root of a child not set up yet */
	pfd = tree_node_fd(tree, parent, slot);
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

void tree_node_adopt_fd(struct tree *tree, struct tree_node *n, int slot,
			int handle)
{
	bool asked[CHILDREN_MAX] = {false};
	int expected = -1, copy = dup(handle);

	if (copy < 0)
		return;
	asked[slot] = true;
	pthread_mutex_lock(&tree->table.lock);
	retire_deleted_locked(n, asked);
	if (atomic_compare_exchange_strong(&n->fd[slot], &expected, copy))
		copy = -1;
	pthread_mutex_unlock(&tree->table.lock);
	if (copy >= 0)
		close(copy);
}

static void forget_slot(struct tree_node *n, int slot)
{
	int fd = atomic_exchange(&n->fd[slot], -1);

	if (fd >= 0)
		close(fd);
}

void node_forget_slot(struct tree *tree, int slot)
{
	pthread_mutex_lock(&tree->table.lock);
	forget_slot(&tree->table.root, slot);
	for (size_t i = 0; i < tree->table.size; i++)
		for (struct tree_node *n = tree->table.hash[i]; n;
		     n = n->hash_next)
			forget_slot(n, slot);
	pthread_mutex_unlock(&tree->table.lock);
}

struct tree_node *tree_root(struct tree *tree)
{
	return &tree->table.root;
}

struct range_locks *tree_node_ranges(struct tree_node *n)
{
	return &n->ranges;
}

char *tree_entry_path(struct tree *tree, struct tree_node *parent,
		      const char *name)
{
	char *dir = tree_node_path(tree, parent), *path = NULL;

	if (!dir || asprintf(&path, "%s%s%s", dir, *dir ? "/" : "", name) < 0)
		path = NULL;
	free(dir);
	return path;
}

bool tree_reserved_name(uint64_t parent, const char *name)
{
	return parent == TREE_ROOT_INO &&
	       (strcmp(name, ".control") == 0 ||
		strcmp(name, TREE_CHILDREN_DIR) == 0 ||
		strcmp(name, PERSIST_DIR) == 0 ||
		strcmp(name, PERSIST_GRAVEYARD) == 0);
}
