//! Identifiers: object ids, transaction ids (ZODB timestamps), node ids, partition table
//! versions and partition indexes.
//!
//! On the wire each is its integer value, little-endian. ZODB itself handles oids and tids as
//! 8-byte big-endian strings: `to_zodb_bytes` and `from_zodb_bytes` convert at that boundary.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

use crate::codec::{Field, Reader};
use crate::enums::NodeType;
use crate::error::{DecodeError, EncodeError};

macro_rules! id_u64 {
    ($(#[doc = $doc:literal])* $name:ident, $wire:literal) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            pub const ZERO: $name = $name(0);

            /// The id as ZODB writes it: 8 bytes, big-endian.
            pub const fn to_zodb_bytes(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }

            pub const fn from_zodb_bytes(bytes: [u8; 8]) -> $name {
                $name(u64::from_be_bytes(bytes))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#018x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#018x}", self.0)
            }
        }

        impl Field for $name {
            const WIRE: &'static str = $wire;
            const SIZE_MIN: usize = 8;
            const SIZE_FIXED: Option<usize> = Some(8);

            #[inline]
            fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
                self.0.encode(out)
            }

            #[inline]
            fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok($name(u64::decode(reader)?))
            }

            #[cfg(any(test, feature = "arbitrary"))]
            fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
                Ok($name(u64::arbitrary(u)?))
            }
        }
    };
}

id_u64!(
    /// Object id. Allocated by the primary master in batches; partition = `oid % np`.
    Oid, "u64"
);
id_u64!(
    /// Transaction id: a ZODB timestamp (see `Tid::from_utc`). Also used for ttids, the
    /// temporary ids given at `tpc_begin`, and for serials (the tid that wrote a revision).
    Tid, "u64 (ZODB timestamp)"
);
id_u64!(
    /// Partition table version. Increases by one with every change of the table.
    Ptid, "u64"
);

/// Index of a partition, `0 .. np`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct PartitionId(pub u32);

impl PartitionId {
    /// The partition of an oid or a tid in a table of `partitions` partitions.
    pub fn of(id: u64, partitions: u32) -> PartitionId {
        assert!(partitions > 0);
        PartitionId((id % u64::from(partitions)) as u32)
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Field for PartitionId {
    const WIRE: &'static str = "u32";
    const SIZE_MIN: usize = 4;
    const SIZE_FIXED: Option<usize> = Some(4);

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.0.encode(out)
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(PartitionId(u32::decode(reader)?))
    }

    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(PartitionId(u.int_in_range(0..=1000)?))
    }
}

/// A calendar time in UTC, as a ZODB timestamp splits it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UtcTime {
    pub year: u32,
    /// 1 ..= 12.
    pub month: u32,
    /// 1 ..= 31. A tid may name a day the month does not have (February 30); such a tid
    /// has no Unix time.
    pub day: u32,
    /// 0 ..= 23.
    pub hour: u32,
    /// 0 ..= 59.
    pub minute: u32,
    /// Nanoseconds into the minute, 0 .. 60e9.
    pub nanos: u64,
}

const MINUTE_NANOS: u64 = 60_000_000_000;

impl Tid {
    /// The largest tid NEO uses ("no upper bound"), 2^63 - 1.
    pub const MAX: Tid = Tid(i64::MAX as u64);

    /// The tid of a UTC time.
    ///
    /// The high 32 bits count minutes since 1900-01-01 00:00 in a calendar of 12 months of
    /// 31 days; the low 32 bits are the seconds within the minute, scaled by 2^32 / 60.
    /// Worked example: 2026-11-26 01:10:30 is
    /// `((((126 * 12 + 10) * 31 + 25) * 24 + 1) * 60 + 10)` minutes = 0x040D_43A6, and
    /// 30 s = 2^31 = 0x8000_0000, so the tid is 0x040D_43A6_8000_0000.
    ///
    /// The fraction is rounded up, so that `Tid::from_utc(tid.to_utc()) == tid` for every tid.
    pub fn from_utc(time: UtcTime) -> Tid {
        assert!(time.year >= 1900, "ZODB timestamps start in 1900");
        assert!((1..=12).contains(&time.month));
        assert!((1..=31).contains(&time.day));
        assert!(time.hour < 24);
        assert!(time.minute < 60);
        assert!(time.nanos < MINUTE_NANOS);
        let minutes = ((((u64::from(time.year) - 1900) * 12 + u64::from(time.month) - 1) * 31
            + u64::from(time.day)
            - 1)
            * 24
            + u64::from(time.hour))
            * 60
            + u64::from(time.minute);
        assert!(minutes <= u64::from(u32::MAX), "year out of the timestamp's range");
        let fraction = (u128::from(time.nanos) << 32).div_ceil(u128::from(MINUTE_NANOS));
        debug_assert!(fraction <= u128::from(u32::MAX));
        Tid((minutes << 32) | fraction as u64)
    }

