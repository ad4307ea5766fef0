// A state dict: tensors by dotted name, in insertion order, with Python-dict `update`
// semantics (assigning an existing key keeps its position).
#pragma once
#include <torch/torch.h>

#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace diffsynth {

class StateDict {
 public:
  using Item = std::pair<std::string, torch::Tensor>;

  void set(const std::string& key, torch::Tensor value) {
    auto it = index_.find(key);
    if (it != index_.end()) {
      items_[it->second].second = std::move(value);
    } else {
      index_.emplace(key, items_.size());
      items_.emplace_back(key, std::move(value));
    }
  }
  void update(const StateDict& other) {
    for (const auto& [k, v] : other) set(k, v);
  }
  bool contains(const std::string& key) const { return index_.count(key) != 0; }
  const torch::Tensor& at(const std::string& key) const { return items_.at(index_.at(key)).second; }
  torch::Tensor* find(const std::string& key) {
    auto it = index_.find(key);
    return it == index_.end() ? nullptr : &items_[it->second].second;
  }
  std::size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  std::vector<Item>::const_iterator begin() const { return items_.begin(); }
  std::vector<Item>::const_iterator end() const { return items_.end(); }
  std::vector<Item>::iterator begin() { return items_.begin(); }
  std::vector<Item>::iterator end() { return items_.end(); }
  void clear() {
    items_.clear();
    index_.clear();
    non_tensor_keys.clear();
  }

  // Entries of a .pth that are not tensors (nested dicts, numbers): kept by name so a strict
  // load reports them as unexpected instead of dropping them silently.
  std::vector<std::string> non_tensor_keys;

 private:
  std::vector<Item> items_;
  std::unordered_map<std::string, std::size_t> index_;
};

}  // namespace diffsynth
