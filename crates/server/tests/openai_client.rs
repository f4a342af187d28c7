//! The official `openai` Python client against a running server
//! (tests/server/openai_check.py). Skipped when python3 or the `openai`
//! package is missing, except under CI (`CI` set), where it must run.

use std::process::Command;

use crate::common;

#[test]
fn the_openai_python_client_works() {
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
    let server = common::start(strata_server::ServerOptions {
        parallel: 2,
        api_key: Some("test-key".into()),
        ..common::options()
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/server/openai_check.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/v1", server.addr()))
        .arg("test-key")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai_check.py failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}\n{stderr}");
    server.shutdown().unwrap();
}
