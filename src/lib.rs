//! Care Commons.
