use std::process::ExitCode;

use clap::Parser;
use log::error;
use zcnet::cli::{Args, Config};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::try_from(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zcnet: {e}");
            return ExitCode::from(2);
        }
    };
    match zcnet::daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{}", zcnet::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