    /// The UTC time a tid names, with the fraction rounded down to the nanosecond.
    pub fn to_utc(self) -> UtcTime {
        let mut minutes = self.0 >> 32;
        let fraction = self.0 & 0xFFFF_FFFF;
        let minute = (minutes % 60) as u32;
        minutes /= 60;
        let hour = (minutes % 24) as u32;
        minutes /= 24;
        let day = (minutes % 31) as u32 + 1;
        minutes /= 31;
        let month = (minutes % 12) as u32 + 1;
        let year = (minutes / 12) as u32 + 1900;
        let nanos = ((u128::from(fraction) * u128::from(MINUTE_NANOS)) >> 32) as u64;
        UtcTime { year, month, day, hour, minute, nanos }
    }

    /// The tid of a Unix time in nanoseconds (from 1900 on).
    pub fn from_unix_nanos(nanos: i128) -> Tid {
        let minute_nanos = i128::from(MINUTE_NANOS);
        let minutes = nanos.div_euclid(minute_nanos);
        let within = nanos.rem_euclid(minute_nanos) as u64;
        let days = minutes.div_euclid(24 * 60);
        let minute_of_day = minutes.rem_euclid(24 * 60) as u32;
        let (year, month, day) = civil_from_days(days as i64);
        Tid::from_utc(UtcTime {
            year: u32::try_from(year).expect("year before 1900"),
            month,
            day,
            hour: minute_of_day / 60,
            minute: minute_of_day % 60,
            nanos: within,
        })
    }

