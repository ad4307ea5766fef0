// Python's json.dumps formatting (ensure_ascii, ", " / ": " separators, indent=N), so the
// messages we print are byte-for-byte the reference's.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace diffsynth {

std::string py_json_dumps(const nlohmann::ordered_json& value, int indent = -1);
// Python's repr() of a str (quote choice and escapes as CPython does).
std::string py_repr(const std::string& utf8);

}  // namespace diffsynth
