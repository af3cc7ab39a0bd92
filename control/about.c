/*
 * The daemon's own facts in the status document, for the operator's
 * tool: which version runs, its process, and where its events go.
 */
#define _GNU_SOURCE
#include "control/control_i.h"

#include <json-c/json.h>
#include <unistd.h>

void control_status_about(struct control *ctl, struct json_object *status)
{
	const struct config *cfg = ctl->cfg;

	json_object_object_add(status, "version",
			       json_object_new_string(QFS_VERSION));
	json_object_object_add(status, "pid", json_object_new_int(getpid()));
	json_object_object_add(
		status, "log",
		cfg->log_path ? json_object_new_string(cfg->log_path) : NULL);
}
