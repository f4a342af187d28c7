//! `strata chat`: an interactive conversation with the model's chat template.
//!
//! Each turn renders the whole conversation and reuses the KV cache of what
//! came before, so only the new tokens are computed: when the render
//! continues the previous turn's prompt and reply as text, the new prompt is
//! the tokens the model saw (that prompt and the reply's generated tokens,
//! not the reply tokenized again, which can differ) followed by the new
//! text (the end of the reply's turn, the user's message, the opening of
//! the next reply) — as llama.cpp's `llama-cli` continues a conversation.
//! Then the whole cache is reused, for models with recurrent layers too. With standard input not
//! a terminal, each line is one user message and each reply is printed on
//! its own (scriptable); `--json` prints one object per turn instead,
//! including how many prompt tokens were reused and how many computed.
//!
//! Message text is tokenized as text: special-token text a user types stays
//! text (`--special-in-content` lets it through, for trusted input). One bad
//! turn does not end the session: when the conversation outgrows the
//! context, the oldest turns after the system message are shifted out (as
//! llama.cpp's context shift does); a message that cannot fit even alone, or
//! any other failure, fails that turn only — it is reported (`strata: error:`
//! on stderr; with `--json`, an object with `error`), left out of the
//! conversation, and the next line is read. The exit status is 1 if any turn
//! failed.

use std::io::{IsTerminal as _, Write as _};

use generate::{Completion, GenerateOptions, Generator, LastTurn, Prompt};
use tokenizer::chat::{ChatTemplate, Located, Message};
use tokenizer::Tokenizer;

use crate::common::{classify, init_threads, one_line, Loaded, ModelArgs, ModelFile, SamplingArgs};
use crate::generate::completion_json;
use crate::CmdResult;

/// Arguments of `strata chat`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A system message opening the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, short = 'n', default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_tokens: u64,
    /// Context size in tokens (default: the model's training context, at most 4096).
    #[arg(long, short = 'c', value_parser = clap::value_parser!(u64).range(1..))]
    ctx: Option<u64>,
    /// Let special-token text in messages become special tokens (trusted
    /// input only; by default message text stays text).
    #[arg(long)]
    special_in_content: bool,
    /// Print one JSON object per turn (the reply, its tokens and timings).
    #[arg(long)]
    json: bool,
}

/// The conversation: its messages, and how to turn them into tokens.
struct Conversation<'a> {
    messages: Vec<Message>,
    /// Messages at the start that are never shifted out (the system message).
    kept: usize,
    template: ChatTemplate,
    tokenizer: &'a Tokenizer,
    special_in_content: bool,
    /// The last turn as the model saw it, which the next prompt continues.
    last: Option<LastTurn>,
    /// The render of the prompt [`Conversation::prompt_with`] made last.
    render: String,
}

impl Conversation<'_> {
    /// The prompt of `messages` and its render: the last turn's tokens
    /// continued when the render continues its prompt and reply
    /// ([`LastTurn::continue_with`]), else the whole render's tokens.
    fn tokens(
        &self,
        messages: &[Message],
    ) -> Result<(Vec<u32>, String), Box<dyn std::error::Error>> {
        let ctx = self.tokenizer.chat_context(messages.to_vec());
        let located = if self.special_in_content {
            Located {
                text: self.template.render(&ctx)?,
                content: Some(Vec::new()),
            }
        } else {
            self.template.render_located(&ctx)?
        };
        if let Some(last) = &self.last {
            if let Some(ids) = last.continue_with(self.tokenizer, &located)? {
                return Ok((ids, located.text));
            }
        }
        let ids = self
            .tokenizer
            .encode_chat(&self.template, &ctx, self.special_in_content)?;
        Ok((ids, located.text))
    }

    /// The prompt with `user` added, shifting out the oldest turns until it
    /// leaves `room` tokens of an `n_ctx` context for the reply (or, if even
    /// the message alone does not, fits at all). The conversation changes
    /// only if the prompt is made: then it holds the message, less the
    /// turns shifted out.
    fn prompt_with(
        &mut self,
        user: &str,
        n_ctx: usize,
        room: usize,
    ) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
        // A message that cannot fit is refused before it is rendered and
        // tokenized (both cost many times its size).
        let least = self.tokenizer.min_tokens(user.len());
        if user.len() >= n_ctx && least >= n_ctx {
            return Err(format!(
                "the message of {} bytes makes a prompt of at least {least} tokens, more than the context of {n_ctx} holds; \
                 it was left out (a longer --ctx, or a shorter message)",
                user.len()
            )
            .into());
        }
        let mut messages = self.messages.clone();
        messages.push(Message::new("user", user));
        loop {
            let (ids, render) = self.tokens(&messages)?;
            let shiftable = messages.len() - self.kept - 1;
            if ids.len() + room <= n_ctx || (shiftable == 0 && ids.len() < n_ctx) {
                self.messages = messages;
                self.render = render;
                return Ok(ids);
            }
            if shiftable == 0 {
                return Err(format!(
                    "the message makes a prompt of {} tokens, more than the context of {n_ctx} holds; \
                     it was left out (a longer --ctx, or a shorter message)",
                    ids.len()
                )
                .into());
            }
            // The oldest turn: a message and, if it is one, the reply to it.
            let n = if shiftable >= 2 { 2 } else { 1 };
            messages.drain(self.kept..self.kept + n);
        }
    }
}

