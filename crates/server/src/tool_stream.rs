//! Tool calls read from the generated text as it arrives, so a streamed
//! reply sends each call's arguments token by token (`delta.tool_calls`, as
//! the OpenAI API does) and its text as text.
//!
//! [`CallStream`] takes the reply's text in pieces of any size and gives
//! [`Delta`]s; the pieces' split never changes what comes out, so the whole
//! reply read at once ([`read_reply`], what a reply that is not streamed
//! uses) gives the same content and calls as the streamed deltas joined.
//! A call's arguments are the model's own JSON text of the arguments value.
//!
//! Per format (see [`ToolFormat`]):
//! - Hermes: text outside `<tool_call>…</tool_call>` is content (trimmed as
//!   a whole: leading and trailing whitespace are dropped); a call is
//!   announced once its JSON names a listed function, and then its
//!   arguments stream. A call whose JSON breaks or names another function
//!   before that stays text.
//! - Llama 3: a reply that starts with a JSON object (after
//!   `<|python_tag|>`) is a call, read the same way; any other is text.
//! - Generic: the reply is `{"tool_calls": [call, …]}` or
//!   `{"response": …}`: calls as above, and a `response` string streams as
//!   content (another JSON value is content at the end, as compact JSON).
//!
//! Harmony replies are read whole ([`crate::tools::parse_reply`]).

use serde_json::Value;

use crate::tools::{ToolCall, ToolFormat};

/// What the reply says, piece by piece.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Delta {
    /// Text of the reply.
    Content(String),
    /// Call number `index` (from 0) begins: the function's name.
    Call { index: usize, name: String },
    /// More of call `index`'s arguments (JSON text).
    Args { index: usize, text: String },
}

/// Where a value of a JSON text begins: its depth (enclosing containers),
/// the key it is the value of (in an object), its first character and its
/// byte offset; or where it ends (exclusive byte offset).
#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Start {
        depth: usize,
        key: Option<String>,
        first: char,
        at: usize,
    },
    End {
        depth: usize,
        start: usize,
        end: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    KeyOrEnd,
    Colon,
    Value,
    ValueOrEnd,
    CommaOrEnd,
}

#[derive(Clone, Debug)]
struct Frame {
    obj: bool,
    start: usize,
    key: Option<String>,
    expect: Expect,
}

#[derive(Clone, Copy, Debug)]
enum Lex {
    Ws,
    Str { start: usize, esc: bool, key: bool },
    Lit { start: usize },
}

/// One JSON value scanned a character at a time (lenient about what it
/// need not check: numbers' and literals' spelling, control characters).
#[derive(Clone, Debug)]
struct JsonScan {
    stack: Vec<Frame>,
    lex: Lex,
    done: bool,
}

impl JsonScan {
    fn new() -> JsonScan {
        JsonScan {
            stack: Vec::new(),
            lex: Lex::Ws,
            done: false,
        }
    }

