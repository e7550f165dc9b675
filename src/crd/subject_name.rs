//! Which names may ever become an RBAC subject. Every name kube-scim binds comes from a
//! SCIM client (userName, email, externalId, displayName) plus a configured prefix, so
//! it is attacker-controlled: a group whose externalId is `system:authenticated` bound
//! as a Group subject would grant every authenticated identity, ServiceAccounts included.
//!
//! One check serves every source of a name: the SCIM layer refuses such values before
//! they are stored, and the controller's plan refuses the final subject name (prefix
//! included), so objects written around the SCIM layer (kubectl, an older version) are
//! caught too.
use std::fmt;

/// Longest subject name kube-scim binds, in bytes. Entra caps a UPN at 113 characters
/// and an email address is at most 254; 320 leaves room for a prefix.
pub const MAX_SUBJECT_NAME_BYTES: usize = 320;

/// The prefix Kubernetes reserves for its own identities (`system:masters`,
/// `system:authenticated`, `system:serviceaccount:…`, `system:anonymous`, …).
pub const RESERVED_PREFIX: &str = "system:";

/// Why a name may not be a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnsafeName {
    Empty,
    /// Starts with `system:` (compared case-insensitively: no authenticator should be
    /// trusted to fold case the same way this check does).
    Reserved,
    TooLong,
    /// Control characters: no authenticator yields such a name, and it hides in logs and
    /// `kubectl` output.
    Unprintable,
}

impl UnsafeName {
    pub fn as_str(self) -> &'static str {
        match self {
            UnsafeName::Empty => "is empty",
            UnsafeName::Reserved => "starts with the reserved prefix \"system:\"",
            UnsafeName::TooLong => "is longer than 320 bytes",
            UnsafeName::Unprintable => "contains control characters",
        }
    }
}

impl fmt::Display for UnsafeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Ok` when `name` may be bound as an RBAC User or Group subject.
pub fn check_subject_name(name: &str) -> Result<(), UnsafeName> {
    if name.is_empty() {
        return Err(UnsafeName::Empty);
    }
    if name
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
    {
        return Err(UnsafeName::Reserved);
    }
    if name.len() > MAX_SUBJECT_NAME_BYTES {
        return Err(UnsafeName::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(UnsafeName::Unprintable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass() {
        for n in [
            "alice@contoso.com",
            "oidc:alice@contoso.com",
            "0b6e5f0e-3a4c-4f8e-9d3b-1b2c3d4e5f60",
            "Platform Admins",
            "systems:team",        // not the reserved prefix
            "oidc:system:masters", // a prefix makes it a different identity
            "Ünïcødé",
            "Team A ", // padding is data, not a threat
        ] {
            assert_eq!(check_subject_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn reserved_names_are_refused_in_any_case() {
        for n in [
            "system:authenticated",
            "system:anonymous",
            "system:masters",
            "system:serviceaccounts",
            "system:serviceaccount:kube-system:default",
            "SYSTEM:masters",
            "System:Authenticated",
            "system:",
        ] {
            assert_eq!(check_subject_name(n), Err(UnsafeName::Reserved), "{n}");
        }
    }

    #[test]
    fn empty_long_and_unprintable_names_are_refused() {
        assert_eq!(check_subject_name(""), Err(UnsafeName::Empty));
        let long = "a".repeat(MAX_SUBJECT_NAME_BYTES + 1);
        assert_eq!(check_subject_name(&long), Err(UnsafeName::TooLong));
        assert_eq!(
            check_subject_name(&"a".repeat(MAX_SUBJECT_NAME_BYTES)),
            Ok(())
        );
        for n in ["al\nice", "alice\u{0}", "\u{7f}x", "a\u{85}b", "tab\there"] {
            assert_eq!(check_subject_name(n), Err(UnsafeName::Unprintable), "{n:?}");
        }
    }

    #[test]
    fn a_multibyte_name_at_the_prefix_boundary_does_not_panic() {
        // "syst" + a 3-byte char straddles byte 7: `get(..7)` is None, not a panic.
        assert_eq!(check_subject_name("syst€m:masters"), Ok(()));
    }
}
