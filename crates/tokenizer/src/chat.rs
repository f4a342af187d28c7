//! Chat templates: the Jinja template in `tokenizer.chat_template`, rendered
//! as Hugging Face's `apply_chat_template` renders it.
//!
//! Hugging Face runs templates in a sandboxed jinja2 environment with
//! `trim_blocks`, `lstrip_blocks` and loop controls, plus `raise_exception`,
//! `strftime_now` and a `tojson` that is Python's `json.dumps`. This module
//! does the same with [minijinja], adding Python's string and dict methods
//! (`.strip()`, `.startswith()`, `.items()`, ...) through `minijinja-contrib`.
//!
//! A template comes from the model file and is untrusted: it gets no loader
//! (no `include` or `import` of files, no network), a budget of instructions
//! ("fuel"), a cap on the output size, and a sandbox that bounds every
//! operation that could build a large value — string repetition and
//! concatenation, `format` widths, `indent`, `join`, `replace`, `batch`,
//! nesting, captured output, constant folding while compiling — and the
//! total work of a render ([`Limits`]; how: the `sandbox` module). A hostile
//! or runaway template ends in a [`TemplateError`], fast and in bounded
//! memory, rather than a hang or an abort.
//!
//! A model without a template: [`ChatTemplate::from_gguf`] returns `None` and
//! the caller decides; [`ChatTemplate::chatml`] is the common fallback
//! (`<|im_start|>role\ncontent<|im_end|>\n`), the format llama.cpp also falls
//! back to.
//!
//! ```
//! use tokenizer::chat::{ChatContext, ChatTemplate, Message};
//!
//! let template = ChatTemplate::chatml();
//! let ctx = ChatContext {
//!     messages: vec![Message::new("user", "Hello!")],
//!     add_generation_prompt: true,
//!     ..ChatContext::default()
//! };
//! assert_eq!(
//!     template.render(&ctx)?,
//!     "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
//! );
//! # Ok::<(), tokenizer::chat::TemplateError>(())
//! ```

use indexmap::IndexMap;
use std::fmt::Write as _;
use std::sync::Arc;

use gguf_format::{GgufHeader, Value as GgufValue};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Deserializer, Serialize};

use crate::TokenizerError;

mod sandbox;

pub use sandbox::Limits;

/// The error of template parsing and rendering: the crate's one error type.
pub type TemplateError = TokenizerError;

/// The metadata key holding a model's chat template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// The ChatML template, the fallback for models that carry none.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Default instruction budget of one render.
pub const DEFAULT_FUEL: u64 = 20_000_000;
/// Default cap on the rendered output, in bytes; also the largest value.
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;
/// Default budget of bytes made, copied or measured in one render.
pub const DEFAULT_MAX_WORK: u64 = 1 << 30;
/// Default cap on the elements of one list a template builds.
pub const DEFAULT_MAX_ITEMS: usize = 1 << 20;
/// Default cap on how deeply lists and maps nest.
pub const DEFAULT_MAX_DEPTH: usize = 64;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            fuel: DEFAULT_FUEL,
            max_output: DEFAULT_MAX_OUTPUT,
            max_work: DEFAULT_MAX_WORK,
            max_items: DEFAULT_MAX_ITEMS,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// One chat message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The text (`null` in JSON reads as empty).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    /// Other fields (`tool_calls`, `name`, ...), passed to the template as they are, in order.
    #[serde(flatten)]
    pub extra: IndexMap<String, Value>,
}

impl Message {
    /// A message with just a role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            extra: IndexMap::new(),
        }
    }
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// What a template is rendered with: the variables `apply_chat_template` passes.
///
/// Deserialize it straight from JSON text ([`ChatContext::from_json`] or
/// `serde_json::from_str`): objects inside (tool schemas) then keep their key
/// order, which `tojson` reproduces. Going through a `serde_json::Value`
/// first would sort the keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatContext {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Whether to end with the opening of an assistant turn.
    #[serde(default)]
    pub add_generation_prompt: bool,
    /// The BOS token's text.
    #[serde(default)]
    pub bos_token: String,
    /// The EOS token's text.
    #[serde(default)]
    pub eos_token: String,
    /// Other variables (`tools`, `documents`, `date_string`, ...), passed as they are.
    #[serde(flatten)]
    pub extra: IndexMap<String, Value>,
}

