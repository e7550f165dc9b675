//! Label selectors, checked and matched as the API server would.
use super::*;

/// Checks what the API server would: In/NotIn need values, Exists/DoesNotExist must have
/// none, no other operators, no empty keys.
pub(super) fn validate_selector(sel: &LabelSelector) -> Result<(), String> {
    for (i, r) in sel.match_expressions.iter().flatten().enumerate() {
        let has_values = r.values.as_ref().is_some_and(|v| !v.is_empty());
        if r.key.is_empty() {
            return Err(format!("matchExpressions[{i}].key is empty"));
        }
        match r.operator.as_str() {
            "In" | "NotIn" if !has_values => {
                return Err(format!(
                    "matchExpressions[{i}]: operator {} needs values",
                    r.operator
                ))
            }
            "Exists" | "DoesNotExist" if has_values => {
                return Err(format!(
                    "matchExpressions[{i}]: operator {} takes no values",
                    r.operator
                ))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => return Err(format!("matchExpressions[{i}]: unknown operator {other:?}")),
        }
    }
    Ok(())
}

/// Kubernetes semantics: all requirements must hold; an empty selector matches everything;
/// NotIn holds when the key is absent. Call only on a validated selector.
pub(super) fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && sel.match_expressions.iter().flatten().all(|r| {
            let value = labels.get(&r.key);
            let in_values = || value.is_some_and(|v| r.values.iter().flatten().any(|x| x == v));
            match r.operator.as_str() {
                "In" => in_values(),
                "NotIn" => !in_values(),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}
