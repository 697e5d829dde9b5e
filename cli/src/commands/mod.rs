//! What each command does, and how it prints: human-readable text, or JSON on stdout
//! with `--json`.

mod invite;
mod net;
mod progress;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use care::{
    Booking, ExportFormat, Home, Member, NewBooking, NewNote, NoteQuery, NoteStream, Promise,
    Response, Section, ShiftNote, Team, Timestamp,
};
use chrono::{Local, TimeZone};
use serde_json::{Value, json};

use crate::args::{
    AsideCommand, Cli, Command, Format, NoteCommand, PlanCommand, PromiseCommand, RotaCommand,
    TeamCommand,
};

/// Runs one command.
pub(crate) fn run(cli: Cli) -> Result<ExitCode> {
    let dir = home_dir(&cli)?;
    let out = Out { json: cli.json };
    let team = cli.team.clone().unwrap_or_default();
    match cli.command {
        Command::Init { name } => {
            let home = init_home(&dir, &name)?;
            out.print(profile_json(&home), || {
                format!("Created a care home for {} in {}", name, dir.display())
            });
        }
        Command::Whoami => {
            let home = open_home(&dir)?;
            let p = home.profile();
            out.print(profile_json(&home), || {
                format!(
                    "{}\nmember {}\ndevice {}\nhome   {}",
                    p.name,
                    p.member,
                    p.device,
                    dir.display()
                )
            });
        }
        Command::Team(cmd) => team_command(&dir, &team, cmd, out)?,
        Command::Serve { net, relay } => return net::serve(&dir, &net, relay.as_deref(), out),
        Command::Relay { listen, tickets } => return net::relay(&dir, listen, tickets, out),
        Command::RelayTicket { expires } => {
            let valid_ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
            let ticket = open_home(&dir)?.circle_ticket(valid_ms)?.to_string();
            out.print(json!({"ticket": ticket}), || {
                format!("{ticket}\nAdds this circle node to one team, once.")
            });
        }
        Command::Sync { peer, timeout, net } => {
            return net::sync(&dir, peer.as_ref(), timeout, &net, out);
        }
        Command::Status => status::status(&mut open_home(&dir)?, out)?,
        Command::Plan(cmd) => plan_command(&mut open_home(&dir)?.team(&team)?, cmd, out)?,
        Command::Note(cmd) => note_command(&mut open_home(&dir)?.team(&team)?, cmd, out)?,
        Command::Rota(cmd) => rota_command(&mut open_home(&dir)?.team(&team)?, cmd, out)?,
        Command::Promise(cmd) => promise_command(&mut open_home(&dir)?.team(&team)?, cmd, out)?,
        Command::Export { out: path, format } => {
            let format = match format {
                Format::Json => ExportFormat::Json,
                Format::Automerge => ExportFormat::Automerge,
            };
            let report = open_home(&dir)?.team(&team)?.export(&path, format)?;
            out.print(json!(report), || {
                format!("Exported {} documents to {}", report.documents, path.display())
            });
        }
        Command::Audit { note, section, booking, promise, doc } => {
            let mut home = open_home(&dir)?;
            let mut team = home.team(&team)?;
            let audits = if let Some(id) = note {
                team.audit_note(id)?
            } else if let Some(section) = section {
                team.audit_section(section)?
            } else if let Some(id) = booking {
                team.audit_booking(id)?
            } else if let Some(id) = promise {
                team.audit_promise(id)?
            } else if let Some(kind) = doc {
                team.audit_document(kind)?
            } else {
                bail!("name a note, or one of --section, --booking, --promise or --doc")
            };
            let all_verified = audits.iter().all(care::ChangeAudit::verified);
            out.print(json!({"changes": audits, "verified": all_verified}), || {
                audits.iter().map(audit_text).collect::<Vec<_>>().join("\n")
            });
            if !all_verified {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Aside(AsideCommand::List) => {
            let entries = open_home(&dir)?.team(&team)?.kept_aside()?;
            out.print(json!({ "kept_aside": entries }), || {
                if entries.is_empty() {
                    return "Nothing is kept aside.".to_owned();
                }
                let listed: Vec<String> = entries
                    .iter()
                    .map(|e| {
                        let why = if e.after_removal {
                            "written after its device's removal"
                        } else {
                            "built on a change kept aside"
                        };
                        format!("{} ({why})\n{}", e.document, audit_text(&e.audit))
                    })
                    .collect();
                listed.join("\n")
            });
        }
        Command::Aside(AsideCommand::Accept { changes }) => {
            let accepted = open_home(&dir)?.team(&team)?.accept_kept_aside(&changes)?;
            out.print(json!({ "accepted": accepted }), || {
                format!("{accepted} changes entered the record.")
            });
        }
        Command::Verify { dir: export } => {
            let report = care::verify_export(&export)?;
            out.print(json!(report), || match &report.failure {
                None => format!(
                    "Verified: {} changes in {} documents of team {}, every signature and \
                     every author's right{}.",
                    report.changes,
                    report.documents,
                    report.team,
                    match report.kept_aside {
                        0 => String::new(),
                        n => format!("; {n} of the changes are kept aside, out of the record"),
                    }
                ),
                Some(f) => format!(
                    "FAILED at {}{}: {}",
                    f.document,
                    f.change.as_ref().map(|c| format!(", change {c}")).unwrap_or_default(),
                    f.why
                ),
            });
            if report.failure.is_some() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Doctor => {
            let report = open_home(&dir)?.doctor()?;
            let healthy = report.problems.is_empty();
            let problems: Vec<Value> = report
                .problems
                .iter()
                .map(|p| json!({"document": p.doc.map(|d| d.to_string()), "problem": p.detail}))
                .collect();
            out.print(
                json!({"healthy": healthy, "documents_checked": report.docs_checked, "problems": problems}),
                || {
                    let mut text = format!("Checked {} documents: ", report.docs_checked);
                    if healthy {
                        text.push_str("no damage found.");
                    } else {
                        text.push_str(&format!("{} problems", report.problems.len()));
                        for p in &report.problems {
                            text.push_str(&format!("\n  {}", p.detail));
                        }
                    }
                    text
                },
            );
            if !healthy {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One audited change, as a few lines for people.
fn audit_text(a: &care::ChangeAudit) -> String {
    let who = match (&a.name, a.role) {
        (Some(name), Some(role)) if a.hats.is_empty() => format!("{name} ({role})"),
        (Some(name), Some(role)) => format!("{name} ({role}; {})", a.hats.join(", ")),
        _ => "no member of the team".to_owned(),
    };
    let device = a.device.map_or("every device (computed)".to_owned(), |d| d.to_string());
    let received = a.received_at.map_or("-".to_owned(), crate::commands::local);
    let signature = match a.signature {
        care::SignatureVerdict::Valid => "valid",
        care::SignatureVerdict::Invalid => "INVALID",
        care::SignatureVerdict::Missing => "MISSING",
        care::SignatureVerdict::NotNeeded => "not needed",
        _ => "unknown",
    };
    let right = if a.right { "held" } else { "NOT HELD" };
    let aside = if a.kept_aside { "\n  kept aside, out of the record" } else { "" };
    format!(
        "{}\n  change   {}\n  by       {who}, device {device}\n  written  {} (the author's \
         clock), received here {received}\n  signature {signature}; right to write {right}{aside}",
        a.what,
        a.change,
        crate::commands::local(a.written_at),
    )
}

/// The key a person gives for the home's store in `CARE_STORE_KEY` (64 hexadecimal
/// characters), if any: the store is opened with it, and `care init` keeps it out of the
/// home (no `store.key` is written).
fn store_key_given() -> Result<Option<care::StoreKey>> {
    let Some(hex) = std::env::var_os("CARE_STORE_KEY") else {
        return Ok(None);
    };
    let hex = hex.to_str().unwrap_or_default().trim();
    let bytes: Option<Vec<u8>> = (hex.len() == 64)
        .then(|| {
            (0..64).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
        })
        .flatten();
    match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
        Some(key) => Ok(Some(care::StoreKey::from_bytes(key))),
        None => bail!("CARE_STORE_KEY must be 64 hexadecimal characters (a 256-bit key)"),
    }
}

/// Opens the home in `dir`, with the store key given in `CARE_STORE_KEY` or else its own.
pub(crate) fn open_home(dir: &Path) -> Result<Home> {
    Ok(match store_key_given()? {
        Some(key) => Home::open_with_store_key(dir, &key)?,
        None => Home::open(dir)?,
    })
}

/// Creates a home in `dir`, its store encrypted with the key given in `CARE_STORE_KEY`
/// or else a fresh one kept in the home.
pub(crate) fn init_home(dir: &Path, name: &str) -> Result<Home> {
    Ok(match store_key_given()? {
        Some(key) => Home::init_with_store_key(dir, name, key)?,
        None => Home::init(dir, name)?,
    })
}

/// Where output goes: JSON when asked for, text otherwise.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    json: bool,
}

impl Out {
    pub(crate) fn print(self, value: Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", text());
        }
    }
}

fn home_dir(cli: &Cli) -> Result<PathBuf> {
    if let Some(dir) = &cli.home {
        return Ok(dir.clone());
    }
    let data = dirs::data_dir().context("no data directory on this platform: pass --home DIR")?;
    Ok(data.join("care"))
}

fn team_command(dir: &Path, which: &str, cmd: TeamCommand, out: Out) -> Result<()> {
    let home = &mut open_home(dir)?;
    match cmd {
        TeamCommand::Create { name } => {
            let id = home.create_team(&name)?;
            out.print(json!({"team": id.to_string(), "name": name}), || {
                format!("Created team {name} ({id})")
            });
        }
        TeamCommand::List => {
            let teams = home.teams()?;
            out.print(json!(teams), || {
                if teams.is_empty() {
                    return "No teams yet: create one with `care team create NAME`".into();
                }
                let lines: Vec<String> = teams
                    .iter()
                    .map(|t| {
                        let role = t.role.as_deref().unwrap_or("removed");
                        format!("{}  {}  ({role}, {} members)", t.id, t.name, t.members)
                    })
                    .collect();
                lines.join("\n")
            });
        }
        TeamCommand::Show => {
            let mut team = home.team(which)?;
            let info = team.info()?;
            let docs = team.documents()?;
            let sealed = team.sealed_documents()?;
            let m = team.membership();
            let owner = m.member(m.owner()).map(|o| o.name.clone()).unwrap_or_default();
            let role = team.my_role().map(|r| r.to_string());
            let value = json!({
                "team": team.id().to_string(), "name": info.name, "circle": info.circle,
                "owner": owner, "my_role": role, "members": m.members().count(),
                "documents": docs.iter().map(|d| json!({
                    "id": d.id.to_string(), "kind": d.kind, "changes_bytes": d.stored_bytes(),
                })).collect::<Vec<_>>(),
                "sealed_documents": sealed.iter().map(|d| json!({
                    "id": d.id.to_string(), "kind": d.kind, "pieces": d.rows,
                })).collect::<Vec<_>>(),
            });
            out.print(value, || {
                let mut text = format!(
                    "{} ({})\nowner: {owner}\nyour role: {}\nmembers: {}\ndocuments: {}",
                    info.name,
                    team.id(),
                    role.as_deref().unwrap_or("none"),
                    m.members().count(),
                    docs.len()
                );
                for d in &docs {
                    text.push_str(&format!("\n  {:<24} {} bytes", d.kind, d.stored_bytes()));
                }
                if !sealed.is_empty() {
                    text.push_str(&format!(
                        "\nsealed documents (held for the team, not readable here): {}",
                        sealed.len()
                    ));
                    for d in &sealed {
                        text.push_str(&format!("\n  {:<24} {} pieces", d.kind, d.rows));
                    }
                }
                text
            });
        }
        TeamCommand::Members => {
            let team = home.team(which)?;
            let members: Vec<&Member> = team.membership().members().collect();
            out.print(json!(members.iter().map(|m| member_json(m)).collect::<Vec<_>>()), || {
                let lines: Vec<String> = members
                    .iter()
                    .map(|m| {
                        let hats: Vec<&str> = m.hats.iter().map(|h| h.name.as_str()).collect();
                        let hats = if hats.is_empty() {
                            String::new()
                        } else {
                            format!(" [{}]", hats.join(", "))
                        };
                        format!(
                            "{:<20} {:<10}{hats}  {} devices  {}",
                            m.name,
                            m.role.to_string(),
                            m.devices.len(),
                            m.id
                        )
                    })
                    .collect();
                lines.join("\n")
            });
        }
        TeamCommand::Invite { role, name, expires } => {
            invite::invite(home, which, role, name.as_deref(), expires, out)?;
        }
        TeamCommand::AddDevice { expires } => invite::add_device(home, which, expires, out)?,
        TeamCommand::Remove { member } => invite::remove(home, which, &member, out)?,
        TeamCommand::Join { ticket, listen, timeout } => {
            net::join(dir, &ticket, listen, timeout, out)?;
        }
        TeamCommand::AddRelay { ticket, listen, timeout } => {
            net::add_relay(dir, which, &ticket, listen, timeout, out)?;
        }
    }
    Ok(())
}

fn plan_command(team: &mut Team<'_>, cmd: PlanCommand, out: Out) -> Result<()> {
    match cmd {
        PlanCommand::Show => {
            let sections = team.plan()?;
            let value: serde_json::Map<String, Value> =
                sections.iter().map(|(s, t)| (s.to_string(), json!(t))).collect();
            out.print(Value::Object(value), || {
                let parts: Vec<String> = sections
                    .iter()
                    .map(|(s, t)| format!("## {s}\n{}", if t.is_empty() { "(empty)" } else { t }))
                    .collect();
                parts.join("\n\n")
            });
        }
        PlanCommand::Set { section, text } => {
            team.set_plan_section(section, &text)?;
            out.print(json!({"section": section.to_string(), "saved": true}), || {
                format!("Saved {section}")
            });
        }
        PlanCommand::Edit { section } => {
            let current = plan_text(team, section)?;
            let edited = edit_in_editor(&current)?;
            let changed = edited != current;
            if changed {
                team.set_plan_section(section, &edited)?;
            }
            out.print(json!({"section": section.to_string(), "changed": changed}), || {
                if changed { format!("Saved {section}") } else { format!("{section} unchanged") }
            });
        }
    }
    Ok(())
}

fn plan_text(team: &mut Team<'_>, section: Section) -> Result<String> {
    let sections = team.plan()?;
    Ok(sections.into_iter().find(|(s, _)| *s == section).map(|(_, t)| t).unwrap_or_default())
}

fn edit_in_editor(text: &str) -> Result<String> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".to_owned());
    let file = tempfile::Builder::new()
        .suffix(".md")
        .tempfile()
        .context("cannot create a temporary file")?;
    std::fs::write(file.path(), text).context("cannot write the temporary file")?;
    // The editor setting may carry arguments ("code --wait"), as shells allow.
    let mut words = editor.split_whitespace();
    let program = words.next().context("$EDITOR is empty")?;
    let status = std::process::Command::new(program)
        .args(words)
        .arg(file.path())
        .status()
        .with_context(|| format!("cannot run the editor `{editor}`"))?;
    if !status.success() {
        bail!("the editor `{editor}` exited with {status}: nothing saved");
    }
    std::fs::read_to_string(file.path()).context("cannot read back the edited text")
}

fn note_command(team: &mut Team<'_>, cmd: NoteCommand, out: Out) -> Result<()> {
    match cmd {
        NoteCommand::Add(add) => {
            let note = NewNote {
                text: add.text,
                visit_start: add.visit_start,
                visit_end: add.visit_end,
                medications: add.meds,
                mood: add.mood,
                concern: add.concern,
            };
            let stream = add.general.then_some(NoteStream::General);
            let id = team.add_note(&note, stream)?;
            out.print(json!({"id": id.to_string(), "saved": true}), || format!("Saved note {id}"));
        }
        NoteCommand::List { since, limit } => {
            let notes = team.notes(&NoteQuery { since, limit: Some(limit) })?;
            out.print(json!(notes.iter().map(note_json).collect::<Vec<_>>()), || {
                if notes.is_empty() {
                    return "No notes.".into();
                }
                notes.iter().map(note_line).collect::<Vec<_>>().join("\n")
            });
        }
        NoteCommand::Show { id } => {
            let note = team.note(id)?;
            let author = member_name(team, note.member);
            out.print(note_json(&note), || note_text(&note, &author, team));
        }
        NoteCommand::Amend { id, text } => {
            team.amend_note(id, &text)?;
            out.print(json!({"id": id.to_string(), "amended": true}), || {
                format!("Amended note {id}")
            });
        }
    }
    Ok(())
}

fn rota_command(team: &mut Team<'_>, cmd: RotaCommand, out: Out) -> Result<()> {
    match cmd {
        RotaCommand::Add { start, end, needs, title } => {
            let id = team.add_booking(&NewBooking { start, end, title, needed: needs })?;
            out.print(json!({"id": id.to_string()}), || format!("Added booking {id}"));
        }
        RotaCommand::Join { id } | RotaCommand::Decline { id } => {
            let response = if matches!(cmd, RotaCommand::Join { .. }) {
                Response::Joined
            } else {
                Response::Declined
            };
            team.respond(id, response)?;
            out.print(json!({"id": id.to_string(), "response": response.to_string()}), || {
                format!("{response} booking {id}")
            });
        }
        RotaCommand::List { from, to } => {
            let bookings = team.bookings(from, to)?;
            let names = |b: &Booking| -> Vec<String> {
                b.responses
                    .iter()
                    .filter(|(_, (r, _))| *r == Response::Joined)
                    .map(|(m, _)| member_name(team, *m))
                    .collect()
            };
            let value: Vec<Value> = bookings.iter().map(|b| booking_json(b, names(b))).collect();
            out.print(json!(value), || {
                if bookings.is_empty() {
                    return "No bookings.".into();
                }
                let lines: Vec<String> = bookings
                    .iter()
                    .map(|b| {
                        let cover = if b.is_covered() { "covered" } else { "NEEDS COVER" };
                        format!(
                            "{}  {} - {}  {}  {}/{} {cover}  {}",
                            b.id,
                            local(b.start),
                            local(b.end),
                            b.title,
                            b.joined(),
                            b.needed,
                            names(b).join(", ")
                        )
                    })
                    .collect();
                lines.join("\n")
            });
        }
    }
    Ok(())
}

fn promise_command(team: &mut Team<'_>, cmd: PromiseCommand, out: Out) -> Result<()> {
    match cmd {
        PromiseCommand::Add { title, text } => {
            let id = team.add_promise(&title, &text)?;
            out.print(json!({"id": id.to_string()}), || format!("Added promise {id}"));
        }
        PromiseCommand::Agree { id } => {
            let version = team.agree(id)?;
            out.print(json!({"id": id.to_string(), "version": version}), || {
                format!("Agreed to version {version} of promise {id}")
            });
        }
        PromiseCommand::List => {
            let promises = team.promises()?;
            let value: Vec<Value> = promises.iter().map(|p| promise_json(team, p)).collect();
            out.print(json!(value), || {
                if promises.is_empty() {
                    return "No promises.".into();
                }
                let parts: Vec<String> = promises
                    .iter()
                    .map(|p| {
                        let latest = p.latest();
                        let version = latest.map_or(0, |v| v.number);
                        let agreed: Vec<String> = p
                            .agreements
                            .iter()
                            .filter(|a| a.version == version)
                            .map(|a| member_name(team, a.member))
                            .collect();
                        format!(
                            "{}  {} (version {version})\n  {}\n  agreed: {}",
                            p.id,
                            p.title,
                            latest.map_or("", |v| v.text.as_str()),
                            if agreed.is_empty() { "no one yet".into() } else { agreed.join(", ") }
                        )
                    })
                    .collect();
                parts.join("\n")
            });
        }
    }
    Ok(())
}

fn profile_json(home: &Home) -> Value {
    let p = home.profile();
    json!({"name": p.name, "member": p.member.to_string(), "device": p.device.to_string(), "home": home.dir()})
}

fn member_json(m: &Member) -> Value {
    json!({
        "id": m.id.to_string(), "name": m.name, "role": m.role.to_string(),
        "hats": m.hats.iter().map(|h| h.name.clone()).collect::<Vec<_>>(),
        "devices": m.devices.iter().map(|(id, d)| json!({"id": id.to_string(), "label": d.label})).collect::<Vec<_>>(),
    })
}

fn member_name(team: &Team<'_>, member: care::MemberId) -> String {
    team.membership().member(member).map_or_else(|| member.short(), |m| m.name.clone())
}

fn note_json(n: &ShiftNote) -> Value {
    json!({
        "id": n.id.to_string(), "member": n.member.to_string(), "device": n.device.to_string(),
        "written_at_ms": n.written_at.as_millis(),
        "visit_start_ms": n.visit_start.map(Timestamp::as_millis), "visit_end_ms": n.visit_end.map(Timestamp::as_millis),
        "text": n.text, "mood": n.mood, "concern": n.concern,
        "medications": n.medications.iter().map(|m| json!({"name": m.name, "dose": m.dose, "given": m.given})).collect::<Vec<_>>(),
        "amendments": n.amendments.iter().map(|a| json!({
            "member": a.member.to_string(), "device": a.device.to_string(),
            "written_at_ms": a.written_at.as_millis(), "text": a.text,
        })).collect::<Vec<_>>(),
    })
}

fn note_line(n: &ShiftNote) -> String {
    let flag = if n.concern { " [concern]" } else { "" };
    let amended = if n.amendments.is_empty() { "" } else { " [amended]" };
    let first_line = n.text.lines().next().unwrap_or_default();
    format!("{}  {}{flag}{amended}  {first_line}", n.id, local(n.written_at))
}

fn note_text(n: &ShiftNote, author: &str, team: &Team<'_>) -> String {
    let mut text = format!("note {}\nwritten {} by {author}\n", n.id, local(n.written_at));
    if let (Some(start), Some(end)) = (n.visit_start, n.visit_end) {
        text.push_str(&format!("visit {} - {}\n", local(start), local(end)));
    }
    for m in &n.medications {
        text.push_str(&format!("medication: {m}\n"));
    }
    if let Some(mood) = &n.mood {
        text.push_str(&format!("mood: {mood}\n"));
    }
    if n.concern {
        text.push_str("concern raised\n");
    }
    text.push_str(&format!("\n{}\n", n.text));
    for a in &n.amendments {
        let who = member_name(team, a.member);
        text.push_str(&format!("\namended {} by {who}:\n{}\n", local(a.written_at), a.text));
    }
    text.trim_end().to_owned()
}

fn booking_json(b: &Booking, joined: Vec<String>) -> Value {
    json!({
        "id": b.id.to_string(), "title": b.title, "start_ms": b.start.as_millis(), "end_ms": b.end.as_millis(),
        "needed": b.needed, "joined": b.joined(), "covered": b.is_covered(), "joined_names": joined,
        "responses": b.responses.iter().map(|(m, (r, at))| json!({
            "member": m.to_string(), "response": r.to_string(), "at_ms": at.as_millis(),
        })).collect::<Vec<_>>(),
    })
}

fn promise_json(team: &Team<'_>, p: &Promise) -> Value {
    json!({
        "id": p.id.to_string(), "title": p.title,
        "versions": p.versions.iter().map(|v| json!({
            "number": v.number, "text": v.text, "member": v.member.to_string(), "written_at_ms": v.written_at.as_millis(),
        })).collect::<Vec<_>>(),
        "agreements": p.agreements.iter().map(|a| json!({
            "member": a.member.to_string(), "name": member_name(team, a.member), "version": a.version, "at_ms": a.at.as_millis(),
        })).collect::<Vec<_>>(),
    })
}

/// A moment in the local time zone, to the minute.
pub(crate) fn local(t: Timestamp) -> String {
    Local
        .timestamp_millis_opt(t.as_millis())
        .single()
        .map_or_else(|| format!("{}ms", t.as_millis()), |d| d.format("%Y-%m-%d %H:%M").to_string())
}
