//! The team document ([`DocKind::Team`]): the team's name and circle. Membership is
//! not here: it is a separate log of signed operations.

use automerge::transaction::Transactable;
use automerge::{Automerge, ROOT, ReadDoc};
use serde::{Deserialize, Serialize};

use super::access::Obj;
use super::{Author, DocError, check_text, open, write, wrong_kind};
use crate::doc_kind::DocKind;

/// The longest team or circle name, in bytes.
pub const TEAM_NAME_BYTES_MAX: usize = 256;

/// What a team calls itself and which circle it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamInfo {
    /// The team's name, e.g. "Rosa's team".
    pub name: String,
    /// The local circle the team belongs to, if any.
    pub circle: Option<String>,
}

/// Sets the team's name and circle (`None` removes the circle).
pub fn set_team_info(
    doc: &mut Automerge,
    author: &Author,
    info: &TeamInfo,
) -> Result<(), DocError> {
    check_text("team name", &info.name, TEAM_NAME_BYTES_MAX)?;
    if let Some(circle) = &info.circle {
        check_text("circle name", circle, TEAM_NAME_BYTES_MAX)?;
    }
    team_kind(doc)?;
    write(doc, author, |tx| {
        tx.put(ROOT, "name", info.name.as_str())?;
        match &info.circle {
            Some(circle) => tx.put(ROOT, "circle", circle.as_str())?,
            None if tx.get(ROOT, "circle")?.is_some() => tx.delete(ROOT, "circle")?,
            None => {}
        }
        Ok(())
    })
}

/// The team's name and circle; `None` until a name has been set.
pub fn team_info(doc: &Automerge) -> Result<Option<TeamInfo>, DocError> {
    team_kind(doc)?;
    let root = Obj::root(doc);
    let Some(name) = root.opt_str("name")? else {
        return Ok(None);
    };
    Ok(Some(TeamInfo { name, circle: root.opt_str("circle")? }))
}

fn team_kind(doc: &Automerge) -> Result<(), DocError> {
    match open(doc)? {
        DocKind::Team => Ok(()),
        other => Err(wrong_kind("team", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::genesis;
    use crate::documents::test_support::*;

    fn info(name: &str, circle: Option<&str>) -> TeamInfo {
        TeamInfo { name: name.into(), circle: circle.map(Into::into) }
    }

    #[test]
    fn team_info_round_trips() {
        let mut doc = genesis(team(), &DocKind::Team);
        assert_eq!(team_info(&doc).expect("reads"), None);
        set_team_info(&mut doc, &author(1, 0), &info("Rosa's team", Some("Hackney")))
            .expect("writes");
        assert_eq!(team_info(&doc).expect("reads"), Some(info("Rosa's team", Some("Hackney"))));
        set_team_info(&mut doc, &author(1, 1), &info("Rosa's team", None)).expect("writes");
        assert_eq!(team_info(&doc).expect("reads"), Some(info("Rosa's team", None)));
        assert!(set_team_info(&mut doc, &author(1, 2), &info(" ", None)).is_err());
    }

    #[test]
    fn concurrent_team_edits_converge() {
        let mut a = genesis(team(), &DocKind::Team);
        set_team_info(&mut a, &author(1, 0), &info("Rosa", None)).expect("writes");
        let mut b = a.clone();
        set_team_info(&mut a, &author(1, 1_000), &info("Rosa's team", None)).expect("writes");
        set_team_info(&mut b, &author(2, 2_000), &info("Rosa", Some("Hackney"))).expect("writes");
        merge_both(&mut a, &mut b);
        let merged = team_info(&a).expect("reads").expect("named");
        assert_eq!(team_info(&b).expect("reads"), Some(merged.clone()));
        assert_eq!(merged.circle.as_deref(), Some("Hackney"));
        assert!(["Rosa", "Rosa's team"].contains(&merged.name.as_str()));
    }
}
