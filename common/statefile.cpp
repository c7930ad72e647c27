#include "common/statefile.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "common/atomic_file.h"

namespace usher {

namespace {

using nlohmann::json;

// Echoes file content in an error message without letting control bytes
// through to the log.
std::string printable(std::string_view s) {
  constexpr size_t kMax = 64;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    out.push_back(c >= 0x20 && c < 0x7f && c != '"' && c != '\\' ? static_cast<char>(c) : '?');
  }
  out.push_back('"');
  if (s.size() > kMax) out.append("...");
  return out;
}

// Dispatch connects to this address directly; a host name would mean a DNS
// lookup on the request path and a way to point a user somewhere else.
bool numericAddress(const std::string& s) {
  in6_addr buf{};
  return ::inet_pton(AF_INET, s.c_str(), &buf) == 1 || ::inet_pton(AF_INET6, s.c_str(), &buf) == 1;
}

// Names the problem with one user's entry, or nullopt when it is usable.
std::optional<std::string> parseBackend(const std::string& osUser, const json& entry,
                                        Backend& out) {
  if (!entry.is_object()) return "entry is not an object";
  out.osUser = osUser;

  if (auto it = entry.find("kind"); it != entry.end()) {
    auto kind = it->is_string() ? parseBackendKind(it->get_ref<const std::string&>())
                                : std::nullopt;
    if (!kind) return "kind must be \"unit\" or \"vm\"";
    out.kind = *kind;
  }

  auto addr = entry.find("address");
  if (addr == entry.end() || !addr->is_string()) return "address missing or not a string";
  const auto& address = addr->get_ref<const std::string&>();
  if (!numericAddress(address)) {
    return "address " + printable(address) + " is not a numeric IPv4 or IPv6 address";
  }
  out.address = address;

  // Negative integers are number_integer, never number_unsigned, and 3773.0
  // is a float: both are refused.
  auto port = entry.find("port");
  if (port == entry.end() || !port->is_number_unsigned() || port->get<uint64_t>() < 1 ||
      port->get<uint64_t>() > 65535) {
    return "port must be an integer in 1..65535";
  }
  out.port = static_cast<uint16_t>(port->get<uint64_t>());

  if (auto it = entry.find("unit"); it != entry.end()) {
    if (!it->is_string()) return "unit is not a string";
    out.unit = it->get<std::string>();
  }
  if (auto it = entry.find("vm"); it != entry.end()) {
    if (!it->is_object()) return "vm is not an object";
    out.vm = *it;
  }
  return std::nullopt;
}

std::optional<std::string> parseReservation(const std::string& osUser, const json& entry,
                                            Reservation& out) {
  if (!entry.is_object()) return "entry is not an object";
  auto port = entry.find("port");
  if (port == entry.end() || !port->is_number_unsigned() || port->get<uint64_t>() < 1 ||
      port->get<uint64_t>() > 65535) {
    return "port must be an integer in 1..65535";
  }
  auto since = entry.find("since");
  if (since == entry.end() || !since->is_string()) return "since missing or not a string";
  out.osUser = osUser;
  out.port = static_cast<uint16_t>(port->get<uint64_t>());
  out.since = since->get<std::string>();
  return std::nullopt;
}

}  // namespace

std::optional<State> State::parse(std::string_view text, std::vector<std::string>& errors) {
  // Untrusted bytes: no exceptions, a discarded value instead.
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded()) {
    errors.push_back("state file is not valid JSON");
    return std::nullopt;
  }
  if (!doc.is_object()) {
    errors.push_back("state file is not a JSON object");
    return std::nullopt;
  }
  auto version = doc.find("version");
  if (version == doc.end() || !version->is_number_unsigned() ||
      version->get<uint64_t>() != static_cast<uint64_t>(kVersion)) {
    errors.push_back("state file version missing or not " + std::to_string(kVersion));
    return std::nullopt;
  }
  auto users = doc.find("users");
  if (users == doc.end() || !users->is_object()) {
    errors.push_back("state file \"users\" missing or not an object");
    return std::nullopt;
  }

  State state;
  if (auto it = doc.find("generated_at"); it != doc.end()) {
    if (it->is_string()) {
      state.generatedAt = it->get<std::string>();
    } else {
      errors.push_back("state file \"generated_at\" is not a string; ignored");
    }
  }
  for (const auto& [osUser, entry] : users->items()) {
    // The key becomes a unit instance name and a lookup key for the map.
    if (!validOsUser(osUser)) {
      errors.push_back("user " + printable(osUser) + ": not a valid OS user name; skipped");
      continue;
    }
    Backend backend;
    if (auto why = parseBackend(osUser, entry, backend)) {
      errors.push_back("user " + printable(osUser) + ": " + *why + "; skipped");
      continue;
    }
    state.put(std::move(backend));
  }
  if (auto reserved = doc.find("reserved"); reserved != doc.end()) {
    if (!reserved->is_object()) {
      errors.push_back("state file \"reserved\" is not an object; ignored");
      return state;
    }
    for (const auto& [osUser, entry] : reserved->items()) {
      if (!validOsUser(osUser)) {
        errors.push_back("reserved " + printable(osUser) + ": not a valid OS user name; skipped");
        continue;
      }
      Reservation reservation;
      if (auto why = parseReservation(osUser, entry, reservation)) {
        errors.push_back("reserved " + printable(osUser) + ": " + *why + "; skipped");
        continue;
      }
      state.reserve(std::move(reservation));
    }
  }
  return state;
}

std::optional<State> State::load(const std::string& path, std::vector<std::string>& errors) {
  std::string error;
  auto text = readFile(path, error);
  if (!text) {
    errors.push_back(std::move(error));
    return std::nullopt;
  }
  return parse(*text, errors);
}

nlohmann::json State::toJson() const {
  json users = json::object();
  for (const auto& [osUser, b] : backends_) {
    json entry = {{"kind", toString(b.kind)}, {"address", b.address}, {"port", b.port}};
    if (!b.unit.empty()) entry["unit"] = b.unit;
    if (!b.vm.is_null()) entry["vm"] = b.vm;
    users[osUser] = std::move(entry);
  }
  json doc = {{"version", kVersion}};
  if (!generatedAt.empty()) doc["generated_at"] = generatedAt;
  doc["users"] = std::move(users);
  // Only when there is something to say, so a state without reservations is
  // byte for byte what it was before the key existed.
  if (!reserved_.empty()) {
    json reserved = json::object();
    for (const auto& [osUser, r] : reserved_) {
      reserved[osUser] = {{"port", r.port}, {"since", r.since}};
    }
    doc["reserved"] = std::move(reserved);
  }
  return doc;
}

const Backend* State::find(std::string_view osUser) const {
  auto it = backends_.find(std::string(osUser));
  return it == backends_.end() ? nullptr : &it->second;
}

void State::put(Backend backend) {
  std::string key = backend.osUser;
  backends_.insert_or_assign(std::move(key), std::move(backend));
}

bool State::erase(std::string_view osUser) { return backends_.erase(std::string(osUser)) > 0; }

const Reservation* State::findReservation(std::string_view osUser) const {
  auto it = reserved_.find(std::string(osUser));
  return it == reserved_.end() ? nullptr : &it->second;
}

void State::reserve(Reservation reservation) {
  std::string key = reservation.osUser;
  reserved_.insert_or_assign(std::move(key), std::move(reservation));
}

bool State::unreserve(std::string_view osUser) { return reserved_.erase(std::string(osUser)) > 0; }

}  // namespace usher
