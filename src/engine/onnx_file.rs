//! What an ONNX file says before a session is built: the external data files its tensors live in, the names of
//! its graph inputs (which the TensorRT optimisation profile must name, no more and no fewer), the precision of its
//! weights and whether it computes attention in one operator or spells it out.
//!
//! Exports above 2 GB (Qwen3-Embedding 4B/8B, and many 0.6B exports) keep their weights in files such as
//! `model.onnx_data`, named inside the graph's protobuf. ONNX Runtime would only fail on a missing one deep inside
//! session creation; reading the names here lets start-up say which file is missing, and lets the TensorRT engine
//! cache hash the weights with the graph.
//!
//! This is a minimal reader of the protobuf wire format that walks only the messages that can hold tensors
//! (model → graph → initializers, sparse initializers, node attributes and their subgraphs) and seeks over
//! everything else, so a 2 GB graph with embedded weights costs a few reads, not a 2 GB parse. It is not a
//! validator: a file it cannot read is reported as having no external data, and ONNX Runtime gives the error.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use super::model::model_error;
use super::EngineError;

/// What [`read`] found in an ONNX file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnnxFile {
    /// External data files (resolved beside the graph, each once, in the graph's order), checked to exist.
    pub external_data: Vec<PathBuf>,
    /// The top-level graph's inputs that are fed at run time (not initializers), in the graph's order.
    pub inputs: Vec<String>,
    /// The precision most of the graph's weights are stored in: "fp32", "fp16", "bf16", "fp8" or "int8" (None
    /// when it has no float or quantized weights, or could not be read).
    pub weights: Option<&'static str>,
    /// How the graph computes attention, as far as its top-level node types tell.
    pub attention: Attention,
    /// How its weights are quantized, in words (e.g. "int4 weights, block 32, int8 compute"), when they are.
    pub quantization: Option<String>,
}

/// How a graph computes attention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Attention {
    /// Not known (no Softmax and no attention operator, or the file could not be read).
    #[default]
    Unknown,
    /// One attention operator per layer (ONNX `Attention`, or ONNX Runtime's `MultiHeadAttention`,
    /// `GroupQueryAttention`, ...): ONNX Runtime keeps one batch × heads × seq × seq tensor at a time, or none.
    Operator,
    /// Spelled out in MatMul, Softmax (and often Add, Where, IsNaN) nodes: several batch × heads × seq × seq
    /// tensors are alive at once (on a 0.6B decoder, a 3,027-token input needed 2.3 GB above its weights).
    SpelledOut,
}

/// Node types of a dynamically quantized int8 graph (onnxruntime.quantization's `quantize_dynamic`).
const DYNAMIC_INT8_OPERATORS: [&str; 4] = [
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
];

/// Node types that compute attention in one operator.
const ATTENTION_OPERATORS: [&str; 5] = [
    "Attention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "PackedMultiHeadAttention",
    "PagedAttention",
];

/// Reads what `onnx` names. A file this reader cannot follow gives an empty result (ONNX Runtime will say what is
/// wrong with it); a named external data file that is missing is an [`EngineError::Model`].
pub fn read(onnx: &Path) -> Result<OnnxFile, EngineError> {
    let file = File::open(onnx).map_err(|e| model_error(onnx, &format!("cannot open: {e}")))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut found = Found::default();
    if walk(&mut reader, len, Message::Model, &mut found).is_err() {
        return Ok(OnnxFile::default());
    }
    let quantization = found.quantization();
    let weights = found
        .weight_types
        .iter()
        .filter_map(|(&data_type, &count)| weight_precision(data_type).map(|name| (count, name)))
        .max()
        .map(|(_, name)| name);
    let inputs = found.inputs.into_iter().filter(|name| !found.initializers.contains(name)).collect();
    let base = onnx.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for location in found.locations {
        let path = base.join(&location);
        if files.contains(&path) {
            continue;
        }
        if !path.is_file() {
            return Err(model_error(
                &path,
                &format!(
                    "missing: {} keeps weights in this external data file (copy it beside the graph)",
                    onnx.display()
                ),
            ));
        }
        files.push(path);
    }
    let attention = if found.attention_operator {
        Attention::Operator
    } else if found.softmax {
        Attention::SpelledOut
    } else {
        Attention::Unknown
    };
    Ok(OnnxFile {
        external_data: files,
        inputs,
        weights,
        attention,
        quantization,
    })
}

