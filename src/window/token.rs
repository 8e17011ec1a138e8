//! Per-token buckets and wallet activity (engine helper).
