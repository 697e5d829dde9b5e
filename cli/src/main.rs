//! The care command line.
fn main() {}