impl ChatContext {
    /// Parses a context from JSON shaped like `{"messages": [...], "add_generation_prompt": true, ...}`.
    pub fn from_json(json: &str) -> Result<ChatContext, TemplateError> {
        serde_json::from_str(json).map_err(|e| TokenizerError::Context(e.to_string()))
    }
}

/// The clock `strftime_now` reads.
pub type Clock = Arc<dyn Fn() -> chrono::NaiveDateTime + Send + Sync>;

/// The current time in UTC (Hugging Face uses the local time of the process).
fn system_clock() -> chrono::NaiveDateTime {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    chrono::DateTime::from_timestamp(now.as_secs() as i64, now.subsec_nanos())
        .unwrap_or_default()
        .naive_utc()
}

/// A chat template with its sandbox limits.
pub struct ChatTemplate {
    source: String,
    clock: Clock,
    limits: Limits,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// Marks an error raised by the template's own `raise_exception`.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl ChatTemplate {
    /// Compiles `source` with the default limits and the system clock.
    pub fn new(source: &str) -> Result<ChatTemplate, TemplateError> {
        Self::with_options(
            source,
            Arc::new(system_clock),
            DEFAULT_FUEL,
            DEFAULT_MAX_OUTPUT,
        )
    }

    /// Compiles `source` with `clock` for `strftime_now`, an instruction budget
    /// `fuel` per render and an output cap of `max_output` bytes (the other
    /// limits at their defaults).
    pub fn with_options(
        source: &str,
        clock: Clock,
        fuel: u64,
        max_output: usize,
    ) -> Result<ChatTemplate, TemplateError> {
        Self::with_limits(
            source,
            clock,
            Limits {
                fuel,
                max_output,
                ..Limits::default()
            },
        )
    }

    /// Compiles `source` with `clock` for `strftime_now` and the sandbox `limits`.
    pub fn with_limits(
        source: &str,
        clock: Clock,
        limits: Limits,
    ) -> Result<ChatTemplate, TemplateError> {
        sandbox::compile(TEMPLATE_NAME, source, &limits).map_err(compile_error)?;
        Ok(ChatTemplate {
            source: source.to_string(),
            clock,
            limits,
        })
    }

    /// The template's Jinja source (to tell, for instance, which tool-call
    /// format it writes).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The sandbox limits of a render.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The ChatML template ([`CHATML_TEMPLATE`]).
    pub fn chatml() -> ChatTemplate {
        Self::new(CHATML_TEMPLATE).expect("the ChatML template compiles")
    }

    /// The template in `tokenizer.chat_template`, or `None` if the file has none.
    pub fn from_gguf(header: &GgufHeader) -> Result<Option<ChatTemplate>, TemplateError> {
        match header.get(CHAT_TEMPLATE_KEY) {
            None => Ok(None),
            Some(GgufValue::String(s)) => Self::new(s).map(Some),
            Some(v) => Err(TokenizerError::InvalidMetadata {
                key: CHAT_TEMPLATE_KEY.to_string(),
                message: format!("expected string, found {}", v.type_name()),
            }),
        }
    }

