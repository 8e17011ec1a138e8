//! Shared helpers of the integration tests. Each test binary compiles this
//! module on its own and uses only part of it.
#![allow(dead_code)]

pub mod kafka;
pub mod redis_cluster;
pub mod service;
pub mod ws;
