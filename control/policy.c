/*
 * `policy DIR ...`: a directory's own rules (tree.h), kept in the record
 * like the mount's rules so that a restart keeps them and a stale
 * child's older record cannot bring an old list back, and checked
 * against the voting children like the mount's threshold: the highest
 * policy threshold is the set's floor (children_set_floor), below which
 * a removal or resync is refused naming the directory.
 */
#define _GNU_SOURCE
#include "control/control_i.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

/* The highest threshold of the list becomes the set's floor. */
static void set_floor(struct control *ctl, const struct persist_policy *p,
		      int n)
{
	const struct persist_policy *top = NULL;

	for (int i = 0; i < n; i++)
		if (!top || p[i].threshold > top->threshold)
			top = &p[i];
	children_set_floor(ctl->set, top ? top->threshold : 0,
			   top ? top->dir : NULL);
}

/* A new policy's threshold, checked as the mount's is: 1..voting; and
 * none in blkverify mode, whose rules are fixed. */
static int check_threshold(struct control *ctl,
			   const struct config_command *cmd, char *err,
			   size_t errlen)
{
	const struct child_view *v = children_view_get(ctl->set);
	int voting = v->voters;
	bool blkverify = v->blkverify;

	children_view_put(v);
	if (blkverify) {
		snprintf(err, errlen,
			 "cannot set a directory's policy in blkverify mode");
		return -EINVAL;
	}
	if (cmd->number <= voting)
		return 0;
	snprintf(err, errlen,
		 "threshold %d of directory '%s' is outside 1..%d (the voting "
		 "children)",
		 cmd->number, cmd->path, voting);
	return -EINVAL;
}

/* dir names a directory of the voted tree. */
static int dir_exists(struct control *ctl, const char *dir, char *err,
		      size_t errlen)
{
	char copy[PERSIST_POLICY_DIR_MAX + 1], *part, *save;
	uint64_t ino = TREE_ROOT_INO, held[PERSIST_POLICY_DIR_MAX / 2 + 1];
	struct tree_entry e;
	int n = 0, ret = 0;

	snprintf(copy, sizeof(copy), "%s", dir);
	for (part = strtok_r(copy, "/", &save); part && !ret;
	     part = strtok_r(NULL, "/", &save)) {
		ret = tree_lookup(ctl->tree, ino, part, &e);
		if (ret)
			break;
		ino = held[n++] = e.ino;
		if (!S_ISDIR(e.attr.st_mode))
			ret = -ENOTDIR;
	}
	while (n > 0)
		tree_forget(ctl->tree, held[--n], 1);
	if (ret)
		snprintf(err, errlen,
			 "'%s' is not a directory on the mount: %s", dir,
			 strerror(-ret));
	return ret;
}

/* The list with cmd's change made: 0 and *n, or -errno with err. */
static int changed(struct control *ctl, const struct config_command *cmd,
		   struct persist_policy *list, int *n, char *err,
		   size_t errlen)
{
	int i = 0, ret;

	while (i < *n && strcmp(list[i].dir, cmd->path))
		i++;
	if (cmd->clear) {
		if (i == *n) {
			snprintf(err, errlen, "directory '%s' has no policy",
				 cmd->path);
			return -EINVAL;
		}
		list[i] = list[--*n];
		return 0;
	}
	ret = check_threshold(ctl, cmd, err, errlen);
	if (!ret)
		ret = dir_exists(ctl, cmd->path, err, errlen);
	if (ret)
		return ret;
	if (i == *n && *n == PERSIST_POLICY_MAX) {
		snprintf(err, errlen,
			 "at most %d directories may have a policy",
			 PERSIST_POLICY_MAX);
		return -EINVAL;
	}
	list[i] = (struct persist_policy){.threshold = cmd->number,
					  .read_pattern = cmd->policy_pattern,
					  .rewrite_corrupted =
						  cmd->policy_rewrite};
	snprintf(list[i].dir, sizeof(list[i].dir), "%s", cmd->path);
	*n += i == *n;
	return 0;
}

int control_policy(struct control *ctl, const struct config_command *cmd,
		   char *err, size_t errlen)
{
	struct persist_policy list[PERSIST_POLICY_MAX];
	int n = tree_policies(ctl->tree, list);
	int ret = changed(ctl, cmd, list, &n, err, errlen);

	if (ret)
		return ret;
	set_floor(ctl, list, n);
	if (ctl->record)
		record_set_policies(ctl->record, ctl->set, list, n);
	tree_set_policies(ctl->tree, list, n);
	return 0;
}

void control_policies_start(struct control *ctl)
{
	struct persist_policy list[PERSIST_POLICY_MAX];
	int n = ctl->record ? record_policies(ctl->record, list) : 0;

	set_floor(ctl, list, n);
	tree_set_policies(ctl->tree, list, n);
}

struct json_object *control_policies_json(struct control *ctl)
{
	struct persist_policy list[PERSIST_POLICY_MAX];
	struct json_object *o = json_object_new_array();
	int n = ctl->tree ? tree_policies(ctl->tree, list) : 0;

	for (int i = 0; i < n; i++)
		json_object_array_add(o, persist_policy_json(&list[i]));
	return o;
}
