//! What `generate`, `chat` and `bench` share: the model, threads, backend and
//! sampling arguments, loading with progress on stderr, and bad-argument
//! errors (exit code 2).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use backend_wgpu::{DeviceOptions, GpuContext, GpuOptions, WgpuBackend};
use generate::{Engine, GenerateError, SamplerConfig};
use gguf_format::GgufFile;
use llama_model::{CpuBackend, LoadOptions, LogitsMode, Model, Session, SessionOptions};
use tokenizer::chat::ChatTemplate;
use tokenizer::Tokenizer;

/// A bad argument found after parsing (a prompt longer than the context, ...):
/// reported like clap's errors, with exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// An error message as one safe line, whatever it holds (scripts rely on one
/// line, and names from a file must not drive the terminal): line breaks
/// become spaces, other control characters (ESC, ...) are escaped.
pub fn one_line(message: &str) -> String {
    message
        .chars()
        .map(|c| match c {
            '\n' | '\r' => " ".to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Turns generation errors about arguments into [`UsageError`]s.
pub fn classify(e: generate::GenerateError) -> Box<dyn std::error::Error> {
    if e.is_invalid_argument() {
        Box::new(UsageError(e.to_string()))
    } else {
        Box::new(e)
    }
}

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// The CPU (SIMD kernels, rayon threads).
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal, DX12).
    Wgpu,
}

/// Which model, where, with how many threads.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// The GGUF model: a file, or a registered name fetched on first use
    /// (smollm2-135m, the default; gemma3-270m); a file that exists wins over a name.
    #[arg(long, short)]
    pub model: Option<PathBuf>,
    /// Worker threads (default: the available parallelism).
    #[arg(long, short, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Where to run the model.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// With `--backend wgpu`: compute the CPU backend's bits (llama.cpp's)
    /// instead of the default fast mode's float activations.
    #[arg(long)]
    pub exact: bool,
    /// Read the model into memory instead of mapping it (a file changed while
    /// mapped ends the process; one read into memory cannot).
    #[arg(long)]
    pub no_mmap: bool,
}

/// The sampler chain's settings (llama.cpp's defaults and names).
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.8, value_parser = non_negative, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 disables).
    #[arg(long, default_value_t = 40, allow_negative_numbers = true)]
    pub top_k: usize,
    /// Nucleus sampling threshold in (0, 1] (1 disables).
    #[arg(long, default_value_t = 0.95, value_parser = unit_open_closed, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the best, P in [0, 1] (0 disables).
    #[arg(long, default_value_t = 0.05, value_parser = unit_closed, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Repetition penalty (1 disables).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Seed of the random draw: the same seed gives the same text.
    #[arg(long, short, default_value_t = SamplerConfig::default().seed)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampler configuration.
    pub fn config(&self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            penalty_last_n: self.repeat_last_n,
            seed: self.seed,
            ..SamplerConfig::default()
        }
    }
}

fn parse_f32(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("`{s}` is not a finite number"))
    }
}

fn non_negative(s: &str) -> Result<f32, String> {
    let v = parse_f32(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is negative: expected a number ≥ 0"))
    }
}

fn unit_open_closed(s: &str) -> Result<f32, String> {
    let v = parse_f32(s)?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} is outside (0, 1]"))
    }
}

fn unit_closed(s: &str) -> Result<f32, String> {
    let v = parse_f32(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside [0, 1]"))
    }
}

/// Builds rayon's global pool with `threads` threads (default: the available parallelism).
pub fn init_threads(threads: Option<u16>) -> Result<(), Box<dyn std::error::Error>> {
    let n = match threads {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| format!("cannot start {n} threads: {e}"))?;
    Ok(())
}

/// The model file that `--model` names: an existing file as it is; else a
/// registered model name (`gemma3-270m`), fetched and verified on first use;
/// the default model if omitted.
pub fn resolve_model(model: Option<&PathBuf>) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let Some(arg) = model else {
        return Ok(model_cache::default_model()?);
    };
    if arg.exists() {
        return Ok(arg.clone());
    }
    match arg.to_str() {
        Some(name) if model_cache::lookup(name).is_ok() => Ok(model_cache::model(name)?),
        _ => Err(format!(
            "{}: no such file, and not a model name ({})",
            arg.display(),
            model_cache::MODELS
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
        .into()),
    }
}

