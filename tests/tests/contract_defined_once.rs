//! Every name the extension and its callers agree on is defined once, in the `makenaide-contract` crate:
//! - no Rust source outside `contract/` spells a header name or an error code as a plain string literal (raw and
//!   byte strings are wire-format fixtures, e.g. a JSON body a fake server answers, and are not names);
//! - docs/contracts.md's error table lists exactly the codes of `ErrorCode`, each with its status;
//! - `functions/FUNCTIONS` names exactly the function crates under `functions/`.

use makenaide_contract::{headers, ErrorCode};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() && !name.starts_with('.') && name != "target" {
            rust_files(&p, out);
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// The contents of the plain (non-raw, non-byte) string literals of Rust source `s`, with their line numbers.
/// Comments, raw strings (`r"…"`, `r#"…"#`), byte strings and char literals are skipped.
fn plain_literals(s: &str) -> Vec<(usize, String)> {
    let b = s.as_bytes();
    let (n, mut i, mut out) = (b.len(), 0, Vec::new());
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let skip_quoted = |mut k: usize| {
        while k < n && b[k] != b'"' {
            k += if b[k] == b'\\' { 2 } else { 1 };
        }
        k + 1
    };
    while i < n {
        let prev = if i > 0 { b[i - 1] } else { b' ' };
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => i = s[i..].find('\n').map_or(n, |j| i + j),
            b'/' if b.get(i + 1) == Some(&b'*') => i = s[i + 2..].find("*/").map_or(n, |j| i + 2 + j + 2),
            c @ (b'r' | b'b') if !ident(prev) => {
                let mut j = i + 1;
                if c == b'b' && b.get(j) == Some(&b'r') {
                    j += 1;
                }
                let hashes_from = j;
                while c != b'b' || j > i + 1 {
                    if b.get(j) != Some(&b'#') {
                        break;
                    }
                    j += 1;
                }
                if (c == b'r' || j > i + 1) && b.get(j) == Some(&b'"') {
                    let close = format!("\"{}", "#".repeat(j - hashes_from));
                    i = s[j + 1..].find(&close).map_or(n, |e| j + 1 + e + close.len());
                } else if c == b'b' && b.get(i + 1) == Some(&b'"') {
                    i = skip_quoted(i + 2);
                } else {
                    i += 1;
                }
            }
            b'"' => {
                let end = skip_quoted(i + 1);
                let line = s[..i].matches('\n').count() + 1;
                out.push((line, s[i + 1..end.saturating_sub(1).max(i + 1)].to_owned()));
                i = end;
            }
            // '\n', '\'', '\\': the escaped character, then the closing quote.
            b'\'' if b.get(i + 1) == Some(&b'\\') => i = s[i + 3..].find('\'').map_or(n, |e| i + 3 + e + 1),
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 3,
            _ => i += 1,
        }
    }
    out
}

#[test]
fn the_lexer_sees_only_plain_literals() {
    let src = "let a = \"x-makenaide-token\"; // \"db_timeout\"\nlet b = r#\"{\"code\":\"db_timeout\"}\"#;\n\
               let c = b\"sql_error\"; let d = 'x'; let e: &'static str = \"internal\";";
    let lits: Vec<String> = plain_literals(src).into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        lits,
        [
            makenaide_contract::headers::TOKEN,
            makenaide_contract::ErrorCode::Internal.as_str()
        ]
    );
}

#[test]
fn no_header_or_error_code_is_spelled_outside_the_contract() {
    let names: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .chain(
            [
                headers::TOKEN,
                headers::DEADLINE,
                headers::SOURCE,
                headers::FORWARDED_FOR,
                headers::NEON_ARRAY_MODE,
                headers::NEON_RAW_TEXT_OUTPUT,
                headers::NEON_BATCH_ISOLATION_LEVEL,
                headers::NEON_BATCH_READ_ONLY,
                headers::NEON_BATCH_DEFERRABLE,
                headers::NEON_CONNECTION_STRING,
            ]
            .map(str::to_owned),
        )
        .collect();
    let mut files = Vec::new();
    for dir in ["extension", "functions", "tests"] {
        rust_files(&repo().join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} Rust files", files.len());
    let mut found = Vec::new();
    for f in files.iter().filter(|f| !f.ends_with("contract_defined_once.rs")) {
        let src = std::fs::read_to_string(f).expect("read source");
        for (line, lit) in plain_literals(&src) {
            if names.iter().any(|n| n.eq_ignore_ascii_case(&lit)) {
                found.push(format!("{}:{line}: {lit:?}", f.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "use makenaide_contract::{{headers, ErrorCode}} instead of these literals:\n{}",
        found.join("\n")
    );
}

#[test]
fn contracts_md_lists_exactly_the_error_codes() {
    let doc = std::fs::read_to_string(repo().join("docs/contracts.md")).expect("docs/contracts.md");
    let section = doc.split("### Errors").nth(1).expect("an Errors section");
    let mut listed = Vec::new();
    for row in section.lines().skip_while(|l| !l.starts_with("| status")).skip(2) {
        if !row.starts_with('|') {
            break;
        }
        let cols: Vec<&str> = row.split('|').map(str::trim).collect();
        let status: u16 = cols[1].parse().unwrap_or_else(|_| panic!("one status per row: {row}"));
        listed.push((cols[2].trim_matches('`').to_owned(), status));
    }
    let want: Vec<(String, u16)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), c.status()))
        .collect();
    assert_eq!(
        listed, want,
        "docs/contracts.md's error table must list ErrorCode::ALL in order"
    );
}

#[test]
fn the_function_list_names_the_function_crates() {
    let mut crates: Vec<String> = std::fs::read_dir(repo().join("functions"))
        .expect("functions/")
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file() && e.file_name() != "pipeline")
        .map(|e| format!("makenaide-{}", e.file_name().to_string_lossy()))
        .collect();
    crates.sort();
    let mut listed: Vec<String> = makenaide_contract::functions::all().map(str::to_owned).collect();
    listed.sort();
    assert_eq!(
        listed, crates,
        "functions/FUNCTIONS and the crates under functions/ must agree"
    );
}
