/*
 * The view's node ids: the view is a tree of paths (V paths), resolved
 * anew through the layers whenever they may have changed, so a node is
 * only a path with the kernel's lookup count. Ids are handed out in
 * order from VNODE_FIRST (below it: the root, 1, and .control, 2) and
 * never reused while the mount lives.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VNODE_FIRST 16
#define VNODE_BUCKETS 1024

struct vnode {
	uint64_t ino;
	char *path;
	uint64_t nlookup;
	struct vnode *by_ino, *by_path; /* hash chains */
};

struct vnode_table {
	struct vnode *ino_hash[VNODE_BUCKETS], *path_hash[VNODE_BUCKETS];
	uint64_t next;
};

static unsigned int hash_path(const char *s)
{
	unsigned int h = 2166136261u;

	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h % VNODE_BUCKETS;
}

int vnodes_new(struct secondary *sec)
{
	sec->vnodes = calloc(1, sizeof(*sec->vnodes));
	if (!sec->vnodes)
		return -ENOMEM;
	sec->vnodes->next = VNODE_FIRST;
	return 0;
}

static void vnode_free(struct vnode *v)
{
	free(v->path);
	free(v);
}

void vnodes_free(struct secondary *sec)
{
	struct vnode_table *t = sec->vnodes;

	for (int b = 0; t && b < VNODE_BUCKETS; b++)
		while (t->ino_hash[b]) {
			struct vnode *v = t->ino_hash[b];

			t->ino_hash[b] = v->by_ino;
			vnode_free(v);
		}
	free(t);
	sec->vnodes = NULL;
}

static struct vnode *find_ino(struct vnode_table *t, uint64_t ino)
{
	struct vnode *v = t->ino_hash[ino % VNODE_BUCKETS];

	while (v && v->ino != ino)
		v = v->by_ino;
	return v;
}

static struct vnode *find_path(struct vnode_table *t, const char *path)
{
	struct vnode *v = t->path_hash[hash_path(path)];

	while (v && strcmp(v->path, path))
		v = v->by_path;
	return v;
}

static void unchain_path(struct vnode_table *t, struct vnode *v)
{
	struct vnode **link = &t->path_hash[hash_path(v->path)];

	while (*link != v)
		link = &(*link)->by_path;
	*link = v->by_path;
}

static void chain_path(struct vnode_table *t, struct vnode *v)
{
	unsigned int b = hash_path(v->path);

	v->by_path = t->path_hash[b];
	t->path_hash[b] = v;
}

static struct vnode *vnode_new(struct vnode_table *t, const char *path)
{
	struct vnode *v = calloc(1, sizeof(*v));

	if (!v || !(v->path = strdup(path))) {
		free(v);
		return NULL;
	}
	v->ino = t->next++;
	v->by_ino = t->ino_hash[v->ino % VNODE_BUCKETS];
	t->ino_hash[v->ino % VNODE_BUCKETS] = v;
	chain_path(t, v);
	return v;
}

uint64_t vnode_ref(struct secondary *sec, const char *path)
{
	struct vnode *v;
	uint64_t ino = 0;

	if (!*path)
		return TREE_ROOT_INO;
	pthread_mutex_lock(&sec->lock);
	v = find_path(sec->vnodes, path);
	if (!v)
		v = vnode_new(sec->vnodes, path);
	if (v) {
		v->nlookup++;
		ino = v->ino;
	}
	pthread_mutex_unlock(&sec->lock);
	return ino;
}

char *vnode_path(struct secondary *sec, uint64_t ino)
{
	struct vnode *v;
	char *path = NULL;

	if (ino == TREE_ROOT_INO)
		return strdup("");
	pthread_mutex_lock(&sec->lock);
	v = find_ino(sec->vnodes, ino);
	if (v)
		path = strdup(v->path);
	pthread_mutex_unlock(&sec->lock);
	return path;
}

void view_forget(struct secondary *sec, uint64_t ino, uint64_t nlookup)
{
	struct vnode_table *t = sec->vnodes;
	struct vnode *v, **link;

	if (ino == TREE_ROOT_INO)
		return;
	pthread_mutex_lock(&sec->lock);
	v = find_ino(t, ino);
	if (v)
		v->nlookup = nlookup < v->nlookup ? v->nlookup - nlookup : 0;
	if (v && !v->nlookup) {
		for (link = &t->ino_hash[ino % VNODE_BUCKETS]; *link != v;
		     link = &(*link)->by_ino)
			;
		*link = v->by_ino;
		unchain_path(t, v);
		vnode_free(v);
	}
	pthread_mutex_unlock(&sec->lock);
}

/* A node whose name went to another (renamed over): it keeps its id
 * for the kernel, under a path no view path can be. */
static void displace(struct vnode_table *t, const char *path)
{
	struct vnode *v = find_path(t, path);
	char *gone;

	if (!v || asprintf(&gone, "/%" PRIu64, v->ino) < 0)
		return;
	unchain_path(t, v);
	free(v->path);
	v->path = gone;
	chain_path(t, v);
}

/* Nodes at from or below it now live at to (a rename in the view). */
int vnodes_move(struct secondary *sec, const char *from, const char *to)
{
	struct vnode_table *t = sec->vnodes;
	size_t n = strlen(from);
	int ret = 0;

	pthread_mutex_lock(&sec->lock);
	displace(t, to);
	for (int b = 0; b < VNODE_BUCKETS && !ret; b++)
		for (struct vnode *v = t->ino_hash[b]; v && !ret;
		     v = v->by_ino) {
			char *moved;

			if (strncmp(v->path, from, n) ||
			    (v->path[n] && v->path[n] != '/'))
				continue;
			if (asprintf(&moved, "%s%s", to, v->path + n) < 0) {
				ret = -ENOMEM;
				break;
			}
			unchain_path(t, v);
			free(v->path);
			v->path = moved;
			chain_path(t, v);
		}
	pthread_mutex_unlock(&sec->lock);
	return ret;
}
