# What `cmake --install` puts where (GNUInstallDirs: FHS places under
# CMAKE_INSTALL_PREFIX; with the prefix /usr, settings go to /etc and
# logs to /var), and the Debian package CPack makes of it:
#
#   cmake -S . -B build -DCMAKE_INSTALL_PREFIX=/usr
#   cmake --build build && (cd build && cpack -G DEB)
#
# Included from the top-level CMakeLists.txt, so that `cpack` finds its
# configuration in the build directory.
include(GNUInstallDirs)

# mount(8) runs quorumfs through mount.fuse3 and /bin/sh with PATH
# cleared: the shell's default path holds the sbin directories.
install(TARGETS quorumfs quorumctl RUNTIME DESTINATION ${CMAKE_INSTALL_SBINDIR})

# The manual pages, with the version filled in, compressed as Debian
# wants them (gzip -n: the same bytes on every build).
foreach(page quorumfs.8 quorumctl.8)
	file(READ ${CMAKE_SOURCE_DIR}/man/${page} text)
	string(REPLACE "@VERSION@" "${PROJECT_VERSION}" text "${text}")
	file(GENERATE OUTPUT ${CMAKE_BINARY_DIR}/man/man8/${page}
		CONTENT "${text}")
	add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/man/${page}.gz
		COMMAND gzip -9n -c ${CMAKE_BINARY_DIR}/man/man8/${page}
			> ${CMAKE_BINARY_DIR}/man/${page}.gz
		DEPENDS ${CMAKE_SOURCE_DIR}/man/${page}
			${CMAKE_BINARY_DIR}/man/man8/${page}
		VERBATIM)
	list(APPEND QFS_MAN_PAGES ${CMAKE_BINARY_DIR}/man/${page}.gz)
endforeach()
add_custom_target(man ALL DEPENDS ${QFS_MAN_PAGES})
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
	${CMAKE_SOURCE_DIR}/man/quorumfs.8 ${CMAKE_SOURCE_DIR}/man/quorumctl.8)
install(FILES ${QFS_MAN_PAGES} DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)

set(QFS_SYSTEMD_UNIT_DIR "${CMAKE_INSTALL_PREFIX}/lib/systemd/system"
	CACHE PATH "where quorumfs@.service is installed")
install(FILES packaging/quorumfs@.service
	DESTINATION ${QFS_SYSTEMD_UNIT_DIR})
install(FILES packaging/logrotate RENAME quorumfs
	DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/logrotate.d)
# The settings of quorumfs@ instances, and the event logs logrotate
# rotates: empty directories the administrator fills.
install(DIRECTORY DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/quorumfs)
install(DIRECTORY DESTINATION ${CMAKE_INSTALL_FULL_LOCALSTATEDIR}/log/quorumfs)
install(FILES README.md docs/DESIGN.md docs/PERFORMANCE.md
	docs/perf-baseline.png docs/perf-final.png docs/perf-io_uring.png
	DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES packaging/quorumfs.conf
	DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)

# ---- the Debian package (cpack -G DEB)
set(CPACK_PACKAGE_NAME quorumfs)
set(CPACK_PACKAGE_VENDOR quorumfs)
set(CPACK_PACKAGE_CONTACT "quorumfs maintainers <quorumfs@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
	"FUSE file system of replicated image files with voted reads")
set(CPACK_PACKAGE_DESCRIPTION
	"quorumfs presents a directory of image files (qcow2, raw) backed by the same\n\
files in several child directories, on any local or network file system.\n\
Reads are voted across the children, as QEMU's quorum block driver votes,\n\
and writes need a quorum of them; a child that misses writes is resynced,\n\
and a scrub compares and repairs every copy.\n\
.\n\
The package holds the daemon (mounted with mount(8), fstab or the\n\
quorumfs@.service unit), the operator's tool quorumctl (status, control\n\
commands, events, Prometheus metrics), manual pages and a logrotate file.")
set(CPACK_STRIP_FILES ON)
set(CPACK_PACKAGING_INSTALL_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# The libraries (libfuse3-3, libjson-c5, libssl3, liburing2, libc6) come
# from dpkg-shlibdeps, with the versions the build needs; fuse3 brings
# mount.fuse3 and fusermount3, which no library names.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "fuse3")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "logrotate")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "qemu-utils, libvirt-daemon-system")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
	"${CMAKE_SOURCE_DIR}/packaging/deb/conffiles;${CMAKE_SOURCE_DIR}/packaging/deb/postinst;${CMAKE_SOURCE_DIR}/packaging/deb/postrm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
# A package for / only makes sense built for the prefix /usr: refuse
# another at cpack time rather than ship /usr/local paths.
set(CPACK_PROJECT_CONFIG_FILE "${CMAKE_SOURCE_DIR}/packaging/cpack-check.cmake")
include(CPack)
