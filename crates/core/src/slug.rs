//! DNS-safe slugs of branch names, for Terraform workspaces and review hostnames.

/// Turns a branch name into a DNS label: lowercase `[a-z0-9-]`, no leading, trailing or
/// doubled `-`, at most 63 characters. A name that has to be shortened, or that has nothing
/// usable in it, ends in a short hash of the whole name so that different branches keep
/// different slugs.
pub fn slug(name: &str) -> String {
    const MAX: usize = 63;
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() || out.len() > MAX {
        let hash = format!("{:08x}", fnv1a(name.as_bytes()) as u32);
        let keep = MAX - hash.len() - 1;
        out.truncate(keep);
        while out.ends_with('-') {
            out.pop();
        }
        if out.is_empty() {
            out.push('b');
        }
        out.push('-');
        out.push_str(&hash);
    }
    out
}

/// The slug of `name`, made unique among `taken` (pairs of a name and its slug): when another
/// name already has the plain slug (`feature/a` and `feature-a` both give `feature-a`), this
/// one ends in a short hash of the whole name instead.
pub fn unique(name: &str, taken: &[(String, String)]) -> String {
    let plain = slug(name);
    let clash = |s: &str| taken.iter().any(|(other, their)| other != name && their == s);
    if !clash(&plain) {
        return plain;
    }
    let mut base = plain;
    base.truncate(63 - 8 - 1);
    while base.ends_with('-') {
        base.pop();
    }
    // The hash of the whole name; salted in the unlikely case that it clashes too.
    let mut salted = name.as_bytes().to_vec();
    loop {
        let candidate = format!("{base}-{:08x}", fnv1a(&salted) as u32);
        if !clash(&candidate) {
            return candidate;
        }
        salted.push(0);
    }
}

/// FNV-1a: a small, stable hash; stable across versions matters more than strength here.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_dns_labels() {
        let cases = [
            ("main", "main"),
            ("feature/Login-Page", "feature-login-page"),
            ("feature//x__y", "feature-x-y"),
            ("-leading-and-trailing-", "leading-and-trailing"),
            ("release/1.2.3", "release-1-2-3"),
            ("日本語/branch", "branch"),
        ];
        for (name, expected) in cases {
            assert_eq!(slug(name), expected, "{name}");
        }
    }

    #[test]
    fn colliding_names_get_a_hash_suffix() {
        let taken = vec![("feature/a".to_owned(), "feature-a".to_owned())];
        assert_eq!(unique("feature/a", &taken), "feature-a");
        let other = unique("feature-a", &taken);
        assert!(other.starts_with("feature-a-") && other.len() == "feature-a-".len() + 8, "{other}");
        assert_ne!(other, unique("Feature_A", &taken));
        assert_eq!(unique("feature/b", &taken), "feature-b");
        let long = format!("f/{}", "x".repeat(80));
        let taken = vec![("other".to_owned(), slug(&long))];
        let s = unique(&long, &taken);
        assert!(s.len() <= 63 && s != slug(&long), "{s}");
    }

    #[test]
    fn long_or_empty_names_get_a_hash_suffix() {
        let long = format!("feature/{}", "a".repeat(100));
        let s = slug(&long);
        assert!(s.len() <= 63, "{s}");
        assert!(s.starts_with("feature-aaaa"));
        let other = slug(&format!("feature/{}b", "a".repeat(100)));
        assert_ne!(s, other);
        let empty = slug("日本語");
        assert!(empty.starts_with("b-") && empty.len() == 10, "{empty}");
        assert_ne!(empty, slug("中文"));
        for s in [s, other, empty] {
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            assert!(!s.starts_with('-') && !s.ends_with('-'));
        }
    }
}
