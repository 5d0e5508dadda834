//! The HTTP API and the dashboard: routes, the token check, JSON errors, the actions.
//!
//! Guarantees: without a valid token only `/healthz`, `/readyz`, `/metrics` and the dashboard's
//! static files answer (the page holds no data: it asks the API with the token typed into it);
//! a viewer token reads every GET, an operator token also POSTs. Every POST is written to the
//! audit log before it is answered (refused ones too), and its job's end once more. A POST that
//! cannot be carried out (unknown plan or app, a body that does not parse, a failover without
//! its confirmation, an instance that does not lead, an operation already under way) starts
//! nothing and gets a 4xx with `{"error": ..., "code": ...}`.
use std::sync::{Arc, Mutex};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lifeboat_orchestrator::journal::{Kind, Store};
use lifeboat_orchestrator::ops::{self, Options, Outcome};
use lifeboat_orchestrator::records::{self, AuditEntry};
use lifeboat_orchestrator::{drills, report};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::auth::{Caller, Role, Tokens};
use crate::board::Board;

/// What the handlers share.
pub struct Api {
    pub board: Arc<Board>,
    pub tokens: Tokens,
    /// Apps with an action started through this API and not ended yet.
    busy: Mutex<Vec<String>>,
}

impl Api {
    pub fn new(board: Arc<Board>, tokens: Tokens) -> Arc<Api> {
        Arc::new(Api {
            board,
            tokens,
            busy: Mutex::new(Vec::new()),
        })
    }
}

type Shared = State<Arc<Api>>;

/// An error answer: a status and `{"error", "code"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<Value>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    /// What is wrong, in one line.
    pub error: String,
    /// `unauthorized`, `forbidden`, `not_found`, `bad_request`, `confirmation_required`,
    /// `not_leader`, `busy`, `unavailable`.
    pub code: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message, "code": self.code});
        if let (Some(Value::Object(extra)), Value::Object(b)) = (self.extra, &mut body) {
            b.extend(extra);
        }
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lifeboat\""),
            );
        }
        r
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The token check of every route under `/api`.
async fn authenticate(State(api): Shared, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let refused = match bearer(req.headers()).map(|t| api.tokens.caller(t)) {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is needed (Authorization: Bearer TOKEN)",
        )),
        Some(None) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is not known",
        )),
        Some(Some(caller)) if req.method() != axum::http::Method::GET && caller.role < Role::Operator => {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "token {} is a viewer: starting actions needs an operator token",
                    caller.name
                ),
            ))
        }
        Some(Some(caller)) => Ok(caller),
    };
    match refused {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            Ok(next.run(req).await)
        }
        Err(e) => {
            // Read the body of a refused request (up to 64 KiB), so the connection stays usable
            // for the client's next request.
            let _ = axum::body::to_bytes(req.into_body(), 64 << 10).await;
            Err(e)
        }
    }
}

/// The routes.
pub fn router(api: Arc<Api>) -> Router {
    let v1 = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/status", get(status))
        .route("/audit", get(audit))
        .route("/plans", get(plans))
        .route("/plans/{plan}", get(plan))
        .route("/plans/{plan}/checks", get(checks))
        .route("/plans/{plan}/apps", get(apps))
        .route("/plans/{plan}/apps/{app}", get(app))
        .route("/plans/{plan}/apps/{app}/snapshots", get(snapshots))
        .route("/plans/{plan}/apps/{app}/operations", get(operations))
        .route("/plans/{plan}/apps/{app}/operations/{id}", get(operation))
        .route("/plans/{plan}/apps/{app}/drills", get(drill_list))
        .route("/plans/{plan}/apps/{app}/drills/{file}", get(drill_report))
        .route("/plans/{plan}/apps/{app}/backup", post(start_backup))
        .route("/plans/{plan}/apps/{app}/drill", post(start_drill))
        .route(
            "/plans/{plan}/apps/{app}/failover",
            post(|s, e, p, b| start_switch(Kind::Failover, s, e, p, b)),
        )
        .route(
            "/plans/{plan}/apps/{app}/failback",
            post(|s, e, p, b| start_switch(Kind::Failback, s, e, p, b)),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API path") })
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate));
    Router::new()
        .nest("/api/v1", v1)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { crate::dashboard::page("index.html") }))
        .route("/app/{app}", get(|| async { crate::dashboard::page("index.html") }))
        .route(
            "/static/{file}",
            get(|Path(f): Path<String>| async move { crate::dashboard::page(&f) }),
        )
        .with_state(api)
}

