"""A reference model of block replication (COLO) for a directory of files.

It models QEMU 7.2's replication driver, scaled from one image to a tree
of files with namespace changes, so that the same random scripts can be
run against QEMU (one image, through qemu_replication) and against a
quorumfs pair of mounts (many files), and each compared with the model.

Words used below:

  P   the primary's tree. Its changes are forwarded to the secondary's
      inbound side while the primary runs.
  B   the secondary's base: what the inbound side has written so far.
  H   the hidden layer: before an inbound change overwrites data the
      secondary VM may still see, the old bytes are copied into H
      (copy-before-write, a cluster at a time). A cluster H already holds
      is never copied again in the same epoch, so H keeps the bytes of
      the last checkpoint.
  C   H over B: the tree as it was at the last checkpoint.
  A   the active layer: the secondary VM's own changes.
  V   A over C: what the secondary VM sees.

A checkpoint empties A and H, so V = C = B (= P once the forwards have
landed). Failover commits A and H into B, which makes B = V: every
primary change since the last checkpoint is dropped (H restores the old
bytes) and the secondary VM's changes are kept.

Files are objects with ids; each tree maps paths to ids, so the layers
follow a file across renames (a hidden cluster of file f stays f's even
after the primary renames it). Data is kept per cluster (64 KiB, as
QEMU's qcow2 layers and backup job use), so the model also says which
clusters each layer holds.

The stage machine (NONE, RUNNING, FAILOVER, FAILOVER_FAILED, DONE) and
its refusal texts are QEMU's. Driver-level calls (start, checkpoint,
stop, get_error) raise ReplicationError with QEMU's text; command() is
the QMP layer (xen-set-replication and friends), which, like QEMU's
colo.c, drops every error of a stop that carries the failover flag.

flavour="qemu" (the default) reproduces QEMU where quorumfs documents a
deliberate difference; flavour="quorumfs" gives quorumfs's choice:

  step                         qemu                     quorumfs
  secondary stop, no failover  refused "Backup job was  layers dropped,
                               cancelled unexpectedly", view = base,
                               DONE, error latched,     DONE, no error
                               layers kept and still
                               read and written
  inbound change after         applied to the base      refused, EROFS
  failover
  primary change in NONE       not forwarded; quorum    forwarded (the
                               sees a failed child      replica is being
                               (QUORUM_REPORT_BAD)      filled)
  primary change in DONE       not forwarded, REPORT_BAD not forwarded,
                                                        nothing reported
"""

import errno

CLUSTER = 64 * 1024

NONE = "NONE"
RUNNING = "RUNNING"
FAILOVER = "FAILOVER"
FAILOVER_FAILED = "FAILOVER_FAILED"
DONE = "DONE"

PRIMARY = "primary"
SECONDARY = "secondary"
MODE_NUMBER = {PRIMARY: 0, SECONDARY: 1}

# QEMU's texts.
NOT_RUNNING = "Block replication is not running"
RUNNING_OR_DONE = "Block replication is running or done"
MODE_INVALID = "The parameter mode's value is invalid, needs %d, but got %d"
JOB_CANCELLED = "Backup job was cancelled unexpectedly"
IO_ERROR = "I/O error occurred"
FAILOVER_ONLY_FOR_STOP = \
    "Parameter 'failover' is only for stopping replication"
EIO_TEXT = "Input/output error"

# The commands a test can give either side, as the harness names them.
COMMANDS = ("start", "start-other", "start-failover", "checkpoint", "stop",
            "stop-failover", "get-error")


class ReplicationError(Exception):
    """A refused command or failed I/O: errno and QEMU's text."""

    def __init__(self, err, desc):
        super().__init__(desc)
        self.errno = err
        self.desc = desc


def _eio():
    return ReplicationError(errno.EIO, EIO_TEXT)


def _put(buf, off, data):
    """Write data into bytearray buf at off, growing it with zeros."""
    if len(buf) < off:
        buf.extend(bytes(off - len(buf)))
    buf[off:off + len(data)] = data


