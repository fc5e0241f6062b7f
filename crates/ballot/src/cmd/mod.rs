//! One module per subcommand.

pub mod demo;
pub mod server;
pub mod sim;
