# Read by cpack (CPACK_PROJECT_CONFIG_FILE) for each generator.
if(CPACK_GENERATOR STREQUAL "DEB" AND
		NOT CPACK_PACKAGING_INSTALL_PREFIX STREQUAL "/usr")
	message(FATAL_ERROR "a Debian package installs under /usr: configure "
		"with -DCMAKE_INSTALL_PREFIX=/usr (this build has "
		"${CPACK_PACKAGING_INSTALL_PREFIX})")
endif()
