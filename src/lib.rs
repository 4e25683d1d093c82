//! kaching: a ClickBank Instant Notification receiver. It authenticates each
//! notification ([`ins`]), stores it exactly once ([`store`]) before answering
//! 200 ([`http`]), then drives follow-up [`actions`]. `main.rs` only calls
//! [`cli::run`].

pub mod actions;
pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod ingest;
pub mod ins;
pub mod rejected;
pub mod reload;
pub mod runtime;
pub mod shutdown;
pub mod store;
pub mod telemetry;
