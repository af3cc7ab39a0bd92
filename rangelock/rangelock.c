/*
 * Per-file range locks.
 *
 * Claims queue in arrival order in one list. A claim is granted when no
 * claim ahead of it in the list conflicts (overlaps, and one of the two is
 * exclusive). Granted and waiting claims stay in the same list, so a
 * waiting writer blocks readers that arrive after it: FIFO, no starvation.
 * Files see few concurrent requests (the kernel's queue depth), so a list
 * scan is cheaper than any tree.
 */
#include "rangelock/rangelock.h"

void range_locks_init(struct range_locks *rl)
{
	pthread_mutex_init(&rl->mutex, NULL);
	pthread_cond_init(&rl->changed, NULL);
	rl->head = rl->tail = NULL;
}

void range_locks_destroy(struct range_locks *rl)
{
	pthread_cond_destroy(&rl->changed);
	pthread_mutex_destroy(&rl->mutex);
}

static bool conflicts(const struct range_claim *a, const struct range_claim *b)
{
	return (a->exclusive || b->exclusive) && a->start < b->end &&
	       b->start < a->end;
}

static bool blocked(const struct range_locks *rl, const struct range_claim *c)
{
	for (const struct range_claim *p = rl->head; p != c; p = p->next)
		if (conflicts(p, c))
			return true;
	return false;
}

void range_lock(struct range_locks *rl, struct range_claim *c, off_t start,
		off_t end, bool exclusive)
{
	*c = (struct range_claim){
		.start = start, .end = end, .exclusive = exclusive};
	pthread_mutex_lock(&rl->mutex);
	if (rl->tail)
		rl->tail->next = c;
	else
		rl->head = c;
	rl->tail = c;
	while (blocked(rl, c))
		pthread_cond_wait(&rl->changed, &rl->mutex);
	pthread_mutex_unlock(&rl->mutex);
}

void range_unlock(struct range_locks *rl, struct range_claim *c)
{
	struct range_claim **pp, *prev = NULL;

	pthread_mutex_lock(&rl->mutex);
	for (pp = &rl->head; *pp != c; pp = &(*pp)->next)
		prev = *pp;
	*pp = c->next;
	if (rl->tail == c)
		rl->tail = prev;
	/* Only claims queued behind c can have been waiting on it. */
	if (c->next)
		pthread_cond_broadcast(&rl->changed);
	pthread_mutex_unlock(&rl->mutex);
}
