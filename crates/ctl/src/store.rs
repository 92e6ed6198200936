//! `pr-ctl store …`: the persistent-reservation state of emulated logical units, administered
//! in the store itself (no daemon): list, show, power-cycle, clear, export, import. The store
//! is a SQLite database (`--store PATH`) or whatever a pr-helper or pr-target configuration
//! file selects (`--config FILE`: a SQLite file or an etcd cluster, pr-store-config).

use std::collections::BTreeMap;
use std::error::Error as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pr_engine::LogicalUnit;
use pr_store::{LuId, SqliteOptions, SqliteStore, Store, StoreError};
use pr_store_config::{StoreSelection, StoreSetting};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cli::{StoreArgs, StoreCommand, DEFAULT_STORE};
use crate::render::{exit, plural, render_state, state_summary, summary_json};
use crate::{Failure, Outcome};

/// The `format` of an export file.
pub const EXPORT_FORMAT: &str = "pr-helper-store-export";
/// The `version` of the export format this pr-ctl writes and reads.
pub const EXPORT_VERSION: u64 = 1;

/// An export file: the state of logical units by identifier, each as the engine serializes it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// Always [`EXPORT_VERSION`].
    pub version: u64,
    /// The states, by logical unit (each at most once).
    #[serde(deserialize_with = "unique_logical_units")]
    pub logical_units: BTreeMap<LuId, LogicalUnit>,
}

/// `logical_units`, refusing a logical unit named twice (JSON objects may repeat a key, and
/// which state would win is not the reader's guess to make).
fn unique_logical_units<'de, D>(d: D) -> Result<BTreeMap<LuId, LogicalUnit>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<LuId, LogicalUnit>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of logical-unit states by identifier")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut all = BTreeMap::new();
            while let Some((lu, state)) = m.next_entry::<LuId, LogicalUnit>()? {
                if all.contains_key(&lu) {
                    return Err(serde::de::Error::custom(format!(
                        "logical unit {lu} appears twice"
                    )));
                }
                all.insert(lu, state);
            }
            Ok(all)
        }
    }
    d.deserialize_map(Unique)
}

/// Reads an export file's text: JSON syntax errors and wrong fields say where (line and
/// column); a wrong `format` or `version` says what was expected.
pub fn parse_export(text: &str) -> Result<Export, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let shown = |f: Option<&Value>| f.map_or_else(|| "missing".to_string(), Value::to_string);
    let format = v.get("format");
    if format != Some(&json!(EXPORT_FORMAT)) {
        return Err(format!(
            "not a pr-helper store export: \"format\" is {}, expected \"{EXPORT_FORMAT}\"",
            shown(format)
        ));
    }
    let version = v.get("version");
    if version != Some(&json!(EXPORT_VERSION)) {
        return Err(format!(
            "export \"version\" {} is not supported; this pr-ctl reads version {EXPORT_VERSION}",
            shown(version)
        ));
    }
    serde_json::from_str(text).map_err(|e| format!("not a valid store export: {e}"))
}

/// Runs one `pr-ctl store` command.
pub fn run(args: &StoreArgs, json: bool) -> Result<Outcome, Failure> {
    let place = place(args)?;
    // Reads open a SQLite database read-only: a file the user may read but not write can be
    // listed, shown and exported, and nothing is written to it.
    match &args.command {
        StoreCommand::List => list(&open_existing(&place, Access::Read)?, json),
        StoreCommand::Show { lu } => {
            let state = load_existing(&open_existing(&place, Access::Read)?, lu)?;
            let r = render_state(lu, &state);
            Ok(print(json, r.human, r.json))
        }
        StoreCommand::PowerCycle { lu } => {
            power_cycle(&open_existing(&place, Access::Write)?, lu, json)
        }
        StoreCommand::Clear { lu } => clear(&open_existing(&place, Access::Write)?, lu, json),
        StoreCommand::Export { lus, output } => export(
            &open_existing(&place, Access::Read)?,
            lus,
            output.as_deref(),
            json,
        ),
        StoreCommand::Import { file, dry_run } => import(&place, file, *dry_run, json),
    }
}

/// Where the store is: a SQLite file, or another store a configuration file selects.
#[derive(Debug)]
enum Place {
    Sqlite(PathBuf),
    Selected(StoreSelection),
}

