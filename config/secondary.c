/*
 * The secondary's options (-o replication=secondary,...). Refusals that
 * QEMU's replication driver has carry its text: a missing mode, a bad
 * mode, a missing active or hidden disk, and layers that cannot be
 * emptied ("make_empty"), so that an operator who knows QEMU's messages
 * reads the same ones.
 */
#define _GNU_SOURCE
#include "config/config.h"
#include "config/config_i.h"

#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

#define MODE_VALUE "The option mode's value should be primary or secondary"
#define MAKE_EMPTY "Active disk or hidden disk doesn't support make_empty"

/* Whether any secondary-only option was given. */
static bool secondary_options(const struct config_args *a)
{
	return a->active || a->hidden || a->inbound || a->layer_sync ||
	       a->layer_limit || a->layer_cluster;
}

static int check_mode(const struct config_args *a, char *err, size_t errlen)
{
	if (a->replication_bare && !a->replication)
		return config_fail(err, errlen, "Missing the option mode");
	if (!a->replication)
		return secondary_options(a)
			       ? config_fail(err, errlen,
					     "active=, hidden=, inbound= and "
					     "layer-* go with "
					     "replication=secondary")
			       : 1;
	if (strcmp(a->replication, "primary") == 0)
		return config_fail(
			err, errlen,
			"a primary is an ordinary mount: give it its "
			"replication child with 'add PATH mode=primary'");
	if (strcmp(a->replication, "secondary") != 0)
		return config_fail(err, errlen, MODE_VALUE);
	if (!a->active)
		return config_fail(err, errlen,
				   "Active disk doesn't have backing file");
	if (!a->hidden)
		return config_fail(err, errlen,
				   "Hidden disk doesn't have backing file");
	if (!a->inbound)
		return config_fail(
			err, errlen,
			"replication=secondary needs inbound=MOUNTPOINT, "
			"where the primary's changes arrive");
	return 0;
}

/* A layer must be a writable directory of its own, apart from the base
 * children, the view and the inbound mountpoint. */
static int check_layer(const char *what, const char *path, char **out,
		       struct stat *st, const struct config *cfg, char *err,
		       size_t errlen)
{
	struct stat other;

	if (resolve_dir(what, path, out, st, err, errlen))
		return -EINVAL;
	if (access(*out, W_OK))
		return config_fail(err, errlen,
				   MAKE_EMPTY ": '%s' is not writable", path);
	for (int i = 0; i < cfg->children.n; i++)
		if (stat(cfg->children.path[i], &other) == 0 &&
		    (path_within(*out, &other) ||
		     path_within(cfg->children.path[i], st)))
			return config_fail(err, errlen,
					   MAKE_EMPTY
					   ": '%s' and child '%s' overlap",
					   path, cfg->children.path[i]);
	if (stat(cfg->mountpoint, &other) == 0 &&
	    (path_within(*out, &other) || path_within(cfg->mountpoint, st)))
		return config_fail(
			err, errlen,
			MAKE_EMPTY ": '%s' and the mountpoint overlap", path);
	return 0;
}

static int check_dirs(const struct config_args *a, struct config *cfg,
		      char *err, size_t errlen)
{
	struct config_secondary *s = &cfg->secondary;
	struct stat act, hid, in, mnt;

	if (check_layer("active", a->active, &s->active, &act, cfg, err,
			errlen) ||
	    check_layer("hidden", a->hidden, &s->hidden, &hid, cfg, err,
			errlen))
		return -EINVAL;
	if (same_inode(&act, &hid))
		return config_fail(err, errlen,
				   MAKE_EMPTY
				   ": active and hidden are one directory");
	if (resolve_dir("inbound", a->inbound, &s->inbound, &in, err, errlen))
		return -EINVAL;
	if (stat(cfg->mountpoint, &mnt) == 0 && same_inode(&in, &mnt))
		return config_fail(err, errlen,
				   "inbound '%s' is the view's mountpoint",
				   a->inbound);
	if (path_within(s->inbound, &act) || path_within(s->inbound, &hid))
		return config_fail(err, errlen,
				   "inbound '%s' lies inside a layer",
				   a->inbound);
	return 0;
}

/* SIZE: bytes, or a whole number of K, M, G or T (powers of 1024). */
static bool on_tmpfs(const char *path)
{
	struct statfs fs;

	return statfs(path, &fs) == 0 && fs.f_type == TMPFS_MAGIC;
}

static int check_layer_options(const struct config_args *a,
			       struct config_secondary *s, char *err,
			       size_t errlen)
{
	int cluster = CONFIG_DEFAULT_CLUSTER;

	if (a->layer_cluster &&
	    (!parse_int(a->layer_cluster, 4096, 1 << 20, &cluster) ||
	     (cluster & (cluster - 1))))
		return config_fail(
			err, errlen,
			"layer-cluster=%s is invalid: it must be a power "
			"of two from 4096 to 1048576",
			a->layer_cluster);
	s->cluster = (unsigned int)cluster;
	if (a->layer_limit && !config_parse_size(a->layer_limit, &s->limit))
		return config_fail(
			err, errlen,
			"layer-limit=%s is invalid: it must be a size "
			"such as 512M or 2G",
			a->layer_limit);
	if (a->layer_sync && strcmp(a->layer_sync, "on") &&
	    strcmp(a->layer_sync, "off"))
		return config_fail(
			err, errlen,
			"layer-sync=%s is invalid: it must be on or off",
			a->layer_sync);
	/* Layers on tmpfs die with the host: syncing them buys nothing. */
	s->layer_sync = a->layer_sync
				? strcmp(a->layer_sync, "on") == 0
				: !on_tmpfs(s->active) || !on_tmpfs(s->hidden);
	return 0;
}

int check_secondary(const struct config_args *a, struct config *cfg, char *err,
		    size_t errlen)
{
	int ret = check_mode(a, err, errlen);

	if (ret)
		return ret > 0 ? 0 : ret;
	cfg->secondary.on = true;
	if (check_dirs(a, cfg, err, errlen))
		return -EINVAL;
	return check_layer_options(a, &cfg->secondary, err, errlen);
}

void release_secondary(struct config_secondary *s)
{
	free(s->active);
	free(s->hidden);
	free(s->inbound);
}
