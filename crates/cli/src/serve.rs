//! `strata serve`: the OpenAI-compatible HTTP server (crate `strata-server`)
//! on a model loaded on the CPU or on a GPU through wgpu.

use std::path::PathBuf;
use std::sync::Arc;

use gguf_format::GgufFile;
use llama_model::{Backend, CpuBackend, LoadOptions, Model};
use strata_server::{LoadError, LoadedModel, Server, ServerOptions};

use crate::common::{init_threads, resolve_model, BackendKind};
use crate::CmdResult;

/// Arguments of `strata serve`.
#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model: a file, or a registered name fetched on first use
    /// (smollm2-135m, the default; gemma3-270m); a file that exists wins over a name.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests decoded together, in one forward pass per step.
    #[arg(long, short = 'p', default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    parallel: u64,
    /// Context size of each request's KV cache, in tokens (0: the model's training context, at most 4096).
    #[arg(long, short = 'c', default_value_t = 2048)]
    ctx: usize,
    /// Most tokens computed in one step over all requests (prompts are cut into chunks of at most this).
    #[arg(long, short = 'b', default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65536))]
    batch: u64,
    /// Extra sequences that keep finished requests' KV caches, so a request
    /// that extends or repeats a cached prompt computes only its new tokens
    /// (default: as many as --parallel within 1 GiB of caches; none with
    /// one slot).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=256))]
    cache_seqs: Option<u64>,
    /// Requests that may wait for a free slot; beyond it, 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long)]
    api_key: Option<String>,
    /// Where to run the model (wgpu runs the model graph op by op on the GPU).
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// With `--backend wgpu`: compute the CPU backend's bits (llama.cpp's)
    /// instead of the default fast mode's float activations.
    #[arg(long)]
    exact: bool,
    /// Worker threads (default: the available parallelism).
    #[arg(long, short, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

/// Loads the model file at `path` on `backend` (run on the server's scheduler thread).
fn load<B: Backend>(path: &PathBuf, backend: B) -> Result<LoadedModel<B>, LoadError> {
    let file = Arc::new(GgufFile::open(path)?);
    let model = Model::load_with(&file, backend, &LoadOptions::default())?;
    Ok(LoadedModel::from_gguf(model, file.header())?)
}

/// Runs `strata serve` until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> CmdResult {
    init_threads(args.threads)?;
    strata_server::init_logging();
    let path = resolve_model(args.model.as_ref())?;
    let opts = ServerOptions {
        host: args.host,
        port: args.port,
        parallel: args.parallel as usize,
        n_ctx: args.ctx,
        n_batch: args.batch as usize,
        max_queue: args.max_queue,
        api_key: args.api_key,
        model_name: path
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned()),
        handle_signals: true,
        cache_seqs: args.cache_seqs.map(|n| n as usize),
        ..ServerOptions::default()
    };
    eprintln!("strata: loading {} ({:?})", path.display(), args.backend);
    let server = match args.backend {
        BackendKind::Cpu => Server::start(opts, move || load(&path, CpuBackend::new()))?,
        BackendKind::Wgpu => {
            let exact = args.exact;
            Server::start(opts, move || {
                let gpu = crate::common::gpu_backend(exact).map_err(|e| e.to_string())?;
                load(&path, gpu)
            })?
        }
    };
    eprintln!("strata: listening on http://{}", server.addr());
    server.wait()?;
    Ok(())
}
