#include "apps/diffsynth/app_paths.h"

#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/error.h"

namespace fs = std::filesystem;

namespace diffsynth::cli {

fs::path executable_dir() {
  std::error_code ec;
  const auto exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path(".") : exe.parent_path();
}

std::string default_tokenizer_dir(const std::string& name) {
  std::vector<fs::path> candidates;
  if (const char* data = std::getenv("DIFFSYNTH_DATA_DIR"); data && *data)
    candidates.emplace_back(fs::path(data) / name);
  const fs::path bin = executable_dir();
  candidates.push_back(bin.parent_path().parent_path() / "data" / name);  // <repo>/build*/bin
  candidates.push_back(bin.parent_path() / "data" / name);                // <prefix>/bin
  std::string tried;
  for (const auto& c : candidates) {
    std::error_code ec;
    if (fs::exists(c / "tokenizer.json", ec)) return c.lexically_normal().string();
    tried += (tried.empty() ? "" : ", ") + c.lexically_normal().string();
  }
  throw Error("no default tokenizer found (tried " + tried + "); pass --tokenizer DIR or set DIFFSYNTH_DATA_DIR");
}

std::string default_model_dir() {
  const auto dir = executable_dir().parent_path() / "models" / "tiny-qwen-image";
  std::error_code ec;
  return fs::is_directory(dir, ec) ? dir.lexically_normal().string() : std::string();
}

double peak_rss_bytes() {
  if (std::FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    double kb = -1;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "VmHWM: %lf kB", &kb) == 1) break;
    std::fclose(f);
    if (kb >= 0) return kb * 1024.0;
  }
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) * 1024.0;
}

}  // namespace diffsynth::cli
