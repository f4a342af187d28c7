//! `strata serve`: an OpenAI-compatible HTTP server over a llama-model
//! session, with continuous batching.
//!
//! ```no_run
//! use strata_server::{LoadedModel, Server, ServerOptions};
//! use llama_model::{CpuBackend, LoadOptions, Model};
//! use std::sync::Arc;
//!
//! let path = std::path::PathBuf::from("model.gguf");
//! let opts = ServerOptions { port: 8080, ..ServerOptions::default() };
//! let server = Server::start(opts, move || {
//!     let file = Arc::new(gguf_format::GgufFile::open(&path)?);
//!     let model = Model::load_with(&file, CpuBackend::new(), &LoadOptions::default())?;
//!     Ok(LoadedModel::from_gguf(model, file.header())?)
//! })?;
//! println!("listening on {}", server.addr());
//! server.wait()?; // until Ctrl-C or SIGTERM
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Design decisions:
//! - One scheduler thread owns the model and its [`Session`] (one KV cache
//!   per slot, `n_seq = parallel`). Each step gathers the next tokens of
//!   every busy slot — a chunk of the prompt for a request just admitted, one
//!   token for a decoding one — into one [`Session::forward_batch`], then
//!   samples every slot whose logits came back. New requests join at the next
//!   step, finished or cancelled ones leave; the HTTP side never touches the
//!   model, it only queues jobs and reads their events.
//! - A slot keeps the tokens of its last request in its cache. A new request
//!   goes to the free slot whose cache shares the longest prefix with its
//!   prompt, and only the rest of the prompt is computed — the next turn of a
//!   conversation costs its new tokens (`usage.prompt_tokens_details.cached_tokens`).
//! - A request's events go through a channel; a client that disconnects
//!   drops the receiving end, and the scheduler frees its slot at the next step.
//! - The model loads on the scheduler thread while the server already
//!   answers: `/health` is 503 until it is ready. The backend need not be
//!   `Send`: the loader closure runs where the model lives.
//!
//! [`Session`]: llama_model::Session
//! [`Session::forward_batch`]: llama_model::Session::forward_batch
#![deny(missing_docs)]

mod api;
mod http;
mod metrics;
mod scheduler;
mod tool_stream;
mod tools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use llama_model::{Backend, Model};
use tokenizer::chat::ChatTemplate;
use tokenizer::Tokenizer;

pub use metrics::Metrics;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on (0: any free port, see [`Server::addr`]).
    pub port: u16,
    /// Requests decoded together (slots, the session's sequences).
    pub parallel: usize,
    /// Positions of each slot's KV cache (0: the model's training context, at most 4096).
    pub n_ctx: usize,
    /// Most tokens computed in one step, over all slots (prompt chunks are cut to fit).
    pub n_batch: usize,
    /// Requests waiting for a slot before new ones are refused with 503.
    pub max_queue: usize,
    /// When set, every endpoint but `/health` wants `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// The model's id in `/v1/models` and in responses.
    pub model_name: String,
    /// After a shutdown begins, how long running requests may go on before they are cancelled.
    pub shutdown_grace: std::time::Duration,
    /// Whether Ctrl-C and SIGTERM shut the server down ([`Server::wait`]).
    pub handle_signals: bool,
    /// Sequences kept beyond the `parallel` slots for the caches of
    /// finished requests. A request takes whichever free sequence shares the
    /// longest prefix with its prompt (the least recently used on a tie), so
    /// with more sequences than slots more prompts are found cached and
    /// skip their forward pass (llama-server keeps such a prompt cache in
    /// host memory). `None`: as many as `parallel`, fewer where their KV
    /// caches would take more than [`DEFAULT_CACHE_BYTES`], and none with
    /// one slot (a session of one sequence is one a backend may compile
    /// into its own schedule, as the GPU's does).
    pub cache_seqs: Option<usize>,
}

