/*
 * Requests to every child and what their answers amount to.
 *
 * Metadata calls go out as one struct child_request each (children.h),
 * run on the pool and answered within io-timeout: a child that holds a
 * part longer is given up on and failed (health_late), so a hung child
 * costs a caller one io-timeout, once. Whatever carried a change (a
 * request, or the ring for data writes), its per-child answers come back
 * here, to tree_outcome(), in three named steps:
 *   1. the write rule (vote_write) over the voting children: success at
 *      threshold, else the error vote; a refusal every child gave alike
 *      is the request's fault and is returned with nothing reported;
 *   2. reports: QUORUM_REPORT_BAD for each voting child that failed, its
 *      error counted; QUORUM_FAILURE when the quorum was not reached,
 *      except for flushes (QEMU never sends it for them);
 *   3. demotion: after success, each voting child that failed has missed
 *      the change and is demoted before the caller is answered; a
 *      syncing child that failed with a device error fails (health.c).
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <stdlib.h>
#include <string.h>

#include "vote/vote.h"

void tree_fanout(struct tree *tree, struct child_request *rq,
		 int (*body)(struct child_request *rq, int i))
{
	child_request_run(rq, tree->pool, tree->watchdog, body);
	watchdog_report(tree->watchdog, rq);
}

static void node_arg_release(struct child_request *rq)
{
	struct node_arg *a = rq->arg;

	if (a->release)
		a->release(rq);
	tree_node_unref(a->tree, a->node);
}

struct child_request *node_request(struct tree *tree,
				   const struct child_view *view,
				   struct tree_node *n, size_t size,
				   void (*release)(struct child_request *rq))
{
	struct child_request *rq =
		child_request_new(view, size, node_arg_release);
	struct node_arg *a;

	if (!rq)
		return NULL;
	a = rq->arg;
	*a = (struct node_arg){.tree = tree, .node = n, .release = release};
	tree_node_ref(tree, n);
	return rq;
}

/* The voting children's answers, in view order, for the vote. */
static int voters_of(const struct child_view *view, const int *ret, int *error)
{
	int n = 0;

	for (int i = 0; i < view->n; i++)
		if (view->votes[i])
			error[n++] = ret[i];
	return n;
}

int tree_error_vote(const struct child_view *view, const int *ret)
{
	struct vote_write_result r;
	int error[CHILDREN_MAX], n = voters_of(view, ret, error), failed = 0;

	for (int i = 0; i < n; i++)
		if (error[i])
			error[failed++] = error[i];
	/* No voter succeeded here, so the rule returns the error vote. */
	return vote_write(error, failed, 1, &r);
}

/* Step 2: report each voting child that failed; returns the path, which
 * the caller frees (NULL when nothing was reported). */
static char *report_failures(struct tree *tree, const struct child_view *view,
			     const int *ret, const char *type,
			     struct tree_node *n, uint64_t off, uint64_t len)
{
	bool flush = strcmp(type, "flush") == 0;
	char *path = NULL;

	for (int i = 0; i < view->n; i++) {
		if (!ret[i] || !view->votes[i])
			continue;
		child_count_error(view->child[i],
				  flush ? CHILD_OP_FLUSH : CHILD_OP_WRITE);
		if (!path)
			path = tree_node_path(tree, n);
		event_log_report_bad(tree->log, type,
				     child_name(view->child[i]),
				     flush ? 0 : off, flush ? 0 : len, ret[i],
				     path ? path : "");
	}
	return path;
}

/* Step 3: after success, the voting children that failed missed the
 * change; any syncing child that failed may not keep up. A replication
 * child's forwards are counted, or their failure handled apart. */
static void demote_failures(struct tree *tree, const struct child_view *view,
			    const int *ret, bool missed, const char *type,
			    const char *path, uint64_t off, uint64_t len)
{
	for (int i = 0; i < view->n; i++) {
		struct child *c = view->child[i];

		if (child_kind(c) == CHILD_REPLICATION && !ret[i])
			child_count_forward(c, strcmp(type, "write") ? 0 : len);
		else if (child_kind(c) == CHILD_REPLICATION)
			health_forward_failed(tree, c, ret[i], type,
					      path ? path : "", off, len);
		else if (ret[i] && !view->votes[i])
			health_syncing_failed(tree, c, ret[i]);
		else if (ret[i] && missed)
			health_missed(tree, c, type, path ? path : "", ret[i]);
	}
}

/* A path for a replication child's latch, if one failed. */
static char *forward_path(struct tree *tree, const struct child_view *view,
			  const int *ret, struct tree_node *n, char *path)
{
	for (int i = 0; !path && i < view->n; i++)
		if (ret[i] && child_kind(view->child[i]) == CHILD_REPLICATION)
			path = tree_node_path(tree, n);
	return path;
}

int tree_outcome(struct tree *tree, const struct child_view *view,
		 const int *ret, bool probe, const char *type,
		 struct tree_node *n, uint64_t off, uint64_t len)
{
	struct vote_write_result r;
	int error[CHILDREN_MAX];
	char *path;

	vote_write(error, voters_of(view, ret, error), view->threshold, &r);
	if (r.nobody_at_fault)
		return r.error;
	path = report_failures(tree, view, ret, type, n, off, len);
	path = forward_path(tree, view, ret, n, path);
	demote_failures(tree, view, ret, !r.error && !probe, type, path, off,
			len);
	if (r.error && strcmp(type, "flush") != 0) {
		if (!path)
			path = tree_node_path(tree, n);
		event_log_quorum_failure(tree->log, path ? path : "", off, len);
	}
	free(path);
	return r.error;
}
