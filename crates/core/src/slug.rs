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