/// Names collected while walking.
#[derive(Default)]
struct Found {
    locations: Vec<String>,
    inputs: Vec<String>,
    initializers: Vec<String>,
    /// Top-level initializers by ONNX data type.
    weight_types: std::collections::BTreeMap<u64, usize>,
    /// A node of one of [`ATTENTION_OPERATORS`] / a Softmax node was seen.
    attention_operator: bool,
    softmax: bool,
    /// The node being walked: its op type, and the name of the attribute being read.
    node_op: String,
    attribute_name: String,
    /// The attributes of the current `MatMulNBits` node read so far: bits, block_size, accuracy_level.
    nbits_attributes: [Option<u64>; 3],
    /// `MatMulNBits` nodes by (bits, block size, accuracy level).
    matmul_nbits: std::collections::BTreeMap<(u64, u64, u64), usize>,
    /// Nodes of dynamic int8 quantization (DynamicQuantizeLinear, MatMulInteger, DynamicQuantizeMatMul, ...).
    dynamic_int8: usize,
    /// DequantizeLinear nodes (a QDQ graph).
    dequantize: usize,
}

/// Default attributes of `MatMulNBits` (ONNX Runtime's contrib operator): 4 bits, accuracy level 0 (unset).
const NBITS_DEFAULTS: [u64; 3] = [4, 0, 0];

impl Found {
    /// Ends a node: a `MatMulNBits` node is counted with its attributes.
    fn end_node(&mut self) {
        if self.node_op == "MatMulNBits" {
            let [bits, block, level] = std::array::from_fn(|i| self.nbits_attributes[i].unwrap_or(NBITS_DEFAULTS[i]));
            *self.matmul_nbits.entry((bits, block, level)).or_default() += 1;
        }
        self.node_op.clear();
        self.nbits_attributes = [None; 3];
    }

    /// An integer field: an initializer's data type, or an integer attribute of a `MatMulNBits` node.
    fn note_integer(&mut self, message: Message, field: u64, value: u64) {
        match (message, field) {
            (Message::Initializer, 2) => *self.weight_types.entry(value).or_default() += 1,
            (Message::Attribute, 3) if self.node_op == "MatMulNBits" => {
                let names = ["bits", "block_size", "accuracy_level"];
                if let Some(slot) = names.iter().position(|n| *n == self.attribute_name) {
                    self.nbits_attributes[slot] = Some(value);
                }
            }
            _ => {}
        }
    }

    /// The graph's quantization in words, from the node types it uses.
    fn quantization(&self) -> Option<String> {
        if let Some((&(bits, block, level), _)) = self.matmul_nbits.iter().max_by_key(|(_, &count)| count) {
            // MatMulNBits' accuracy_level: the least precise type activations may be computed in.
            let compute = match level {
                1 => "fp32 compute",
                2 => "fp16 compute",
                3 => "bf16 compute",
                4 => "int8 compute",
                _ => "compute as the provider chooses",
            };
            let kinds = if self.matmul_nbits.len() > 1 {
                " (and other blockings)"
            } else {
                ""
            };
            return Some(format!("int{bits} weights, block {block}, {compute}{kinds}"));
        }
        if self.dynamic_int8 > 0 {
            return Some("int8 weights, int8 activations quantized per tensor at run time (dynamic)".to_owned());
        }
        if self.dequantize > 0 {
            return Some("QDQ: quantized tensors dequantized in the graph".to_owned());
        }
        None
    }
}

/// ONNX `TensorProto.DataType` values that say what precision weights are stored in.
fn weight_precision(data_type: u64) -> Option<&'static str> {
    match data_type {
        1 => Some("fp32"),
        10 => Some("fp16"),
        16 => Some("bf16"),
        17..=20 => Some("fp8"),
        2 | 3 => Some("int8"),
        _ => None,
    }
}

