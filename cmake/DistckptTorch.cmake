# Imports LibTorch as the target distckpt_torch.
# With Torch_DIR or a CMAKE_PREFIX_PATH holding a standalone LibTorch, find_package(Torch) is
# used. Otherwise the headers and libraries come straight from the Python torch wheel, which
# avoids TorchConfig's CUDA toolkit probing (the wheel's CUDA need not match the local one).
add_library(distckpt_torch INTERFACE)
if(DEFINED Torch_DIR)
  find_package(Torch REQUIRED CONFIG)
  target_link_libraries(distckpt_torch INTERFACE ${TORCH_LIBRARIES})
  target_include_directories(distckpt_torch INTERFACE ${TORCH_INCLUDE_DIRS})
  return()
endif()
find_package(Python3 REQUIRED COMPONENTS Interpreter)
execute_process(
  COMMAND ${Python3_EXECUTABLE} -c
    "import os, torch; print(os.path.dirname(torch.__file__)); print(int(torch._C._GLIBCXX_USE_CXX11_ABI)); print(torch.__version__)"
  OUTPUT_VARIABLE _torch_info OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _torch_rc)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "Python torch not found: run launch/setup.sh, or set Torch_DIR to a LibTorch")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(GET _torch_info 0 TORCH_PACKAGE_DIR)
list(GET _torch_info 1 _torch_abi)
list(GET _torch_info 2 DISTCKPT_TORCH_VERSION)
message(STATUS "LibTorch ${DISTCKPT_TORCH_VERSION} from ${TORCH_PACKAGE_DIR}")
set(TORCH_PACKAGE_DIR ${TORCH_PACKAGE_DIR} CACHE INTERNAL "")
target_include_directories(distckpt_torch SYSTEM INTERFACE
  ${TORCH_PACKAGE_DIR}/include ${TORCH_PACKAGE_DIR}/include/torch/csrc/api/include)
target_compile_definitions(distckpt_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${_torch_abi})
# Not libtorch.so: in the CUDA wheel it pulls in libtorch_cuda and ~400 MiB of resident CUDA
# libraries at load time. Everything distckpt uses lives in torch_cpu and c10.
foreach(_lib torch_cpu c10)
  find_library(_torch_lib_${_lib} ${_lib} PATHS ${TORCH_PACKAGE_DIR}/lib NO_DEFAULT_PATH REQUIRED)
  target_link_libraries(distckpt_torch INTERFACE ${_torch_lib_${_lib}})
endforeach()
target_link_options(distckpt_torch INTERFACE "-Wl,-rpath,${TORCH_PACKAGE_DIR}/lib")
