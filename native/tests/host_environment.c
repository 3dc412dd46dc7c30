/* A host process that uses the same ONNX Runtime library and created its environment before
 * libctrt, without global thread pools (OrtApi::CreateEnv): ONNX Runtime has one environment
 * per library and hands libctrt the host's, in which sessions without threads of their own are
 * refused; libctrt then gives each graph an intra-op pool of its own (3 x (threads - 1) pool
 * threads per engine), and the engine computes as usual. Usage: ctrt_host_environment
 * ENGINE_DIR LIBRARY (prints "host_environment: ok"; exits 77, skipped, on one core). */
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

#include <onnxruntime_c_api.h>

#include "ctrt/ctrt.h"
#include "process_threads.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s ENGINE_DIR LIBRARY\n", argv[0]);
    return 2;
  }
  const int32_t threads = 2;
  if (too_few_cores("host_environment", threads)) return 77;
  void* library = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
  if (!library) return fprintf(stderr, "%s\n", dlerror()), 1;
  const OrtApiBase* (*get_base)(void) = (const OrtApiBase* (*)(void))dlsym(library, "OrtGetApiBase");
  const OrtApi* api = get_base ? get_base()->GetApi(ORT_API_VERSION) : NULL;
  OrtEnv* host_env = NULL;
  if (!api || api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "host", &host_env) != NULL) return 1;
  const int before = thread_count();
  ctrt_engine_options options = ctrt_engine_options_default();
  options.threads = threads;
  ctrt_engine* engine = NULL;
  ctrt_status status = ctrt_engine_open(argv[1], &options, &engine);
  if (status != CTRT_OK) return fprintf(stderr, "ctrt_engine_open: %d %s\n", (int)status, ctrt_last_error()), 1;
  const int pool_threads = thread_count() - before;
  ctrt_session* session = NULL;
  int64_t stream = -1;
  const int32_t prompt[3] = {104, 105, 33};
  int32_t token = -1;
  size_t generated = 0;
  const ctrt_sampling greedy = {sizeof(ctrt_sampling), 1, 1.0, 0, 1.0, 0};
  if (ctrt_session_open(engine, NULL, &session) != CTRT_OK || ctrt_add_stream(session, &stream) != CTRT_OK ||
      ctrt_generate(session, stream, prompt, 3, 1, &greedy, NULL, 0, &token, &generated) != CTRT_OK ||
      generated != 1) {
    return fprintf(stderr, "the engine does not run: %s\n", ctrt_last_error()), 1;
  }
  printf("an engine with threads %d in the host's environment started %d threads\n", (int)threads, pool_threads);
  if (pool_threads != 3 * (threads - 1)) return fprintf(stderr, "expected a pool per graph\n"), 1;
  ctrt_session_close(session);
  ctrt_engine_close(engine);
  api->ReleaseEnv(host_env);
  printf("host_environment: ok\n");
  return 0;
}
