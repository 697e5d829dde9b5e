//! `care status`: each team's known devices, when they were last seen and synced, and
//! the documents holding changes no other device has yet.

use anyhow::Result;
use care::{DeviceId, Home, Member, TeamSummary, Timestamp};
use serde_json::{Value, json};

use super::{Out, local};

/// Prints the status of every team of the home.
pub(super) fn status(home: &mut Home, out: Out) -> Result<()> {
    let teams = home.teams()?;
    let mut value = Vec::new();
    let mut text = Vec::new();
    for team in &teams {
        let (json, lines) = team_status(home, team)?;
        value.push(json);
        text.push(lines);
    }
    out.print(json!(value), || {
        if text.is_empty() { "No teams yet.".into() } else { text.join("\n\n") }
    });
    Ok(())
}

fn team_status(home: &Home, team: &TeamSummary) -> Result<(Value, String)> {
    let me = home.profile().device;
    let membership = home.membership(team.id)?;
    let mut devices = Vec::new();
    let mut lines = vec![format!("{} ({})", team.name, team.id)];
    for (device, member) in membership.devices().filter(|(d, _)| *d != me) {
        let (json, line) = device_status(home, device, member)?;
        devices.push(json);
        lines.push(line);
    }
    if devices.is_empty() {
        lines.push("  no other devices yet".into());
    }
    let unshared: Vec<String> = home.unshared_docs(team.id)?.into_iter().map(|d| d.kind).collect();
    if unshared.is_empty() {
        lines.push("  every document's changes are on another device".into());
    } else {
        lines.push(format!("  not yet on another device: {}", unshared.join(", ")));
    }
    let value = json!({"team": team.id.to_string(), "name": team.name, "devices": devices,
                       "unshared_documents": unshared});
    Ok((value, lines.join("\n")))
}

fn device_status(home: &Home, device: DeviceId, member: &Member) -> Result<(Value, String)> {
    let seen = home.store().peer_addrs(device)?;
    let last_sync = home.last_sync(device)?;
    let value = json!({
        "device": device.to_string(), "member": member.id.to_string(), "name": member.name,
        "role": member.role.to_string(), "address": seen.as_ref().map(|(a, _)| a),
        "seen_at_ms": seen.as_ref().map(|(_, at)| at), "last_sync_ms": last_sync,
    });
    let when = |ms: Option<i64>| ms.map_or_else(|| "never".to_owned(), |ms| local(Timestamp(ms)));
    let line = format!(
        "  {:<20} {:<10} {}  seen {} at {}  synced {}",
        member.name,
        member.role.to_string(),
        device.short(),
        when(seen.as_ref().map(|(_, at)| *at)),
        seen.as_ref().map_or("-", |(a, _)| a.as_str()),
        when(last_sync),
    );
    Ok((value, line))
}
