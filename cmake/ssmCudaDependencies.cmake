# With a Kokkos built with its CUDA backend, ssm's CUDA kernels need cuBLASLt and the CUDA runtime
# from the CUDA toolkit. Sets SSM_CUDA to ON or OFF. Used by the build and by the installed package.
set(SSM_CUDA OFF)
if(Kokkos_ENABLE_CUDA OR Kokkos_DEVICES MATCHES "CUDA")
  set(SSM_CUDA ON)
  find_package(CUDAToolkit 12 REQUIRED)
endif()
