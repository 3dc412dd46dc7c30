/* A host process that uses the same ONNX Runtime library and created its environment before
 * libctrt: ONNX Runtime has one environment per library and hands libctrt the host's.
 * - "per-session": the host's environment has no global thread pools (OrtApi::CreateEnv), in
 *   which sessions without threads of their own are refused; libctrt gives each graph an
 *   intra-op pool of its own (3 x (threads - 1) pool threads for an engine with threads 2).
 * - "global": the host made global pools (2 intra-op threads); an engine with threads 1 starts
 *   no thread and runs on the host's pool.
 * Either way the engine generates. Usage: ctrt_host_environment ENGINE_DIR LIBRARY
 * per-session|global (prints "host_environment: ok"; exits 77, skipped, on one core). */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <onnxruntime_c_api.h>

#include "ctrt/ctrt.h"
#include "process_threads.h"

int main(int argc, char** argv) {
  const int global = argc == 4 && strcmp(argv[3], "global") == 0;
  if (argc != 4 || (!global && strcmp(argv[3], "per-session") != 0)) {
    fprintf(stderr, "usage: %s ENGINE_DIR LIBRARY per-session|global\n", argv[0]);
    return 2;
  }
  const int32_t host_threads = 2, threads = global ? 1 : 2;
  if (too_few_cores("host_environment", host_threads)) return 77;
  void* library = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
  if (!library) return fprintf(stderr, "%s\n", dlerror()), 1;
  const OrtApiBase* (*get_base)(void) = (const OrtApiBase* (*)(void))dlsym(library, "OrtGetApiBase");
  const OrtApi* api = get_base ? get_base()->GetApi(ORT_API_VERSION) : NULL;
  OrtEnv* host_env = NULL;
  OrtThreadingOptions* pools = NULL;
  if (!api || api->CreateThreadingOptions(&pools) != NULL ||
      api->SetGlobalIntraOpNumThreads(pools, host_threads) != NULL || api->SetGlobalSpinControl(pools, 0) != NULL ||
      (global ? api->CreateEnvWithGlobalThreadPools(ORT_LOGGING_LEVEL_ERROR, "host", pools, &host_env)
              : api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "host", &host_env)) != NULL) {
    return fprintf(stderr, "the host cannot create ONNX Runtime's environment\n"), 1;
  }
  api->ReleaseThreadingOptions(pools);
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
  const int expected = global ? 0 : 3 * (threads - 1);
  if (pool_threads != expected) return fprintf(stderr, "expected %d\n", expected), 1;
  ctrt_session_close(session);
  ctrt_engine_close(engine);
  api->ReleaseEnv(host_env);
  printf("host_environment: ok\n");
  return 0;
}
