# Deployment artefacts installed next to the binary (included from the top-level CMakeLists.txt
# after GNUInstallDirs and the binary's install rule).
#   <prefix>/lib/systemd/system/dbtrust.service
#   <sysconf>/dbtrust/dbtrust.ini.example   (never dbtrust.ini: a real config is not overwritten)
#   <prefix>/share/man/man8/dbtrust.8.gz    docs/dbtrust.8, compressed as Debian ships man pages
#   <prefix>/share/doc/dbtrust/             README.md, docs/*.md, monitoring/ (alerts, dashboard),
#                                           kubernetes/*.yaml, Dockerfile

# Unit directory: lib/systemd/system under the prefix, NOT ${CMAKE_INSTALL_LIBDIR}, which is
# the multiarch lib/x86_64-linux-gnu on Debian where systemd never looks. With prefix /usr this
# is /usr/lib/systemd/system: systemd's search path on every distribution (on Debian 12 /lib is
# a symlink to /usr/lib). Packagers may override it, e.g. with pkg-config's
# systemdsystemunitdir.
set(DBTRUST_SYSTEMD_UNITDIR "lib/systemd/system" CACHE STRING
    "Where dbtrust.service is installed (relative = under the install prefix)")

# GNUInstallDirs maps sysconfdir to /etc for prefix /usr only in CMAKE_INSTALL_FULL_SYSCONFDIR;
# the relative CMAKE_INSTALL_SYSCONFDIR ("etc") would put the example in /usr/etc. Follow the
# same rule here, and stay relative otherwise so `cmake --install --prefix DIR` relocates it.
if(CMAKE_INSTALL_PREFIX STREQUAL "/usr" AND NOT IS_ABSOLUTE "${CMAKE_INSTALL_SYSCONFDIR}")
  set(dbtrust_sysconfdir "${CMAKE_INSTALL_FULL_SYSCONFDIR}")
else()
  set(dbtrust_sysconfdir "${CMAKE_INSTALL_SYSCONFDIR}")
endif()

# The unit in docker/ names /usr/bin/dbtrust and /etc/dbtrust so it can be verified and copied
# as it is; for another prefix (e.g. /usr/local) install a copy naming the installed paths.
if(IS_ABSOLUTE "${dbtrust_sysconfdir}")
  set(dbtrust_full_sysconfdir "${dbtrust_sysconfdir}")
else()
  set(dbtrust_full_sysconfdir "${CMAKE_INSTALL_PREFIX}/${dbtrust_sysconfdir}")
endif()
set(dbtrust_unit "${CMAKE_SOURCE_DIR}/docker/dbtrust.service")
if(NOT CMAKE_INSTALL_FULL_BINDIR STREQUAL "/usr/bin" OR
   NOT dbtrust_full_sysconfdir STREQUAL "/etc")
  file(READ "${dbtrust_unit}" dbtrust_unit_text)
  string(REPLACE "/usr/bin/dbtrust" "${CMAKE_INSTALL_FULL_BINDIR}/dbtrust" dbtrust_unit_text
         "${dbtrust_unit_text}")
  string(REPLACE "/etc/dbtrust" "${dbtrust_full_sysconfdir}/dbtrust" dbtrust_unit_text
         "${dbtrust_unit_text}")
  set(dbtrust_unit "${CMAKE_BINARY_DIR}/dbtrust.service")
  file(WRITE "${dbtrust_unit}" "${dbtrust_unit_text}")
endif()
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
             "${CMAKE_SOURCE_DIR}/docker/dbtrust.service")

install(FILES "${dbtrust_unit}" DESTINATION "${DBTRUST_SYSTEMD_UNITDIR}")
install(FILES "${CMAKE_SOURCE_DIR}/docker/dbtrust.example.ini"
        DESTINATION "${dbtrust_sysconfdir}/dbtrust" RENAME dbtrust.ini.example)
install(FILES "${CMAKE_SOURCE_DIR}/README.md" "${CMAKE_SOURCE_DIR}/docker/Dockerfile"
        DESTINATION "${CMAKE_INSTALL_DOCDIR}")
install(DIRECTORY "${CMAKE_SOURCE_DIR}/docker/kubernetes/"
        DESTINATION "${CMAKE_INSTALL_DOCDIR}/kubernetes" FILES_MATCHING PATTERN "*.yaml")
install(FILES ${CMAKE_SOURCE_DIR}/docs/architecture.md ${CMAKE_SOURCE_DIR}/docs/runbook.md
              ${CMAKE_SOURCE_DIR}/docs/central-trust-point.md
        DESTINATION "${CMAKE_INSTALL_DOCDIR}")
install(FILES "${CMAKE_SOURCE_DIR}/docker/monitoring/dbtrust-alerts.yaml"
              "${CMAKE_SOURCE_DIR}/docker/monitoring/dbtrust-dashboard.json"
              "${CMAKE_SOURCE_DIR}/docker/monitoring/prometheus.yml"
        DESTINATION "${CMAKE_INSTALL_DOCDIR}/monitoring")

# The man page, gzipped without a name or time stamp (-n) so the package is reproducible.
set(dbtrust_man "${CMAKE_BINARY_DIR}/dbtrust.8.gz")
add_custom_command(OUTPUT "${dbtrust_man}"
                   COMMAND sh -c "gzip -9n -c \"$0\" > \"$1\"" "${CMAKE_SOURCE_DIR}/docs/dbtrust.8"
                           "${dbtrust_man}"
                   DEPENDS "${CMAKE_SOURCE_DIR}/docs/dbtrust.8" VERBATIM)
add_custom_target(dbtrust_man ALL DEPENDS "${dbtrust_man}")
install(FILES "${dbtrust_man}" DESTINATION "${CMAKE_INSTALL_MANDIR}/man8")
