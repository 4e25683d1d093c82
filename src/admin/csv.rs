//! CSV export, with spreadsheet formula injection defused (OWASP): a text
//! cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is
//! prefixed with `'` (and quoted, as the `csv` crate quotes any cell that
//! needs it). Numbers and money the daemon computed are written as they are.

/// One cell.
pub enum Cell {
    /// Text from a notification (a title, a code, a nickname): defused.
    Text(String),
    /// A figure kaching computed (`-5.00`, `0.25`): as it is.
    Figure(String),
}

fn defuse(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

/// The CSV text of `header` and `rows`.
pub fn write(header: &[&str], rows: impl IntoIterator<Item = Vec<Cell>>) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    // Writing to a Vec cannot fail; a failed row would only be missing.
    let _ = w.write_record(header);
    for row in rows {
        let cells: Vec<String> = row
            .into_iter()
            .map(|c| match c {
                Cell::Text(s) => defuse(&s),
                Cell::Figure(s) => s,
            })
            .collect();
        let _ = w.write_record(&cells);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_defused_and_quotes_escaped() {
        let out = write(
            &["label", "net"],
            [
                vec![
                    Cell::Text("=HYPERLINK(\"x\")".into()),
                    Cell::Figure("-5.00".into()),
                ],
                vec![Cell::Text("@SUM(A1)".into()), Cell::Figure("1.00".into())],
                vec![
                    Cell::Text("plain, with comma".into()),
                    Cell::Figure("0.00".into()),
                ],
            ],
        );
        assert_eq!(
            out,
            "label,net\n\"'=HYPERLINK(\"\"x\"\")\",-5.00\n'@SUM(A1),1.00\n\"plain, with comma\",0.00\n"
        );
    }
}
