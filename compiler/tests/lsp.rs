//! `kalkic lsp` end to end: the real binary over stdio, JSON-RPC with Content-Length
//! framing, every read under a deadline (a hung server fails the test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Longest wait for any one message (a verification on save included).
const WAIT: Duration = Duration::from_secs(60);

struct Client {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    /// Messages read while waiting for something else.
    seen: VecDeque<Value>,
    next_id: i64,
}

impl Client {
    fn start(cache: &Path) -> Client {
        Client::start_with(cache, &["--verify-budget-ms", "30000"])
    }

    fn start_with(cache: &Path, args: &[&str]) -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kalkic"))
            .arg("lsp")
            .args(args)
            .env("XDG_CACHE_HOME", cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kalkic starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut len = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        len = v.parse::<usize>().ok();
                    }
                }
                let mut body = vec![0; len.expect("a Content-Length header")];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let v: Value = serde_json::from_slice(&body).expect("a JSON body");
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Client {
            child,
            stdin,
            rx,
            seen: VecDeque::new(),
            next_id: 1,
        }
    }

    fn send(&mut self, v: Value) {
        let body = v.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn recv(&mut self, what: &str) -> Value {
        match self.rx.recv_timeout(WAIT) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no answer within {WAIT:?} waiting for {what}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the server closed stdout waiting for {what}")
            }
        }
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let v = self.recv(method);
            if v["id"] == json!(id) && v.get("method").is_none() {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
            self.seen.push_back(v);
        }
    }

    /// The next diagnostics published for `uri` that satisfy `ok`.
    fn diagnostics(&mut self, uri: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            let v = match self.seen.pop_front() {
                Some(v) => v,
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "no matching diagnostics for {uri}; last: {last:?}"
                    );
                    self.recv("diagnostics")
                }
            };
            if v["method"] == "textDocument/publishDiagnostics" && v["params"]["uri"] == uri {
                let ds = v["params"]["diagnostics"].as_array().cloned().unwrap();
                if ok(&ds) {
                    return ds;
                }
                last = Some(ds);
            }
        }
    }

    /// Every message until none came for `quiet`.
    fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut out: Vec<Value> = self.seen.drain(..).collect();
        while let Ok(v) = self.rx.recv_timeout(quiet) {
            out.push(v);
        }
        out
    }

    fn open(&mut self, uri: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "kalki", "version": 1, "text": text}}),
        );
    }

    fn change(&mut self, uri: &str, version: i32, text: &str) {
        self.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]}),
        );
    }

    fn at(&mut self, method: &str, uri: &str, pos: Value) -> Value {
        self.request(
            method,
            json!({"textDocument": {"uri": uri}, "position": pos}),
        )
    }
}

/// The LSP position of the `nth` occurrence of `needle` in `text`, plus `skip` bytes.
/// Columns are counted in UTF-16 units, independently of the server's code.
fn pos(text: &str, needle: &str, nth: usize, skip: usize) -> Value {
    let offset = text.match_indices(needle).nth(nth).expect(needle).0 + skip;
    let before = &text[..offset];
    let line = before.matches('\n').count();
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .encode_utf16()
        .count();
    json!({"line": line, "character": col})
}

fn uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kalkic-lsp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::canonicalize(&dir).unwrap()
}

const LIB: &str = r#"import std::umboxes::{sniffer, ids}

/// A door sensor.
device type Door {
    sensed open: bool
    commands lock
    alerts forced

    states normal < suspicious < attack
    initial normal

    normal     { chain [sniffer] }
    suspicious { chain [sniffer, ids(threshold = 3)] }
    attack     { chain [drop] }

    normal     -> suspicious on port_scan
    suspicious -> attack     on forced
    suspicious -> normal     after 10m quiet
    attack     -> normal     on operator reset
}
"#;

const SITE: &str = r#"import lib::Door
import std::devices::Camera

site office {
    bridge "br0" uplink "eth0"
    /* µ😀 */ device front: Door at 10.0.0.10 port "p1"
    device cam: Camera at 10.0.0.11 port "p2"
    rule lockdown when cam in attack then front -> attack
}
"#;

