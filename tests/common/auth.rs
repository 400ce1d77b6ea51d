//! For the tests of identities and cheap reads: running a python script against the
//! gateway with the official `ollama` client (and httpx, which it brings).

use serde_json::Value;

/// Runs `script` with python3 and `env`, and returns what it printed, as JSON; `None`
/// when the `ollama` module is missing and the test is to be skipped (under CI, a
/// failure: see `skip::available`). The script failing fails the test, with its stderr.
pub async fn python(script: &'static str, env: Vec<(&'static str, String)>) -> Option<Value> {
    if !super::skip::available(
        super::skip::runs("python3", &["-c", "import ollama, httpx"]),
        "python3 module `ollama` (pip install ollama)",
    ) {
        return None;
    }
    let env = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Some(super::python_json(script, env).await)
}

/// `GW` (the gateway's URL), `GW_CA` (its certificate), `GW_PORT`, and `GW_KEY` (the test
/// key), for [`python`].
pub fn python_env(gw: &super::Gateway) -> Vec<(&'static str, String)> {
    vec![
        ("GW", gw.url.clone()),
        ("GW_CA", gw.dir.0.join("cert.pem").display().to_string()),
        ("GW_KEY", super::TEST_KEY.to_string()),
        ("GW_PORT", gw.addr.port().to_string()),
    ]
}
