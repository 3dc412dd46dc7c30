"""The tests' support (tests/ is on sys.path under pytest's default import mode, so a test
imports `support.<module>`); the shared fixtures are in tests/conftest.py.

- rules.py: `skip_or_fail` (a missing prerequisite skips here, fails under CI=true) with the
  checks built on it (`need_binary`, `need_ray`), and the fp32 equality rule (`FP32`,
  `fp32_bound`) read from export/tolerances.py.
- engines.py: the one tiny config, random models, their engines, a recording backend.
- serving.py: in-process references for the serving tests, SSE parsing, the stream store's
  operation replay, the `ctrt serve` subprocess (benchmarks/launchers/).
- redis_and_ray.py: a redis-server for a test, a stream's record in Redis, Ray's process tree
  and a `ctrt serve --ray` waited for.
- pause.py: a server process paused and resumed when the test says.
- native.py: the native library, built once per session with CMake into build/.
- avx2_u8s8.py: ONNX Runtime's u8s8 GEMM as CPUs without VNNI compute it (the int8 tests).
"""
