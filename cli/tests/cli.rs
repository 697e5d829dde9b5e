//! The built `care` binary in temporary homes: every command's happy path, and bad
//! input of every kind giving one clear sentence, the right exit code and no change.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// A temporary care home driven through the `care` binary.
struct Care {
    dir: tempfile::TempDir,
}

impl Care {
    fn new() -> Care {
        Care { dir: tempfile::tempdir().expect("a temporary directory") }
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_care"))
            .arg("--home")
            .arg(self.home().join("home"))
            .args(args)
            .env_remove("CARE_HOME")
            .output()
            .expect("the care binary runs")
    }

    /// Runs a command that must succeed, and returns its JSON output.
    fn json(&self, args: &[&str]) -> Value {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        let out = self.run(&with_json);
        assert!(
            out.status.success(),
            "care {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("care {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// Runs a command that must fail with `code`, and returns its stderr.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "care {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "care {args:?} panicked: {stderr}");
        assert!(stderr.trim_start().starts_with("error"), "care {args:?}: {stderr}");
        stderr
    }

    fn with_team() -> Care {
        let care = Care::new();
        care.json(&["init", "--name", "Ada"]);
        care.json(&["team", "create", "Ada's team"]);
        care
    }
}

#[test]
fn init_whoami_and_teams() {
    let care = Care::new();
    let me = care.json(&["init", "--name", "Ada"]);
    assert_eq!(me["name"], "Ada");
    let whoami = care.json(&["whoami"]);
    assert_eq!(whoami["device"], me["device"]);
    assert_eq!(care.json(&["team", "list"]), serde_json::json!([]));
    let team = care.json(&["team", "create", "Ada's team"]);
    let teams = care.json(&["team", "list"]);
    assert_eq!(teams[0]["id"], team["team"]);
    assert_eq!(teams[0]["role"], "owner");
    let show = care.json(&["team", "show"]);
    assert_eq!(show["name"], "Ada's team");
    assert_eq!(show["owner"], "Ada");
    let members = care.json(&["team", "members"]);
    assert_eq!(members[0]["name"], "Ada");
    assert_eq!(members[0]["role"], "owner");
    assert_eq!(members[0]["devices"][0]["id"], me["device"]);
    // Text output too.
    let out = care.run(&["team", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Ada's team"));
}

#[cfg(unix)]
#[test]
fn the_device_key_is_private_and_never_printed() {
    use std::os::unix::fs::PermissionsExt;
    let care = Care::new();
    care.json(&["init", "--name", "Ada"]);
    let key = care.home().join("home").join("device.key");
    let mode = std::fs::metadata(&key).expect("key file").permissions().mode();
    assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    let secret = std::fs::read(&key).expect("key file");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    for args in [&["whoami"][..], &["--json", "whoami"][..]] {
        let out = care.run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(&hex), "the secret key was printed");
    }
}

#[test]
fn care_plan_set_show_and_edit() {
    let care = Care::with_team();
    care.json(&["plan", "set", "about-me", "I like gardening and radio 4."]);
    care.json(&["plan", "set", "medication", "Paracetamol 500mg at 8am."]);
    let plan = care.json(&["plan", "show"]);
    assert_eq!(plan["about-me"], "I like gardening and radio 4.");
    assert_eq!(plan["medication"], "Paracetamol 500mg at 8am.");
    assert_eq!(plan["goals"], "");

    // $EDITOR gets a file holding the current text and what it saves is kept.
    let editor = care.home().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\necho ' And the garden.' >> \"$1\"\n")
        .expect("write editor");
    make_executable(&editor);
    let out = Command::new(env!("CARGO_BIN_EXE_care"))
        .args(["--home"])
        .arg(care.home().join("home"))
        .args(["--json", "plan", "edit", "about-me"])
        .env("EDITOR", &editor)
        .env_remove("VISUAL")
        .output()
        .expect("care runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan = care.json(&["plan", "show"]);
    let about = plan["about-me"].as_str().expect("text");
    assert!(about.starts_with("I like gardening and radio 4."), "{about}");
    assert!(about.contains("And the garden."), "{about}");

    // An editor that fails saves nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_care"))
        .args(["--home"])
        .arg(care.home().join("home"))
        .args(["plan", "edit", "goals"])
        .env("EDITOR", "false")
        .env_remove("VISUAL")
        .output()
        .expect("care runs");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(care.json(&["plan", "show"])["goals"], "");
}

#[test]
fn shift_notes_add_list_show_amend() {
    let care = Care::with_team();
    let added = care.json(&[
        "note",
        "add",
        "Helped with breakfast; walked to the shop.",
        "--visit-start",
        "2026-11-20T09:00",
        "--visit-end",
        "2026-11-20T10:00",
        "--med",
        "paracetamol 500mg given",
        "--med",
        "ibuprofen 200mg refused",
        "--mood",
        "cheerful",
        "--concern",
    ]);
    let id = added["id"].as_str().expect("note id").to_owned();
    care.json(&["note", "add", "Second visit, all well."]);
    let list = care.json(&["note", "list", "--limit", "10"]);
    assert_eq!(list.as_array().expect("list").len(), 2);
    assert_eq!(list[1]["id"], id.as_str(), "newest first");
    assert_eq!(care.json(&["note", "list", "--limit", "1"]).as_array().expect("list").len(), 1);

    let note = care.json(&["note", "show", &id]);
    assert_eq!(note["text"], "Helped with breakfast; walked to the shop.");
    assert_eq!(note["medications"][0]["name"], "paracetamol");
    assert_eq!(note["medications"][0]["given"], true);
    assert_eq!(note["medications"][1]["given"], false);
    assert_eq!(note["mood"], "cheerful");
    assert_eq!(note["concern"], true);
    assert!(note["visit_end_ms"].as_i64() > note["visit_start_ms"].as_i64());

    care.json(&["note", "amend", &id, "It was the corner shop, not the market."]);
    let note = care.json(&["note", "show", &id]);
    assert_eq!(note["text"], "Helped with breakfast; walked to the shop.", "original kept");
    assert_eq!(note["amendments"][0]["text"], "It was the corner shop, not the market.");
    let text = String::from_utf8_lossy(&care.run(&["note", "show", &id]).stdout).into_owned();
    assert!(text.contains("amended") && text.contains("by Ada"), "{text}");
}

#[test]
fn rota_add_join_decline_list() {
    let care = Care::with_team();
    let a = care.json(&[
        "rota",
        "add",
        "--start",
        "2026-12-01T09:00",
        "--end",
        "2026-12-01T10:00",
        "--needs",
        "2",
        "--title",
        "Morning",
    ]);
    let b = care.json(&["rota", "add", "--start", "2027-01-05T18:00", "--end", "2027-01-05T19:00"]);
    let a = a["id"].as_str().expect("id").to_owned();
    let b = b["id"].as_str().expect("id").to_owned();
    care.json(&["rota", "join", &a]);
    care.json(&["rota", "decline", &b]);
    let all = care.json(&["rota", "list"]);
    assert_eq!(all.as_array().expect("list").len(), 2);
    assert_eq!(all[0]["id"], a.as_str());
    assert_eq!(all[0]["joined"], 1);
    assert_eq!(all[0]["covered"], false);
    assert_eq!(all[1]["responses"][0]["response"], "declined");
    let december = care.json(&["rota", "list", "--from", "2026-12-01", "--to", "2026-12-31"]);
    assert_eq!(december.as_array().expect("list").len(), 1);
}

#[test]
fn promises_add_agree_list() {
    let care = Care::with_team();
    let p = care.json(&["promise", "add", "Getting Support Promise", "--text", "We listen first."]);
    let id = p["id"].as_str().expect("id").to_owned();
    assert_eq!(care.json(&["promise", "agree", &id])["version"], 1);
    let list = care.json(&["promise", "list"]);
    assert_eq!(list[0]["title"], "Getting Support Promise");
    assert_eq!(list[0]["versions"][0]["text"], "We listen first.");
    assert_eq!(list[0]["agreements"][0]["name"], "Ada");
}

#[test]
fn export_json_and_automerge_and_doctor() {
    let care = Care::with_team();
    care.json(&["note", "add", "Exported note"]);
    care.json(&["plan", "set", "goals", "Walk to the park by spring."]);
    let out_dir = care.home().join("export");
    let report = care.json(&[
        "export",
        "--out",
        out_dir.to_str().expect("utf-8 path"),
        "--format",
        "automerge",
    ]);
    assert!(report["documents"].as_u64() >= Some(4));
    let plan = std::fs::read(out_dir.join("plan.automerge")).expect("plan exported");
    let doc = automerge::Automerge::load(&plan).expect("a standard automerge file");
    assert!(!doc.get_heads().is_empty());
    let json_dir = care.home().join("json");
    care.json(&["export", "--out", json_dir.to_str().expect("utf-8 path")]);
    let plan: Value =
        serde_json::from_slice(&std::fs::read(json_dir.join("plan.json")).expect("plan.json"))
            .expect("json");
    assert_eq!(plan["sections"]["goals"], "Walk to the park by spring.");
    let members: Value = serde_json::from_slice(
        &std::fs::read(json_dir.join("membership.json")).expect("membership"),
    )
    .expect("json");
    assert_eq!(members["members"][0]["name"], "Ada");
    let doctor = care.json(&["doctor"]);
    assert_eq!(doctor["healthy"], true);

    // The Automerge export is checked with no home at all, then with one byte changed.
    let verified = care.json(&["verify", out_dir.to_str().expect("utf-8 path")]);
    assert_eq!(verified["failure"], Value::Null);
    assert!(verified["changes"].as_u64() >= Some(3), "{verified}");
    assert_eq!(verified["kept_aside"], 0);
    assert_eq!(care.json(&["aside", "list"])["kept_aside"], serde_json::json!([]));
    let plan_sigs = out_dir.join("plan.signatures");
    let mut bytes = std::fs::read(&plan_sigs).expect("signatures exported");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&plan_sigs, bytes).expect("written");
    let out = care.run(&["verify", out_dir.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("FAILED at plan, change "), "{text}");
}

#[test]
fn a_note_is_audited_with_its_author_and_proof() {
    let care = Care::with_team();
    let note = care.json(&["note", "add", "Audited note", "--med", "paracetamol 500mg given"]);
    let id = note["id"].as_str().expect("an id").to_owned();
    care.json(&["note", "amend", &id, "Audited, and amended."]);
    let audit = care.json(&["audit", &id]);
    assert_eq!(audit["verified"], true);
    let changes = audit["changes"].as_array().expect("a list");
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["name"], "Ada");
    assert_eq!(changes[0]["role"], "owner");
    assert_eq!(changes[0]["signature"], "valid");
    let text = String::from_utf8_lossy(&care.run(&["audit", "--doc", "plan"]).stdout).into_owned();
    assert!(text.contains("signature not needed"), "{text}");
    care.fails(2, &["audit"]);
    care.fails(2, &["audit", "--doc", "nonsense"]);
    care.fails(2, &["audit", &id, "--doc", "plan"]);
    care.fails(2, &["audit", "--section", "bathing"]);

    care.json(&["plan", "set", "routines", "Tea at eight."]);
    let section = care.json(&["audit", "--section", "routines"]);
    assert_eq!(section["verified"], true);
    assert_eq!(section["changes"].as_array().expect("a list").len(), 1);
    assert_eq!(section["changes"][0]["what"], "an edit of routines");
}

#[test]
fn usage_errors_exit_2_and_change_nothing() {
    let care = Care::with_team();
    care.json(&["note", "add", "The only note."]);
    let cases: &[&[&str]] = &[
        &["note", "add", "x", "--visit-start", "tomorrowish"],
        &["note", "add", "x", "--med", "paracetamol"],
        &["note", "add", "x", "--med", "paracetamol 500mg maybe"],
        &["note", "show", "not-an-id"],
        &["note", "list", "--limit", "lots"],
        &["plan", "set", "hobbies", "text"],
        &["rota", "add", "--start", "09:00"],
        &["rota", "join", "2026-11.zzzz"],
        &["export", "--out", "x", "--format", "pdf"],
        &["aside", "accept"],
        &["aside", "accept", "not-a-hash"],
        &["frobnicate"],
        &["init"],
    ];
    for args in cases {
        care.fails(2, args);
    }
    assert_eq!(care.json(&["note", "list"]).as_array().expect("list").len(), 1);
}

#[test]
fn runtime_errors_are_one_sentence_and_change_nothing() {
    let care = Care::with_team();
    care.json(&["note", "add", "The only note."]);
    let unknown_note = "2026-11.aaaaaaaaaaaaa";
    for (args, says) in [
        (&["init", "--name", "Again"][..], "already holds a care home"),
        (&["note", "show", unknown_note][..], "no note"),
        (&["note", "amend", unknown_note, "text"][..], "no note"),
        (&["note", "add", "   "][..], "empty"),
        (&["note", "add", "x", "--visit-start", "10:00", "--visit-end", "09:00"][..], "before"),
        (&["rota", "add", "--start", "2026-12-01T10:00", "--end", "2026-12-01T09:00"][..], "after"),
        (&["--team", "nobody's team", "note", "list"][..], "no team matches"),
        (&["team", "create", ""][..], "team name"),
        (&["aside", "accept", &"ab".repeat(32)][..], "no change kept aside"),
    ] {
        let stderr = care.fails(1, args);
        assert!(stderr.to_lowercase().contains(says), "care {args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "care {args:?}: {stderr}");
    }
    assert_eq!(care.json(&["note", "list"]).as_array().expect("list").len(), 1);
    let other = Care::new();
    let stderr = other.fails(1, &["whoami"]);
    assert!(stderr.contains("care init"), "{stderr}");
}

#[test]
fn a_damaged_document_is_reported_by_doctor_and_the_rest_still_works() {
    let care = Care::with_team();
    care.json(&["note", "add", "A note that stays readable."]);
    care.json(&["plan", "set", "about-me", "Damaged soon."]);
    let db = care.home().join("home").join("care.sqlite");
    let conn = rusqlite::Connection::open(&db).expect("open store");
    let key = care::Home::store_key_of(&care.home().join("home")).expect("key file");
    conn.execute_batch(&key.expect("a key").key_pragma()).expect("unlocked");
    let damaged = conn
        .execute(
            "UPDATE chunks SET data = zeroblob(length(data)) WHERE doc = (SELECT id FROM docs WHERE kind = 'plan')",
            [],
        )
        .expect("damage the plan");
    assert!(damaged > 0);
    drop(conn);
    let out = care.run(&["--json", "doctor"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor json");
    assert_eq!(report["healthy"], false);
    let stderr = care.fails(1, &["plan", "show"]);
    assert!(stderr.contains("damaged"), "{stderr}");
    assert_eq!(care.json(&["note", "list"]).as_array().expect("list").len(), 1);
}

#[test]
fn two_processes_writing_at_once_lose_nothing() {
    let care = std::sync::Arc::new(Care::with_team());
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let care = std::sync::Arc::clone(&care);
            std::thread::spawn(move || {
                for i in 0..15 {
                    care.json(&["note", "add", &format!("writer {w} note {i}")]);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let notes = care.json(&["note", "list", "--limit", "100"]);
    assert_eq!(notes.as_array().expect("list").len(), 30);
    assert_eq!(care.json(&["doctor"])["healthy"], true);
}

fn make_executable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

#[test]
fn a_store_key_given_by_the_person_stays_out_of_the_home() {
    let care = Care::new();
    let key = "ab".repeat(32);
    let with_key = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_care"))
            .arg("--home")
            .arg(care.home().join("home"))
            .args(args)
            .env_remove("CARE_HOME")
            .env("CARE_STORE_KEY", &key)
            .output()
            .expect("the care binary runs")
    };
    for args in [
        &["init", "--name", "Ada"][..],
        &["team", "create", "Ada's team"],
        &["note", "add", "Kept under the person's own key."],
    ] {
        let out = with_key(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(!care.home().join("home").join("store.key").exists(), "the key is not kept");
    let listed = String::from_utf8_lossy(&with_key(&["note", "list"]).stdout).into_owned();
    assert!(listed.contains("Kept under the person's own key."), "{listed}");
    // Without the key, or with a damaged one: a clear error, nothing changed.
    let stderr = care.fails(1, &["note", "list"]);
    assert!(stderr.contains("encrypted"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_care"))
        .arg("--home")
        .arg(care.home().join("home"))
        .args(["note", "list"])
        .env("CARE_STORE_KEY", "not a key")
        .output()
        .expect("the care binary runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hexadecimal characters"));
}
