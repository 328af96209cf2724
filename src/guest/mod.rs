//! The work the steps do on the VM, rendered as scripts. Pure functions: every value that
//! reaches a script is shell-quoted, and secrets never appear in a script at all — they
//! travel as file contents over SSH stdin (see `ssh::SshPool::write_file`).

pub mod git;
pub mod scripts;

pub use scripts::*;
