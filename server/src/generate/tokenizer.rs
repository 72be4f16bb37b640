//! The tokenizer and chat template of a GGUF model, built from its metadata alone (no
//! `tokenizer.json` beside it): a byte-level BPE (`tokenizer.ggml.model = gpt2`) with the GGUF's
//! control tokens as special tokens, and the Jinja `tokenizer.chat_template` rendered with
//! minijinja.

use candle_core::quantized::gguf_file::{Content, Value};
use serde::Serialize;
use tokenizers::{
    AddedToken, DecoderWrapper, PreTokenizerWrapper, Tokenizer,
    models::bpe::{BPE, Merges, Vocab},
    pre_tokenizers::{
        byte_level::ByteLevel, digits::Digits, sequence::Sequence, split::Split, split::SplitPattern,
    },
};

use super::{Decode, GenerateError};

/// GGUF `tokenizer.ggml.token_type` of control tokens (`<|im_start|>`, `<|endoftext|>`, ...):
/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// `LLAMA_TOKEN_TYPE_USER_DEFINED`: tokens matched verbatim in text but not special.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Tokens chat models end a turn with besides the GGUF's own eos: generation must stop on them
/// too, or the model goes on to write the next (user) turn itself.
const END_OF_TURN_TOKENS: [&str; 2] = ["<|im_end|>", "<|endoftext|>"];

/// The template used when the GGUF has none: ChatML, what SmolLM2 and Qwen are trained on.
const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Name of the chat template inside the minijinja environment.
const TEMPLATE_NAME: &str = "chat";

/// Llama 3's split (ByteLevel's own regex is GPT-2's; these replace it) (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`): case-insensitive contractions,
/// numbers in groups of up to three.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`): like Llama 3 with single digits.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One turn of a chat, as the chat template sees it (`message['role']`, `message['content']`).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

/// The tokenizer of a GGUF model: text to ids and back, its end-of-sequence ids and its chat
/// template.
#[derive(Debug)]
pub struct GgufTokenizer {
    tokenizer: Tokenizer,
    vocab_size: usize,
    bos: Option<(u32, String)>,
    eos: (u32, String),
    eos_ids: Vec<u32>,
    add_bos: bool,
    /// Holds the chat template (the GGUF's, or ChatML) compiled once.
    templates: minijinja::Environment<'static>,
}

/// What the chat template renders from.
#[derive(Serialize)]
struct TemplateContext<'a> {
    messages: &'a [ChatMessage],
    add_generation_prompt: bool,
    bos_token: &'a str,
    eos_token: &'a str,
}

impl GgufTokenizer {
    /// Builds the tokenizer from the `tokenizer.*` metadata of a GGUF file.
    pub fn from_gguf(content: &Content) -> Result<Self, GenerateError> {
        let metadata = Metadata(content);
        let model = metadata.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(GenerateError::Tokenizer(format!(
                "tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") is supported"
            )));
        }
        let tokens = metadata.strings("tokenizer.ggml.tokens")?;
        let token_types = metadata.token_types(tokens.len())?;
        let merges = metadata.merges()?;
        let pre = metadata.optional_string("tokenizer.ggml.pre")?;
        let mut tokenizer = build_bpe(&tokens, merges, pre.as_deref())?;
        add_vocabulary_tokens(&mut tokenizer, &tokens, &token_types)?;

        let token = |id: u32, key: &str| {
            tokens.get(id as usize).cloned().ok_or_else(|| {
                GenerateError::Tokenizer(format!(
                    "{key} {id} is outside the vocabulary of {}",
                    tokens.len()
                ))
            })
        };
        let eos_id = metadata.u32("tokenizer.ggml.eos_token_id")?;
        let eos = (eos_id, token(eos_id, "tokenizer.ggml.eos_token_id")?);
        let bos = match metadata.optional_u32("tokenizer.ggml.bos_token_id")? {
            Some(id) => Some((id, token(id, "tokenizer.ggml.bos_token_id")?)),
            None => None,
        };
        // llama.cpp's default for BPE vocabularies is not to add one.
        let add_bos = metadata
            .optional_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false)
            && bos.is_some();
        let eos_ids = end_of_sequence_ids(eos_id, &tokens, &token_types);
        let template = metadata
            .optional_string("tokenizer.chat_template")?
            .unwrap_or_else(|| CHATML_TEMPLATE.to_owned());
        Ok(Self {
            tokenizer,
            vocab_size: tokens.len(),
            bos,
            eos,
            eos_ids,
            add_bos,
            templates: template_environment(template)?,
        })
    }

    /// The ids of `text`. Special tokens written in the text (`<|im_start|>`) become their single
    /// ids; a BOS is put first only when the GGUF asks for it (`tokenizer.ggml.add_bos_token`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenerateError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| GenerateError::Tokenizer(format!("encoding: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if let (true, Some((bos, _))) = (self.add_bos, &self.bos) {
            ids.push(*bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Ids that end generation: the GGUF's eos, and `<|im_end|>` / `<|endoftext|>` when they are
    /// control tokens of this vocabulary. No duplicates; the GGUF's eos first.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_ids.clone()
    }

    /// Renders a chat into the prompt text with the GGUF's chat template (ChatML when it has
    /// none); with `add_generation_prompt`, ends with the opening of the assistant's turn.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, GenerateError> {
        let context = TemplateContext {
            messages,
            add_generation_prompt,
            bos_token: self.bos.as_ref().map_or("", |(_, text)| text),
            eos_token: &self.eos.1,
        };
        self.templates
            .get_template(TEMPLATE_NAME)
            .and_then(|template| template.render(context))
            .map_err(|e| GenerateError::Tokenizer(format!("chat template: {}", describe_template_error(&e))))
    }

    /// Size of the vocabulary (`tokenizer.ggml.tokens`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

