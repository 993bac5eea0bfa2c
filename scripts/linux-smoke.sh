#!/usr/bin/env bash
# Boots the Debian kernel and initramfs from scripts/fetch-linux.sh on igvmm and checks the run.
#
# Usage: scripts/linux-smoke.sh [--bzimage] [--cpus N]
#
#   --bzimage   pack linux-guest/vmlinuz (the bzImage) instead of linux-guest/vmlinux (ELF)
#   --cpus N    number of vCPUs (default 1)
#
# Environment: IGVMM (the igvmm binary; built with cargo when unset), LINUX_GUEST (the folder
# with vmlinux, vmlinuz and initrd.img; fetched when missing), SMOKE_TIMEOUT (seconds, default
# 600).
#
# Steps: `igvmm pack --kernel` with the initrd and a serial-console command line, `igvmm corim
# add` with a small CoRIM document for the native platform, `igvmm run`. Checks:
#   1. the kernel banner "Linux version" on COM1 (earlyprintk=serial);
#   2. the initramfs line "<sha256 of the CoRIM>  /sys/firmware/qemu_fw_cfg/by_name/opt/igvm/corim/raw";
#   3. a clean exit: `poweroff -f` halts every vCPU, which igvmm reports with status 0;
#   4. with --cpus N above 1, Linux's "smp: Brought up 1 node, N CPUs": it started every AP
#      that the MADT lists through INIT/SIPI.
# When KVM stops the guest with KVM_EXIT_INTERNAL_ERROR after the banner, as kvm_pvm (a software
# nested hypervisor) does with Linux, checks 2 and 3 are reported as skipped and the script
# exits 0. With --bzimage, kvm_pvm stops the kernel's decompressor before the banner; that is
# reported as skipped too. Without --bzimage a missing banner always fails.
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
guest="${LINUX_GUEST:-$repo_root/linux-guest}"
timeout_s="${SMOKE_TIMEOUT:-600}"
kernel_name=vmlinux
cpus=1
while [ $# -gt 0 ]; do
    case "$1" in
        --bzimage) kernel_name=vmlinuz ;;
        --cpus)
            cpus="${2:-}"
            case "$cpus" in ''|*[!0-9]*) echo "--cpus needs a number" >&2; exit 2 ;; esac
            shift ;;
        *) echo "usage: $0 [--bzimage] [--cpus N]" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "linux-smoke: $*"; }
fail() { say "FAIL: $*"; exit 1; }

if [ ! -f "$guest/$kernel_name" ] || [ ! -f "$guest/initrd.img" ]; then
    "$repo_root/scripts/fetch-linux.sh" "$guest"
fi
if [ -z "${IGVMM:-}" ]; then
    (cd "$repo_root" && cargo build --quiet -p vmm --bin igvmm)
    target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
    IGVMM="$target_dir/debug/igvmm"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cmdline="console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 rdinit=/init"
"$IGVMM" pack --kernel "$guest/$kernel_name" --initrd "$guest/initrd.img" \
    --cmdline "$cmdline" -o "$work/linux.igvm"

# A stand-in CoRIM document: CBOR tag 501 (unsigned CoRIM) around {0: "igvmm-linux-test"}.
# `igvmm corim add` checks that it is CBOR; `igvmm run` serves it as opt/igvm/corim and only
# warns that it is not a complete CoRIM, because --strict-corim is off.
printf '\xd9\x01\xf5\xa1\x00\x70igvmm-linux-test' > "$work/corim.cbor"
expected_hash="$(sha256sum "$work/corim.cbor" | cut -d' ' -f1)"
"$IGVMM" corim add "$work/linux.igvm" --platform native --document "$work/corim.cbor" \
    -o "$work/linux-corim.igvm"

say "booting $kernel_name on $cpus vCPU(s), up to ${timeout_s}s"
set +e
timeout "$timeout_s" "$IGVMM" run "$work/linux-corim.igvm" --memory 512M --cpus "$cpus" \
    --serial "file:$work/serial.log" 2> "$work/igvmm.log" < /dev/null
status=$?
set -e
serial="$work/serial.log"
touch "$serial"

internal_error="$(grep -m1 -o 'KVM_EXIT_INTERNAL_ERROR[^)]*)' "$work/igvmm.log" || true)"
if ! grep -q "Linux version" "$serial"; then
    if [ "$kernel_name" = vmlinuz ] && [ -n "$internal_error" ]; then
        say "SKIP: all checks: KVM stopped the bzImage before its banner with $internal_error"
        say "      this host's KVM (kvm_pvm) cannot run the decompressor; use the ELF vmlinux here"
        exit 0
    fi
    tail -n 20 "$serial"
    cat "$work/igvmm.log"
    fail "no 'Linux version' banner on COM1 (igvmm exit status $status)"
fi
say "ok: $(grep -m1 -o 'Linux version [^ ]*' "$serial")"

if [ -n "$internal_error" ]; then
    skipped="CoRIM hash and clean exit"
    [ "$cpus" -gt 1 ] && skipped="start of $cpus CPUs, $skipped"
    say "SKIP: $skipped: KVM stopped the kernel with $internal_error"
    say "      after $(wc -l < "$serial") lines of console output; this host's KVM (kvm_pvm) cannot run Linux"
    exit 0
fi

if [ "$cpus" -gt 1 ]; then
    smp_line="smp: Brought up 1 node, $cpus CPUs"
    if ! grep -qF "$smp_line" "$serial"; then
        grep -E 'smp:|APIC|CPU[0-9]' "$serial" | tail -n 20 || true
        fail "no '$smp_line' on COM1"
    fi
    say "ok: $smp_line"
fi

corim_line="$expected_hash  /sys/firmware/qemu_fw_cfg/by_name/opt/igvm/corim/raw"
if ! grep -qF "$corim_line" "$serial"; then
    tail -n 30 "$serial"
    cat "$work/igvmm.log"
    fail "no CoRIM hash line '$corim_line'"
fi
say "ok: CoRIM hash $expected_hash read through qemu_fw_cfg"

if [ "$status" -ne 0 ]; then
    tail -n 20 "$serial"
    cat "$work/igvmm.log"
    fail "igvmm exited with status $status instead of 0 (every vCPU halted after poweroff)"
fi
say "ok: the guest powered off and igvmm exited with status 0"
