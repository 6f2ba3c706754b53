//! Random upper/lower casing of tag names, shared by the rewrite property tests.

/// `name` with the characters whose bit is set in `mask` upper-cased.
pub fn random_case(name: &str, mask: u32) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask & (1 << (i % 32)) != 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}
