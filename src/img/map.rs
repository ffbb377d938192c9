//! `zcow-img map`.
