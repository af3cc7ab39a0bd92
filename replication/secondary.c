/*
 * The secondary: its layers, its stage machine and its status
 * (replication.h). The stage is kept in the active layer's state file,
 * whose epoch is the authoritative one: a hidden layer behind it is
 * empty by definition, so a checkpoint is the active layer's state
 * rename, then the hidden one's, whatever they hold.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "children/children.h"

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- opening ---- */

/* The hidden layer follows the active one's epoch: behind it, it is
 * empty (a checkpoint got no further than the active state). */
static int align_epochs(struct secondary *sec)
{
	struct layer_state a, h;

	layer_get_state(sec->active, &a);
	layer_get_state(sec->hidden, &h);
	if (h.epoch == a.epoch)
		return 0;
	return layer_switch(sec->hidden, a.epoch);
}

/* Layers that were not kept durable and not closed cleanly may have
 * lost anything: the stream cannot go on from them. */
static void check_recovery(struct secondary *sec)
{
	struct layer_state a;

	layer_get_state(sec->active, &a);
	atomic_store(&sec->stage, a.stage);
	atomic_store(&sec->read_only, a.failed_over);
	if (a.stage == REPL_NONE || a.stage == REPL_DONE || a.clean ||
	    sec->cfg->layer_sync)
		return;
	atomic_store(&sec->stage, REPL_NONE);
}

/* Writers first: a checkpoint must not wait behind a stream of view
 * and inbound requests that keep the epoch lock shared. */
static void init_locks(struct secondary *sec)
{
	pthread_rwlockattr_t attr;

	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(
		&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&sec->epoch, &attr);
	pthread_rwlock_init(&sec->names, &attr);
	pthread_rwlockattr_destroy(&attr);
}

int secondary_open(const struct config_secondary *cfg, struct secondary **out,
		   char *err, size_t errlen)
{
	struct secondary *sec = calloc(1, sizeof(*sec));
	int ret;

	if (!sec)
		return refuse(err, errlen, -ENOMEM, "out of memory");
	sec->cfg = cfg;
	/* Graveyard names must not meet those of an earlier run. */
	atomic_init(&sec->graves, (uint64_t)time(NULL) << 20);
	init_locks(sec);
	pthread_mutex_init(&sec->fill, NULL);
	pthread_mutex_init(&sec->lock, NULL);
	ret = layer_open(cfg->active, "active", cfg->cluster, cfg->layer_sync,
			 &sec->active, err, errlen);
	if (!ret)
		ret = layer_open(cfg->hidden, "hidden", cfg->cluster,
				 cfg->layer_sync, &sec->hidden, err, errlen);
	if (!ret && (ret = align_epochs(sec)))
		refuse(err, errlen, ret, "hidden layer %s: %s", cfg->hidden,
		       strerror(-ret));
	if (!ret)
		ret = vnodes_new(sec);
	if (ret) {
		secondary_close(sec, false);
		return ret;
	}
	check_recovery(sec);
	*out = sec;
	return 0;
}

void secondary_start(struct secondary *sec, struct tree *tree,
		     struct event_log *log, int timeout_ms)
{
	struct layer_state st;
	char err[256];

	sec->tree = tree;
	sec->log = log;
	sec->timeout_ms = timeout_ms;
	/* A failover cut short by a crash goes on where it stopped: each
	 * step of its commit may run again. */
	if (atomic_load(&sec->stage) == REPL_FAILOVER)
		secondary_failover(sec, err, sizeof(err));
	/* Without the thread, checkpoints remove the old epochs inline;
	 * so does the queue below. */
	reaper_start(sec);
	/* Epochs a crash left behind before their removal. */
	layer_get_state(sec->active, &st);
	reaper_queue(sec, st.epoch, NULL);
}

void secondary_close(struct secondary *sec, bool clean)
{
	if (!sec)
		return;
	reaper_stop(sec);
	layer_close(sec->active, clean);
	layer_close(sec->hidden, clean);
	vnodes_free(sec);
	pthread_mutex_destroy(&sec->lock);
	pthread_mutex_destroy(&sec->fill);
	pthread_rwlock_destroy(&sec->names);
	pthread_rwlock_destroy(&sec->epoch);
	free(sec);
}

void secondary_inbound(struct secondary *sec, bool mounted)
{
	atomic_store(&sec->inbound_up, mounted);
}

/* ---- stages ---- */

static void emit_checkpoint(struct secondary *sec, int64_t ms)
{
	struct json_object *d = json_object_new_object();
	struct layer_state st;

	layer_get_state(sec->active, &st);
	json_object_object_add(d, "epoch", json_object_new_int64(st.epoch));
	json_object_object_add(d, "duration-ms", json_object_new_int64(ms));
	event_log_emit(sec->log, "REPLICATION_CHECKPOINT", d);
}

