/*
 * The secondary's stage and epoch: each recorded in the active layer's
 * state file before it counts, so a restart finds them.
 */
#define _GNU_SOURCE
#include "replication/replication_i.h"

#include <json-c/json.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "children/children.h"

static void emit_stage(struct secondary *sec, int old, int now,
		       const char *reason)
{
	struct json_object *d = json_object_new_object();

	json_object_object_add(d, "node-name",
			       json_object_new_string("secondary"));
	json_object_object_add(d, "mode", json_object_new_string("secondary"));
	json_object_object_add(d, "old",
			       json_object_new_string(repl_stage_name(old)));
	json_object_object_add(d, "new",
			       json_object_new_string(repl_stage_name(now)));
	json_object_object_add(d, "reason", json_object_new_string(reason));
	event_log_emit(sec->log, "REPLICATION_STAGE_CHANGED", d);
}

/* Record stage `now` in the active layer's state, then take it. */
int secondary_set_stage(struct secondary *sec, int now, const char *reason)
{
	struct layer_state st;
	int old = atomic_load(&sec->stage), ret;

	layer_get_state(sec->active, &st);
	st.stage = now;
	st.clean = false;
	ret = layer_set_state(sec->active, &st);
	if (ret)
		return ret;
	atomic_store(&sec->stage, now);
	if (old != now)
		emit_stage(sec, old, now, reason);
	return 0;
}

/* Empty both layers: a new epoch in active (the commit point), then in
 * hidden. The old epochs' files are left to layer_gc(). Under the epoch
 * lock. */
int secondary_new_epoch(struct secondary *sec, uint64_t *epoch)
{
	struct layer_state st;
	int ret;

	layer_get_state(sec->active, &st);
	pthread_mutex_lock(&sec->lock);
	ret = layer_switch(sec->active, st.epoch + 1);
	if (!ret)
		failpoint("checkpoint");
	if (!ret)
		ret = layer_switch(sec->hidden, st.epoch + 1);
	if (!ret) {
		atomic_fetch_add(&sec->ns_gen, 1);
		*epoch = st.epoch + 1;
	}
	pthread_mutex_unlock(&sec->lock);
	return ret;
}

/*
 * QFS_FAILPOINT=NAME:N kills the daemon with SIGKILL, as kill -9 would,
 * the Nth time it passes point NAME: how the tests cut a checkpoint, a
 * copy-before-write or a failover's commit half way. Unset, it costs a
 * load of a flag.
 */
void failpoint(const char *name)
{
	static _Atomic int hits;
	static const char *spec;
	static atomic_bool read;
	const char *colon;

	if (!atomic_load(&read)) {
		spec = getenv("QFS_FAILPOINT");
		atomic_store(&read, true);
	}
	if (!spec || !(colon = strchr(spec, ':')) ||
	    strncmp(spec, name, (size_t)(colon - spec)) ||
	    name[colon - spec] != '\0')
		return;
	if (atomic_fetch_add(&hits, 1) + 1 == atoi(colon + 1))
		raise(SIGKILL);
}
