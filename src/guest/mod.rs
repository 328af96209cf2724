//! The work the steps do on the VM, rendered as scripts. Pure functions: every value that
//! reaches a script is shell-quoted, and secrets never appear in a script at all — they
//! travel as file contents over SSH stdin (see `ssh::SshPool::write_file`).

pub mod code_server;
pub mod git;
#[cfg(test)]
pub(crate) mod scratch;
pub mod scripts;

pub use code_server::*;
pub use scripts::*;
