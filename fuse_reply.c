/*
 * What the FUSE glue's handlers share (quorumfs.c's, the view's in
 * fuse_view.c, the copies' in fuse_copies.c): the mount's userdata and
 * a listing's reply.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fuse_lowlevel.h>
#include <stdlib.h>

#include "quorumfs.h"

struct qfs *qfs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

void qfs_reply_dir(fuse_req_t req, size_t size, off_t off,
		   bool (*entry)(const void *dir, size_t i, const char **name,
				 struct stat *st),
		   const void *dir)
{
	char *buf = malloc(size);
	size_t pos = 0;
	const char *name;
	struct stat st;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (size_t i = off; entry(dir, i, &name, &st); i++) {
		size_t len = fuse_add_direntry(req, buf + pos, size - pos, name,
					       &st, (off_t)i + 1);

		if (len > size - pos)
			break;
		pos += len;
	}
	fuse_reply_buf(req, buf, pos);
	free(buf);
}