async fn readyz(State(api): Shared) -> Response {
    if api.board.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the status was not read from the repository yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(api): Shared) -> Response {
    let body = match api.board.view(OffsetDateTime::now_utc()) {
        Some(v) => v.metrics.clone(),
        // Before the first status: the counters (and no gauge).
        None => crate::metrics::render(None, &api.board.counters, api.board.leads()).into(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

fn current(api: &Api) -> Result<lifeboat_orchestrator::status::PlanStatus, ApiError> {
    api.board.status(OffsetDateTime::now_utc()).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the status is not read yet (see /readyz)",
        )
    })
}

fn plan_named<'a>(api: &'a Api, plan: &str) -> Result<&'a lifeboat_plan::Plan, ApiError> {
    let p = &api.board.server().plan;
    if p.metadata.name == plan {
        Ok(p)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this serve runs plan {}, not {plan:?}", p.metadata.name),
        ))
    }
}

fn app_named<'a>(api: &'a Api, plan: &str, app: &str) -> Result<&'a lifeboat_plan::App, ApiError> {
    let p = plan_named(api, plan)?;
    p.app(app).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "plan {plan} has no app {app:?} (apps: {})",
                p.apps
                    .iter()
                    .map(|a| a.name.value.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

async fn status(State(api): Shared) -> Result<Response, ApiError> {
    let v = api.board.view(OffsetDateTime::now_utc()).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the status is not read yet (see /readyz)",
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], v.json.clone()).into_response())
}

async fn plans(State(api): Shared) -> Json<Value> {
    let p = &api.board.server().plan;
    Json(json!([{"name": p.metadata.name, "apps": p.apps.len()}]))
}

async fn plan(state: Shared, Path(plan): Path<String>) -> Result<Response, ApiError> {
    plan_named(&state.0, &plan)?;
    status(state).await
}

async fn apps(State(api): Shared, Path(plan): Path<String>) -> Result<Response, ApiError> {
    plan_named(&api, &plan)?;
    Ok(Json(current(&api)?.apps).into_response())
}

async fn app(State(api): Shared, Path((plan, app)): Path<(String, String)>) -> Result<Response, ApiError> {
    app_named(&api, &plan, &app)?;
    let s = current(&api)?;
    let a = s.apps.into_iter().find(|a| a.app == app);
    Ok(Json(a).into_response())
}

/// Runs a read of the repository on the blocking pool.
async fn read<T: Send + 'static>(
    api: &Arc<Api>,
    f: impl FnOnce(&lifeboat_server::Server) -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    let server = api.board.server().clone();
    tokio::task::spawn_blocking(move || f(&server))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e))
}

async fn checks(State(api): Shared, Path(plan): Path<String>) -> Result<Response, ApiError> {
    plan_named(&api, &plan)?;
    Ok(Json(api.board.checks_json()).into_response())
}

async fn snapshots(State(api): Shared, Path((plan, app)): Path<(String, String)>) -> Result<Response, ApiError> {
    app_named(&api, &plan, &app)?;
    let list = read(&api, move |s| {
        ops::recovery_points(&s.repo, &plan, &app, true).map_err(|e| e.to_string())
    })
    .await?;
    let items: Vec<Value> = list
        .iter()
        .map(|rp| {
            json!({
                "snapshot": rp.snapshot.to_hex(),
                "time": rp.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "final_backup": rp.final_backup,
            })
        })
        .collect();
    Ok(Json(items).into_response())
}

