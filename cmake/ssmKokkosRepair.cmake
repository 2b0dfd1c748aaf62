# Repair the Kokkos::kokkos target of Debian 12's Kokkos 3.4.01 (package libtrilinos-kokkos-dev).
#
# That package's KokkosConfig.cmake points the target's include directory at
# <prefix>/include, which does not exist: the headers are in <prefix>/include/trilinos, and its
# Kokkos_INCLUDE_DIRS variable says so. Where a directory of the target is missing and
# Kokkos_INCLUDE_DIRS names existing ones, use those. A correct Kokkos is left untouched.
if(TARGET Kokkos::kokkos AND Kokkos_INCLUDE_DIRS)
  get_target_property(_ssm_kokkos_includes Kokkos::kokkos INTERFACE_INCLUDE_DIRECTORIES)
  set(_ssm_kokkos_broken FALSE)
  foreach(_ssm_dir IN LISTS _ssm_kokkos_includes)
    if(NOT _ssm_dir MATCHES "^\\$<" AND NOT IS_DIRECTORY "${_ssm_dir}")
      set(_ssm_kokkos_broken TRUE)
    endif()
  endforeach()
  if(_ssm_kokkos_broken)
    set(_ssm_kokkos_fixed "")
    foreach(_ssm_dir IN LISTS Kokkos_INCLUDE_DIRS)
      get_filename_component(_ssm_dir "${_ssm_dir}" REALPATH)
      if(IS_DIRECTORY "${_ssm_dir}")
        list(APPEND _ssm_kokkos_fixed "${_ssm_dir}")
      endif()
    endforeach()
    if(_ssm_kokkos_fixed)
      set_target_properties(Kokkos::kokkos PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_ssm_kokkos_fixed}")
      message(STATUS "ssm: Kokkos::kokkos named a missing include directory; using ${_ssm_kokkos_fixed}")
    endif()
  endif()
  unset(_ssm_kokkos_includes)
  unset(_ssm_kokkos_broken)
  unset(_ssm_kokkos_fixed)
  unset(_ssm_dir)
endif()
