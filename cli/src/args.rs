//! The command-line surface of `care`: every command, option and argument, with the
//! parsers that turn what a person types into typed values (bad input is a usage error).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use care::{
    CircleTicket, DeviceId, DocKind, EntryId, JoinTicket, Medication, NetConfig, PeerAddr, Role,
    Section, Timestamp,
};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::when;

/// Care Commons: local-first records for self-managing home-care teams.
#[derive(Debug, Parser)]
#[command(name = "care", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    /// The care home directory (default: the platform's data directory).
    #[arg(long, global = true, env = "CARE_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// The team to work on: its id, a prefix of it, or its name (may be left out
    /// when the home belongs to one team).
    #[arg(long, global = true, value_name = "TEAM")]
    pub team: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a care home on this device for a person.
    Init {
        /// Your name, as your teams will see it.
        #[arg(long)]
        name: String,
    },
    /// Show who this home belongs to and this device's id.
    Whoami,
    /// Create, list and show teams.
    #[command(subcommand)]
    Team(TeamCommand),
    /// Read and edit the care plan.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Write and read shift notes.
    #[command(subcommand)]
    Note(NoteCommand),
    /// The rota: bookings of visits, and who covers them.
    #[command(subcommand)]
    Rota(RotaCommand),
    /// Promises: written agreements and who agreed to which version.
    #[command(subcommand)]
    Promise(PromiseCommand),
    /// Export a team's documents in open formats.
    Export {
        /// The directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// JSON, or Automerge's standard binary format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Who wrote what, checked: a note and its amendments (with its medication lines),
    /// a plan section, a booking and its answers, a promise and its agreements, or every
    /// change of a document; each with its author, their role then, the device, the
    /// times, and whether its signature and its author's right verify.
    #[command(group(clap::ArgGroup::new("audited").required(true)))]
    Audit {
        /// The note to audit.
        #[arg(group = "audited")]
        note: Option<EntryId>,
        /// Audit every edit of this care plan section instead.
        #[arg(long, group = "audited", value_name = "SECTION")]
        section: Option<Section>,
        /// Audit this booking and each member's answer to it instead.
        #[arg(long, group = "audited", value_name = "ID")]
        booking: Option<EntryId>,
        /// Audit this promise, its versions and its agreements instead.
        #[arg(long, group = "audited", value_name = "ID")]
        promise: Option<EntryId>,
        /// Audit every change of this document instead: plan, health-plan, team,
        /// promises, rota/YYYY-MM, notes/YYYY-MM or general-notes/YYYY-MM.
        #[arg(long, group = "audited", value_name = "KIND")]
        doc: Option<DocKind>,
    },
    /// Changes kept aside: what a removed device wrote that its removal did not know of,
    /// and what was built on it. They stay out of the record until someone who manages
    /// the team accepts them.
    #[command(subcommand)]
    Aside(AsideCommand),
    /// Check an export (`care export --format automerge`) with no home at all: the
    /// membership log, and every change's signature and its author's right. Exits
    /// non-zero at the first failure, naming it.
    Verify {
        /// The export's directory.
        dir: PathBuf,
    },
    /// Check the whole store for damage; exits non-zero if any is found.
    Doctor,
    /// Serve this home on the network until stopped: keeps the teams' devices in sync,
    /// answers invitations, and prints what happens.
    Serve {
        /// Where to listen and reach others from.
        #[command(flatten)]
        net: NetArgs,
        /// A relay server of the circle, through which devices can reach each other.
        #[arg(long, value_parser = parse_relay, value_name = "URL")]
        relay: Option<String>,
    },
    /// Run a circle node: a relay server for devices that cannot reach each other
    /// directly, and an always-on replica of every team that adds it.
    Relay {
        /// Where to listen: the relay server on this TCP port, sync on the same UDP port.
        #[arg(long, default_value = "0.0.0.0:3340", value_name = "ADDR")]
        listen: SocketAddr,
        /// How many one-time circle tickets to print at start, one per team to serve.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=1000), value_name = "N")]
        tickets: u16,
    },
    /// Print a one-time circle ticket for one more team, on the circle node's home
    /// (while or after `care relay` runs there).
    RelayTicket {
        /// How long the ticket stays valid: `90s`, `30m`, `2h` or `7d`.
        #[arg(long, default_value = "7d", value_parser = when::parse_duration, value_name = "DURATION")]
        expires: Duration,
    },
    /// Sync once with the teams' devices (or one device), then exit.
    Sync {
        /// One device to sync with: `DEVICE_ID@ip:port[,ip:port]` as `care serve`
        /// prints it, or a ticket from it.
        #[arg(long, value_parser = parse_peer, value_name = "ADDR_OR_TICKET")]
        peer: Option<PeerAddr>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECONDS")]
        timeout: u64,
        /// Where to listen and reach others from.
        #[command(flatten)]
        net: NetArgs,
    },
    /// Show the teams' known devices, when they were last synced, and the documents
    /// holding changes no other device has yet.
    Status,
}

