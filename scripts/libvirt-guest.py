#!/usr/bin/env python3
"""The guest of scripts/libvirt-check.sh: the one test/test_vm.py boots
(test/vm_util.py), built into DIR for a libvirt domain to boot.

    scripts/libvirt-guest.py DIR

writes DIR/vmlinuz (a copy of the newest kernel in /boot that has its
modules, so that libvirt's relabelling of the kernel for its QEMU user
touches only the copy), DIR/initramfs.cpio (static busybox, the virtio
and ext4 modules, the patterns and vm_util's /init) and DIR/a.bin
(pattern A, which the host compares with what the guest wrote), then
prints shell assignments for the script to eval: where the guest writes
pattern A on /dev/vda, how long it is, how many copies of it go onto
/dev/vdb's file system, the kernel's version and the modules the guest
loads.

Booted with "vmtest.write=1" on the kernel command line, the guest
writes pattern A raw at A_OFF on /dev/vda (O_DIRECT), makes an ext2 file
system on /dev/vdb holding FILES copies of it, verifies both from the
devices twice (page cache dropped, file system mounted afresh), prints
"VMTEST: PASS" (or "VMTEST: FAIL reason") on ttyS0 and powers off.
"""

import os
import shlex
import shutil
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test"))


class GuestError(Exception):
    pass


def _stand_in_pytest():
    """vm_util reports what it cannot do through pytest.skip and
    pytest.fail; outside the test suite (where pytest may be missing)
    both become an exception this script prints."""
    try:
        import pytest  # noqa: F401
        return
    except ImportError:
        pass

    def stop(msg="", **_):
        raise GuestError(msg)

    sys.modules["pytest"] = types.SimpleNamespace(skip=stop, fail=stop)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: %s DIR\n" % argv[0])
        return 2
    out = argv[1]
    _stand_in_pytest()
    import vm_util

    missing = vm_util.missing_tools()
    if missing:
        raise GuestError(missing)
    kernel, version = vm_util.find_kernel()
    shutil.copyfile(kernel, os.path.join(out, "vmlinuz"))
    modules = vm_util.build_initramfs(os.path.join(out, "initramfs.cpio"),
                                      version)
    a, _ = vm_util.patterns()
    with open(os.path.join(out, "a.bin"), "wb") as f:
        f.write(a)
    for name, value in (("A_OFF", vm_util.A_OFF), ("LEN", vm_util.LEN),
                        ("FILES", vm_util.FILES),
                        ("KERNEL_VERSION", version),
                        ("MODULES", " ".join(modules))):
        print("%s=%s" % (name, shlex.quote(str(value))))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (GuestError, OSError) as e:
        sys.stderr.write("libvirt-guest: %s\n" % e)
        sys.exit(1)
