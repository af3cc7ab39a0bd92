/*
 * What a checkpoint leaves behind, removed in the background: the old
 * epochs' directories in both layers and the graveyard's buried files.
 * Removing a large layer frees its extents, which takes time in
 * proportion to its size; a checkpoint stays a pair of epoch switches
 * whatever the layers held. Nothing refers to what is queued here, so
 * it may go at any time, or at the next start if the daemon stops
 * first.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <stdlib.h>

struct reaper {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	bool stop;
	uint64_t below;	       /* epochs below this one may go; 0: none */
	struct paths **graves; /* graveyard lists, each from one switch */
	int n, cap;
};

/* Take the work queued so far. */
static bool take(struct reaper *r, uint64_t *below, struct paths ***graves,
		 int *n)
{
	bool go;

	pthread_mutex_lock(&r->lock);
	while (!r->stop && !r->below && !r->n)
		pthread_cond_wait(&r->wake, &r->lock);
	*below = r->below;
	*graves = r->graves;
	*n = r->n;
	r->below = 0;
	r->graves = NULL;
	r->n = r->cap = 0;
	go = !r->stop;
	pthread_mutex_unlock(&r->lock);
	return go;
}

static void *reap_main(void *arg)
{
	struct secondary *sec = arg;
	struct paths **graves;
	uint64_t below;
	int n;

	while (take(sec->reaper, &below, &graves, &n)) {
		if (below) {
			layer_gc(sec->active, below);
			layer_gc(sec->hidden, below);
		}
		for (int i = 0; i < n; i++)
			graveyard_clear(sec, graves[i]);
		free(graves);
	}
	for (int i = 0; i < n; i++)
		graveyard_free(graves[i]);
	free(graves);
	return NULL;
}

int reaper_start(struct secondary *sec)
{
	struct reaper *r = calloc(1, sizeof(*r));
	int ret;

	if (!r)
		return -ENOMEM;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->wake, NULL);
	sec->reaper = r;
	ret = -pthread_create(&r->thread, NULL, reap_main, sec);
	if (!ret)
		pthread_setname_np(r->thread, "qfs-layer-gc");
	if (ret) {
		sec->reaper = NULL;
		pthread_cond_destroy(&r->wake);
		pthread_mutex_destroy(&r->lock);
		free(r);
	}
	return ret;
}

void reaper_stop(struct secondary *sec)
{
	struct reaper *r = sec->reaper;

	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stop = true;
	pthread_cond_signal(&r->wake);
	pthread_mutex_unlock(&r->lock);
	pthread_join(r->thread, NULL);
	pthread_cond_destroy(&r->wake);
	pthread_mutex_destroy(&r->lock);
	free(r);
	sec->reaper = NULL;
}

/* Queue the epochs below `below` and graveyard list `graves` (taken
 * over; NULL: none). Without a reaper, the work is done here. */
void reaper_queue(struct secondary *sec, uint64_t below, struct paths *graves)
{
	struct reaper *r = sec->reaper;
	struct paths **grown;

	if (!r) {
		layer_gc(sec->active, below);
		layer_gc(sec->hidden, below);
		graveyard_clear(sec, graves);
		return;
	}
	pthread_mutex_lock(&r->lock);
	if (below > r->below)
		r->below = below;
	if (graves && r->n == r->cap) {
		grown = realloc(r->graves,
				(size_t)(2 * r->cap + 4) * sizeof(*grown));
		if (grown) {
			r->graves = grown;
			r->cap = 2 * r->cap + 4;
		}
	}
	if (graves && r->n < r->cap)
		r->graves[r->n++] = graves;
	else if (graves) /* out of memory: the next checkpoint lists it */
		graveyard_free(graves);
	pthread_cond_signal(&r->wake);
	pthread_mutex_unlock(&r->lock);
}