/* The epoch lock, waited for at most io-timeout: requests in flight are
 * bounded by it, so a longer wait means something hangs. */
static int drain(struct secondary *sec, char *err, size_t errlen)
{
	struct timespec deadline;
	int ms = sec->timeout_ms > 0 ? sec->timeout_ms : 30000;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += ms / 1000;
	deadline.tv_nsec += (long)(ms % 1000) * 1000000;
	if (deadline.tv_nsec >= 1000000000) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000;
	}
	if (pthread_rwlock_timedwrlock(&sec->epoch, &deadline) == 0)
		return 0;
	return refuse(err, errlen, -ETIMEDOUT,
		      "in-flight I/O did not drain within %d ms", ms);
}

/* Checkpoint statistics, for status. */
static void count_checkpoint(struct secondary *sec, int64_t ms)
{
	pthread_mutex_lock(&sec->lock);
	sec->checkpoints++;
	sec->last_checkpoint_ms = (uint64_t)ms;
	sec->last_checkpoint_time = time(NULL);
	if ((uint64_t)ms > sec->max_checkpoint_ms)
		sec->max_checkpoint_ms = (uint64_t)ms;
	pthread_mutex_unlock(&sec->lock);
}

/*
 * With every request drained: empty both layers, then take stage `to`
 * (-1: keep it). What the graveyard held for the old epoch goes after
 * the requests resume: nothing refers to it any more.
 */
static int switch_epoch(struct secondary *sec, int to, const char *why,
			char *err, size_t errlen)
{
	struct paths *graves = NULL;
	uint64_t epoch = 0;
	int ret = drain(sec, err, errlen);

	if (ret)
		return ret;
	ret = secondary_new_epoch(sec, &epoch);
	if (!ret && to >= 0)
		ret = secondary_set_stage(sec, to, why);
	if (!ret)
		graveyard_list(sec, &graves);
	pthread_rwlock_unlock(&sec->epoch);
	reaper_queue(sec, epoch, graves);
	return ret ? refuse(err, errlen, ret, "Cannot make active disk empty")
		   : 0;
}

static int checkpoint(struct secondary *sec, char *err, size_t errlen)
{
	int s = atomic_load(&sec->stage), ret;
	int64_t t0 = now_ms();

	if (s == REPL_DONE || s == REPL_FAILOVER)
		return 0;
	if (s != REPL_RUNNING)
		return refuse(err, errlen, -EINVAL, JOB_CANCELLED);
	ret = switch_epoch(sec, -1, NULL, err, errlen);
	if (ret)
		return ret;
	count_checkpoint(sec, now_ms() - t0);
	emit_checkpoint(sec, now_ms() - t0);
	return 0;
}

static int start(struct secondary *sec, int mode, char *err, size_t errlen)
{
	int s = atomic_load(&sec->stage), ret;

	if (mode < 0)
		return refuse(err, errlen, -EINVAL,
			      "usage: replication start secondary");
	if (s == REPL_DONE || s == REPL_FAILOVER)
		return 0;
	if (s != REPL_NONE)
		return refuse(err, errlen, -EBUSY, RUNNING_OR_DONE);
	if (mode != 1)
		return refuse(err, errlen, -EINVAL, MODE_INVALID, 1, mode);
	if (!atomic_load(&sec->inbound_up))
		return refuse(err, errlen, -ENOTCONN, NO_BACKEND);
	ret = switch_epoch(sec, REPL_RUNNING, "replication start", err, errlen);
	if (!ret)
		atomic_store(&sec->error, 0);
	return ret;
}

static int get_error(struct secondary *sec, char *err, size_t errlen)
{
	if (atomic_load(&sec->stage) == REPL_NONE)
		return refuse(err, errlen, -EINVAL, NOT_RUNNING);
	if (atomic_load(&sec->error))
		return refuse(err, errlen, -EIO, IO_ERROR);
	return 0;
}

static int stop(struct secondary *sec, bool failover, char *err, size_t errlen)
{
	int s = atomic_load(&sec->stage);

	if (s == REPL_DONE || s == REPL_FAILOVER)
		return 0;
	if (s != REPL_RUNNING)
		return refuse(err, errlen, -EINVAL, NOT_RUNNING);
	if (failover)
		return secondary_failover(sec, err, errlen);
	/* Without failover the view becomes the base: the layers go. */
	return switch_epoch(sec, REPL_DONE, "replication stop", err, errlen);
}