/// The store the options name: `--config FILE`, else `--store PATH`, else `PR_HELPER_STORE`,
/// else the default database.
fn place(args: &StoreArgs) -> Result<Place, Failure> {
    let Some(config) = &args.config else {
        let path = args
            .path
            .clone()
            .or_else(|| std::env::var_os("PR_HELPER_STORE").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
        return Ok(Place::Sqlite(path));
    };
    if let Some(p) = &args.path {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--store {} and --config {} both name a store; give one",
                p.display(),
                config.display()
            ),
        ));
    }
    let name = config.display();
    let text =
        std::fs::read_to_string(config).map_err(|e| failure(format!("cannot read {name}: {e}")))?;
    let value: toml::Table = toml::from_str(&text)
        .map_err(|e| failure(format!("{name}: {}", e.to_string().trim_end())))?;
    // pr-helper's file has it in [emulate], pr-target's at the top.
    let (setting, key) = match value.get("emulate").and_then(|e| e.get("store")) {
        Some(s) => (Some(s), "[emulate] store"),
        None => (value.get("store"), "store"),
    };
    let Some(setting) = setting else {
        return Err(failure(format!(
            "{name} selects no store: expected store = … in its [emulate] table (pr-helper's \
             --config) or at the top (pr-target's --config)"
        )));
    };
    let setting = StoreSetting::deserialize(setting.clone())
        .map_err(|e| failure(format!("{name}: {key}: {e}")))?;
    let selection = setting
        .resolve("store", DEFAULT_STORE)
        .map_err(|e| failure(format!("{name}: {e}")))?;
    Ok(match selection {
        StoreSelection::Sqlite { path } => Place::Sqlite(path),
        other => Place::Selected(other),
    })
}

/// An open store and how messages name it.
struct Opened {
    store: Arc<dyn Store>,
    /// "the store database PATH", "the store etcd [...] prefix P".
    what: String,
    /// "PATH", "etcd [...] prefix P".
    short: String,
}

impl Opened {
    fn sqlite(store: SqliteStore) -> Opened {
        let short = store.path().display().to_string();
        Opened {
            what: format!("the store database {short}"),
            short,
            store: Arc::new(store),
        }
    }

    fn selected(selection: &StoreSelection) -> Result<Opened, Failure> {
        let store = selection
            .open(SqliteOptions::default())
            .map_err(store_failure)?
            .store();
        Ok(Opened {
            store,
            what: format!("the store {selection}"),
            short: selection.to_string(),
        })
    }
}

fn print(json: bool, human: String, value: Value) -> Outcome {
    Outcome {
        stdout: if json { format!("{value}\n") } else { human },
        ..Outcome::default()
    }
}

fn failure(message: String) -> Failure {
    Failure::new(exit::FAILURE, message)
}

/// A store error with its causes (the SQLite error behind "cannot open…").
fn store_failure(e: StoreError) -> Failure {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    failure(message)
}

/// How a command uses the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// Opens the store, which must exist (a SQLite database: only import creates one).
fn open_existing(place: &Place, access: Access) -> Result<Opened, Failure> {
    let path = match place {
        Place::Sqlite(p) => p,
        Place::Selected(s) => return Opened::selected(s),
    };
    match path.try_exists() {
        Ok(true) if access == Access::Read => SqliteStore::open_read_only(path)
            .map(Opened::sqlite)
            .map_err(store_failure),
        Ok(true) => SqliteStore::open(path)
            .map(Opened::sqlite)
            .map_err(store_failure),
        Ok(false) => Err(failure(format!(
            "the store database {} does not exist; name another with --store or \
             PR_HELPER_STORE (only pr-ctl store import creates one)",
            path.display()
        ))),
        Err(e) => Err(failure(format!(
            "cannot reach the store database {}: {e}",
            path.display()
        ))),
    }
}

fn load_existing(store: &Opened, lu: &LuId) -> Result<LogicalUnit, Failure> {
    store.store.load(lu).map_err(store_failure)?.ok_or_else(|| {
        failure(format!(
            "{} has no logical unit {lu} (pr-ctl store list shows those it has)",
            store.what
        ))
    })
}

/// Every logical unit with its state (skipping one cleared since it was listed).
fn load_all(store: &dyn Store) -> Result<Vec<(LuId, LogicalUnit)>, Failure> {
    let mut all = Vec::new();
    for lu in store.list().map_err(store_failure)? {
        if let Some(state) = store.load(&lu).map_err(store_failure)? {
            all.push((lu, state));
        }
    }
    Ok(all)
}

