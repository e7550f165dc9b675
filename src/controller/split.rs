//! Splitting a logical binding's subjects into parts (separate binding objects).
//!
//! Two limits shape the parts. One etcd object holds at most 1.5 MiB, so a part has a
//! byte and a count ceiling. And a cluster mapping copies the same subject list into a
//! RoleBinding per namespace, so one subject change rewrites its part in every copy:
//! the part size times the copy count is what a single deactivation costs the API
//! server. [`Limits::for_copies`] sizes parts so that product stays under a budget.
//!
//! Parts are addressed by *linear hashing* of the subject: going from n to n+1 parts
//! splits exactly one part in two, so a growing (or shrinking) binding rewrites a few
//! parts instead of reshuffling all of them, and a subject's part is known without
//! looking at the others.
use super::plan::Subject;

/// A part never gets smaller than this, whatever the copy count: below it the object
/// count grows faster than the rewrite shrinks.
pub const MIN_PART_BYTES: usize = 8 * 1024;

/// Ceilings for one part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_subjects: usize,
    pub max_bytes: usize,
}

impl Limits {
    /// Limits for a subject list written into `copies` binding objects (one per target),
    /// so that one change rewrites at most about `change_budget` bytes in all.
    pub fn for_copies(
        max_subjects: usize,
        max_bytes: usize,
        change_budget: usize,
        copies: usize,
    ) -> Limits {
        let per_copy = change_budget / copies.max(1);
        Limits {
            max_subjects: max_subjects.max(1),
            max_bytes: per_copy.clamp(MIN_PART_BYTES.min(max_bytes), max_bytes.max(1)),
        }
    }
}

/// Split sorted, unique `subjects` into parts within `limits`, each sorted. `preferred`
/// is the current part count: it is kept while it still fits and is not far above
/// what is needed, so a small change rewrites only the part holding the subject.
/// The flag says whether every subject sits in its [`part_of`] (false only for the
/// greedy fallback).
pub fn split_subjects(
    subjects: &[Subject],
    limits: Limits,
    preferred: usize,
) -> (Vec<Vec<Subject>>, bool) {
    let hashed: Vec<(u64, usize)> = subjects.iter().map(|s| (hash(s), s.json_len())).collect();
    match part_count(&hashed, limits, preferred) {
        1 => (vec![subjects.to_vec()], true),
        0 => (greedy_chunks(subjects, limits), false),
        n => {
            let mut parts = vec![Vec::new(); n];
            for (s, (h, _)) in subjects.iter().zip(&hashed) {
                parts[address(*h, n)].push(s.clone());
            }
            (parts, true)
        }
    }
}

/// The part of `n` that `subject` belongs to (when the binding is hash-split).
pub fn part_of(subject: &Subject, n: usize) -> usize {
    address(hash(subject), n.max(1))
}

/// 0 means "fall back to greedy chunks" (no hashed count fits).
fn part_count(hashed: &[(u64, usize)], limits: Limits, preferred: usize) -> usize {
    let Limits {
        max_subjects,
        max_bytes,
    } = limits;
    let bytes: usize = hashed.iter().map(|(_, len)| len).sum();
    if hashed.len() <= max_subjects && bytes <= max_bytes {
        return 1;
    }
    let minimum = hashed
        .len()
        .div_ceil(max_subjects)
        .max(bytes.div_ceil(max_bytes))
        .max(1);
    // Linear hashing: with 2^i ≤ n < 2^(i+1) unsplit parts carry twice the load of split
    // ones, so a fitting count can be up to twice the minimum; 4× + 4 covers variance.
    let ceiling = minimum * 4 + 4;
    let fits = |n: usize| {
        let mut counts = vec![0usize; n];
        let mut sizes = vec![0usize; n];
        for (h, len) in hashed {
            let p = address(*h, n);
            counts[p] += 1;
            sizes[p] += len;
        }
        counts.iter().all(|c| *c <= max_subjects) && sizes.iter().all(|b| *b <= max_bytes)
    };
    if (minimum..=ceiling).contains(&preferred) && fits(preferred) {
        return preferred;
    }
    // Growing from a smaller count starts there (the parts below it stay as they are); a
    // count far above the need starts over from the minimum.
    let start = if preferred > ceiling {
        minimum
    } else {
        preferred.max(minimum)
    };
    (start..=ceiling).find(|n| fits(*n)).unwrap_or(0)
}

