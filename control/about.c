/*
 * The daemon's own facts in the status document, for the operator's
 * tool: which version runs, its process, where its events go and the
 * data requests it answered (stats/); and
 * the event log opened with all its sinks.
 */
#define _GNU_SOURCE
#include "control/control_i.h"

#include <json-c/json.h>
#include <unistd.h>

#include "stats/stats.h"
#include "transport/transport.h"

static void add_count(struct json_object *o, const char *key, uint64_t n)
{
	json_object_object_add(o, key, json_object_new_int64((int64_t)n));
}

/* {path, runs, failed, timed-out, dropped}, or NULL without a program. */
static struct json_object *program_status(struct control *ctl)
{
	struct event_program_stats st;
	struct json_object *o;

	if (!event_log_program_stats(ctl->log, &st))
		return NULL;
	o = json_object_new_object();
	json_object_object_add(o, "path",
			       json_object_new_string(ctl->cfg->event_program));
	add_count(o, "runs", st.runs);
	add_count(o, "failed", st.failed);
	add_count(o, "timed-out", st.timed_out);
	add_count(o, "dropped", st.dropped);
	return o;
}

/* {kind, queues, slots}: how the kernel's requests reach the daemon. */
static struct json_object *transport_status(void)
{
	struct json_object *o = json_object_new_object();
	unsigned queues, slots;

	transport_shape(&queues, &slots);
	json_object_object_add(o, "kind",
			       json_object_new_string(transport_describe()));
	add_count(o, "queues", queues);
	add_count(o, "slots", slots);
	return o;
}

void control_status_about(struct control *ctl, struct json_object *status)
{
	const struct config *cfg = ctl->cfg;

	json_object_object_add(status, "version",
			       json_object_new_string(QFS_VERSION));
	json_object_object_add(status, "pid", json_object_new_int(getpid()));
	json_object_object_add(
		status, "log",
		cfg->log_path ? json_object_new_string(cfg->log_path) : NULL);
	json_object_object_add(status, "events-syslog",
			       json_object_new_boolean(cfg->events_syslog));
	json_object_object_add(status, "event-program", program_status(ctl));
	json_object_object_add(status, "requests", stats_json());
	json_object_object_add(status, "transport", transport_status());
}

int control_open_events(struct control *ctl)
{
	const struct config *cfg = ctl->cfg;
	const struct event_sinks s = {
		.path = cfg->log_path,
		.syslog = cfg->events_syslog,
		.program = cfg->event_program,
		.timeout_ms = cfg->event_program_timeout_ms,
		.mountpoint = cfg->mountpoint,
	};

	if (!s.path && !s.syslog && !s.program)
		return 0;
	return event_log_open_sinks(&s, &ctl->log);
}
