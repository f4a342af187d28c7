//! `strata serve` as a user starts it: the binary on the default model,
//! driven by the official `openai` Python client (tests/server/openai_check.py,
//! the same checks as the server crate's in-process test), then stopped by
//! SIGTERM while a streamed request is running: the request finishes, the
//! process exits with status 0 and stops accepting connections.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The port `strata serve --port 0` reports on stderr ("… listening on
/// http://127.0.0.1:PORT …").
fn reported_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("127.0.0.1:")? + "127.0.0.1:".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn health(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

#[test]
fn the_binary_serves_the_openai_client_and_stops_on_sigterm() {
    let has_openai = Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_openai {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the openai package (python3 -m pip install openai)"
        );
        eprintln!("skipped: python3 with the openai package is not installed");
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--port", "0", "--parallel", "2", "--ctx", "1024"])
        .args(["--api-key", "test-key"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The port from the log; the rest of the log drained in the background.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut port = None;
    let mut line = String::new();
    while port.is_none() {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("strata serve exited before listening: {:?}", child.wait());
        }
        port = reported_port(&line);
    }
    let port = port.unwrap();
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
    });
    let start = Instant::now();
    while !health(port) {
        assert!(start.elapsed() < Duration::from_secs(120), "no /health 200");
        std::thread::sleep(Duration::from_millis(100));
    }

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/server/openai_check.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/v1"))
        .arg("test-key")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A streamed request in flight, then SIGTERM: it still completes.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = r#"{"messages":[{"role":"user","content":"Count to twenty."}],"max_tokens":48,"stream":true}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut first = String::new();
    while !first.starts_with("data:") {
        first.clear();
        assert!(reader.read_line(&mut first).unwrap() > 0, "no first event");
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("data: [DONE]"),
        "the running stream was cut: {first}{rest}"
    );
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("strata serve did not exit within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still accepting after SIGTERM"
    );
}
