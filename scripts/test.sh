#!/usr/bin/env bash
# Runs the igvmm test suite: fetches the guests that the integration tests boot, then runs every
# workspace test. Tests that need something this machine lacks (hardware SEV-SNP or TDX, a KVM that
# can run Linux) print the reason and count as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# SeaBIOS from Debian's package, for the real-firmware boot test.
if [ ! -f seabios/bios-microvm.bin ]; then
    scripts/fetch-seabios.sh seabios || echo "test.sh: SeaBIOS could not be fetched; its test will report a skip"
fi

cargo test --workspace "$@"
