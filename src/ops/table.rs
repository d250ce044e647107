//! Plain aligned text tables for a terminal (and for `grep`/`awk`: one row a line, no box
//! drawing).

/// Columns separated by two spaces, each as wide as its widest cell; the last column is not
/// padded, so lines carry no trailing spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align() {
        let text = super::render(
            &["id", "state"],
            &[
                vec!["1".into(), "running".into()],
                vec!["22222".into(), "completed".into()],
            ],
        );
        assert_eq!(
            text, "id     state\n1      running\n22222  completed\n",
            "{text}"
        );
    }
}
