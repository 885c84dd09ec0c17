//! How the operator commands print: aligned tables for people, JSON for scripts.

/// Output format of the operator commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Output {
    /// Aligned tables for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

/// Prints `v` as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A table's first row, from its column titles.
pub(crate) fn header(titles: &[&str]) -> Vec<String> {
    titles.iter().map(|s| s.to_string()).collect()
}

/// Renders rows as columns padded to their widest cell, two spaces apart, one line each.
pub(crate) fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_and_trims_line_ends() {
        let rows = vec![
            header(&["NAME", "CIDR", "NOTE"]),
            vec!["a".into(), "10.0.0.0/8".into(), String::new()],
            vec!["longer".into(), "fd00::/8".into(), "x".into()],
        ];
        assert_eq!(
            table(rows),
            "NAME    CIDR        NOTE\n\
             a       10.0.0.0/8\n\
             longer  fd00::/8    x\n"
        );
    }

    #[test]
    fn table_of_nothing_is_empty() {
        assert_eq!(table(Vec::new()), "");
    }
}
