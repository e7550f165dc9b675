//! The pure core of token authentication: generation, hashing, verification, token
//! names and `--expires-in` durations. No kube or HTTP types here.
//!
//! Why SHA-256 and not a password hash (argon2, bcrypt): tokens carry 256 bits of OS
//! randomness, so there is nothing to brute-force from a leaked hash and no need for a
//! salt or a slow function; a fast hash lets every request be checked against every
//! stored token without making authentication a CPU sink.
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// Every generated token starts with this, so secret scanners and humans can tell a
/// kube-scim token from any other string.
pub const TOKEN_PREFIX: &str = "kscim_";

/// Bytes of OS randomness in a token (256 bits).
const TOKEN_RANDOM_BYTES: usize = 32;

/// Longest presented token we bother hashing. Generated tokens are 70 characters;
/// anything much longer is not ours, and refusing it early keeps hashing cheap.
pub const MAX_PRESENTED_TOKEN_LEN: usize = 512;

/// Longest token name: names become a label value (≤ 63 characters).
pub const MAX_NAME_LEN: usize = 63;

/// A SHA-256 digest of a token. Debug never prints the bytes: a hash is not the token,
/// but there is no reason for it to end up in logs either.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of a presented or freshly generated token.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parse the stored form (64 hex digits). Surrounding whitespace is ignored because
    /// hand-made Secrets are often filled from `sha256sum` output or a file with a newline.
    pub fn from_hex(s: &str) -> Result<TokenHash, TokenError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| TokenError::InvalidHash)?;
        Ok(TokenHash(out))
    }

    /// The stored form: 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// A freshly generated token. Debug is redacted so it can't leak through `{:?}`;
/// the only way to the value is [`NewToken::expose`], used once to print it.
pub struct NewToken(String);

impl NewToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewToken(..)")
    }
}

/// Generate a token: `kscim_` + 64 hex digits of OS randomness (256 bits).
///
/// Hex rather than base62/base64: it needs no extra dependency, survives every copy and
/// paste path (no `+`, `/`, `=`), and the length costs nothing in Entra's Secret Token field.
pub fn generate() -> Result<NewToken, TokenError> {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    // The OS generator directly (not a userspace PRNG): a token is minted once, so the
    // syscall costs nothing, and there is no generator state to reason about.
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(NewToken(format!("{TOKEN_PREFIX}{}", hex::encode(bytes))))
}

/// One stored token as the verifier needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub name: String,
    pub hash: TokenHash,
    pub expires_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl TokenEntry {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Why a presented token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyFailure {
    /// No stored token has this hash.
    Unknown,
    /// The token is known but its expiry has passed. The name is not secret and tells the
    /// operator which token to rotate.
    Expired { name: String },
}

/// Check `presented` against every stored entry.
///
/// The hash comparison is constant-time and visits every entry without an early exit, so
/// the response time says nothing about which stored hash (or how much of it) matched.
/// Expiry is checked after the match: it is not a secret. If two entries share a hash
/// (a copied Secret), a live one wins over an expired one.
pub fn verify<'a>(
    presented: &str,
    entries: &'a [TokenEntry],
    now: DateTime<Utc>,
) -> Result<&'a TokenEntry, VerifyFailure> {
    let presented = TokenHash::of(presented);
    let mut any = Choice::from(0);
    let mut any_index = 0u64;
    let mut live = Choice::from(0);
    let mut live_index = 0u64;
    for (i, entry) in entries.iter().enumerate() {
        let eq = entry.hash.0.ct_eq(&presented.0);
        let not_expired = Choice::from(u8::from(!entry.is_expired(now)));
        let i = i as u64;
        any_index.conditional_assign(&i, eq & !any);
        any |= eq;
        let eq_live = eq & not_expired;
        live_index.conditional_assign(&i, eq_live & !live);
        live |= eq_live;
    }
    // Indices come from the loop above, so `get` only fails on an impossible state;
    // treat that as "unknown" rather than panic.
    let pick = |idx: u64| usize::try_from(idx).ok().and_then(|i| entries.get(i));
    if bool::from(live) {
        return pick(live_index).ok_or(VerifyFailure::Unknown);
    }
    if bool::from(any) {
        return Err(
            pick(any_index).map_or(VerifyFailure::Unknown, |e| VerifyFailure::Expired {
                name: e.name.clone(),
            }),
        );
    }
    Err(VerifyFailure::Unknown)
}

/// Validate a token name: a DNS label (lowercase alphanumerics and `-`, starting and ending
/// alphanumeric, 1–63 characters), because it becomes part of a Secret name and a label value.
pub fn validate_name(name: &str) -> Result<(), TokenError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(TokenError::InvalidName(name.to_string()))
    }
}