#[test]
fn language_server_over_stdio() {
    let dir = scratch("e2e");
    let cache = dir.join("cache");
    std::fs::write(dir.join("lib.kalki"), LIB).unwrap();
    std::fs::write(dir.join("site.kalki"), SITE).unwrap();
    let site = uri(&dir.join("site.kalki"));

    let mut c = Client::start(&cache);
    let init = c.request(
        "initialize",
        json!({"processId": null, "rootUri": uri(&dir), "capabilities": {}}),
    );
    let caps = &init["capabilities"];
    assert_eq!(caps["hoverProvider"], json!(true), "{init}");
    assert_eq!(caps["definitionProvider"], json!(true), "{init}");
    assert_eq!(caps["positionEncoding"], json!("utf-16"), "{init}");
    assert_eq!(caps["documentFormattingProvider"], json!(true), "{init}");
    c.notify("initialized", json!({}));

    // An unknown type, after a comment whose characters are wider in UTF-8 than UTF-16.
    let broken = SITE.replace("front: Door", "front: Dor");
    c.open(&site, &broken);
    let ds = c.diagnostics(&site, |ds| !ds.is_empty());
    let d = ds
        .iter()
        .find(|d| d["code"] == "K103")
        .unwrap_or_else(|| panic!("no K103 in {ds:?}"));
    assert_eq!(d["severity"], json!(1));
    assert_eq!(d["range"]["start"], pos(&broken, "Dor ", 0, 0), "{d}");
    assert_eq!(d["range"]["end"], pos(&broken, "Dor ", 0, 3), "{d}");
    assert!(d["message"].as_str().unwrap().contains("Dor"), "{d}");

    // Fixed: the diagnostics clear.
    c.change(&site, 2, SITE);
    c.diagnostics(&site, <[Value]>::is_empty);

    // Hover on a device type: its states in posture order with their chains.
    let h = c.at("textDocument/hover", &site, pos(SITE, "Door at", 0, 1));
    let text = h["contents"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let order: Vec<usize> = ["`normal`", "`suspicious`", "`attack`"]
        .iter()
        .map(|s| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s} not in hover: {text}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert!(text.contains("[sniffer, ids(threshold = 3)]"), "{text}");

    // Hover on a device: its type and address.
    let h = c.at("textDocument/hover", &site, pos(SITE, "cam in", 0, 1));
    let text = h["contents"]["value"].as_str().unwrap_or_default();
    assert!(
        text.contains("Camera") && text.contains("10.0.0.11"),
        "{text}"
    );

    // Go to definition into an imported file.
    let def = c.at("textDocument/definition", &site, pos(SITE, "Door at", 0, 2));
    assert_eq!(def["uri"], uri(&dir.join("lib.kalki")), "{def}");
    assert_eq!(def["range"]["start"], pos(LIB, "Door {", 0, 0), "{def}");

    // ... and into the standard library: a real, read-only file holding the name there.
    let def = c.at(
        "textDocument/definition",
        &site,
        pos(SITE, "Camera at", 0, 0),
    );
    let file = def["uri"]
        .as_str()
        .unwrap()
        .strip_prefix("file://")
        .unwrap()
        .to_string();
    assert!(Path::new(&file).starts_with(&cache), "{def}");
    let std_text = std::fs::read_to_string(&file).unwrap();
    assert!(std::fs::metadata(&file).unwrap().permissions().readonly());
    let line = def["range"]["start"]["line"].as_u64().unwrap() as usize;
    let col = def["range"]["start"]["character"].as_u64().unwrap() as usize;
    let line_text = std_text.lines().nth(line).unwrap();
    assert!(line_text.starts_with("device type Camera"), "{line_text}");
    assert_eq!(&line_text[col..col + "Camera".len()], "Camera");

    // Completion: after `dev ->`, that device's states; elsewhere names in scope.
    let items = c.at(
        "textDocument/completion",
        &site,
        pos(SITE, "front -> a", 0, 10),
    );
    let got = labels(&items);
    assert_eq!(got, ["normal", "suspicious", "attack"], "{items}");
    let items = c.at(
        "textDocument/completion",
        &site,
        pos(SITE, "    rule", 0, 4),
    );
    let got = labels(&items);
    for want in ["front", "cam", "Door", "Camera", "rule", "escalate"] {
        assert!(got.iter().any(|l| l == want), "{want} not offered: {got:?}");
    }
    assert!(
        !got.iter().any(|l| l == "ids"),
        "a name not imported here: {got:?}"
    );

    // Verify on save: a refuted assertion (K210) appears.
    let refuted = SITE.replace(
        "    rule lockdown",
        "    assert never front in attack\n    rule lockdown",
    );
    c.change(&site, 3, &refuted);
    c.diagnostics(&site, <[Value]>::is_empty);
    std::fs::write(dir.join("site.kalki"), &refuted).unwrap();
    c.notify(
        "textDocument/didSave",
        json!({"textDocument": {"uri": site}}),
    );
    let ds = c.diagnostics(&site, |ds| ds.iter().any(|d| d["code"] == "K210"));
    let d = ds.iter().find(|d| d["code"] == "K210").unwrap();
    assert_eq!(
        d["range"]["start"],
        pos(&refuted, "assert never", 0, 0),
        "{d}"
    );

    // Format document: `kalkic fmt`'s layout (the same function), as one whole-document
    // edit; a document with a syntax error is left alone.
    let messy = refuted.replace(
        "    assert never front in attack",
        "assert   never front  in attack",
    );
    c.change(&site, 4, &messy);
    let fmt =
        json!({"textDocument": {"uri": site}, "options": {"tabSize": 4, "insertSpaces": true}});
    let edits = c.request("textDocument/formatting", fmt.clone());
    let edits = edits.as_array().expect("formatting answers edits");
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert_eq!(
        edits[0]["newText"],
        json!(kalki_lang::fmt::format(&messy).unwrap())
    );
    assert!(edits[0]["newText"]
        .as_str()
        .unwrap()
        .contains("\n    assert never front in attack\n"));
    c.change(&site, 5, &format!("{messy}\nsite {{"));
    let none = c.request("textDocument/formatting", fmt);
    assert!(
        none.is_null() || none.as_array().is_some_and(Vec::is_empty),
        "{none}"
    );

    // Shutdown and exit: the process ends, successfully.
    let r = c.request("shutdown", Value::Null);
    assert_eq!(r, Value::Null);
    c.notify("exit", Value::Null);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = c.child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = c.child.kill();
            panic!("the server did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn labels(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not a list of completions: {items}"))
        .iter()
        .map(|i| i["label"].as_str().unwrap().to_string())
        .collect()
}

