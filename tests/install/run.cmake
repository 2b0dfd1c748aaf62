# Install ssm into a scratch prefix and build a consumer project against it with find_package(ssm).
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT code EQUAL 0)
    message(FATAL_ERROR "command failed (${code}): ${ARGN}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${SSM_SCRATCH}")
set(prefix "${SSM_SCRATCH}/prefix")
run("${CMAKE_COMMAND}" --install "${SSM_BUILD_DIR}" --prefix "${prefix}")
if(NOT EXISTS "${prefix}/share/cmake/ssm/ssmConfigVersion.cmake")
  message(FATAL_ERROR "the package config is not installed under share/ (architecture-independent)")
endif()
run("${CMAKE_COMMAND}" -S "${SSM_CONSUMER_SOURCE}" -B "${SSM_SCRATCH}/build" -G "${SSM_GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${SSM_CXX_COMPILER}" "-DCMAKE_PREFIX_PATH=${prefix};${SSM_PREFIX_PATH}"
  "-DKokkos_DIR=${SSM_KOKKOS_DIR}")
run("${CMAKE_COMMAND}" --build "${SSM_SCRATCH}/build")
run("${SSM_SCRATCH}/build/consumer")
if(NOT last_output MATCHES "consumer: ok")
  message(FATAL_ERROR "the consumer printed: ${last_output}")
endif()
message(STATUS "${last_output}")