/// The memory the default [`ServerOptions::cache_seqs`] may give the extra
/// sequences' KV caches: 1 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            parallel: 4,
            n_ctx: 2048,
            n_batch: 512,
            max_queue: 64,
            api_key: None,
            model_name: "model".into(),
            shutdown_grace: std::time::Duration::from_secs(30),
            handle_signals: false,
            cache_seqs: None,
        }
    }
}

/// What the loader gives the scheduler: the model and how to talk to it.
pub struct LoadedModel<B: Backend> {
    /// The model; the scheduler makes its session.
    pub model: Model<B>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template.
    pub template: ChatTemplate,
}

impl<B: Backend> LoadedModel<B> {
    /// The model with the tokenizer and chat template of its file (ChatML if it has none).
    pub fn from_gguf(
        model: Model<B>,
        header: &gguf_format::GgufHeader,
    ) -> Result<Self, tokenizer::TokenizerError> {
        Ok(LoadedModel {
            model,
            tokenizer: Tokenizer::from_gguf(header)?,
            template: ChatTemplate::from_gguf(header)?.unwrap_or_else(ChatTemplate::chatml),
        })
    }
}

/// What the loader may fail with.
pub type LoadError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of starting and running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The options are unusable.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// Binding or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The model could not be loaded.
    #[error("loading the model: {0}")]
    Load(String),
}

/// A running server: its HTTP thread and its scheduler thread.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<scheduler::Shared>,
    http: JoinHandle<Result<(), ServerError>>,
    scheduler: JoinHandle<Result<(), ServerError>>,
}

impl Server {
    /// Binds the address, starts loading the model with `load` on the
    /// scheduler thread and starts answering at once (`/health` is 503 until
    /// the model is loaded).
    pub fn start<B, F>(opts: ServerOptions, load: F) -> Result<Server, ServerError>
    where
        B: Backend + 'static,
        F: FnOnce() -> Result<LoadedModel<B>, LoadError> + Send + 'static,
    {
        if opts.parallel == 0 || opts.parallel > 256 {
            return Err(ServerError::InvalidOption(format!(
                "--parallel {} must be in 1..=256",
                opts.parallel
            )));
        }
        if opts.n_batch == 0 {
            return Err(ServerError::InvalidOption(
                "n_batch must be at least 1".into(),
            ));
        }
        let bind = format!("{}:{}", opts.host, opts.port);
        let listener = std::net::TcpListener::bind(&bind).map_err(|source| ServerError::Io {
            context: format!("cannot listen on {bind}"),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Io {
            context: "local address".into(),
            source,
        })?;
        let shared = Arc::new(scheduler::Shared::new(opts));
        let scheduler = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("strata-scheduler".into())
                .spawn(move || scheduler::run(shared, load))
                .map_err(|source| ServerError::Io {
                    context: "starting the scheduler thread".into(),
                    source,
                })?
        };
        let http = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("strata-http".into())
                .spawn(move || http::run(shared, listener))
                .map_err(|source| ServerError::Io {
                    context: "starting the HTTP thread".into(),
                    source,
                })?
        };
        tracing::info!(%addr, "listening");
        Ok(Server {
            addr,
            shared,
            http,
            scheduler,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Waits until the server has shut down (Ctrl-C or SIGTERM with
    /// [`ServerOptions::handle_signals`], a failed model load, or [`Server::shutdown`]
    /// from elsewhere).
    pub fn wait(self) -> Result<(), ServerError> {
        let http = self
            .http
            .join()
            .unwrap_or_else(|_| Err(ServerError::Load("the HTTP thread panicked".into())));
        self.shared.begin_shutdown();
        let sched = self
            .scheduler
            .join()
            .unwrap_or_else(|_| Err(ServerError::Load("the scheduler thread panicked".into())));
        sched.and(http)
    }

    /// Stops accepting requests, lets running ones finish (cancelling them
    /// after [`ServerOptions::shutdown_grace`]) and waits for both threads.
    pub fn shutdown(self) -> Result<(), ServerError> {
        self.shared.begin_shutdown();
        self.wait()
    }
}

/// Logs to stderr through `tracing` (level from `RUST_LOG`, default `info`).
/// Call once, from a binary.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