    /// Scans `c` at byte `at` of `text` (which holds it), appending what
    /// happened to `ev`; `Err` when it cannot continue a JSON value.
    fn step(&mut self, text: &str, c: char, at: usize, ev: &mut Vec<Ev>) -> Result<(), ()> {
        loop {
            match self.lex {
                Lex::Str { start, esc, key } => {
                    if esc {
                        self.lex = Lex::Str {
                            start,
                            esc: false,
                            key,
                        };
                    } else if c == '\\' {
                        self.lex = Lex::Str {
                            start,
                            esc: true,
                            key,
                        };
                    } else if c == '"' {
                        self.lex = Lex::Ws;
                        if key {
                            let k = serde_json::from_str::<String>(&text[start..at + 1])
                                .map_err(|_| ())?;
                            let top = self.stack.last_mut().ok_or(())?;
                            top.key = Some(k);
                            top.expect = Expect::Colon;
                        } else {
                            ev.push(Ev::End {
                                depth: self.stack.len(),
                                start,
                                end: at + 1,
                            });
                            self.after_value();
                        }
                    }
                    return Ok(());
                }
                Lex::Lit { start } => {
                    if c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.') {
                        return Ok(());
                    }
                    ev.push(Ev::End {
                        depth: self.stack.len(),
                        start,
                        end: at,
                    });
                    self.lex = Lex::Ws;
                    self.after_value();
                    // `c` comes after the literal: scan it as such.
                }
                Lex::Ws => break,
            }
        }
        if c.is_whitespace() {
            return Ok(());
        }
        if self.done {
            return Err(());
        }
        let expect = self.stack.last().map_or(Expect::Value, |f| f.expect);
        match (expect, c) {
            (Expect::KeyOrEnd, '"') => {
                self.lex = Lex::Str {
                    start: at,
                    esc: false,
                    key: true,
                };
            }
            (Expect::KeyOrEnd, '}') | (Expect::ValueOrEnd, ']') => self.close(at, ev),
            (Expect::CommaOrEnd, ',') => {
                let top = self.stack.last_mut().expect("a container");
                top.expect = if top.obj {
                    Expect::KeyOrEnd
                } else {
                    Expect::Value
                };
            }
            (Expect::CommaOrEnd, '}') if self.stack.last().is_some_and(|f| f.obj) => {
                self.close(at, ev)
            }
            (Expect::CommaOrEnd, ']') if self.stack.last().is_some_and(|f| !f.obj) => {
                self.close(at, ev)
            }
            (Expect::Colon, ':') => {
                self.stack.last_mut().expect("an object").expect = Expect::Value;
            }
            (Expect::Value | Expect::ValueOrEnd, _) => {
                let key = self
                    .stack
                    .last()
                    .filter(|f| f.obj)
                    .and_then(|f| f.key.clone());
                let depth = self.stack.len();
                match c {
                    '{' | '[' => self.stack.push(Frame {
                        obj: c == '{',
                        start: at,
                        key: None,
                        expect: if c == '{' {
                            Expect::KeyOrEnd
                        } else {
                            Expect::ValueOrEnd
                        },
                    }),
                    '"' => {
                        self.lex = Lex::Str {
                            start: at,
                            esc: false,
                            key: false,
                        }
                    }
                    '-' | '0'..='9' | 't' | 'f' | 'n' => self.lex = Lex::Lit { start: at },
                    _ => return Err(()),
                }
                ev.push(Ev::Start {
                    depth,
                    key,
                    first: c,
                    at,
                });
            }
            _ => return Err(()),
        }
        Ok(())
    }

    fn close(&mut self, at: usize, ev: &mut Vec<Ev>) {
        let f = self.stack.pop().expect("a container");
        ev.push(Ev::End {
            depth: self.stack.len(),
            start: f.start,
            end: at + 1,
        });
        self.after_value();
    }

    fn after_value(&mut self) {
        match self.stack.last_mut() {
            Some(top) => top.expect = Expect::CommaOrEnd,
            None => self.done = true,
        }
    }

    /// Ends the text: a literal at the very end is complete.
    fn finish(&mut self, text_len: usize, ev: &mut Vec<Ev>) {
        if let Lex::Lit { start } = self.lex {
            ev.push(Ev::End {
                depth: self.stack.len(),
                start,
                end: text_len,
            });
            self.lex = Lex::Ws;
            self.after_value();
        }
    }
}

/// The call being read: its members' depth, name, and arguments' span.
#[derive(Clone, Debug)]
struct Call {
    depth: usize,
    /// Where the `name` string value starts.
    name_at: Option<usize>,
    name: Option<String>,
    /// Start and (once known) end of the arguments value in the JSON text.
    args: Option<(usize, Option<usize>)>,
    /// Bytes of the arguments sent.
    sent: usize,
    /// Its index, once announced.
    index: Option<usize>,
}