impl Decode for GgufTokenizer {
    fn decode(&self, ids: &[u32]) -> String {
        // Decoding ids of this vocabulary cannot fail: the byte-level decoder replaces bytes that
        // are not UTF-8 (a character split across tokens) with U+FFFD. Ids outside the vocabulary
        // are skipped, like special tokens, rather than failing a whole stream.
        let known: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| (id as usize) < self.vocab_size)
            .collect();
        self.tokenizer.decode(&known, true).unwrap_or_default()
    }
}

/// The byte-level BPE with the pre-tokenizer `tokenizer.ggml.pre` names (llama.cpp's names).
fn build_bpe(tokens: &[String], merges: Merges, pre: Option<&str>) -> Result<Tokenizer, GenerateError> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    if vocab.len() != tokens.len() {
        return Err(GenerateError::Tokenizer(
            "tokenizer.ggml.tokens has duplicate tokens".into(),
        ));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| GenerateError::Tokenizer(format!("building the BPE: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, true, true))));
    Ok(tokenizer)
}

/// The split before BPE for llama.cpp's pre-tokenizer names. Unknown names are an error rather
/// than a guess: a wrong split gives a model ids it was not trained on, and it degrades silently.
fn pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper, GenerateError> {
    let byte_level = |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    let split = |pattern: &str| {
        Split::new(
            SplitPattern::Regex(pattern.to_owned()),
            tokenizers::SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(PreTokenizerWrapper::Split)
        .map_err(|e| GenerateError::Tokenizer(format!("pre-tokenizer regex: {e}")))
    };
    let wrapper = match pre.unwrap_or("default") {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        // Digits one by one, then the GPT-2 split (SmolLM's tokenizer.json: Digits + ByteLevel).
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ]))
        }
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![split(LLAMA3_PATTERN)?, byte_level(false)]))
        }
        "qwen2" | "deepseek-r1-qwen" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![split(QWEN2_PATTERN)?, byte_level(false)]))
        }
        other => {
            return Err(GenerateError::Tokenizer(format!(
                "tokenizer.ggml.pre {other:?} is not supported (known: default, gpt-2, smollm, \
                 starcoder, llama-bpe, qwen2)"
            )));
        }
    };
    Ok(wrapper)
}

/// Control tokens as special tokens (one id each, left out when decoding) and user-defined ones
/// as added tokens (one id each, kept in decoded text).
fn add_vocabulary_tokens(
    tokenizer: &mut Tokenizer,
    tokens: &[String],
    types: &[i32],
) -> Result<(), GenerateError> {
    let of_type = |wanted: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .filter(|(_, t)| **t == wanted)
            .map(|(token, _)| AddedToken::from(token.clone(), special))
            .collect()
    };
    let added = |e: tokenizers::Error| GenerateError::Tokenizer(format!("adding tokens: {e}"));
    tokenizer
        .add_special_tokens(of_type(TOKEN_TYPE_CONTROL, true))
        .map_err(added)?;
    tokenizer
        .add_tokens(of_type(TOKEN_TYPE_USER_DEFINED, false))
        .map_err(added)?;
    Ok(())
}

