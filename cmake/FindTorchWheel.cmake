# Imports libtorch from the pinned pip `torch` wheel as the target `torch_wheel`.
#
# We do not use the wheel's TorchConfig.cmake: the wheel is built with CUDA, and its
# Caffe2Config probes the local CUDA toolkit, which trips over toolkits that differ
# from the one the wheel was built with (this machine has nvcc 13.0 and no GPU).
# Linking libtorch_cpu + libc10 directly gives a CPU build everywhere; with
# DIFFSYNTH_CUDA=ON the CUDA halves are linked too (for the lent GPU machine).

if(NOT DIFFSYNTH_PYTHON)
  set(DIFFSYNTH_PYTHON python3)
endif()

execute_process(
  COMMAND ${DIFFSYNTH_PYTHON} -c "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__); print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
  OUTPUT_VARIABLE _torch_out
  RESULT_VARIABLE _torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "Could not import torch with ${DIFFSYNTH_PYTHON}. Run scripts/setup.sh first.")
endif()
string(REPLACE "\n" ";" _torch_out "${_torch_out}")
list(GET _torch_out 0 TORCH_ROOT)
list(GET _torch_out 1 TORCH_VERSION)
list(GET _torch_out 2 TORCH_CXX11_ABI)
message(STATUS "libtorch from the torch ${TORCH_VERSION} wheel at ${TORCH_ROOT}")

set(_torch_libs ${TORCH_ROOT}/lib/libtorch_cpu.so ${TORCH_ROOT}/lib/libc10.so)
foreach(_lib ${_torch_libs})
  if(NOT EXISTS ${_lib})
    message(FATAL_ERROR "missing ${_lib}")
  endif()
endforeach()

# c10 alone (dtype enum, small and quick to load): what the torch-free file layer links.
add_library(c10_wheel INTERFACE)
target_include_directories(c10_wheel SYSTEM INTERFACE ${TORCH_ROOT}/include)
target_compile_definitions(c10_wheel INTERFACE _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI})
target_link_libraries(c10_wheel INTERFACE ${TORCH_ROOT}/lib/libc10.so)

add_library(torch_wheel INTERFACE)
# -isystem: keep libtorch's own warnings out of our builds.
target_include_directories(torch_wheel SYSTEM INTERFACE
  ${TORCH_ROOT}/include
  ${TORCH_ROOT}/include/torch/csrc/api/include)
target_compile_definitions(torch_wheel INTERFACE _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI})
target_link_libraries(torch_wheel INTERFACE ${_torch_libs})
if(DIFFSYNTH_CUDA)
  # Force-link the CUDA halves so their static initialisers register the CUDA backend.
  target_link_libraries(torch_wheel INTERFACE
    -Wl,--no-as-needed ${TORCH_ROOT}/lib/libtorch_cuda.so ${TORCH_ROOT}/lib/libc10_cuda.so -Wl,--as-needed)
  target_compile_definitions(torch_wheel INTERFACE DIFFSYNTH_WITH_CUDA=1)
endif()
set(CMAKE_BUILD_RPATH ${CMAKE_BUILD_RPATH} ${TORCH_ROOT}/lib)
set(CMAKE_INSTALL_RPATH ${CMAKE_INSTALL_RPATH} ${TORCH_ROOT}/lib)
