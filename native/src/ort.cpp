#include "ort.hpp"

#include <dlfcn.h>
#include <glob.h>

#include <cstdlib>
#include <memory>
#include <atomic>
#include <mutex>
#include <vector>

#include "ctrt/error.hpp"

namespace ctrt::ort {

namespace {

using GetApiBase = const OrtApiBase* (*)();

// Written once, under `loading`, before shared_env is published; read after it is.
std::mutex loading;
std::string loaded_path;
std::unique_ptr<Ort::Env> shared_env;
int pool_threads = 0;  // the intra-op threads of the global pool: the first engine's `threads`
std::atomic<Ort::Env*> ready{nullptr};
std::atomic<bool> environment_has_global_pools{true};

std::vector<std::string> venv_libraries() {
  std::vector<std::string> out;
  const char* venv = std::getenv("VIRTUAL_ENV");
  if (!venv || !*venv) return out;
  const std::string pattern =
      std::string(venv) + "/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*";
  glob_t found{};
  if (glob(pattern.c_str(), 0, nullptr, &found) == 0) {
    for (size_t i = 0; i < found.gl_pathc; ++i) out.emplace_back(found.gl_pathv[i]);
  }
  globfree(&found);
  return out;
}

// dlopen + OrtGetApiBase + GetApi(ORT_API_VERSION); "" on success, else why not.
std::string try_load(const std::string& path, const OrtApi** api) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    return why ? why : "dlopen failed";
  }
  auto get_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
  if (!get_base) {
    dlclose(handle);
    return "no OrtGetApiBase symbol: not an ONNX Runtime library";
  }
  const OrtApiBase* base = get_base();
  *api = base->GetApi(ORT_API_VERSION);
  if (!*api) {
    std::string version = base->GetVersionString();
    dlclose(handle);
    return "ONNX Runtime " + version + " is older than the headers (API version " +
           std::to_string(ORT_API_VERSION) + ")";
  }
  return "";  // the handle stays open for the life of the process
}

void load(int threads) {
  std::vector<std::string> candidates;
  const char* forced = std::getenv("CTRT_ONNXRUNTIME_LIBRARY");
  if (forced && *forced) {
    candidates.emplace_back(forced);
  } else {
    candidates = venv_libraries();
    candidates.emplace_back("libonnxruntime.so.1");
    candidates.emplace_back("libonnxruntime.so");
  }
  std::string tried;
  for (const auto& path : candidates) {
    const OrtApi* api = nullptr;
    const std::string why = try_load(path, &api);
    if (why.empty()) {
      Ort::InitApi(api);
      Ort::ThreadingOptions pools;
      pools.SetGlobalIntraOpNumThreads(threads);
      pools.SetGlobalInterOpNumThreads(1);  // ORT_SEQUENTIAL sessions never use an inter-op pool
      // Spinning workers take the cores the loop (and everyone else on a shared machine) needs.
      pools.SetGlobalSpinControl(0);
      shared_env = std::make_unique<Ort::Env>(pools, ORT_LOGGING_LEVEL_ERROR, "ctrt");
      pool_threads = threads;
      loaded_path = path;
      ready.store(shared_env.get());
      return;
    }
    tried += "\n  " + path + ": " + why;
  }
  throw BackendUnavailable(
      "cannot load ONNX Runtime; tried:" + tried +
      "\nactivate the venv that has the onnxruntime wheel, or set CTRT_ONNXRUNTIME_LIBRARY to its "
      "onnxruntime/capi/libonnxruntime.so.<version>");
}

}  // namespace

Ort::Env& env(int threads) {
  Ort::Env* loaded = ready.load();
  if (!loaded) {
    std::lock_guard<std::mutex> lock(loading);
    if (!ready.load()) load(threads);  // throws; the next call searches again
    loaded = ready.load();
  }
  if (threads != pool_threads) {
    throw InputError("threads " + std::to_string(threads) + " differs from this process's ONNX Runtime "
                     "thread pool of " + std::to_string(pool_threads) + ", fixed by the first engine "
                     "opened (the pool is per process and shared by every engine): open every engine "
                     "with threads " + std::to_string(pool_threads));
  }
  return *loaded;
}

bool global_pools() { return environment_has_global_pools.load(); }

void note_environment_without_global_pools() { environment_has_global_pools.store(false); }

const char* library_path() { return ready.load() ? loaded_path.c_str() : ""; }

}  // namespace ctrt::ort
