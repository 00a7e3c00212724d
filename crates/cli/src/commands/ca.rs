//! `plinth ca export`: the certificate of the local CA that the proxy's HTTPS (`--tls-listen`)
//! uses, for clients to trust.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use super::Outcome;
use crate::client::{Client, Connection};
use crate::output::{Failure, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the CA certificate (PEM) on stdout; on a terminal, how to trust it goes to stderr.
    ///
    /// Save it and trust it where the clients run:
    ///
    ///   plinth ca export > plinth-ca.pem
    ///
    ///   Debian/Ubuntu: sudo cp plinth-ca.pem /usr/local/share/ca-certificates/plinth-ca.crt
    ///                  && sudo update-ca-certificates
    ///
    ///   macOS: sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain
    ///          plinth-ca.pem
    ///
    ///   curl: curl --cacert plinth-ca.pem https://HOST:PORT/
    ///
    ///   Firefox/Chromium (NSS): certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n plinth -i plinth-ca.pem
    #[command(verbatim_doc_comment)]
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// Read `<DIR>/ca/ca.pem` from the server's data dir on this machine instead of asking
    /// the server.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    connection: Connection,
}

/// How to trust the certificate, for people; never on stdout, which carries the PEM alone.
const INSTRUCTIONS: &str = "\
The CA certificate is on stdout. Save it, then trust it where your clients run:
  plinth ca export > plinth-ca.pem
  Debian/Ubuntu:          sudo cp plinth-ca.pem /usr/local/share/ca-certificates/plinth-ca.crt && sudo update-ca-certificates
  macOS:                  sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain plinth-ca.pem
  curl:                   curl --cacert plinth-ca.pem https://HOST:PORT/
  Firefox/Chromium (NSS): certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n plinth -i plinth-ca.pem";

const PEM_START: &str = "-----BEGIN CERTIFICATE-----";

pub fn run(args: Args) -> Outcome {
    match args.command {
        Command::Export(args) => export(args),
    }
}

fn export(args: ExportArgs) -> Outcome {
    let pem = match &args.data_dir {
        Some(dir) => read_local(dir)?,
        None => {
            let pem = Client::new(&args.connection, Format::Text)?.get_text("/api/v1/ca")?;
            if !pem.trim_start().starts_with(PEM_START) {
                return Err(Failure::new(
                    "client.bad_response",
                    "the server's answer is not a PEM certificate",
                    "Check that --server points at a plinth server of the same version.",
                    Format::Text,
                ));
            }
            pem
        }
    };
    out!("{}\n", pem.trim_end());
    if std::io::stderr().is_terminal() {
        eprintln!("{INSTRUCTIONS}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `<dir>/ca/ca.pem`, as the server wrote it.
fn read_local(data_dir: &std::path::Path) -> Result<String, Failure> {
    let path = data_dir.join("ca").join("ca.pem");
    let pem = match std::fs::read_to_string(&path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::new(
                "ca.not_created",
                format!("there is no local CA in {}", data_dir.display()),
                format!(
                    "Start `plinth server --data-dir {} --tls-listen ADDR` once: it creates the CA; or check --data-dir.",
                    data_dir.display()
                ),
                Format::Text,
            ));
        }
        Err(e) => {
            return Err(Failure::new(
                "ca.unreadable",
                format!("could not read {}: {e}", path.display()),
                "Run this as a user who may read the data dir's `ca` directory, or ask the server (without --data-dir).",
                Format::Text,
            ));
        }
    };
    if !pem.trim_start().starts_with(PEM_START) {
        return Err(Failure::new(
            "ca.malformed",
            format!("{} is not a PEM certificate", path.display()),
            "Restore it from a backup, or ask the server (without --data-dir).",
            Format::Text,
        ));
    }
    Ok(pem)
}
