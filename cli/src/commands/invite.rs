//! `care team invite`, `care team add-device` and `care team remove`: who may join the
//! team, with which devices, and who leaves it.

use std::time::Duration;

use anyhow::{Result, bail};
use care::{Home, JoinTicket, MemberId, Membership, OpBody, Role, TeamId, Timestamp};
use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;
use serde_json::json;

use super::{Out, local};

/// Issues a one-time ticket to join the team with `role`, valid for `valid_for`.
pub(super) fn invite(
    home: &mut Home,
    which: &str,
    role: Role,
    name: Option<&str>,
    valid_for: Duration,
    out: Out,
) -> Result<()> {
    let team = home.team(which)?.id();
    let expires = expiry(home, valid_for);
    let secret = home.create_invite(team, role, name.unwrap_or_default(), expires)?;
    let ticket = ticket(home, team, secret, None)?;
    let value = json!({
        "ticket": ticket.to_string(), "team": team.to_string(), "role": role.to_string(),
        "expires_at_ms": expires.as_millis(),
    });
    out.print(value, || {
        format!(
            "{ticket}\n\n{}\nInvites a {role}, once, until {}.",
            qr_code(&ticket),
            local(expires)
        )
    });
    Ok(())
}

/// Issues a one-time ticket that adds one more device of this person to the team,
/// valid for `valid_for`: redeemed with `care team join` on a new home.
pub(super) fn add_device(
    home: &mut Home,
    which: &str,
    valid_for: Duration,
    out: Out,
) -> Result<()> {
    let team = home.team(which)?.id();
    let expires = expiry(home, valid_for);
    let secret = home.create_device_invite(team, expires)?;
    let member = home.profile().member;
    let ticket = ticket(home, team, secret, Some(member))?;
    let value = json!({
        "ticket": ticket.to_string(), "team": team.to_string(), "member": member.to_string(),
        "expires_at_ms": expires.as_millis(),
    });
    out.print(value, || {
        format!(
            "{ticket}\n\n{}\nAdds one more device of yours, once, until {}. Use it on the new \
             device with `care init` and then `care team join`.",
            qr_code(&ticket),
            local(expires)
        )
    });
    Ok(())
}

fn expiry(home: &Home, valid_for: Duration) -> Timestamp {
    let valid_ms = i64::try_from(valid_for.as_millis()).unwrap_or(i64::MAX);
    Timestamp(home.now().as_millis().saturating_add(valid_ms))
}

/// A ticket naming this device and where its `care serve` listens.
fn ticket(
    home: &Home,
    team: TeamId,
    secret: [u8; 16],
    device_of: Option<MemberId>,
) -> Result<JoinTicket> {
    let listen = home.listen_addrs()?;
    if listen.addrs.is_empty() && listen.relay.is_none() {
        eprintln!(
            "warning: no `care serve` is running on this home: the ticket can be used only \
             while this device runs `care serve` (or is on the same local network)"
        );
    }
    Ok(JoinTicket {
        team,
        inviter: home.profile().device,
        addrs: listen.addrs,
        relay: listen.relay,
        secret,
        device_of,
    })
}

/// Removes a member, given by id, unique id prefix or exact name, from the team.
pub(super) fn remove(home: &mut Home, which: &str, member: &str, out: Out) -> Result<()> {
    let team = home.team(which)?;
    let (team_id, membership) = (team.id(), team.membership().clone());
    let member = find_member(&membership, member)?;
    let name = membership.member(member).map(|m| m.name.clone()).unwrap_or_default();
    home.author_op(team_id, OpBody::RemoveMember { member })?;
    out.print(json!({"removed": member.to_string(), "name": name}), || {
        format!("Removed {name} ({member}) from the team")
    });
    Ok(())
}

/// The ticket as a QR code of text blocks; its upper-case form fits a smaller code.
fn qr_code(ticket: &JoinTicket) -> String {
    match QrCode::new(ticket.to_string().to_uppercase()) {
        Ok(code) => code
            .render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
        Err(_) => "(the ticket is too long for a QR code)".to_owned(),
    }
}

/// A member by id, unique prefix of the id, or exact name.
fn find_member(membership: &Membership, which: &str) -> Result<MemberId> {
    let which = which.trim();
    if let Ok(id) = which.parse::<MemberId>()
        && membership.member(id).is_some()
    {
        return Ok(id);
    }
    let prefix = which.to_lowercase();
    let by_prefix: Vec<MemberId> = membership
        .members()
        .filter(|m| !prefix.is_empty() && m.id.to_string().starts_with(&prefix))
        .map(|m| m.id)
        .collect();
    let found = if by_prefix.is_empty() {
        membership.members().filter(|m| m.name == which).map(|m| m.id).collect()
    } else {
        by_prefix
    };
    match found.as_slice() {
        [one] => Ok(*one),
        [] => bail!("no member of the team matches `{which}`"),
        _ => bail!("`{which}` matches several members: use more of the member's id"),
    }
}
