//! The chart README's values table matches `values.schema.json` and `values.yaml`, and the
//! license is the same everywhere. No cluster.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

fn chart_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("charts/kube-scim")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every node of the schema by dotted path (the root is ""), and whether it is a leaf
/// (no `properties` of its own).
fn schema_nodes(schema: &Value) -> BTreeMap<String, bool> {
    fn walk(node: &Value, path: &str, out: &mut BTreeMap<String, bool>) {
        let props = node["properties"].as_object();
        out.insert(path.to_string(), props.is_none());
        for (k, v) in props.into_iter().flatten() {
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            walk(v, &child, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(schema, "", &mut out);
    out
}

/// The rows of the README's `## Values` table: each key of the first cell (code spans)
/// with the row's Default cell.
fn documented(readme: &str) -> Vec<(String, String)> {
    let section = readme
        .split("\n## Values\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a ## Values section");
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        for key in cells[0].split('`').skip(1).step_by(2) {
            rows.push((
                key.to_string(),
                cells.get(1).unwrap_or(&"").trim().to_string(),
            ));
        }
    }
    rows
}

fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('.').map(|(p, _)| p)
}

/// What is wrong with the table against the schema: a row for a value the schema doesn't
/// have; a schema value without a row; a row for a section (only leaves, or objects whose
/// properties are all leaves, such as `resources` or a label selector, have rows); a value
/// documented twice (itself and its parent).
fn table_problems(nodes: &BTreeMap<String, bool>, rows: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let keys: BTreeSet<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    if keys.len() != rows.len() {
        problems.push("a key has two rows".to_string());
    }
    for key in &keys {
        if !nodes.contains_key(*key) || key.is_empty() {
            problems.push(format!("{key}: documented, not in values.schema.json"));
            continue;
        }
        let section = nodes
            .iter()
            .any(|(p, leaf)| !leaf && parent(p) == Some(key));
        if section {
            problems.push(format!("{key}: a section; document its values one by one"));
        }
    }
    for (path, leaf) in nodes {
        if !leaf || path.is_empty() {
            continue;
        }
        let up = parent(path).filter(|p| keys.contains(p));
        match (keys.contains(path.as_str()), up) {
            (true, Some(p)) => problems.push(format!("{path}: documented with its parent {p}")),
            (false, None) => {
                problems.push(format!("{path}: in values.schema.json, not documented"))
            }
            _ => {}
        }
    }
    problems
}

/// A row's default, when it is one code span, is the value in values.yaml (as YAML).
fn default_problems(values: &Value, rows: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, cell) in rows {
        let Some(span) = cell
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .filter(|c| !c.contains('`'))
        else {
            continue;
        };
        let want: Value = match serde_yaml::from_str(span) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{key}: default {span} is not YAML: {e}"));
                continue;
            }
        };
        let got = key.split('.').fold(values, |v, k| &v[k]);
        if *got != want {
            problems.push(format!("{key}: README says {want}, values.yaml has {got}"));
        }
    }
    problems
}

#[test]
fn chart_readme_documents_every_value_of_the_schema_with_its_default() {
    let schema: Value = serde_json::from_str(&chart_file("values.schema.json")).expect("schema");
    let values: Value = serde_yaml::from_str(&chart_file("values.yaml")).expect("values.yaml");
    let readme = chart_file("README.md");
    let nodes = schema_nodes(&schema);
    let rows = documented(&readme);
    assert!(rows.len() > 100, "{} rows", rows.len());
    assert_eq!(table_problems(&nodes, &rows), Vec::<String>::new());
    assert_eq!(default_problems(&values, &rows), Vec::<String>::new());

    // The checks can fail: a value missing, one the schema lacks, a section as one row,
    // a wrong default.
    let mut broken: Vec<(String, String)> = rows
        .iter()
        .filter(|(k, _)| k != "scim.maxResults")
        .cloned()
        .collect();
    broken.push(("scim.maxResult".into(), "`1000`".into()));
    broken.push(("probes".into(), "see values.yaml".into()));
    for (k, d) in broken.iter_mut() {
        if k == "scim.replicas" {
            *d = "`3`".into();
        }
    }
    let problems = table_problems(&nodes, &broken);
    for want in [
        "scim.maxResults: in values.schema.json, not documented",
        "scim.maxResult: documented, not in values.schema.json",
        "probes: a section",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{want:?} in {problems:?}"
        );
    }
    assert!(default_problems(&values, &broken)
        .iter()
        .any(|p| p.starts_with("scim.replicas: README says 3")));
}

#[test]
fn the_license_is_apache_2_everywhere() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let license = std::fs::read_to_string(root.join("LICENSE")).expect("LICENSE");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
    assert!(
        license.contains("END OF TERMS AND CONDITIONS"),
        "the whole text"
    );
    assert_eq!(env!("CARGO_PKG_LICENSE"), "Apache-2.0");
    let chart: Value = serde_yaml::from_str(&chart_file("Chart.yaml")).expect("Chart.yaml");
    assert_eq!(chart["annotations"]["artifacthub.io/license"], "Apache-2.0");
}
