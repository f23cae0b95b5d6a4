//! The one CSV reader of the input files (episode files, mini-ImageNet's
//! split CSVs): the `csv` crate (RFC 4180 quoting, CRLF), a UTF-8 byte
//! order mark dropped from the header, columns found by header name (extra
//! columns, such as the unnamed index column pandas writes, are ignored),
//! and every error naming the file and the line.

use std::path::Path;

use crate::error::{Error, Result};

/// One data row: the requested columns' values (trimmed), in the order
/// asked, and the file line the row starts on (1-based, the header is 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: usize,
    pub values: Vec<String>,
}

/// Read `text` (the contents of `path`) as CSV with at least the columns
/// `columns`; rows that are entirely empty are skipped.
pub fn read(path: &Path, text: &str, columns: &[&str]) -> Result<Vec<Row>> {
    let bad = |line: usize, why: String| Error::Csv {
        path: path.to_path_buf(),
        reason: format!("line {line}: {why}"),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let header = r
        .headers()
        .map_err(|e| bad(1, format!("not a CSV header: {e}")))?
        .clone();
    let names: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    let mut index = Vec::with_capacity(columns.len());
    for c in columns {
        match names.iter().position(|h| h == c) {
            Some(i) => index.push(i),
            None => {
                return Err(bad(
                    1,
                    format!(
                        "no column `{c}`: the header needs `{}`, it has `{}`",
                        columns.join(","),
                        names.join(",")
                    ),
                ))
            }
        }
        if names.iter().filter(|h| h == c).count() > 1 {
            return Err(bad(1, format!("column `{c}` appears twice in the header")));
        }
    }
    // The csv crate's record positions are where the previous record's
    // terminator ended (blank lines and CRLF's second byte not skipped), so
    // the line a record starts on is counted here: past any line breaks
    // from that offset, one line per '\n' before.
    let bytes = text.as_bytes();
    let (mut at, mut line_at) = (0usize, 1usize);
    let mut line_of = |byte: usize| {
        let mut start = byte.min(bytes.len());
        while start < bytes.len() && (bytes[start] == b'\n' || bytes[start] == b'\r') {
            start += 1;
        }
        line_at += bytes[at.min(start)..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        at = at.max(start);
        line_at
    };
    let mut rows = vec![];
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let line = e
                .position()
                .map(|p| line_of(p.byte() as usize))
                .unwrap_or(0);
            match e.kind() {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => bad(line, format!("{len} fields, the header has {expected_len}")),
                csv::ErrorKind::Utf8 { .. } => bad(line, "not UTF-8 text".into()),
                _ => bad(line, e.to_string()),
            }
        })?;
        let line = line_of(rec.position().map(|p| p.byte() as usize).unwrap_or(0));
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        rows.push(Row {
            line,
            values: index.iter().map(|&i| rec[i].trim().to_string()).collect(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str, cols: &[&str]) -> Result<Vec<Row>> {
        read(Path::new("f.csv"), text, cols)
    }

    #[test]
    fn quoting_bom_crlf_and_extra_columns_as_pandas_writes_them() {
        let text = "\u{feff},image,label\r\n0,\"dir,comma/a.png\",n01\r\n\r\n1,b.png,n02\r\n\r\n";
        let r = rows(text, &["label", "image"]).unwrap();
        assert_eq!(
            r,
            [
                Row {
                    line: 2,
                    values: vec!["n01".into(), "dir,comma/a.png".into()]
                },
                Row {
                    line: 4,
                    values: vec!["n02".into(), "b.png".into()]
                }
            ]
        );
    }

    #[test]
    fn errors_name_the_line_and_the_columns() {
        let e = rows("filename\nx\n", &["filename", "label"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.csv") && e.contains("line 1") && e.contains("no column `label`"),
            "{e}"
        );
        let e = rows("a,b\n1,2\n3\n", &["a"]).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("1 fields"), "{e}");
        let e = rows("a,b\r\n1,2\r\n\r\n\"x\ny\",1\r\n3\r\n", &["a"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 6") && e.contains("1 fields"), "{e}");
        let e = rows("a,a\n1,2\n", &["a"]).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