/// Runs `strata chat`.
pub fn run(args: Args) -> CmdResult {
    let opts = GenerateOptions {
        max_tokens: args.max_tokens as usize,
        sampler: args.sampling.config(),
        ..GenerateOptions::default()
    };
    opts.validate().map_err(classify)?;
    init_threads(args.model.threads)?;
    let mf = ModelFile::open_with(args.model.model.as_ref(), !args.model.no_mmap)?;
    let mut loaded = Loaded::load(
        &mf,
        args.model.backend,
        args.model.exact,
        args.ctx.unwrap_or(0) as usize,
    )?;
    let engine = loaded.engine()?;
    let n_ctx = engine.n_ctx();
    let mut generator = Generator::new(engine, &mf.tokenizer).map_err(classify)?;
    let mut conversation = Conversation {
        messages: args
            .system
            .iter()
            .map(|s| Message::new("system", s.as_str()))
            .collect(),
        kept: usize::from(args.system.is_some()),
        template: mf.chat_template()?,
        tokenizer: &mf.tokenizer,
        special_in_content: args.special_in_content,
        last: None,
        render: String::new(),
    };
    // Room for a reply: its most tokens, up to half the context.
    let room = opts.max_tokens.min(n_ctx / 2);

    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("strata: chat with the model; an empty line or end of input (Ctrl-D) ends it");
    }
    let mut stdout = std::io::stdout().lock();
    let mut stdin = std::io::stdin().lock();
    // No message longer than the template's output can render: longer lines
    // are skipped unread rather than held in memory.
    let max_line = conversation.template.limits().max_output;
    let (mut turns, mut failed) = (0usize, 0usize);
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = read_message(&mut stdin, max_line)? else {
            break;
        };
        let line = match line {
            Ok(line) => line,
            Err(message) => {
                // A bad line fails its turn; the session goes on.
                turns += 1;
                failed += 1;
                if args.json {
                    let v = serde_json::json!({ "error": message });
                    writeln!(stdout, "{}", serde_json::to_string(&v)?)?;
                } else if !interactive {
                    writeln!(stdout)?;
                }
                eprintln!("strata: error: {message}");
                continue;
            }
        };
        let user = line.trim();
        if user.is_empty() {
            if interactive {
                break;
            }
            continue;
        }
        turns += 1;
        let mut write_error = None;
        let done = conversation.prompt_with(user, n_ctx, room).and_then(|ids| {
            generator
                .generate(Prompt::Tokens(&ids), &opts, |piece| {
                    if !args.json && write_error.is_none() {
                        if let Err(e) = stdout
                            .write_all(piece.as_bytes())
                            .and_then(|_| stdout.flush())
                        {
                            write_error = Some(e);
                        }
                    }
                })
                .map_err(classify)
        });
        if let Some(e) = write_error {
            return Err(e.into());
        }
        match done {
            Ok(done) => {
                // Kept verbatim: the next render then starts with this
                // prompt and reply, and continues the tokens generated.
                conversation
                    .messages
                    .push(Message::new("assistant", done.text.as_str()));
                let render = std::mem::take(&mut conversation.render);
                conversation.last = Some(LastTurn::new(render, &done));
                report(&mut stdout, &args, user, &done)?;
            }
            Err(e) => {
                failed += 1;
                if conversation
                    .messages
                    .last()
                    .is_some_and(|m| m.role == "user")
                {
                    conversation.messages.pop();
                }
                let message = one_line(&e.to_string());
                if args.json {
                    let v = serde_json::json!({ "user": user, "error": message });
                    writeln!(stdout, "{}", serde_json::to_string(&v)?)?;
                } else if !interactive {
                    // One line per message on stdout, failed or not.
                    writeln!(stdout)?;
                }
                eprintln!("strata: error: {message}");
            }
        }
        stdout.flush()?;
    }
    if failed > 0 {
        return Err(format!("{failed} of {turns} turns failed").into());
    }
    Ok(())
}

/// The next line of `input` without its line break: `None` at the end of
/// input, else the text, or why it cannot be a message (not UTF-8, or longer
/// than `max` bytes: the rest of such a line is read past, not kept).
fn read_message(
    input: &mut impl std::io::BufRead,
    max: usize,
) -> std::io::Result<Option<Result<String, String>>> {
    let mut line = Vec::new();
    let mut length = 0usize;
    let mut ended = false;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            if length == 0 && !ended {
                return Ok(None);
            }
            break;
        }
        ended = true;
        let (chunk, used) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        length += chunk.len();
        if line.len() <= max {
            let keep = chunk.len().min(max + 1 - line.len());
            line.extend_from_slice(&chunk[..keep]);
        }
        let at_newline = used > chunk.len();
        input.consume(used);
        if at_newline {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
        length -= 1;
    }
    if length > max {
        return Ok(Some(Err(format!(
            "a message of {length} bytes exceeds the limit of {max} bytes; it was left out"
        ))));
    }
    Ok(Some(String::from_utf8(line).map_err(|e| {
        format!(
            "a message is not valid UTF-8 (at byte {} of its line); it was left out",
            e.utf8_error().valid_up_to()
        )
    })))
}

fn report(
    stdout: &mut impl std::io::Write,
    args: &Args,
    user: &str,
    done: &Completion,
) -> std::io::Result<()> {
    if args.json {
        let mut v = completion_json(done);
        v["user"] = user.into();
        writeln!(
            stdout,
            "{}",
            serde_json::to_string(&v).map_err(std::io::Error::other)?
        )?;
    } else {
        writeln!(stdout)?;
        let t = &done.timings;
        eprintln!(
            "strata: [{} prompt tokens: {} reused, {} computed at {:.1} t/s; {} generated at {:.1} t/s]",
            done.prompt_tokens.len(),
            t.reused_tokens,
            t.prompt_tokens,
            t.prompt_tokens_per_second(),
            done.tokens.len(),
            t.eval_tokens_per_second()
        );
    }
    Ok(())
}
