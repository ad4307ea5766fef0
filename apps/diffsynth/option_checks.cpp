#include "apps/diffsynth/option_checks.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <thread>

#include "core/dtype.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/loader/keys.h"
#include "core/vram/layers.h"

namespace diffsynth::cli {

namespace {
std::string number_text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}
}  // namespace

CLI::Validator finite_in(double lo, double hi, bool lo_open) {
  const std::string range = (lo_open ? "(" : "[") + number_text(lo) + ", " + number_text(hi) + "]";
  return CLI::Validator(
      [lo, hi, lo_open, range](std::string& input) -> std::string {
        char* end = nullptr;
        errno = 0;
        const double v = std::strtod(input.c_str(), &end);
        if (input.empty() || *end != '\0') return "expected a number, got '" + input + "'";
        if (!std::isfinite(v) || errno == ERANGE) return "must be a finite number in " + range + ", got " + input;
        if (v > hi || v < lo || (lo_open && v == lo)) return "must be in " + range + ", got " + input;
        return "";
      },
      "in " + range);
}

int max_threads() {
  const long online = ::sysconf(_SC_NPROCESSORS_ONLN);
  const unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int>(std::max<long>(1, std::max<long>(online, static_cast<long>(hw))));
}

CLI::Validator thread_count() {
  const int most = max_threads();
  return CLI::Validator(
      [most](std::string& input) -> std::string {
        char* end = nullptr;
        errno = 0;
        const long v = std::strtol(input.c_str(), &end, 10);
        if (input.empty() || *end != '\0' || errno == ERANGE || v < 1 || v > most)
          return "must be a whole number from 1 to " + std::to_string(most) + " (this machine's CPUs), got " + input;
        return "";
      },
      "in [1, " + std::to_string(most) + "]");
}

CLI::Validator throwing_check(std::function<void(const std::string&)> check, std::string description) {
  return CLI::Validator(
      [check = std::move(check)](std::string& input) -> std::string {
        try {
          check(input);
        } catch (const Error& e) {
          return e.what();
        }
        return "";
      },
      std::move(description));
}

CLI::Validator computation_dtype() {
  return throwing_check([](const std::string& s) { parse_computation_dtype(s); }, "bfloat16|float32|float16");
}

CLI::Validator seed_value() {
  return throwing_check([](const std::string& s) { parse_seed(s); }, "in [0, 2^64-1] or -1");
}

std::optional<std::uint64_t> parse_seed(const std::string& text) {
  if (text == "-1") return std::nullopt;  // draw one (recorded in the output)
  const bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
  if (!digits) throw Error("must be a whole number from 0 to 18446744073709551615 (or -1 to draw one), got '" + text + "'");
  errno = 0;
  const unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
  if (errno == ERANGE) throw Error(text + " is past the largest seed, 18446744073709551615 (2^64-1)");
  return static_cast<std::uint64_t>(v);
}

void check_model_files(const std::string& arg, const std::string& option) {
  try {
    for (const auto& p : expand_model_paths({arg})) ::close(open_regular_file(p, nullptr));
  } catch (const Error& e) {
    throw Error(option.empty() ? std::string(e.what()) : option + " " + e.what());
  }
}

void check_memory(double bytes_needed, const std::string& what, const torch::Device& device) {
  double available = 0;
  std::string where = "this machine's memory";
  if (device.is_cuda()) {
    if (const auto info = device_mem_info(device)) available = static_cast<double>(info->first);
    where = device.str();
  } else {
    available = static_cast<double>(available_cpu_memory_bytes());
  }
  if (available <= 0 || bytes_needed <= available) return;
  throw Error(what + " needs about " + human_bytes(bytes_needed) + ", and " + where + " has " + human_bytes(available) +
              " available");
}

}  // namespace diffsynth::cli
