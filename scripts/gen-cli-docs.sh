#!/usr/bin/env bash
# Regenerate the shell completions (completions/) and man pages (man/) from
# the binaries' clap definitions. tests/cli_docs.rs fails when they are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --features ublk --quiet
mkdir -p completions man
rm -f completions/* man/*.1
for bin in $(sed -n 's/^name = "\(zcow-[a-z-]*\)"/\1/p' Cargo.toml); do
  exe=target/release/$bin
  "$exe" --generate bash >"completions/$bin.bash"
  "$exe" --generate zsh >"completions/_$bin"
  "$exe" --generate fish >"completions/$bin.fish"
  "$exe" --generate man man
done
echo "completions/ and man/ regenerated"
