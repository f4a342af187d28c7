//! The scheduler thread: owns the session, admits queued jobs into slots, and
//! runs every busy slot's next tokens as one batch per step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use generate::constraint::{Constraint, Grammars};
use generate::{Sampler, StopFilter};
use llama_model::{Backend, Batch, Session, SessionOptions};
use tokenizer::chat::ChatTemplate;
use tokenizer::{StreamDecoder, Tokenizer};
use tokio::sync::{mpsc, watch};

use crate::api::{Finish, GenParams, TokenLogprob, Usage};
use crate::tools::ToolFormat;
use crate::{LoadError, LoadedModel, Metrics, ServerError, ServerOptions};

/// What a job reports to the request that queued it.
#[derive(Debug)]
pub(crate) enum Event {
    /// Generated text (possibly empty: held back for a stop string) and, with
    /// logprobs, the tokens sampled in this step.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// The end.
    Done { finish: Finish, usage: Usage },
    /// Generation failed.
    Error(String),
    /// The server shut down before the job could finish.
    Cancelled(String),
}

/// A request, tokenized and checked, waiting for a slot.
pub(crate) struct Job {
    pub id: String,
    pub prompt: Vec<u32>,
    pub params: GenParams,
    /// The grammar the output must follow, compiled.
    pub constraint: Option<Constraint>,
    pub events: mpsc::UnboundedSender<Event>,
}

/// The model as the HTTP side sees it.
pub(crate) struct ModelInfo {
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    /// Compiles output grammars (`None` if this vocabulary cannot be constrained).
    pub grammars: Option<Grammars>,
    /// How the template lets the model call tools.
    pub tool_format: ToolFormat,
    /// Positions of each slot's cache.
    pub n_ctx: usize,
    pub n_vocab: usize,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    QueueFull,
    ShuttingDown,
}

/// What the HTTP side and the scheduler share.
pub(crate) struct Shared {
    pub opts: ServerOptions,
    pub metrics: Metrics,
    /// Set once the model is loaded.
    pub model: OnceLock<ModelInfo>,
    queue: Mutex<VecDeque<Job>>,
    wake: Condvar,
    shutting_down: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
}

impl Shared {
    pub fn new(opts: ServerOptions) -> Shared {
        let metrics = Metrics::default();
        metrics.slots_total.store(opts.parallel as u64, Relaxed);
        Shared {
            opts,
            metrics,
            model: OnceLock::new(),
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            shutting_down: AtomicBool::new(false),
            shutdown_tx: watch::channel(false).0,
        }
    }

    /// Queues `job`, unless the queue is full or the server is shutting down.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_shutting_down() {
            return Err(Refused::ShuttingDown);
        }
        if queue.len() >= self.opts.max_queue {
            return Err(Refused::QueueFull);
        }
        queue.push_back(job);
        self.metrics.queue_depth.store(queue.len() as u64, Relaxed);
        self.wake.notify_one();
        Ok(())
    }

    /// Stops accepting requests; the scheduler finishes the running ones.
    pub fn begin_shutdown(&self) {
        if !self.shutting_down.swap(true, Relaxed) {
            tracing::info!("shutting down: no new requests");
        }
        self.shutdown_tx.send_replace(true);
        let _guard = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Relaxed)
    }

    /// A receiver that turns `true` when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    fn pop(&self) -> Option<Job> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let job = queue.pop_front();
        self.metrics.queue_depth.store(queue.len() as u64, Relaxed);
        job
    }

    fn drain(&self) -> Vec<Job> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.metrics.queue_depth.store(0, Relaxed);
        queue.drain(..).collect()
    }

    /// Sleeps until a job is queued or shutdown begins (or `max` passes).
    fn wait_for_work(&self, max: Duration) {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.is_empty() && !self.is_shutting_down() {
            let _ = self.wake.wait_timeout(queue, max);
        }
    }
}

/// A request being run in a slot.
struct Task {
    job: Job,
    /// Tokens to run next: the rest of the prompt, or the last sampled token.
    pending: Vec<u32>,
    /// Whether the prompt has been run (then `pending` is one sampled token).
    decoding: bool,
    /// The prompt's last logits when the slot had them saved: sampled
    /// without a forward pass.
    ready: Option<Vec<f32>>,
    reused: usize,
    sampler: Sampler,
    constraint: Option<Constraint>,
    decoder: StreamDecoder,
    stops: StopFilter,
    generated: usize,
    started: Instant,
    first_token: Option<Instant>,
}