fn list(store: &Opened, json: bool) -> Result<Outcome, Failure> {
    let all = load_all(&*store.store)?;
    let width = all.iter().map(|(lu, _)| lu.as_str().len()).max();
    let human = match width {
        None => format!("no logical units in {}\n", store.short),
        Some(w) => all
            .iter()
            .map(|(lu, s)| format!("{:<w$}  {}\n", lu.as_str(), state_summary(s)))
            .collect(),
    };
    let entries: Vec<Value> = all
        .iter()
        .map(|(lu, s)| {
            let mut e = summary_json(s);
            e["lu"] = json!(lu);
            e
        })
        .collect();
    let value = json!({"store": store.short, "logical_units": entries});
    Ok(print(json, human, value))
}

/// What went away between `before` and `after`, in words ("2 registrations, the reservation").
fn dropped(before: &LogicalUnit, after: &LogicalUnit) -> String {
    let uas =
        |s: &LogicalUnit| -> usize { s.unit_attentions.iter().map(|q| q.conditions.len()).sum() };
    let mut gone = Vec::new();
    let regs = before
        .registrants
        .len()
        .saturating_sub(after.registrants.len());
    if regs > 0 {
        gone.push(plural(regs, "registration"));
    }
    if before.reservation.is_some() && after.reservation.is_none() {
        gone.push("the reservation".to_string());
    }
    let n = uas(before).saturating_sub(uas(after));
    if n > 0 {
        gone.push(plural(n, "pending unit attention"));
    }
    if gone.is_empty() {
        "nothing".to_string()
    } else {
        gone.join(", ")
    }
}

fn change_json(lu: &LuId, operation: &str, before: &LogicalUnit, after: &LogicalUnit) -> Value {
    json!({
        "lu": lu,
        "operation": operation,
        "before": summary_json(before),
        "after": summary_json(after),
    })
}

fn power_cycle(store: &Opened, lu: &LuId, json: bool) -> Result<Outcome, Failure> {
    let before = load_existing(store, lu)?;
    store.store.power_loss(lu).map_err(store_failure)?;
    let after = store
        .store
        .load(lu)
        .map_err(store_failure)?
        .unwrap_or_default();
    let human = format!(
        "{lu}: power cycled with APTPL {} (PTPL_A={}): dropped {}; PR generation {:#x} -> {:#x}\n",
        if before.ptpl_active { "on" } else { "off" },
        u8::from(before.ptpl_active),
        dropped(&before, &after),
        before.generation.0,
        after.generation.0,
    );
    Ok(print(
        json,
        human,
        change_json(lu, "power-cycle", &before, &after),
    ))
}

fn clear(store: &Opened, lu: &LuId, json: bool) -> Result<Outcome, Failure> {
    let before = load_existing(store, lu)?;
    store.store.clear(lu).map_err(store_failure)?;
    let after = LogicalUnit::default();
    let human = format!(
        "{lu}: cleared: removed {}; PR generation was {:#x}\n",
        dropped(&before, &after),
        before.generation.0,
    );
    Ok(print(
        json,
        human,
        change_json(lu, "clear", &before, &after),
    ))
}

fn export(
    store: &Opened,
    lus: &[LuId],
    output: Option<&Path>,
    json: bool,
) -> Result<Outcome, Failure> {
    let logical_units: BTreeMap<LuId, LogicalUnit> = if lus.is_empty() {
        load_all(&*store.store)?.into_iter().collect()
    } else {
        lus.iter()
            .map(|lu| Ok((lu.clone(), load_existing(store, lu)?)))
            .collect::<Result<_, Failure>>()?
    };
    let names: Vec<&LuId> = logical_units.keys().collect();
    let names = json!(names);
    let n = logical_units.len();
    let doc = Export {
        format: EXPORT_FORMAT.to_string(),
        version: EXPORT_VERSION,
        logical_units,
    };
    let mut text = serde_json::to_string_pretty(&doc).expect("a state always serializes");
    text.push('\n');
    let Some(file) = output else {
        return Ok(Outcome {
            stdout: text,
            ..Outcome::default()
        });
    };
    std::fs::write(file, text).map_err(|e| {
        failure(format!(
            "cannot write the export to {}: {e}",
            file.display()
        ))
    })?;
    let human = format!(
        "exported {} to {}\n",
        plural(n, "logical unit"),
        file.display()
    );
    let value = json!({"output": file.display().to_string(), "logical_units": names});
    Ok(print(json, human, value))
}

fn read_input(file: &Path) -> Result<String, Failure> {
    let mut text = String::new();
    let read = if file == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(drop)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text).map(drop))
    };
    read.map_err(|e| failure(format!("cannot read {}: {e}", file.display())))?;
    Ok(text)
}

