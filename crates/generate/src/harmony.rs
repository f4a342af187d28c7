//! gpt-oss's "harmony" reply format, parsed back into reasoning, text and
//! tool calls.
//!
//! gpt-oss's chat template ends the prompt with `<|start|>assistant`; the
//! model then writes one or more messages, each a header and a body:
//!
//! ```text
//! <|channel|>analysis<|message|>…reasoning…<|end|>
//! <|start|>assistant<|channel|>final<|message|>…the reply…<|return|>
//! <|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>
//! ```
//!
//! The `analysis` channel is the model's reasoning, `final` is the reply,
//! and a message addressed `to=functions.NAME` (on `commentary`) is a call
//! of tool `NAME` with the body as its JSON arguments; a `commentary`
//! message to no one is text for the user (a preamble). The markers are
//! control tokens, so the generated text must be decoded with special
//! tokens rendered (`tokenizer::StreamDecoder::with_special(true)`).
//! `<|return|>` and `<|call|>` end generation (they are the vocabulary's
//! end-of-generation tokens; `<|end|>` only ends a message), so they are
//! usually absent from the text; a reply cut short parses as far as it goes.

/// Whether a chat template writes the harmony format (gpt-oss).
pub fn is_harmony_template(source: &str) -> bool {
    source.contains("<|channel|>") && source.contains("<|message|>")
}

/// One message of a harmony reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HarmonyMessage {
    /// The author (`assistant`; empty for the first message, whose role the prompt wrote).
    pub role: String,
    /// `analysis`, `commentary` or `final` (empty when the header names none).
    pub channel: String,
    /// Whom the message is addressed to (`functions.get_weather`), if anyone.
    pub recipient: Option<String>,
    /// The body's declared type (`json`), if any.
    pub content_type: Option<String>,
    /// The body.
    pub content: String,
}

/// A tool call found in a harmony reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HarmonyCall {
    /// The function's name (`get_weather` of `to=functions.get_weather`).
    pub name: String,
    /// Its arguments, the message body as written (JSON text).
    pub arguments: String,
}

/// A harmony reply split by channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HarmonyReply {
    /// The `analysis` messages' text, joined; `None` if there was none.
    pub reasoning: Option<String>,
    /// The `final` messages' text (and commentary to no one), joined.
    pub content: String,
    /// Calls of `functions.*` tools, in order.
    pub calls: Vec<HarmonyCall>,
}

const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const CONSTRAIN: &str = "<|constrain|>";
const ENDS: [&str; 3] = ["<|end|>", "<|return|>", "<|call|>"];

/// The messages of `text`, generated after a prompt that ended with
/// `<|start|>assistant`. Text with no message marker at all is one message
/// of no channel holding it whole.
pub fn parse_messages(text: &str) -> Vec<HarmonyMessage> {
    let mut out = Vec::new();
    for (i, part) in text.split(START).enumerate() {
        if i > 0 && part.is_empty() {
            continue;
        }
        let (header, body) = match part.find(MESSAGE) {
            Some(at) => (&part[..at], &part[at + MESSAGE.len()..]),
            // A header cut short (or plain text): no body yet.
            None if part.contains(CHANNEL) || i > 0 => (part, ""),
            None => ("", part),
        };
        let body = ENDS
            .iter()
            .filter_map(|e| body.find(e))
            .min()
            .map_or(body, |end| &body[..end]);
        let mut m = parse_header(header);
        if i == 0 {
            // The prompt wrote this message's role.
            m.role.clear();
        }
        m.content = body.to_string();
        if !(header.is_empty() && body.is_empty()) {
            out.push(m);
        }
    }
    out
}

