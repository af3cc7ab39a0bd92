/*
 * faults: the rules that tell faultfs which operations to fail, stall or
 * corrupt and when to cut the power, and the rules file they are read
 * from.
 *
 * A rule set is parsed whole from text (see README.md for the syntax) and
 * is immutable afterwards. A struct fault_control owns the current set and
 * the path of the rules file; every operation asks it first, and it
 * re-reads the file whenever the file's identity (device, inode, size,
 * mtime, ctime) has changed since the last look. The test helper replaces
 * the file by rename() and gives each version a distinct mtime, so a rule
 * set is in force from the moment the rename returns, and a hung operation
 * notices its rule is gone on its next look (every HANG_STEP_MS).
 */
#ifndef FAULTFS_FAULTS_H
#define FAULTFS_FAULTS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The operations a rule can name, one per libfuse high-level callback that
 * can fail. Lookups are getattr calls in the high-level API. */
enum fault_op {
	FAULT_GETATTR,
	FAULT_READLINK,
	FAULT_MKNOD,
	FAULT_MKDIR,
	FAULT_UNLINK,
	FAULT_RMDIR,
	FAULT_SYMLINK,
	FAULT_RENAME,
	FAULT_LINK,
	FAULT_CHMOD,
	FAULT_CHOWN,
	FAULT_TRUNCATE,
	FAULT_OPEN,
	FAULT_READ,
	FAULT_WRITE,
	FAULT_STATFS,
	FAULT_FLUSH,
	FAULT_FSYNC,
	FAULT_SETXATTR,
	FAULT_GETXATTR,
	FAULT_LISTXATTR,
	FAULT_REMOVEXATTR,
	FAULT_OPENDIR,
	FAULT_READDIR,
	FAULT_FSYNCDIR,
	FAULT_CREATE,
	FAULT_UTIMENS,
	FAULT_FALLOCATE,
	FAULT_LSEEK,
	FAULT_OP_COUNT,
};

/* One operation, as the rules see it. */
struct fault_request {
	enum fault_op op;
	const char *path;  /* on the mount, from "/"; NULL: an unlinked file */
	const char *path2; /* rename and link target, else NULL */
	bool ranged;	   /* read, write, fallocate: off and len are set */
	off_t off;
	size_t len;
};

struct fault_rules;
struct fault_control;

/*
 * Parse a whole rules file (len bytes, need not be NUL-terminated).
 * Returns 0 with *out owning the new set (release with
 * fault_rules_free()), or -EINVAL with "line N: reason" in err and *out
 * untouched; -ENOMEM when memory runs out.
 */
int fault_rules_parse(const char *text, size_t len, struct fault_rules **out,
		      char *err, size_t errlen);

/* Free a rule set; NULL is fine. */
void fault_rules_free(struct fault_rules *rules);

/*
 * A control that reads rules from path (NULL: never any rule; path is
 * copied). Returns NULL when memory runs out. The file need not exist yet.
 */
struct fault_control *fault_control_new(const char *path);

/* Free a control; NULL is fine. No operation may be using it. */
void fault_control_free(struct fault_control *c);

/*
 * Consult the rules before an operation runs: stall while a matching hang
 * rule is in force (polling for its removal); then, when a matching
 * powercut rule is in force, set *cut and return 0: the caller cuts the
 * power instead of running the operation. Otherwise *cut is false and
 * the return is the first matching error rule's errno, negative, or 0 to
 * let the operation run. abandon() is asked at every step of a stall;
 * when it returns true the stall ends with -EINTR (the caller was
 * interrupted, or the file system is going away). Takes and drops the
 * control's lock; call with none.
 */
int fault_control_before(struct fault_control *c,
			 const struct fault_request *req, bool (*abandon)(void),
			 bool *cut);

/*
 * After a read returned n bytes of req's range into buf: invert (xor 0xff)
 * the bytes that matching flip rules cover. Each matching rule is applied
 * in turn, so two overlapping flips cancel.
 */
void fault_control_after_read(struct fault_control *c,
			      const struct fault_request *req, char *buf,
			      size_t n);

/* Stall steps: how long a hung operation sleeps between two looks. */
#define HANG_STEP_MS 10

#endif
