//! The Customers page: find a buyer's notifications by email (through the
//! blind index, never by decrypting everything) and erase their personal
//! data behind a confirmation. The email travels in POST bodies only, never
//! in a URL (which browsers and proxies keep).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use minijinja::{context, Value};
use serde::Deserialize;

use super::api::ViewError;
use super::pages::{csrf_refusal, error_page, frame};
use super::params::ViewParams;
use super::{AdminState, Viewer};

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/customers", get(page).post(find))
        .route("/customers/erase", post(erase))
}

#[derive(Debug, Deserialize)]
pub struct CustomerForm {
    csrf: String,
    email: String,
    /// The erase form's confirmation checkbox.
    #[serde(default)]
    confirm: Option<String>,
}

async fn render(state: &AdminState, viewer: &Viewer, extra: Value) -> Response {
    let ctx = frame(state, viewer, "customers", &ViewParams::default()).await;
    let encrypted = state.live.load().data_keys.is_some();
    state.templates.render(
        "customers.html",
        context! { ..ctx, ..context! { encrypted }, ..extra },
    )
}

async fn page(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    render(&state, &viewer, context! {}).await
}

/// `POST /customers`: the buyer's notifications.
async fn find(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    Form(f): Form<CustomerForm>,
) -> Response {
    if let Some(refused) = csrf_refusal(&state, &viewer, &f.csrf) {
        return refused;
    }
    let runtime = state.live.load_full();
    let Some(keys) = runtime.data_keys.as_deref() else {
        return render(&state, &viewer, context! {}).await;
    };
    match state
        .store
        .customers_find(&keys.email_indexes(&f.email))
        .await
    {
        Ok(rows) => {
            let rows: Vec<Value> = rows
                .iter()
                .map(|r| {
                    context! {
                        id => r.id, account => r.account.clone(), receipt => r.receipt.clone(),
                        kind => r.transaction_type.clone(), time => r.transaction_time.to_rfc3339(),
                    }
                })
                .collect();
            render(
                &state,
                &viewer,
                context! { email => f.email.trim(), rows, searched => true },
            )
            .await
        }
        Err(e) => error_page(&state, ViewError::Store(e)),
    }
}

/// `POST /customers/erase`: erases the buyer's personal data (with the box ticked).
async fn erase(
    State(state): State<Arc<AdminState>>,
    Extension(viewer): Extension<Viewer>,
    Form(f): Form<CustomerForm>,
) -> Response {
    if let Some(refused) = csrf_refusal(&state, &viewer, &f.csrf) {
        return refused;
    }
    if f.confirm.as_deref() != Some("yes") {
        return render(
            &state,
            &viewer,
            context! { email => f.email.trim(), problem => "Tick the confirmation to erase." },
        )
        .await;
    }
    let runtime = state.live.load_full();
    match crate::privacy::erase::erase(&state.store, &runtime, &f.email, chrono::Utc::now()).await {
        Ok(e) => {
            tracing::info!(
                notifications = e.notifications,
                rejected = e.rejected,
                "admin: a buyer's personal data was erased from the dashboard"
            );
            render(
                &state,
                &viewer,
                context! { erased => context! {
                    notifications => e.notifications, rejected => e.rejected, recipients => e.recipients,
                } },
            )
            .await
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin: an erasure failed");
            render(
                &state,
                &viewer,
                context! { problem => "The erasure failed; see the log." },
            )
            .await
        }
    }
}
