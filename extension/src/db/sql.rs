//! Inspection of SQL text before it is sent: the extension owns each transaction's boundaries, so statements that
//! would end or start one are refused up front (a comment-aware look at the leading keywords, no full parser).

/// The leading keyword of `sql` when it is a statement that ends or starts a transaction (`BEGIN`, `START`,
/// `COMMIT`, `END`, `ROLLBACK`, `ABORT`, `PREPARE TRANSACTION`), skipping whitespace and (nested) comments.
pub(crate) fn transaction_control(sql: &str) -> Option<&'static str> {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut words: Vec<String> = Vec::new();
    while i < b.len() && words.len() < 2 {
        if b[i].is_ascii_whitespace() || b[i] == 0x0b {
            i += 1;
        } else if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            if i == start {
                break;
            }
            words.push(sql[start..i].to_ascii_uppercase());
        }
    }
    match words.first().map(String::as_str) {
        Some("BEGIN") => Some("BEGIN"),
        Some("START") => Some("START"),
        Some("COMMIT") => Some("COMMIT"),
        Some("END") => Some("END"),
        Some("ROLLBACK") => Some("ROLLBACK"),
        Some("ABORT") => Some("ABORT"),
        Some("PREPARE") if words.get(1).map(String::as_str) == Some("TRANSACTION") => Some("PREPARE TRANSACTION"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_recognised() {
        for sql in [
            "commit",
            "  CoMmIt and chain",
            "/* a /* nested */ comment */ ROLLBACK",
            "-- c\nend",
            "abort",
            "begin read write",
            "START TRANSACTION",
            "prepare transaction 'x'",
        ] {
            assert!(transaction_control(sql).is_some(), "{sql}");
        }
        for sql in [
            "select 1",
            "prepare p as select 1",
            "select 'commit'",
            "committed",
            "/* commit */ select 1",
            "with x as (select 1) select * from x",
            "",
            "/* unterminated",
        ] {
            assert_eq!(transaction_control(sql), None, "{sql}");
        }
    }
}
