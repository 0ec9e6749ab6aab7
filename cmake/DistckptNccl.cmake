# Compiles the NCCL gather path when the CUDA runtime and NCCL are found: NCCL from the torch
# wheel's nvidia-nccl package (or the system), the CUDA runtime from the CUDA toolkit or the
# wheel. Nothing here needs a GPU; tests that do skip at run time.
if(NOT DISTCKPT_WITH_NCCL)
  return()
endif()
set(_nv_root "")
if(TORCH_PACKAGE_DIR)
  get_filename_component(_nv_root "${TORCH_PACKAGE_DIR}/../nvidia" ABSOLUTE)
endif()
find_path(NCCL_INCLUDE_DIR nccl.h
  HINTS ${_nv_root}/nccl/include ENV NCCL_HOME PATH_SUFFIXES include)
find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
  HINTS ${_nv_root}/nccl/lib ENV NCCL_HOME PATH_SUFFIXES lib lib64)
find_package(CUDAToolkit QUIET)
find_path(CUDART_INCLUDE_DIR cuda_runtime.h
  HINTS ${CUDAToolkit_INCLUDE_DIRS} ${_nv_root}/cu13/include /usr/local/cuda/include)
find_library(CUDART_LIBRARY NAMES cudart libcudart.so.13 libcudart.so.12 NAMES_PER_DIR
  HINTS ${_nv_root}/cu13/lib ${_nv_root}/cuda_runtime/lib ${CUDAToolkit_LIBRARY_DIR})
# The CUDA runtime headers of the PyPI wheels can lack parts of the toolkit's (crt/, in some
# versions): the path is compiled only where they compile.
if(CUDART_INCLUDE_DIR)
  include(CheckIncludeFileCXX)
  set(CMAKE_REQUIRED_INCLUDES ${CUDART_INCLUDE_DIR})
  set(CMAKE_REQUIRED_QUIET ON)
  check_include_file_cxx(cuda_runtime.h DISTCKPT_CUDA_RUNTIME_COMPILES)
  unset(CMAKE_REQUIRED_INCLUDES)
  unset(CMAKE_REQUIRED_QUIET)
  if(NOT DISTCKPT_CUDA_RUNTIME_COMPILES)
    message(STATUS "CUDA runtime headers in ${CUDART_INCLUDE_DIR} do not compile")
  endif()
endif()
if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY AND CUDART_INCLUDE_DIR AND CUDART_LIBRARY AND
   DISTCKPT_CUDA_RUNTIME_COMPILES)
  message(STATUS "NCCL path: ${NCCL_LIBRARY}, CUDA runtime: ${CUDART_LIBRARY}")
  target_compile_definitions(distckpt_nccl PRIVATE DISTCKPT_HAVE_NCCL=1)
  target_include_directories(distckpt_nccl SYSTEM PRIVATE ${NCCL_INCLUDE_DIR} ${CUDART_INCLUDE_DIR})
  target_link_libraries(distckpt_nccl PRIVATE ${NCCL_LIBRARY} ${CUDART_LIBRARY})
  # LibTorch's CUDA kernels, so that at::empty on a CUDA device works in the same process.
  # c10_cuda: the current and pooled streams for the side-stream host snapshot.
  find_library(_torch_cuda torch_cuda PATHS ${TORCH_PACKAGE_DIR}/lib NO_DEFAULT_PATH)
  find_library(_c10_cuda c10_cuda PATHS ${TORCH_PACKAGE_DIR}/lib NO_DEFAULT_PATH)
  if(_torch_cuda AND _c10_cuda)
    target_link_libraries(distckpt_nccl PUBLIC -Wl,--no-as-needed ${_torch_cuda} -Wl,--as-needed
                                               ${_c10_cuda})
  endif()
  set(DISTCKPT_HAVE_NCCL ON CACHE INTERNAL "")
else()
  message(STATUS "NCCL path disabled: NCCL or a usable CUDA runtime was not found")
  set(DISTCKPT_HAVE_NCCL OFF CACHE INTERNAL "")
endif()
