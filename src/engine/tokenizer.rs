//! Tokenization with the model's `tokenizer.json`, corrected to the model's real settings.
//!
//! A model's `tokenizer.json` often carries padding and truncation that are not the model's (all-MiniLM-L6-v2's
//! says: pad to 128, truncate at 128, while sentence-transformers truncates at 256). Both are replaced here:
//! no padding (the batch pads to its longest input later) and truncation at the model's `max_tokens`.
//!
//! A prompt is joined to each text as sentence-transformers joins it (`prompt + text`, no separator) and the joined
//! string is tokenized, so the prompt counts toward `max_tokens`, truncation cuts the end of the text and keeps the
//! prompt, and the special tokens the tokenizer's post-processor adds (a decoder's closing EOS) survive truncation.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::model::{model_error, ModelInfo};
use super::EngineError;

/// One tokenized input, ready to be padded into a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, special tokens included, after truncation.
    pub ids: Vec<i64>,
    /// Token type ids (segment ids), same length as `ids`.
    pub type_ids: Vec<i64>,
    /// Whether the input was cut at the model's max tokens.
    pub truncated: bool,
}

/// The model's tokenizer with batch-longest padding (done by the session) and the model's truncation length.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_tokens: usize,
    pad_id: i64,
    lower_case: bool,
}

// === impl TextTokenizer ===

impl TextTokenizer {
    /// Loads `tokenizer.json` and overrides its padding and truncation with the model's settings.
    pub fn load(model: &ModelInfo) -> Result<TextTokenizer, EngineError> {
        let mut tokenizer = Self::from_file(&model.tokenizer_path, model.max_tokens)?;
        tokenizer.lower_case = model.do_lower_case;
        Ok(tokenizer)
    }

