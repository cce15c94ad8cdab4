#!/usr/bin/env bash
# GPU check (issue 6, item 7): ResNet-50 fine-tuning images/s, mxft dist_sync_device vs plain Module.fit.
# On a GPU machine, from the repository root:
#
#   bash bench/gpu.sh                 # writes ${OUT:-bench/out}/gpu.json (and install.log on a failed install)
#                                     # gpu.json's "preflight": what mxft's preflight finds on each GPU here and
#                                     # whether it would let a job use them (the GPU half of `mxft-launch check`)
#   python -m bench gpu_report F      # then, here: BENCHMARKS.md's GPU section from that gpu.json
#
# MXFT_MXNET_WHEEL names the CUDA build for pip: a requirement (default mxnet-cu112==1.9.1, the newest
# CUDA wheel of MXNet 1.9.1, which needs Python <= 3.10 for numpy<1.24) or a path to a wheel file.
set -u
out=${OUT:-bench/out}
mkdir -p "$out"
wheel=${MXFT_MXNET_WHEEL:-mxnet-cu112==1.9.1}
python=${MXFT_GPU_PYTHON:-python3}
venv=/tmp/mxft-gpu-venv
if ! { "$python" -m venv "$venv" && "$venv/bin/pip" install -q "$wheel" "numpy<1.24" pyyaml psutil; } \
        >"$out/install.log" 2>&1; then
    "$python" - "$out" "$wheel" <<'PY'
import json, sys, time
out, wheel = sys.argv[1], sys.argv[2]
log = open(f"{out}/install.log", errors="replace").read()[-3000:]
json.dump({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": False,
           "env": {"error": f"pip could not install {wheel}"}, "error": f"install failed: {log}"},
          open(f"{out}/gpu.json", "w"), indent=2)
PY
    echo "install of $wheel failed; see $out/install.log" >&2
    exit 1
fi
PYTHONUNBUFFERED=1 timeout 540 "$venv/bin/python" -m bench.gpu --out "$out"
