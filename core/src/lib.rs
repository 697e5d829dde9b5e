//! Care Commons core: the documents of a care team, device identity and signed team
//! membership. Pure logic with no IO: time and randomness are passed in.

pub mod identity;
pub mod ids;

pub use identity::{BadSignature, DeviceKey, Signature};
pub use ids::{DeviceId, DocId, EntryId, MemberId, Month, OpHash, ParseIdError, TeamId, Timestamp};