/// A header: `ROLE[ to=RECIPIENT]<|channel|>CHANNEL[ to=RECIPIENT][ TYPE]`,
/// the type possibly after `<|constrain|>`.
fn parse_header(header: &str) -> HarmonyMessage {
    let header = header.replace(CONSTRAIN, " ");
    let (before, after) = match header.find(CHANNEL) {
        Some(at) => (&header[..at], &header[at + CHANNEL.len()..]),
        None => (&header[..], ""),
    };
    let mut m = HarmonyMessage::default();
    let mut words = before.split_whitespace();
    for w in words.by_ref() {
        match w.strip_prefix("to=") {
            Some(r) => m.recipient = Some(r.to_string()),
            None if m.role.is_empty() => m.role = w.to_string(),
            None => {}
        }
    }
    for (k, w) in after.split_whitespace().enumerate() {
        match w.strip_prefix("to=") {
            Some(r) => m.recipient = Some(r.to_string()),
            None if k == 0 => m.channel = w.to_string(),
            None => m.content_type = Some(w.to_string()),
        }
    }
    m
}

/// `text` split into reasoning, reply and tool calls (see the module docs).
pub fn parse_reply(text: &str) -> HarmonyReply {
    let mut r = HarmonyReply::default();
    let mut reasoning: Vec<String> = Vec::new();
    for m in parse_messages(text) {
        let call = m
            .recipient
            .as_deref()
            .and_then(|to| to.strip_prefix("functions."));
        match (m.channel.as_str(), call) {
            (_, Some(name)) => r.calls.push(HarmonyCall {
                name: name.to_string(),
                arguments: m.content.trim().to_string(),
            }),
            ("analysis", None) => reasoning.push(m.content),
            // A message to another recipient (a built-in tool) is not for the user.
            (_, None) if m.recipient.is_some() => {}
            _ => r.content.push_str(&m.content),
        }
    }
    if !reasoning.is_empty() {
        r.reasoning = Some(reasoning.join("\n"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_then_final() {
        let r = parse_reply(
            "<|channel|>analysis<|message|>The user greets.<|end|>\
             <|start|>assistant<|channel|>final<|message|>Hello!",
        );
        assert_eq!(r.reasoning.as_deref(), Some("The user greets."));
        assert_eq!(r.content, "Hello!");
        assert!(r.calls.is_empty());
        // With the end-of-generation token rendered, the same.
        let r2 = parse_reply(
            "<|channel|>analysis<|message|>The user greets.<|end|>\
             <|start|>assistant<|channel|>final<|message|>Hello!<|return|>",
        );
        assert_eq!(r, r2);
    }

    #[test]
    fn a_tool_call_on_commentary() {
        let text = "<|channel|>analysis<|message|>Need weather.<|end|>\
                    <|start|>assistant to=functions.get_weather<|channel|>commentary \
                    <|constrain|>json<|message|>{\"city\": \"Paris\"}";
        let m = parse_messages(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].role, "assistant");
        assert_eq!(m[1].channel, "commentary");
        assert_eq!(m[1].recipient.as_deref(), Some("functions.get_weather"));
        assert_eq!(m[1].content_type.as_deref(), Some("json"));
        let r = parse_reply(text);
        assert_eq!(
            r.calls,
            vec![HarmonyCall {
                name: "get_weather".into(),
                arguments: "{\"city\": \"Paris\"}".into()
            }]
        );
        assert_eq!(r.content, "");
        // The recipient may also follow the channel.
        let r = parse_reply("<|channel|>commentary to=functions.f json<|message|>{}<|call|>");
        assert_eq!(r.calls[0].name, "f");
    }

    #[test]
    fn cut_short_and_plain_text() {
        // Cut inside the reasoning: no reply yet.
        let r = parse_reply("<|channel|>analysis<|message|>Thinking abo");
        assert_eq!(r.reasoning.as_deref(), Some("Thinking abo"));
        assert_eq!(r.content, "");
        // Cut inside a header.
        let r = parse_reply("<|channel|>analysis<|message|>x<|end|><|start|>assistant<|chan");
        assert_eq!(r.reasoning.as_deref(), Some("x"));
        assert_eq!(r.content, "");
        // No markers at all: the text is the reply.
        let r = parse_reply("just text");
        assert_eq!(r.content, "just text");
        assert_eq!(r.reasoning, None);
    }

    #[test]
    fn templates_are_recognised() {
        assert!(is_harmony_template(
            "{{- '<|start|>assistant<|channel|>final<|message|>' }}"
        ));
        assert!(!is_harmony_template("<|im_start|>assistant\n"));
    }
}
