#include "ctrt/snapshot.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zip.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "ctrt/error.hpp"
#include "npy.hpp"

namespace ctrt {

namespace {

constexpr const char* kFormat = "compressive-rt-stream-snapshot";
constexpr const char* kMeta = "__meta__";
constexpr const char* kLastLogits = "last_logits";
constexpr size_t kMaxMetaBytes = 1 << 20;

const char* descr_of(DType dtype) { return dtype == DType::int32 ? "<i4" : "<f4"; }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

size_t elements(const std::vector<int64_t>& shape) {
  size_t count = 1;
  for (int64_t dim : shape) count *= static_cast<size_t>(dim);
  return count;
}

struct ZipArchive {
  zip_t* archive = nullptr;
  ~ZipArchive() {
    if (archive) zip_discard(archive);
  }
};

struct Member {
  zip_uint64_t index;
  std::string name;  // without ".npy"
  zip_uint64_t size;
  uint32_t crc;      // the CRC-32 the zip directory records for the member's bytes
  npy::Header header;
};

// CRC-32 (IEEE 802.3, the zip checksum) of bytes: libzip does not check a stored member's CRC
// on a partial or seekable read, so the reader checks it itself, as Python's zipfile does.
uint32_t crc32_of(const uint8_t* bytes, size_t size) {
  static const auto table = [] {
    std::array<uint32_t, 256> out{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      out[i] = c;
    }
    return out;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ bytes[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

// the first bytes of a member (its npy header); the member is stored, so this reads no more
std::vector<uint8_t> read_prefix(zip_t* archive, zip_uint64_t index, size_t count) {
  std::unique_ptr<zip_file_t, decltype(&zip_fclose)> file(zip_fopen_index(archive, index, 0), zip_fclose);
  if (!file) throw std::runtime_error(zip_strerror(archive));
  std::vector<uint8_t> out(count);
  const zip_int64_t got = zip_fread(file.get(), out.data(), count);
  if (got < 0) throw std::runtime_error(zip_file_strerror(file.get()));
  out.resize(static_cast<size_t>(got));
  return out;
}

std::vector<uint8_t> read_data(zip_t* archive, const Member& member) {
  std::vector<uint8_t> all = read_prefix(archive, member.index, member.size);
  if (all.size() != member.size) throw std::runtime_error("member " + member.name + ".npy is truncated");
  if (crc32_of(all.data(), all.size()) != member.crc) {
    throw std::runtime_error("member " + member.name + ".npy fails its CRC-32 check (damaged)");
  }
  return std::vector<uint8_t>(all.begin() + static_cast<std::ptrdiff_t>(member.header.header_bytes), all.end());
}

// a version 1 record: numpy's unicode array, UTF-32LE code points, trailing NULs dropped
std::string utf8_of_utf32(const std::vector<uint8_t>& data) {
  std::string out;
  for (size_t i = 0; i + 4 <= data.size(); i += 4) {
    const uint32_t c = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | static_cast<uint32_t>(data[i + 3]) << 24;
    if (c == 0) break;
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if (c < 0x800) {
      out += static_cast<char>(0xC0 | c >> 6);
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      if (c >= 0xD800 && c < 0xE000) throw std::runtime_error("its __meta__ record holds a surrogate code point");
      out += static_cast<char>(0xE0 | c >> 12);
      out += static_cast<char>(0x80 | (c >> 6 & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x110000) {
      out += static_cast<char>(0xF0 | c >> 18);
      out += static_cast<char>(0x80 | (c >> 12 & 0x3F));
      out += static_cast<char>(0x80 | (c >> 6 & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
      throw std::runtime_error("its __meta__ record holds a code point beyond U+10FFFF");
    }
  }
  return out;
}

std::map<std::string, int64_t> expected_counts(const Dims& dims, int64_t position) {
  const int64_t committed = position / dims.seg_len * dims.seg_len;  // tokens rotated into memory
  std::map<std::string, int64_t> counts = {{"mem_len", std::min(committed, dims.mem_len)},
                                           {"seg_len", position % dims.seg_len}};
  if (dims.cmem_len) {
    const int64_t evicted = std::max<int64_t>(committed - dims.mem_len, 0);
    counts["cmem_len"] = std::min(evicted / dims.compress_rate, dims.cmem_len);
  }
  return counts;
}

}  // namespace

std::vector<uint8_t> write_snapshot(const Manifest& manifest, const std::vector<std::string>& order,
                                    const std::map<std::string, RowTensor>& state, int64_t position,
                                    const float* last_logits) {
  const nlohmann::json meta = {{"format", kFormat},
                               {"format_version", kSnapshotFormatVersion},
                               {"position", position},
                               {"config", manifest.config()},
                               {"engine", engine_identity(manifest)},
                               {"last_logits", last_logits != nullptr}};
  // every member's bytes stay alive until the archive is written
  std::vector<std::pair<std::string, std::string>> members;
  const std::string meta_text = meta.dump();
  members.emplace_back(std::string(kMeta) + ".npy",
                       npy::encode_header("|u1", {static_cast<int64_t>(meta_text.size())}) + meta_text);
  for (const auto& name : order) {
    const RowTensor& row = state.at(name);
    members.emplace_back(name + ".npy", npy::encode_header(descr_of(row.dtype), row.shape) +
                                            std::string(row.data.begin(), row.data.end()));
  }
  if (last_logits) {
    const int64_t vocab = manifest.dims.vocab_size;
    members.emplace_back(std::string(kLastLogits) + ".npy",
                         npy::encode_header("<f4", {vocab}) +
                             std::string(reinterpret_cast<const char*>(last_logits),
                                         static_cast<size_t>(vocab) * sizeof(float)));
  }
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* buffer = zip_source_buffer_create(nullptr, 0, 0, &error);
  if (!buffer) throw Error(CTRT_INTERNAL_ERROR, std::string("libzip: ") + zip_error_strerror(&error));
  zip_t* archive = zip_open_from_source(buffer, ZIP_TRUNCATE, &error);
  if (!archive) {
    zip_source_free(buffer);
    throw Error(CTRT_INTERNAL_ERROR, std::string("libzip: ") + zip_error_strerror(&error));
  }
  zip_source_keep(buffer);  // read back after zip_close
  for (const auto& [name, bytes] : members) {
    zip_source_t* source = zip_source_buffer(archive, bytes.data(), bytes.size(), 0);
    const zip_int64_t index = source ? zip_file_add(archive, name.c_str(), source, ZIP_FL_ENC_UTF_8) : -1;
    if (index < 0 || zip_set_file_compression(archive, static_cast<zip_uint64_t>(index), ZIP_CM_STORE, 0) != 0) {
      if (source && index < 0) zip_source_free(source);
      const std::string why = zip_strerror(archive);
      zip_discard(archive);
      zip_source_free(buffer);
      throw Error(CTRT_INTERNAL_ERROR, "libzip cannot add " + name + ": " + why);
    }
  }
  if (zip_close(archive) != 0) {
    const std::string why = zip_strerror(archive);
    zip_discard(archive);
    zip_source_free(buffer);
    throw Error(CTRT_INTERNAL_ERROR, "libzip cannot write the snapshot: " + why);
  }
  std::vector<uint8_t> out;
  zip_stat_t stat;
  if (zip_source_stat(buffer, &stat) == 0 && zip_source_open(buffer) == 0) {
    out.resize(stat.size);
    const zip_int64_t got = zip_source_read(buffer, out.data(), out.size());
    zip_source_close(buffer);
    if (got != static_cast<zip_int64_t>(out.size())) out.clear();
  }
  zip_source_free(buffer);
  if (out.empty()) throw Error(CTRT_INTERNAL_ERROR, "libzip wrote no snapshot bytes");
  return out;
}

void write_file_atomically(const std::string& path, const std::vector<uint8_t>& bytes) {
  const std::filesystem::path target(path);
  std::string temp = (target.parent_path().empty() ? std::filesystem::path(".") : target.parent_path()) /
                     ("." + target.filename().string() + ".tmpXXXXXX");
  const int fd = mkstemp(temp.data());
  auto fail = [&](const std::string& what) {
    const std::string why = std::strerror(errno);
    throw InputError("cannot write snapshot " + path + ": " + what + why);
  };
  if (fd < 0) fail("");
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      ::close(fd);
      ::unlink(temp.c_str());
      fail("");
    }
    written += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0 || ::close(fd) != 0 || std::rename(temp.c_str(), path.c_str()) != 0) {
    ::unlink(temp.c_str());
    fail("");
  }
}

std::vector<uint8_t> read_snapshot_file(const std::string& path, size_t max_bytes) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw InputError("snapshot " + path + " does not exist");
  if (!std::filesystem::is_regular_file(path, ec)) throw InputError("snapshot " + path + " is not a file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size > max_bytes) {
    throw InputError("snapshot " + path + " holds " + std::to_string(size) + " bytes, more than a "
                     "snapshot of this engine can (" + std::to_string(max_bytes) + ")");
  }
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> out(size);
  if (!in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(size))) {
    throw InputError("cannot read snapshot " + path);
  }
  return out;
}

StreamSnapshot read_snapshot(const uint8_t* bytes, size_t size, const Manifest& manifest,
                             const std::map<std::string, std::pair<DType, std::vector<int64_t>>>& expected,
                             const std::string& source) {
  const std::string where = "snapshot " + source;
  auto refuse = [&](const std::string& why) { return InputError(where + ": " + why); };
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* buffer = zip_source_buffer_create(bytes, size, 0, &error);
  ZipArchive zip;
  if (buffer) zip.archive = zip_open_from_source(buffer, ZIP_RDONLY, &error);
  if (!zip.archive) {
    if (buffer) zip_source_free(buffer);
    throw InputError(where + " is truncated or not a snapshot (" + zip_error_strerror(&error) + ")");
  }
  zip_t* archive = zip.archive;
  // the directory: names, compression, sizes; then each npy header (no array data yet)
  const zip_int64_t count = zip_get_num_entries(archive, 0);
  std::map<std::string, Member> members;
  for (zip_int64_t i = 0; i < count; ++i) {
    zip_stat_t stat;
    if (zip_stat_index(archive, static_cast<zip_uint64_t>(i), 0, &stat) != 0) {
      throw refuse(std::string("unreadable zip directory (") + zip_strerror(archive) + ")");
    }
    const std::string name = stat.name ? stat.name : "";
    if (name.size() < 5 || name.compare(name.size() - 4, 4, ".npy") != 0) {
      throw refuse("member '" + name + "' is not an .npy array");
    }
    const std::string base = name.substr(0, name.size() - 4);
    if (members.count(base)) throw refuse("member '" + name + "' appears twice");
    if (stat.comp_method != ZIP_CM_STORE) {
      throw refuse("member '" + name + "' is compressed; snapshots are stored uncompressed");
    }
    if (stat.comp_size != stat.size) {
      throw refuse("member '" + name + "' has stored size " + std::to_string(stat.comp_size) +
                   " but size " + std::to_string(stat.size));
    }
    if (!(stat.valid & ZIP_STAT_CRC)) throw refuse("member '" + name + "' records no CRC-32");
    members[base] = Member{static_cast<zip_uint64_t>(i), base, stat.size, stat.crc, {}};
  }
  std::set<std::string> want;
  for (const auto& [name, _] : expected) want.insert(name);
  want.insert(kMeta);
  std::set<std::string> got;
  for (const auto& [name, _] : members) got.insert(name);
  std::set<std::string> without_logits = got;
  without_logits.erase(kLastLogits);
  if (without_logits != want) {
    std::string listed, wanted;
    for (const auto& name : got) listed += (listed.empty() ? "" : ", ") + name;
    for (const auto& name : want) wanted += (wanted.empty() ? "" : ", ") + name;
    throw refuse("holds members [" + listed + "], expected [" + wanted + "] (and last_logits when recorded)");
  }
  bool meta_utf32 = false;
  for (auto& [name, member] : members) {
    try {
      const auto prefix = read_prefix(archive, member.index, std::min<zip_uint64_t>(member.size, 10 + 65535));
      member.header = npy::parse_header(prefix.data(), prefix.size());
    } catch (const std::runtime_error& exc) {
      throw refuse("member " + name + ".npy: " + exc.what());
    }
    DType dtype = DType::float32;
    std::vector<int64_t> shape;
    size_t itemsize = 4;
    std::string descr;
    if (name == kMeta) {
      // version 2 on: 1-D uint8 UTF-8 JSON; version 1: a 0-d unicode array ('<U{chars}', UTF-32)
      const auto& header = member.header;
      const bool utf32 = header.descr.size() > 2 && header.descr.compare(0, 2, "<U") == 0 && header.shape.empty() &&
                         header.descr.find_first_not_of("0123456789", 2) == std::string::npos && header.descr.size() <= 12;
      if (!(header.descr == "|u1" && header.shape.size() == 1) && !utf32) {
        throw refuse(std::string(kMeta) + " must be uint8 JSON of at most 1 MiB, got dtype " + header.descr +
                     " shape " + shape_text(header.shape));
      }
      descr = header.descr;
      itemsize = utf32 ? 4 * std::stoull(header.descr.substr(2)) : 1;
      shape = header.shape;
      if (elements(shape) * itemsize > (utf32 ? 4 : 1) * kMaxMetaBytes) {
        throw refuse(std::string(kMeta) + " holds " + std::to_string(elements(shape) * itemsize) +
                     " bytes, more than 1 MiB of JSON");
      }
      meta_utf32 = utf32;
    } else if (name == kLastLogits) {
      shape = {manifest.dims.vocab_size};
    } else {
      std::tie(dtype, shape) = expected.at(name);
    }
    if (name != kMeta) descr = descr_of(dtype);
    if (member.header.descr != descr) {
      throw refuse("tensor " + name + " has dtype " + member.header.descr + ", expected " + descr);
    }
    if (member.header.shape != shape) {
      throw refuse("tensor " + name + " has shape " + shape_text(member.header.shape) + ", expected " +
                   shape_text(shape));
    }
    if (member.size != member.header.header_bytes + elements(shape) * itemsize) {
      throw refuse("member " + name + ".npy holds " + std::to_string(member.size) + " bytes, its header "
                   "says " + std::to_string(member.header.header_bytes + elements(shape) * itemsize));
    }
  }
  // the record
  nlohmann::json meta;
  try {
    const auto data = read_data(archive, members.at(kMeta));
    const std::string text = meta_utf32 ? utf8_of_utf32(data) : std::string(data.begin(), data.end());
    meta = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& exc) {  // bad syntax, or a number out of range (1e505)
    throw refuse(std::string("its ") + kMeta + " record is not JSON (" + exc.what() + ")");
  } catch (const std::runtime_error& exc) {
    throw refuse(exc.what());
  }
  if (!meta.is_object() || meta.value("format", nlohmann::json()) != kFormat) {
    throw InputError(source + " is not a compressive-rt stream snapshot");
  }
  const auto version = meta.value("format_version", nlohmann::json());
  if (!version.is_number_integer() || version.get<int64_t>() < 1 || version.get<int64_t>() > kSnapshotFormatVersion) {
    throw refuse("has format_version " + version.dump() + "; this runtime reads versions 1, 2 and 3: take the "
                 "snapshot again with this runtime");
  }
  if ((version == 1) != meta_utf32) {
    throw refuse("a version " + version.dump() + " snapshot holds its " + kMeta + " record as " +
                 (version == 1 ? "a unicode string" : "uint8 JSON"));
  }
  if (version == 1) meta["last_logits"] = false;  // version 1 kept no logits
  check_restore_compatible(meta.value("engine", nlohmann::json()), meta.value("config", nlohmann::json()), manifest,
                           where, std::nullopt);
  const auto position = meta.value("position", nlohmann::json());
  if (!position.is_number_integer() || position.get<int64_t>() < 0) {
    throw refuse("position must be an integer >= 0, got " + position.dump());
  }
  const auto has_logits = meta.value("last_logits", nlohmann::json());
  if (!has_logits.is_boolean()) throw refuse("last_logits must be true or false, got " + has_logits.dump());
  if (has_logits.get<bool>() != static_cast<bool>(members.count(kLastLogits))) {
    throw refuse(std::string("its record says last_logits ") + (has_logits.get<bool>() ? "true" : "false") +
                 " but the archive " + (members.count(kLastLogits) ? "holds" : "lacks") + " last_logits.npy");
  }
  // the arrays
  StreamSnapshot out;
  out.position = position.get<int64_t>();
  try {
    for (const auto& [name, spec] : expected) {
      out.state[name] = RowTensor{spec.first, spec.second, read_data(archive, members.at(name))};
    }
    if (members.count(kLastLogits)) {
      const auto data = read_data(archive, members.at(kLastLogits));
      out.last_logits = std::vector<float>(data.size() / sizeof(float));
      std::memcpy(out.last_logits->data(), data.data(), data.size());
    }
  } catch (const std::runtime_error& exc) {
    throw InputError(where + " is truncated or damaged (" + exc.what() + ")");
  }
  auto check_finite = [&](const std::string& name, const float* values, size_t n) {
    for (size_t i = 0; i < n; ++i)
      if (!std::isfinite(values[i])) throw refuse("tensor " + name + " holds NaN or infinity");
  };
  std::map<std::string, int64_t> counts;
  for (const auto& [name, row] : out.state) {
    if (row.dtype == DType::float32) {
      check_finite(name, reinterpret_cast<const float*>(row.data.data()), row.data.size() / 4);
    } else {
      int32_t value;
      std::memcpy(&value, row.data.data(), sizeof value);
      counts[name] = value;
    }
  }
  if (out.last_logits) check_finite(kLastLogits, out.last_logits->data(), out.last_logits->size());
  const Dims& dims = manifest.dims;
  for (const auto& [name, value] : counts) {
    const bool ok = name == "mem_len"    ? value >= 0 && value <= dims.mem_len && value % dims.seg_len == 0
                    : name == "cmem_len" ? value >= 0 && value <= dims.cmem_len
                                         : value >= 0 && value < dims.seg_len;
    if (!ok) {
      const std::string wanted =
          name == "mem_len"    ? "a multiple of L=" + std::to_string(dims.seg_len) + " in [0, M=" + std::to_string(dims.mem_len) + "]"
          : name == "cmem_len" ? "in [0, C=" + std::to_string(dims.cmem_len) + "]"
                               : "in [0, L=" + std::to_string(dims.seg_len) + ")";
      throw refuse(name + " is " + std::to_string(value) + ", expected " + wanted);
    }
  }
  const auto implied = expected_counts(dims, out.position);
  if (counts != implied) {
    std::string want_text, got_text;
    for (const auto& [name, value] : implied) want_text += (want_text.empty() ? "" : ", ") + name + " " + std::to_string(value);
    for (const auto& [name, value] : counts) got_text += (got_text.empty() ? "" : ", ") + name + " " + std::to_string(value);
    throw refuse("position " + std::to_string(out.position) + " implies " + want_text +
                 "; the snapshot holds " + got_text);
  }
  return out;
}

}  // namespace ctrt
