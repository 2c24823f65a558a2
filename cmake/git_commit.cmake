# git_commit.cmake — run at BUILD time (cmake -P) so that the commit in `megacpp --version` and in every
# receipt is the commit of the sources being compiled, not of the last configure (a build directory that
# outlives several commits used to report a stale id). "-dirty" marks uncommitted changes to tracked files.
# Usage: cmake -DSRC=<source dir> -DOUT=<header> -P git_commit.cmake
# MEGACPP_GIT_COMMIT in the environment wins: a copy of the tree (the device machine's) may carry a .git
# that is not the one the sources came from, or none.
execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${SRC}
                OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
if(DEFINED ENV{MEGACPP_GIT_COMMIT} AND NOT "$ENV{MEGACPP_GIT_COMMIT}" STREQUAL "")
  set(commit "$ENV{MEGACPP_GIT_COMMIT} (from MEGACPP_GIT_COMMIT)")
elseif(NOT rc EQUAL 0 OR NOT commit)
  set(commit "unknown")
else()
  execute_process(COMMAND git diff --quiet HEAD -- WORKING_DIRECTORY ${SRC} RESULT_VARIABLE dirty ERROR_QUIET)
  if(NOT dirty EQUAL 0)
    set(commit "${commit}-dirty")
  endif()
endif()
set(text "// Generated at build time by cmake/git_commit.cmake.\n#pragma once\n#define MEGACPP_GIT_COMMIT \"${commit}\"\n")
if(EXISTS ${OUT})
  file(READ ${OUT} old)
endif()
if(NOT "${old}" STREQUAL "${text}")
  file(WRITE ${OUT} "${text}")  # rewritten only when it changes: no needless recompilation
endif()
