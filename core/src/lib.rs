//! Care Commons core: the documents of a care team, device identity and signed team
//! membership. Pure logic with no IO: time and randomness are passed in.

pub mod change_sig;
pub mod doc_kind;
pub mod documents;
pub mod identity;
pub mod ids;
pub mod kept_aside;
pub mod keys;
pub mod membership;
pub mod sealed;

pub use change_sig::{ChangeSig, SIGNED_HEADS_MAX, SigDecodeError};
pub use doc_kind::{DocKind, NoteStream, ParseKindError, Section};
pub use documents::{Author, DocError, SCHEMA_VERSION};
pub use identity::{BadSignature, DeviceKey, Signature};
pub use ids::{DeviceId, DocId, EntryId, MemberId, Month, OpHash, ParseIdError, TeamId, Timestamp};
pub use kept_aside::{AsideChange, KeptAside, kept_aside};
pub use membership::{
    Access, Cut, DeviceInfo, Hat, KnownChanges, Member, Membership, MembershipError, Op, OpBody,
    OpError, RejectReason, Rejected, Right, Role, SignedOp, create_team, team_id,
};
pub use sealed::{Sealed, SealedChange, SealedForm};

/// The cores this process may use, asked once: asking reads the process's CPU quota from
/// several files each time (tens of microseconds, a third of checking one signature
/// alone), and the work that splits over the cores is often much smaller than that.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}
