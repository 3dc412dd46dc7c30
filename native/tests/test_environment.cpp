// What ctest would otherwise pass in the environment, built into the test executables:
// gtest_discover_tests hands its tests one environment variable at most (it splits a list
// property at its semicolons). A variable already set wins.
#include <cstdlib>

namespace {

const bool configured = [] {
  setenv("CTRT_TEST_ENGINES", CTRT_TEST_ENGINES_DIR, 0);
  setenv("CTRT_ONNXRUNTIME_LIBRARY", CTRT_TEST_ONNXRUNTIME_LIBRARY, 0);
  return true;
}();

}  // namespace
