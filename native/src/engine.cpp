#include "ctrt/engine.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include "ctrt/error.hpp"
#include "engine_impl.hpp"

namespace ctrt {

const char* entry_name(Entry entry) { return kEntryPoints[static_cast<int>(entry)]; }

FileMapping::FileMapping(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw EngineError("cannot open " + path + ": " + std::strerror(errno));
  struct stat info {};
  if (fstat(fd, &info) != 0 || info.st_size == 0) {
    ::close(fd);
    throw EngineError("cannot map " + path + ": empty or unreadable");
  }
  size = static_cast<size_t>(info.st_size);
  data = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (data == MAP_FAILED) {
    data = nullptr;
    throw EngineError("cannot map " + path + ": " + std::strerror(errno));
  }
}

FileMapping::~FileMapping() {
  if (data) munmap(data, size);
}

ONNXTensorElementDataType onnx_type(DType dtype) {
  switch (dtype) {
    case DType::float32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DType::int32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case DType::boolean: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

namespace {

// numpy dtype names of the weights index (checked by load_manifest) -> ONNX element type
ONNXTensorElementDataType weight_type(const std::string& dtype) {
  static const std::map<std::string, ONNXTensorElementDataType> types = {
      {"float32", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT}, {"float16", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16},
      {"float64", ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE}, {"int8", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8},
      {"uint8", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8}, {"int32", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32},
      {"int64", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64}, {"bool", ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL}};
  return types.at(dtype);
}

bool prepacked(const std::string& mode, Entry entry) {
  return mode == "all" || (mode == "decode" && entry == Entry::extend);
}

int online_cores() {
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  return cores > 0 ? static_cast<int>(cores) : 1;
}

// runtime/backends/ort.py: cpu_session_options(threads) and the prepack mode. Every precision
// runs optimized: the Casts of fp16 weights fold once at load instead of in every call. The
// threads are the process's global intra-op pool (ort::env), shared by every graph, unless the
// host's environment has no global pools: then each graph gets a pool of its own.
Ort::SessionOptions session_options(const EngineOptions& options, Entry entry, int threads) {
  Ort::SessionOptions out;
  out.SetGraphOptimizationLevel(ORT_ENABLE_ALL);
  out.SetExecutionMode(ORT_SEQUENTIAL);
  if (ort::global_pools()) {
    out.DisablePerSessionThreads();
  } else {
    out.SetIntraOpNumThreads(threads);
    out.SetInterOpNumThreads(1);
    // Spinning workers take the cores the loop (and everyone else on a shared machine) needs.
    out.AddConfigEntry("session.intra_op.allow_spinning", "0");
  }
  out.SetLogSeverityLevel(3);
  if (!prepacked(options.prepack, entry)) out.AddConfigEntry("session.disable_prepacking", "1");
  return out;
}

std::string profile_shapes(const EntryPoint& entry, int64_t batch, int64_t tokens) {
  std::string out;
  for (const auto& spec : entry.inputs) {
    if (!out.empty()) out += ",";
    out += spec.name + ":";
    const auto shape = spec.concrete_shape(batch, tokens);
    for (size_t i = 0; i < shape.size(); ++i) out += (i ? "x" : "") + std::to_string(shape[i]);
  }
  return out;
}

void append_gpu_provider(Ort::SessionOptions& out, const Manifest& manifest,
                         const EngineOptions& options, Entry entry) {
#ifdef CTRT_GPU
  const std::string wanted = options.provider == "cuda" ? "CUDAExecutionProvider"
                                                        : "TensorrtExecutionProvider";
  bool available = false;
  for (const auto& name : Ort::GetAvailableProviders()) available |= name == wanted;
  if (!available) {
    throw BackendUnavailable("this ONNX Runtime (" + std::string(ort::library_path()) + ") has no " + wanted +
                             ": install onnxruntime-gpu and point CTRT_ONNXRUNTIME_LIBRARY at it");
  }
  const std::string device = std::to_string(options.device_id);
  if (options.provider == "tensorrt") {
    const auto& spec = manifest.contract.at(entry_name(entry));
    const int64_t seg_len = manifest.dims.seg_len, batch = options.max_batch;
    const std::string cache = manifest.engine_dir + "/ort_tensorrt_cache";
    const std::string min_shapes = profile_shapes(spec, 1, 1);
    const std::string opt_shapes = profile_shapes(spec, batch, 1);
    const std::string max_shapes = profile_shapes(spec, batch, seg_len);
    OrtTensorRTProviderOptionsV2* trt = nullptr;
    Ort::ThrowOnError(Ort::GetApi().CreateTensorRTProviderOptions(&trt));
    const char* keys[] = {"device_id", "trt_engine_cache_enable", "trt_engine_cache_path",
                          "trt_timing_cache_enable", "trt_timing_cache_path",
                          "trt_profile_min_shapes", "trt_profile_opt_shapes",
                          "trt_profile_max_shapes"};
    const char* values[] = {device.c_str(), "1", cache.c_str(), "1", cache.c_str(),
                            min_shapes.c_str(), opt_shapes.c_str(), max_shapes.c_str()};
    OrtStatus* status = Ort::GetApi().UpdateTensorRTProviderOptions(trt, keys, values, 8);
    if (!status) out.AppendExecutionProvider_TensorRT_V2(*trt);
    Ort::GetApi().ReleaseTensorRTProviderOptions(trt);
    Ort::ThrowOnError(status);
  }
  // CUDA for every node TensorRT does not take; TF32 off (too coarse for the fp32 contract)
  OrtCUDAProviderOptionsV2* cuda = nullptr;
  Ort::ThrowOnError(Ort::GetApi().CreateCUDAProviderOptions(&cuda));
  const char* keys[] = {"device_id", "cudnn_conv_algo_search", "do_copy_in_default_stream",
                        "use_tf32"};
  const char* values[] = {device.c_str(), "HEURISTIC", "1", "0"};
  OrtStatus* status = Ort::GetApi().UpdateCUDAProviderOptions(cuda, keys, values, 4);
  if (!status) out.AppendExecutionProvider_CUDA_V2(*cuda);
  Ort::GetApi().ReleaseCUDAProviderOptions(cuda);
  Ort::ThrowOnError(status);
#else
  (void)out, (void)manifest, (void)entry, (void)profile_shapes;
  throw BackendUnavailable("provider " + options.provider + " needs a build with -DCTRT_GPU=ON");
#endif
}

std::vector<std::string> names_of(Ort::Session& session, bool inputs) {
  Ort::AllocatorWithDefaultOptions allocator;
  std::vector<std::string> out;
  const size_t count = inputs ? session.GetInputCount() : session.GetOutputCount();
  for (size_t i = 0; i < count; ++i) {
    auto name = inputs ? session.GetInputNameAllocated(i, allocator)
                       : session.GetOutputNameAllocated(i, allocator);
    out.emplace_back(name.get());
  }
  return out;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + (shape[i] < 0 ? "?" : std::to_string(shape[i]));
  return out + "]";
}

// Each graph input and output has the element type and shape the contract gives for the
// manifest's config (a dimension the graph leaves symbolic matches any size): a manifest whose
// config was edited away from its graphs is refused here, not by the first call.
void check_types(Ort::Session& session, const EntryPoint& expected, const std::string& path) {
  for (int inputs = 1; inputs >= 0; --inputs) {
    const auto& specs = inputs ? expected.inputs : expected.outputs;
    for (size_t i = 0; i < specs.size(); ++i) {
      const auto info = inputs ? session.GetInputTypeInfo(i) : session.GetOutputTypeInfo(i);
      if (info.GetONNXType() != ONNX_TYPE_TENSOR) {
        throw EngineError(path + ": graph " + (inputs ? "input " : "output ") + specs[i].name + " is not a tensor");
      }
      const auto tensor = info.GetTensorTypeAndShapeInfo();
      const auto got = tensor.GetShape();
      const auto want = specs[i].concrete_shape(-1, -1);
      bool same = tensor.GetElementType() == onnx_type(specs[i].dtype) && got.size() == want.size();
      for (size_t k = 0; same && k < got.size(); ++k) same = got[k] < 0 || want[k] < 0 || got[k] == want[k];
      if (!same) {
        throw EngineError(path + ": graph " + (inputs ? "input " : "output ") + specs[i].name + " has shape " +
                          shape_text(got) + " (element type " + std::to_string(tensor.GetElementType()) +
                          "), the manifest's config implies " + shape_text(want) + " " +
                          dtype_name(specs[i].dtype) + ": the manifest does not describe this graph; re-export");
      }
    }
  }
}

std::string joined(const std::vector<std::string>& names) {
  std::string out = "[";
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
  return out + "]";
}

}  // namespace

Engine::Engine(Manifest manifest, EngineOptions options)
    : manifest_(std::move(manifest)), options_(std::move(options)) {}

Engine::~Engine() = default;

std::string Engine::backend_name() const { return "native onnxruntime-" + options_.provider; }

std::shared_ptr<Engine> Engine::open(const std::string& engine_dir, const EngineOptions& options) {
  if (options.prepack != "all" && options.prepack != "decode" && options.prepack != "none") {
    throw InputError("prepack must be one of all, decode, none, got '" + options.prepack + "'");
  }
  if (options.provider != "cpu" && options.provider != "cuda" && options.provider != "tensorrt") {
    throw InputError("provider must be one of cpu, cuda, tensorrt, got '" + options.provider + "'");
  }
  const int cores = online_cores();
  if (options.threads < 0 || options.threads > cores) {
    throw InputError("threads must be in [0, " + std::to_string(cores) + "] (0: every core; at most this "
                     "machine's " + std::to_string(cores) + " online cores), got " + std::to_string(options.threads));
  }
  if (options.device_id < 0) throw InputError("device_id must be >= 0, got " + std::to_string(options.device_id));
  if (options.max_batch < 1 || options.max_batch > kMaxStreams) {
    throw InputError("max_batch must be in [1, " + std::to_string(kMaxStreams) + "], got " +
                     std::to_string(options.max_batch));
  }
  Manifest manifest = load_manifest(engine_dir);  // every check before anything is loaded
  const int threads = options.threads > 0 ? options.threads : cores;
  ort::env(threads);  // loads ONNX Runtime, checks threads against the process pool
  std::shared_ptr<Engine> engine(new Engine(std::move(manifest), options));
  engine->impl_ = std::make_unique<Impl>();
  Impl& impl = *engine->impl_;
  const Manifest& m = engine->manifest_;
  const auto& tensors = m.data().at("weights").value("tensors", nlohmann::json::object());
  if (!tensors.empty()) {
    impl.weights = std::make_unique<FileMapping>(m.weights_path());
    auto* base = static_cast<uint8_t*>(impl.weights->data);
    for (const auto& [key, tensor] : tensors.items()) {
      // load_manifest checked dtype, shape and that offset + bytes lies inside the file
      const std::string dtype = tensor.at("dtype").get<std::string>();
      std::vector<int64_t> shape = tensor.at("shape").get<std::vector<int64_t>>();
      const size_t bytes = static_cast<size_t>(checked_product(shape, key)) * weight_itemsize(dtype, key);
      // read-only mapping: ONNX Runtime never writes an initializer
      impl.shared_weights.emplace(
          key, Ort::Value::CreateTensor(impl.host_memory, base + tensor.at("offset").get<size_t>(), bytes,
                                        shape.data(), shape.size(), weight_type(dtype)));
    }
  }
  OrtPrepackedWeightsContainer* prepacked = nullptr;
  Ort::ThrowOnError(Ort::GetApi().CreatePrepackedWeightsContainer(&prepacked));
  impl.prepacked.reset(prepacked);
  for (int index = 0; index < 3; ++index) {
    const Entry entry = static_cast<Entry>(index);
    const std::string path = m.graph_path(entry_name(entry));
    const auto create = [&] {
      Ort::SessionOptions session_opts = session_options(options, entry, threads);
      if (options.provider != "cpu") append_gpu_provider(session_opts, m, options, entry);
      const auto& shared = m.data().at("entry_points").at(entry_name(entry))
                               .value("initializers", nlohmann::json::object());
      for (const auto& [name, key] : shared.items()) {
        session_opts.AddInitializer(name.c_str(), impl.shared_weights.at(key.get<std::string>()));
      }
      return Ort::Session(ort::env(threads), path.c_str(), session_opts, impl.prepacked.get());
    };
    try {
      try {
        impl.sessions[index] = create();
      } catch (const Ort::Exception& exc) {
        // ONNX Runtime's refusal of a session without threads of its own in an environment
        // created (by the host, before libctrt) without global pools
        if (!ort::global_pools() || !std::strstr(exc.what(), "CreateEnvWithGlobalThreadPools")) throw;
        ort::note_environment_without_global_pools();
        impl.sessions[index] = create();
      }
    } catch (const Ort::Exception& exc) {
      throw EngineError(path + " cannot be loaded by ONNX Runtime: " + exc.what());
    } catch (const std::out_of_range&) {
      throw EngineError(path + ": an initializer names a weights tensor the manifest does not list");
    }
    const auto& expected = m.contract.at(entry_name(entry));
    std::vector<std::string> want_in, want_out;
    for (const auto& spec : expected.inputs) want_in.push_back(spec.name);
    for (const auto& spec : expected.outputs) want_out.push_back(spec.name);
    const auto got_in = names_of(impl.sessions[index], true);
    const auto got_out = names_of(impl.sessions[index], false);
    if (got_in != want_in || got_out != want_out) {
      throw EngineError(path + ": graph inputs " + joined(got_in) + " / outputs " + joined(got_out) +
                        " do not match the manifest's " + joined(want_in) + " / " + joined(want_out));
    }
    check_types(impl.sessions[index], expected, path);
  }
  return engine;
}

}  // namespace ctrt
