/* The layer store: entries and their journal, objects and their maps,
 * epochs, and what survives closing and reopening. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layers/layers.h"
#include "unit.h"

#define CLUSTER 65536

static char dir[] = "/tmp/qfs-layers-XXXXXX";
static char err[256];

static struct layer *open_layer(const char *role)
{
	struct layer *l = NULL;

	CHECK_EQ(layer_open(dir, role, CLUSTER, true, &l, err, sizeof(err)), 0);
	return l;
}

static void wipe(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s/* %s/.qfslayer", dir, dir);
	CHECK_EQ(system(cmd), 0);
}

static void test_a_fresh_directory_becomes_an_empty_layer_of_epoch_0(void)
{
	struct layer *l = open_layer("active");
	struct layer_state st;

	layer_get_state(l, &st);
	CHECK_EQ(st.epoch, 0);
	CHECK_EQ(layer_entries(l), 0);
	CHECK(layer_find(l, "a") == NULL);
	layer_close(l, true);
	wipe();
}

static void test_another_role_or_cluster_is_refused(void)
{
	struct layer *l = open_layer("hidden"), *other = NULL;

	layer_close(l, true);
	CHECK_EQ(layer_open(dir, "active", CLUSTER, true, &other, err,
			    sizeof(err)),
		 -EINVAL);
	CHECK(strstr(err, "hidden layer") != NULL);
	CHECK_EQ(
		layer_open(dir, "hidden", 4096, true, &other, err, sizeof(err)),
		-EINVAL);
	wipe();
}

static void test_entries_are_journaled_and_come_back_after_reopening(void)
{
	struct layer *l = open_layer("active");
	struct layer_entry e = {
		.path = "d/f", .lower = "d/g", .has_size = 1, .size = 12345};
	struct layer_entry w = {.path = "gone", .absent = true};
	const struct layer_entry *got;

	CHECK_EQ(layer_put(l, &e), 0);
	CHECK_EQ(layer_put(l, &w), 0);
	e.size = 99;
	CHECK_EQ(layer_put(l, &e), 0); /* the newest wins */
	layer_close(l, true);
	l = open_layer("active");
	CHECK_EQ(layer_entries(l), 2);
	got = layer_find(l, "d/f");
	CHECK(got && strcmp(got->lower, "d/g") == 0 && got->size == 99);
	got = layer_find(l, "gone");
	CHECK(got && got->absent);
	CHECK_EQ(layer_drop(l, "gone"), 0);
	layer_close(l, true);
	l = open_layer("active");
	CHECK(layer_find(l, "gone") == NULL);
	layer_close(l, true);
	wipe();
}

static void test_a_move_renames_an_entry_and_all_below_it(void)
{
	struct layer *l = open_layer("active");
	struct layer_entry a = {.path = "a"}, b = {.path = "a/b"},
			   ab = {.path = "ab"}, t = {.path = "t/x"};

	layer_put(l, &a);
	layer_put(l, &b);
	layer_put(l, &ab);
	layer_put(l, &t); /* replaced by the move */
	CHECK_EQ(layer_move(l, "a", "t"), 0);
	CHECK(layer_find(l, "t") && layer_find(l, "t/b"));
	CHECK(!layer_find(l, "a") && !layer_find(l, "a/b"));
	CHECK(layer_find(l, "ab") != NULL); /* a sibling, not below */
	CHECK(layer_find(l, "t/x") == NULL);
	layer_close(l, true);
	l = open_layer("active");
	CHECK(layer_find(l, "t/b") && layer_find(l, "ab") &&
	      !layer_find(l, "t/x"));
	layer_close(l, true);
	wipe();
}

static void test_moving_lowers_follows_objects_renamed_below(void)
{
	struct layer *l = open_layer("hidden");
	struct layer_entry a = {.path = "c1", .lower = "d/x"},
			   b = {.path = "c2", .lower = "dx"};

	layer_put(l, &a);
	layer_put(l, &b);
	CHECK_EQ(layer_move_lower(l, "d", "e/f"), 0);
	CHECK(strcmp(layer_find(l, "c1")->lower, "e/f/x") == 0);
	CHECK(strcmp(layer_find(l, "c2")->lower, "dx") == 0);
	layer_close(l, true);
	l = open_layer("hidden");
	CHECK(strcmp(layer_find(l, "c1")->lower, "e/f/x") == 0);
	layer_close(l, true);
	wipe();
}