    /// The tid of a system time (the master's clock).
    pub fn from_system_time(time: SystemTime) -> Tid {
        let nanos = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => after.as_nanos() as i128,
            Err(before) => -(before.duration().as_nanos() as i128),
        };
        Tid::from_unix_nanos(nanos)
    }

    /// Unix time in nanoseconds, or `None` when the tid names a day its month lacks.
    pub fn to_unix_nanos(self) -> Option<i128> {
        let time = self.to_utc();
        if time.day > days_in_month(time.year, time.month) {
            return None;
        }
        let days = days_from_civil(i64::from(time.year), time.month, time.day);
        let minutes = i128::from(days) * 24 * 60 + i128::from(time.hour * 60 + time.minute);
        Some(minutes * i128::from(MINUTE_NANOS) + i128::from(time.nanos))
    }

    /// The system time a tid names, if it names a real day after the Unix epoch.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let nanos = u64::try_from(self.to_unix_nanos()?).ok()?;
        Some(UNIX_EPOCH + Duration::from_nanos(nanos))
    }

    /// The smallest valid tid greater than `self`.
    ///
    /// Within a minute this adds one to the fraction. When the fraction is full the next
    /// tid starts the next real minute: after 23:59 on the last day of a month comes the
    /// first day of the next month, not the 32nd day of a 31-day calendar month.
    pub fn next(self) -> Tid {
        assert!(self < Tid::MAX, "no tid after Tid::MAX");
        if self.0 & 0xFFFF_FFFF != 0xFFFF_FFFF {
            return Tid(self.0 + 1);
        }
        let time = self.to_utc();
        let mut minute_of_day = time.hour * 60 + time.minute + 1;
        let (mut year, mut month, mut day) = (time.year, time.month, time.day);
        if minute_of_day == 24 * 60 {
            minute_of_day = 0;
            day += 1;
            if day > days_in_month(year, month) {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
        let next = Tid::from_utc(UtcTime {
            year,
            month,
            day,
            hour: minute_of_day / 60,
            minute: minute_of_day % 60,
            nanos: 0,
        });
        assert!(next > self);
        next
    }

    /// `self` if it is after `previous`, else the smallest tid after `previous`: how a tid is
    /// chosen from a clock that may stand still or step back.
    pub fn later_than(self, previous: Tid) -> Tid {
        if self > previous { self } else { previous.next() }
    }
}

fn is_leap_year(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => unreachable!("month {month}"),
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date.
///
/// Counts in 400-year eras of 146097 days, with years starting on March 1 so that the leap
/// day is the last day of its year; then day-of-era = 365 * year-of-era + leap days +
/// day-of-year, where `(153 * m + 2) / 5` gives the days before month `m` (March = 0).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of `days_from_civil`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month =
        if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A node's id: its type's namespace in the high byte and a number in the low 24 bits.
///
/// The namespaces follow NEO (storage 0x00, master 0xF0, client 0xE0, admin 0xD0), so the
/// value read as an `i32` is NEO's node id. Printed `S1`, `M1`, `C1`, `A1`. Storage ids are
/// persistent (kept in the storage's log); the others last one connection.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u32);

/// Largest node number within a namespace.
pub const NODE_NUMBER_MAX: u32 = (1 << 24) - 1;

impl NodeId {
    pub fn new(node_type: NodeType, number: u32) -> NodeId {
        assert!((1..=NODE_NUMBER_MAX).contains(&number), "node number {number} out of range");
        NodeId((u32::from(namespace(node_type)) << 24) | number)
    }

    /// Checks a raw value: a known namespace and a number that is not zero.
    pub fn from_raw(raw: u32) -> Option<NodeId> {
        let number = raw & NODE_NUMBER_MAX;
        let known = [NodeType::Master, NodeType::Storage, NodeType::Client, NodeType::Admin]
            .iter()
            .any(|&t| u32::from(namespace(t)) == raw >> 24);
        (known && number != 0).then_some(NodeId(raw))
    }

    pub fn raw(self) -> u32 {
        self.0
    }

    pub fn node_type(self) -> NodeType {
        match (self.0 >> 24) as u8 {
            0x00 => NodeType::Storage,
            0xF0 => NodeType::Master,
            0xE0 => NodeType::Client,
            0xD0 => NodeType::Admin,
            other => unreachable!("namespace {other:#x} checked at construction"),
        }
    }

    pub fn number(self) -> u32 {
        self.0 & NODE_NUMBER_MAX
    }
}

fn namespace(node_type: NodeType) -> u8 {
    match node_type {
        NodeType::Storage => 0x00,
        NodeType::Master => 0xF0,
        NodeType::Client => 0xE0,
        NodeType::Admin => 0xD0,
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.node_type().letter(), self.number())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a node id: {0:?} (expected a letter S, M, C or A and a number, like S1)")]
pub struct ParseNodeIdError(pub String);

impl std::str::FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(text: &str) -> Result<NodeId, ParseNodeIdError> {
        let error = || ParseNodeIdError(text.to_owned());
        let mut chars = text.chars();
        let letter = chars.next().ok_or_else(error)?;
        let node_type = NodeType::from_letter(letter).ok_or_else(error)?;
        let number: u32 = chars.as_str().parse().map_err(|_| error())?;
        if !(1..=NODE_NUMBER_MAX).contains(&number) {
            return Err(error());
        }
        Ok(NodeId::new(node_type, number))
    }
}

impl Field for NodeId {
    const WIRE: &'static str = "u32 (namespace << 24 | number)";
    const SIZE_MIN: usize = 4;
    const SIZE_FIXED: Option<usize> = Some(4);

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.0.encode(out)
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let raw = u32::decode(reader)?;
        NodeId::from_raw(raw)
            .ok_or(DecodeError::BadValue { what: "node id", value: u64::from(raw) })
    }

    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
        let node_type = NodeType::arbitrary(u)?;
        Ok(NodeId::new(node_type, u.int_in_range(1..=NODE_NUMBER_MAX)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_worked_example() {
        let time =
            UtcTime { year: 2026, month: 11, day: 26, hour: 1, minute: 10, nanos: 30_000_000_000 };
        let tid = Tid::from_utc(time);
        assert_eq!(tid, Tid(0x040D_43A6_8000_0000));
        assert_eq!(tid.to_utc(), time);
    }

    #[test]
    fn tid_matches_unix_time() {
        // 2000-01-01T00:00:00Z is Unix 946684800.
        let tid = Tid::from_unix_nanos(946_684_800 * 1_000_000_000);
        let time = tid.to_utc();
        assert_eq!(
            (time.year, time.month, time.day, time.hour, time.minute, time.nanos),
            (2000, 1, 1, 0, 0, 0)
        );
        assert_eq!(tid.to_unix_nanos(), Some(946_684_800 * 1_000_000_000));
    }

    #[test]
    fn tid_next_rolls_over_real_calendar() {
        let last = Tid::from_utc(UtcTime {
            year: 2024,
            month: 2,
            day: 29,
            hour: 23,
            minute: 59,
            nanos: 0,
        });
        let full = Tid(last.0 | 0xFFFF_FFFF);
        let next = full.next();
        let time = next.to_utc();
        assert_eq!(
            (time.year, time.month, time.day, time.hour, time.minute, time.nanos),
            (2024, 3, 1, 0, 0, 0)
        );
        let year_end = Tid(Tid::from_utc(UtcTime {
            year: 2025,
            month: 12,
            day: 31,
            hour: 23,
            minute: 59,
            nanos: 0,
        })
        .0 | 0xFFFF_FFFF);
        assert_eq!(year_end.next().to_utc().year, 2026);
        assert_eq!(Tid(5).next(), Tid(6));
        assert_eq!(Tid(5).later_than(Tid(9)), Tid(10));
        assert_eq!(Tid(11).later_than(Tid(9)), Tid(11));
    }

    #[test]
    fn civil_days_round_trip() {
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn node_id_printing_and_parsing() {
        let nid = NodeId::new(NodeType::Storage, 1);
        assert_eq!(nid.raw(), 1);
        assert_eq!(nid.to_string(), "S1");
        let master = NodeId::new(NodeType::Master, 2);
        assert_eq!(master.raw() as i32, -0x10 * (1 << 24) + 2);
        for text in ["S1", "M2", "C77", "A1"] {
            assert_eq!(text.parse::<NodeId>().unwrap().to_string(), text);
        }
        for bad in ["", "S", "S0", "X1", "S-1", "S16777216"] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad}");
        }
        assert_eq!(NodeId::from_raw(0), None);
        assert_eq!(NodeId::from_raw(0x1000_0001), None);
    }
}
