//! The architecture invariants that a reading of the source can check (ARCHITECTURE.md):
//! SQL lives in the store and the queue, and the flow modules import each other
//! without a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace's root (this package's manifest directory).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).expect("a readable source file");
            (e.path().to_path_buf(), text)
        })
        .collect()
}

/// The places allowed to issue SQL: the store, the queue, and connecting, migrating,
/// locks and the clock in `src/db.rs`.
fn may_issue_sql(path: &Path) -> bool {
    let src = root().join("src");
    path.starts_with(src.join("store"))
        || path.starts_with(src.join("queue"))
        || path == src.join("db.rs")
}

/// The lines of `text` that issue SQL through sqlx.
fn sql_lines(text: &str) -> Vec<String> {
    let statement = regex::Regex::new(
        r"sqlx::(query|query_as|query_scalar|query_with|raw_sql)\b|\b(query_as|query_scalar)(::<[^>]*>)?\(",
    )
    .expect("a valid pattern");
    text.lines()
        .filter(|line| statement.is_match(line))
        .map(str::trim)
        .map(str::to_owned)
        .collect()
}

#[test]
fn only_the_store_and_the_queue_issue_sql() {
    let mut offenders = Vec::new();
    for dir in ["src", "api/src", "cli/src", "worker/src"] {
        for (path, text) in sources(&root().join(dir)) {
            if may_issue_sql(&path) {
                continue;
            }
            for line in sql_lines(&text) {
                offenders.push(format!("{}: {line}", path.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "SQL outside src/store, src/queue and src/db.rs:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_sql_check_finds_a_statement() {
    // The check above must be able to fail: each way of writing a statement is seen.
    for line in [
        r#"let n: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;"#,
        r#"sqlx::query("DELETE FROM runs").execute(&mut *conn).await?;"#,
        r#"let row = query_as::<_, (i64,)>("SELECT 1");"#,
        r#"sqlx::raw_sql("VACUUM").execute(&pool).await?;"#,
    ] {
        assert_eq!(sql_lines(line).len(), 1, "not seen: {line}");
    }
    assert!(sql_lines("let q = queue::claim(&mut conn).await?;").is_empty());
}

/// The modules of a run's data flow (submit -> phase -> agent -> validate ->
/// approval/advance -> report) and the operator actions that change runs.
const FLOW_MODULES: [&str; 10] = [
    "submit", "phase", "agent", "validate", "approval", "advance", "report", "retry", "cancel",
    "budget",
];

/// Which flow modules each flow module names (`crate::x`, or `super::x` from a module's
/// own file), unit tests left out.
fn flow_imports() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let src = root().join("src");
    let named = regex::Regex::new(r"\b(?:crate|super)::(\w+)").expect("a valid pattern");
    let mut imports = BTreeMap::new();
    for module in FLOW_MODULES {
        let mut files = sources(&src.join(module));
        let single = src.join(format!("{module}.rs"));
        if single.exists() {
            files.extend(sources(&single));
        }
        let mut names = BTreeSet::new();
        for (_, text) in files {
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for found in named.captures_iter(code) {
                if let Some(other) = FLOW_MODULES.iter().find(|m| **m == &found[1])
                    && *other != module
                {
                    names.insert(*other);
                }
            }
        }
        imports.insert(module, names);
    }
    imports
}

/// A cycle in `graph`, as the modules along it.
fn cycle(graph: &BTreeMap<&'static str, BTreeSet<&'static str>>) -> Option<Vec<&'static str>> {
    fn visit(
        module: &'static str,
        graph: &BTreeMap<&'static str, BTreeSet<&'static str>>,
        path: &mut Vec<&'static str>,
        done: &mut BTreeSet<&'static str>,
    ) -> Option<Vec<&'static str>> {
        if let Some(at) = path.iter().position(|m| *m == module) {
            let mut found = path[at..].to_vec();
            found.push(module);
            return Some(found);
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_flow_modules_import_each_other_without_a_cycle() {
    let imports = flow_imports();
    assert!(
        imports.values().any(|names| !names.is_empty()),
        "no imports found: the scan reads nothing"
    );
    if let Some(found) = cycle(&imports) {
        panic!("the flow modules import in a cycle: {}", found.join(" -> "));
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph = BTreeMap::from([
        ("submit", BTreeSet::from(["agent"])),
        ("agent", BTreeSet::from(["validate", "submit"])),
        ("validate", BTreeSet::new()),
    ]);
    assert_eq!(cycle(&graph), Some(vec!["agent", "submit", "agent"]));
    let acyclic = BTreeMap::from([
        ("submit", BTreeSet::from(["agent"])),
        ("agent", BTreeSet::from(["validate"])),
    ]);
    assert_eq!(cycle(&acyclic), None);
}
