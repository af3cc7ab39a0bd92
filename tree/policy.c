/*
 * Directories' own rules (`policy DIR ...`): a file's reads and writes
 * use the rules of its nearest directory with a policy, else the
 * mount's. The rules a file has are looked up by its path once and kept
 * in the open file, with the generation of the policies they came from;
 * a new list of policies, and every rename (a file or one of its
 * directories may have moved under another policy), start a new
 * generation, so the next request looks again. With no policy at all a
 * request costs one atomic load more.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <stdlib.h>
#include <string.h>

/* A file's rules, packed for one atomic word: the generation they were
 * found in (high half), whether they are valid and whether a policy
 * applies, its threshold, read pattern and rewrite switch (2 bits each:
 * 0, 1, or 2 for the mount's). */
#define RULES_VALID (1u << 0)
#define RULES_HAVE (1u << 1)

static uint64_t pack(unsigned gen, const struct persist_policy *p)
{
	uint32_t low = RULES_VALID;

	if (p)
		low |= RULES_HAVE | (uint32_t)p->threshold << 8 |
		       (uint32_t)(p->read_pattern < 0 ? 2 : p->read_pattern)
			       << 16 |
		       (uint32_t)(p->rewrite_corrupted < 0
					  ? 2
					  : p->rewrite_corrupted)
			       << 18;
	return (uint64_t)gen << 32 | low;
}

void policies_init(struct tree *tree)
{
	pthread_mutex_init(&tree->policies.lock, NULL);
	atomic_init(&tree->policies.count, 0);
	atomic_init(&tree->policies.gen, 1);
}

void policies_destroy(struct tree *tree)
{
	pthread_mutex_destroy(&tree->policies.lock);
}

void tree_set_policies(struct tree *tree, const struct persist_policy *p, int n)
{
	pthread_mutex_lock(&tree->policies.lock);
	memcpy(tree->policies.p, p, n * sizeof(*p));
	atomic_store(&tree->policies.count, n);
	atomic_fetch_add(&tree->policies.gen, 1);
	pthread_mutex_unlock(&tree->policies.lock);
}

int tree_policies(struct tree *tree, struct persist_policy *out)
{
	int n;

	pthread_mutex_lock(&tree->policies.lock);
	n = atomic_load(&tree->policies.count);
	memcpy(out, tree->policies.p, n * sizeof(*out));
	pthread_mutex_unlock(&tree->policies.lock);
	return n;
}

void policies_moved(struct tree *tree)
{
	if (atomic_load(&tree->policies.count))
		atomic_fetch_add(&tree->policies.gen, 1);
}

/* Whether dir is path or one of its directories. */
static bool below(const char *path, const char *dir)
{
	size_t len = strlen(dir);

	return strncmp(path, dir, len) == 0 &&
	       (path[len] == '/' || path[len] == '\0');
}

/* The rules of f now, found again when the policies' generation moved. */
static uint64_t file_rules(struct tree *tree, struct tree_file *f)
{
	unsigned gen = atomic_load(&tree->policies.gen);
	uint64_t rules = atomic_load(&f->rules);
	const struct persist_policy *best = NULL;
	char *path;

	if ((rules >> 32) == gen && (rules & RULES_VALID))
		return rules;
	path = tree_node_path(tree, f->node);
	if (!path)
		return pack(0, NULL); /* no memory: the mount's, once */
	pthread_mutex_lock(&tree->policies.lock);
	for (int i = 0; i < atomic_load(&tree->policies.count); i++) {
		const struct persist_policy *p = &tree->policies.p[i];

		if (below(path, p->dir) &&
		    (!best || strlen(p->dir) > strlen(best->dir)))
			best = p;
	}
	rules = pack(gen, best);
	pthread_mutex_unlock(&tree->policies.lock);
	free(path);
	atomic_store(&f->rules, rules);
	return rules;
}

const struct child_view *policy_view(struct tree *tree, struct tree_file *f)
{
	const struct child_view *base = children_view_get(tree->set), *v;
	uint64_t rules;
	unsigned pattern, rewrite;

	if (atomic_load(&tree->policies.count) == 0)
		return base;
	rules = file_rules(tree, f);
	if (!(rules & RULES_HAVE))
		return base;
	pattern = (rules >> 16) & 3;
	rewrite = (rules >> 18) & 3;
	v = children_view_rules(
		base, (int)((rules >> 8) & 0xff),
		pattern == 2 ? base->read_pattern : (enum read_pattern)pattern,
		rewrite == 2 ? base->rewrite_corrupted : rewrite == 1);
	children_view_put(base);
	return v;
}
