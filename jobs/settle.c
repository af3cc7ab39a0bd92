/*
 * Settling after an unclean stop (kill -9, power loss): the changes in
 * flight when the daemon died may have reached some children and not
 * others. The intent log names every directory whose names changed,
 * every entry whose own metadata changed and every region written in the
 * generations since the last clean unmount. Before the mount serves,
 *   1. each such directory, parents first, has its names compared across
 *      the children in step and each such entry its metadata (dirs.c),
 *      at threshold 1: the most common answer wins, ties to the highest
 *      index, and the others are made like it, so an entry created,
 *      removed or renamed on some children only is there on all or on
 *      none;
 *   2. each region is voted block by block, and the winner written over
 *      the others.
 * The children are identical again, and durably so: each settled
 * directory and file is fsync'd on every child before the mount serves,
 * so what the mount shows after the crash is not undone by the next
 * power cut. An acknowledged change reached every voting child (a child
 * that missed one was demoted, durably, before the acknowledgement), so
 * settling never loses one: it wins everywhere.
 *
 * A path renamed after the log named it is read through the rename's own
 * line; when the rename itself was in flight, the old path is tried too.
 */
#define _GNU_SOURCE
#include "jobs/jobs_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* path, or, failing that, the one it had before a rename. */
static int lookup_either(struct jobs *jobs, const char *path, const char *was,
			 struct tree_entry *e)
{
	int ret = walk_lookup_path(jobs->tree, path, e);

	if (ret == -ENOENT && was)
		ret = walk_lookup_path(jobs->tree, was, e);
	return ret;
}

static void entry_forget(struct jobs *jobs, const struct tree_entry *e)
{
	if (e->ino != TREE_ROOT_INO)
		tree_forget(jobs->tree, e->ino, 1);
}

static int settle_one(struct jobs *jobs, const struct persist_file *pf)
{
	struct tree_entry e;
	int ret = lookup_either(jobs, pf->path, pf->was, &e);

	if (ret)
		return ret == -ENOMEM ? ret : 0;
	if (S_ISREG(e.attr.st_mode))
		ret = scrub_settle_file(jobs, &e, pf->region, pf->nregions);
	entry_forget(jobs, &e);
	return ret == -ENOENT ? 0 : ret;
}

/* Compare directory path's names, or, with leaf, that one name of it. */
static int settle_dir(struct jobs *jobs, const char *path, const char *was,
		      const char *leaf)
{
	const struct dir_compare_how how = {.threshold = 1, .repair = true};
	struct tree_entry e;
	int ret = lookup_either(jobs, path, was, &e);

	if (ret)
		return ret == -ENOMEM ? ret : 0; /* gone: its parent's */
	if (S_ISDIR(e.attr.st_mode))
		ret = dir_compare(jobs, tree_node(jobs->tree, e.ino), leaf,
				  &how);
	/* What the mount is about to show must outlive the next power cut:
	 * the winning names may be on no child's disk yet (children the
	 * crash did not take keep theirs in memory only). */
	if (!ret && S_ISDIR(e.attr.st_mode))
		ret = tree_fsyncdir(jobs->tree, e.ino, false);
	entry_forget(jobs, &e);
	return ret;
}

/* The parent of path in *dir (malloc'd) and its last name in *leaf. */
static int split(const char *path, char **dir, const char **leaf)
{
	const char *slash = path ? strrchr(path, '/') : NULL;

	*leaf = slash ? slash + 1 : path;
	*dir = path ? strndup(path, slash ? (size_t)(slash - path) : 0) : NULL;
	return path && !*dir ? -ENOMEM : 0;
}

static int settle_entry(struct jobs *jobs, const struct persist_entry *pe)
{
	char *dir = NULL, *was = NULL;
	const char *leaf, *was_leaf;
	int ret;

	if (pe->listing)
		return settle_dir(jobs, pe->path, pe->was, NULL);
	if (!*pe->path)
		return 0; /* the root's own metadata is the mount's */
	ret = split(pe->path, &dir, &leaf) ?: split(pe->was, &was, &was_leaf);
	if (!ret)
		ret = settle_dir(jobs, dir, NULL, leaf);
	if (!ret && was && strcmp(was, dir))
		ret = settle_dir(jobs, was, NULL, was_leaf);
	free(dir);
	free(was);
	return ret;
}

static int by_depth(const void *a, const void *b)
{
	size_t la = strlen(((const struct persist_entry *)a)->path);
	size_t lb = strlen(((const struct persist_entry *)b)->path);

	return la < lb ? -1 : la > lb;
}

int jobs_settle(struct jobs *jobs)
{
	struct persist_missed m;
	int ret;

	if (!jobs->record || !record_unclean(jobs->record))
		return 0;
	ret = record_in_flight(jobs->record, jobs->set, &m);
	if (ret == -ENOENT)
		return 0; /* nothing was announced: nothing was in flight */
	/* A parent first: its vote may remove or bring what is below. */
	if (!ret && m.nentries)
		qsort(m.entry, m.nentries, sizeof(*m.entry), by_depth);
	for (int i = 0; !ret && i < m.nentries; i++)
		ret = settle_entry(jobs, &m.entry[i]);
	for (int i = 0; !ret && i < m.nfiles; i++)
		ret = settle_one(jobs, &m.file[i]);
	persist_missed_free(&m);
	return ret;
}
