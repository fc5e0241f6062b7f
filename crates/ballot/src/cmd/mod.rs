//! One module per subcommand.

pub mod bench;
pub mod check;
pub mod client;
pub mod demo;
pub mod demo_live;
pub mod dev;
pub mod sched;
pub mod server;
pub mod sim;
