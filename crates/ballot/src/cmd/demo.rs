//! `ballot demo`: placeholder replaced below once the simulator's trace format is settled.

use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> ExitCode {
    ExitCode::SUCCESS
}
