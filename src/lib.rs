//! kaching: a ClickBank Instant Notification receiver. It authenticates each
//! notification ([`ins`]), stores it exactly once ([`store`]) before answering
//! 200 ([`http`]), then drives follow-up [`actions`]. `main.rs` only calls
//! [`cli::run`]. [`metrics`] are served by the separate [`admin`] listener.

pub mod actions;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod ingest;
pub mod ins;
pub mod metrics;
pub mod rejected;
pub mod reload;
pub mod runtime;
pub mod shutdown;
pub mod store;
pub mod telemetry;
