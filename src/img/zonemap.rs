//! `zcow-img zone map`: a picture of every zone, as SVG or as text.
//!
//! Zones are fed one at a time ([`ZoneMap::push`]) so a million-zone image
//! is drawn in bounded memory: consecutive zones are grouped into at most
//! [`MAX_CELLS`] cells, each remembering how many of its zones are in each
//! condition and how full they are.

use crate::device::{BlockDevice, DevResult, DeviceError};
use crate::size::human_size;
use crate::zone::{ZoneCond, ZoneDescriptor, ZoneGeometry, ZoneType};
use std::fmt::Write as _;

/// The most cells one map draws; above this, consecutive zones share a cell.
pub const MAX_CELLS: u32 = 16_384;

/// What a cell shows: the zone type for conventional zones, else the
/// condition. Index into [`KINDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A conventional zone (no write pointer).
    Conventional,
    /// A sequential zone in this condition.
    Cond(ZoneCond),
}

/// Every kind, in legend order.
pub const KINDS: [Kind; 8] = [
    Kind::Conventional,
    Kind::Cond(ZoneCond::Empty),
    Kind::Cond(ZoneCond::ImpOpen),
    Kind::Cond(ZoneCond::ExpOpen),
    Kind::Cond(ZoneCond::Closed),
    Kind::Cond(ZoneCond::Full),
    Kind::Cond(ZoneCond::ReadOnly),
    Kind::Cond(ZoneCond::Offline),
];

impl Kind {
    fn of(z: &ZoneDescriptor) -> Kind {
        match (z.zone_type, z.cond) {
            // Faults win over the type: an offline conventional zone is offline.
            (_, c @ (ZoneCond::ReadOnly | ZoneCond::Offline)) => Kind::Cond(c),
            (ZoneType::Conventional, _) | (_, ZoneCond::NotWp) => Kind::Conventional,
            (_, c) => Kind::Cond(c),
        }
    }

    fn index(self) -> usize {
        KINDS.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// Name used in the legend, the CSS class and the text rendering.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Conventional => "CONVENTIONAL",
            Kind::Cond(c) => c.name(),
        }
    }

    /// Fill colour.
    pub fn colour(self) -> &'static str {
        match self {
            Kind::Conventional => "#8d99ae",
            Kind::Cond(ZoneCond::Empty) => "#f1f3f5",
            Kind::Cond(ZoneCond::ImpOpen) => "#40c057",
            Kind::Cond(ZoneCond::ExpOpen) => "#228be6",
            Kind::Cond(ZoneCond::Closed) => "#fd7e14",
            Kind::Cond(ZoneCond::Full) => "#364fc7",
            Kind::Cond(ZoneCond::ReadOnly) => "#ae3ec9",
            Kind::Cond(ZoneCond::Offline) => "#e03131",
            Kind::Cond(ZoneCond::NotWp) => "#8d99ae",
        }
    }

    /// Outline colour (empty zones need a visible edge on white).
    pub fn stroke(self) -> &'static str {
        match self {
            Kind::Cond(ZoneCond::Empty) => "#adb5bd",
            k => k.colour(),
        }
    }

    /// One character for the text rendering.
    pub fn glyph(self) -> char {
        match self {
            Kind::Conventional => 'c',
            Kind::Cond(ZoneCond::Empty) => '.',
            Kind::Cond(ZoneCond::ImpOpen) => 'o',
            Kind::Cond(ZoneCond::ExpOpen) => 'O',
            Kind::Cond(ZoneCond::Closed) => 'C',
            Kind::Cond(ZoneCond::Full) => 'F',
            Kind::Cond(ZoneCond::ReadOnly) => 'R',
            Kind::Cond(ZoneCond::Offline) => 'X',
            Kind::Cond(ZoneCond::NotWp) => 'c',
        }
    }

    fn css(self) -> String {
        self.name().to_ascii_lowercase().replace('_', "-")
    }
}

/// One cell: a run of consecutive zones.
#[derive(Debug, Clone, Default)]
struct Cell {
    first: u32,
    zones: u32,
    counts: [u32; 8],
    /// Sum over the cell's zones of how full each is (0.0–1.0).
    fill: f64,
}

