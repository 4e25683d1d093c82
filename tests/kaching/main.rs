#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Integration tests: the real server, over real TLS, on a real socket,
//! against SQLite and the real Postgres server. `TEST_LOG=1` shows the logs.

mod browser;
mod orders_api;
mod services;
mod smtp;
mod support;
mod target;

mod acme;
mod actions;
mod actions_email;
mod alerts;
mod cli;
mod connections;
mod crash;
mod dashboard;
mod dashboard_browser;
mod demo;
mod deploy;
mod doctor;
mod faults;
mod ingest;
mod integrations;
mod metrics;
mod outbox;
mod privacy;
mod reconcile;
mod reload;
mod risk;
mod security;
mod shedding;
mod store;
mod store_down;
