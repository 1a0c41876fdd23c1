//! `--output table|json` for every listing. Table cells show stored text with control
//! characters escaped (a run's error may hold anything a model or a caller wrote). A
//! closed pipe (`phasefleet runs list | head -1`) ends the command quietly.

use clap::ValueEnum;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Write `text` and a newline to stdout; a closed pipe comes back as an `io::Error`
/// of kind `BrokenPipe` (see `main`), never a panic.
pub fn emit(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// A file's bytes to stdout. To a terminal, only text is written, with control
/// characters other than newline and tab escaped (a model-written file must not drive
/// the terminal); to a pipe, the bytes as stored.
///
/// # Errors
/// A binary file on a terminal; write errors.
pub fn emit_bytes(bytes: &[u8]) -> Result<(), crate::exit::CliError> {
    use std::io::IsTerminal;
    let mut out = std::io::stdout().lock();
    if !out.is_terminal() {
        out.write_all(bytes)?;
        return Ok(out.flush()?);
    }
    let text = std::str::from_utf8(bytes)
        .ok()
        .filter(|t| !t.contains('\0'))
        .ok_or_else(|| {
            crate::exit::CliError::new(
                crate::exit::USAGE,
                "a binary file: write it with --out FILE, or pipe it",
            )
        })?;
    out.write_all(terminal_text(text).as_bytes())?;
    Ok(out.flush()?)
}

/// Text as a terminal may show it: control characters other than newline and tab
/// escaped.
#[must_use]
pub fn terminal_text(text: &str) -> String {
    escape_controls(text, |c| c == '\n' || c == '\t')
}

/// `text` with every control character escaped, except those `keep` lets through.
fn escape_controls(text: &str, keep: impl Fn(char) -> bool) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() && !keep(c) {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Text for a table cell: control characters escaped, at most `max` characters.
#[must_use]
pub fn cell(text: &str, max: usize) -> String {
    let escaped = escape_controls(text, |_| false);
    if escaped.chars().count() > max {
        let cut: String = escaped.chars().take(max).collect();
        format!("{cut}…")
    } else {
        escaped
    }
}

/// Print `rows` as JSON, or as a table with `header` and a row formatter.
pub fn print_rows<T: Serialize>(
    output: Output,
    rows: &[T],
    header: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    match output {
        Output::Json => emit(&serde_json::to_string_pretty(rows)?)?,
        Output::Table => {
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|r| cells(r).iter().map(|c| cell(c, 200)).collect())
                .collect();
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for row in &body {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |cols: Vec<String>| {
                cols.iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            emit(&line(header.iter().map(|h| (*h).to_owned()).collect()))?;
            for row in body {
                emit(&line(row))?;
            }
        }
    }
    Ok(())
}

/// Print one value as JSON, or with a custom text rendering.
pub fn print_one<T: Serialize>(
    output: Output,
    value: &T,
    text: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => emit(&serde_json::to_string_pretty(value)?)?,
        Output::Table => emit(&text(value))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn control_characters_are_escaped_and_cells_bounded() {
        assert_eq!(cell("a\u{1b}[31mred\nx", 100), "a\\u{1b}[31mred\\nx");
        assert_eq!(cell("abcdef", 3), "abc…");
    }
}