impl Cell {
    /// The kind most of the cell's zones have (faults first on a tie, so a
    /// single offline zone in a group is not hidden by a tie).
    fn kind(&self) -> Kind {
        let mut best = 0;
        for i in 1..KINDS.len() {
            if self.counts[i] > self.counts[best] || (self.counts[i] > 0 && i >= 6) {
                best = i;
            }
        }
        KINDS[best]
    }

    fn mean_fill(&self) -> f64 {
        if self.zones == 0 {
            0.0
        } else {
            self.fill / self.zones as f64
        }
    }
}

/// How full a zone is: the write pointer within the capacity, FULL and
/// conventional zones count as full, faulted zones as their wp says.
fn fill_of(z: &ZoneDescriptor, kind: Kind) -> f64 {
    match kind {
        Kind::Conventional | Kind::Cond(ZoneCond::Full) => 1.0,
        _ if z.cap == 0 => 0.0,
        _ => (z.wp.saturating_sub(z.start) as f64 / z.cap as f64).clamp(0.0, 1.0),
    }
}

/// A zone map being built.
#[derive(Debug)]
pub struct ZoneMap {
    geometry: ZoneGeometry,
    name: String,
    per_cell: u32,
    cells: Vec<Cell>,
    totals: [u64; 8],
    seen: u64,
}

impl ZoneMap {
    /// An empty map of a device with this geometry; `name` goes in the title.
    pub fn new(geometry: ZoneGeometry, name: &str) -> Self {
        let per_cell = geometry.nr_zones.div_ceil(MAX_CELLS).max(1);
        let n = geometry.nr_zones.div_ceil(per_cell) as usize;
        let cells = (0..n)
            .map(|i| Cell {
                first: i as u32 * per_cell,
                ..Cell::default()
            })
            .collect();
        ZoneMap {
            geometry,
            name: name.to_string(),
            per_cell,
            cells,
            totals: [0; 8],
            seen: 0,
        }
    }

    /// How many zones share one cell (1 when every zone has its own).
    pub fn zones_per_cell(&self) -> u32 {
        self.per_cell
    }

    /// Number of cells drawn.
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    /// Zones per kind, in [`KINDS`] order.
    pub fn totals(&self) -> [u64; 8] {
        self.totals
    }

    /// Add one zone. Zones outside the geometry are ignored.
    pub fn push(&mut self, z: &ZoneDescriptor) {
        let Some(cell) = self.cells.get_mut((z.index / self.per_cell) as usize) else {
            return;
        };
        let kind = Kind::of(z);
        cell.zones += 1;
        cell.counts[kind.index()] += 1;
        cell.fill += fill_of(z, kind);
        self.totals[kind.index()] += 1;
        self.seen += 1;
    }

    fn title(&self) -> String {
        format!("{}: {}", self.name, self.geometry_line())
    }

    fn geometry_line(&self) -> String {
        let g = &self.geometry;
        let limit = |n: u32| {
            if n == 0 {
                "unlimited".to_string()
            } else {
                n.to_string()
            }
        };
        format!(
            "{} zones of {} (capacity {}), {} conventional, max open {}, max active {}, max append {}",
            g.nr_zones,
            human_size(g.zone_size),
            human_size(g.zone_capacity),
            g.conventional_zones,
            limit(g.max_open_zones),
            limit(g.max_active_zones),
            if g.max_append_bytes == 0 {
                "none".to_string()
            } else {
                human_size(g.max_append_bytes as u64)
            },
        )
    }

    fn scale_note(&self) -> String {
        if self.per_cell == 1 {
            "one cell per zone".to_string()
        } else {
            format!(
                "each cell aggregates {} consecutive zones (colour: the condition most of them have, read-only/offline first; fill: their mean write pointer)",
                self.per_cell
            )
        }
    }