fn import(place: &Place, file: &Path, dry_run: bool, json: bool) -> Result<Outcome, Failure> {
    let name = file.display();
    let doc = parse_export(&read_input(file)?).map_err(|e| failure(format!("{name}: {e}")))?;
    // Every state is checked before any is written: all or nothing.
    let broken: Vec<String> = doc
        .logical_units
        .iter()
        .filter_map(|(lu, s)| s.check_invariants().err().map(|why| format!("{lu}: {why}")))
        .collect();
    if !broken.is_empty() {
        return Err(failure(format!(
            "{name}: refused, nothing was written: the state of {} breaks the invariants of \
             a logical unit ({})",
            plural(broken.len(), "logical unit"),
            broken.join("; ")
        )));
    }
    // A dry run opens only a store that exists (and writes nothing to it).
    let (store, store_name): (Option<Arc<dyn Store>>, String) = match place {
        Place::Sqlite(path) => (
            if dry_run && !path.try_exists().unwrap_or(false) {
                None
            } else {
                Some(Arc::new(SqliteStore::open(path).map_err(store_failure)?))
            },
            path.display().to_string(),
        ),
        Place::Selected(s) => {
            let o = Opened::selected(s)?;
            (Some(o.store), o.short)
        }
    };
    let mut human = String::new();
    let mut entries = Vec::new();
    let mut replaced = Vec::new();
    for lu in doc.logical_units.keys() {
        replaced.push(match &store {
            Some(s) => s.load(lu).map_err(store_failure)?.is_some(),
            None => false,
        });
    }
    // Every logical unit in one transaction: all of them, or none.
    if let (Some(s), false) = (&store, dry_run) {
        let states: Vec<(LuId, LogicalUnit)> = doc
            .logical_units
            .iter()
            .map(|(lu, state)| (lu.clone(), state.clone()))
            .collect();
        s.import_all(&states).map_err(|e| {
            let mut f = store_failure(e);
            f.message.push_str("; nothing was imported");
            f
        })?;
    }
    for ((lu, state), replaced) in doc.logical_units.iter().zip(replaced) {
        let previous = replaced.then_some(());
        let verb = match (dry_run, previous.is_some()) {
            (false, true) => "imported, replacing the stored state",
            (false, false) => "imported as a new logical unit",
            (true, true) => "would replace the stored state",
            (true, false) => "would be imported as a new logical unit",
        };
        human.push_str(&format!("{lu}: {verb} ({})\n", state_summary(state)));
        entries.push(json!({
            "lu": lu,
            "replaced": previous.is_some(),
            "state": summary_json(state),
        }));
    }
    if doc.logical_units.is_empty() {
        human.push_str(&format!("{name}: no logical units to import\n"));
    }
    if dry_run {
        human.push_str("dry run: nothing was written\n");
    }
    let value = json!({
        "store": store_name,
        "dry_run": dry_run,
        "logical_units": entries,
    });
    Ok(print(json, human, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_header_is_checked_before_the_states() {
        let e =
            parse_export("{\"format\": \"x\", \"version\": 1, \"logical_units\": {}}").unwrap_err();
        assert_eq!(
            e,
            "not a pr-helper store export: \"format\" is \"x\", expected \"pr-helper-store-export\""
        );
        let e = parse_export("{\"format\": \"pr-helper-store-export\", \"logical_units\": {}}")
            .unwrap_err();
        assert!(e.contains("\"version\" missing is not supported"), "{e}");
        let e = parse_export("[1,").unwrap_err();
        assert!(
            e.starts_with("not valid JSON")
                && e.contains("EOF while parsing a value at line 1 column 3"),
            "{e}"
        );
    }

    #[test]
    fn export_refuses_unknown_fields_and_bad_identifiers() {
        let head = "{\"format\": \"pr-helper-store-export\", \"version\": 1, ";
        let e =
            parse_export(&format!("{head}\"logical_units\": {{}}, \"extra\": 0}}")).unwrap_err();
        assert!(e.contains("unknown field `extra`"), "{e}");
        let e = parse_export(&format!("{head}\"logical_units\": {{\" x\": {{}}}}}}")).unwrap_err();
        assert!(e.contains("begins or ends with white space"), "{e}");
        let lu = "{\"generation\": 0, \"registrants\": [], \"reservation\": null, \
                  \"ptpl_active\": false, \"unit_attentions\": []}";
        let e = parse_export(&format!(
            "{head}\"logical_units\": {{\"naa.1\": {lu}, \"naa.1\": {lu}}}}}"
        ))
        .unwrap_err();
        assert!(
            e.contains("logical unit naa.1 appears twice at line 1 column"),
            "{e}"
        );
        let ok = parse_export(&format!("{head}\"logical_units\": {{}}}}")).unwrap();
        assert!(ok.logical_units.is_empty());
    }
}
