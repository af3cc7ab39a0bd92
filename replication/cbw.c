/*
 * The base files' claims for copy-before-write: an inbound change of a
 * file claims its range exclusively across the copy of the old bytes
 * into hidden and the write to B; a view read of B claims it shared
 * across its look at hidden's map and its read. So a view read sees
 * either the old bytes in B or their copy in hidden, never the new ones.
 * The claims are range locks (rangelock/), one set per base file in use,
 * made on first claim and freed with the last.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <stdlib.h>

struct cbw_lock {
	uint64_t ino;
	int users; /* under sec->lock */
	struct range_locks rl;
	struct cbw_lock *next;
};

static struct cbw_lock *cbw_get(struct secondary *sec, uint64_t ino)
{
	struct cbw_lock *l;

	pthread_mutex_lock(&sec->lock);
	for (l = sec->cbw; l && l->ino != ino; l = l->next)
		;
	if (!l && (l = calloc(1, sizeof(*l)))) {
		l->ino = ino;
		range_locks_init(&l->rl);
		l->next = sec->cbw;
		sec->cbw = l;
	}
	if (l)
		l->users++;
	pthread_mutex_unlock(&sec->lock);
	return l;
}

int cbw_claim(struct secondary *sec, uint64_t ino, off_t start, off_t end,
	      bool exclusive, struct cbw_claim *c)
{
	c->lock = cbw_get(sec, ino);
	if (!c->lock)
		return -ENOMEM;
	range_lock(&c->lock->rl, &c->claim, start, end, exclusive);
	return 0;
}

void cbw_release(struct secondary *sec, struct cbw_claim *c)
{
	struct cbw_lock **link;

	if (!c->lock)
		return;
	range_unlock(&c->lock->rl, &c->claim);
	pthread_mutex_lock(&sec->lock);
	if (--c->lock->users == 0) {
		for (link = &sec->cbw; *link != c->lock; link = &(*link)->next)
			;
		*link = c->lock->next;
		range_locks_destroy(&c->lock->rl);
		free(c->lock);
	}
	pthread_mutex_unlock(&sec->lock);
	c->lock = NULL;
}