int replication_secondary(struct secondary *sec,
			  const struct config_command *cmd, char *err,
			  size_t errlen)
{
	if (cmd->name)
		return refuse(err, errlen, -ENOENT,
			      "no replication child is named '%s'", cmd->name);
	switch (cmd->repl) {
	case CONFIG_REPL_START:
		return start(sec, cmd->mode, err, errlen);
	case CONFIG_REPL_CHECKPOINT:
		return checkpoint(sec, err, errlen);
	case CONFIG_REPL_GET_ERROR:
		return get_error(sec, err, errlen);
	case CONFIG_REPL_STOP:
		return stop(sec, cmd->failover, err, errlen);
	case CONFIG_REPL_COMMIT:
		if (atomic_load(&sec->stage) != REPL_FAILOVER_FAILED)
			return refuse(
				err, errlen, -EINVAL,
				"nothing to commit: the stage is %s",
				repl_stage_name(atomic_load(&sec->stage)));
		return secondary_failover(sec, err, errlen);
	}
	return -EINVAL;
}

bool replication_route(struct secondary *sec, struct child_set *set)
{
	struct child *m[CHILDREN_MAX];
	int n, primary = 0;

	if (atomic_load(&sec->stage) != REPL_DONE)
		return true;
	n = children_members(set, m);
	for (int i = 0; i < n; i++) {
		primary += child_kind(m[i]) == CHILD_REPLICATION;
		child_put(m[i]);
	}
	return primary == 0;
}

int secondary_check_add(struct secondary *sec, char *err, size_t errlen)
{
	if (atomic_load(&sec->stage) == REPL_DONE)
		return 0;
	return refuse(err, errlen, -EBUSY, IN_USE);
}

/* ---- status ---- */

static struct json_object *layer_status(struct layer *l, const char *path,
					bool sync)
{
	struct json_object *o = json_object_new_object();
	uint64_t clusters = layer_clusters(l);

	json_object_object_add(o, "path", json_object_new_string(path));
	json_object_object_add(o, "clusters", json_object_new_int64(clusters));
	json_object_object_add(
		o, "bytes",
		json_object_new_int64(clusters * layer_cluster_bytes(l)));
	json_object_object_add(o, "entries",
			       json_object_new_int(layer_entries(l)));
	json_object_object_add(o, "sync", json_object_new_boolean(sync));
	return o;
}

static struct json_object *inbound_status(struct secondary *sec)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "path",
			       json_object_new_string(sec->cfg->inbound));
	json_object_object_add(
		o, "mounted",
		json_object_new_boolean(atomic_load(&sec->inbound_up)));
	json_object_object_add(
		o, "read-only",
		json_object_new_boolean(atomic_load(&sec->read_only)));
	json_object_object_add(
		o, "writes",
		json_object_new_int64(atomic_load(&sec->inbound_writes)));
	json_object_object_add(
		o, "bytes",
		json_object_new_int64(atomic_load(&sec->inbound_bytes)));
	return o;
}

static struct json_object *checkpoint_status(struct secondary *sec)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "count",
			       json_object_new_int64(sec->checkpoints));
	json_object_object_add(
		o, "time", json_object_new_int64(sec->last_checkpoint_time));
	json_object_object_add(o, "duration-ms",
			       json_object_new_int64(sec->last_checkpoint_ms));
	json_object_object_add(o, "max-duration-ms",
			       json_object_new_int64(sec->max_checkpoint_ms));
	return o;
}

void secondary_status(struct secondary *sec, struct json_object *status)
{
	struct json_object *o = json_object_new_object(), *layers;
	int error = atomic_load(&sec->error);
	struct layer_state st;

	layer_get_state(sec->active, &st);
	json_object_object_add(o, "mode", json_object_new_string("secondary"));
	json_object_object_add(o, "stage",
			       json_object_new_string(repl_stage_name(
				       atomic_load(&sec->stage))));
	json_object_object_add(o, "epoch", json_object_new_int64(st.epoch));
	json_object_object_add(o, "error", json_object_new_boolean(error));
	json_object_object_add(o, "desc",
			       json_object_new_string(error ? IO_ERROR : ""));
	json_object_object_add(o, "inbound", inbound_status(sec));
	pthread_mutex_lock(&sec->lock);
	json_object_object_add(o, "checkpoint", checkpoint_status(sec));
	layers = json_object_new_object();
	json_object_object_add(layers, "active",
			       layer_status(sec->active, sec->cfg->active,
					    sec->cfg->layer_sync));
	json_object_object_add(layers, "hidden",
			       layer_status(sec->hidden, sec->cfg->hidden,
					    sec->cfg->layer_sync));
	pthread_mutex_unlock(&sec->lock);
	json_object_object_add(o, "layers", layers);
	json_object_object_add(status, "replication", o);
}