    /// The environment of one render: Hugging Face's globals and filters,
    /// Python's methods, and the sandbox's guards charging `budget`.
    fn environment(&self, budget: &Arc<sandbox::Budget>) -> Environment<'_> {
        let mut env = Environment::new();
        env.set_fuel(Some(self.limits.fuel));
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
        });
        let clock = self.clock.clone();
        env.add_function(
            "strftime_now",
            move |format: String| -> Result<String, Error> { strftime(&clock(), &format) },
        );
        let max_json = self.limits.max_output;
        env.add_filter("tojson", move |value: &Value, kwargs: Kwargs| {
            tojson(value, kwargs, max_json)
        });
        // Also installs Python's methods (minijinja-contrib's pycompat).
        sandbox::install(&mut env, budget);
        env
    }

    /// Renders the template with `ctx`.
    ///
    /// Bounded in time and memory: see [`Limits`]. Keys of `ctx.extra`
    /// starting with `~` are refused (the sandbox's own names).
    pub fn render(&self, ctx: &ChatContext) -> Result<String, TemplateError> {
        if let Some(key) = ctx.extra.keys().find(|k| k.starts_with('~')) {
            return Err(TokenizerError::Context(format!(
                "variable `{key}`: names starting with `~` are reserved"
            )));
        }
        let budget = sandbox::Budget::new(self.limits);
        let env = self.environment(&budget);
        let (instructions, blocks) =
            sandbox::compile(TEMPLATE_NAME, &self.source, &self.limits).map_err(compile_error)?;
        let root = Value::from_serialize(ctx);
        let mut out = String::new();
        let result = {
            let mut output = minijinja::machinery::make_string_output(&mut out);
            minijinja::machinery::Vm::new(&env)
                .eval(
                    &instructions,
                    root,
                    &blocks,
                    &mut output,
                    minijinja::AutoEscape::None,
                )
                .map(|_| ())
        };
        match result {
            Ok(()) if out.len() > self.limits.max_output => Err(
                TokenizerError::TemplateOutputTooLarge(self.limits.max_output),
            ),
            Ok(()) => Ok(out),
            Err(e) => Err(match budget.exceeded() {
                Some(sandbox::Exceeded::Output) => {
                    TokenizerError::TemplateOutputTooLarge(self.limits.max_output)
                }
                Some(_) => TokenizerError::TemplateLimit(describe(&e)),
                None if e.kind() == ErrorKind::OutOfFuel => {
                    TokenizerError::TemplateOutOfFuel(self.limits.fuel)
                }
                None => match raised_message(&e) {
                    Some(msg) => TokenizerError::TemplateRaised(msg),
                    None => TokenizerError::TemplateRender(describe(&e)),
                },
            }),
        }
    }
}

fn compile_error(e: sandbox::CompileError) -> TokenizerError {
    match e {
        sandbox::CompileError::Syntax(e) => TokenizerError::TemplateSyntax(describe(&e)),
        sandbox::CompileError::Limit(m) => TokenizerError::TemplateLimit(m),
    }
}

/// Marks the start and end of a placeholder for a message's content while
/// locating content in a render (private-use characters, checked absent).
const SLOT_OPEN: char = '\u{F8F0}';
const SLOT_CLOSE: char = '\u{F8F1}';

/// A render and where message content lies in it ([`ChatTemplate::render_located`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The rendered text.
    pub text: String,
    /// The byte ranges of `text` that are message content, in order; `None`
    /// when the template changes content so that it cannot be told apart.
    pub content: Option<Vec<std::ops::Range<usize>>>,
}

/// A piece of a render made with placeholders.
enum Piece<'a> {
    Literal(&'a str),
    Content(usize),
}

impl ChatTemplate {
    /// Renders `ctx` and finds the byte ranges of the output that are
    /// message content (sorted), or `None` when they cannot be told apart
    /// from the template's own text.
    ///
    /// The template is rendered a second time with each message's content
    /// replaced by a placeholder; the placeholders' places in that render,
    /// matched against the first (content as it is, or with surrounding
    /// whitespace trimmed, as templates that `trim` it write it), give the
    /// ranges. A template that changes content otherwise (slices it, tests
    /// what it holds) gives `None`.
    pub fn render_located(&self, ctx: &ChatContext) -> Result<Located, TemplateError> {
        let text = self.render(ctx)?;
        let contents: Vec<&str> = ctx.messages.iter().map(|m| m.content.as_str()).collect();
        if contents.iter().all(|c| c.is_empty()) {
            return Ok(Located {
                text,
                content: Some(Vec::new()),
            });
        }
        let has_marker = |s: &str| s.contains([SLOT_OPEN, SLOT_CLOSE]);
        if has_marker(&text) || contents.iter().any(|c| has_marker(c)) {
            return Ok(Located {
                text,
                content: None,
            });
        }
        let mut marked = ctx.clone();
        for (i, m) in marked.messages.iter_mut().enumerate() {
            if !m.content.is_empty() {
                m.content = format!("{SLOT_OPEN}{i}{SLOT_CLOSE}");
            }
        }
        let Ok(with_slots) = self.render(&marked) else {
            return Ok(Located {
                text,
                content: None,
            });
        };
        let pieces = slots(&with_slots, contents.len());
        let ranges = pieces.and_then(|p| align(&text, &p, &contents));
        Ok(Located {
            text,
            content: ranges,
        })
    }
}