    fn counts_line(&self) -> String {
        KINDS
            .iter()
            .zip(self.totals)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{} {n}", k.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn cell_label(&self, c: &Cell) -> String {
        let kind = c.kind();
        if self.per_cell == 1 {
            let i = c.first;
            format!(
                "zone {i} at {:#x}: {} ({:.0}% written)",
                self.geometry.zone_start(i),
                kind.name(),
                c.mean_fill() * 100.0
            )
        } else {
            let parts: Vec<String> = KINDS
                .iter()
                .zip(c.counts)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{n} {}", k.name()))
                .collect();
            format!(
                "zones {}-{}: {} ({:.0}% written)",
                c.first,
                c.first + c.zones.saturating_sub(1),
                parts.join(", "),
                c.mean_fill() * 100.0
            )
        }
    }

    /// The map as an SVG document: a title with the geometry and limits,
    /// one `<g class="cell …">` per cell (background, a fill bar in
    /// proportion to the write pointer, a tooltip), a legend with the
    /// counts per condition.
    pub fn to_svg(&self) -> String {
        let n = self.cells.len().max(1) as u32;
        // Roughly square grid, at most 128 columns; cells shrink as the
        // count grows so the picture stays about 1000 px wide.
        let cols = ((n as f64).sqrt().ceil() as u32).clamp(1, 128);
        let rows = n.div_ceil(cols);
        let cell = (960 / cols).clamp(6, 64);
        let gap = if cell >= 16 { 2 } else { 1 };
        let margin = 20;
        let header = 92;
        let legend_h = 30 * KINDS.len().div_ceil(4) as u32 + 16;
        let width = (cols * cell + 2 * margin).max(900);
        let height = header + rows * cell + legend_h + margin;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
        );
        let _ = writeln!(
            s,
            r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text class="title" x="{margin}" y="22" font-size="15" font-weight="bold">{}</text>"#,
            xml_escape(&self.name)
        );
        for (y, class, text) in [
            (42, "geometry", self.geometry_line()),
            (60, "scale", self.scale_note()),
            (78, "counts", self.counts_line()),
        ] {
            let _ = writeln!(
                s,
                r#"<text class="{class}" x="{margin}" y="{y}" font-size="12">{}</text>"#,
                xml_escape(&text)
            );
        }
        for (i, c) in self.cells.iter().enumerate() {
            let i = i as u32;
            let x = margin + (i % cols) * cell;
            let y = header + (i / cols) * cell;
            let kind = c.kind();
            let inner = cell - gap;
            // Faulted cells are drawn solid: their condition, not their
            // write pointer, is what matters to someone reading the map.
            let fill = match kind {
                Kind::Cond(ZoneCond::ReadOnly | ZoneCond::Offline) => 1.0,
                _ => c.mean_fill(),
            };
            let fill_h = (fill * inner as f64).round() as u32;
            let _ = write!(
                s,
                r#"<g class="cell {}" data-first="{}" data-zones="{}"><title>{}</title><rect x="{x}" y="{y}" width="{inner}" height="{inner}" fill="{}" stroke="{}" stroke-width="{}" fill-opacity="0.35"/>"#,
                kind.css(),
                c.first,
                c.zones,
                xml_escape(&self.cell_label(c)),
                kind.colour(),
                kind.stroke(),
                if cell >= 16 { 1 } else { 0 },
            );
            if fill_h > 0 {
                let _ = write!(
                    s,
                    r#"<rect class="fill" x="{x}" y="{}" width="{inner}" height="{fill_h}" fill="{}"/>"#,
                    y + inner - fill_h,
                    kind.colour()
                );
            }
            s.push_str("</g>\n");
        }
        let ly = header + rows * cell + 16;
        for (i, (k, total)) in KINDS.iter().zip(self.totals).enumerate() {
            let x = margin + (i as u32 % 4) * 220;
            let y = ly + (i as u32 / 4) * 30;
            let _ = writeln!(
                s,
                r##"<g class="legend {}"><rect x="{x}" y="{y}" width="18" height="18" fill="{}" stroke="#495057" stroke-width="0.5"/><text x="{}" y="{}" font-size="13">{} {total}</text></g>"##,
                k.css(),
                k.colour(),
                x + 24,
                y + 14,
                k.name()
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// The map as text: a title, one character per cell (`width` per
    /// line, each line prefixed with its first zone), and a legend.
    pub fn to_text(&self, width: usize) -> String {
        let width = width.max(8);
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.title());
        let _ = writeln!(s, "{}", self.scale_note());
        let digits = self.geometry.nr_zones.max(1).to_string().len();
        for (row, chunk) in self.cells.chunks(width).enumerate() {
            let first = (row * width) as u64 * self.per_cell as u64;
            let line: String = chunk.iter().map(|c| c.kind().glyph()).collect();
            let _ = writeln!(s, "{first:>digits$} {line}");
        }
        let legend: Vec<String> = KINDS
            .iter()
            .zip(self.totals)
            .map(|(k, n)| format!("{} {} {n}", k.glyph(), k.name()))
            .collect();
        let _ = writeln!(s, "{}", legend.join("  "));
        s
    }
}

/// Build the map of a zoned device from its zone reports, a bounded batch
/// at a time, so memory stays at [`MAX_CELLS`] cells whatever the zone count.
pub fn from_device(dev: &dyn BlockDevice, name: &str) -> DevResult<ZoneMap> {
    let g = dev
        .zone_geometry()
        .ok_or_else(|| DeviceError::Unsupported(format!("'{name}' is not a zoned device")))?;
    let mut map = ZoneMap::new(g, name);
    let mut next = 0u32;
    while next < g.nr_zones {
        let batch = dev.zone_report(g.zone_start(next), REPORT_BATCH)?;
        let Some(last) = batch.last() else {
            return Err(DeviceError::Invalid(format!(
                "zone report at zone {next} returned no zones"
            )));
        };
        if last.index < next {
            return Err(DeviceError::Invalid(format!(
                "zone report at zone {next} went backwards (to zone {})",
                last.index
            )));
        }
        next = last.index + 1;
        for z in &batch {
            map.push(z);
        }
    }
    Ok(map)
}

/// Zones asked for per report call while building a map.
const REPORT_BATCH: u32 = 4096;

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(nr: u32) -> ZoneGeometry {
        ZoneGeometry {
            device_size: nr as u64 * 4096,
            zone_size: 4096,
            zone_capacity: 4096,
            nr_zones: nr,
            conventional_zones: 1,
            max_open_zones: 0,
            max_active_zones: 0,
            max_append_bytes: 0,
        }
    }

