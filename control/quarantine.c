/*
 * The quarantine's commands (`quarantine list|restore|purge`) and
 * `repair FILE from=CHILD`: what an operator does with the bytes repairs
 * overwrote, and with blocks no version could win. The writes go through
 * the jobs (jobs/repair.c), the entries are persist/'s.
 */
#define _GNU_SOURCE
#include "control/control_i.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Put entry id back through the mount's write, on every child. */
static int restore(struct control *ctl, uint64_t id, char *err, size_t errlen)
{
	char *path = NULL;
	void *bytes = NULL;
	uint64_t off = 0;
	size_t len = 0;
	int ret = quarantine_fetch(ctl->quarantine, ctl->set, id, &path, &off,
				   &bytes, &len, err, errlen);

	if (!ret)
		ret = jobs_write_file(ctl->jobs, path, off, bytes, len, err,
				      errlen);
	free(path);
	free(bytes);
	return ret;
}

int control_quarantine(struct control *ctl, const struct config_command *cmd,
		       char *err, size_t errlen)
{
	switch (cmd->quarantine) {
	case CONFIG_QUARANTINE_LIST:
		snprintf(err, errlen,
			 "quarantine list is a read: ask it on the control "
			 "socket (quorumctl quarantine MOUNTPOINT list); "
			 "the status shows the newest 64 entries");
		return -EINVAL;
	case CONFIG_QUARANTINE_RESTORE:
		return restore(ctl, cmd->id, err, errlen);
	case CONFIG_QUARANTINE_PURGE:
		return quarantine_purge(ctl->quarantine, ctl->set, cmd->id, err,
					errlen);
	}
	return -EINVAL;
}

int control_repair(struct control *ctl, const struct config_command *cmd,
		   char *err, size_t errlen)
{
	struct child *c = children_find(ctl->set, cmd->name);
	int ret;

	if (!c) {
		snprintf(err, errlen, "no child is named '%s'", cmd->name);
		return -ENOENT;
	}
	ret = jobs_repair_from(ctl->jobs, cmd->path, c, cmd->whole, cmd->offset,
			       cmd->length, err, errlen);
	child_put(c);
	return ret;
}

char *control_quarantine_list(struct control *ctl)
{
	struct json_object *o = json_object_new_object();
	char *text;

	json_object_object_add(o, "mountpoint",
			       json_object_new_string(ctl->cfg->mountpoint));
	json_object_object_add(o, "entries", quarantine_list(ctl->quarantine));
	text = strdup(json_object_to_json_string_ext(
		o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return text;
}