fn store<'a>(s: &'a lifeboat_server::Server, app: &str) -> Store<'a> {
    Store {
        repo: &s.repo,
        plan: s.plan.metadata.name.clone(),
        app: app.to_string(),
    }
}

async fn operations(State(api): Shared, Path((plan, app)): Path<(String, String)>) -> Result<Response, ApiError> {
    app_named(&api, &plan, &app)?;
    let s = current(&api)?;
    let ops = s
        .apps
        .into_iter()
        .find(|a| a.app == app)
        .and_then(|a| a.operations.value)
        .map(|o| o.recent);
    match ops {
        Some(o) => Ok(Json(o).into_response()),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the operations of the app are unknown now (the repository does not answer)",
        )),
    }
}

async fn operation(
    State(api): Shared,
    Path((plan, app, id)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    app_named(&api, &plan, &app)?;
    let a = app.clone();
    let op = read(&api, move |s| store(s, &a).operation(&id).map_err(|e| e.to_string())).await?;
    match op {
        Some(op) => Ok(Json(json!({
            "operation": op,
            "report": report::json(&op),
            "timeline": report::timeline_text(&op),
            "svg": report::timeline_svg(&op),
        }))
        .into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app {app} has no such operation"),
        )),
    }
}

async fn drill_list(State(api): Shared, Path((plan, app)): Path<(String, String)>) -> Result<Response, ApiError> {
    app_named(&api, &plan, &app)?;
    let list = read(&api, move |s| {
        let a = s.plan.app(&app).expect("checked");
        drills::history(&s.repo, &s.plan, a).map_err(|e| e.to_string())
    })
    .await?;
    Ok(Json(list.iter().map(|d| d.to_json()).collect::<Vec<_>>()).into_response())
}

/// `drills/ID.md`, `.json`, `.html`: the drill's report as `drill --report` writes it.
async fn drill_report(
    State(api): Shared,
    Path((plan, app, file)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    app_named(&api, &plan, &app)?;
    let Some((id, ext)) = file.rsplit_once('.') else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "a drill report is ID.md, ID.json or ID.html",
        ));
    };
    let (id, ext) = (id.to_string(), ext.to_string());
    let a = app.clone();
    let op = read(&api, move |s| store(s, &a).operation(&id).map_err(|e| e.to_string())).await?;
    let Some(op) = op.filter(|o| o.kind == Kind::Drill) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app {app} has no such drill"),
        ));
    };
    let r = report::DrillReport::new(&api.board.server().plan, vec![op], Vec::new());
    Ok(match ext.as_str() {
        "md" => ([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], r.markdown()).into_response(),
        "json" => Json(r.to_json()).into_response(),
        "html" => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], r.html()).into_response(),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "a drill report is ID.md, ID.json or ID.html",
            ))
        }
    })
}

async fn audit(State(api): Shared) -> Result<Response, ApiError> {
    let list = read(&api, |s| {
        records::audit_log(&s.repo, &s.plan.metadata.name, 500).map_err(|e| e.to_string())
    })
    .await?;
    Ok(Json(list).into_response())
}

/// The body of a backup or drill POST (all optional; an empty body is `{}`).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Drill only: the site to recover on (default: the app's drill.site, else its standby).
    #[serde(default)]
    pub site: Option<String>,
}

/// The body of a failover or failback POST.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchBody {
    /// The app's name, typed again: the confirmation that this app is to move.
    #[serde(default)]
    pub confirm: Option<String>,
    /// Skip the final backup of the site being left (default: take it).
    #[serde(default)]
    pub no_final_backup: bool,
}

/// The answer to an accepted POST.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Accepted {
    pub action: String,
    pub app: String,
    /// Where to follow it: the app's status (its operation in flight), then its operations.
    pub follow: String,
}

