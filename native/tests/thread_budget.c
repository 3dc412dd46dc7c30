/* The thread budget is one ONNX Runtime intra-op pool per process, shared by every graph of
 * every engine: opening an engine with threads N starts N - 1 pool threads (the calling thread
 * is the pool's first) more than opening one with threads 1 does (in a child process: ONNX
 * Runtime starts a thread of its own either way), not N - 1 per graph; a second engine with the
 * same N starts none; an engine with another N is refused naming both counts. Threads are
 * counted in /proc/self/task.
 * Usage: ctrt_thread_budget ENGINE_DIR (prints "thread_budget: ok"; exits 77, skipped, on a
 * machine with one core). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctrt/ctrt.h"
#include "process_threads.h"

/* 1 when opening `dir` with `threads` returns `expected` (the engine in *out), else 0 with why. */
static int open_engine(const char* dir, int32_t threads, ctrt_status expected, ctrt_engine** out) {
  ctrt_engine_options options = ctrt_engine_options_default();
  options.threads = threads;
  const ctrt_status status = ctrt_engine_open(dir, &options, out);
  if (status != expected) fprintf(stderr, "threads %d: status %d, expected %d: %s\n", threads, (int)status,
                                  (int)expected, ctrt_last_error());
  return status == expected;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s ENGINE_DIR\n", argv[0]);
    return 2;
  }
  const int32_t threads = 2;
  if (too_few_cores("thread_budget", threads)) return 77;
  /* the threads an engine with threads 1 (no pool) starts, counted in a child process */
  const pid_t child = fork();
  if (child == 0) {
    const int before = thread_count();
    ctrt_engine* engine = NULL;
    _exit(open_engine(argv[1], 1, CTRT_OK, &engine) ? thread_count() - before : 255);
  }
  int child_status = 0;
  if (child < 0 || waitpid(child, &child_status, 0) != child || !WIFEXITED(child_status) ||
      WEXITSTATUS(child_status) == 255) return 1;
  const int without_pool = WEXITSTATUS(child_status);
  const int before = thread_count();
  ctrt_engine *first = NULL, *second = NULL, *refused = NULL;
  if (!open_engine(argv[1], threads, CTRT_OK, &first)) return 1;
  const int after_first = thread_count();
  ctrt_session* session = NULL;
  if (ctrt_session_open(first, NULL, &session) != CTRT_OK) return 1;
  if (!open_engine(argv[1], threads, CTRT_OK, &second)) return 1;
  const int after_second = thread_count();
  printf("threads: an engine with threads 1 starts %d; with threads %d: %d before, %d after the first engine, "
         "%d after a session and a second engine\n", without_pool, (int)threads, before, after_first, after_second);
  if (after_first - before - without_pool != threads - 1 || after_second != after_first) {
    fprintf(stderr, "expected %d pool threads for the process\n", (int)threads - 1);
    return 1;
  }
  if (!open_engine(argv[1], 1, CTRT_INPUT_ERROR, &refused)) return 1;
  if (!strstr(ctrt_last_error(), "threads 1 differs from this process's ONNX Runtime thread pool of 2")) {
    fprintf(stderr, "unexpected refusal: %s\n", ctrt_last_error());
    return 1;
  }
  ctrt_session_close(session);
  ctrt_engine_close(second);
  ctrt_engine_close(first);
  printf("thread_budget: ok\n");
  return 0;
}