/// A JSON text being read: a call's (Hermes, Llama 3) or the whole
/// generic reply's.
#[derive(Clone, Debug)]
struct Json {
    scan: JsonScan,
    text: String,
    /// Bytes of `text` scanned.
    pos: usize,
    /// What came before the JSON (`<tool_call>` and whitespace), content
    /// again if the call is rejected.
    prefix: String,
    call: Option<Call>,
    /// Generic: inside the `tool_calls` array.
    in_calls: bool,
    /// Generic: the `response` value's start, whether it is a string, and
    /// bytes of it turned into content.
    response: Option<(usize, bool, usize)>,
    /// Whether a call was announced from this JSON text.
    announced: bool,
}

#[derive(Clone, Debug)]
enum Mode {
    /// Before anything but whitespace (Llama 3, Generic).
    Start,
    /// Text (Hermes outside calls; any other reply once it is known to be text).
    Text,
    Json(Box<Json>),
    /// Hermes: after a call's JSON, before `</tool_call>`.
    AfterCall,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

/// Reads tool calls and text out of a reply as it arrives (see the module docs).
pub(crate) struct CallStream {
    format: ToolFormat,
    /// The functions a call may name.
    names: Vec<String>,
    mode: Mode,
    /// Text received but not yet read.
    pending: String,
    calls: usize,
    out: Vec<Delta>,
    /// Hermes: whitespace held back (dropped if no content follows).
    held_ws: String,
    /// Hermes: whether content was sent (leading whitespace is dropped).
    any_content: bool,
}

impl CallStream {
    /// A reader for a reply in `format` (not Harmony) whose calls may name
    /// the functions `names`.
    pub fn new(format: ToolFormat, names: Vec<String>) -> CallStream {
        CallStream {
            format,
            names,
            mode: match format {
                ToolFormat::Hermes => Mode::Text,
                _ => Mode::Start,
            },
            pending: String::new(),
            calls: 0,
            out: Vec::new(),
            held_ws: String::new(),
            any_content: false,
        }
    }

    /// Calls announced so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Reads `piece`; returns what it completes.
    pub fn push(&mut self, piece: &str) -> Vec<Delta> {
        self.pending.push_str(piece);
        self.advance(false);
        std::mem::take(&mut self.out)
    }

    /// The reply ended: returns what was held back.
    pub fn finish(&mut self) -> Vec<Delta> {
        self.advance(true);
        match std::mem::replace(&mut self.mode, Mode::Text) {
            Mode::Json(mut j) => {
                let mut ev = Vec::new();
                j.scan.finish(j.text.len(), &mut ev);
                self.events(&mut j, ev);
                self.settle(&mut j, true);
            }
            Mode::Start => {
                let rest = std::mem::take(&mut self.pending);
                self.content(&rest);
            }
            Mode::AfterCall | Mode::Text => {}
        }
        let rest = std::mem::take(&mut self.pending);
        self.content(&rest);
        std::mem::take(&mut self.out)
    }

    fn content(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.format != ToolFormat::Hermes {
            self.emit_content(text.to_string());
            return;
        }
        // The content as a whole is trimmed: whitespace is held until
        // content follows it, and dropped before the first.
        let mut out = String::new();
        for c in text.chars() {
            if c.is_whitespace() {
                if self.any_content {
                    self.held_ws.push(c);
                }
            } else {
                out.push_str(&std::mem::take(&mut self.held_ws));
                out.push(c);
                self.any_content = true;
            }
        }
        self.emit_content(out);
    }

    fn emit_content(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        match self.out.last_mut() {
            Some(Delta::Content(t)) => t.push_str(&text),
            _ => self.out.push(Delta::Content(text)),
        }
    }