/// A model file, mapped, with its tokenizer and chat template.
pub struct ModelFile {
    /// The file.
    pub file: Arc<GgufFile>,
    /// Its path.
    pub path: PathBuf,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

impl ModelFile {
    /// Opens `--model` (see [`resolve_model`]) or the default model (fetching it on first use).
    pub fn open(model: Option<&PathBuf>) -> Result<ModelFile, Box<dyn std::error::Error>> {
        ModelFile::open_with(model, true)
    }

    /// [`ModelFile::open`], mapping the file if `mmap`, else reading it into memory.
    pub fn open_with(
        model: Option<&PathBuf>,
        mmap: bool,
    ) -> Result<ModelFile, Box<dyn std::error::Error>> {
        let path = resolve_model(model)?;
        let file = Arc::new(GgufFile::open_with(&path, mmap)?);
        let tokenizer = Tokenizer::from_gguf(file.header())?;
        Ok(ModelFile {
            file,
            path,
            tokenizer,
        })
    }

    /// The file's chat template, or ChatML if it has none.
    pub fn chat_template(&self) -> Result<ChatTemplate, Box<dyn std::error::Error>> {
        Ok(ChatTemplate::from_gguf(self.file.header())?.unwrap_or_else(ChatTemplate::chatml))
    }
}

/// The GPU backend on the default adapter, exact (the CPU's bits) or in
/// the default fast mode; names the GPU on stderr.
pub fn gpu_backend(exact: bool) -> Result<WgpuBackend, Box<dyn std::error::Error>> {
    let ctx = GpuContext::new(&DeviceOptions::default())?;
    let mode = if exact { "exact" } else { "fast" };
    eprintln!(
        "strata: GPU {} ({:?}), {mode} mode",
        ctx.caps().name,
        ctx.caps().backend
    );
    Ok(WgpuBackend::with_options(ctx, GpuOptions { exact }))
}

/// A model loaded on a backend, ready to make an [`Engine`].
pub enum Loaded {
    /// On the CPU, with the context size of its sessions.
    Cpu(Model<CpuBackend>, usize),
    /// On a GPU through wgpu (the graph compiled into its dispatches), with
    /// the context size of its sessions.
    Gpu(Model<WgpuBackend>, usize),
}

impl Loaded {
    /// Loads the model of `mf` on `backend` with a context of `n_ctx`
    /// positions (0: the model's training context, at most 4096), with
    /// progress on stderr.
    pub fn load(
        mf: &ModelFile,
        backend: BackendKind,
        exact: bool,
        n_ctx: usize,
    ) -> Result<Loaded, Box<dyn std::error::Error>> {
        let start = Instant::now();
        eprintln!("strata: loading {} ({backend:?})", mf.path.display());
        let loaded = match backend {
            BackendKind::Cpu => Loaded::Cpu(
                Model::load_with(&mf.file, CpuBackend::new(), &LoadOptions::default())?,
                n_ctx,
            ),
            BackendKind::Wgpu => {
                if u32::try_from(n_ctx).is_err() {
                    return Err(UsageError(format!("--ctx {n_ctx} is too large")).into());
                }
                let model =
                    Model::load_with(&mf.file, gpu_backend(exact)?, &LoadOptions::default())?;
                Loaded::Gpu(model, n_ctx)
            }
        };
        eprintln!("strata: loaded in {:.2} s", start.elapsed().as_secs_f64());
        Ok(loaded)
    }

    /// An engine over the model, with an empty KV cache, whose logits are
    /// checked to be finite ([`FiniteLogits`]).
    pub fn engine(&mut self) -> Result<Box<dyn Engine + '_>, Box<dyn std::error::Error>> {
        Ok(Box::new(FiniteLogits(self.raw_engine()?)))
    }

    fn raw_engine(&mut self) -> Result<Box<dyn Engine + '_>, Box<dyn std::error::Error>> {
        match self {
            Loaded::Cpu(model, n_ctx) => Ok(Box::new(model.session(&SessionOptions {
                n_ctx: *n_ctx,
                ..SessionOptions::default()
            })?)),
            Loaded::Gpu(model, n_ctx) => Ok(Box::new(model.session(&SessionOptions {
                n_ctx: *n_ctx,
                ..SessionOptions::default()
            })?)),
        }
    }
}

/// An engine whose logits must be finite: NaN or infinite logits (broken
/// weights) are an error naming the position, not a token sampled from
/// garbage (a NaN row's argmax is token 0, often end-of-generation, so the
/// reply ended silently as "stopped by eog").
pub struct FiniteLogits<E>(pub E);

