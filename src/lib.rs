//! kaching: a ClickBank Instant Notification receiver. A post goes through
//! one pipeline ([`ingest`]): authenticated by the pure [`ins`] module,
//! stored exactly once ([`store`]), then published after its commit to the
//! dispatcher of follow-up [`actions`]. [`http`] only receives and answers.
//! Settings ([`config`]) are built once into a [`runtime`], swapped whole by
//! a live [`reload`]. [`report`] derives the dashboard's figures from the
//! stored notifications; the separate [`admin`] listener serves them (pages,
//! live feed, JSON API) and the [`metrics`]. [`demo`] writes a seeded
//! history through the same pipeline. [`alerts`] watches the reports,
//! rejected posts and the outbox, and warns through the actions.
//! `main.rs` only calls [`cli::run`]; [`app`] is the wiring.

pub mod actions;
pub mod admin;
pub mod alerts;
pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod doctor;
pub mod http;
pub mod ingest;
pub use kaching_ins as ins;
pub mod metrics;
pub mod privacy;
pub mod reconcile;
pub mod rejected;
pub mod reload;
pub mod report;
pub mod risk;
pub mod runtime;
pub mod shutdown;
pub mod store;
pub mod telemetry;
