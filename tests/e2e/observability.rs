//! The chart's monitoring parts hold up: the Grafana dashboard JSON has what Grafana needs,
//! and every PromQL expression of the dashboard and of the PrometheusRule (rendered by
//! Helm in `helm.rs`) parses and selects only series the operator registers. No cluster.
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value;

pub(crate) fn dashboard_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/kube-scim/dashboards/kube-scim.json")
}

/// Every series name a query may select: `_total` of counters, the histogram series, gauges.
pub(crate) fn registered_series() -> BTreeSet<String> {
    kube_scim::telemetry::Metrics::new()
        .exported()
        .iter()
        .flat_map(|e| e.series())
        .collect()
}

struct Selected(BTreeSet<String>, Vec<String>);

impl ExprVisitor for Selected {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let vs = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        match &vs.name {
            Some(name) => {
                self.0.insert(name.clone());
            }
            None => self.1.push(format!("{vs}")),
        }
        Ok(true)
    }
}

/// The metric names an expression selects, or why it is unusable (does not parse, or
/// selects without a metric name).
pub(crate) fn selected_metrics(expr: &str) -> Result<BTreeSet<String>, String> {
    let ast = parser::parse(expr).map_err(|e| format!("does not parse: {e}"))?;
    let mut v = Selected(BTreeSet::new(), Vec::new());
    walk_expr(&mut v, &ast)?;
    if !v.1.is_empty() {
        return Err(format!("selectors without a metric name: {:?}", v.1));
    }
    Ok(v.0)
}

/// Problems of one expression: parse errors, and names the operator does not export.
pub(crate) fn expression_problems(
    expr: &str,
    registered: &BTreeSet<String>,
    what: &str,
) -> Vec<String> {
    match selected_metrics(expr) {
        Err(e) => vec![format!("{what}: {e}: {expr}")],
        Ok(names) if names.is_empty() => vec![format!("{what}: selects no metric: {expr}")],
        Ok(names) => names
            .iter()
            .filter(|n| !registered.contains(*n))
            .map(|n| format!("{what}: {n} is not a registered series: {expr}"))
            .collect(),
    }
}

/// Grafana's variables in an expression, replaced by values PromQL accepts.
fn substitute(expr: &str) -> String {
    let mut out = expr.to_string();
    for (var, value) in [
        ("${__rate_interval}", "5m"),
        ("$__rate_interval", "5m"),
        ("${__interval}", "1m"),
        ("$__interval", "1m"),
        ("${__range}", "6h"),
        ("$__range", "6h"),
        ("${namespace}", "kube-scim"),
        ("$namespace", "kube-scim"),
    ] {
        out = out.replace(var, value);
    }
    out
}

/// Every panel, rows' nested panels included.
fn all_panels(panels: &[Value]) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in panels {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(all_panels(inner));
        }
    }
    out
}

/// Everything wrong with a dashboard JSON; empty when Grafana can load it and every
/// query names only registered metrics.
pub(crate) fn dashboard_problems(text: &str) -> Vec<String> {
    let registered = registered_series();
    let d: Value = match serde_json::from_str(text) {
        Ok(d) => d,
        Err(e) => return vec![format!("not JSON: {e}")],
    };
    let mut problems = Vec::new();
    for field in ["title", "uid"] {
        if d[field].as_str().is_none_or(str::is_empty) {
            problems.push(format!("no {field}"));
        }
    }
    // Grafana refuses uids over 40 characters.
    if d["uid"].as_str().is_some_and(|u| u.len() > 40) {
        problems.push("uid longer than 40 characters".into());
    }
    if d["schemaVersion"].as_u64().is_none() {
        problems.push("no numeric schemaVersion".into());
    }
    let Some(panels) = d["panels"].as_array().filter(|p| !p.is_empty()) else {
        problems.push("no panels".into());
        return problems;
    };
    let mut ids = HashSet::new();
    let mut queries = 0;
    for p in all_panels(panels) {
        let title = p["title"].as_str().unwrap_or("?");
        match p["id"].as_u64() {
            Some(id) if !ids.insert(id) => problems.push(format!("panel id {id} repeats")),
            Some(_) => {}
            None => problems.push(format!("panel {title:?} has no numeric id")),
        }
        if p["type"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("panel {title:?} has no type"));
        }
        for k in ["h", "w", "x", "y"] {
            if p["gridPos"][k].as_u64().is_none() {
                problems.push(format!("panel {title:?} has no gridPos.{k}"));
            }
        }
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?} has no query"));
        }
        let mut ref_ids = HashSet::new();
        for t in &targets {
            if !t["refId"]
                .as_str()
                .is_some_and(|r| ref_ids.insert(r.to_string()))
            {
                problems.push(format!("panel {title:?}: missing or repeated refId"));
            }
            let Some(expr) = t["expr"].as_str() else {
                problems.push(format!("panel {title:?}: a target without expr"));
                continue;
            };
            queries += 1;
            let expr = substitute(expr);
            if expr.contains('$') {
                problems.push(format!("panel {title:?}: unknown variable in {expr}"));
                continue;
            }
            problems.extend(expression_problems(
                &expr,
                &registered,
                &format!("panel {title:?}"),
            ));
        }
    }
    if queries == 0 {
        problems.push("no queries".into());
    }
    // Query variables: `label_values(METRIC, label)` must name a registered metric.
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let q = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap_or_default();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .map(|(m, _)| m.trim());
        match inner {
            Some(metric) => problems.extend(expression_problems(
                metric,
                &registered,
                &format!("variable {}", var["name"]),
            )),
            None => problems.push(format!("variable {}: unexpected query {q:?}", var["name"])),
        }
    }
    problems
}

