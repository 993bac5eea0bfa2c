#!/usr/bin/env bash
# SEV-SNP smoke test for a real AMD host (Linux 6.11 or later with kvm_amd sev_snp=1, /dev/sev
# readable and writable by this user).
#
# 1. Runs the ignored hardware test of the SEV-SNP backend (launch of a conformance file).
# 2. Boots SMOKE_IGVM (default: the conformance file tiny-qemu-snp-native.igvm) with
#    `igvmm run --platform sev-snp`, with the serial console in a log file, and checks that the
#    log contains SMOKE_EXPECT when that is set.
# 3. If the guest prints its attestation report's measurement as a line `MEASUREMENT=<96 hex
#    digits>` on the serial console, compares it with `igvmm measure --platform sev-snp`.
#
# The tiny conformance payload writes to port 0x3f8 without a #VC handler, so under SEV-SNP it
# stops at its first port access; use a guest with GHCB support (for example a COCONUT-SVSM or
# OVMF IGVM build) for steps 2 and 3.
#
# Environment: SMOKE_IGVM (file), SMOKE_EXPECT (text the serial log must contain), SMOKE_CPUS
# (vCPUs, default 1), SMOKE_TIMEOUT (seconds, default 60).
set -euo pipefail
cd "$(dirname "$0")/.."

conformance="$(cd .. && pwd)/shared/conformance"
image="${SMOKE_IGVM:-$conformance/tiny-qemu-snp-native.igvm}"
cpus="${SMOKE_CPUS:-1}"
timeout_s="${SMOKE_TIMEOUT:-60}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo build --quiet -p vmm --bin igvmm
igvmm="${CARGO_TARGET_DIR:-target}/debug/igvmm"

echo "== backend hardware test"
cargo test --quiet -p vmm --test coco_snp -- --ignored snp_launch_on_hardware --nocapture

echo "== predicted launch digest ($cpus vCPUs)"
predicted="$("$igvmm" measure "$image" --platform sev-snp --cpus "$cpus")"
echo "$predicted"

echo "== boot $image"
status=0
timeout "$timeout_s" "$igvmm" -v run --platform sev-snp --cpus "$cpus" \
    --serial "file:$work/serial.log" "$image" 2> "$work/igvmm.log" || status=$?
cat "$work/igvmm.log"
echo "igvmm exited with status $status; serial output:"
cat "$work/serial.log" 2> /dev/null || true

if grep -q "this host cannot run SEV-SNP guests" "$work/igvmm.log"; then
    echo "FAIL: the host lacks SEV-SNP support"
    exit 1
fi
if [ -n "${SMOKE_EXPECT:-}" ] && ! grep -qF "$SMOKE_EXPECT" "$work/serial.log"; then
    echo "FAIL: the serial output does not contain \"$SMOKE_EXPECT\""
    exit 1
fi

reported="$(grep -oE 'MEASUREMENT=[0-9A-Fa-f]{96}' "$work/serial.log" | head -n1 | cut -d= -f2 || true)"
if [ -n "$reported" ]; then
    if [ "${reported^^}" = "$predicted" ]; then
        echo "PASS: the attestation report's MEASUREMENT equals the prediction"
    else
        echo "FAIL: the attestation report's MEASUREMENT is ${reported^^}, predicted $predicted"
        exit 1
    fi
else
    echo "note: the guest printed no MEASUREMENT= line; the measurement was not compared"
fi
echo "PASS"
