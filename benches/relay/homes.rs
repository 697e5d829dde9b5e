//! The benchmark's teams, built offline once and never timed: per team an owner's home
//! holding a month of shift notes, and four members' homes (family and three workers)
//! that hold the membership log but no document. Each step works on fresh copies.

use std::path::{Path, PathBuf};

use anyhow::Result;
use care::{Home, NewNote, OpBody, Role, TeamId};
use care_sync::Replica;

use crate::clock::SteppingClock;
use crate::workload;

/// 2025-11-01T00:00:00Z, the time of a team's first note.
const START_MS: i64 = 1_761_955_200_000;
/// Ten visits a day: 300 notes fill the 30 days of November, one month document.
const VISIT_STEP_MS: i64 = 144 * 60_000;
/// Threads building teams at once.
const BUILD_THREADS: usize = 4;
/// The members besides the owner, and their roles: all of them read every document.
const MEMBERS: [(&str, Role); 4] = [
    ("Fay (family)", Role::Advocate),
    ("Wil (worker)", Role::Worker),
    ("Wyn (worker)", Role::Worker),
    ("Wes (worker)", Role::Worker),
];

/// One team's homes on disk.
#[derive(Clone)]
pub(crate) struct TeamHomes {
    /// The team.
    pub id: TeamId,
    /// The owner's home, holding every document.
    pub owner: PathBuf,
    /// The other members' homes: the membership log, no document.
    pub members: Vec<PathBuf>,
}

/// Builds `teams` teams of five devices under `dir`, each owner holding `notes` notes,
/// on `BUILD_THREADS` threads (most of the time goes waiting for fsyncs).
pub(crate) fn build(dir: &Path, teams: usize, notes: usize) -> Result<Vec<TeamHomes>> {
    let built: Vec<Result<Vec<(usize, TeamHomes)>>> = std::thread::scope(|scope| {
        let builders: Vec<_> = (0..BUILD_THREADS)
            .map(|first| {
                scope.spawn(move || {
                    (first..teams)
                        .step_by(BUILD_THREADS)
                        .map(|i| Ok((i, build_team(&dir.join(format!("team-{i:03}")), i, notes)?)))
                        .collect()
                })
            })
            .collect();
        builders.into_iter().map(|b| b.join().expect("a builder thread panicked")).collect()
    });
    let mut teams: Vec<(usize, TeamHomes)> =
        built.into_iter().collect::<Result<Vec<_>>>()?.into_iter().flatten().collect();
    teams.sort_by_key(|(index, _)| *index);
    Ok(teams.into_iter().map(|(_, team)| team).collect())
}

/// Copies teams' homes under `dir`, so a step can change them and the next step start
/// again from the homes as built.
pub(crate) fn copy(teams: &[TeamHomes], dir: &Path) -> Result<Vec<TeamHomes>> {
    let mut copies = Vec::with_capacity(teams.len());
    for (index, team) in teams.iter().enumerate() {
        let to = dir.join(format!("team-{index:03}"));
        let owner = copy_home(&team.owner, &to)?;
        let members = team.members.iter().map(|m| copy_home(m, &to)).collect::<Result<_>>()?;
        copies.push(TeamHomes { id: team.id, owner, members });
    }
    Ok(copies)
}

/// Hands the owner's whole membership log (which now names the circle node) to each
/// member, offline: as if the members had synced membership with the owner some time
/// before, while they still hold no document.
pub(crate) fn hand_log_to_members(team: &TeamHomes) -> Result<()> {
    let ops = Home::open(&team.owner)?.ops(team.id)?;
    for member in &team.members {
        Home::open(member)?.add_ops(team.id, &ops)?;
    }
    Ok(())
}

fn build_team(dir: &Path, index: usize, notes: usize) -> Result<TeamHomes> {
    let owner_dir = dir.join("owner");
    let mut owner = Home::init(&owner_dir, "Rosa")?;
    owner.set_clock(SteppingClock::new(START_MS, VISIT_STEP_MS));
    let team = owner.create_team(&format!("Team {index}"))?;
    {
        let mut handle = owner.team(&team.to_string())?;
        for i in 0..notes {
            let text = workload::note_text(index * notes + i);
            handle.add_note(&NewNote { text, ..NewNote::default() }, None)?;
        }
    }
    let mut members = Vec::with_capacity(MEMBERS.len());
    let mut homes = Vec::with_capacity(MEMBERS.len());
    for (i, (name, role)) in MEMBERS.into_iter().enumerate() {
        let member_dir = dir.join(format!("member-{i}"));
        let home = Home::init(&member_dir, name)?;
        let (member, device) = (home.profile().member, home.profile().device);
        let body = OpBody::AddMember { member, name: name.into(), role, hats: Vec::new() };
        owner.author_op(team, body)?;
        owner.author_op(team, OpBody::AddDevice { member, device, label: "phone".into() })?;
        members.push(member_dir);
        homes.push(home);
    }
    let ops = owner.ops(team)?;
    for mut home in homes {
        home.add_ops(team, &ops)?;
    }
    owner.compact()?;
    Ok(TeamHomes { id: team, owner: owner_dir, members })
}

/// Copies one home directory (its key and SQLite files) into `parent`, keeping its name.
fn copy_home(from: &Path, parent: &Path) -> Result<PathBuf> {
    let to = parent.join(from.file_name().unwrap_or_default());
    std::fs::create_dir_all(&to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(to)
}