fn body<T: Default + serde::de::DeserializeOwned>(b: Result<Json<Value>, JsonRejection>) -> Result<T, ApiError> {
    let v = match b {
        Ok(Json(v)) => v,
        Err(JsonRejection::MissingJsonContentType(_)) => Value::Object(Default::default()),
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body is not JSON: {}", e.body_text()),
            ))
        }
    };
    if v.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(v).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body does not fit: {e}"),
        )
    })
}

/// Writes the audit entry (on the blocking pool); a failure to write is logged, and fails the
/// request when it would start something.
async fn write_audit(api: &Arc<Api>, e: AuditEntry) -> Result<(), String> {
    let server = api.board.server().clone();
    let r = tokio::task::spawn_blocking(move || {
        // Never into a repository that went away (a local one would be made anew, empty).
        server.repo.reachable().map_err(|x| x.to_string())?;
        records::audit(&server.repo, &server.plan.metadata.name, &e).map_err(|x| x.to_string())
    })
    .await
    .map_err(|x| x.to_string())
    .and_then(|r| r);
    if let Err(e) = &r {
        tracing::warn!(kind = "audit_failed", "the audit log cannot be written: {e}");
    }
    r
}

fn entry(caller: &Caller, action: &str, app: &str, status: StatusCode, result: impl Into<String>) -> AuditEntry {
    AuditEntry {
        at: OffsetDateTime::now_utc(),
        who: caller.name.clone(),
        action: action.into(),
        app: app.into(),
        status: status.as_u16(),
        result: result.into(),
    }
}

/// What an accepted action runs (on the blocking pool, under the server's environment).
type Job = Box<dyn FnOnce(&ops::Env) -> (bool, String) + Send>;

/// Checks, audits and starts an action; refused ones are audited with their answer.
async fn act(
    api: Arc<Api>,
    caller: Caller,
    action: &'static str,
    plan: String,
    app: String,
    job: Result<Job, ApiError>,
) -> Response {
    let checked = (|| {
        app_named(&api, &plan, &app)?;
        let job = job?;
        if !api.board.leads() {
            let leader = api
                .board
                .status(OffsetDateTime::now_utc())
                .and_then(|s| s.control)
                .and_then(|c| c.leader);
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "not_leader",
                format!(
                    "this serve instance does not lead: only the leader acts{}",
                    leader.as_ref().map(|l| format!(" (ask {l})")).unwrap_or_default()
                ),
            );
            e.extra = Some(json!({"leader": leader}));
            return Err(e);
        }
        let mut busy = api.busy.lock().expect("poisoned");
        if busy.contains(&app) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "busy",
                format!("an action on {app} started through the API has not ended yet"),
            ));
        }
        busy.push(app.clone());
        Ok(job)
    })();
    let job = match checked {
        Ok(j) => j,
        Err(e) => {
            let _ = write_audit(
                &api,
                entry(&caller, action, &app, e.status, format!("refused: {}", e.message)),
            )
            .await;
            return e.into_response();
        }
    };
    if let Err(e) = write_audit(&api, entry(&caller, action, &app, StatusCode::ACCEPTED, "started")).await {
        api.busy.lock().expect("poisoned").retain(|a| *a != app);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("not started: the audit log cannot be written ({e})"),
        )
        .into_response();
    }
    tracing::info!(
        kind = "api_action",
        app = app.as_str(),
        "{action} of {app} started through the API by {}",
        caller.name
    );
    let (a2, api2, c2) = (app.clone(), api.clone(), caller.clone());
    tokio::spawn(async move {
        let server = api2.board.server().clone();
        let ran = tokio::task::spawn_blocking(move || server.with_env(true, |env| job(env))).await;
        let (ok, line) = ran.unwrap_or_else(|e| (false, format!("the job failed: {e}")));
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let _ = write_audit(&api2, entry(&c2, action, &a2, status, format!("finished: {line}"))).await;
        api2.busy.lock().expect("poisoned").retain(|a| *a != a2);
        api2.board.refresh_now().await;
    });
    (
        StatusCode::ACCEPTED,
        Json(Accepted {
            action: action.into(),
            follow: format!("/api/v1/plans/{plan}/apps/{app}"),
            app,
        }),
    )
        .into_response()
}

