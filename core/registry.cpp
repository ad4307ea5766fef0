#include "core/registry.h"

#include <map>

#include "core/error.h"

namespace diffsynth {

namespace {
// Function-local statics: registration runs from other units' static initialisers.
std::map<std::string, ModelFactory>& models() {
  static std::map<std::string, ModelFactory> m;
  return m;
}
std::map<std::string, StateDictConverter>& converters() {
  static std::map<std::string, StateDictConverter> m;
  return m;
}
}  // namespace

bool Registry::add_model(const std::string& name, ModelFactory factory) {
  return models().emplace(name, std::move(factory)).second;
}
bool Registry::add_converter(const std::string& name, StateDictConverter converter) {
  return converters().emplace(name, std::move(converter)).second;
}
const ModelFactory* Registry::model(const std::string& name) {
  auto it = models().find(name);
  return it == models().end() ? nullptr : &it->second;
}
const StateDictConverter* Registry::converter(const std::string& name) {
  auto it = converters().find(name);
  return it == converters().end() ? nullptr : &it->second;
}
std::vector<std::string> Registry::model_names() {
  std::vector<std::string> out;
  for (const auto& [k, v] : models()) out.push_back(k);
  return out;
}
std::vector<std::string> Registry::converter_names() {
  std::vector<std::string> out;
  for (const auto& [k, v] : converters()) out.push_back(k);
  return out;
}

Kwargs::Kwargs(std::string class_name, const nlohmann::ordered_json& kwargs)
    : class_name_(std::move(class_name)), kwargs_(kwargs.is_null() ? nlohmann::ordered_json::object() : kwargs) {
  if (!kwargs_.is_object()) throw Error(class_name_ + "(): extra_kwargs must be a JSON object, got " + kwargs_.dump());
}

const nlohmann::ordered_json* Kwargs::take(const std::string& name) {
  auto it = kwargs_.find(name);
  if (it == kwargs_.end()) return nullptr;
  used_.insert(name);
  return &*it;
}

std::int64_t Kwargs::get_int(const std::string& name, std::int64_t d) {
  const auto* v = take(name);
  if (!v) return d;
  if (!v->is_number_integer()) throw Error(class_name_ + "(): '" + name + "' must be an integer, got " + v->dump());
  return v->get<std::int64_t>();
}
double Kwargs::get_float(const std::string& name, double d) {
  const auto* v = take(name);
  if (!v) return d;
  if (!v->is_number()) throw Error(class_name_ + "(): '" + name + "' must be a number, got " + v->dump());
  return v->get<double>();
}
bool Kwargs::get_bool(const std::string& name, bool d) {
  const auto* v = take(name);
  if (!v) return d;
  if (!v->is_boolean()) throw Error(class_name_ + "(): '" + name + "' must be true or false, got " + v->dump());
  return v->get<bool>();
}
void Kwargs::finish() const {
  for (auto it = kwargs_.begin(); it != kwargs_.end(); ++it)
    if (!used_.count(it.key()))
      throw Error(class_name_ + "() got an unexpected keyword argument '" + it.key() + "'");
}

}  // namespace diffsynth
