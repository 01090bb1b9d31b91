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