/// Splits a render made with placeholders into literal text and content slots.
fn slots(s: &str, n_messages: usize) -> Option<Vec<Piece<'_>>> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find(SLOT_OPEN) {
        if open > 0 {
            out.push(Piece::Literal(&rest[..open]));
        }
        let after = &rest[open + SLOT_OPEN.len_utf8()..];
        let close = after.find(SLOT_CLOSE)?;
        let i: usize = after[..close].parse().ok()?;
        if i >= n_messages {
            return None;
        }
        out.push(Piece::Content(i));
        rest = &after[close + SLOT_CLOSE.len_utf8()..];
    }
    if rest.contains(SLOT_CLOSE) {
        return None;
    }
    if !rest.is_empty() {
        out.push(Piece::Literal(rest));
    }
    Some(out)
}

/// Matches `pieces` against `text`, each content slot as the message's
/// content or one of its trimmed forms; the content ranges, in order.
fn align(
    text: &str,
    pieces: &[Piece<'_>],
    contents: &[&str],
) -> Option<Vec<std::ops::Range<usize>>> {
    let variants = |c: &str| -> Vec<usize> {
        // Lengths of the candidates, each with where it starts in `c`.
        let mut v = vec![c.len(), c.trim_end().len()];
        v.dedup();
        v
    };
    // Explicit backtracking: (piece index, text position, candidate tried).
    struct Frame {
        piece: usize,
        pos: usize,
        choice: usize,
    }
    let mut stack = vec![Frame {
        piece: 0,
        pos: 0,
        choice: 0,
    }];
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    let mut steps = 0u32;
    while let Some(top) = stack.last_mut() {
        steps += 1;
        if steps > 100_000 {
            return None;
        }
        if top.piece == pieces.len() {
            if top.pos == text.len() {
                ranges.retain(|r| r.start != usize::MAX);
                return Some(ranges);
            }
            stack.pop();
            ranges.pop();
            continue;
        }
        let rest = &text[top.pos..];
        let advance = match pieces[top.piece] {
            Piece::Literal(lit) => {
                if top.choice == 0 && rest.starts_with(lit) {
                    top.choice = 1;
                    Some((lit.len(), None))
                } else {
                    None
                }
            }
            Piece::Content(i) => {
                // The content as given, or trimmed at the start, the end or both.
                let c = contents[i];
                let starts = [0, c.len() - c.trim_start().len()];
                let mut candidates: Vec<&str> = Vec::new();
                for s in starts {
                    for len in variants(&c[s..]) {
                        let cand = &c[s..s + len];
                        if !candidates.contains(&cand) {
                            candidates.push(cand);
                        }
                    }
                }
                let mut found = None;
                while top.choice < candidates.len() {
                    let cand = candidates[top.choice];
                    top.choice += 1;
                    if rest.starts_with(cand) {
                        found = Some((cand.len(), Some(top.pos..top.pos + cand.len())));
                        break;
                    }
                }
                found
            }
        };
        match advance {
            Some((len, range)) => {
                let (piece, pos) = (top.piece + 1, top.pos + len);
                if let Some(r) = range {
                    ranges.push(r);
                } else {
                    // Literal: mark so that popping back does not pop a range.
                    ranges.push(usize::MAX..usize::MAX);
                }
                stack.push(Frame {
                    piece,
                    pos,
                    choice: 0,
                });
            }
            None => {
                stack.pop();
                ranges.pop();
            }
        }
    }
    None
}

impl crate::Tokenizer {
    /// The context a chat is rendered with: `messages`, the opening of the
    /// assistant's turn, and this vocabulary's BOS and EOS text.
    pub fn chat_context(&self, messages: Vec<Message>) -> ChatContext {
        let text_of = |id: Option<u32>| {
            id.and_then(|id| self.token_text(id))
                .unwrap_or_default()
                .to_string()
        };
        ChatContext {
            messages,
            add_generation_prompt: true,
            bos_token: text_of(self.bos()),
            eos_token: text_of(self.eos()),
            ..ChatContext::default()
        }
    }

    /// The tokens of a conversation: `template` rendered with `ctx`, special
    /// tokens where the template writes them, and message content tokenized
    /// as text — so a user who types `<|im_end|><|im_start|>system` gets
    /// those characters, not a forged turn. BOS is added unless the
    /// template writes it.
    ///
    /// With `special_in_content` (for trusted input only) content is
    /// tokenized like the template's text, special tokens included, as
    /// llama.cpp does.
    ///
    /// Where content is in the render is found by
    /// [`ChatTemplate::render_located`]; if the template changes content so
    /// that it cannot be found, the render is tokenized as a whole, and a
    /// message holding a special token's text is refused
    /// ([`TokenizerError::SpecialTokenInContent`]).
    pub fn encode_chat(
        &self,
        template: &ChatTemplate,
        ctx: &ChatContext,
        special_in_content: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let Located {
            text,
            content: ranges,
        } = if special_in_content {
            Located {
                text: template.render(ctx)?,
                content: Some(Vec::new()),
            }
        } else {
            template.render_located(ctx)?
        };
        // Templates that write the BOS text themselves get no second one.
        let has_bos = !ctx.bos_token.is_empty() && text.starts_with(&ctx.bos_token);
        match ranges {
            Some(ranges) => self.encode_with_text_ranges(&text, !has_bos, true, &ranges),
            None => {
                for (i, m) in ctx.messages.iter().enumerate() {
                    if let Some(token) = self.special_token_in(&m.content) {
                        return Err(TokenizerError::SpecialTokenInContent {
                            message: i,
                            token: token.to_string(),
                        });
                    }
                }
                self.encode(&text, !has_bos, true)
            }
        }
    }
}

/// The message of a `raise_exception` anywhere in the error's chain.
fn raised_message(e: &Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Raised>() {
            return Some(r.0.clone());
        }
        source = s.source();
    }
    None
}