async fn start_backup(
    State(api): Shared,
    ext: axum::Extension<Caller>,
    Path((plan, app)): Path<(String, String)>,
    b: Result<Json<Value>, JsonRejection>,
) -> Response {
    let caller = ext.0;
    let by = format!("api:{}", caller.name);
    let a = app.clone();
    let job = body::<ActionBody>(b).and_then(|x| {
        if x.site.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "a backup reads the active site: no site",
            ));
        }
        Ok(Box::new(move |env: &ops::Env| {
            let line = lifeboat_server::backup_round(env, &a, &by);
            (!line.contains("FAILED"), line)
        }) as Job)
    });
    act(api, caller, "backup", plan, app, job).await
}

async fn start_drill(
    State(api): Shared,
    ext: axum::Extension<Caller>,
    Path((plan, app)): Path<(String, String)>,
    b: Result<Json<Value>, JsonRejection>,
) -> Response {
    let caller = ext.0;
    let a = app.clone();
    let sites: Vec<String> = api.board.server().plan.sites.keys().cloned().collect();
    let reason = format!("drill through the API by {}", caller.name);
    let job = body::<ActionBody>(b).and_then(|x| {
        if let Some(s) = x.site.as_ref().filter(|s| !sites.contains(s)) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("no site {s:?} in the plan (sites: {})", sites.join(", ")),
            ));
        }
        Ok(Box::new(move |env: &ops::Env| match x.site {
            None => lifeboat_server::drill_round(env, &a, &reason),
            Some(site) => {
                let opts = Options {
                    reason,
                    drill_site: Some(site),
                    ..Default::default()
                };
                match ops::drill(env, &a, &opts) {
                    Ok(op) => (
                        op.status == lifeboat_orchestrator::journal::OpStatus::Done,
                        format!("drill {} {}", op.id, op.status),
                    ),
                    Err(e) => (false, format!("drill FAILED: {e}")),
                }
            }
        }) as Job)
    });
    act(api, caller, "drill", plan, app, job).await
}

fn switch_job(kind: Kind, app: &str, caller: &Caller, b: Result<Json<Value>, JsonRejection>) -> Result<Job, ApiError> {
    let x: SwitchBody = body(b)?;
    match x.confirm.as_deref() {
        Some(c) if c == app => {}
        Some(c) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "confirmation_required",
                format!("the confirmation {c:?} is not the app's name {app:?}: nothing started"),
            ))
        }
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "confirmation_required",
                format!(
                    "a {} moves the app: give {{\"confirm\": \"{app}\"}} to confirm; nothing started",
                    kind.as_str()
                ),
            ))
        }
    }
    let (a, reason) = (
        app.to_string(),
        format!("{} through the API by {}", kind.as_str(), caller.name),
    );
    Ok(Box::new(move |env: &ops::Env| {
        let opts = Options {
            reason,
            final_backup: !x.no_final_backup,
            health_timeout: std::time::Duration::from_secs(300),
            ..Default::default()
        };
        match ops::switch_over(env, &a, kind, &opts) {
            Ok(Outcome::Done(op)) => (
                op.status == lifeboat_orchestrator::journal::OpStatus::Done,
                format!("{} {} {}", kind.as_str(), op.id, op.status),
            ),
            Ok(Outcome::AlreadyThere { site, .. }) => (true, format!("already on {site}")),
            Err(e) => (false, format!("{} FAILED: {e}", kind.as_str())),
        }
    }))
}

/// A failover or failback POST.
async fn start_switch(
    kind: Kind,
    State(api): Shared,
    ext: axum::Extension<Caller>,
    Path((plan, app)): Path<(String, String)>,
    b: Result<Json<Value>, JsonRejection>,
) -> Response {
    let caller = ext.0;
    let job = switch_job(kind, &app, &caller, b);
    act(api, caller, kind.as_str(), plan, app, job).await
}
