// The sanitizers' settings for the sanitized test executables (read by the runtimes at start).
// ONNX Runtime is not instrumented: the suppression files name it.
extern "C" {
const char* __asan_default_options() { return "detect_leaks=1:abort_on_error=0:halt_on_error=1"; }
const char* __lsan_default_options() { return "suppressions=" CTRT_LSAN_SUPPRESSIONS; }
const char* __ubsan_default_options() { return "halt_on_error=1:print_stacktrace=1"; }
const char* __tsan_default_options() { return "halt_on_error=1:exitcode=66:suppressions=" CTRT_TSAN_SUPPRESSIONS; }
}