/// One sequence of the session and the request in it.
struct Slot {
    seq: usize,
    /// The tokens whose keys and values are in this sequence's cache.
    cached: Vec<u32>,
    /// The step it was last given a request (for least-recently-used choice).
    last_used: u64,
    /// The logits after the last prompt run in this slot, and that prompt's
    /// length: a request with the same prompt samples from them, with no
    /// forward pass and the very same bits as the first time.
    prompt_logits: Option<(usize, Vec<f32>)>,
    task: Option<Task>,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The scheduler thread's body: loads the model, then steps until shutdown.
pub(crate) fn run<B, F>(shared: std::sync::Arc<Shared>, load: F) -> Result<(), ServerError>
where
    B: Backend,
    F: FnOnce() -> Result<LoadedModel<B>, LoadError>,
{
    let fail = |shared: &Shared, msg: String| {
        tracing::error!("{msg}");
        shared.begin_shutdown();
        for job in shared.drain() {
            let _ = job.events.send(Event::Error(msg.clone()));
        }
        Err(ServerError::Load(msg))
    };
    let start = Instant::now();
    let LoadedModel {
        model,
        tokenizer,
        template,
    } = match load() {
        Ok(loaded) => loaded,
        Err(e) => return fail(&shared, format!("the model failed to load: {e}")),
    };
    let opts = &shared.opts;
    let session_with = |n_seq: usize| {
        model.session(&SessionOptions {
            n_ctx: opts.n_ctx,
            n_batch: opts.n_batch,
            n_seq,
            ..SessionOptions::default()
        })
    };
    let extra = cache_seqs(opts, model.config());
    // The extra sequences are a cache: without room for them, run without.
    let session = match session_with(opts.parallel + extra) {
        Err(e) if extra > 0 => {
            tracing::warn!("no room for {extra} cache sequences ({e}): running without");
            session_with(opts.parallel)
        }
        other => other,
    };
    let mut session = match session {
        Ok(s) => s,
        Err(e) => return fail(&shared, format!("cannot make a session: {e}")),
    };
    let tokenizer = Arc::new(tokenizer);
    let grammars = match Grammars::new(tokenizer.clone()) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!("structured output is unavailable: {e}");
            None
        }
    };
    let tool_format = ToolFormat::detect(template.source());
    tracing::info!(tool_format = ?tool_format, "chat template");
    let info = ModelInfo {
        tokenizer,
        template,
        grammars,
        tool_format,
        n_ctx: session.n_ctx(),
        n_vocab: model.config().n_vocab,
    };
    tracing::info!(
        seconds = format!("{:.2}", start.elapsed().as_secs_f64()),
        slots = opts.parallel,
        cache_seqs = session.n_seq() - opts.parallel,
        n_ctx = info.n_ctx,
        "model loaded"
    );
    let _ = shared.model.set(info);
    shared.metrics.model_loaded.store(1, Relaxed);
    Scheduler {
        shared: &shared,
        slots: (0..session.n_seq())
            .map(|seq| Slot {
                seq,
                cached: Vec::new(),
                last_used: 0,
                prompt_logits: None,
                task: None,
            })
            .collect(),
        step: 0,
    }
    .run(&mut session);
    Ok(())
}

/// How many cache sequences to keep beyond the slots
/// ([`ServerOptions::cache_seqs`]): as asked, or by default as many as the
/// slots, fewer where their KV caches (f16 keys and values of every layer
/// over the context, an upper bound) would take more than
/// [`crate::DEFAULT_CACHE_BYTES`], none with one slot.
fn cache_seqs(opts: &ServerOptions, c: &llama_model::Config) -> usize {
    if let Some(n) = opts.cache_seqs {
        return n;
    }
    if opts.parallel == 1 {
        return 0;
    }
    let n_ctx = if opts.n_ctx == 0 {
        c.n_ctx_train.clamp(1, 4096)
    } else {
        opts.n_ctx
    };
    let per_seq = (n_ctx * c.n_layer * c.n_head_kv * c.head_dim * 2 * 2).max(1) as u64;
    let fit = crate::DEFAULT_CACHE_BYTES / per_seq;
    opts.parallel.min(fit as usize)
}

struct Scheduler<'s> {
    shared: &'s Shared,
    /// One per session sequence: the first `parallel` free ones take
    /// requests; every one keeps its cache after its request ends.
    slots: Vec<Slot>,
    step: u64,
}