    fn zone(g: &ZoneGeometry, i: u32, cond: ZoneCond, written: u64) -> ZoneDescriptor {
        ZoneDescriptor {
            index: i,
            start: g.zone_start(i),
            len: 4096,
            cap: 4096,
            wp: g.zone_start(i) + written,
            zone_type: g.zone_type(i),
            cond,
        }
    }

    #[test]
    fn aggregates_above_max_cells() {
        let g = geo(1 << 20);
        let mut m = ZoneMap::new(g, "big");
        assert_eq!(m.zones_per_cell(), 64);
        assert_eq!(m.cells(), 16_384);
        for i in 0..128 {
            let c = if i == 0 {
                ZoneCond::NotWp
            } else {
                ZoneCond::Full
            };
            m.push(&zone(&g, i, c, 4096));
        }
        m.push(&zone(&g, 130, ZoneCond::Offline, 0));
        assert_eq!(m.cells[0].kind(), Kind::Cond(ZoneCond::Full));
        // One offline zone among empties still colours its cell.
        assert_eq!(m.cells[2].kind(), Kind::Cond(ZoneCond::Offline));
        assert_eq!(m.totals()[0], 1);
        assert_eq!(m.totals()[5], 127);
    }

    #[test]
    fn fill_follows_the_write_pointer() {
        let g = geo(4);
        let mut m = ZoneMap::new(g, "small");
        m.push(&zone(&g, 0, ZoneCond::NotWp, 0));
        m.push(&zone(&g, 1, ZoneCond::Closed, 1024));
        m.push(&zone(&g, 2, ZoneCond::Empty, 0));
        m.push(&zone(&g, 3, ZoneCond::Empty, 0));
        assert!((m.cells[1].mean_fill() - 0.25).abs() < 1e-9);
        assert_eq!(m.cells[0].mean_fill(), 1.0);
        let text = m.to_text(80);
        assert!(text.contains("\n0 cC..\n"), "{text}");
    }
}
