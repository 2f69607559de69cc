//! How one log entry is laid out on disk: a schema version, a CRC-32 of the
//! payload, then the payload as JSON.
//!
//! JSON because a person debugging a shop's box can read it with any tool;
//! the version byte lets a later gateway read what an earlier one wrote; the
//! checksum catches a damaged sector before a wrong amount is announced.

use serde::{Deserialize, Serialize};

use crate::model::BalanceChange;

/// The layout written today. Readers accept every version up to this one.
pub const SCHEMA_VERSION: u8 = 1;
const HEADER: usize = 1 + 4;

/// One accepted balance change, in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Position in the log; gaps appear only where GC or quarantine removed entries.
    pub seq: u64,
    /// When the log made it durable, Unix ms.
    pub appended_at_ms: i64,
    pub change: BalanceChange,
}

/// Why bytes read back are not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {0} bytes, shorter than its header")]
    Truncated(usize),
    #[error("record schema version {0} is newer than this gateway reads ({SCHEMA_VERSION})")]
    UnknownVersion(u8),
    #[error("record checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("record payload does not parse: {0}")]
    Payload(String),
}

pub fn encode(entry: &LogEntry) -> Vec<u8> {
    // Serialising plain structs of strings and integers cannot fail.
    let payload = serde_json::to_vec(entry).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(SCHEMA_VERSION);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub fn decode(bytes: &[u8]) -> Result<LogEntry, DecodeError> {
    if bytes.len() < HEADER {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    let version = bytes[0];
    if version == 0 || version > SCHEMA_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[HEADER..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    serde_json::from_slice(payload).map_err(|e| DecodeError::Payload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Direction;

    fn entry() -> LogEntry {
        LogEntry {
            seq: 7,
            appended_at_ms: 1_700_000_000_000,
            change: BalanceChange {
                provider: "sepay".into(),
                transaction_id: "92704".into(),
                connector: "sepay".into(),
                account: "0123499999".into(),
                amount: 2_277_000,
                currency: "VND".into(),
                direction: Direction::In,
                reference: Some("MBVCB.3278907687".into()),
                counterparty: None,
                content: Some("chuyen tien mua hang".into()),
                occurred_at_ms: Some(1_699_999_990_000),
                received_at_ms: 1_700_000_000_000,
                extra: vec![("gateway".into(), "Vietcombank".into())],
            },
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(decode(&encode(&entry())), Ok(entry()));
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let bytes = encode(&entry());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(decode(&damaged).is_err(), "flip at byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn rejects_short_and_future_records() {
        assert_eq!(decode(&[1, 2]), Err(DecodeError::Truncated(2)));
        let mut bytes = encode(&entry());
        bytes[0] = SCHEMA_VERSION + 1;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnknownVersion(SCHEMA_VERSION + 1))
        );
    }
}
