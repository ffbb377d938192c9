//! Consistency check and repair.
