//! `zcow-img compare`.