/// How a command that goes on the network listens.
#[derive(Debug, Clone, Args)]
pub(crate) struct NetArgs {
    /// The address to listen on.
    #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Do not find or announce devices on the local network.
    #[arg(long)]
    pub no_lan: bool,
}

/// `care team ...`
#[derive(Debug, Subcommand)]
pub(crate) enum TeamCommand {
    /// Create a team with you as its owner.
    Create {
        /// The team's name.
        name: String,
    },
    /// List the teams of this home.
    List,
    /// Show a team: its id, name, owner and documents.
    Show,
    /// List a team's members, their roles, hats and devices.
    Members,
    /// Invite someone: prints a one-time ticket (and its QR code) to join the team with.
    Invite {
        /// The role the new member gets: advocate, worker, volunteer or relay.
        #[arg(long, value_parser = parse_invitable_role)]
        role: Role,
        /// The name the new member is known by until they give their own.
        #[arg(long)]
        name: Option<String>,
        /// How long the ticket stays valid: `90s`, `30m`, `2h` or `7d`.
        #[arg(long, default_value = "7d", value_parser = when::parse_duration, value_name = "DURATION")]
        expires: Duration,
    },
    /// Add one more device of yours: prints a one-time ticket for the new device to
    /// `care team join` with (only a device of yours can add one).
    AddDevice {
        /// How long the ticket stays valid: `90s`, `30m`, `2h` or `7d`.
        #[arg(long, default_value = "1d", value_parser = when::parse_duration, value_name = "DURATION")]
        expires: Duration,
    },
    /// Join a team with a ticket, and fetch its documents.
    Join {
        /// The ticket, as printed by `care team invite`.
        #[arg(value_parser = parse_ticket)]
        ticket: JoinTicket,
        /// The address to listen on.
        #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR")]
        listen: SocketAddr,
        /// Give up waiting for the team's documents after this many seconds.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECONDS")]
        timeout: u64,
    },
    /// Add a circle node (from its ticket) to the team, as its relay.
    AddRelay {
        /// The circle ticket, as printed by `care relay`.
        #[arg(value_parser = parse_circle_ticket)]
        ticket: CircleTicket,
        /// The address to listen on.
        #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR")]
        listen: SocketAddr,
        /// Give up waiting for the circle node to hold the team after this many seconds.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECONDS")]
        timeout: u64,
    },
    /// Remove a member from the team (owners and those who manage members).
    Remove {
        /// The member: their id, a unique prefix of it, or their exact name.
        member: String,
    },
}

/// `care plan ...`
#[derive(Debug, Subcommand)]
pub(crate) enum PlanCommand {
    /// Show the sections of the care plan you may read.
    Show,
    /// Replace the text of a section.
    Set {
        /// about-me, what-matters, routines, support, medication, risks, contacts or goals.
        section: Section,
        /// The new text.
        text: String,
    },
    /// Edit a section in $EDITOR.
    Edit {
        /// The section to edit.
        section: Section,
    },
}

