# FindCUDNN.cmake — locate cuDNN 9 (no CMake config ships with the Debian/Ubuntu or toolkit packages).
# Searches the CUDA toolkit tree (CI machine: /usr/local/cuda-13.0) and the distro multiarch paths
# (GPU machine: /usr/include/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu).
# Provides: CUDNN_FOUND, CUDNN_VERSION, CUDNN_INCLUDE_DIR, CUDNN_LIBRARY, imported target CUDNN::cudnn.
set(_cudnn_hints ${CUDNN_ROOT} $ENV{CUDNN_ROOT} ${CUDAToolkit_LIBRARY_ROOT} ${CUDAToolkit_TARGET_DIR} /usr/local/cuda /usr)
find_path(CUDNN_INCLUDE_DIR cudnn_version.h
  HINTS ${_cudnn_hints}
  PATH_SUFFIXES include include/x86_64-linux-gnu targets/x86_64-linux/include)
find_library(CUDNN_LIBRARY cudnn
  HINTS ${_cudnn_hints}
  PATH_SUFFIXES lib64 lib lib/x86_64-linux-gnu targets/x86_64-linux/lib)
if(CUDNN_INCLUDE_DIR AND EXISTS "${CUDNN_INCLUDE_DIR}/cudnn_version.h")
  file(STRINGS "${CUDNN_INCLUDE_DIR}/cudnn_version.h" _cv REGEX "^#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) +[0-9]+")
  foreach(_l IN LISTS _cv)
    if(_l MATCHES "CUDNN_MAJOR +([0-9]+)")
      set(CUDNN_VERSION_MAJOR ${CMAKE_MATCH_1})
    elseif(_l MATCHES "CUDNN_MINOR +([0-9]+)")
      set(CUDNN_VERSION_MINOR ${CMAKE_MATCH_1})
    elseif(_l MATCHES "CUDNN_PATCHLEVEL +([0-9]+)")
      set(CUDNN_VERSION_PATCH ${CMAKE_MATCH_1})
    endif()
  endforeach()
  set(CUDNN_VERSION "${CUDNN_VERSION_MAJOR}.${CUDNN_VERSION_MINOR}.${CUDNN_VERSION_PATCH}")
endif()
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(CUDNN REQUIRED_VARS CUDNN_LIBRARY CUDNN_INCLUDE_DIR VERSION_VAR CUDNN_VERSION)
if(CUDNN_FOUND AND NOT TARGET CUDNN::cudnn)
  add_library(CUDNN::cudnn UNKNOWN IMPORTED)
  set_target_properties(CUDNN::cudnn PROPERTIES IMPORTED_LOCATION "${CUDNN_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${CUDNN_INCLUDE_DIR}")
endif()
mark_as_advanced(CUDNN_INCLUDE_DIR CUDNN_LIBRARY)