/// The protobuf messages walked; every other field is skipped.
#[derive(Clone, Copy)]
enum Message {
    Model,
    /// The model's own graph (its inputs are the model's inputs).
    TopGraph,
    /// A subgraph of a node attribute.
    Graph,
    /// The name of a top-level input.
    InputInfo,
    /// A top-level initializer (a weight).
    Initializer,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
}

/// A malformed or unsupported encoding; the caller gives up quietly.
struct Malformed;

impl Message {
    /// The message a length-delimited field of `self` holds, if it is one worth entering.
    fn child(self, field: u64) -> Option<Message> {
        match (self, field) {
            (Message::Model, 7) => Some(Message::TopGraph),
            (Message::TopGraph, 11) => Some(Message::InputInfo),
            (Message::Graph | Message::TopGraph, 1) => Some(Message::Node),
            (Message::TopGraph, 5) => Some(Message::Initializer),
            (Message::Graph, 5) => Some(Message::Tensor),
            (Message::Graph | Message::TopGraph, 15) => Some(Message::SparseTensor),
            (Message::Node, 5) => Some(Message::Attribute),
            (Message::Attribute, 5 | 10) => Some(Message::Tensor),
            (Message::Attribute, 6 | 11) => Some(Message::Graph),
            (Message::Attribute, 22 | 23) => Some(Message::SparseTensor),
            (Message::SparseTensor, 1 | 2) => Some(Message::Tensor),
            _ => None,
        }
    }
}

/// Walks the fields of one message that ends `len` bytes from here, collecting `external_data` locations.
/// Top-level initializers' names are kept too: graphs of old IR versions list them among the inputs.
fn walk<R: Read + Seek>(reader: &mut R, len: u64, message: Message, out: &mut Found) -> Result<(), Malformed> {
    let mut left = len;
    while left > 0 {
        let (tag, tag_len) = varint(reader)?;
        left = left.checked_sub(tag_len).ok_or(Malformed)?;
        let (field, wire) = (tag >> 3, tag & 7);
        let body = match wire {
            0 => {
                let (value, len) = varint(reader)?;
                out.note_integer(message, field, value);
                len
            }
            1 => skip(reader, 8)?,
            5 => skip(reader, 4)?,
            2 => {
                let (size, size_len) = varint(reader)?;
                left = left.checked_sub(size_len).ok_or(Malformed)?;
                if size > left {
                    return Err(Malformed);
                }
                if let (Message::Tensor | Message::Initializer, 13) = (message, field) {
                    if let Some(location) = entry_location(reader, size)? {
                        out.locations.push(location);
                    }
                } else if let (Message::InputInfo, 1) = (message, field) {
                    out.inputs.push(read_string(reader, size)?);
                } else if let (Message::Node, 4) = (message, field) {
                    let op_type = read_string(reader, size)?;
                    out.softmax |= op_type == "Softmax";
                    out.attention_operator |= ATTENTION_OPERATORS.contains(&op_type.as_str());
                    out.dynamic_int8 += usize::from(DYNAMIC_INT8_OPERATORS.contains(&op_type.as_str()));
                    out.dequantize += usize::from(op_type == "DequantizeLinear");
                    out.node_op = op_type;
                } else if let (Message::Attribute, 1) = (message, field) {
                    out.attribute_name = read_string(reader, size)?;
                } else if let (Message::Graph | Message::TopGraph, 1) = (message, field) {
                    walk(reader, size, Message::Node, out)?;
                    out.end_node();
                } else if let (Message::Tensor | Message::Initializer, 8) = (message, field) {
                    // Only a top-level initializer's name matters, but any tensor name is harmless to keep.
                    out.initializers.push(read_string(reader, size)?);
                } else if let Some(child) = message.child(field) {
                    walk(reader, size, child, out)?;
                } else {
                    skip(reader, size)?;
                }
                size
            }
            _ => return Err(Malformed),
        };
        left = left.checked_sub(body).ok_or(Malformed)?;
    }
    Ok(())
}