/// `care note ...`
#[derive(Debug, Subcommand)]
pub(crate) enum NoteCommand {
    /// Write a shift note.
    Add(NoteAdd),
    /// List notes, newest first.
    List {
        /// Only notes written on or after this date or time.
        #[arg(long, value_parser = when::parse, value_name = "DATE")]
        since: Option<Timestamp>,
        /// At most this many notes.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show one note with its amendments.
    Show {
        /// The note's id.
        id: EntryId,
    },
    /// Amend a note: the original stays, the amendment is added after it.
    Amend {
        /// The note's id.
        id: EntryId,
        /// The text of the amendment.
        text: String,
    },
}

/// `care note add ...`
#[derive(Debug, Args)]
pub(crate) struct NoteAdd {
    /// What happened at the visit.
    pub text: String,
    /// When the visit started (RFC 3339, `2026-12-01T09:00`, or `09:00` for today).
    #[arg(long, value_parser = when::parse, value_name = "TIME")]
    pub visit_start: Option<Timestamp>,
    /// When the visit ended.
    #[arg(long, value_parser = when::parse, value_name = "TIME")]
    pub visit_end: Option<Timestamp>,
    /// A medication given or refused: "NAME DOSE given|refused". Repeatable.
    #[arg(long = "med", value_name = "\"NAME DOSE given|refused\"")]
    pub meds: Vec<Medication>,
    /// The person's mood or wellbeing, in a word.
    #[arg(long)]
    pub mood: Option<String>,
    /// Flag a concern to raise with the team.
    #[arg(long)]
    pub concern: bool,
    /// Write a general note (readable by volunteers) rather than a care record.
    #[arg(long)]
    pub general: bool,
}

/// `care rota ...`
#[derive(Debug, Subcommand)]
pub(crate) enum RotaCommand {
    /// Add a booking.
    Add {
        /// When the visit starts.
        #[arg(long, value_parser = when::parse, value_name = "TIME")]
        start: Timestamp,
        /// When the visit ends.
        #[arg(long, value_parser = when::parse, value_name = "TIME")]
        end: Timestamp,
        /// How many people the visit needs.
        #[arg(long, default_value_t = 1)]
        needs: u32,
        /// What the visit is for.
        #[arg(long, default_value = "Visit")]
        title: String,
    },
    /// Join a booking.
    Join {
        /// The booking's id.
        id: EntryId,
    },
    /// Decline a booking.
    Decline {
        /// The booking's id.
        id: EntryId,
    },
    /// List bookings, earliest first.
    List {
        /// Only bookings starting on or after this date or time.
        #[arg(long, value_parser = when::parse, value_name = "DATE")]
        from: Option<Timestamp>,
        /// Only bookings starting before this date or time.
        #[arg(long, value_parser = when::parse, value_name = "DATE")]
        to: Option<Timestamp>,
    },
}

/// `care aside ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AsideCommand {
    /// List the changes kept aside: who wrote them, in which role, on which device,
    /// when, and what they write.
    List,
    /// Let changes kept aside into the record, with every change kept aside they were
    /// built on. Needs the right to manage the team.
    Accept {
        /// The changes' hashes, as `care aside list` shows them.
        #[arg(required = true, value_parser = parse_change)]
        changes: Vec<care::ChangeHash>,
    },
}

/// `care promise ...`
#[derive(Debug, Subcommand)]
pub(crate) enum PromiseCommand {
    /// Write a new promise.
    Add {
        /// The promise's title.
        title: String,
        /// Its text.
        #[arg(long)]
        text: String,
    },
    /// Agree to the latest version of a promise.
    Agree {
        /// The promise's id.
        id: EntryId,
    },
    /// List promises and who agreed to which version.
    List,
}

/// Export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// Plain JSON, one file per document.
    Json,
    /// Automerge's standard binary format, one `.automerge` file per document.
    Automerge,
}

/// A role a new member may be invited with: any but owner.
fn parse_change(text: &str) -> Result<care::ChangeHash, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a change hash (64 hexadecimal characters)"))
}

fn parse_invitable_role(text: &str) -> Result<Role, String> {
    let role: Role = text.parse().map_err(|e| format!("{e}"))?;
    if role == Role::Owner {
        return Err("a team has one owner: invite as advocate, worker, volunteer or relay".into());
    }
    Ok(role)
}

/// A join ticket, with the ticket's own sentence when it is not one.
fn parse_ticket(text: &str) -> Result<JoinTicket, String> {
    text.parse().map_err(|e: care::TicketError| e.to_string())
}

/// A relay URL, checked here and kept as text.
fn parse_relay(text: &str) -> Result<String, String> {
    let mut config = NetConfig::loopback();
    config.relay = Some(text.parse().map_err(|e| format!("`{text}` is not a relay URL: {e}"))?);
    Ok(text.to_owned())
}

/// A circle ticket, as `care relay` prints it.
fn parse_circle_ticket(text: &str) -> Result<CircleTicket, String> {
    text.parse().map_err(|e: care::TicketError| e.to_string())
}

/// A device to sync with: `DEVICE_ID@ip:port[,ip:port]`, or a join ticket naming it.
pub(crate) fn parse_peer(text: &str) -> Result<PeerAddr, String> {
    let text = text.trim();
    if let Ok(ticket) = text.parse::<JoinTicket>() {
        let relay = ticket.relay.as_deref().and_then(|r| r.parse().ok());
        return Ok(PeerAddr { device: ticket.inviter, addrs: ticket.addrs, relay });
    }
    let (device, addrs) = text.split_once('@').ok_or_else(|| {
        format!("`{text}` is neither a ticket nor an address of the form DEVICE_ID@ip:port")
    })?;
    let device: DeviceId =
        device.parse().map_err(|e| format!("`{device}` is not a device id: {e}"))?;
    let addrs = addrs
        .split(',')
        .map(|a| a.trim().parse().map_err(|_| format!("`{a}` is not an ip:port address")))
        .collect::<Result<Vec<SocketAddr>, String>>()?;
    Ok(PeerAddr { device, addrs, relay: None })
}
