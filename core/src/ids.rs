//! Typed identifiers for teams, members, devices and documents, with string forms a
//! person can copy and paste (lowercase base32, no padding).

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use data_encoding::{Encoding, Specification};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Lowercase RFC 4648 base32 without padding; decoding also accepts upper case.
static BASE32: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    spec.encoding().expect("the base32 specification is a constant and valid")
});

/// Encodes bytes in the string form used by every id.
pub fn encode_base32(bytes: &[u8]) -> String {
    BASE32.encode(bytes)
}

/// Decodes the string form used by every id; `None` when it is not valid base32.
pub fn decode_base32(text: &str) -> Option<Vec<u8>> {
    BASE32.decode(text.trim().as_bytes()).ok()
}

/// A string that is not a valid id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a valid {kind} id")]
pub struct ParseIdError {
    /// What kind of id was expected ("team", "device", ...).
    pub kind: &'static str,
    /// The text that failed to parse (truncated to 80 characters).
    pub input: String,
}

impl ParseIdError {
    fn new(kind: &'static str, input: &str) -> Self {
        ParseIdError { kind, input: input.chars().take(80).collect() }
    }
}

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            /// Wraps raw id bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }

            /// The raw id bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Parses raw bytes of the right length.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, ParseIdError> {
                <[u8; $len]>::try_from(bytes)
                    .map($name)
                    .map_err(|_| ParseIdError::new($kind, &encode_base32(bytes)))
            }

            /// The first characters of the string form, for display in lists.
            pub fn short(&self) -> String {
                let mut s = self.to_string();
                s.truncate(10);
                s
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&encode_base32(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let bytes = decode_base32(s).ok_or_else(|| ParseIdError::new($kind, s))?;
                <[u8; $len]>::try_from(bytes.as_slice())
                    .map($name)
                    .map_err(|_| ParseIdError::new($kind, s))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.serialize_str(&self.to_string())
                } else {
                    self.0.serialize(serializer)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let s = String::deserialize(deserializer)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; $len]>::deserialize(deserializer).map($name)
                }
            }
        }
    };
}

byte_id!(
    /// A team: the hash of the signed op that created it, truncated to 16 bytes.
    TeamId, 16, "team"
);
byte_id!(
    /// A member of a team (a person). Random, chosen when the member is added.
    MemberId, 16, "member"
);
byte_id!(
    /// A device: its ed25519 public key, which is also its iroh endpoint id.
    DeviceId, 32, "device"
);
byte_id!(
    /// A document: derived from its team and [`DocKind`](crate::DocKind), so every
    /// device computes the same id for the same document without coordination.
    DocId, 16, "document"
);
byte_id!(
    /// A membership operation: the BLAKE3 hash of its signed bytes.
    OpHash, 32, "op"
);

/// A moment in time: milliseconds since the Unix epoch, UTC.
///
/// Core logic never reads the clock: callers pass the time in.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// The calendar month (UTC) this moment falls in.
    pub fn month(self) -> Month {
        Month::of_timestamp(self)
    }
}

/// A calendar month (UTC). Notes and rota bookings are partitioned by month into
/// separate documents, so that loading recent entries does not grow with the
/// team's whole history.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Month {
    year: i32,
    month: u8,
}

impl Month {
    /// A month from its year and its number (1 to 12); `None` when out of range.
    pub fn new(year: i32, month: u8) -> Option<Month> {
        ((1..=12).contains(&month) && (1..=9999).contains(&year)).then_some(Month { year, month })
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month number, 1 to 12.
    pub fn number(self) -> u8 {
        self.month
    }

    /// The month before this one.
    pub fn previous(self) -> Month {
        if self.month == 1 {
            Month { year: self.year - 1, month: 12 }
        } else {
            Month { year: self.year, month: self.month - 1 }
        }
    }

    /// The month after this one.
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month { year: self.year + 1, month: 1 }
        } else {
            Month { year: self.year, month: self.month + 1 }
        }
    }

    /// The month (UTC) a timestamp falls in.
    pub fn of_timestamp(t: Timestamp) -> Month {
        // Civil-from-days (Howard Hinnant's algorithm), exact for the proleptic
        // Gregorian calendar.
        let days = t.0.div_euclid(86_400_000);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Month { year: year as i32, month: month as u8 }
    }

    /// The first millisecond of this month (UTC).
    pub fn start(self) -> Timestamp {
        let (y, m) = (i64::from(self.year), i64::from(self.month));
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Timestamp(days * 86_400_000)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl fmt::Debug for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Month({self})")
    }
}

impl FromStr for Month {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseIdError::new("month", s);
        let (y, m) = s.split_once('-').ok_or_else(err)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(err());
        }
        Month::new(y.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?).ok_or_else(err)
    }
}

/// The id of an entry in a month-partitioned document (a shift note or a rota
/// booking): the month it belongs to and 8 random bytes, written `2026-11.abcdefghijklm`.
/// The month makes lookups by id load one document only.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryId {
    month: Month,
    random: [u8; 8],
}

impl EntryId {
    /// An entry id in `month` from 8 random bytes (randomness is passed in).
    pub fn new(month: Month, random: [u8; 8]) -> EntryId {
        EntryId { month, random }
    }

    /// The month, and so the document, this entry lives in.
    pub fn month(&self) -> Month {
        self.month
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.month, encode_base32(&self.random))
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({self})")
    }
}

impl FromStr for EntryId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseIdError::new("entry", s);
        let (month, random) = s.trim().split_once('.').ok_or_else(err)?;
        let month = month.parse().map_err(|_| err())?;
        let random = decode_base32(random).ok_or_else(err)?;
        let random = <[u8; 8]>::try_from(random.as_slice()).map_err(|_| err())?;
        Ok(EntryId { month, random })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings() {
        let team = TeamId::from_bytes([7; 16]);
        assert_eq!(team.to_string().parse::<TeamId>(), Ok(team));
        assert_eq!(team.to_string().to_uppercase().parse::<TeamId>(), Ok(team));
        assert!("not an id".parse::<TeamId>().is_err());
        assert!(DeviceId::from_bytes([1; 32]).to_string().parse::<TeamId>().is_err());
        let entry = EntryId::new(Month::new(2026, 11).expect("valid"), [9; 8]);
        assert!(entry.to_string().starts_with("2026-11."));
        assert_eq!(entry.to_string().parse::<EntryId>(), Ok(entry));
    }

    #[test]
    fn months_match_the_calendar() {
        // 2026-11-23T17:31:09Z
        let t = Timestamp(1_795_455_069_000);
        assert_eq!(t.month().to_string(), "2026-11");
        assert_eq!(Timestamp(0).month().to_string(), "1970-01");
        assert_eq!(Timestamp(-1).month().to_string(), "1969-12");
        for (y, m) in [(1970, 1), (2000, 2), (2024, 3), (2026, 12)] {
            let month = Month::new(y, m).expect("valid");
            assert_eq!(month.start().month(), month);
            assert_eq!(Timestamp(month.start().0 - 1).month(), month.previous());
            assert_eq!(month.next().previous(), month);
        }
        assert_eq!("2026-13".parse::<Month>().ok(), None);
    }
}
