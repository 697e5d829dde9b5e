//! Invitations this device issued: a one-time secret (stored only as its hash) that lets
//! a new device join a team once, before it expires.

use care_core::ids::{MemberId, TeamId};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::error::{Doing, StoreError};
use crate::store::Store;

/// An invitation as stored by the device that issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// The team the invitation is for.
    pub team: TeamId,
    /// The role the new member gets (a role name from the membership rules).
    pub role: String,
    /// The name the inviter gave the new member; may be empty.
    pub name: String,
    /// When the invitation stops working.
    pub expires_at_ms: i64,
    /// `None`: the invitation adds a new member with `role`. `Some`: it adds one more
    /// device to this member, who issued it from one of their own devices.
    pub member: Option<MemberId>,
}

/// Why an invitation could not be redeemed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteRefusal {
    /// No invitation with this secret was issued here.
    #[error("this ticket was not issued by this device, or was withdrawn")]
    Unknown,
    /// The invitation was already used.
    #[error("this ticket was already used")]
    Used,
    /// The invitation expired.
    #[error("this ticket has expired")]
    Expired,
}

impl Store {
    /// Records an invitation; `secret_hash` is the hash of its one-time secret.
    pub fn create_invite(
        &mut self,
        secret_hash: &[u8; 32],
        invite: &Invite,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO invites (secret_hash, team, role, name, expires_at_ms, member) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    &secret_hash[..],
                    &invite.team.as_bytes()[..],
                    invite.role,
                    invite.name,
                    invite.expires_at_ms,
                    invite.member.map(|m| m.as_bytes().to_vec()),
                ],
            )
            .doing("recording an invitation")?;
        Ok(())
    }

    /// Marks an invitation used, once: a second redemption, an expired or an unknown
    /// secret is refused. Atomic across processes.
    pub fn redeem_invite(
        &mut self,
        secret_hash: &[u8; 32],
        now_ms: i64,
    ) -> Result<Result<Invite, InviteRefusal>, StoreError> {
        const DOING: &str = "redeeming an invitation";
        let tx = self
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .doing(DOING)?;
        let row = tx
            .query_row(
                "SELECT team, role, name, expires_at_ms, used_at_ms, member FROM invites WHERE secret_hash = ?1",
                params![&secret_hash[..]],
                |row| {
                    Ok((
                        (row.get::<_, Vec<u8>>(0)?, row.get::<_, Option<Vec<u8>>>(5)?),
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Option<i64>>(4)?,
                    ))
                },
            )
            .optional()
            .doing(DOING)?;
        let Some(((team, member), role, name, expires_at_ms, used_at_ms)) = row else {
            return Ok(Err(InviteRefusal::Unknown));
        };
        if used_at_ms.is_some() {
            return Ok(Err(InviteRefusal::Used));
        }
        if now_ms >= expires_at_ms {
            return Ok(Err(InviteRefusal::Expired));
        }
        let damaged = |e: care_core::ParseIdError| StoreError::Damaged {
            table: "invites",
            detail: e.to_string(),
        };
        let team = TeamId::from_slice(&team).map_err(damaged)?;
        let member = member.map(|m| MemberId::from_slice(&m)).transpose().map_err(damaged)?;
        tx.execute(
            "UPDATE invites SET used_at_ms = ?2 WHERE secret_hash = ?1",
            params![&secret_hash[..], now_ms],
        )
        .doing(DOING)?;
        tx.commit().doing(DOING)?;
        Ok(Ok(Invite { team, role, name, expires_at_ms, member }))
    }

    /// Makes a redeemed invitation usable again: the join it was redeemed for failed
    /// before the new device was added.
    pub fn restore_invite(&mut self, secret_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE invites SET used_at_ms = NULL WHERE secret_hash = ?1",
                params![&secret_hash[..]],
            )
            .doing("restoring an invitation after a failed join")?;
        Ok(())
    }

    /// Records a circle invitation (on a circle node): one team may use it, once, before
    /// it expires.
    pub fn create_circle_invite(
        &mut self,
        secret_hash: &[u8; 32],
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO circle_invites (secret_hash, expires_at_ms) VALUES (?1, ?2)",
                params![&secret_hash[..], expires_at_ms],
            )
            .doing("recording a circle invitation")?;
        Ok(())
    }

    /// Marks a circle invitation used by `team`. The same team may present it again (a
    /// handshake whose answer was lost); another team, an expired or unknown secret is
    /// refused. Atomic across processes.
    pub fn redeem_circle_invite(
        &mut self,
        secret_hash: &[u8; 32],
        team: TeamId,
        now_ms: i64,
    ) -> Result<Result<(), InviteRefusal>, StoreError> {
        const DOING: &str = "redeeming a circle invitation";
        let tx = self
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .doing(DOING)?;
        let row = tx
            .query_row(
                "SELECT expires_at_ms, team FROM circle_invites WHERE secret_hash = ?1",
                params![&secret_hash[..]],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Option<Vec<u8>>>(1)?)),
            )
            .optional()
            .doing(DOING)?;
        let Some((expires_at_ms, used_by)) = row else {
            return Ok(Err(InviteRefusal::Unknown));
        };
        match used_by {
            Some(used_by) if used_by.as_slice() == team.as_bytes().as_slice() => return Ok(Ok(())),
            Some(_) => return Ok(Err(InviteRefusal::Used)),
            None if now_ms >= expires_at_ms => return Ok(Err(InviteRefusal::Expired)),
            None => {}
        }
        tx.execute(
            "UPDATE circle_invites SET team = ?2 WHERE secret_hash = ?1",
            params![&secret_hash[..], &team.as_bytes()[..]],
        )
        .doing(DOING)?;
        tx.commit().doing(DOING)?;
        Ok(Ok(()))
    }

    /// Makes a circle invitation usable again: the team it was redeemed for was not
    /// taken on.
    pub fn restore_circle_invite(&mut self, secret_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE circle_invites SET team = NULL WHERE secret_hash = ?1",
                params![&secret_hash[..]],
            )
            .doing("restoring a circle invitation")?;
        Ok(())
    }

    /// A number that changes whenever another connection (another process on this home)
    /// commits to the store: a cheap way to notice their writes.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        let doing = "checking for changes by other programs";
        // Asked ten times a second by a running node: the statement is kept prepared.
        let mut stmt = self.conn().prepare_cached("PRAGMA data_version").doing(doing)?;
        stmt.query_row([], |row| row.get(0)).doing(doing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invite_works_once_and_not_after_it_expires() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut store = Store::open(&dir.path().join("home.sqlite"))?;
        let invite = Invite {
            team: TeamId::from_bytes([3; 16]),
            role: "worker".into(),
            name: "Bea".into(),
            expires_at_ms: 1_000,
            member: None,
        };
        store.create_invite(&[1; 32], &invite)?;
        store.create_invite(&[2; 32], &invite)?;
        assert_eq!(store.redeem_invite(&[9; 32], 10)?, Err(InviteRefusal::Unknown));
        assert_eq!(store.redeem_invite(&[1; 32], 10)?, Ok(invite.clone()));
        assert_eq!(store.redeem_invite(&[1; 32], 11)?, Err(InviteRefusal::Used));
        assert_eq!(store.redeem_invite(&[2; 32], 1_000)?, Err(InviteRefusal::Expired));
        store.restore_invite(&[1; 32])?;
        assert_eq!(store.redeem_invite(&[1; 32], 12)?, Ok(invite.clone()), "usable again");
        let device = Invite { member: Some(MemberId::from_bytes([4; 16])), ..invite };
        store.create_invite(&[3; 32], &device)?;
        assert_eq!(store.redeem_invite(&[3; 32], 10)?, Ok(device), "the member is kept");
        Ok(())
    }

    #[test]
    fn a_circle_invite_serves_one_team() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut store = Store::open(&dir.path().join("home.sqlite"))?;
        let (rosa, bo) = (TeamId::from_bytes([1; 16]), TeamId::from_bytes([2; 16]));
        store.create_circle_invite(&[1; 32], 1_000)?;
        assert_eq!(store.redeem_circle_invite(&[9; 32], rosa, 10)?, Err(InviteRefusal::Unknown));
        assert_eq!(store.redeem_circle_invite(&[1; 32], rosa, 10)?, Ok(()));
        assert_eq!(store.redeem_circle_invite(&[1; 32], rosa, 11)?, Ok(()), "again, same team");
        assert_eq!(store.redeem_circle_invite(&[1; 32], bo, 12)?, Err(InviteRefusal::Used));
        store.restore_circle_invite(&[1; 32])?;
        assert_eq!(store.redeem_circle_invite(&[1; 32], bo, 1_000)?, Err(InviteRefusal::Expired));
        Ok(())
    }

    #[test]
    fn data_version_moves_when_another_connection_writes() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("home.sqlite");
        let watcher = Store::open(&path)?;
        let mut writer = Store::open(&path)?;
        let before = watcher.data_version()?;
        assert_eq!(watcher.data_version()?, before);
        writer.meta_set("profile", b"{}")?;
        let moved = watcher.data_version()?;
        assert_ne!(moved, before);
        // The kept statement reads the version afresh each time.
        writer.meta_set("profile", b"{ }")?;
        assert_ne!(watcher.data_version()?, moved);
        Ok(())
    }
}