/// Reads one `StringStringEntryProto` (key 1, value 2) and returns the value when the key is `location`.
fn entry_location<R: Read>(reader: &mut R, size: u64) -> Result<Option<String>, Malformed> {
    let bytes = read_string(reader, size)?.into_bytes();
    let mut rest = bytes.as_slice();
    let (mut key, mut value) = (None, None);
    while !rest.is_empty() {
        let (tag, _) = varint(&mut rest)?;
        if tag & 7 != 2 {
            return Err(Malformed);
        }
        let (len, _) = varint(&mut rest)?;
        let len = usize::try_from(len).map_err(|_| Malformed)?;
        if len > rest.len() {
            return Err(Malformed);
        }
        let text = String::from_utf8_lossy(&rest[..len]).into_owned();
        rest = &rest[len..];
        match tag >> 3 {
            1 => key = Some(text),
            2 => value = Some(text),
            _ => {}
        }
    }
    Ok(if key.as_deref() == Some("location") { value } else { None })
}

fn read_string<R: Read>(reader: &mut R, size: u64) -> Result<String, Malformed> {
    if size > 64 * 1024 {
        return Err(Malformed);
    }
    let mut bytes = vec![0u8; size as usize];
    reader.read_exact(&mut bytes).map_err(|_| Malformed)?;
    String::from_utf8(bytes).map_err(|_| Malformed)
}

/// A base-128 varint and the bytes it took.
fn varint<R: Read>(reader: &mut R) -> Result<(u64, u64), Malformed> {
    let mut value = 0u64;
    for index in 0..10 {
        let mut byte = [0u8];
        reader.read_exact(&mut byte).map_err(|_| Malformed)?;
        value |= u64::from(byte[0] & 0x7f) << (7 * index);
        if byte[0] & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    Err(Malformed)
}

fn skip<R: Read + Seek>(reader: &mut R, n: u64) -> Result<u64, Malformed> {
    let offset = i64::try_from(n).map_err(|_| Malformed)?;
    reader.seek_relative(offset).map_err(|_| Malformed)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, body: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8];
        out.push(body.len() as u8);
        out.extend_from_slice(body);
        out
    }

    /// A model whose one initializer keeps its data in `location`, and has a raw_data field to skip.
    fn model(location: &str) -> Vec<u8> {
        let entry = [field(1, b"location"), field(2, location.as_bytes())].concat();
        let tensor = [
            vec![2 << 3, 10],
            field(8, b"w"),
            field(9, &[0u8; 40]),
            field(13, &entry),
            vec![14 << 3, 1],
        ]
        .concat();
        let input = |name: &[u8]| field(11, &field(1, name));
        let graph = [field(2, b"g"), field(5, &tensor), input(b"input_ids"), input(b"w")].concat();
        [vec![1 << 3, 8], field(7, &graph)].concat()
    }

    #[test]
    fn finds_external_data_and_checks_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let onnx = dir.path().join("model.onnx");
        std::fs::write(&onnx, model("model.onnx_data")).unwrap();
        let err = read(&onnx).unwrap_err().to_string();
        assert!(err.contains("model.onnx_data") && err.contains("missing"), "{err}");
        std::fs::write(dir.path().join("model.onnx_data"), b"weights").unwrap();
        let found = read(&onnx).unwrap();
        assert_eq!(found.external_data, vec![dir.path().join("model.onnx_data")]);
        // `w` is an initializer listed among the inputs (old IR versions do that): not a run-time input.
        assert_eq!(found.inputs, vec!["input_ids".to_owned()]);
        assert_eq!(found.weights, Some("fp16"), "data_type 10");
    }

    #[test]
    fn files_it_cannot_read_have_no_external_data() {
        let dir = tempfile::tempdir().unwrap();
        let onnx = dir.path().join("model.onnx");
        std::fs::write(&onnx, b"not a protobuf at all").unwrap();
        assert_eq!(read(&onnx).unwrap(), OnnxFile::default());
        let mut truncated = model("x.bin");
        truncated.truncate(truncated.len() - 10);
        std::fs::write(&onnx, truncated).unwrap();
        assert_eq!(read(&onnx).unwrap(), OnnxFile::default());
    }
}
