//! Dedup of event ids within the horizon (engine helper).
