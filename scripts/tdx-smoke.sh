#!/usr/bin/env bash
# TDX smoke test for a real Intel host (Linux 6.16 or later with kvm_intel tdx=1).
#
# 1. Runs the ignored hardware test of the TDX backend (launch of the conformance file).
# 2. Boots SMOKE_IGVM with `igvmm run --platform tdx`, with the serial console in a log file, and
#    checks that the log contains SMOKE_EXPECT when that is set. SMOKE_IGVM must be a bootable
#    TDX IGVM file (for example a COCONUT-SVSM TDX build); the conformance file
#    tiny-tdp-synthetic.igvm is layout only and does not boot.
# 3. If the guest prints its TDREPORT's MRTD as a line `MRTD=<96 hex digits>` on the serial
#    console, compares it with `igvmm measure --platform tdx`.
#
# Environment: SMOKE_IGVM (file, required for step 2), SMOKE_EXPECT, SMOKE_CPUS (default 1),
# SMOKE_TIMEOUT (seconds, default 60), SMOKE_MRCONFIGID (96 hex digits, optional).
set -euo pipefail
cd "$(dirname "$0")/.."

cpus="${SMOKE_CPUS:-1}"
timeout_s="${SMOKE_TIMEOUT:-60}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo build --quiet -p vmm --bin igvmm
igvmm="${CARGO_TARGET_DIR:-target}/debug/igvmm"

echo "== backend hardware test"
cargo test --quiet -p vmm --test coco_tdx -- --ignored tdx_launch_on_hardware --nocapture

if [ -z "${SMOKE_IGVM:-}" ]; then
    echo "note: SMOKE_IGVM is not set; skipping the boot test"
    exit 0
fi

echo "== predicted MRTD"
predicted="$("$igvmm" measure "$SMOKE_IGVM" --platform tdx)"
echo "$predicted"

echo "== boot $SMOKE_IGVM"
extra=()
if [ -n "${SMOKE_MRCONFIGID:-}" ]; then
    extra+=(--mrconfigid "$SMOKE_MRCONFIGID")
fi
status=0
timeout "$timeout_s" "$igvmm" -v run --platform tdx --cpus "$cpus" "${extra[@]}" \
    --serial "file:$work/serial.log" "$SMOKE_IGVM" 2> "$work/igvmm.log" || status=$?
cat "$work/igvmm.log"
echo "igvmm exited with status $status; serial output:"
cat "$work/serial.log" 2> /dev/null || true

if grep -q "this host cannot run TDX guests" "$work/igvmm.log"; then
    echo "FAIL: the host lacks TDX support"
    exit 1
fi
if [ -n "${SMOKE_EXPECT:-}" ] && ! grep -qF "$SMOKE_EXPECT" "$work/serial.log"; then
    echo "FAIL: the serial output does not contain \"$SMOKE_EXPECT\""
    exit 1
fi

reported="$(grep -oE 'MRTD=[0-9A-Fa-f]{96}' "$work/serial.log" | head -n1 | cut -d= -f2 || true)"
if [ -n "$reported" ]; then
    if [ "${reported^^}" = "$predicted" ]; then
        echo "PASS: the TDREPORT's MRTD equals the prediction"
    else
        echo "FAIL: the TDREPORT's MRTD is ${reported^^}, predicted $predicted"
        exit 1
    fi
else
    echo "note: the guest printed no MRTD= line; the measurement was not compared"
fi
echo "PASS"