fn shut_down(mut c: Client) {
    c.request("shutdown", Value::Null);
    c.notify("exit", Value::Null);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = c.child.kill();
            panic!("the server did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn imported_files_unsaved_text_and_more_answers() {
    let dir = scratch("imports");
    let cache = dir.join("cache");
    // The imported file on disk declares a sensed variable twice.
    let dup = LIB.replace(
        "    sensed open: bool\n",
        "    sensed open: bool\n    sensed open: bool\n",
    );
    std::fs::write(dir.join("lib.kalki"), &dup).unwrap();
    std::fs::write(dir.join("site.kalki"), SITE).unwrap();
    let (site, lib) = (uri(&dir.join("site.kalki")), uri(&dir.join("lib.kalki")));

    let mut c = Client::start(&cache);
    c.request(
        "initialize",
        json!({"processId": null, "rootUri": uri(&dir), "capabilities": {}}),
    );
    c.notify("initialized", json!({}));

    // Opening the site reports the imported file's error in that file, with the first
    // declaration as related information.
    c.open(&site, SITE);
    let ds = c.diagnostics(&lib, |ds| !ds.is_empty());
    assert_eq!(ds.len(), 1, "{ds:?}");
    let d = &ds[0];
    assert_eq!(d["code"], "K104", "{d}");
    assert_eq!(d["range"]["start"], pos(&dup, "open", 1, 0), "{d}");
    let related = &d["relatedInformation"][0];
    assert_eq!(related["location"]["uri"], lib, "{d}");
    assert_eq!(
        related["location"]["range"]["start"],
        pos(&dup, "open", 0, 0),
        "{d}"
    );
    assert_eq!(related["message"], "first declared here", "{d}");

    // The editor's unsaved text of the imported file wins over the disk's.
    c.open(&lib, LIB);
    c.diagnostics(&lib, <[Value]>::is_empty);

    // Hover on a µmbox: parameters with types and defaults, emits, traffic contract.
    let h = c.at("textDocument/hover", &lib, pos(LIB, "ids(", 0, 1));
    let text = h["contents"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(text.contains("umbox ids"), "{text}");
    assert!(text.contains("param threshold"), "{text}");
    assert!(text.contains("emits"), "{text}");
    assert!(text.contains("traffic {"), "{text}");

    // Hover on a state: its place in the posture order and its chain.
    let h = c.at("textDocument/hover", &lib, pos(LIB, "suspicious {", 0, 2));
    let text = h["contents"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(text.contains("2 of 3"), "{text}");
    assert!(
        text.contains("chain [sniffer, ids(threshold = 3)]"),
        "{text}"
    );

    // Completion after `device.`: the type's sensed variables and commands.
    let typing = SITE.replace("then front -> attack", "then front -> attack, cam.");
    c.change(&site, 2, &typing);
    let items = c.at("textDocument/completion", &site, pos(&typing, "cam.", 0, 4));
    let got = labels(&items);
    for want in ["motion", "recording", "start_recording"] {
        assert!(got.iter().any(|l| l == want), "{want} not offered: {got:?}");
    }
    assert!(
        !got.iter().any(|l| l == "rule"),
        "keywords after `cam.`: {got:?}"
    );

    // Completion in imports: standard modules, then a module's items.
    let typing = format!("import std::\n{SITE}");
    c.change(&site, 3, &typing);
    let got = labels(&c.at(
        "textDocument/completion",
        &site,
        pos(&typing, "std::", 0, 5),
    ));
    assert!(
        got.iter().any(|l| l == "devices") && got.iter().any(|l| l == "umboxes"),
        "{got:?}"
    );
    let typing = format!("import std::umboxes::{{sn\n{SITE}");
    c.change(&site, 4, &typing);
    let got = labels(&c.at("textDocument/completion", &site, pos(&typing, "{sn", 0, 3)));
    assert!(got.iter().any(|l| l == "sniffer"), "{got:?}");
    assert!(!got.iter().any(|l| l == "Camera"), "{got:?}");

    // An edit after a save drops the verifier's findings: they point into the saved text.
    let refuted = SITE.replace(
        "    rule lockdown",
        "    assert never front in attack\n    rule lockdown",
    );
    c.change(&site, 5, &refuted);
    c.notify(
        "textDocument/didSave",
        json!({"textDocument": {"uri": site}}),
    );
    c.diagnostics(&site, |ds| ds.iter().any(|d| d["code"] == "K210"));
    let edited = refuted.replace("rule lockdown", "rule lockdown2");
    c.change(&site, 6, &edited);
    let ds = c.diagnostics(&site, |_| true);
    assert!(ds.is_empty(), "{ds:?}");

    shut_down(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn verification_stops_at_its_budget() {
    let dir = scratch("budget");
    std::fs::write(dir.join("lib.kalki"), LIB).unwrap();
    let refuted = SITE.replace(
        "    rule lockdown",
        "    assert never front in attack\n    rule lockdown",
    );
    std::fs::write(dir.join("site.kalki"), &refuted).unwrap();
    let site = uri(&dir.join("site.kalki"));

    // A budget spent before the first query: nothing is decided.
    let mut c = Client::start_with(&dir.join("cache"), &["--verify-budget-ms", "1"]);
    c.request(
        "initialize",
        json!({"processId": null, "rootUri": uri(&dir), "capabilities": {}}),
    );
    c.notify("initialized", json!({}));
    c.open(&site, &refuted);
    c.diagnostics(&site, <[Value]>::is_empty);
    c.notify(
        "textDocument/didSave",
        json!({"textDocument": {"uri": site}}),
    );
    let deadline = Instant::now() + WAIT;
    let mut said = false;
    let mut seen = Vec::new();
    while !said && Instant::now() < deadline {
        let v = c.recv("a message about the budget");
        said = v["method"] == "window/showMessage"
            && v["params"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("budget");
        seen.push(v);
    }
    assert!(said, "no word of the budget: {seen:?}");
    seen.extend(c.drain(Duration::from_millis(500)));
    // Undecided questions are not reported as K213 findings.
    for v in &seen {
        if v["method"] == "textDocument/publishDiagnostics" {
            let ds = v["params"]["diagnostics"].as_array().unwrap();
            assert!(!ds.iter().any(|d| d["code"] == "K213"), "{v}");
        }
    }
    // The server still answers.
    let h = c.at("textDocument/hover", &site, pos(&refuted, "cam in", 0, 1));
    assert!(h["contents"]["value"].as_str().is_some(), "{h}");
    shut_down(c);
    let _ = std::fs::remove_dir_all(&dir);
}
