#!/usr/bin/env bash
# Runs the igvmm test suite: fetches SeaBIOS for the firmware boot test and a Debian kernel with
# an initramfs for the Linux boot test, then runs every workspace test. Tests that need something this machine lacks (hardware SEV-SNP or TDX, a KVM that
# can run Linux) print the reason and return without booting.
set -euo pipefail
cd "$(dirname "$0")/.."

# SeaBIOS from Debian's package, for the real-firmware boot test.
if [ ! -f seabios/bios-microvm.bin ]; then
    scripts/fetch-seabios.sh seabios || echo "test.sh: SeaBIOS could not be fetched; its test will report a skip"
fi

# A Debian cloud kernel and a busybox initramfs, for the Linux boot test (about 35 MB to fetch).
if [ ! -f linux-guest/vmlinux ] || [ ! -f linux-guest/initrd.img ]; then
    scripts/fetch-linux.sh linux-guest || echo "test.sh: the Linux kernel could not be fetched; its test will report a skip"
fi

cargo test --workspace "$@"