/// Parse a duration such as `90d`, `12h`, `30m`, `3600s` or a sum like `1h30m`.
/// Units are required: a bare number is ambiguous (seconds? days?) for an expiry.
pub fn parse_duration(s: &str) -> Result<Duration, TokenError> {
    let err = || TokenError::InvalidDuration(s.to_string());
    let s_trim = s.trim();
    if s_trim.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s_trim.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            'w' => 7 * 86_400,
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(err()),
        };
        if digits.is_empty() {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    // Trailing digits without a unit, or a zero duration (a token that is born expired).
    if !digits.is_empty() || total == 0 {
        return Err(err());
    }
    // Keep it representable as a chrono TimeDelta and a sane date (≤ 100 years).
    if total > 100 * 366 * 86_400 {
        return Err(err());
    }
    Ok(Duration::from_secs(total))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token name {0:?}: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit")]
    InvalidName(String),
    #[error(
        "invalid duration {0:?}: use a number with a unit, e.g. 90d, 12h, 30m, 3600s or 1h30m"
    )]
    InvalidDuration(String),
    #[error("stored token hash is not 64 hex digits")]
    InvalidHash,
    #[error("operating system random generator failed: {0}")]
    Random(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
    }

    fn entry(name: &str, token: &str, expires_at: Option<DateTime<Utc>>) -> TokenEntry {
        TokenEntry {
            name: name.into(),
            hash: TokenHash::of(token),
            expires_at,
        }
    }

    #[test]
    fn generated_tokens_are_prefixed_long_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 64);
        assert!(a.expose()[TOKEN_PREFIX.len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose(), b.expose());
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn hash_round_trips_through_hex() {
        let h = TokenHash::of("kscim_abc");
        let hex = h.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(TokenHash::from_hex(&hex).unwrap(), h);
        assert_eq!(TokenHash::from_hex(&format!("  {hex}\n")).unwrap(), h);
        // The FIPS 180-2 test vector, so the stored format is plain SHA-256 hex.
        assert_eq!(
            TokenHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(TokenHash::from_hex("abc").is_err());
        assert!(TokenHash::from_hex(&"g".repeat(64)).is_err());
        assert!(TokenHash::from_hex(&"a".repeat(66)).is_err());
        assert!(!format!("{h:?}").contains(&hex[..8]));
    }

    #[test]
    fn verify_finds_the_matching_entry_among_several() {
        let entries = vec![
            entry("old", "tok-old", None),
            entry("new", "tok-new", Some(t0() + chrono::TimeDelta::days(1))),
        ];
        assert_eq!(verify("tok-old", &entries, t0()).unwrap().name, "old");
        assert_eq!(verify("tok-new", &entries, t0()).unwrap().name, "new");
        assert_eq!(
            verify("tok-other", &entries, t0()),
            Err(VerifyFailure::Unknown)
        );
        assert_eq!(verify("", &entries, t0()), Err(VerifyFailure::Unknown));
        assert_eq!(verify("tok-old", &[], t0()), Err(VerifyFailure::Unknown));
    }

    #[test]
    fn verify_checks_expiry_against_now() {
        let entries = vec![entry("e", "tok", Some(t0()))];
        let before = t0() - chrono::TimeDelta::seconds(1);
        assert_eq!(verify("tok", &entries, before).unwrap().name, "e");
        // Expiry is exclusive: at the instant itself the token is dead.
        assert_eq!(
            verify("tok", &entries, t0()),
            Err(VerifyFailure::Expired { name: "e".into() })
        );
    }

    #[test]
    fn a_live_duplicate_wins_over_an_expired_one() {
        let entries = vec![
            entry(
                "expired-copy",
                "tok",
                Some(t0() - chrono::TimeDelta::days(1)),
            ),
            entry("live", "tok", None),
        ];
        assert_eq!(verify("tok", &entries, t0()).unwrap().name, "live");
    }

    #[test]
    fn names_are_dns_labels() {
        for ok in ["a", "entra", "entra-2025", "0", &"a".repeat(63)] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            parse_duration("12h").unwrap(),
            Duration::from_secs(12 * 3_600)
        );
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1_800));
        assert_eq!(parse_duration("3600s").unwrap(), Duration::from_secs(3_600));
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration(" 2s ").unwrap(), Duration::from_secs(2));
        for bad in [
            "",
            "10",
            "d",
            "0s",
            "0d0h",
            "1x",
            "-1d",
            "1.5h",
            "1d 2h",
            "99999999999999999999d",
            "40000d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