def _assemble(size, cluster, cluster_bytes):
    """A file of `size` bytes from cluster_bytes(k) for each cluster."""
    return b"".join(cluster_bytes(k) for k in range(-(-size // cluster)))


def _clusters(off, length, cluster):
    """The cluster indexes a byte range touches."""
    if length <= 0:
        return range(0)
    return range(off // cluster, (off + length - 1) // cluster + 1)


class Layer:
    """One of the two layers (A or H) for one epoch.

    ns maps a path to the object it names in this layer's tree, or None
    for a name this layer hides (a whiteout); paths absent from ns pass
    through to the tree below. data maps an object id to {cluster index:
    bytes}, size maps an object id to its size in this layer's tree."""

    def __init__(self):
        self.ns = {}
        self.data = {}
        self.size = {}

    def clear(self):
        self.ns.clear()
        self.data.clear()
        self.size.clear()

    def clusters(self, oid):
        return self.data.setdefault(oid, {})


class Primary:
    """The primary side: its tree (path -> bytearray) and its replication
    child's stage and latched error."""

    def __init__(self, files):
        self.files = {p: bytearray(d) for p, d in files.items()}
        self.stage = NONE
        self.error = 0
        self.alive = True
        self.report_bad = []  # (op, path) the quorum saw fail (qemu flavour)


class Secondary:
    """The secondary side: base objects, the two layers, the stage."""

    def __init__(self, files, cluster, flavour):
        self.cluster = cluster
        self.flavour = flavour
        self.objects = {}  # id -> bytearray: every base object, live or not
        self.next_id = 0
        self.base = {}  # path -> id
        for p, d in files.items():
            self.base[p] = self.new_object(d)
        self.hidden = Layer()
        self.active = Layer()
        self.stage = NONE
        self.error = 0
        self.layers = False  # view goes through A and H
        self.cbw = False  # the backup job runs: inbound changes CBW into H
        self.inbound_up = True  # the NBD export / inbound mount answers
        self.failed_over = False  # a stop with failover has begun
        self.checkpoint_ids = set()  # objects of C
        self.checkpoint_tree = {}  # C as content, to check H over B against

    def new_object(self, data=b""):
        oid = self.next_id
        self.next_id += 1
        self.objects[oid] = bytearray(data)
        return oid

    def new_epoch(self):
        """Empty both layers; C is B as it is now."""
        self.hidden.clear()
        self.active.clear()
        self.checkpoint_ids = set(self.base.values())
        self.checkpoint_tree = {p: bytes(self.objects[o])
                                for p, o in self.base.items()}

    # --- reading the trees -----------------------------------------------

    def c_size(self, oid):
        return self.hidden.size.get(oid, len(self.objects[oid]))

    def c_cluster(self, oid, k):
        """Cluster k of an object of C: the hidden layer's copy if it has
        one, else the base's bytes; cut or zero-extended to the
        checkpoint size."""
        c = self.cluster
        held = self.hidden.data.get(oid, {})
        raw = held[k] if k in held else self.objects[oid][k * c:(k + 1) * c]
        end = max(0, min(c, self.c_size(oid) - k * c))
        return bytes(raw[:end]).ljust(end, b"\0")

    def c_data(self, oid):
        return _assemble(self.c_size(oid), self.cluster,
                         lambda k: self.c_cluster(oid, k))

    def c_ns(self):
        names = dict(self.base)
        names.update(self.hidden.ns)
        return {p: o for p, o in names.items() if o is not None}

    def v_ns(self):
        names = dict(self.base)
        if self.layers:
            names = self.c_ns()
            names.update(self.active.ns)
        return {p: o for p, o in names.items() if o is not None}

    def v_size(self, oid):
        if not self.layers:
            return len(self.objects[oid])
        if oid in self.active.size:
            return self.active.size[oid]
        return self.c_size(oid) if oid in self.checkpoint_ids else 0

    def v_cluster(self, oid, k):
        """Cluster k of an object of V: the active layer's if it has one,
        else C's (nothing below a file the secondary VM created), cut or
        zero-extended to the view's size."""
        c = self.cluster
        end = max(0, min(c, self.v_size(oid) - k * c))
        if not self.layers:
            raw = self.objects[oid][k * c:(k + 1) * c]
        elif k in self.active.data.get(oid, {}):
            raw = self.active.data[oid][k]
        elif oid in self.checkpoint_ids:
            raw = self.c_cluster(oid, k)
        else:
            raw = b""
        return bytes(raw[:end]).ljust(end, b"\0")

    def v_data(self, oid):
        return _assemble(self.v_size(oid), self.cluster,
                         lambda k: self.v_cluster(oid, k))

    # --- inbound: the primary's changes ---------------------------------

    def _inbound_check(self):
        if not self.inbound_up:
            raise ReplicationError(errno.ENOTCONN, EIO_TEXT)
        if self.flavour == "quorumfs" and self.failed_over:
            raise ReplicationError(errno.EROFS, "Read-only file system")

    def _cbw_data(self, oid, off, length):
        """Copy-before-write of [off, off + length) of a base object: each
        cluster that C can see and H does not hold yet gets the base's
        current bytes. H is never overwritten within an epoch."""
        if not self.cbw or oid not in self.checkpoint_ids:
            return
        size = self.c_size(oid)
        held = self.hidden.clusters(oid)
        c = self.cluster
        for k in _clusters(off, length, c):
            if k * c < size and k not in held:
                held[k] = bytes(self.objects[oid][k * c:(k + 1) * c])

    def _cbw_size(self, oid):
        if self.cbw and oid in self.checkpoint_ids:
            self.hidden.size.setdefault(oid, len(self.objects[oid]))

    def _cbw_name(self, path):
        """Before the primary changes what a name points to, H remembers
        what it pointed to at the checkpoint (once per epoch)."""
        if self.cbw:
            self.hidden.ns.setdefault(path, self.base.get(path))

    def inbound_write(self, path, off, data):
        self._inbound_check()
        oid = self._base_id(path)
        obj = self.objects[oid]
        if off + len(data) > len(obj):
            self._cbw_size(oid)
        self._cbw_data(oid, off, len(data))
        _put(obj, off, data)

    def inbound_truncate(self, path, size):
        self._inbound_check()
        oid = self._base_id(path)
        obj = self.objects[oid]
        if size != len(obj):
            self._cbw_size(oid)
        if size < len(obj):
            self._cbw_data(oid, size, len(obj) - size)
            del obj[size:]
        else:
            obj.extend(bytes(size - len(obj)))

    def inbound_create(self, path):
        self._inbound_check()
        if path in self.base:
            raise ReplicationError(errno.EEXIST, "File exists")
        self._cbw_name(path)
        self.base[path] = self.new_object()

    def inbound_unlink(self, path):
        """The object stays in self.objects (the graveyard), so H can
        still show it."""
        self._inbound_check()
        self._base_id(path)
        self._cbw_name(path)
        del self.base[path]

    def inbound_rename(self, old, new):
        self._inbound_check()
        oid = self._base_id(old)
        if old == new:
            return
        self._cbw_name(old)
        self._cbw_name(new)
        del self.base[old]
        self.base[new] = oid

    def _base_id(self, path):
        if path not in self.base:
            raise ReplicationError(errno.ENOENT, "No such file or directory")
        return self.base[path]

    # --- the secondary VM's changes -------------------------------------

    def _view_id(self, path):
        names = self.v_ns()
        if path not in names:
            raise ReplicationError(errno.ENOENT, "No such file or directory")
        return names[path]

    def _to_active(self, oid, k):
        """Where a view write of cluster k of oid goes: the active layer
        while layered, except in FAILOVER_FAILED, where a cluster neither
        layer holds is written to the base (QEMU routes by
        bdrv_is_allocated_above there)."""
        if not self.layers:
            return False
        if self.stage != FAILOVER_FAILED:
            return True
        return (k in self.active.data.get(oid, {}) or
                k in self.hidden.data.get(oid, {}) or
                oid not in self.checkpoint_ids)

    def view_write(self, path, off, data):
        if self.stage == NONE:
            raise _eio()
        oid = self._view_id(path)
        if not self.layers:
            _put(self.objects[oid], off, data)
            return
        c = self.cluster
        size = self.v_size(oid)
        for k in _clusters(off, len(data), c):
            lo = max(off, k * c)
            hi = min(off + len(data), (k + 1) * c)
            piece = data[lo - off:hi - off]
            if self._to_active(oid, k):
                held = self.active.clusters(oid)
                if k not in held:
                    # qcow2 fills a new cluster from its backing chain.
                    held[k] = self.v_cluster(oid, k).ljust(c, b"\0")
                cl = bytearray(held[k])
                cl[lo - k * c:hi - k * c] = piece
                held[k] = bytes(cl)
            else:
                _put(self.objects[oid], lo, piece)
        if off + len(data) > size:
            self.active.size[oid] = off + len(data)

    def view_truncate(self, path, size):
        if self.stage == NONE:
            raise _eio()
        oid = self._view_id(path)
        if not self.layers:
            obj = self.objects[oid]
            del obj[size:]
            obj.extend(bytes(size - len(obj)))
            return
        old = self.v_size(oid)
        if size < old:
            # Zero what is cut, so that growing again shows zeros and not
            # the data below.
            self.view_write(path, size, bytes(old - size))
        self.active.size[oid] = size

    def view_create(self, path):
        if self.stage == NONE:
            raise _eio()
        if path in self.v_ns():
            raise ReplicationError(errno.EEXIST, "File exists")
        if not self.layers:
            self.base[path] = self.new_object()
            return
        oid = self.new_object()  # a file only A knows; never in base
        self.active.ns[path] = oid
        self.active.size[oid] = 0

    def view_unlink(self, path):
        if self.stage == NONE:
            raise _eio()
        self._view_id(path)
        if not self.layers:
            del self.base[path]
            return
        self.active.ns[path] = None

    def view_rename(self, old, new):
        if self.stage == NONE:
            raise _eio()
        oid = self._view_id(old)
        if old == new:
            return
        if not self.layers:
            del self.base[old]
            self.base[new] = oid
            return
        self.active.ns[old] = None
        self.active.ns[new] = oid

    # --- failover --------------------------------------------------------

    def commit(self):
        """Make B what the secondary VM sees: every file of V with V's
        bytes; names V does not have leave B. The layers go."""
        names = self.v_ns()
        data = {oid: self.v_data(oid) for oid in names.values()}
        self.base = names
        for oid, d in data.items():
            self.objects[oid] = bytearray(d)
        self.layers = False
        self.hidden.clear()
        self.active.clear()


class ReplicationModel:
    """A primary and a secondary of a tree of files, both starting with
    `files` (path -> bytes), in stage NONE."""

    def __init__(self, files, cluster=CLUSTER, flavour="qemu"):
        assert flavour in ("qemu", "quorumfs")
        self.flavour = flavour
        self.cluster = cluster
        self.p = Primary(files)
        self.s = Secondary(files, cluster, flavour)
        self.commit_fails = False  # make the next failover's commit fail

    def side(self, name):
        return self.p if name == PRIMARY else self.s

    # --- the primary VM's changes, forwarded while RUNNING --------------

    def _forward(self, op, path, *args):
        p = self.p
        forward = p.stage == RUNNING or (p.stage == NONE and
                                         self.flavour == "quorumfs")
        if not forward:
            if self.flavour == "qemu":
                p.report_bad.append((op, path))
            return
        try:
            getattr(self.s, "inbound_" + op)(path, *args)
        except ReplicationError as e:
            # The primary VM never sees the replica's failure in RUNNING:
            # the error is latched for get-error.
            if p.stage == RUNNING:
                p.error = -e.errno

    def _primary(self):
        if not self.p.alive:
            raise ReplicationError(errno.ENOTCONN, "the primary is gone")
        return self.p

    def primary_write(self, path, off, data):
        _put(self._primary().files[path], off, data)
        self._forward("write", path, off, bytes(data))

    def primary_truncate(self, path, size):
        f = self._primary().files[path]
        del f[size:]
        f.extend(bytes(size - len(f)))
        self._forward("truncate", path, size)

    def primary_create(self, path):
        files = self._primary().files
        if path in files:
            raise ReplicationError(errno.EEXIST, "File exists")
        files[path] = bytearray()
        self._forward("create", path)

    def primary_unlink(self, path):
        del self._primary().files[path]
        self._forward("unlink", path)

    def primary_rename(self, old, new):
        files = self._primary().files
        files[new] = files.pop(old)
        self._forward("rename", old, new)

    # --- the secondary VM's changes -------------------------------------

    def secondary_write(self, path, off, data):
        self.s.view_write(path, off, bytes(data))

    def secondary_truncate(self, path, size):
        self.s.view_truncate(path, size)

    def secondary_create(self, path):
        self.s.view_create(path)

    def secondary_unlink(self, path):
        self.s.view_unlink(path)

    def secondary_rename(self, old, new):
        self.s.view_rename(old, new)

    # --- the driver's commands (raise ReplicationError) -----------------

    def start(self, side, mode=None):
        """replication_start: DONE and FAILOVER ignore it (a promoted
        secondary); any other stage but NONE refuses; then the mode must
        be the node's. A secondary starts with empty layers."""
        mode = mode or side
        st = self.side(side)
        if st.stage in (DONE, FAILOVER):
            return
        if st.stage != NONE:
            raise ReplicationError(errno.EBUSY, RUNNING_OR_DONE)
        if mode != side:
            raise ReplicationError(errno.EINVAL, MODE_INVALID % (
                MODE_NUMBER[side], MODE_NUMBER[mode]))
        st.stage = RUNNING
        st.error = 0
        if side == SECONDARY:
            st.layers = True
            st.cbw = True
            st.new_epoch()

    def checkpoint(self, side):
        """replication_do_checkpoint: nothing to do after failover or on
        a primary; a secondary without its backup job refuses; otherwise
        both layers are emptied and the view becomes the base."""
        st = self.side(side)
        if st.stage in (DONE, FAILOVER) or side == PRIMARY:
            return
        if not st.cbw:
            raise ReplicationError(errno.EINVAL, JOB_CANCELLED)
        st.new_epoch()

    def get_error(self, side):
        st = self.side(side)
        if st.stage == NONE:
            raise ReplicationError(errno.EINVAL, NOT_RUNNING)
        if st.error:
            raise ReplicationError(errno.EIO, IO_ERROR)

    def stop(self, side, failover=False):
        """replication_stop: ignored after failover; refused unless
        RUNNING. A primary just ends (DONE). A secondary with failover
        commits A and H into B (DONE, or FAILOVER_FAILED if the commit
        fails). Without failover, see the flavour table at the top."""
        st = self.side(side)
        if st.stage in (DONE, FAILOVER):
            return
        if st.stage != RUNNING:
            raise ReplicationError(errno.EINVAL, NOT_RUNNING)
        if side == PRIMARY:
            st.stage = DONE
            st.error = 0
            return
        st.cbw = False
        if failover:
            st.stage = FAILOVER
            st.failed_over = True
            if self.commit_fails:
                st.stage = FAILOVER_FAILED
                st.error = -errno.EIO
                return
            st.commit()
            st.stage = DONE
            st.error = 0
            return
        st.stage = DONE
        if self.flavour == "qemu":
            # Cancelling the backup job while RUNNING looks like an
            # unexpected end of it: the error is latched and the checkpoint
            # that would empty the layers refuses. The layers stay in use.
            st.error = -errno.EIO
            raise ReplicationError(errno.EIO, JOB_CANCELLED)
        st.error = 0
        st.layers = False
        st.hidden.clear()
        st.active.clear()

    def kill_primary(self):
        self.p.alive = False

    def failover(self):
        """What the harness's failover() does: the primary dies, the
        secondary gets a QMP stop with failover. Returns that command's
        ("ok", None) or ("error", desc)."""
        self.kill_primary()
        return self.command(SECONDARY, "stop-failover")

    def inbound_down(self):
        """The secondary's inbound side stops answering (its NBD server
        stopped): every later forward fails."""
        self.s.inbound_up = False

    # --- the QMP layer --------------------------------------------------

    def xen_set_replication(self, side, enable, primary, failover=None):
        """QMP xen-set-replication on one side. failover given with
        enable is refused before the driver; a stop with failover=True
        drops the driver's error (colo.c passes no error pointer)."""
        if failover is not None and enable:
            raise ReplicationError(errno.EINVAL, FAILOVER_ONLY_FOR_STOP)
        if enable:
            return self.start(side, PRIMARY if primary else SECONDARY)
        try:
            return self.stop(side, bool(failover))
        except ReplicationError:
            if not failover:
                raise

    def command(self, side, name):
        """One of COMMANDS as QMP gives it on side: ("ok", None) or
        ("error", desc), as QemuReplication.command() returns it."""
        prim = side == PRIMARY
        calls = {
            "start": lambda: self.xen_set_replication(side, True, prim),
            "start-other": lambda: self.xen_set_replication(side, True,
                                                            not prim),
            "start-failover": lambda: self.xen_set_replication(
                side, True, prim, True),
            "checkpoint": lambda: self.checkpoint(side),
            "stop": lambda: self.xen_set_replication(side, False, prim),
            "stop-failover": lambda: self.xen_set_replication(
                side, False, prim, True),
            "get-error": lambda: self.get_error(side),
        }
        try:
            calls[name]()
        except ReplicationError as e:
            return ("error", e.desc)
        return ("ok", None)

    # --- snapshots ------------------------------------------------------

    def primary_tree(self):
        return {p: bytes(d) for p, d in self.p.files.items()}

    def base_tree(self):
        return {p: bytes(self.s.objects[o]) for p, o in self.s.base.items()}

    def checkpoint_tree(self):
        """C = H over B (only meaningful while layered)."""
        return {p: self.s.c_data(o) for p, o in self.s.c_ns().items()}

    def view_tree(self):
        """V: the secondary VM's tree. In NONE its data cannot be read
        (raises ReplicationError EIO)."""
        if self.s.stage == NONE:
            raise _eio()
        return {p: self.s.v_data(o) for p, o in self.s.v_ns().items()}

    def primary_bytes(self, path):
        return bytes(self.p.files[path])

    def base_bytes(self, path):
        return bytes(self.s.objects[self.s.base[path]])

    def view_bytes(self, path):
        """V's bytes of one file, or the read error's text (a str) where
        QEMU's view fails (NONE)."""
        if self.s.stage == NONE:
            return EIO_TEXT
        return self.s.v_data(self.s.v_ns()[path])

    def layer_clusters(self, which, path):
        """The cluster indexes the active or hidden layer holds for the
        file at path in V (active) or C (hidden), sorted."""
        s = self.s
        if which == "active":
            layer, names = s.active, s.v_ns()
        else:
            layer, names = s.hidden, s.c_ns()
        if not s.layers or path not in names:
            return []
        return sorted(layer.data.get(names[path], {}))

    def check(self):
        """The invariant the hidden layer exists for: while the backup job
        runs, H over B is still the tree of the last checkpoint."""
        if self.s.cbw:
            got = self.checkpoint_tree()
            want = self.s.checkpoint_tree
            assert got == want, "H over B drifted from the checkpoint: " \
                "%s" % sorted(p for p in set(got) | set(want)
                              if got.get(p) != want.get(p))
