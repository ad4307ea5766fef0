# Embeds the file IN as a C++ string constant in OUT (used for configs/model_configs.json).
file(READ ${IN} _content HEX)
string(LENGTH "${_content}" _len)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," _bytes "${_content}")
file(WRITE ${OUT} "// Generated from ${IN}; do not edit.\n#include <cstddef>\nnamespace diffsynth::generated {\nextern const unsigned char kModelConfigsJson[] = {${_bytes} 0x00};\nextern const std::size_t kModelConfigsJsonSize = sizeof(kModelConfigsJson) - 1;\n}\n")