    fn advance(&mut self, end: bool) {
        loop {
            match std::mem::replace(&mut self.mode, Mode::Text) {
                Mode::Text => {
                    if self.format != ToolFormat::Hermes {
                        let rest = std::mem::take(&mut self.pending);
                        self.content(&rest);
                        return;
                    }
                    if let Some(at) = self.pending.find(OPEN) {
                        let before: String = self.pending.drain(..at + OPEN.len()).collect();
                        self.content(&before[..at]);
                        self.mode = Mode::Json(Box::new(Json::new(OPEN.to_string())));
                        continue;
                    }
                    // Hold back what may be the start of `<tool_call>`.
                    let keep = if end {
                        0
                    } else {
                        (1..OPEN.len())
                            .rev()
                            .find(|&k| self.pending.ends_with(&OPEN[..k]))
                            .unwrap_or(0)
                    };
                    let cut = self.pending.len() - keep;
                    let text: String = self.pending.drain(..cut).collect();
                    self.content(&text);
                    return;
                }
                Mode::Start => {
                    let trimmed = self.pending.trim_start();
                    let lead = self.pending.len() - trimmed.len();
                    if trimmed.is_empty() {
                        self.mode = Mode::Start;
                        return;
                    }
                    if self.format == ToolFormat::Llama3 && PYTHON_TAG.starts_with(trimmed) && !end
                    {
                        // Maybe `<|python_tag|>`, not yet whole.
                        self.mode = Mode::Start;
                        return;
                    }
                    let mut skip = lead;
                    if self.format == ToolFormat::Llama3 && trimmed.starts_with(PYTHON_TAG) {
                        skip += PYTHON_TAG.len();
                        skip +=
                            self.pending[skip..].len() - self.pending[skip..].trim_start().len();
                        if skip == self.pending.len() && !end {
                            self.mode = Mode::Start;
                            return;
                        }
                    }
                    if self.pending[skip..].starts_with('{') {
                        let prefix: String = self.pending.drain(..skip).collect();
                        self.mode = Mode::Json(Box::new(Json::new(prefix)));
                    } else {
                        self.mode = Mode::Text;
                    }
                }
                Mode::Json(mut j) => {
                    let piece = std::mem::take(&mut self.pending);
                    j.text.push_str(&piece);
                    let mut ev = Vec::new();
                    let mut failed = None;
                    let mut done_at = None;
                    let text = std::mem::take(&mut j.text);
                    for (i, c) in text[j.pos..].char_indices() {
                        let at = j.pos + i;
                        if j.scan.step(&text, c, at, &mut ev).is_err() {
                            failed = Some(at);
                            break;
                        }
                        if j.scan.done && !matches!(j.scan.lex, Lex::Lit { .. }) {
                            done_at = Some(at + c.len_utf8());
                            break;
                        }
                    }
                    let stop = failed.or(done_at).unwrap_or(text.len());
                    j.pos = stop;
                    j.text = text;
                    self.events(&mut j, ev);
                    if let Some(at) = failed {
                        // Not JSON after all: what is not a call is text.
                        let rest = j.text.split_off(at);
                        self.pending = rest + &self.pending;
                        self.settle(&mut j, true);
                        self.mode = Mode::Text;
                        continue;
                    }
                    if let Some(at) = done_at {
                        let rest = j.text.split_off(at);
                        self.pending = rest + &self.pending;
                        self.settle(&mut j, true);
                        self.mode = match self.format {
                            ToolFormat::Hermes if j.announced => Mode::AfterCall,
                            _ => Mode::Text,
                        };
                        continue;
                    }
                    self.settle(&mut j, false);
                    self.mode = Mode::Json(j);
                    return;
                }
                Mode::AfterCall => {
                    let t = self.pending.trim_start();
                    if t.starts_with(CLOSE) {
                        let skip = self.pending.len() - t.len() + CLOSE.len();
                        self.pending.drain(..skip);
                        self.mode = Mode::Text;
                        continue;
                    }
                    if !end && CLOSE.starts_with(t) {
                        self.mode = Mode::AfterCall;
                        return;
                    }
                    self.mode = Mode::Text;
                }
            }
        }
    }

