//! Shared by the client verbs: sending a request, printing JSON or a table.

use std::path::Path;

use comfy_table::{ContentArrangement, Table, presets::NOTHING};

pub use crate::control::ask;
use crate::{
    control::{Persist, Request},
    state::Summary,
};

pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A table in the style of `ipvsadm -Ln`: no borders, aligned columns.
#[must_use]
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    table
}

pub fn persist(runtime_only: bool) -> Persist {
    if runtime_only { Persist::RuntimeOnly } else { Persist::File }
}

/// Sends a change and reports it: `done` on success, or the summary as JSON.
pub fn change(run_dir: &Path, request: &Request, json: bool, done: &str) -> anyhow::Result<()> {
    let summary: Summary = ask(run_dir, request)?;
    if json {
        return print_json(&summary);
    }
    let saved = match request {
        Request::ServiceAdd { persist, .. }
        | Request::ServiceRemove { persist, .. }
        | Request::BackendAdd { persist, .. }
        | Request::BackendRemove { persist, .. }
        | Request::BackendSetWeight { persist, .. }
        | Request::Apply { persist, .. } => *persist,
        Request::ServiceList | Request::Stats | Request::Flows { .. } => Persist::File,
    };
    let saved = match saved {
        Persist::File => "saved to the service file",
        Persist::RuntimeOnly => "runtime only: the service file is unchanged",
    };
    println!("{done} ({saved})");
    Ok(())
}

/// Numbers with SI suffixes: 1234567 -> "1.2M".
#[must_use]
pub fn si(value: f64) -> String {
    let (value, suffix) = match value {
        v if v >= 1e12 => (v / 1e12, "T"),
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e4 => (v / 1e3, "K"),
        v => return if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") },
    };
    format!("{value:.1}{suffix}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn si_suffixes() {
        assert_eq!(super::si(0.0), "0");
        assert_eq!(super::si(9999.0), "9999");
        assert_eq!(super::si(2.5), "2.5");
        assert_eq!(super::si(12_345.0), "12.3K");
        assert_eq!(super::si(1_234_567.0), "1.2M");
    }
}
