/* A process whose first open finds no ONNX Runtime (CTRT_ONNXRUNTIME_LIBRARY names a missing
 * file) gets CTRT_BACKEND_UNAVAILABLE naming what it tried; once the variable names the real
 * library, the next open in the same process loads it. Usage: ctrt_ort_retry ENGINE_DIR LIBRARY
 * (prints "ort_retry: ok"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctrt/ctrt.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s ENGINE_DIR LIBRARY\n", argv[0]);
    return 2;
  }
  ctrt_engine_options options = ctrt_engine_options_default();
  options.threads = 1;
  ctrt_engine* engine = NULL;
  setenv("CTRT_ONNXRUNTIME_LIBRARY", "/nonexistent/libonnxruntime.so.1", 1);
  ctrt_status status = ctrt_engine_open(argv[1], &options, &engine);
  if (status != CTRT_BACKEND_UNAVAILABLE || !strstr(ctrt_last_error(), "/nonexistent/libonnxruntime.so.1")) {
    fprintf(stderr, "expected CTRT_BACKEND_UNAVAILABLE, got %d: %s\n", (int)status, ctrt_last_error());
    return 1;
  }
  if (strcmp(ctrt_onnxruntime_library(), "") != 0) return 1;
  setenv("CTRT_ONNXRUNTIME_LIBRARY", argv[2], 1);
  status = ctrt_engine_open(argv[1], &options, &engine);
  if (status != CTRT_OK) {
    fprintf(stderr, "the second open failed (%d): %s\n", (int)status, ctrt_last_error());
    return 1;
  }
  if (strcmp(ctrt_onnxruntime_library(), argv[2]) != 0) return 1;
  ctrt_engine_close(engine);
  printf("ort_retry: ok\n");
  return 0;
}
