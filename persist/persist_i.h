/*
 * Private to the persist module: the quarantine's files (qfile.c), which
 * the quarantine's runtime half (quarantine.c) writes and reads.
 *
 * An entry is one file, CHILD/.quorumfs/quarantine/ID (ID in decimal,
 * zero-padded so that the names sort by age): a JSON header line, then
 * the saved bytes. It is written aside (ID.tmp), fsync'd, renamed and
 * the directory fsync'd, so an entry is on the disk whole or not at all;
 * a .tmp a crash left is removed by the next scan.
 */
#ifndef QFS_PERSIST_I_H
#define QFS_PERSIST_I_H

#include "persist/persist.h"

#include <stdint.h>

#define QUARANTINE_DIR PERSIST_DIR "/quarantine"

/* One entry's header (what `quarantine list` shows of it). */
struct qfile_entry {
	uint64_t id;
	char *path; /* the file, relative to the mount */
	char *child;
	uint64_t off, len;
	int64_t time; /* Unix seconds */
	enum quarantine_why why;
	char digest[65]; /* SHA-256 of the winning bytes, hex */
};

void qfile_entry_clear(struct qfile_entry *e);
/* The header as one JSON line, newline included (caller frees). */
char *qfile_header(const struct qfile_entry *e);
/* Write an entry with its header text and bytes, durably. */
int qfile_write(int root_fd, uint64_t id, const char *header, const void *bytes,
		size_t len);
/* Remove the entries ids[0..n), then sync the directory once. */
int qfile_remove(int root_fd, const uint64_t *ids, size_t n);
/* Every entry's header, oldest first (caller frees *out and each
 * entry); -ENOENT when the child has no quarantine. */
int qfile_scan(int root_fd, struct qfile_entry **out, size_t *n);
/* Entry id's header and its bytes (caller frees *bytes). */
int qfile_read(int root_fd, uint64_t id, struct qfile_entry *e, void **bytes);

struct json_object;
/* A record's JSON member: a non-negative integer, or a string; false or
 * NULL when absent or of another type (persist.c). */
bool persist_get_u64(struct json_object *o, const char *key, uint64_t *out);
const char *persist_get_str(struct json_object *o, const char *key);

#endif
