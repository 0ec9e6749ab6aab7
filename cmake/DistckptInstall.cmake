# `cmake --install build --prefix P`: headers, libdistckpt and libdistckpt_nccl, the `distckpt`
# CLI, and a CMake package, so that another project writes
#   find_package(distckpt REQUIRED)
#   target_link_libraries(app PRIVATE distckpt::distckpt)   # and distckpt::nccl for NCCL
# The package finds MPI itself and uses LibTorch from where this build found it.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# Installed binaries find libdistckpt beside them and HDF5, MPI and LibTorch where they were
# linked from (HDF5's parallel build lives outside the default library path on Debian).
set_target_properties(distckpt distckpt_nccl distckpt_cli PROPERTIES
  INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}" INSTALL_RPATH_USE_LINK_PATH TRUE)
set_target_properties(distckpt_torch PROPERTIES EXPORT_NAME torch)

install(DIRECTORY include/distckpt DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS distckpt distckpt_nccl distckpt_torch distckpt_cli EXPORT distckptTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
set(_package_dir ${CMAKE_INSTALL_LIBDIR}/cmake/distckpt)
install(EXPORT distckptTargets NAMESPACE distckpt:: DESTINATION ${_package_dir})

set(DISTCKPT_TORCH_CONFIG_DIR "")
if(DEFINED Torch_DIR)
  set(DISTCKPT_TORCH_CONFIG_DIR "${Torch_DIR}")
endif()
configure_package_config_file(cmake/distckptConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/distckptConfig.cmake INSTALL_DESTINATION ${_package_dir})
# 0.x releases: a minor version may change the API, so only the same minor version matches.
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/distckptConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/distckptConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/distckptConfigVersion.cmake
        DESTINATION ${_package_dir})