    /// Follows the scanner's events: calls and their arguments' spans, the
    /// generic reply's `response`.
    fn events(&mut self, j: &mut Json, ev: Vec<Ev>) {
        let generic = self.format == ToolFormat::Generic;
        let call_depth = if generic { 2 } else { 0 };
        for e in ev {
            match e {
                Ev::Start {
                    depth,
                    key,
                    first,
                    at,
                } => {
                    let key = key.as_deref();
                    if generic && depth == 1 && key == Some("tool_calls") && first == '[' {
                        j.in_calls = true;
                    }
                    if generic && depth == 1 && key == Some("response") {
                        j.response = Some((at, first == '"', 0));
                    }
                    if depth == call_depth && first == '{' && (!generic || j.in_calls) {
                        j.call = Some(Call {
                            depth: call_depth + 1,
                            name_at: None,
                            name: None,
                            args: None,
                            sent: 0,
                            index: None,
                        });
                    }
                    if let Some(call) = j.call.as_mut().filter(|c| c.depth == depth) {
                        match key {
                            Some("name") if first == '"' && call.name_at.is_none() => {
                                call.name_at = Some(at)
                            }
                            Some("arguments" | "parameters") if call.args.is_none() => {
                                call.args = Some((at, None))
                            }
                            _ => {}
                        }
                    }
                }
                Ev::End { depth, start, end } => {
                    let mut closed = false;
                    if let Some(call) = &mut j.call {
                        if depth == call.depth {
                            if call.args.is_some_and(|(s, e)| s == start && e.is_none()) {
                                call.args = Some((start, Some(end)));
                            } else if call.name_at == Some(start) && call.name.is_none() {
                                call.name = serde_json::from_str(&j.text[start..end]).ok();
                            }
                        }
                        closed = depth + 1 == call.depth;
                    }
                    if closed {
                        self.flush_call(j, true);
                    }
                    if generic && depth == 1 && j.in_calls && j.text[start..].starts_with('[') {
                        j.in_calls = false;
                    }
                    if generic && depth == 1 {
                        if let Some((s, is_str, sent)) = j.response {
                            if s == start {
                                if is_str {
                                    let text = unescape_part(&j.text[start + 1 + sent..end - 1]);
                                    self.emit_content(text);
                                } else if let Ok(v) =
                                    serde_json::from_str::<Value>(&j.text[start..end])
                                {
                                    self.emit_content(v.to_string());
                                }
                                j.response = None;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Announces the current call once its name is known and listed, then
    /// sends its arguments as far as they go; `closed` when its object ended.
    fn flush_call(&mut self, j: &mut Json, closed: bool) {
        let Some(call) = &mut j.call else { return };
        if call.index.is_none() {
            let listed = call.name.as_ref().filter(|n| self.names.contains(n));
            match listed {
                Some(name) => {
                    call.index = Some(self.calls);
                    self.out.push(Delta::Call {
                        index: self.calls,
                        name: name.clone(),
                    });
                    self.calls += 1;
                    j.announced = true;
                }
                None => {
                    if closed {
                        j.call = None;
                    }
                    return;
                }
            }
        }
        let call = j.call.as_mut().expect("still there");
        let index = call.index.expect("announced");
        if let Some((start, end)) = call.args {
            let upto = end.unwrap_or(j.pos);
            if upto > start + call.sent {
                let text = j.text[start + call.sent..upto].to_string();
                call.sent = upto - start;
                match self.out.last_mut() {
                    Some(Delta::Args { index: i, text: t }) if *i == index => t.push_str(&text),
                    _ => self.out.push(Delta::Args { index, text }),
                }
            }
        }
        if closed {
            j.call = None;
        }
    }

    /// After a scan: sends what the open call and the generic `response`
    /// string have so far; at the JSON's end (`over`), a Hermes or Llama 3
    /// JSON that was no call becomes text.
    fn settle(&mut self, j: &mut Json, over: bool) {
        if j.call.is_some() {
            self.flush_call(j, false);
        }
        if let Some((start, true, sent)) = j.response {
            // Up to a point where no escape is cut.
            let body = &j.text[start + 1..j.pos];
            let safe = safe_prefix(&body[sent..]) + sent;
            if safe > sent {
                let text = unescape_part(&body[sent..safe]);
                j.response = Some((start, true, safe));
                self.emit_content(text);
            }
        }
        if !over {
            return;
        }
        let was_call = self.format == ToolFormat::Generic || j.announced;
        if !was_call {
            let text = std::mem::take(&mut j.prefix) + &j.text[..j.pos];
            if self.format == ToolFormat::Hermes {
                self.content(&text);
            } else {
                self.emit_content(text);
            }
        }
        j.call = None;
    }
}

impl Json {
    fn new(prefix: String) -> Json {
        Json {
            scan: JsonScan::new(),
            text: String::new(),
            pos: 0,
            prefix,
            call: None,
            in_calls: false,
            response: None,
            announced: false,
        }
    }
}

/// Bytes of `raw` (a JSON string's body, or part of it) that end where no
/// escape is cut: not after a lone backslash, not inside `\uXXXX`, not
/// after a high surrogate whose low half may follow.
fn safe_prefix(raw: &str) -> usize {
    let b = raw.as_bytes();
    let mut i = 0;
    let mut safe = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            safe = i;
            continue;
        }
        if i + 1 >= b.len() {
            break;
        }
        if b[i + 1] != b'u' {
            i += 2;
            safe = i;
            continue;
        }
        if i + 6 > b.len() {
            break;
        }
        let hex = std::str::from_utf8(&b[i + 2..i + 6])
            .ok()
            .and_then(|h| u16::from_str_radix(h, 16).ok());
        i += 6;
        if hex.is_some_and(|u| (0xD800..0xDC00).contains(&u)) {
            // A high surrogate: safe only with the escape after it.
            if i + 6 > b.len() {
                break;
            }
            i += 6;
        }
        safe = i;
    }
    safe
}

/// A JSON string body's text (escapes resolved; as is if it does not parse).
fn unescape_part(raw: &str) -> String {
    serde_json::from_str::<String>(&format!("\"{raw}\"")).unwrap_or_else(|_| raw.to_string())
}

/// A reply read whole: its content (if any) and calls — exactly what the
/// streamed deltas of the same text join into.
pub(crate) fn read_reply(
    text: &str,
    format: ToolFormat,
    names: Vec<String>,
) -> (Option<String>, Vec<ToolCall>) {
    let mut s = CallStream::new(format, names);
    let mut deltas = s.push(text);
    deltas.extend(s.finish());
    join(deltas)
}

/// Deltas joined: the content (if any) and the calls.
pub(crate) fn join(deltas: Vec<Delta>) -> (Option<String>, Vec<ToolCall>) {
    let mut content: Option<String> = None;
    let mut calls: Vec<ToolCall> = Vec::new();
    for d in deltas {
        match d {
            Delta::Content(t) => content.get_or_insert_with(String::new).push_str(&t),
            Delta::Call { name, .. } => calls.push(ToolCall {
                name,
                arguments: String::new(),
            }),
            Delta::Args { index, text } => calls[index].arguments.push_str(&text),
        }
    }
    (content, calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["get_weather".into(), "get_time".into()]
    }

    /// The reply fed one character at a time, then in pieces of 3 and 7
    /// bytes' worth of characters: the joined deltas equal the whole read.
    fn same_in_pieces(text: &str, format: ToolFormat) -> (Option<String>, Vec<ToolCall>) {
        let whole = read_reply(text, format, names());
        for size in [1, 3, 7] {
            let chars: Vec<char> = text.chars().collect();
            let mut s = CallStream::new(format, names());
            let mut deltas = Vec::new();
            for piece in chars.chunks(size) {
                deltas.extend(s.push(&piece.iter().collect::<String>()));
            }
            deltas.extend(s.finish());
            assert_eq!(
                join(deltas),
                whole,
                "{format:?} in pieces of {size}: {text:?}"
            );
        }
        whole
    }

    #[test]
    fn hermes_calls_stream_and_text_is_trimmed() {
        let text = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"n\": [1, 2.5e3, null]}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        let (content, calls) = same_in_pieces(text, ToolFormat::Hermes);
        assert_eq!(content.as_deref(), Some("Let me look."));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(
            calls[0].arguments,
            "{\"city\": \"Paris\", \"n\": [1, 2.5e3, null]}"
        );
        assert_eq!(
            (calls[1].name.as_str(), calls[1].arguments.as_str()),
            ("get_time", "{}")
        );
        // Text only, with a `<` that starts no tag.
        let (content, calls) = same_in_pieces("  a < b <tool_c\n", ToolFormat::Hermes);
        assert_eq!(
            (content.as_deref(), calls.len()),
            (Some("a < b <tool_c"), 0)
        );
    }

    #[test]
    fn calls_of_unlisted_functions_and_broken_json_stay_text() {
        let (content, calls) = same_in_pieces(
            "<tool_call>{\"name\": \"other\", \"arguments\": {}}</tool_call>",
            ToolFormat::Hermes,
        );
        assert!(calls.is_empty());
        assert!(content.unwrap().contains("other"));
        let (content, calls) =
            same_in_pieces("<tool_call>{oops</tool_call> ok", ToolFormat::Hermes);
        assert!(calls.is_empty());
        assert!(content.unwrap().contains("oops"));
    }

    #[test]
    fn llama3_calls_and_text() {
        let (content, calls) = same_in_pieces(
            "<|python_tag|>{\"name\": \"get_time\", \"parameters\": {\"zone\": \"UTC\"}}",
            ToolFormat::Llama3,
        );
        assert_eq!(content, None);
        assert_eq!(calls[0].arguments, "{\"zone\": \"UTC\"}");
        let (content, calls) = same_in_pieces("Hello {there}", ToolFormat::Llama3);
        assert_eq!(
            (content.as_deref(), calls.len()),
            (Some("Hello {there}"), 0)
        );
    }

    #[test]
    fn generic_calls_and_responses() {
        let (content, calls) = same_in_pieces(
            r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Ro\"me"}}, {"name": "get_time", "arguments": {"zone": "CET"}}]}"#,
            ToolFormat::Generic,
        );
        assert_eq!(content, None);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, r#"{"city": "Ro\"me"}"#);
        // The response string streams as text, escapes resolved, a
        // surrogate pair never cut.
        let (content, calls) = same_in_pieces(
            r#"{"response": "Hi!\n\"Tab\"\t\u00e9 \ud83d\ude00 end"}"#,
            ToolFormat::Generic,
        );
        assert_eq!(calls.len(), 0);
        assert_eq!(
            content.as_deref(),
            Some("Hi!\n\"Tab\"\t\u{e9} \u{1F600} end")
        );
        let (content, _) = same_in_pieces(r#"{"response": {"a": [1, 2]}}"#, ToolFormat::Generic);
        assert_eq!(content.as_deref(), Some(r#"{"a":[1,2]}"#));
    }

    #[test]
    fn arguments_arrive_as_they_are_generated() {
        let mut s = CallStream::new(ToolFormat::Generic, names());
        assert!(s.push(r#"{"tool_calls": [{"name": "get_wea"#).is_empty());
        assert_eq!(
            s.push(r#"ther", "arguments": {"ci"#),
            vec![
                Delta::Call {
                    index: 0,
                    name: "get_weather".into()
                },
                Delta::Args {
                    index: 0,
                    text: r#"{"ci"#.into()
                }
            ]
        );
        assert_eq!(
            s.push(r#"ty": "Oslo"}}]}"#),
            vec![Delta::Args {
                index: 0,
                text: r#"ty": "Oslo"}"#.into()
            }]
        );
        assert!(s.finish().is_empty());
        assert_eq!(s.calls(), 1);
    }
}
