// One exception type for every user-facing failure: bad files, bad keys, bad options.
// Its message is one printable line that names the file / key and the problem; the CLI prints
// it and exits with status 2.
#pragma once
#include <stdexcept>
#include <string>

namespace diffsynth {

// Escapes control characters and bytes that are not valid UTF-8 as \xNN, so a message built
// from file contents (key names, parser excerpts) stays one printable UTF-8 line.
std::string one_line(const std::string& text);

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(one_line(message)) {}
};

// "<path>: <problem>"
[[noreturn]] inline void fail(const std::string& path, const std::string& problem) {
  throw Error(path + ": " + problem);
}

}  // namespace diffsynth
