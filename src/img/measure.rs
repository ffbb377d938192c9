//! `zcow-img measure`.