impl Scheduler<'_> {
    fn run<B: Backend>(mut self, session: &mut Session<'_, B>) {
        let shared = self.shared;
        let mut deadline: Option<Instant> = None;
        loop {
            if shared.is_shutting_down() {
                for job in shared.drain() {
                    shared.metrics.requests_rejected.fetch_add(1, Relaxed);
                    let _ = job
                        .events
                        .send(Event::Cancelled("the server is shutting down".into()));
                }
                let deadline = *deadline.get_or_insert(Instant::now() + shared.opts.shutdown_grace);
                if Instant::now() >= deadline {
                    self.cancel_all("the server is shutting down");
                }
                if self.slots.iter().all(|s| s.task.is_none()) {
                    tracing::info!("scheduler stopped");
                    return;
                }
            }
            self.drop_disconnected();
            self.admit(session);
            let busy = self.slots.iter().filter(|s| s.task.is_some()).count();
            shared.metrics.slots_busy.store(busy as u64, Relaxed);
            if busy == 0 {
                shared.wait_for_work(Duration::from_millis(250));
                continue;
            }
            self.step(session);
        }
    }

    /// Frees the slots whose client went away.
    fn drop_disconnected(&mut self) {
        for slot in &mut self.slots {
            if slot.task.as_ref().is_some_and(|t| t.job.events.is_closed()) {
                let task = slot.task.take().expect("checked");
                tracing::info!(
                    id = task.job.id,
                    generated = task.generated,
                    "client went away: cancelled"
                );
                self.shared.metrics.requests_cancelled.fetch_add(1, Relaxed);
            }
        }
    }

    fn cancel_all(&mut self, why: &str) {
        for slot in &mut self.slots {
            if let Some(task) = slot.task.take() {
                let _ = task.job.events.send(Event::Cancelled(why.into()));
                self.shared.metrics.requests_cancelled.fetch_add(1, Relaxed);
            }
        }
    }

    /// Moves queued jobs into free slots while fewer than `parallel` run:
    /// each to the free sequence whose cache shares the longest prefix with
    /// its prompt (the least recently used on a tie) — among those that
    /// lose nothing by it if there are any — whose cache is cut back to
    /// that prefix.
    fn admit<B: Backend>(&mut self, session: &mut Session<'_, B>) {
        let shared = self.shared;
        while self.slots.iter().filter(|s| s.task.is_some()).count() < shared.opts.parallel {
            let Some(job) = shared.pop() else { return };
            if job.events.is_closed() {
                shared.metrics.requests_cancelled.fetch_add(1, Relaxed);
                continue;
            }
            // A sequence loses nothing worth keeping when its whole cache is
            // a prefix of the prompt (an empty one, a conversation going
            // on) or when it holds the whole prompt: such a one is taken
            // first, so that caches of other prompts are only overwritten
            // when no sequence is left without loss.
            let n = job.prompt.len();
            let lossless = |s: &Slot| {
                let lcp = common_prefix(&s.cached, &job.prompt);
                lcp == s.cached.len() || lcp + 1 >= n
            };
            let any_lossless = self.slots.iter().any(|s| s.task.is_none() && lossless(s));
            let slot = self
                .slots
                .iter_mut()
                .filter(|s| s.task.is_none() && (!any_lossless || lossless(s)))
                .max_by_key(|s| {
                    (
                        common_prefix(&s.cached, &job.prompt),
                        std::cmp::Reverse(s.last_used),
                    )
                })
                .expect("a free slot");
            // A prompt run before in this slot restarts from its saved
            // logits; any other runs at least its last token, for its logits.
            let lcp = common_prefix(&slot.cached, &job.prompt);
            let saved = slot
                .prompt_logits
                .as_ref()
                .filter(|(len, _)| lcp == n && *len == n)
                .map(|(_, logits)| logits.clone());
            let want = if saved.is_some() { n } else { lcp.min(n - 1) };
            // A recurrent layer's state rewinds only to its end or to the
            // start (Session::rewind_point): then the prompt runs whole.
            let common = session.rewind_point(slot.seq, want);
            let saved = saved.filter(|_| common == n);
            if let Err(e) = session.truncate_seq(slot.seq, common) {
                let _ = job
                    .events
                    .send(Event::Error(format!("internal error: {e}")));
                continue;
            }
            slot.cached.truncate(common);
            if slot
                .prompt_logits
                .as_ref()
                .is_some_and(|(len, _)| *len > common)
            {
                slot.prompt_logits = None;
            }
            slot.last_used = self.step;
            shared
                .metrics
                .prompt_tokens_reused
                .fetch_add(common as u64, Relaxed);
            let sampler = match Sampler::new(job.params.sampler.clone()) {
                Ok(s) => s,
                Err(e) => {
                    let _ = job.events.send(Event::Error(e.to_string()));
                    continue;
                }
            };
            tracing::debug!(
                id = job.id,
                slot = slot.seq,
                reused = common,
                prompt = job.prompt.len(),
                "admitted"
            );
            let mut job = job;
            slot.task = Some(Task {
                constraint: job.constraint.take(),
                pending: job.prompt[common..].to_vec(),
                decoding: false,
                ready: saved,
                reused: common,
                sampler,
                decoder: StreamDecoder::with_special(job.params.special),
                stops: StopFilter::new(&job.params.stop),
                generated: 0,
                started: Instant::now(),
                first_token: None,
                job,
            });
        }
    }

    /// One forward pass over every busy slot's next tokens, then sampling.
    fn step<B: Backend>(&mut self, session: &mut Session<'_, B>) {
        self.step += 1;
        let shared = self.shared;
        let info = shared.model.get().expect("loaded");
        // Repeated prompts sample from their saved logits first.
        for slot in &mut self.slots {
            let Some(task) = slot.task.as_mut() else {
                continue;
            };
            let Some(logits) = task.ready.take() else {
                continue;
            };
            task.decoding = true;
            if let Some(finish) = sample(task, &slot.cached, &logits, info, shared) {
                complete(slot, finish, shared);
            }
        }
        if self.slots.iter().all(|s| s.task.is_none()) {
            return;
        }
        let budget = shared.opts.n_batch;
        let n = self.slots.len();
        let rotate = self.step as usize % n;
        // (slot, tokens taken, whether its logits come back)
        let mut plan: Vec<(usize, usize, bool)> = Vec::new();
        let mut used = 0;
        // Decoding slots first (one token each), then prompt chunks in what remains.
        for decoding in [true, false] {
            for i in (0..n).map(|i| (i + rotate) % n) {
                let Some(task) = &self.slots[i].task else {
                    continue;
                };
                if task.decoding != decoding || used == budget {
                    continue;
                }
                let take = task.pending.len().min(budget - used);
                used += take;
                plan.push((i, take, take == task.pending.len()));
            }
        }
        let (mut tokens, mut pos, mut seq, mut output) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &(i, take, out) in &plan {
            let slot = &self.slots[i];
            let task = slot.task.as_ref().expect("planned");
            for (k, &t) in task.pending[..take].iter().enumerate() {
                tokens.push(t);
                pos.push(slot.cached.len() + k);
                seq.push(slot.seq);
                output.push(out && k + 1 == take);
            }
        }
        let batch = Batch {
            tokens: &tokens,
            pos: &pos,
            seq: &seq,
            output: &output,
        };
        shared.metrics.record_step(tokens.len(), plan.len());
        let logits = match session.forward_batch(&batch) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("forward pass failed: {e}");
                for &(i, _, _) in &plan {
                    let slot = &mut self.slots[i];
                    let _ = session.truncate_seq(slot.seq, 0);
                    slot.cached.clear();
                    slot.prompt_logits = None;
                    if let Some(task) = slot.task.take() {
                        let _ = task
                            .job
                            .events
                            .send(Event::Error(format!("the model failed: {e}")));
                    }
                }
                return;
            }
        };
        let n_vocab = info.n_vocab;
        let mut row = 0;
        for &(i, take, out) in &plan {
            let slot = &mut self.slots[i];
            let task = slot.task.as_mut().expect("planned");
            slot.cached.extend(task.pending.drain(..take));
            if !task.decoding {
                shared.metrics.prompt_tokens.fetch_add(take as u64, Relaxed);
            }
            if !out {
                continue;
            }
            let logits = &logits[row * n_vocab..(row + 1) * n_vocab];
            row += 1;
            if !task.decoding {
                slot.prompt_logits = Some((slot.cached.len(), logits.to_vec()));
                task.decoding = true;
            }
            if let Some(finish) = sample(task, &slot.cached, logits, info, shared) {
                complete(slot, finish, shared);
            }
        }
    }
}

