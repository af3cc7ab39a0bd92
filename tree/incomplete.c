/*
 * Directories incomplete on a syncing child.
 *
 * A syncing child receives every namespace change, but one can fail
 * there with ENOENT because the copy has not reached what it needs yet
 * (a rename whose source sits in a directory not copied so far). The
 * change is then marked here against the directory it changed, and the
 * child's resync takes the marks and completes those directories again
 * before the child may vote (jobs/resync.c, under the resync barrier).
 */
#include "tree/tree_i.h"

#include <stdlib.h>

void incomplete_init(struct incomplete *inc)
{
	pthread_mutex_init(&inc->lock, NULL);
	for (int s = 0; s < CHILDREN_MAX; s++)
		inc->slot[s] = NULL;
}

void incomplete_mark(struct tree *tree, int slot, struct tree_node *dir)
{
	struct incomplete_dir *d = malloc(sizeof(*d));

	if (!d)
		return; /* the child turns ok incomplete: lookups report it */
	tree_node_ref(tree, dir);
	d->dir = dir;
	pthread_mutex_lock(&tree->incomplete.lock);
	d->next = tree->incomplete.slot[slot];
	tree->incomplete.slot[slot] = d;
	pthread_mutex_unlock(&tree->incomplete.lock);
}

struct tree_node *tree_take_incomplete(struct tree *tree, int slot)
{
	struct incomplete_dir *d;
	struct tree_node *dir = NULL;

	pthread_mutex_lock(&tree->incomplete.lock);
	d = tree->incomplete.slot[slot];
	if (d)
		tree->incomplete.slot[slot] = d->next;
	pthread_mutex_unlock(&tree->incomplete.lock);
	if (d) {
		dir = d->dir;
		free(d);
	}
	return dir;
}

bool tree_has_incomplete(struct tree *tree, int slot)
{
	bool some;

	pthread_mutex_lock(&tree->incomplete.lock);
	some = tree->incomplete.slot[slot] != NULL;
	pthread_mutex_unlock(&tree->incomplete.lock);
	return some;
}

void tree_forget_incomplete(struct tree *tree, int slot)
{
	struct tree_node *dir;

	while ((dir = tree_take_incomplete(tree, slot)))
		tree_node_unref(tree, dir);
}

void incomplete_destroy(struct tree *tree)
{
	for (int slot = 0; slot < CHILDREN_MAX; slot++)
		tree_forget_incomplete(tree, slot);
	pthread_mutex_destroy(&tree->incomplete.lock);
}
