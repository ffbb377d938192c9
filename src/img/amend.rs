//! `zcow-img amend`.