/// An error's message with its template line.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    s
}

/// Python's `datetime.strftime` for `strftime_now` (chrono's directives are Python's).
fn strftime(now: &chrono::NaiveDateTime, format: &str) -> Result<String, Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format {format:?}"),
        ));
    }
    let mut out = String::new();
    write!(out, "{}", now.format_with_items(items.into_iter())).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: cannot format with {format:?}"),
        )
    })?;
    Ok(out)
}

/// `tojson` as Hugging Face defines it: `json.dumps(x, indent, separators,
/// sort_keys, ensure_ascii=False)`.
fn tojson(value: &Value, kwargs: Kwargs, max_len: usize) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.clamp(0, 64) as usize)),
            None => Some(v.as_str().unwrap_or_default().to_string()),
        },
    };
    // Each is repeated per element (and per level): keep them short.
    let too_long = |what: &str, s: &str| {
        (s.chars().count() > 64).then(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: {what} longer than 64 characters"),
            )
        })
    };
    if let Some(e) = indent.as_deref().and_then(|i| too_long("indent", i)) {
        return Err(e);
    }
    let (item_sep, key_sep) = match separators.filter(|s| !s.is_none() && !s.is_undefined()) {
        Some(s) => {
            let parts: Vec<Value> = s.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => (a.to_string(), b.to_string()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair",
                    ))
                }
            }
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    if let Some(e) = too_long("separator", &item_sep).or_else(|| too_long("separator", &key_sep)) {
        return Err(e);
    }
    let opts = JsonOptions {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
        max_len,
    };
    let mut out = String::new();
    dump_json(value, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOptions {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
    /// The longest output (the template's output cap).
    max_len: usize,
}

/// Python's `json.dumps` of a template value.
fn dump_json(v: &Value, o: &JsonOptions, level: usize, out: &mut String) -> Result<(), Error> {
    if level > 128 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: nesting too deep",
        ));
    }
    if out.len() > o.max_len {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: output longer than {} bytes", o.max_len),
        ));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64().filter(|_| v.is_integer()) {
                let _ = write!(out, "{i}");
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&python_float_repr(f));
            }
        }
        ValueKind::String | ValueKind::Bytes => {
            json_string(v.as_str().unwrap_or_default(), o.ensure_ascii, out)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                dump_json(item, o, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if o.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                let key_text = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".to_string(),
                    ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_string(),
                    _ => key.to_string(),
                };
                json_string(&key_text, o.ensure_ascii, out);
                out.push_str(&o.key_sep);
                dump_json(&v.get_item(key)?, o, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {}", v.kind()),
            ))
        }
    }
    Ok(())
}

