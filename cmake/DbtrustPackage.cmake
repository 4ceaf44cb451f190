# Debian package: `cpack -G DEB` in a build tree configured with -DCMAKE_INSTALL_PREFIX=/usr
# writes dbtrust_<version>_amd64.deb with what `cmake --install` installs (cmake/DbtrustInstall.cmake):
#   /usr/bin/dbtrust, /usr/lib/systemd/system/dbtrust.service,
#   /etc/dbtrust/dbtrust.ini.example (a conffile), /usr/share/man/man8/dbtrust.8.gz,
#   /usr/share/doc/dbtrust/ (README, docs, monitoring, Kubernetes examples, Dockerfile).
# Depends are computed by dpkg-shlibdeps from the binary's libraries (packages dpkg-dev, file).
# Tested by ctest package.deb (tests/package/test_deb.sh): installed with dpkg -i into a fresh
# Debian 12 root.
#
# Only a /usr tree can be packaged: DbtrustInstall.cmake decides at configure time where the
# example config goes (/etc only for prefix /usr) and which paths the unit names, so a tree
# configured for /usr/local would make a package whose unit starts /usr/local/bin/dbtrust.
if(NOT CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  message(STATUS "cpack -G DEB needs -DCMAKE_INSTALL_PREFIX=/usr (this tree: ${CMAKE_INSTALL_PREFIX})")
  return()
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME dbtrust)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(DBTRUST_PACKAGE_MAINTAINER "dbtrust maintainers <maintainers@dbtrust.invalid>" CACHE STRING
    "Maintainer field of the .deb (name <email>)")
set(CPACK_PACKAGE_CONTACT "${DBTRUST_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "TLS-verifying proxy for PostgreSQL and MySQL/MariaDB clients")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "Applications connect in plaintext to a loopback listener; dbtrust speaks the startup\n\
phase of the database protocol, upgrades the upstream leg to TLS with verify-full (chain to\n\
a root of one CA bundle and host name check) and relays bytes both ways. A CA rotation is\n\
one bundle file, reloaded without a restart or a dropped connection.\n\
.\n\
The systemd unit is installed but not enabled: copy\n\
/etc/dbtrust/dbtrust.ini.example to /etc/dbtrust/dbtrust.ini, set the bundle, listeners\n\
and upstreams, then run: systemctl enable --now dbtrust")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)   # dbtrust_<version>_<arch>.deb
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)   # the libraries, appended to the Depends below
# The unit's ExecReload runs /bin/kill, which is procps' (as openssh-server depends on it).
set(CPACK_DEBIAN_PACKAGE_DEPENDS procps)
set(CPACK_STRIP_FILES ON)
# Debian's tools (dpkg-deb, lintian) expect root-owned files with sane modes in the archive.
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

# The example config is a conffile: an admin's edits survive upgrades. dbtrust.ini itself is
# never shipped, so it is never overwritten or removed.
file(WRITE "${CMAKE_BINARY_DIR}/deb/conffiles" "/etc/dbtrust/dbtrust.ini.example\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${CMAKE_BINARY_DIR}/deb/conffiles;${CMAKE_SOURCE_DIR}/cmake/deb/postinst;${CMAKE_SOURCE_DIR}/cmake/deb/prerm;${CMAKE_SOURCE_DIR}/cmake/deb/postrm")

include(CPack)