/// Ends the slot's task for `finish`: logs it and sends the usage.
fn complete(slot: &mut Slot, finish: Finish, shared: &Shared) {
    let task = slot.task.take().expect("running");
    let usage = Usage {
        prompt_tokens: task.job.prompt.len(),
        cached_tokens: task.reused,
        completion_tokens: task.generated,
    };
    let secs = task.started.elapsed().as_secs_f64();
    let ttft = task
        .first_token
        .map_or(secs, |t| (t - task.started).as_secs_f64());
    tracing::info!(
        id = task.job.id,
        slot = slot.seq,
        prompt = usage.prompt_tokens,
        reused = usage.cached_tokens,
        generated = usage.completion_tokens,
        finish = finish.as_str(),
        ttft_ms = format!("{:.0}", ttft * 1e3),
        tokens_per_s = format!(
            "{:.1}",
            usage.completion_tokens as f64 / (secs - ttft).max(1e-9)
        ),
        "done"
    );
    shared.metrics.requests_finished.fetch_add(1, Relaxed);
    let _ = task.job.events.send(Event::Done { finish, usage });
}

/// Samples the next token of `task` from `logits` and sends the text it
/// completes; returns why the task ends, if it does. `cached` is the
/// sequence's tokens so far (the penalties' history).
fn sample(
    task: &mut Task,
    cached: &[u32],
    logits: &[f32],
    info: &ModelInfo,
    shared: &Shared,
) -> Option<Finish> {
    let tok = &info.tokenizer;
    let token = match &mut task.constraint {
        None => task.sampler.sample(logits, cached),
        Some(constraint) => {
            let chosen = constraint.mask().map(|mask| {
                task.sampler
                    .sample_allowed(logits, cached, |t| mask.allows(t))
            });
            match chosen {
                // The grammar allows nothing the sampler may draw (the end
                // banned by logit_bias): the output ends here.
                Ok(None) => tok.eog_tokens().next().unwrap_or(0),
                Ok(Some(t)) => match tok.is_eog(t) {
                    true => t,
                    false => match constraint.accept(t) {
                        Ok(()) => t,
                        Err(e) => return fail(task, e.to_string()),
                    },
                },
                Err(e) => return fail(task, e.to_string()),
            }
        }
    };
    task.first_token.get_or_insert_with(Instant::now);
    let logprobs = match task.job.params.top_logprobs {
        Some(n) if !tok.is_eog(token) => vec![logprob(logits, token, n)],
        _ => Vec::new(),
    };
    let (mut text, mut finish, mut by_stop_string) = (String::new(), None, false);
    if tok.is_eog(token) {
        finish = Some(Finish::Stop);
    } else {
        task.generated += 1;
        shared.metrics.generated_tokens.fetch_add(1, Relaxed);
        let piece = task.decoder.push(tok, token);
        let filtered = task.stops.push(&piece);
        text = filtered.text;
        if filtered.stopped {
            finish = Some(Finish::Stop);
            by_stop_string = true;
        } else if task
            .job
            .params
            .max_tokens
            .is_some_and(|m| task.generated >= m)
            || cached.len() >= info.n_ctx
        {
            finish = Some(Finish::Length);
        } else {
            task.pending.push(token);
        }
    }
    // Release what was held back, unless a stop string ended it.
    if finish.is_some() && !by_stop_string {
        let rest = task.decoder.finish();
        let filtered = task.stops.push(&rest);
        text.push_str(&filtered.text);
        if filtered.stopped {
            finish = Some(Finish::Stop);
        } else {
            text.push_str(&task.stops.finish());
        }
    }
    if (!text.is_empty() || !logprobs.is_empty())
        && task
            .job
            .events
            .send(Event::Text { text, logprobs })
            .is_err()
    {
        // The client is gone; the next step frees the slot.
        return None;
    }
    finish
}

/// Ends a task whose constraint failed: the request gets the error, and the
/// slot is freed at the next step (the closed channel).
fn fail(task: &mut Task, message: String) -> Option<Finish> {
    tracing::error!(id = task.job.id, "constrained sampling failed: {message}");
    let _ = task.job.events.send(Event::Error(format!(
        "constrained sampling failed: {message}"
    )));
    Some(Finish::Stop)
}

/// `token`'s log-probability under `logits` and the `n` most likely tokens'.
fn logprob(logits: &[f32], token: u32, n: usize) -> TokenLogprob {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    let mut top = Vec::new();
    if n > 0 {
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        let n = n.min(ids.len());
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        ids.select_nth_unstable_by(n - 1, by_logit);
        ids.truncate(n);
        ids.sort_by(by_logit);
        top = ids
            .into_iter()
            .map(|id| (id, logits[id as usize] - lse))
            .collect();
    }
    TokenLogprob {
        token,
        logprob: logits[token as usize] - lse,
        top,
    }
}
