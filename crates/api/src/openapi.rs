//! The OpenAPI 3.1 document of the API (`/api/v1/openapi.json`): the paths listed here, their
//! bodies and answers generated from the very types the handlers serialize (schemars), so the
//! document cannot drift from what is sent.
use lifeboat_orchestrator::records::AuditEntry;
use lifeboat_orchestrator::status::{AppStatus, OpSummary, PlanStatus};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use crate::http::{Accepted, ActionBody, ErrorBody, SwitchBody};

struct Gen(SchemaGenerator);

impl Gen {
    fn of<T: JsonSchema>(&mut self) -> Value {
        self.0.subschema_for::<T>().to_value()
    }
}

fn answer(schema: Value, what: &str) -> Value {
    json!({"description": what, "content": {"application/json": {"schema": schema}}})
}

/// The document.
pub fn document() -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| s.definitions_path = "/components/schemas".into());
    let mut g = Gen(SchemaGenerator::new(settings));
    let err = g.of::<ErrorBody>();
    let errors = |extra: &[(&str, &str)]| {
        let mut m = Map::new();
        m.insert("401".into(), answer(err.clone(), "no token, or an unknown one"));
        for (code, what) in extra {
            m.insert((*code).into(), answer(err.clone(), what));
        }
        m
    };
    let get_op = |summary: &str, schema: Value, params: &[&str], extra: &[(&str, &str)]| {
        let mut responses = errors(extra);
        responses.insert("200".into(), answer(schema, "the answer"));
        json!({"get": {"summary": summary, "parameters": params_of(params), "responses": responses}})
    };
    let status = g.of::<PlanStatus>();
    let app = g.of::<AppStatus>();
    let ops = g.of::<Vec<OpSummary>>();
    let audit = g.of::<Vec<AuditEntry>>();
    let accepted = g.of::<Accepted>();
    let action = g.of::<ActionBody>();
    let switch = g.of::<SwitchBody>();
    let post_op = |summary: &str, body: Value| {
        let mut responses = errors(&[
            ("400", "a body that does not parse or fit, or a missing confirmation"),
            ("403", "a viewer token"),
            ("404", "no such plan or app"),
            (
                "409",
                "this instance does not lead, or an action on the app is under way",
            ),
            ("503", "the audit log cannot be written: nothing started"),
        ]);
        responses.insert(
            "202".into(),
            answer(accepted.clone(), "started (follow the app's status)"),
        );
        json!({"post": {
            "summary": summary,
            "parameters": params_of(&["plan", "app"]),
            "requestBody": {"required": false, "content": {"application/json": {"schema": body}}},
            "responses": responses,
        }})
    };
    let not_found = [("404", "no such plan or app"), ("503", "the status is not read yet")];
    let paths = json!({
        "/api/v1/status": get_op("Where every app of the plan stands", status.clone(), &[], &[("503", "the status is not read yet")]),
        "/api/v1/plans/{plan}": get_op("The plan's status", status, &["plan"], &not_found),
        "/api/v1/plans/{plan}/apps": get_op("Every app's status", json!({"type": "array", "items": app.clone()}), &["plan"], &not_found),
        "/api/v1/plans/{plan}/apps/{app}": get_op("One app's status", app, &["plan", "app"], &not_found),
        "/api/v1/plans/{plan}/checks": get_op("The last full check and readiness levels", json!({"type": "object"}), &["plan"], &not_found),
        "/api/v1/plans/{plan}/apps/{app}/snapshots": get_op("The app's recovery points, newest first", json!({"type": "array"}), &["plan", "app"], &not_found),
        "/api/v1/plans/{plan}/apps/{app}/operations": get_op("The app's recent operations", ops, &["plan", "app"], &not_found),
        "/api/v1/plans/{plan}/apps/{app}/operations/{id}": get_op("One operation with its journal", json!({"type": "object"}), &["plan", "app", "id"], &not_found),
        "/api/v1/plans/{plan}/apps/{app}/drills": get_op("The app's drills, newest first", json!({"type": "array"}), &["plan", "app"], &not_found),
        "/api/v1/plans/{plan}/apps/{app}/drills/{file}": get_op("A drill's report: ID.md, ID.json or ID.html", json!({}), &["plan", "app", "file"], &not_found),
        "/api/v1/audit": get_op("The audit log of the API's actions, newest first", audit, &[], &[]),
        "/api/v1/plans/{plan}/apps/{app}/backup": post_op("Back the app up now", action.clone()),
        "/api/v1/plans/{plan}/apps/{app}/drill": post_op("Drill the app now", action),
        "/api/v1/plans/{plan}/apps/{app}/failover": post_op("Fail the app over (confirm: the app's name)", switch.clone()),
        "/api/v1/plans/{plan}/apps/{app}/failback": post_op("Fail the app back (confirm: the app's name)", switch),
    });
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Lifeboat serve API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": Value::Object(g.0.take_definitions(true).into_iter().collect()),
        },
    })
}

fn params_of(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in the document points at a schema it holds.
    #[test]
    fn every_reference_resolves_and_the_status_schema_names_its_facts() {
        let d = document();
        let schemas = d["components"]["schemas"].as_object().unwrap();
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&d, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}"));
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
        let app = &schemas["AppStatus"]["properties"];
        for f in ["rpo", "traffic", "drill", "watch", "operation", "readiness", "health"] {
            assert!(app.get(f).is_some(), "AppStatus has no {f}");
        }
        assert!(d["paths"]["/api/v1/plans/{plan}/apps/{app}/failover"]["post"]["responses"]["400"].is_object());
    }
}
