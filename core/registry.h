// Self-registering tables of model classes and state-dict converters, keyed by the
// reference's dotted Python names so config entries carry over value for value:
//   DIFFSYNTH_REGISTER_MODEL("diffsynth.models.qwen_image_controlnet.QwenImageBlockWiseControlNet", factory)
// sits at the bottom of the model's own file; nothing else needs editing.
#pragma once
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/loader/state_dict.h"
#include "core/module.h"

namespace diffsynth {

// Builds a model on meta from the config entry's extra_kwargs (a JSON object, may be empty).
using ModelFactory = std::function<std::shared_ptr<Module>(const nlohmann::ordered_json& kwargs)>;
// DiffSynth's state_dict_converter: file keys in, model keys out (may drop keys).
using StateDictConverter = std::function<StateDict(const StateDict&)>;

class Registry {
 public:
  static bool add_model(const std::string& dotted_name, ModelFactory factory);
  static bool add_converter(const std::string& dotted_name, StateDictConverter converter);
  static const ModelFactory* model(const std::string& dotted_name);
  static const StateDictConverter* converter(const std::string& dotted_name);
  static std::vector<std::string> model_names();
  static std::vector<std::string> converter_names();
};

// Reads constructor keyword arguments the way Python binds them: known names with types
// checked, and any name left over is an error naming the class.
class Kwargs {
 public:
  Kwargs(std::string class_name, const nlohmann::ordered_json& kwargs);
  std::int64_t get_int(const std::string& name, std::int64_t default_value);
  double get_float(const std::string& name, double default_value);
  bool get_bool(const std::string& name, bool default_value);
  // Python lists / tuples, given as JSON arrays (every element type-checked).
  std::vector<std::int64_t> get_int_list(const std::string& name, std::vector<std::int64_t> default_value);
  std::vector<double> get_float_list(const std::string& name, std::vector<double> default_value);
  std::vector<bool> get_bool_list(const std::string& name, std::vector<bool> default_value);
  // Throws if any keyword was not consumed.
  void finish() const;

 private:
  const nlohmann::ordered_json* take(const std::string& name);
  std::string class_name_;
  nlohmann::ordered_json kwargs_;
  std::set<std::string> used_;
};

namespace kwargs_detail {
template <typename T, typename Check>
std::vector<T> list(const std::string& class_name, const std::string& name, const nlohmann::ordered_json* v,
                    std::vector<T> d, Check is_ok, const char* what) {
  if (!v) return d;
  if (!v->is_array()) throw Error(class_name + "(): '" + name + "' must be a list of " + what + ", got " + v->dump());
  std::vector<T> out;
  for (const auto& e : *v) {
    if (!is_ok(e)) throw Error(class_name + "(): '" + name + "' must be a list of " + what + ", got " + v->dump());
    out.push_back(e.template get<T>());
  }
  return out;
}
}  // namespace kwargs_detail
inline std::vector<std::int64_t> Kwargs::get_int_list(const std::string& name, std::vector<std::int64_t> d) {
  return kwargs_detail::list<std::int64_t>(class_name_, name, take(name), std::move(d),
                                           [](const auto& e) { return e.is_number_integer(); }, "integers");
}
inline std::vector<double> Kwargs::get_float_list(const std::string& name, std::vector<double> d) {
  return kwargs_detail::list<double>(class_name_, name, take(name), std::move(d),
                                     [](const auto& e) { return e.is_number(); }, "numbers");
}
inline std::vector<bool> Kwargs::get_bool_list(const std::string& name, std::vector<bool> d) {
  return kwargs_detail::list<bool>(class_name_, name, take(name), std::move(d),
                                   [](const auto& e) { return e.is_boolean(); }, "booleans");
}

}  // namespace diffsynth

#define DIFFSYNTH_CONCAT_INNER(a, b) a##b
#define DIFFSYNTH_CONCAT(a, b) DIFFSYNTH_CONCAT_INNER(a, b)
#define DIFFSYNTH_REGISTER_MODEL(dotted_name, factory) \
  static const bool DIFFSYNTH_CONCAT(diffsynth_model_registered_, __LINE__) = ::diffsynth::Registry::add_model(dotted_name, factory)
#define DIFFSYNTH_REGISTER_CONVERTER(dotted_name, fn) \
  static const bool DIFFSYNTH_CONCAT(diffsynth_converter_registered_, __LINE__) = ::diffsynth::Registry::add_converter(dotted_name, fn)
