# Small helpers in the spirit of abseil's AbseilHelpers.cmake: one call per library / test.
include(CMakeParseArguments)

# axeq_cc_library(NAME n SRCS ... DEPS ...)
function(axeq_cc_library)
  cmake_parse_arguments(A "" "NAME" "SRCS;DEPS" ${ARGN})
  add_library(${A_NAME} STATIC ${A_SRCS})
  target_include_directories(${A_NAME} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_link_libraries(${A_NAME} PUBLIC ${A_DEPS})
endfunction()

# axeq_cc_test(NAME n SRCS ... DEPS ... [LABELS ...])
# Tests labelled "slow" are excluded from the default `ctest -LE slow` run in the README.
function(axeq_cc_test)
  cmake_parse_arguments(A "" "NAME" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${A_NAME} ${A_SRCS})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  if(NOT A_LABELS)
    set(A_LABELS fast)
  endif()
  gtest_discover_tests(${A_NAME} DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${A_LABELS}" ENVIRONMENT "AXEQ_SHARED_DATA=${AXEQ_SHARED_DATA}")
endfunction()

# The allocator of the processes that move layers (docs/benchmarks.md, "Fresh pages"): glibc maps
# every buffer above 32 MiB afresh and unmaps it on free, so each upload faults in every page of its
# layer buffers again (~200 MB/s on this VM); tcmalloc keeps freed spans and reuses them. Not under
# sanitizers (they bring their own allocator). axeq_link_allocator(target) links it when found.
function(axeq_find_allocator)
  if(AXEQ_TCMALLOC AND NOT CMAKE_CXX_FLAGS MATCHES "-fsanitize")
    find_library(AXEQ_TCMALLOC_LIBRARY NAMES tcmalloc_minimal libtcmalloc_minimal.so.4)
    if(AXEQ_TCMALLOC_LIBRARY)
      message(STATUS "axeq: server and CLI use tcmalloc (${AXEQ_TCMALLOC_LIBRARY})")
    else()
      message(WARNING "axeq: libtcmalloc-minimal4 not found; server and CLI use glibc malloc (slower uploads)")
    endif()
  endif()
endfunction()

function(axeq_link_allocator target)
  if(AXEQ_TCMALLOC_LIBRARY)
    target_link_options(${target} PRIVATE "LINKER:--no-as-needed")  # nothing calls it by name
    target_link_libraries(${target} PRIVATE ${AXEQ_TCMALLOC_LIBRARY})
    target_compile_definitions(${target} PRIVATE AXEQ_TCMALLOC=1)
  endif()
endfunction()