/// The error for a row of logits that is not all finite, if it is not.
pub fn check_finite(logits: &[f32], position: usize) -> Result<(), String> {
    match logits.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(format!(
            "the model's logits at position {position} are not finite ({} for token {i}): \
             its weights hold NaN or infinite values, or overflow",
            logits[i]
        )),
    }
}

impl<E: Engine> Engine for FiniteLogits<E> {
    fn n_ctx(&self) -> usize {
        self.0.n_ctx()
    }
    fn n_vocab(&self) -> usize {
        self.0.n_vocab()
    }
    fn n_past(&self) -> usize {
        self.0.n_past()
    }
    fn truncate(&mut self, n: usize) -> Result<(), GenerateError> {
        self.0.truncate(n)
    }
    fn rewind_point(&self, n: usize) -> usize {
        self.0.rewind_point(n)
    }
    fn forward_last(&mut self, tokens: &[u32]) -> Result<&[f32], GenerateError> {
        let position = self.0.n_past() + tokens.len().saturating_sub(1);
        let logits = self.0.forward_last(tokens)?;
        check_finite(logits, position).map_err(|m| GenerateError::Engine(m.into()))?;
        Ok(logits)
    }
}

/// A model's graph on the CPU, or on a GPU through wgpu (the same graph,
/// compiled into GPU dispatches): what `logits`, `perplexity` and
/// `embedding` run.
pub enum GraphModel {
    /// On the CPU.
    Cpu(Model<CpuBackend>),
    /// On a GPU.
    Gpu(Model<WgpuBackend>),
}

/// A session of a [`GraphModel`], whichever its backend.
pub trait GraphSession {
    /// Empties the KV cache.
    fn reset(&mut self);
    /// Appends `tokens` and returns their logits ([`Session::forward`]).
    fn forward(&mut self, tokens: &[u32], mode: LogitsMode) -> llama_model::Result<&[f32]>;
    /// [`Session::forward_traced`].
    fn forward_traced(
        &mut self,
        tokens: &[u32],
        mode: LogitsMode,
        observer: &mut dyn llama_model::Observer,
    ) -> llama_model::Result<&[f32]>;
}

impl<B: llama_model::Backend> GraphSession for Session<'_, B> {
    fn reset(&mut self) {
        Session::reset(self)
    }
    fn forward(&mut self, tokens: &[u32], mode: LogitsMode) -> llama_model::Result<&[f32]> {
        Session::forward(self, tokens, mode)
    }
    fn forward_traced(
        &mut self,
        tokens: &[u32],
        mode: LogitsMode,
        observer: &mut dyn llama_model::Observer,
    ) -> llama_model::Result<&[f32]> {
        Session::forward_traced(self, tokens, mode, observer)
    }
}

impl GraphModel {
    /// Loads the model of `path` on `backend`, mapping the file if `mmap`,
    /// else reading it into memory.
    pub fn load_with(
        path: &Path,
        backend: BackendKind,
        exact: bool,
        mmap: bool,
    ) -> Result<GraphModel, Box<dyn std::error::Error>> {
        let file = Arc::new(GgufFile::open_with(path, mmap)?);
        Ok(match backend {
            BackendKind::Cpu => GraphModel::Cpu(Model::load_with(
                &file,
                CpuBackend::new(),
                &LoadOptions::default(),
            )?),
            BackendKind::Wgpu => GraphModel::Gpu(Model::load_with(
                &file,
                gpu_backend(exact)?,
                &LoadOptions::default(),
            )?),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &llama_model::Config {
        match self {
            GraphModel::Cpu(m) => m.config(),
            GraphModel::Gpu(m) => m.config(),
        }
    }

    /// A session over the model.
    pub fn session(
        &self,
        opts: &SessionOptions,
    ) -> Result<Box<dyn GraphSession + '_>, Box<dyn std::error::Error>> {
        Ok(match self {
            GraphModel::Cpu(m) => Box::new(m.session(opts)?),
            GraphModel::Gpu(m) => Box::new(m.session(opts)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_file_is_used_as_it_is() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert_eq!(resolve_model(Some(&path)).unwrap(), path);
    }

    #[test]
    fn neither_a_file_nor_a_name_lists_the_names() {
        let err = resolve_model(Some(&PathBuf::from("gemma3-270x"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "gemma3-270x: no such file, and not a model name (smollm2-135m, gemma3-270m)"
        );
    }
}