fn end_of_sequence_ids(eos: u32, tokens: &[String], types: &[i32]) -> Vec<u32> {
    let mut ids = vec![eos];
    for name in END_OF_TURN_TOKENS {
        let control = tokens
            .iter()
            .zip(types)
            .position(|(token, t)| token == name && *t == TOKEN_TYPE_CONTROL);
        if let Some(id) = control.map(|id| id as u32)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids
}

/// A minijinja environment that behaves like the one Hugging Face renders chat templates with
/// (`trim_blocks`, `lstrip_blocks`, `raise_exception`), holding the compiled template.
fn template_environment(template: String) -> Result<minijinja::Environment<'static>, GenerateError> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                message,
            ))
        },
    );
    env.add_template_owned(TEMPLATE_NAME, template).map_err(|e| {
        GenerateError::Tokenizer(format!(
            "chat template does not parse: {}",
            describe_template_error(&e)
        ))
    })?;
    Ok(env)
}

/// A template error with its causes (minijinja puts the template's own `raise_exception`
/// message in the detail).
fn describe_template_error(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Typed reads of GGUF metadata, with errors that name the key.
struct Metadata<'a>(&'a Content);

impl Metadata<'_> {
    fn get(&self, key: &str) -> Result<&Value, GenerateError> {
        self.0
            .metadata
            .get(key)
            .ok_or_else(|| GenerateError::Tokenizer(format!("the GGUF has no {key}")))
    }

    fn wrong(key: &str, e: candle_core::Error) -> GenerateError {
        GenerateError::Tokenizer(format!("{key}: {e}"))
    }

    fn string(&self, key: &str) -> Result<String, GenerateError> {
        self.get(key)?
            .to_string()
            .cloned()
            .map_err(|e| Self::wrong(key, e))
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>, GenerateError> {
        self.0.metadata.get(key).map(|_| self.string(key)).transpose()
    }

    fn u32(&self, key: &str) -> Result<u32, GenerateError> {
        self.get(key)?.to_u32().map_err(|e| Self::wrong(key, e))
    }

    fn optional_u32(&self, key: &str) -> Result<Option<u32>, GenerateError> {
        self.0.metadata.get(key).map(|_| self.u32(key)).transpose()
    }

    fn optional_bool(&self, key: &str) -> Result<Option<bool>, GenerateError> {
        self.0
            .metadata
            .get(key)
            .map(|v| v.to_bool().map_err(|e| Self::wrong(key, e)))
            .transpose()
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, GenerateError> {
        self.get(key)?
            .to_vec()
            .map_err(|e| Self::wrong(key, e))?
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| Self::wrong(key, e)))
            .collect()
    }

    /// `tokenizer.ggml.token_type`, one per token; all normal when absent.
    fn token_types(&self, count: usize) -> Result<Vec<i32>, GenerateError> {
        let key = "tokenizer.ggml.token_type";
        if !self.0.metadata.contains_key(key) {
            return Ok(vec![1; count]);
        }
        let types = self
            .get(key)?
            .to_vec()
            .map_err(|e| Self::wrong(key, e))?
            .iter()
            .map(|v| v.to_i32().map_err(|e| Self::wrong(key, e)))
            .collect::<Result<Vec<_>, _>>()?;
        if types.len() != count {
            return Err(GenerateError::Tokenizer(format!(
                "{key} has {} entries for {count} tokens",
                types.len()
            )));
        }
        Ok(types)
    }

    /// `tokenizer.ggml.merges`: `"left right"` pairs. Byte-level tokens never hold a space (it is
    /// `Ġ`), so the one space separates the pair.
    fn merges(&self) -> Result<Merges, GenerateError> {
        let key = "tokenizer.ggml.merges";
        self.strings(key)?
            .into_iter()
            .map(|merge| match merge.split_once(' ') {
                Some((left, right)) => Ok((left.to_owned(), right.to_owned())),
                None => Err(GenerateError::Tokenizer(format!(
                    "{key} entry {merge:?} is not a pair"
                ))),
            })
            .collect()
    }
}