/// Everything wrong with a rendered PrometheusRule: the expected alerts, each with `for`,
/// a severity and a summary, every expression scoped to `namespace`, parsing, and naming
/// only registered metrics.
pub(crate) fn prometheus_rule_problems(
    rule: &Value,
    namespace: &str,
    expect_alerts: &[&str],
) -> Vec<String> {
    let registered = registered_series();
    let mut problems = Vec::new();
    let mut alerts = Vec::new();
    let scope = format!("namespace=\"{namespace}\"");
    for group in rule["spec"]["groups"].as_array().into_iter().flatten() {
        for r in group["rules"].as_array().into_iter().flatten() {
            let name = r["alert"].as_str().unwrap_or("?").to_string();
            let expr = r["expr"].as_str().unwrap_or_default();
            problems.extend(expression_problems(expr, &registered, &name));
            for selector in selected_metrics(expr).unwrap_or_default() {
                // Every selector of that metric carries the namespace matcher.
                let unscoped = expr
                    .match_indices(&selector)
                    .filter(|(i, _)| !expr[i + selector.len()..].starts_with(&format!("{{{scope}")))
                    .count();
                if unscoped > 0 {
                    problems.push(format!("{name}: {selector} not scoped to {scope}: {expr}"));
                }
            }
            for (field, v) in [
                ("for", &r["for"]),
                ("labels.severity", &r["labels"]["severity"]),
                ("annotations.summary", &r["annotations"]["summary"]),
                ("annotations.description", &r["annotations"]["description"]),
            ] {
                if v.as_str().is_none_or(str::is_empty) {
                    problems.push(format!("{name}: no {field}"));
                }
            }
            alerts.push(name);
        }
    }
    let mut want: Vec<String> = expect_alerts.iter().map(|s| s.to_string()).collect();
    want.sort();
    alerts.sort();
    if alerts != want {
        problems.push(format!("alerts {alerts:?}, want {want:?}"));
    }
    problems
}

#[test]
fn grafana_dashboard_loads_and_queries_only_registered_metrics() {
    let text = std::fs::read_to_string(dashboard_path()).expect("dashboard JSON");
    assert_eq!(dashboard_problems(&text), Vec::<String>::new());

    // The checks can fail: a renamed metric, a broken expression, a repeated id.
    let broken = text
        .replacen("kube_scim_leader{", "kube_scim_leadr{", 1)
        .replacen("sum by (status) (rate(", "sum by (status) (rate((", 1)
        .replacen("\"id\": 2,", "\"id\": 1,", 1);
    let problems = dashboard_problems(&broken);
    for want in [
        "kube_scim_leadr is not a registered series",
        "does not parse",
        "panel id 1 repeats",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{want:?} in {problems:?}"
        );
    }
}

#[test]
fn promql_checks_know_counters_histograms_and_gauges() {
    let registered = registered_series();
    for ok in [
        "sum(rate(kube_scim_scim_requests_total[5m]))",
        "histogram_quantile(0.99, sum by (le) (rate(kube_scim_revocation_duration_seconds_bucket[5m])))",
        "max(kube_scim_held_removals and on(instance) (kube_scim_leader == 1)) > 0",
    ] {
        assert_eq!(
            expression_problems(ok, &registered, "t"),
            Vec::<String>::new()
        );
    }
    for bad in [
        // A counter without its `_total`, a histogram without its suffix, an unknown name.
        "rate(kube_scim_scim_requests[5m])",
        "rate(kube_scim_reconcile_duration_seconds[5m])",
        "up",
        "sum(rate(kube_scim_reconciles_total[5m]",
        "{__name__=~\"kube_scim_.*\"}",
    ] {
        assert!(
            !expression_problems(bad, &registered, "t").is_empty(),
            "{bad} should be refused"
        );
    }
}

#[test]
fn prometheus_rule_checks_can_fail() {
    let rule = serde_json::json!({"spec": {"groups": [{"name": "kube-scim", "rules": [
        {"alert": "Unscoped", "expr": "max(kube_scim_leader) < 1", "for": "5m",
         "labels": {"severity": "critical"},
         "annotations": {"summary": "s", "description": "d"}},
        {"alert": "Unknown", "expr": "kube_scim_nothing{namespace=\"ks\"} > 0",
         "labels": {"severity": "warning"}, "annotations": {"summary": "s"}},
    ]}]}});
    let problems = prometheus_rule_problems(&rule, "ks", &["Unscoped", "Unknown", "Missing"]);
    for want in [
        "Unscoped: kube_scim_leader not scoped",
        "Unknown: kube_scim_nothing is not a registered series",
        "Unknown: no for",
        "Unknown: no annotations.description",
        "alerts [",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{want:?} in {problems:?}"
        );
    }
}
