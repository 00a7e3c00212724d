#!/usr/bin/env bash
# Installs what plinth's test suite needs on a fresh Debian machine. Safe to run again:
# it only installs what is missing. Called by .ci/run; run it yourself before `cargo test`.
set -euo pipefail

need_apt=()
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
# The process runtime's tests serve HTTP with `python3 -m http.server`.
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# The CLI's server tests stop a server with `kill -TERM` (procps; slim images lack it).
type -P kill >/dev/null || need_apt+=(procps)

if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"
fi

git --version

# The tests drive the real terraform CLI (built-in providers only, so no network is needed).
# Debian does not package it; it must be on PATH already.
if ! command -v terraform >/dev/null 2>&1; then
  echo "terraform is not on PATH. Install Terraform 1.x (https://developer.hashicorp.com/terraform/install) and run this again." >&2
  exit 1
fi
terraform version | head -n 1

# plinth needs Rust 1.94 or newer (Cargo.toml's rust-version; sqlx 0.9 needs it).
rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rust_minor:-0}" -lt 94 ]; then
  if command -v rustup >/dev/null 2>&1; then
    rustup update stable
    rustup default stable
  else
    echo "Rust 1.94 or newer is needed, $(rustc --version) is installed; update your toolchain." >&2
    exit 1
  fi
fi
rustc --version

# CI checks formatting and lints too; a minimal rustup profile has neither.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy
  else
    echo "cargo fmt or cargo clippy is missing; install the rustfmt and clippy components of your toolchain." >&2
    exit 1
  fi
fi