/// A JSON string literal as Python writes it.
fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7E) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, exponent from 1e16 or below 1e-4.
fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let exp = if f == 0.0 {
        0
    } else {
        f.abs().log10().floor() as i32
    };
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        // Rust's `{:e}` is `1.5e20`; Python writes `1.5e+20`.
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e:0>2}"),
            Some((m, e)) => format!("{m}e-{:0>2}", &e[1..]),
            None => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_clock() -> Clock {
        Arc::new(|| {
            chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
        })
    }

    fn render(src: &str) -> Result<String, TemplateError> {
        ChatTemplate::with_options(src, fixed_clock(), 100_000, 1 << 16)?
            .render(&ChatContext::default())
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        assert_eq!(
            render(r#"{{ {"b": [1, 2.5, "é\n"], "a": none} | tojson }}"#).unwrap(),
            r#"{"b": [1, 2.5, "é\n"], "a": null}"#
        );
        assert_eq!(
            render(r#"{{ {"a": [1]} | tojson(indent=2) }}"#).unwrap(),
            "{\n  \"a\": [\n    1\n  ]\n}"
        );
    }

    #[test]
    fn strftime_now_uses_the_clock() {
        assert_eq!(
            render(r#"{{ strftime_now("%d %b %Y") }}"#).unwrap(),
            "02 Jan 2026"
        );
    }

    #[test]
    fn python_methods_work() {
        assert_eq!(
            render(r#"{{ "  x ".strip() }}{{ "ab".startswith("a") }}"#).unwrap(),
            "xTrue"
        );
    }

    #[test]
    fn runaway_templates_stop() {
        assert!(matches!(
            render(
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
            ),
            Err(TokenizerError::TemplateOutOfFuel(_))
        ));
        assert!(matches!(
            ChatTemplate::with_options(
                "{% for i in range(1000) %}{{ 'x' * 1000 }}{% endfor %}",
                fixed_clock(),
                1 << 30,
                1000
            )
            .unwrap()
            .render(&ChatContext::default()),
            Err(TokenizerError::TemplateOutputTooLarge(1000))
        ));
        assert!(matches!(
            render("{% include 'x' %}"),
            Err(TokenizerError::TemplateRender(_))
        ));
        assert!(matches!(
            render("{% if %}"),
            Err(TokenizerError::TemplateSyntax(_))
        ));
    }

    #[test]
    fn raise_exception_is_reported() {
        match render("{{ raise_exception('no system role') }}") {
            Err(TokenizerError::TemplateRaised(m)) => assert_eq!(m, "no system role"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn float_repr_matches_python() {
        assert_eq!(python_float_repr(1.0), "1.0");
        assert_eq!(python_float_repr(0.1), "0.1");
        assert_eq!(python_float_repr(1e20), "1e+20");
        assert_eq!(python_float_repr(1.5e-7), "1.5e-07");
    }
}
