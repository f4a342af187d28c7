//! A server on the default model on a free port, and a small HTTP/1.1 client
//! over a raw TCP stream (so a test can also drop a connection mid-stream).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use llama_model::{CpuBackend, LoadOptions, Model};
use serde_json::Value;
use strata_server::{LoadError, LoadedModel, Server, ServerOptions};

/// Loads the default model (fetched on first use).
pub fn load_default() -> Result<LoadedModel<CpuBackend>, LoadError> {
    let path = model_cache::default_model()?;
    let file = Arc::new(gguf_format::GgufFile::open(&path)?);
    let model = Model::load_with(&file, CpuBackend::new(), &LoadOptions::default())?;
    Ok(LoadedModel::from_gguf(model, file.header())?)
}

/// Options for a test server: any free port, small contexts.
pub fn options() -> ServerOptions {
    ServerOptions {
        port: 0,
        parallel: 2,
        n_ctx: 512,
        model_name: "smollm2".into(),
        shutdown_grace: Duration::from_secs(20),
        ..ServerOptions::default()
    }
}

/// Starts a server with `opts` and waits until its model is loaded.
pub fn start(opts: ServerOptions) -> Server {
    let server = Server::start(opts, load_default).expect("server starts");
    wait_healthy(server.addr());
    server
}

/// The server most tests share: one slot, so that every forward pass holds
/// one request and a seed gives the same text whatever other tests run.
pub fn shared() -> SocketAddr {
    static SERVER: OnceLock<SocketAddr> = OnceLock::new();
    *SERVER.get_or_init(|| {
        let server = start(ServerOptions {
            parallel: 1,
            ..options()
        });
        let addr = server.addr();
        // Lives as long as the test binary.
        std::mem::forget(server);
        addr
    })
}

pub fn wait_healthy(addr: SocketAddr) {
    let start = Instant::now();
    loop {
        if get(addr, "/health").status == 200 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the server never became healthy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A response: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a server-sent-events body.
    pub fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

/// Sends a request and reads the whole response (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut stream = open(addr, method, path, headers, body);
    let mut reader = BufReader::new(&mut stream);
    let (status, headers) = read_head(&mut reader);
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        while let Some(chunk) = read_chunk(&mut reader) {
            body.extend(chunk);
        }
        body
    } else {
        let mut body = Vec::new();
        reader.read_to_end(&mut body).expect("read body");
        body
    };
    Response {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], "")
}

pub fn post(addr: SocketAddr, path: &str, body: &str) -> Response {
    request(addr, "POST", path, &[], body)
}

/// Writes a request and returns the open stream.
pub fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    stream
}

pub fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').expect("header");
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    (status, headers)
}

/// One chunk of a chunked body, `None` at the end.
pub fn read_chunk(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let size = usize::from_str_radix(line.trim(), 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).ok()?;
    chunk.truncate(size);
    Some(chunk)
}

/// The value of a metric in `/metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = get(addr, "/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}