/// Linear-hashing address of `h` among `n ≥ 1` parts.
fn address(h: u64, n: usize) -> usize {
    let n = n as u64;
    let low = 1u64 << (63 - n.leading_zeros()); // largest power of two ≤ n
    let a = h & (low - 1);
    let a = if a < n - low { h & (2 * low - 1) } else { a };
    a as usize
}

/// FNV-1a over kind and name, then a finalizer so the low bits (which the address
/// uses) are well mixed: fast, and stable across versions and platforms.
fn hash(s: &Subject) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.kind.as_str().bytes().chain([0]).chain(s.name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Fallback: consecutive chunks, each as full as the limits allow.
fn greedy_chunks(subjects: &[Subject], limits: Limits) -> Vec<Vec<Subject>> {
    let mut parts: Vec<Vec<Subject>> = vec![Vec::new()];
    let mut size = 0;
    for s in subjects {
        let len = s.json_len();
        let full = parts.last().is_some_and(|p| {
            !p.is_empty() && (p.len() >= limits.max_subjects || size + len > limits.max_bytes)
        });
        if full {
            parts.push(Vec::new());
            size = 0;
        }
        if let Some(p) = parts.last_mut() {
            p.push(s.clone());
        }
        size += len;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::plan::RBAC_API_GROUP;

    fn many_subjects(n: usize) -> Vec<Subject> {
        // 45-character names.
        let mut v: Vec<Subject> = (0..n)
            .map(|i| Subject::user(format!("user-{i:06}@payments-team-eu.corp.example.com")))
            .collect();
        assert_eq!(v[0].name.len(), 45);
        v.sort();
        v
    }

    fn serialized_len(subjects: &[Subject]) -> usize {
        let json: Vec<serde_json::Value> = subjects
            .iter()
            .map(|s| serde_json::json!({"kind": s.kind.as_str(), "apiGroup": RBAC_API_GROUP, "name": s.name}))
            .collect();
        serde_json::to_string(&json).unwrap().len()
    }

    const BIG: Limits = Limits {
        max_subjects: 10_000,
        max_bytes: 800_000,
    };

    #[test]
    fn json_len_matches_serde_json() {
        for s in [Subject::user("alice"), Subject::group("a\"b\\c\u{1}é")] {
            assert_eq!(
                s.json_len(),
                serialized_len(std::slice::from_ref(&s)) - 2 + 1,
                "{s:?}"
            );
        }
    }

    #[test]
    fn linear_hashing_splits_one_part_per_step() {
        for h in [0u64, 1, 2, 3, 5, 8, 13, 0xdead_beef, u64::MAX] {
            for n in 1..200usize {
                let (a, b) = (address(h, n), address(h, n + 1));
                assert!(a < n && b < n + 1);
                // Going from n to n+1 moves keys only from part n - 2^i to part n.
                let low = 1usize << (usize::BITS - 1 - n.leading_zeros());
                assert!(a == b || (a == n - low && b == n), "h={h} n={n}: {a} → {b}");
            }
        }
    }

    #[test]
    fn twenty_thousand_subjects_split_under_budget() {
        let subjects = many_subjects(20_000);
        let parts = split_subjects(&subjects, BIG, 0).0;
        assert!(parts.len() >= 2, "{}", parts.len());
        for p in &parts {
            assert!(!p.is_empty());
            assert!(p.len() <= BIG.max_subjects);
            let bytes = serialized_len(p);
            assert!(bytes <= BIG.max_bytes, "{bytes}");
            assert!(p.windows(2).all(|w| w[0] < w[1]), "sorted");
        }
        let mut all: Vec<Subject> = parts.iter().flatten().cloned().collect();
        all.sort();
        assert_eq!(all, subjects, "every subject exactly once");
        assert_eq!(parts, split_subjects(&subjects, BIG, 0).0, "deterministic");
        for (i, p) in parts.iter().enumerate() {
            assert!(p.iter().all(|s| part_of(s, parts.len()) == i));
        }

        // Growth: subjects stay in their part while the part count holds.
        let mut grown = subjects.clone();
        grown.push(Subject::user("aaaa-new-user@example.com"));
        grown.sort();
        let regrown = split_subjects(&grown, BIG, parts.len()).0;
        assert_eq!(regrown.len(), parts.len());
        for (old, new) in parts.iter().zip(&regrown) {
            assert!(old.iter().all(|s| new.contains(s)));
        }
        // The current part count is kept while it still fits (hysteresis) …
        assert_eq!(
            split_subjects(&subjects, BIG, parts.len() + 1).0.len(),
            parts.len() + 1
        );
        // … but not when it is far above the minimum.
        assert_eq!(split_subjects(&subjects, BIG, 100).0.len(), parts.len());
    }

    #[test]
    fn a_fanned_out_binding_gets_small_parts_and_growth_rewrites_few() {
        // 50,000 subjects copied into 100 namespaces, 1.5 MB per change.
        let limits = Limits::for_copies(10_000, 800_000, 1_500_000, 100);
        assert_eq!(limits.max_bytes, 15_000);
        let subjects = many_subjects(50_000);
        let parts = split_subjects(&subjects, limits, 0).0;
        let biggest = parts.iter().map(|p| serialized_len(p)).max().unwrap();
        assert!(biggest <= 15_000, "{biggest}");
        assert!(biggest * 100 <= 1_500_000);

        // 2,000 newcomers: most parts are untouched.
        let mut grown = subjects.clone();
        grown.extend((0..2_000).map(|i| Subject::user(format!("new-{i:05}@example.com"))));
        grown.sort();
        let regrown = split_subjects(&grown, limits, parts.len()).0;
        let unchanged = parts.iter().zip(&regrown).filter(|(a, b)| a == b).count();
        let changed = regrown.len() - unchanged;
        // Every newcomer lands somewhere, but the split itself moves few parts.
        assert!(regrown.len() >= parts.len());
        let moved: usize = parts
            .iter()
            .flatten()
            .filter(|s| {
                let before = part_of(s, parts.len());
                part_of(s, regrown.len()) != before
            })
            .count();
        assert!(
            moved * 5 < subjects.len(),
            "{moved} of {} subjects moved part ({changed} parts changed)",
            subjects.len()
        );
    }

    #[test]
    fn limits_for_copies_stay_within_bounds() {
        assert_eq!(
            Limits::for_copies(10_000, 800_000, 1_500_000, 1).max_bytes,
            800_000
        );
        assert_eq!(
            Limits::for_copies(10_000, 800_000, 1_500_000, 0).max_bytes,
            800_000
        );
        assert_eq!(
            Limits::for_copies(10_000, 800_000, 1_500_000, 1_000).max_bytes,
            MIN_PART_BYTES
        );
        assert_eq!(Limits::for_copies(0, 0, 0, 5).max_subjects, 1);
    }

    #[test]
    fn byte_budget_alone_forces_a_split_and_greedy_fallback_fits() {
        let limits = Limits {
            max_subjects: usize::MAX,
            max_bytes: 50_000,
        };
        let subjects = many_subjects(3_000);
        let parts = split_subjects(&subjects, limits, 0).0;
        assert!(parts.len() >= 7);
        assert!(parts.iter().all(|p| serialized_len(p) <= 50_000));
        let greedy = greedy_chunks(&subjects, limits);
        assert!(greedy.iter().all(|p| serialized_len(p) <= 50_000));
        assert_eq!(greedy.concat(), subjects);
    }
}