    /// Loads a tokenizer file with the given truncation length.
    pub fn from_file(path: &Path, max_tokens: usize) -> Result<TextTokenizer, EngineError> {
        // The engine tokenizes one input at a time on threads the daemon chooses; the crate's own rayon pool would
        // only compete with ONNX Runtime for the same cores.
        tokenizers::utils::parallelism::set_parallelism(false);
        let mut inner = Tokenizer::from_file(path).map_err(|e| model_error(path, &format!("cannot load tokenizer: {e}")))?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id as i64)
            .or_else(|| {
                ["[PAD]", "<pad>", "<|endoftext|>"]
                    .iter()
                    .find_map(|t| inner.token_to_id(t))
                    .map(i64::from)
            })
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| model_error(path, &format!("cannot set truncation to {max_tokens}: {e}")))?;
        Ok(TextTokenizer {
            inner,
            max_tokens,
            pad_id,
            lower_case: false,
        })
    }

    /// The truncation length.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The id used for padding.
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// Tokenizes one input. With `truncate == false` an over-long input is [`EngineError::InputTooLong`]
    /// (with index 0: the caller knows the real index).
    pub fn encode(&self, text: &str, truncate: bool) -> Result<Encoded, EngineError> {
        if self.lower_case {
            return self.encode_exact(&text.to_lowercase(), truncate);
        }
        self.encode_exact(text, truncate)
    }

    fn encode_exact(&self, text: &str, truncate: bool) -> Result<Encoded, EngineError> {
        // A very long text is first tokenized from a prefix: if the prefix alone overflows max_tokens, its first
        // max_tokens tokens are the whole text's (the cut is at whitespace, where pre-tokenization splits anyway),
        // and a 10 MB input costs no more than a few KB of it. Otherwise the whole text is tokenized.
        let window = self.max_tokens.saturating_mul(PREFIX_BYTES_PER_TOKEN);
        let tokenize = |text: &str| self.inner.encode(text, true).map_err(|e| EngineError::Tokenizer(e.to_string()));
        let encoding = match prefix_cut(text, window) {
            Some(cut) => {
                let prefix = tokenize(&text[..cut])?;
                if prefix.get_overflowing().is_empty() {
                    tokenize(text)?
                } else {
                    prefix
                }
            }
            None => tokenize(text)?,
        };
        self.encoded(&encoding, truncate)
    }

    /// Tokenizes one (query, document) pair as a cross-encoder reads it: the tokenizer's pair template (`[CLS] q
    /// [SEP] d [SEP]` with segment ids for BERT), truncated longest-first to `max_tokens` as sentence-transformers'
    /// `truncation=True` does. With `truncate == false` an over-long pair is [`EngineError::InputTooLong`].
    pub fn encode_pair(&self, query: &str, document: &str, truncate: bool) -> Result<Encoded, EngineError> {
        let (query, document) = if self.lower_case {
            (query.to_lowercase().into(), document.to_lowercase().into())
        } else {
            (std::borrow::Cow::Borrowed(query), std::borrow::Cow::Borrowed(document))
        };
        let tokenize = |document: &str| {
            self.inner
                .encode((query.as_ref(), document), true)
                .map_err(|e| EngineError::Tokenizer(e.to_string()))
        };
        // As for one text: a very long document whose prefix alone overflows max_tokens keeps no token past that
        // prefix (longest-first truncation keeps at most max_tokens of it), so the prefix is tokenized instead.
        let window = self.max_tokens.saturating_mul(PREFIX_BYTES_PER_TOKEN);
        let encoding = match prefix_cut(&document, window) {
            Some(cut) if self.overflows(&document[..cut])? => tokenize(&document[..cut])?,
            _ => tokenize(&document)?,
        };
        self.encoded(&encoding, truncate)
    }

    /// A tokenizer's encoding as the engine feeds it; an over-long one is [`EngineError::InputTooLong`] unless
    /// `truncate`.
    fn encoded(&self, encoding: &tokenizers::Encoding, truncate: bool) -> Result<Encoded, EngineError> {
        let truncated = !encoding.get_overflowing().is_empty();
        if truncated && !truncate {
            return Err(EngineError::InputTooLong {
                index: 0,
                max_tokens: self.max_tokens,
            });
        }
        Ok(Encoded {
            ids: encoding.get_ids().iter().map(|&id| i64::from(id)).collect(),
            type_ids: encoding.get_type_ids().iter().map(|&id| i64::from(id)).collect(),
            truncated,
        })
    }

    /// Whether `text` alone has more than `max_tokens` tokens.
    fn overflows(&self, text: &str) -> Result<bool, EngineError> {
        let encoding = self.inner.encode(text, true).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(!encoding.get_overflowing().is_empty())
    }

    /// Tokenizes documents, each paired with `query`, naming the failing index in errors.
    pub fn encode_pairs<S: AsRef<str>>(&self, query: &str, documents: &[S], truncate: bool) -> Result<Vec<Encoded>, EngineError> {
        documents
            .iter()
            .enumerate()
            .map(|(index, document)| {
                self.encode_pair(query, document.as_ref(), truncate).map_err(|e| match e {
                    EngineError::InputTooLong { max_tokens, .. } => EngineError::InputTooLong { index, max_tokens },
                    other => other,
                })
            })
            .collect()
    }

    /// Tokenizes several inputs, each behind `prompt` when there is one, naming the failing index in errors.
    pub fn encode_all<S: AsRef<str>>(&self, texts: &[S], prompt: Option<&str>, truncate: bool) -> Result<Vec<Encoded>, EngineError> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let encoded = match prompt {
                    Some(prompt) if !prompt.is_empty() => self.encode(&[prompt, text.as_ref()].concat(), truncate),
                    _ => self.encode(text.as_ref(), truncate),
                };
                encoded.map_err(|e| match e {
                    EngineError::InputTooLong { max_tokens, .. } => EngineError::InputTooLong { index, max_tokens },
                    other => other,
                })
            })
            .collect()
    }
}

/// Bytes of text per allowed token tried first for very long inputs (English averages about 4-5).
const PREFIX_BYTES_PER_TOKEN: usize = 16;

/// Where to cut a text longer than twice `window` bytes: the last whitespace before `window` (else the char
/// boundary there). `None` for texts short enough to tokenize whole.
fn prefix_cut(text: &str, window: usize) -> Option<usize> {
    if text.len() <= window.saturating_mul(2) {
        return None;
    }
    let mut cut = window;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let at_space = text[..cut].rfind(char::is_whitespace).filter(|&i| i > window / 2);
    Some(at_space.unwrap_or(cut))
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("max_tokens", &self.max_tokens)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_cut;

    #[test]
    fn prefix_cut_is_at_whitespace_and_char_boundaries() {
        assert_eq!(prefix_cut("short text", 100), None);
        let text = "word ".repeat(100);
        let cut = prefix_cut(&text, 52).unwrap();
        assert_eq!(&text[cut..cut + 1], " ");
        assert!(cut <= 52);
        let cjk = "機".repeat(100);
        let cut = prefix_cut(&cjk, 50).unwrap();
        assert!(cjk.is_char_boundary(cut));
    }
}
