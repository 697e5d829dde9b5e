//! Care Commons store.
