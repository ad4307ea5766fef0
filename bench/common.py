"""Whole-process benchmark helpers: run a command, measure wall time and peak RSS (ru_maxrss of
the child via wait4), repeat, report medians. Both sides are measured in the same run, one after
the other, alternating, so machine noise hits both."""
import json
import os
import platform
import statistics
import struct
import subprocess
import time


def measure_rusage(cmd, env=None):
    """Wall seconds, peak RSS bytes and stdout of one run of cmd."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err.decode()[-2000:]}")
    return wall, ru.ru_maxrss * 1024, out.decode()


def compare(name, ours_cmd, ref_cmd, repeats=3, env=None):
    ours, ref = [], []
    for _ in range(repeats):
        ours.append(measure_rusage(ours_cmd, env))
        ref.append(measure_rusage(ref_cmd, env))
    row = {
        "name": name,
        "ours_wall_s": statistics.median(r[0] for r in ours),
        "ref_wall_s": statistics.median(r[0] for r in ref),
        "ours_peak_rss": max(r[1] for r in ours),
        "ref_peak_rss": max(r[1] for r in ref),
        "ours_out": ours[0][2],
        "ref_out": ref[0][2],
        "repeats": repeats,
    }
    row["speedup"] = row["ref_wall_s"] / row["ours_wall_s"]
    return row


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def write_sparse_safetensors(path, layout, dtype="BF16", itemsize=2):
    """Header with the real layout, data left as a hole: a real file, nothing written."""
    header, off = {}, 0
    for k, shape in layout:
        n = itemsize
        for d in shape:
            n *= d
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + off)
    return 8 + len(h) + off


def gib(b):
    return f"{b / 2 ** 30:.2f} GiB"
