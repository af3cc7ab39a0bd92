/*
 * Write-intent: every change is announced in the set's record before it
 * reaches any child (persist.h), so that the next mount knows what a
 * crash may have left different between children, and what a child that
 * was away missed.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <stdlib.h>

/* Bits of the node's intent cache for [off, off + len), or 0 when the
 * range reaches past what the cache covers. */
static uint64_t intent_bits(off_t off, off_t len)
{
	int64_t first = off / PERSIST_REGION;
	int64_t last = (off + (len ? len : 1) - 1) / PERSIST_REGION;

	if (last >= 64)
		return 0;
	return (last == 63 ? ~0ULL : (1ULL << (last + 1)) - 1) &
	       ~((1ULL << first) - 1);
}

/*
 * Every write asks; almost every answer is "already announced", so the
 * node caches that for its first 64 regions and the record's lock is
 * only taken for a region new in this generation.
 */
void intent_write(struct tree *tree, struct tree_node *n, off_t off, off_t len)
{
	uint64_t bits = intent_bits(off, len), gen;
	char *path;

	if (!tree->record)
		return;
	gen = record_generation(tree->record);
	if (bits && atomic_load(&n->intent_gen) == gen &&
	    (atomic_load(&n->intent_mask) & bits) == bits)
		return;
	if (!record_announced(tree->record, n->serial, off, len)) {
		path = tree_node_path(tree, n);
		if (!path)
			return; /* not announced: nothing to cache */
		record_announce(tree->record, tree->set, n->serial, path, off,
				len);
		free(path);
	}
	/* A lost race only costs another trip to the record. */
	if (atomic_load(&n->intent_gen) != gen) {
		atomic_store(&n->intent_mask, 0);
		atomic_store(&n->intent_gen, gen);
	}
	atomic_fetch_or(&n->intent_mask, bits);
}

void intent_tree(struct tree *tree)
{
	if (tree->record)
		record_announce_tree(tree->record, tree->set);
}

void intent_change(struct tree *tree, struct tree_node *n, bool listing)
{
	_Atomic uint64_t *cached = listing ? &n->listing_gen : &n->entry_gen;
	uint64_t gen;
	char *path;

	intent_tree(tree);
	if (!tree->record)
		return;
	gen = record_generation(tree->record);
	if (atomic_load(cached) == gen)
		return;
	path = tree_node_path(tree, n);
	if (!path)
		return; /* not announced: nothing to cache */
	record_announce_entry(tree->record, tree->set, n->serial, path,
			      listing);
	free(path);
	atomic_store(cached, gen);
}

void intent_move(struct tree *tree, struct tree_node *parent, const char *name,
		 struct tree_node *newparent, const char *newname,
		 bool exchange)
{
	char *from, *to;

	if (!tree->record)
		return;
	from = tree_entry_path(tree, parent, name);
	to = tree_entry_path(tree, newparent, newname);
	if (from && to)
		record_announce_move(tree->record, tree->set, from, to,
				     exchange);
	free(from);
	free(to);
}
