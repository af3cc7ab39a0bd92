/*
 * What the FUSE glue's files share: the mount's userdata, the handling
 * of MOUNTPOINT/.control (quorumfs.c), which a secondary's view serves
 * too, and the view's operations (fuse_view.c).
 */
#ifndef QFS_QUORUMFS_H
#define QFS_QUORUMFS_H

#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "transport/transport.h"

struct control;
struct copies;
struct tree;
struct secondary;

/* One FUSE session's userdata. */
struct qfs {
	struct control *ctl;
	struct tree *tree;     /* control_tree(ctl), once started */
	struct copies *copies; /* control_copies(ctl), ditto */
	struct fuse_session *se;
	double timeout;		/* entry and attribute cache time, seconds */
	const char *mountpoint; /* for the daemon's messages */
	uid_t owner;		/* the mounting user owns .control */
	gid_t group;
	/* A replication secondary's: the view's session has secondary set,
	 * the inbound session has inbound set (its changes copy before
	 * they write). NULL on an ordinary mount. */
	struct secondary *secondary, *inbound;
	enum transport_uring uring; /* how the mount's requests arrive */
};

struct qfs *qfs_of(fuse_req_t req);
void qfs_init(void *userdata, struct fuse_conn_info *conn);
/* FUSE_SET_ATTR_* bits as the tree's TREE_SET_* bits. */
int qfs_setattr_flags(int to_set);

/*
 * .control, in any session that has it: each returns false when ino
 * (or parent and name) is not .control, and true once it replied.
 */
bool qfs_is_control(fuse_ino_t ino);
bool qfs_control_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
bool qfs_control_getattr(fuse_req_t req, fuse_ino_t ino);
bool qfs_control_setattr(fuse_req_t req, fuse_ino_t ino, int to_set);
bool qfs_control_open(fuse_req_t req, fuse_ino_t ino,
		      struct fuse_file_info *fi);
bool qfs_control_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi);
bool qfs_control_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		       size_t size);
bool qfs_control_release(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi);

/*
 * MOUNTPOINT/.children (fuse_copies.c), on an ordinary mount: each
 * returns false when the node (or parent and name) is not one of the
 * copies', and true once it replied. refuse answers EROFS for any node
 * of theirs, for the calls that would change something.
 */
bool qfs_copies_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
bool qfs_copies_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
bool qfs_copies_getattr(fuse_req_t req, fuse_ino_t ino);
bool qfs_copies_refuse(fuse_req_t req, fuse_ino_t ino);
bool qfs_copies_readlink(fuse_req_t req, fuse_ino_t ino);
bool qfs_copies_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
bool qfs_copies_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi);
bool qfs_copies_nothing(fuse_req_t req, fuse_ino_t ino);
bool qfs_copies_release(fuse_req_t req, fuse_ino_t ino,
			struct fuse_file_info *fi);
bool qfs_copies_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		      struct fuse_file_info *fi);
bool qfs_copies_opendir(fuse_req_t req, fuse_ino_t ino,
			struct fuse_file_info *fi);
bool qfs_copies_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi);
bool qfs_copies_releasedir(fuse_req_t req, fuse_ino_t ino,
			   struct fuse_file_info *fi);
bool qfs_copies_statfs(fuse_req_t req, fuse_ino_t ino);
bool qfs_copies_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			 size_t size);
bool qfs_copies_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);

/* Forget each of forgets but .control, with forget(); reply none. */
void qfs_forget_each(fuse_req_t req, size_t count,
		     const struct fuse_forget_data *forgets,
		     void (*forget)(fuse_req_t req, uint64_t ino, uint64_t n));
/* Reply to a readdir of size bytes from entry off of dir, whose entry
 * i entry() gives (false past the end). */
void qfs_reply_dir(fuse_req_t req, size_t size, off_t off,
		   bool (*entry)(const void *dir, size_t i, const char **name,
				 struct stat *st),
		   const void *dir);

/* The view's operations (fuse_view.c). */
extern const struct fuse_lowlevel_ops view_ops;

#endif
