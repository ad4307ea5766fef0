#include "utils/pyjson.h"

#include <cstdint>
#include <cstdio>

namespace diffsynth {

namespace {

// Decodes one UTF-8 code point (invalid bytes come back as themselves, like surrogateescape).
std::uint32_t next_code_point(const std::string& s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  auto cont = [&](std::size_t k) { return i + k < s.size() && (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80; };
  if (b0 < 0x80) { i += 1; return b0; }
  if ((b0 & 0xE0) == 0xC0 && cont(1)) {
    std::uint32_t cp = ((b0 & 0x1F) << 6) | (s[i + 1] & 0x3F);
    i += 2;
    return cp;
  }
  if ((b0 & 0xF0) == 0xE0 && cont(1) && cont(2)) {
    std::uint32_t cp = ((b0 & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    i += 3;
    return cp;
  }
  if ((b0 & 0xF8) == 0xF0 && cont(1) && cont(2) && cont(3)) {
    std::uint32_t cp = ((b0 & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
    i += 4;
    return cp;
  }
  i += 1;
  return 0xDC00 + b0;  // lone byte, as Python's surrogateescape shows it
}

void hex_escape(std::string& out, const char* fmt, std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, fmt, v);
  out += buf;
}

void dump_string(std::string& out, const std::string& s) {
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    std::uint32_t cp = next_code_point(s, i);
    switch (cp) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    if (cp >= 0x20 && cp < 0x7F) {
      out += static_cast<char>(cp);
    } else if (cp < 0x10000) {
      hex_escape(out, "\\u%04x", cp);
    } else {
      std::uint32_t v = cp - 0x10000;
      hex_escape(out, "\\u%04x", 0xD800 + (v >> 10));
      hex_escape(out, "\\u%04x", 0xDC00 + (v & 0x3FF));
    }
  }
  out += '"';
}

void dump(std::string& out, const nlohmann::ordered_json& v, int indent, int level) {
  auto newline = [&](int lvl) {
    out += '\n';
    out.append(static_cast<std::size_t>(indent * lvl), ' ');
  };
  switch (v.type()) {
    case nlohmann::json::value_t::null: out += "null"; return;
    case nlohmann::json::value_t::boolean: out += v.get<bool>() ? "true" : "false"; return;
    case nlohmann::json::value_t::string: dump_string(out, v.get_ref<const std::string&>()); return;
    case nlohmann::json::value_t::array:
    case nlohmann::json::value_t::object: {
      const bool is_obj = v.is_object();
      if (v.empty()) { out += is_obj ? "{}" : "[]"; return; }
      out += is_obj ? '{' : '[';
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) out += indent >= 0 ? "," : ", ";
        first = false;
        if (indent >= 0) newline(level + 1);
        if (is_obj) {
          dump_string(out, it.key());
          out += ": ";
        }
        dump(out, it.value(), indent, level + 1);
      }
      if (indent >= 0) newline(level);
      out += is_obj ? '}' : ']';
      return;
    }
    default: out += v.dump(); return;  // numbers: shortest round-trip, as Python's repr
  }
}

bool printable(std::uint32_t cp) {
  if (cp < 0x20 || cp == 0x7F) return false;
  if (cp >= 0x80 && cp < 0xA0) return false;  // C1 controls
  if (cp == 0xAD || cp == 0x2028 || cp == 0x2029 || (cp >= 0x200B && cp <= 0x200F) || cp == 0xFEFF) return false;
  if (cp >= 0xD800 && cp <= 0xDFFF) return false;  // lone surrogates / undecodable bytes
  if (cp >= 0xE000 && cp <= 0xF8FF) return false;  // private use
  return true;
}

}  // namespace

std::string py_json_dumps(const nlohmann::ordered_json& value, int indent) {
  std::string out;
  dump(out, value, indent, 0);
  return out;
}

std::string py_repr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t start = i;
    std::uint32_t cp = next_code_point(s, i);
    if (cp == static_cast<std::uint32_t>(quote) || cp == '\\') { out += '\\'; out += static_cast<char>(cp); }
    else if (cp == '\t') out += "\\t";
    else if (cp == '\n') out += "\\n";
    else if (cp == '\r') out += "\\r";
    else if (printable(cp)) out.append(s, start, i - start);
    else if (cp < 0x100) hex_escape(out, "\\x%02x", cp);
    else if (cp < 0x10000) hex_escape(out, "\\u%04x", cp);
    else hex_escape(out, "\\U%08x", cp);
  }
  out += quote;
  return out;
}

}  // namespace diffsynth
