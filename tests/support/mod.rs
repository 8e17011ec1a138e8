//! Shared helpers of the integration tests. Not every test uses every helper.
#![allow(dead_code)]

pub mod kafka;
pub mod service;
