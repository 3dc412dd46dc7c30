// The engine identity a snapshot records and the one rule by which a snapshot restores into an
// engine (runtime/snapshot.py: engine_identity, check_restore_compatible), with its messages.
#include <nlohmann/json.hpp>

#include "ctrt/error.hpp"
#include "ctrt/snapshot.hpp"

namespace ctrt {

namespace {

constexpr const char* kUnrecordedPrecision = "fp32";  // identities before snapshot format 3: the export default

// a JSON value as Python's str() shows it in a message: a string bare, anything else as JSON
std::string text_of(const nlohmann::json& value) { return value.is_string() ? value.get<std::string>() : value.dump(); }

// Python's truth of a JSON value (null, false, 0, "" and empty containers are false)
bool truthy(const nlohmann::json& value) {
  if (value.is_null()) return false;
  if (value.is_boolean()) return value.get<bool>();
  if (value.is_number()) return value != 0;
  if (value.is_string() || value.is_array() || value.is_object()) return !value.empty();
  return true;
}

std::string short_identity(const nlohmann::json& identity) {
  if (!identity.is_object()) return "unknown (" + identity.dump() + ")";
  const auto checkpoint = identity.value("checkpoint_sha256", nlohmann::json());
  const auto precision = identity.value("precision", nlohmann::json());
  std::string out = "contract v" + identity.value("contract_version", nlohmann::json()).dump() +
                    ", checkpoint " +
                    (truthy(checkpoint) ? text_of(checkpoint).substr(0, 12) : "not recorded") +
                    ", " + (truthy(precision) ? text_of(precision) : "precision not recorded") + ", graphs";
  const auto graphs = identity.value("graphs", nlohmann::json::object());
  if (graphs.is_object()) {
    for (const auto& [name, sha] : graphs.items()) {
      out += " " + name + " " + text_of(sha).substr(0, 12);
    }
  }
  return out;
}

}  // namespace

nlohmann::json engine_identity(const Manifest& manifest) {
  const auto& data = manifest.data();
  nlohmann::json checkpoint = data.value("checkpoint", nlohmann::json::object());
  if (!checkpoint.is_object()) checkpoint = nlohmann::json::object();
  nlohmann::json graphs = nlohmann::json::object();
  for (const auto& [name, entry] : data.at("entry_points").items()) {
    graphs[name] = entry.value("sha256", nlohmann::json());
  }
  return {{"contract_version", data.value("format_version", nlohmann::json())},
          {"checkpoint_sha256", checkpoint.value("sha256", nlohmann::json())},
          {"graphs", graphs},
          {"precision", data.value("precision", nlohmann::json())}};
}

void check_restore_compatible(const nlohmann::json& identity, const nlohmann::json& config, const Manifest& manifest,
                              const std::string& label, const std::optional<std::string>& precision) {
  const nlohmann::json ours = engine_identity(manifest);
  const std::string theirs = "snapshot engine " + short_identity(identity) + "; this engine " + short_identity(ours);
  if (config != manifest.config()) {
    throw InputError(label + " was taken with another model config than this engine's: " + theirs);
  }
  if (identity == ours) return;
  if (!identity.is_object()) throw InputError(label + " names no engine identity: " + theirs);
  const auto checkpoint = identity.value("checkpoint_sha256", nlohmann::json());
  if (checkpoint.is_null() || checkpoint != ours["checkpoint_sha256"]) {
    throw InputError(label + " was taken with another engine (other weights or graphs; its memory projections do "
                     "not fit this one) and names " + (truthy(checkpoint) ? "another checkpoint" : "no checkpoint") +
                     ": " + theirs);
  }
  // identities before snapshot format 3 record no precision: the writer's, or the export default
  nlohmann::json written = identity.value("precision", nlohmann::json());
  if (!truthy(written)) written = precision ? *precision : std::string(kUnrecordedPrecision);
  if (written != ours["precision"]) {
    const std::string name = text_of(written);
    throw InputError(label + " was taken with a " + name + " engine of this checkpoint; this engine is " +
                     text_of(ours["precision"]) + " (its memory projections differ): restore it into a " + name +
                     " engine (" + theirs + ")");
  }
}

}  // namespace ctrt
