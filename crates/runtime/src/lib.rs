//! Runtime plumbing shared by every mailflow service: the configuration file and its
//! environment overrides, logging, metrics, graceful shutdown and the common gRPC server
//! setup (health and reflection).

#![forbid(unsafe_code)]

pub mod config;
pub mod grpc;
pub mod metrics;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use config::{Config, ConfigError, EX_USAGE};
