//! Signature helpers: HMAC and constant-time comparison.
//!
//! Always verify over the raw bytes received, never over re-serialised JSON,
//! and compare with [`constant_time_eq`] so timing does not leak the signature.

use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA512 of `message` under `key`.
pub fn hmac_sha512(key: &[u8], message: &[u8]) -> [u8; 64] {
    let mut mac =
        <Hmac<Sha512> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Lower-case hex of HMAC-SHA256.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    hex::encode(hmac_sha256(key, message))
}

/// Lower-case hex of HMAC-SHA512.
pub fn hmac_sha512_hex(key: &[u8], message: &[u8]) -> String {
    hex::encode(hmac_sha512(key, message))
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Checks a hex signature (either case) against the expected MAC bytes in
/// constant time. Malformed hex is simply a mismatch.
pub fn verify_hex(signature_hex: &str, expected: &[u8]) -> bool {
    match hex::decode(signature_hex.trim()) {
        Ok(given) => constant_time_eq(&given, expected),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 4231 test case 2.
    #[test]
    fn rfc4231_case_2() {
        let key = b"Jefe";
        let msg = b"what do ya want for nothing?";
        assert_eq!(
            hmac_sha256_hex(key, msg),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hmac_sha512_hex(key, msg),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    #[test]
    fn verify_hex_accepts_either_case_and_rejects_tampering() {
        let mac = hmac_sha256(b"k", b"body");
        let lower = hex::encode(mac);
        assert!(verify_hex(&lower, &mac));
        assert!(verify_hex(&lower.to_uppercase(), &mac));
        assert!(!verify_hex(&lower[..62], &mac));
        assert!(!verify_hex("zz", &mac));
        let other = hmac_sha256(b"k", b"bodY");
        assert!(!verify_hex(&lower, &other));
    }

    #[test]
    fn constant_time_eq_checks_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b"abd"));
    }
}
