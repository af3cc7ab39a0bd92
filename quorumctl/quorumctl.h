/*
 * quorumctl: the operator's command-line tool (quorumctl(8)).
 *
 * It speaks the daemon's control socket (control/socket.c: one request
 * per connection, a line holding `status` or a control command; the
 * reply is the status document or one {"ok":...} line), and falls back
 * to MOUNTPOINT/.control when no socket answers. The socket passes
 * through no directory of the mount, so status and commands work while
 * a child hangs; finding the mount reads /proc/self/mountinfo and never
 * touches the mount itself.
 *
 * One thread. Functions print their own messages ("quorumctl: " and a
 * sentence on stderr) and return an exit status (QCTL_*), or NULL for
 * "nothing, and it was said why".
 */
#ifndef QFS_QUORUMCTL_H
#define QFS_QUORUMCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

/* Exit statuses (quorumctl(8), EXIT STATUS). */
enum {
	QCTL_OK = 0,
	QCTL_DEGRADED = 1, /* a child is not ok; a command was refused; a
			    * waited-for job failed */
	QCTL_ERROR = 2,	   /* usage, no such mount, no answer */
};

/* What the command line asked for besides the words. */
struct qctl_opts {
	const char *socket; /* -s: the control socket, or NULL */
	bool json;	    /* -j: the daemon's JSON, not text */
	bool wait;	    /* -w: until the resync or scrub ends */
	bool follow;	    /* -f: events as they come */
	long lines;	    /* -n: the last N events first; -1: all */
};

/* One quorumfs mount, as the kernel lists it. Strings are owned. */
struct qctl_mount {
	char *mountpoint;
	char *source; /* the set, or the operator's fsname */
	char *socket; /* the control socket to try first, or NULL */
};

/* ---- channel.c: finding mounts, talking to their daemons ---- */

/*
 * The mount on path (made absolute and normalised without touching it,
 * then as realpath(3) resolves it), with its control socket: -s, else
 * the control-socket= of its fstab line, else the daemon's default for
 * this user (config_default_socket). Returns QCTL_OK and fills *m
 * (release with qctl_mount_release), or QCTL_ERROR (said why).
 */
int qctl_find_mount(const char *path, const struct qctl_opts *o,
		    struct qctl_mount *m);

/* Every quorumfs mount in this mount namespace: *out (caller releases
 * each and frees the array) and the count, or -1 (said why). */
int qctl_all_mounts(const struct qctl_opts *o, struct qctl_mount **out);
void qctl_mount_release(struct qctl_mount *m);

/* The status document (caller puts it), or NULL (said why). */
struct json_object *qctl_status(const struct qctl_mount *m);
/* The heal-info document (the socket only), or NULL (said why). */
struct json_object *qctl_heal_info(const struct qctl_mount *m);
/* The quarantine's entries (the socket's `quarantine list`). */
struct json_object *qctl_quarantine_list(const struct qctl_mount *m);

/*
 * Run one control command (its words already quoted for the daemon's
 * parser). Returns the reply as the socket gives it, {"ok":true} or
 * {"ok":false,"errno":N,"error":"...","reason":"..."}, also through
 * .control (the reason then comes from the status), or NULL when the
 * daemon could not be asked (said why). The caller puts it.
 */
struct json_object *qctl_command(const struct qctl_mount *m,
				 const char *command);

/* ---- util.c ---- */

/* Printed as "quorumctl: ...\n" on stderr; returns QCTL_ERROR. */
int qctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Members of a JSON object, with defaults for absent or null ones. */
struct json_object *qctl_get(struct json_object *o, const char *key);
int64_t qctl_int(struct json_object *o, const char *key);
const char *qctl_str(struct json_object *o, const char *key);
bool qctl_bool(struct json_object *o, const char *key);

/* "1.5 GiB", "512 B" into buf. */
const char *qctl_bytes(char *buf, size_t size, double bytes);
/* "1:02:03", "0:05" into buf; "-" for a negative duration. */
const char *qctl_duration(char *buf, size_t size, double seconds);
/* Seconds since the epoch as local "YYYY-MM-DD HH:MM:SS" into buf. */
const char *qctl_time(char *buf, size_t size, int64_t seconds);
/* Monotonic seconds. */
double qctl_now(void);
/* Sleep for seconds (interrupted sleeps are resumed). */
void qctl_sleep(double seconds);

/* ---- the subcommands; argv holds the words after the command ---- */

int qctl_cmd_status(int argc, char **argv, const struct qctl_opts *o);
int qctl_cmd_control(const char *verb, int argc, char **argv,
		     const struct qctl_opts *o);
/* Whether name is a control command quorumctl passes on. */
bool qctl_is_control_verb(const char *name);
int qctl_cmd_events(int argc, char **argv, const struct qctl_opts *o);
int qctl_cmd_metrics(int argc, char **argv, const struct qctl_opts *o);
int qctl_cmd_heal_info(int argc, char **argv, const struct qctl_opts *o);

/* status.c: the set's health, for the status and the wait. */
enum qctl_health { QCTL_ONLINE, QCTL_DEGRADED_SET, QCTL_UNAVAILABLE };
enum qctl_health qctl_health(struct json_object *status);

#endif
