//! Shared helpers for integration tests. Use from a test file with
//!
//! ```ignore
//! mod support;
//! use support::redis_cluster::{RedisCluster, RedisServer};
//! ```
//!
//! Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod redis_cluster;