static void test_objects_hold_clusters_only_once_told(void)
{
	struct layer *l = open_layer("hidden");
	char buf[100], back[100];
	uint64_t id;

	CHECK_EQ(layer_obj_new(l, &id), 0);
	CHECK_EQ(id, 1);
	memset(buf, 'x', sizeof(buf));
	CHECK_EQ(layer_obj_write(l, id, buf, sizeof(buf), 3 * CLUSTER), 0);
	CHECK(!layer_obj_has(l, id, 3));
	CHECK_EQ(layer_obj_hold(l, id, 3, 2), 0);
	CHECK(layer_obj_has(l, id, 3) && layer_obj_has(l, id, 4));
	CHECK(!layer_obj_has(l, id, 2) && !layer_obj_has(l, id, 5));
	CHECK_EQ(layer_clusters(l), 2);
	CHECK_EQ(layer_obj_read(l, id, back, sizeof(back), 3 * CLUSTER), 0);
	CHECK(memcmp(buf, back, sizeof(buf)) == 0);
	CHECK_EQ(layer_obj_read(l, id, back, sizeof(back), 9 * CLUSTER), 0);
	CHECK(back[0] == 0 && back[99] == 0); /* past its end: zeros */
	layer_close(l, true);
	l = open_layer("hidden");
	CHECK(layer_obj_has(l, id, 4) && !layer_obj_has(l, id, 5));
	CHECK_EQ(layer_clusters(l), 2);
	CHECK_EQ(layer_obj_new(l, &id), 0);
	CHECK_EQ(id, 2); /* never an id in use */
	layer_close(l, true);
	wipe();
}

static void test_zeroing_makes_a_range_read_as_zeros(void)
{
	struct layer *l = open_layer("active");
	char buf[8192];
	uint64_t id;

	layer_obj_new(l, &id);
	memset(buf, 'y', sizeof(buf));
	layer_obj_write(l, id, buf, sizeof(buf), 0);
	CHECK_EQ(layer_obj_zero(l, id, 100, 5000), 0);
	layer_obj_read(l, id, buf, sizeof(buf), 0);
	CHECK(buf[99] == 'y' && buf[100] == 0 && buf[5099] == 0 &&
	      buf[5100] == 'y');
	layer_close(l, true);
	wipe();
}

static void test_a_new_epoch_starts_empty_and_gc_removes_the_old(void)
{
	struct layer *l = open_layer("active");
	struct layer_entry e = {.path = "f", .absent = true};
	struct layer_state st;
	char path[256];
	uint64_t id;

	layer_put(l, &e);
	layer_obj_new(l, &id);
	layer_obj_hold(l, id, 0, 1);
	CHECK_EQ(layer_switch(l, 1), 0);
	layer_get_state(l, &st);
	CHECK_EQ(st.epoch, 1);
	CHECK_EQ(layer_entries(l), 0);
	CHECK_EQ(layer_clusters(l), 0);
	CHECK(!layer_obj_has(l, id, 0));
	snprintf(path, sizeof(path), "%s/E0", dir);
	CHECK_EQ(access(path, F_OK), 0);
	layer_gc(l, 0);
	CHECK_EQ(access(path, F_OK), 0);
	layer_gc(l, 1);
	CHECK(access(path, F_OK) != 0);
	layer_close(l, true);
	l = open_layer("active");
	layer_get_state(l, &st);
	CHECK_EQ(st.epoch, 1);
	CHECK_EQ(layer_entries(l), 0);
	layer_close(l, true);
	wipe();
}

static void test_a_torn_last_journal_line_is_dropped(void)
{
	struct layer *l = open_layer("active");
	struct layer_entry e = {.path = "kept"};
	char path[256];
	int fd;

	layer_put(l, &e);
	layer_close(l, false);
	snprintf(path, sizeof(path), "%s/E0/journal", dir);
	fd = open(path, O_WRONLY | O_APPEND);
	CHECK_EQ(write(fd, "{\"put\":{\"p\":\"torn", 17), 17);
	close(fd);
	l = open_layer("active");
	CHECK(layer_find(l, "kept") != NULL);
	CHECK_EQ(layer_entries(l), 1);
	e.path = "after";
	CHECK_EQ(layer_put(l, &e), 0);
	layer_close(l, true);
	l = open_layer("active");
	CHECK(layer_find(l, "after") != NULL); /* appended after the cut */
	layer_close(l, true);
	wipe();
}

int main(void)
{
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(test_a_fresh_directory_becomes_an_empty_layer_of_epoch_0);
	RUN(test_another_role_or_cluster_is_refused);
	RUN(test_entries_are_journaled_and_come_back_after_reopening);
	RUN(test_a_move_renames_an_entry_and_all_below_it);
	RUN(test_moving_lowers_follows_objects_renamed_below);
	RUN(test_objects_hold_clusters_only_once_told);
	RUN(test_zeroing_makes_a_range_read_as_zeros);
	RUN(test_a_new_epoch_starts_empty_and_gc_removes_the_old);
	RUN(test_a_torn_last_journal_line_is_dropped);
	rmdir(dir);
	return unit_summary();
}
