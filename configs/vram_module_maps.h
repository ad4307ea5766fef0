// The VRAM management module maps (reference: diffsynth/configs/vram_management_module_maps.py),
// keyed by the reference's dotted class names. C++ layers declare the reference classes they
// stand for (Module::reference_classes), so a map entry matches as the reference's isinstance.
#pragma once
#include <string>
#include <vector>

namespace diffsynth {

enum class VRAMWrapperKind { AutoWrappedModule, AutoWrappedLinear, AutoWrappedNonRecurseModule };

struct VRAMModuleMapEntry {
  std::string source;  // e.g. "torch.nn.Linear"
  VRAMWrapperKind target;
};

// The map of a model class (dotted reference name), in the reference's dict order (= match
// priority), or null when the reference has none (the model is then wrapped whole).
const std::vector<VRAMModuleMapEntry>* vram_module_map(const std::string& model_class);
std::vector<std::string> vram_module_map_classes();

}  // namespace diffsynth
