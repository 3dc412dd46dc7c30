/* A small program on the C API, as the README prints it: open an engine once, a session over it,
 * feed a prompt, generate greedily, handle an error. Usage: ctrt_c_example ENGINE_DIR (prints
 * "c_api_example: ok" at the end). */
#include <stdio.h>
#include <string.h>

#include <ctrt/ctrt.h>

static int fail(const char* what, ctrt_status status) {
  fprintf(stderr, "%s failed (status %d): %s\n", what, (int)status, ctrt_last_error());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s ENGINE_DIR\n", argv[0]);
    return 2;
  }
  ctrt_engine_options engine_options = ctrt_engine_options_default();
  engine_options.threads = 1;
  ctrt_engine* engine = NULL;
  ctrt_status status = ctrt_engine_open(argv[1], &engine_options, &engine);
  if (status != CTRT_OK) return fail("ctrt_engine_open", status);

  /* one session per thread: each holds its streams' state, all share the engine */
  ctrt_session_options options = ctrt_session_options_default();
  options.max_streams = 2;
  ctrt_session* session = NULL;
  status = ctrt_session_open(engine, &options, &session);
  ctrt_engine_close(engine); /* the session keeps the engine loaded */
  if (status != CTRT_OK) return fail("ctrt_session_open", status);

  int64_t stream = -1;
  if ((status = ctrt_add_stream(session, &stream)) != CTRT_OK) return fail("ctrt_add_stream", status);
  const char* prompt = "def main(";
  int32_t tokens[16];
  size_t count = strlen(prompt);
  for (size_t i = 0; i < count; ++i) tokens[i] = (unsigned char)prompt[i];
  const int32_t* rows[1] = {tokens};
  size_t consumed = 0;
  status = ctrt_feed(session, 1, &stream, rows, &count, NULL, &consumed);
  if (status != CTRT_OK) return fail("ctrt_feed", status);

  ctrt_sampling greedy = ctrt_sampling_default();
  greedy.greedy = 1;
  int32_t generated[8];
  size_t n_generated = 0;
  status = ctrt_generate(session, stream, NULL, 0, 8, &greedy, NULL, 0, generated, &n_generated);
  if (status != CTRT_OK) return fail("ctrt_generate", status);
  int64_t position = 0;
  ctrt_position(session, stream, &position);
  printf("generated %zu tokens after %zu prompt tokens; position %lld\n", n_generated, consumed,
         (long long)position);
  if (n_generated != 8 || position != (int64_t)(count + 8)) return 1;

  /* an error: an unknown stream is refused with a message, and nothing changes */
  status = ctrt_remove_stream(session, 42);
  if (status != CTRT_INPUT_ERROR || strstr(ctrt_last_error(), "no stream 42") == NULL) {
    fprintf(stderr, "expected CTRT_INPUT_ERROR for stream 42, got %d: %s\n", (int)status, ctrt_last_error());
    return 1;
  }
  ctrt_session_close(session);
  printf("c_api_example: ok\n");
  return 0;
}
