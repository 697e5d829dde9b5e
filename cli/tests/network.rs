//! `care serve`, `care team invite/join/remove`, `care sync` and `care status` with the
//! built binary in temporary homes, on loopback only.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The listen options every networked command gets in these tests.
const LOOPBACK: [&str; 3] = ["--listen", "127.0.0.1:0", "--no-lan"];

/// A temporary care home driven through the `care` binary.
struct Care {
    dir: tempfile::TempDir,
}

impl Care {
    fn new(name: &str) -> Care {
        let care = Care { dir: tempfile::tempdir().expect("a temporary directory") };
        care.json(&["init", "--name", name]);
        care
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_care"));
        command.arg("--home").arg(self.home()).args(args).env_remove("CARE_HOME");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the care binary runs")
    }

    /// Runs a command that must succeed, and returns its JSON output.
    fn json(&self, args: &[&str]) -> Value {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        let out = self.run(&with_json);
        assert!(out.status.success(), "care {args:?} failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("care {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// Runs a command that must fail with `code`, and returns its stderr.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "care {args:?}: {err}");
        assert!(!err.contains("panicked"), "care {args:?} panicked: {err}");
        err
    }

    /// Starts `care serve --json` and reads the address it prints.
    fn serve(&self) -> Serve {
        let mut args = vec!["--json", "serve"];
        args.extend_from_slice(&LOOPBACK);
        let mut serve = self.spawn(&args);
        let first = serve.line(Duration::from_secs(20)).expect("serve prints its address");
        let addr: Value = serde_json::from_str(&first).expect("the address line is JSON");
        let addrs: Vec<&str> =
            addr["addrs"].as_array().expect("addrs").iter().filter_map(Value::as_str).collect();
        assert!(!addrs.is_empty(), "serve listens somewhere: {addr}");
        let device = addr["device"].as_str().expect("the address names the device");
        serve.addr = format!("{device}@{}", addrs.join(","));
        serve
    }

    /// Starts a long-running command, reading its stdout line by line.
    fn spawn(&self, args: &[&str]) -> Serve {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("care serve starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        Serve { child, lines, addr: String::new() }
    }
}

/// A running `care serve` (or `care relay`), killed when dropped.
struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// `DEVICE_ID@ip:port`, as `care sync --peer` takes it.
    addr: String,
}

impl Serve {
    fn line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").arg("-TERM").arg(&pid).status().expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("the child can be waited on") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn with_team(name: &str) -> Care {
    let care = Care::new(name);
    care.json(&["team", "create", &format!("{name}'s team")]);
    care
}

fn note_texts(care: &Care) -> Vec<String> {
    let notes = care.json(&["note", "list"]);
    let notes = notes.as_array().expect("a list of notes");
    notes.iter().filter_map(|n| n["text"].as_str().map(str::to_owned)).collect()
}

/// Checks `done` every 100 ms until it holds (true) or `within` passes (false).
fn poll(within: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// Runs `care sync --peer ADDR` on loopback, for at most `timeout` seconds.
fn sync(care: &Care, peer: &str, timeout: &str) -> Output {
    let mut args = vec!["--json", "sync", "--peer", peer, "--timeout", timeout];
    args.extend_from_slice(&LOOPBACK);
    care.run(&args)
}

/// Runs `care sync` until `done` holds, within a bounded number of tries.
fn sync_until(care: &Care, peer: &str, done: impl Fn(&Care) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let out = sync(care, peer, "15");
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        if done(care) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn invite_prints_a_ticket_and_bad_input_is_a_usage_error() {
    let ada = with_team("Ada");
    let out = ada.run(&["--json", "team", "invite", "--role", "worker", "--expires", "2h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let invite: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ticket = invite["ticket"].as_str().expect("a ticket");
    assert!(ticket.parse::<care::JoinTicket>().is_ok(), "{ticket}");
    assert_eq!(invite["role"], "worker");
    assert!(stderr(&out).contains("care serve"), "warns that no serve runs: {}", stderr(&out));
    let text = ada.run(&["team", "invite", "--role", "volunteer"]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains('█'), "a QR code is printed");
    for bad in ["7", "7w", "0d", "soon", "-1h"] {
        ada.fails(2, &["team", "invite", "--role", "worker", "--expires", bad]);
    }
    ada.fails(2, &["team", "invite", "--role", "owner"]);
    ada.fails(2, &["team", "invite", "--role", "boss"]);
    let err = ada.fails(2, &["team", "join", "careinvite2garbage"]);
    assert!(err.contains("damaged"), "{err}");
    let err = ada.fails(2, &["team", "join", "hello"]);
    assert!(err.contains("not a care invitation ticket"), "{err}");
    ada.fails(2, &["sync", "--peer", "nonsense"]);
    ada.fails(2, &["serve", "--listen", "not-an-address"]);
    let out = ada.run(&["--json", "team", "add-device", "--expires", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let device: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ticket: care::JoinTicket =
        device["ticket"].as_str().expect("a ticket").parse().expect("a device ticket");
    assert_eq!(
        Some(device["member"].as_str().expect("a member")),
        ticket.device_of.map(|m| m.to_string()).as_deref()
    );
    ada.fails(2, &["team", "add-device", "--expires", "soon"]);
}

#[test]
fn serve_invite_join_sync_remove_status_and_stop() {
    let ada = with_team("Ada");
    ada.json(&["note", "add", "Breakfast and a walk"]);
    let mut serve = ada.serve();
    let invite = ada.run(&["--json", "team", "invite", "--role", "worker"]);
    assert!(invite.status.success(), "{}", stderr(&invite));
    assert!(!stderr(&invite).contains("warning"), "serve recorded its addresses");
    let invite: Value = serde_json::from_slice(&invite.stdout).expect("JSON");
    let ticket = invite["ticket"].as_str().expect("a ticket").to_owned();

    let bea = Care::new("Bea");
    let join = ["team", "join", &ticket, "--listen", "127.0.0.1:0", "--timeout", "30"];
    let joined = bea.json(&join);
    assert!(joined["documents"].as_u64().unwrap_or(0) >= 1, "{joined}");
    assert!(note_texts(&bea).contains(&"Breakfast and a walk".to_owned()));
    let cal = Care::new("Cal");
    let err = cal.fails(1, &join);
    assert!(err.contains("already used"), "{err}");

    ada.json(&["note", "add", "Lunch out"]);
    let arrived = sync_until(&bea, &serve.addr, |b| note_texts(b).contains(&"Lunch out".into()));
    assert!(arrived, "a note written while serve runs reaches Bea");

    let mut bea_serve = bea.serve();
    let connected = std::iter::from_fn(|| bea_serve.line(Duration::from_secs(40)))
        .any(|e| e.contains("\"connected\""));
    assert!(connected, "Bea's serve connects to Ada's");
    ada.json(&["note", "add", "Tea at four"]);
    let pushed = poll(Duration::from_secs(5), || note_texts(&bea).contains(&"Tea at four".into()));
    let lines = |s: &Serve| -> Vec<String> {
        std::iter::from_fn(|| s.line(Duration::from_millis(100))).collect()
    };
    assert!(pushed, "not pushed: ada {:?} bea {:?}", lines(&serve), lines(&bea_serve));
    let stopped = bea_serve.terminate(Duration::from_secs(10)).expect("Bea's serve stops");
    assert!(stopped.success());

    let bea_device = bea.json(&["whoami"])["device"].as_str().expect("device").to_owned();
    let status = ada.json(&["status"]);
    let devices = status[0]["devices"].as_array().expect("devices");
    assert!(devices.iter().any(|d| d["device"] == bea_device.as_str()), "{status}");

    ada.json(&["team", "remove", "Bea"]);
    ada.json(&["note", "add", "After Bea left"]);
    let out = sync(&bea, &serve.addr, "4");
    assert_eq!(out.status.code(), Some(1), "a removed member is not in sync: {}", stderr(&out));
    assert!(!note_texts(&bea).contains(&"After Bea left".to_owned()));

    let events: Vec<String> =
        std::iter::from_fn(|| serve.line(Duration::from_millis(100))).collect();
    assert!(events.iter().any(|e| e.contains("\"connected\"")), "{events:?}");
    let status = serve.terminate(Duration::from_secs(10)).expect("serve stops on SIGTERM");
    assert!(status.success(), "serve exits 0: {status}");
    let after = ada.run(&["--json", "team", "invite", "--role", "worker"]);
    assert!(stderr(&after).contains("care serve"), "the stopped serve cleared its addresses");
}

#[test]
fn a_circle_node_added_to_a_team_holds_its_documents() {
    let ada = with_team("Ada");
    ada.json(&["note", "add", "written before the circle node joined"]);
    let circle = Care::new("Circle relay");
    let mut relay = circle.spawn(&["--json", "relay", "--listen", "127.0.0.1:0"]);
    let first = relay.line(Duration::from_secs(20)).expect("the circle node prints its ticket");
    let printed: Value = serde_json::from_str(&first).expect("the ticket line is JSON");
    let ticket = printed["tickets"][0].as_str().expect("a ticket").to_owned();
    assert!(ticket.starts_with("carecircle2"), "{ticket}");
    // More one-time tickets, from another program on the circle node's home.
    let more = circle.json(&["relay-ticket", "--expires", "1h"]);
    let other = more["ticket"].as_str().expect("a ticket");
    assert!(other.starts_with("carecircle2") && other != ticket, "{other}");

    ada.fails(2, &["team", "add-relay", "carecircle2damaged"]);
    let added = ada.json(&["team", "add-relay", &ticket, "--listen", "127.0.0.1:0"]);
    assert_eq!(added["in_sync"], true, "{added}");
    let members = ada.json(&["team", "members"]);
    let roles: Vec<&str> =
        members.as_array().expect("members").iter().filter_map(|m| m["role"].as_str()).collect();
    assert!(roles.contains(&"relay"), "{members}");
    // The circle node holds the team sealed: documents it can pass on, none it can read.
    let shown = circle.json(&["team", "show"]);
    assert_eq!(shown["documents"].as_array().map(Vec::len), Some(0), "{shown}");
    let sealed = shown["sealed_documents"].as_array().map_or(0, Vec::len);
    assert!(sealed >= 3, "{shown}");
    let text = circle.run(&["team", "show"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("sealed documents"), "{text}");
    let status = relay.terminate(Duration::from_secs(10)).expect("the circle node stops");
    assert!(status.success(), "care relay exited with {status}");
}

/// Bea is removed while Cal is away. The note Bea writes after it reaches Cal's device,
/// which has not heard of the removal, and Cal's next sync passes it to Ada: `care aside
/// list` shows it there, out of `care note list`, until `care aside accept` lets it in.
#[test]
fn a_removed_workers_late_note_is_kept_aside_until_accepted() {
    let ada = with_team("Ada");
    let mut serve = ada.serve();
    let mut joined = Vec::new();
    for name in ["Bea", "Cal"] {
        let invite = ada.json(&["team", "invite", "--role", "worker", "--name", name]);
        let ticket = invite["ticket"].as_str().expect("a ticket").to_owned();
        let care = Care::new(name);
        care.json(&["team", "join", &ticket, "--listen", "127.0.0.1:0", "--timeout", "30"]);
        joined.push(care);
    }
    let [bea, cal] = <[Care; 2]>::try_from(joined).unwrap_or_else(|_| panic!("two homes"));
    // Bea learns that Cal joined after her.
    let knows_cal = |b: &Care| b.json(&["team", "members"]).to_string().contains("\"Cal\"");
    assert!(sync_until(&bea, &serve.addr, knows_cal));
    ada.json(&["team", "remove", "Bea"]);
    bea.json(&["note", "add", "Bea, after her removal"]);
    assert!(serve.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()));

    // Cal's device, with Ada away, meets Bea's.
    let mut cal_serve = cal.serve();
    let late = "Bea, after her removal".to_owned();
    assert!(sync_until(&bea, &cal_serve.addr, |_| note_texts(&cal).contains(&late)));
    assert!(cal_serve.terminate(Duration::from_secs(10)).is_some());

    let serve = ada.serve();
    let aside = |care: &Care| care.json(&["aside", "list"])["kept_aside"].clone();
    let reached = sync_until(&cal, &serve.addr, |_| {
        aside(&ada).as_array().is_some_and(|listed| listed.len() == 1)
    });
    assert!(reached, "Ada keeps Bea's late note aside: {}", aside(&ada));
    assert!(!note_texts(&ada).contains(&late));
    let listed = aside(&ada);
    assert_eq!(listed[0]["audit"]["name"], "Bea");
    assert_eq!(listed[0]["after_removal"], true);
    let text = String::from_utf8_lossy(&ada.run(&["aside", "list"]).stdout).into_owned();
    assert!(text.contains("written after its device's removal") && text.contains(&late), "{text}");
    let change = listed[0]["audit"]["change"].as_str().expect("a change hash");
    assert_eq!(ada.json(&["aside", "accept", change])["accepted"], 1);
    assert!(note_texts(&ada).contains(&late));
    assert_eq!(aside(&ada), serde_json::json!([]));
}

/// A phone's `care serve` killed (no close sent) and started again from its home: its
/// new connection replaces the one Ada's node still holds for it, at once rather than
/// after Ada's end of the old one times out, and live pushes reach it again.
#[test]
fn a_serve_killed_and_started_again_replaces_its_old_connection() {
    let ada = with_team("Ada");
    let serve = ada.serve();
    let invite = ada.json(&["team", "invite", "--role", "worker"]);
    let ticket = invite["ticket"].as_str().expect("a ticket").to_owned();
    let bea = Care::new("Bea");
    bea.json(&["team", "join", &ticket, "--listen", "127.0.0.1:0", "--timeout", "30"]);
    let bea_device = bea.json(&["whoami"])["device"].as_str().expect("device").to_owned();

    let connected = |s: &Serve| {
        std::iter::from_fn(|| s.line(Duration::from_secs(40))).any(|e| e.contains("\"connected\""))
    };
    let bea_serve = bea.serve();
    assert!(connected(&bea_serve), "Bea's serve connects to Ada's");
    // Past the window in which two connections count as crossing dials, so that which
    // of the two device ids is smaller does not matter.
    std::thread::sleep(Duration::from_millis(care_sync::hub::CROSSING_DIALS_MS + 500));
    drop(bea_serve); // SIGKILL: Bea's end sends no close.

    let bea_serve = bea.serve();
    assert!(connected(&bea_serve), "Bea's serve connects again after a kill");
    ada.json(&["note", "add", "Tea at four"]);
    let pushed = poll(Duration::from_secs(10), || note_texts(&bea).contains(&"Tea at four".into()));
    let events: Vec<String> =
        std::iter::from_fn(|| serve.line(Duration::from_millis(200))).collect();
    assert!(pushed, "a live push reaches the restarted serve: {events:?}");
    let replaced = events.iter().any(|e| {
        e.contains("\"disconnected\"") && e.contains(&bea_device) && e.contains("replaced")
    });
    assert!(replaced, "Ada's node replaced Bea's old connection: {events:?}");
}
