/*
 * The child set and its views.
 *
 * Lock order: set->lock is a leaf; nothing else is taken while holding it.
 * A view holds a reference on each of its children; a child is freed when
 * the last view naming it goes away, so an operation that took a view may
 * keep using its children even after `remove` dropped them from the set.
 */
#define _GNU_SOURCE
#include "children/children.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct child {
	char *name;
	char *path;
	int root_fd;
	int slot;
	atomic_int refs;
	atomic_uint_fast64_t errors[3]; /* indexed by enum child_op */
};

/* The view callers see, plus its reference count. */
struct view_holder {
	struct child_view view;
	atomic_int refs;
};

struct child_set {
	pthread_mutex_t lock;
	struct view_holder *current; /* guarded by lock */
};

static void child_put(struct child *c)
{
	if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	if (c->root_fd >= 0)
		close(c->root_fd);
	free(c->name);
	free(c->path);
	free(c);
}

static int child_new(const char *path, const char *name, int slot,
		     struct child **out)
{
	struct child *c;
	int ret = 0;

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	atomic_init(&c->refs, 1);
	c->slot = slot;
	c->root_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (c->root_fd < 0) {
		ret = -errno;
		goto out;
	}
	c->path = strdup(path);
	c->name = strdup(name ? name : path);
	if (!c->path || !c->name) {
		ret = -ENOMEM;
		goto out;
	}
	*out = c;
	c = NULL;
out:
	child_put(c);
	return ret;
}

const char *child_name(const struct child *c)
{
	return c->name;
}

const char *child_path(const struct child *c)
{
	return c->path;
}

int child_root_fd(const struct child *c)
{
	return c->root_fd;
}

int child_slot(const struct child *c)
{
	return c->slot;
}

void child_count_error(struct child *c, enum child_op op)
{
	atomic_fetch_add_explicit(&c->errors[op], 1, memory_order_relaxed);
}

uint64_t child_errors(const struct child *c, enum child_op op)
{
	return atomic_load_explicit(&c->errors[op], memory_order_relaxed);
}

static void view_free(struct view_holder *h)
{
	for (int i = 0; i < h->view.n; i++)
		child_put(h->view.child[i]);
	free(h);
}

void children_view_put(const struct child_view *view)
{
	struct view_holder *h = (struct view_holder *)view;

	if (h && atomic_fetch_sub(&h->refs, 1) == 1)
		view_free(h);
}

const struct child_view *children_view_get(struct child_set *set)
{
	struct view_holder *h;

	pthread_mutex_lock(&set->lock);
	h = set->current;
	atomic_fetch_add(&h->refs, 1);
	pthread_mutex_unlock(&set->lock);
	return &h->view;
}

int children_new(const struct children_config *cfg, struct child_set **out)
{
	struct child_set *set;
	struct view_holder *h;
	int ret = 0;

	set = calloc(1, sizeof(*set));
	h = calloc(1, sizeof(*h));
	if (!set || !h) {
		ret = -ENOMEM;
		goto out;
	}
	atomic_init(&h->refs, 1);
	for (int i = 0; i < cfg->n; i++) {
		ret = child_new(cfg->path[i], cfg->name[i], i,
				&h->view.child[i]);
		if (ret)
			goto out;
		h->view.n++;
		h->view.votes[i] = true;
	}
	h->view.voters = cfg->n;
	h->view.threshold = cfg->threshold;
	h->view.read_pattern = cfg->read_pattern;
	h->view.rewrite_corrupted = cfg->rewrite_corrupted;
	h->view.blkverify = cfg->blkverify;
	pthread_mutex_init(&set->lock, NULL);
	set->current = h;
	*out = set;
	return 0;
out:
	if (h)
		view_free(h);
	free(set);
	return ret;
}

void children_free(struct child_set *set)
{
	if (!set)
		return;
	children_view_put(&set->current->view);
	pthread_mutex_destroy(&set->lock);
	free(set);
}
