//! Terminal tables whose columns are as wide as their widest cell: a label
//! longer than a column's usual width widens the column instead of pushing
//! the rest of its row out of line. Each column keeps a minimum width (the
//! width the table has always had), so short tables look as before.

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// One column: its header, alignment, minimum width and the text between
/// it and the next column.
#[derive(Debug, Clone)]
pub struct Column {
    pub head: String,
    pub align: Align,
    pub min: usize,
    pub gap: &'static str,
}

/// A left-aligned column of at least `min` characters, one space after it.
pub fn left(head: &str, min: usize) -> Column {
    Column {
        head: head.to_string(),
        align: Align::Left,
        min,
        gap: " ",
    }
}

/// A right-aligned column of at least `min` characters, one space after it.
pub fn right(head: &str, min: usize) -> Column {
    Column {
        align: Align::Right,
        ..left(head, min)
    }
}

impl Column {
    /// The same column followed by `gap` instead of one space.
    pub fn gap(mut self, gap: &'static str) -> Self {
        self.gap = gap;
        self
    }
}

/// A table: columns and rows of cells. A row may have fewer cells than
/// there are columns; a row's last cell is written as it is (unpadded,
/// not right-aligned) and may run past its column without widening it.
#[derive(Debug, Clone)]
pub struct Columns {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

impl Columns {
    pub fn new(columns: Vec<Column>) -> Self {
        Columns {
            columns,
            rows: Vec::new(),
        }
    }

    /// Append a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Header line and rows, each ending in a newline, trailing spaces
    /// trimmed.
    pub fn render(&self) -> String {
        let n = self.columns.len();
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .map(|c| c.min.max(width(&c.head)))
            .collect();
        for row in &self.rows {
            // A row's last cell is never padded, so it widens nothing.
            for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
            let cells: Vec<&str> = cells.collect();
            let mut s = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let c = &self.columns[i.min(n - 1)];
                let pad = widths[i.min(n - 1)].saturating_sub(width(cell));
                let last = i + 1 == cells.len();
                match (c.align, last) {
                    (_, true) => s.push_str(cell),
                    (Align::Left, false) => {
                        s.push_str(cell);
                        s.extend(std::iter::repeat_n(' ', pad));
                    }
                    (Align::Right, false) => {
                        s.extend(std::iter::repeat_n(' ', pad));
                        s.push_str(cell);
                    }
                }
                if !last {
                    s.push_str(c.gap);
                }
            }
            let mut s = s.trim_end().to_string();
            s.push('\n');
            s
        };
        let mut out = line(&mut self.columns.iter().map(|c| c.head.as_str()));
        for row in &self.rows {
            out.push_str(&line(&mut row.iter().map(String::as_str)));
        }
        out
    }
}

/// Characters on screen (the cells are plain text: no escapes, no wide
/// glyphs beyond `±`).
fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cells_keep_the_minimum_widths_and_long_ones_widen_their_column() {
        let mut t = Columns::new(vec![
            left("algorithm", 14),
            right("acc", 6),
            left("note", 0),
        ]);
        t.row(vec!["maml".into(), "1.0".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "algorithm         acc note\nmaml              1.0 x\n"
        );
        t.row(vec![
            "a-very-long-label-indeed".into(),
            "22.5".into(),
            "y".into(),
        ]);
        t.row(vec!["short".into(), "a spilling last cell".into()]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        // Every row's second column ends at the same place.
        let ends: Vec<usize> = lines
            .iter()
            .take(3)
            .map(|l| l.find(" x").or(l.find(" y")).or(l.find(" note")).unwrap())
            .collect();
        assert!(ends.iter().all(|&e| e == ends[0]), "{out}");
        assert_eq!(lines[2], "a-very-long-label-indeed   22.5 y", "{out}");
        assert_eq!(
            lines[3],
            format!("short{}a spilling last cell", " ".repeat(20))
        );
    }
}
