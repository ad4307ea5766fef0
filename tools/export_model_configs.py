"""Exports DiffSynth-Studio's MODEL_CONFIGS table to configs/model_configs.json.

The table is data (hashes, names, dotted class paths, constructor kwargs), carried over value for
value so a checkpoint the reference recognises is recognised here. Run with the pinned reference:
    $VENV/bin/python tools/export_model_configs.py > configs/model_configs.json
"""
import json
import sys

import diffsynth
from diffsynth.configs.model_configs import MODEL_CONFIGS


def plain(v):
    # extra_kwargs hold tuples, torch dtypes and the like in a few entries; keep JSON-able forms.
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return {"__repr__": repr(v)}


entries = []
for c in MODEL_CONFIGS:
    e = {"model_hash": c["model_hash"], "model_name": c["model_name"], "model_class": c["model_class"]}
    if "state_dict_converter" in c:
        e["state_dict_converter"] = c["state_dict_converter"]
    if "extra_kwargs" in c:
        e["extra_kwargs"] = plain(c["extra_kwargs"])
    if "quant_config" in c:
        e["quant_config"] = plain(c["quant_config"])
    entries.append(e)

version = getattr(diffsynth, "__version__", None)
if version is None:
    from importlib.metadata import version as _v
    version = _v("diffsynth")
json.dump({"source": f"diffsynth {version} diffsynth.configs.model_configs.MODEL_CONFIGS",
           "model_configs": entries}, sys.stdout, indent=1, ensure_ascii=False)
sys.stdout.write("\n")
