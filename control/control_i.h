/* Private to the control module: the mount's objects, owned here. */
#ifndef QFS_CONTROL_I_H
#define QFS_CONTROL_I_H

#include "control/control.h"

#include <pthread.h>

#include "children/children.h"
#include "config/config.h"
#include "copies/copies.h"
#include "events/events.h"
#include "jobs/jobs.h"
#include "persist/persist.h"
#include "replication/replication.h"
#include "tree/tree.h"

/* One field for each of the mount's objects, which is why there are
 * more than 16 fields. */
struct control {
	const struct config *cfg;
	struct stat mount_st; /* the mountpoint before mounting */
	int threshold;	      /* resolved (it differs while filling) */
	/* Made by control_open, in this order: */
	struct record *record;
	struct child_set *set;
	/* Made by control_start, in this order: */
	struct event_log *log;
	struct pool *pool;
	struct watchdog *watchdog;
	struct tree *tree;
	struct copies *copies; /* MOUNTPOINT/.children */
	struct jobs *jobs;
	struct quarantine *quarantine; /* NULL: quarantine-limit=0 */
	struct control_socket *socket; /* NULL: none */
	struct secondary *secondary;   /* replication=secondary: its view */
	bool started;		       /* MOUNTED was logged */
	/* Commands run one at a time; the last refusal is kept for the
	 * status under error_lock (a leaf), so a status read never waits
	 * for a running command. */
	pthread_mutex_t command_lock;
	pthread_mutex_t error_lock;
	char last_error[512];	/* guarded by error_lock */
	char last_command[256]; /* guarded by error_lock */
};

/* One command, with the reason of a refusal in err (control.c). */
int control_run(struct control *ctl, const char *buf, size_t len, char *err,
		size_t errlen);

/* policy DIR ... (policy.c): change the directories' policies; at
 * start, install what the record keeps; the status's list of them. */
int control_policy(struct control *ctl, const struct config_command *cmd,
		   char *err, size_t errlen);
void control_policies_start(struct control *ctl);
struct json_object *control_policies_json(struct control *ctl);

/* Add the daemon's own facts (version, pid, log, the event program) to
 * status (about.c). */
void control_status_about(struct control *ctl, struct json_object *status);

/* The event log with every sink the config asks for (log=, events=,
 * event-program=), or none: ctl->log stays NULL. 0 or -errno. */
int control_open_events(struct control *ctl);

/* What each child still needs and what no version could win, as one
 * JSON document (heal.c; caller frees), or NULL when out of memory. */
char *control_heal_info(struct control *ctl);

/* `quarantine restore|purge` and `repair FILE from=CHILD`; the entries
 * as one JSON document for the socket's `quarantine list` (caller frees;
 * NULL when out of memory) (quarantine.c). */
int control_quarantine(struct control *ctl, const struct config_command *cmd,
		       char *err, size_t errlen);
int control_repair(struct control *ctl, const struct config_command *cmd,
		   char *err, size_t errlen);
char *control_quarantine_list(struct control *ctl);

/* The operator's socket at path and its threads (socket.c); stop
 * accepts NULL and returns once no client is served. */
struct control_socket;
int control_socket_start(struct control *ctl, const char *path,
			 struct control_socket **out, char *err, size_t errlen);
void control_socket_stop(struct control_socket *cs);

#endif
