//! Tab-aligned tables as istioctl prints them (Go's `text/tabwriter` with minwidth 0, padding
//! 5, space padding, no flags), for `waypoint list` and `waypoint status`.
//!
//! Pure text layout, no I/O. A row is a line of cells separated by tabs: every cell followed
//! by a tab belongs to a column; the last cell of a row is written as it is. A column is
//! aligned over a block of consecutive rows that all have a cell in it, as wide as its widest
//! cell (in characters) plus the padding; a row with fewer cells ends the blocks of the columns
//! it lacks, so the next rows that have those columns start new blocks.

/// Spaces after the widest cell of a column (istioctl's `padding` of 5).
pub const PADDING: usize = 5;

/// Lays out `text` (rows separated by `\n`, cells by `\t`) with [`PADDING`].
pub fn align(text: &str) -> String {
    align_with(text, PADDING)
}

/// Lays out `text` with `padding` spaces after each column's widest cell.
pub fn align_with(text: &str, padding: usize) -> String {
    let rows: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut widths: Vec<Vec<usize>> = rows.iter().map(|cells| vec![0; cells.len() - 1]).collect();
    layout(&rows, 0..rows.len(), 0, padding, &mut widths);
    let mut out = String::with_capacity(text.len() * 2);
    for (i, (cells, widths)) in rows.iter().zip(&widths).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for (j, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if let Some(&width) = widths.get(j) {
                let pad = width.saturating_sub(cell.chars().count());
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
    }
    out
}

/// Sets the width of column `column` for each block of consecutive rows in `range` that have
/// a tab-terminated cell there, then the next column within each block.
fn layout(
    rows: &[Vec<&str>],
    range: std::ops::Range<usize>,
    column: usize,
    padding: usize,
    widths: &mut [Vec<usize>],
) {
    let has_column = |row: usize| column + 1 < rows[row].len();
    let mut row = range.start;
    while row < range.end {
        if !has_column(row) {
            row += 1;
            continue;
        }
        let start = row;
        let mut width = 0;
        while row < range.end && has_column(row) {
            width = width.max(rows[row][column].chars().count() + padding);
            row += 1;
        }
        for w in &mut widths[start..row] {
            w[column] = width;
        }
        layout(rows, start..row, column + 1, padding, widths);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        for (name, input, want) in [
            ("empty", "", ""),
            ("no tabs", "No waypoints found.\n", "No waypoints found.\n"),
            (
                "istioctl waypoint list",
                "NAME\tREVISION\tTRAFFIC TYPE\tPROGRAMMED\nwaypoint\tdefault\tnone\tTrue\n",
                "NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n\
                 waypoint     default      none             True\n",
            ),
            (
                "empty trailing cells keep their padding (istioctl waypoint status)",
                "NAME\tSTATUS\tTYPE\tREASON\tMESSAGE\nwaypoint\tTrue\tProgrammed\t\t\n",
                "NAME         STATUS     TYPE           REASON     MESSAGE\n\
                 waypoint     True       Programmed                \n",
            ),
            (
                "an empty column is padding wide",
                "a\t\tb\nc\t\td\n",
                "a          b\nc          d\n",
            ),
            (
                "width counts characters, not bytes",
                "é\tx\nab\ty\n",
                "é      x\nab     y\n",
            ),
            (
                "a row without the column ends its block",
                "aaaaaaaa\tb\nshort\nc\td\n",
                "aaaaaaaa     b\nshort\nc     d\n",
            ),
            (
                "nested blocks: the second column spans only the rows that have it",
                "a\tb\tc\naaaa\tx\nz\tbbbbbbbb\tc\n",
                "a        b     c\naaaa     x\nz        bbbbbbbb     c\n",
            ),
            ("text without a final newline", "a\tb", "a     b"),
        ] {
            assert_eq!(align(input), want, "{name}");
        }
    }

    #[test]
    fn padding_is_configurable() {
        assert_eq!(align_with("a\tb\nccc\td", 1), "a   b\nccc d");
    }
}
