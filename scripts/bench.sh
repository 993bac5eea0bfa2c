#!/usr/bin/env bash
# Benchmarks igvmm against QEMU microvm and against references measured in the same run, prints
# a table and writes it to docs/PERFORMANCE.md with the commands and a description of the machine.
#
# Every row is the median of BENCH_RUNS runs (default 5). Where igvmm and its reference are both
# timed, their runs alternate, so that a change in machine load hits both sides alike.
#
# Usage: scripts/bench.sh            (as root on Debian bookworm with /dev/kvm)
# Environment:
#   BENCH_RUNS=N          runs per measurement (at least 5 for the record; default 5)
#   BENCH_SERIAL_KIB=N    bytes the serial guest writes, in KiB, a multiple of 32 (default 1024)
#   BENCH_DOC=PATH        where the report goes (default docs/PERFORMANCE.md)
#   BENCH_LARGE_MIB=N     MiB of page data in the load and measurement file (default 256)
#   CARGO_TARGET_DIR      as for cargo; the release build goes to $CARGO_TARGET_DIR/release
#
# It installs QEMU 10.x from bookworm-backports and fetches SeaBIOS first
# (scripts/bench/install-deps.sh), builds igvmm and the bench_helper example in release mode,
# and keeps its guests and files in a temporary directory that it removes at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${BENCH_RUNS:-5}"
serial_kib="${BENCH_SERIAL_KIB:-1024}"
doc="${BENCH_DOC:-docs/PERFORMANCE.md}"
large_mib="${BENCH_LARGE_MIB:-256}"
started="$(date +%s)"

log() { echo "bench: $*" >&2; }

log "installing dependencies"
scripts/bench/install-deps.sh

log "building igvmm and the benchmark helper (release)"
examples=(--example bench_helper)
if [ -f vmm/examples/bench_igvm.rs ]; then
    examples+=(--example bench_igvm)
fi
cargo build --quiet --release -p vmm --bin igvmm "${examples[@]}"
target="${CARGO_TARGET_DIR:-target}/release"
igvmm="$(realpath "$target/igvmm")"
helper="$(realpath "$target/examples/bench_helper")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ---- helpers -------------------------------------------------------------------------------

# value KEY: prints the value of the first KEY=VALUE line of the helper output on stdin.
value() { sed -n "s/^$1=//p" | head -n 1; }

# median V...: prints the median of the numbers given.
median() {
    printf '%s\n' "$@" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# calc EXPR: evaluates an awk expression and prints it with 6 significant digits.
calc() { awk "BEGIN { printf \"%.6g\", ($1) }"; }

# fmt NUMBER DECIMALS: prints NUMBER rounded to DECIMALS places.
fmt() { awk -v n="$1" -v d="$2" 'BEGIN { printf "%.*f", d, n }'; }

# The commands behind each row, for the report. record HELPER_COMMAND... stores the measured
# command (the words after "--"), or the bench_helper command itself when it has no "--".
# Paths under the work directory read $WORK.
commands=()
record() {
    local words=("$@") i line=""
    for ((i = 0; i < ${#words[@]}; i++)); do
        if [ "${words[i]}" = "--" ]; then
            line="${words[*]:i+1}"
            break
        fi
    done
    if [ -z "$line" ]; then
        line="bench_helper ${words[*]:1}"
    elif [[ " ${words[*]} " == *" --stdout-null "* || "${words[1]}" == debugcon-cycles ]]; then
        line="$line > /dev/null"
    fi
    line="${line//$igvmm/igvmm}"
    line="${line//$helper/bench_helper}"
    commands+=("${line//$work/\$WORK}")
}

# Table rows: name | igvmm | reference | ratio | target | result
rows=()
# row NAME VALUE REFERENCE RATIO TARGET_TEXT PASS(1/0/-)
row() {
    local result
    case "$6" in
        1) result="pass" ;;
        0) result="MISS" ;;
        *) result="-" ;;
    esac
    rows+=("$1|$2|$3|$4|$5|$result")
}

# ---- guests and files ----------------------------------------------------------------------

log "writing the guests"
exit_status="$("$helper" payload hello -o "$work/hello.bin" | value exit_status)"
"$helper" payload spin -o "$work/spin.bin" > /dev/null
"$helper" payload serial -o "$work/serial.bin" --serial-bytes $((serial_kib * 1024)) > /dev/null
for guest in hello spin serial; do
    "$igvmm" pack --firmware "$work/$guest.bin" -o "$work/$guest.igvm" > /dev/null
done
"$igvmm" pack --firmware seabios/bios-microvm.bin -o "$work/seabios.igvm" > /dev/null
log "writing the ${large_mib} MiB IGVM file"
"$helper" large-igvm --mib "$large_mib" -o "$work/large.igvm"
large_file_mib="$(calc "$(stat -c %s "$work/large.igvm") / 1048576")"
# Warm the page cache, so that no row pays for the first read from disk.
cat "$work/large.igvm" > /dev/null

qemu=(qemu-system-x86_64 -M microvm -accel kvm -nodefaults -display none)
debug_exit=(-device isa-debug-exit,iobase=0x501,iosize=2)

# pair KEY_A KEY_B: runs the helper invocations in arrays side_a and side_b alternately $runs
# times, collecting KEY_A from side a and KEY_B from side b into values_a and values_b.
pair() {
    values_a=()
    values_b=()
    local i out
    for ((i = 0; i < runs; i++)); do
        out="$("${side_a[@]}")"
        values_a+=("$(value "$1" <<< "$out")")
        out="$("${side_b[@]}")"
        values_b+=("$(value "$2" <<< "$out")")
    done
}

# ---- 1. start-up to exit -------------------------------------------------------------------

log "row 1: start-up to exit"
side_a=("$helper" time --runs 1 --expect-status "$exit_status" --expect-output "igvmm-bench: hello"
    -- "$igvmm" run "$work/hello.igvm")
side_b=("$helper" time --runs 1 --expect-status "$exit_status" --expect-output "igvmm-bench: hello"
    -- "${qemu[@]}" -m 512M -bios "$work/hello.bin" -serial stdio "${debug_exit[@]}")
record "${side_a[@]}"
record "${side_b[@]}"
pair seconds_median seconds_median
startup_igvmm="$(median "${values_a[@]}")"
startup_qemu="$(median "${values_b[@]}")"
startup_ratio="$(calc "$startup_igvmm / $startup_qemu")"
row "1. start-up to exit (s)" "$(fmt "$startup_igvmm" 4)" "$(fmt "$startup_qemu" 4) QEMU microvm" \
    "$(fmt "$startup_ratio" 3)" "<= 0.1" "$(calc "$startup_ratio <= 0.1")"
startup_values_igvmm="${values_a[*]}"
startup_values_qemu="${values_b[*]}"

# ---- 2. SeaBIOS to its banner --------------------------------------------------------------

log "row 2: SeaBIOS to its banner"
side_a=("$helper" until --runs 1 --pattern "SeaBIOS (version"
    -- "$igvmm" -v run "$work/seabios.igvm" --serial none)
side_b=("$helper" until --runs 1 --pattern "SeaBIOS (version"
    -- "${qemu[@]}" -m 512M -bios seabios/bios-microvm.bin -serial none
    -chardev stdio,id=dbg -device isa-debugcon,iobase=0x402,chardev=dbg)
record "${side_a[@]}"
record "${side_b[@]}"
pair seconds_median seconds_median
banner_igvmm="$(median "${values_a[@]}")"
banner_qemu="$(median "${values_b[@]}")"
banner_ratio="$(calc "$banner_igvmm / $banner_qemu")"
row "2. SeaBIOS to banner (s)" "$(fmt "$banner_igvmm" 4)" "$(fmt "$banner_qemu" 4) QEMU microvm" \
    "$(fmt "$banner_ratio" 3)" "<= 0.5" "$(calc "$banner_ratio <= 0.5")"

# ---- 3. IGVM load --------------------------------------------------------------------------

log "row 3: loading ${large_mib} MiB of page data"
load_igvmm=()
load_cat=()
load_copy=()
load_a=("$helper" time --runs 1 --expect-status "$exit_status" -- "$igvmm" run "$work/large.igvm" --serial none)
load_b=("$helper" time --runs 1 --stdout-null -- cat "$work/large.igvm")
load_c=("$helper" memcpy --runs 1 --file "$work/large.igvm" --mib "$large_mib")
record "${load_a[@]}"
record "${load_b[@]}"
record "${load_c[@]}"
for ((i = 0; i < runs; i++)); do
    load_igvmm+=("$("${load_a[@]}" | value seconds_median)")
    load_cat+=("$("${load_b[@]}" | value seconds_median)")
    load_copy+=("$("${load_c[@]}" | value seconds_median)")
done
load_seconds="$(median "${load_igvmm[@]}")"
load_reference_seconds="$(calc "$(median "${load_cat[@]}") + $(median "${load_copy[@]}")")"
load_rate="$(calc "$large_mib / $load_seconds")"
load_reference_rate="$(calc "$large_mib / $load_reference_seconds")"
load_ratio="$(calc "$load_rate / $load_reference_rate")"
row "3. IGVM load, ${large_mib} MiB (MiB/s)" "$(fmt "$load_rate" 0)" \
    "$(fmt "$load_reference_rate" 0) cat + memcpy" "$(fmt "$load_ratio" 3)" ">= 0.5" \
    "$(calc "$load_ratio >= 0.5")"

# ---- 4. measurement ------------------------------------------------------------------------

log "row 4: measurement"
side_b=("$helper" time --runs 1 --stdout-null -- openssl dgst -sha384 "$work/large.igvm")
record "${side_b[@]}"
for platform in sev-snp tdx; do
    side_a=("$helper" time --runs 1 --stdout-null -- "$igvmm" measure "$work/large.igvm" --platform "$platform")
    record "${side_a[@]}"
    pair seconds_median seconds_median
    rate="$(calc "$large_file_mib / $(median "${values_a[@]}")")"
    reference="$(calc "$large_file_mib / $(median "${values_b[@]}")")"
    ratio="$(calc "$rate / $reference")"
    row "4. measure --platform $platform (MiB/s)" "$(fmt "$rate" 0)" "$(fmt "$reference" 0) openssl sha384" \
        "$(fmt "$ratio" 3)" ">= 0.8" "$(calc "$ratio >= 0.8")"
done

# ---- 5. VMM memory -------------------------------------------------------------------------

log "row 5: VMM memory"
# igvmm's 4G guest has RAM below 3 GiB and above 4 GiB. After MADV_HUGEPAGE the kernel may merge
# the two adjacent mappings into one of 4 GiB, which is still guest memory.
declare -A guest_kib_igvmm=([512M]="524288,64" [4G]="3145728,1048576,4194304,64")
declare -A guest_kib_qemu=([512M]="524288,64" [4G]="4194304,64")
memory_512m=""
for memory in 512M 4G; do
    side_a=("$helper" resident --runs "$runs" --pattern "igvmm-bench: hello"
        --guest-kib "${guest_kib_igvmm[$memory]}"
        -- "$igvmm" run "$work/spin.igvm" --memory "$memory")
    side_b=("$helper" resident --runs "$runs" --pattern "igvmm-bench: hello"
        --guest-kib "${guest_kib_qemu[$memory]}"
        -- "${qemu[@]}" -m "$memory" -bios "$work/spin.bin" -serial stdio)
    record "${side_a[@]}"
    record "${side_b[@]}"
    igvmm_mib="$("${side_a[@]}" | value vmm_mib_median)"
    qemu_mib="$("${side_b[@]}" | value vmm_mib_median)"
    if [ "$memory" = 512M ]; then
        memory_512m="$igvmm_mib"
        pass="$(calc "$igvmm_mib < 5")"
        target="< 5 MiB"
    else
        # Flat: less than 5 MiB, and within 0.5 MiB of the 512 MiB guest.
        pass="$(calc "$igvmm_mib < 5 && $igvmm_mib - $memory_512m < 0.5")"
        target="< 5 MiB, flat"
    fi
    row "5. VMM memory, $memory guest (MiB)" "$(fmt "$igvmm_mib" 2)" "$(fmt "$qemu_mib" 2) QEMU microvm" \
        "$(fmt "$(calc "$igvmm_mib / $qemu_mib")" 3)" "$target" "$pass"
done

# ---- 6. fw_cfg DMA -------------------------------------------------------------------------

log "row 6: fw_cfg"
fw_cfg_command=("$helper" fw-cfg --runs "$runs" --mib 16 --pio-kib 256)
record "${fw_cfg_command[@]}"
fw_cfg_out="$("${fw_cfg_command[@]}")"
dma="$(value dma_gib_per_s_median <<< "$fw_cfg_out")"
dma_warm="$(value dma_warm_gib_per_s_median <<< "$fw_cfg_out")"
copy="$(value memcpy_gib_per_s_median <<< "$fw_cfg_out")"
pio="$(value pio_mib_per_s_median <<< "$fw_cfg_out")"
tsc_source="$(value tsc_source <<< "$fw_cfg_out")"
tsc_hz="$(value tsc_hz <<< "$fw_cfg_out")"
row "6. fw_cfg DMA, 16 MiB (GiB/s)" "$(fmt "$dma" 3)" "$(fmt "$copy" 3) memcpy" \
    "$(fmt "$(calc "$dma / $copy")" 3)" ">= 1 GiB/s" "$(calc "$dma >= 1")"
row "6. fw_cfg DMA again, same memory (GiB/s)" "$(fmt "$dma_warm" 3)" "$(fmt "$dma" 3) first DMA" \
    "$(fmt "$(calc "$dma_warm / $dma")" 3)" "-" "-"
row "6. fw_cfg port I/O, 256 KiB (MiB/s)" "$(fmt "$pio" 1)" "$(fmt "$(calc "$dma * 1024")" 0) DMA" \
    "$(fmt "$(calc "$pio / ($dma * 1024)")" 4)" "-" "-"

# ---- 7. serial output ----------------------------------------------------------------------

log "row 7: serial output (${serial_kib} KiB, a few minutes under a nested hypervisor)"
side_a=("$helper" debugcon-cycles --runs 1 --name serial-cycles --file "$work/serial-debugcon.txt"
    --expect-status "$exit_status"
    -- "$igvmm" run "$work/serial.igvm" --debugcon "file:$work/serial-debugcon.txt")
side_b=("$helper" raw-serial --runs 1 --image "$work/serial.bin")
record "${side_a[@]}"
record "${side_b[@]}"
pair cycles_median cycles_median
serial_igvmm="$(median "${values_a[@]}")"
serial_raw="$(median "${values_b[@]}")"
serial_rate="$(calc "$serial_kib / 1024 / ($serial_igvmm / $tsc_hz)")"
serial_raw_rate="$(calc "$serial_kib / 1024 / ($serial_raw / $tsc_hz)")"
serial_ratio="$(calc "$serial_raw / $serial_igvmm")"
row "7. serial output, ${serial_kib} KiB (MiB/s)" "$(fmt "$serial_rate" 3)" \
    "$(fmt "$serial_raw_rate" 3) raw KVM loop" "$(fmt "$serial_ratio" 3)" ">= 0.8" \
    "$(calc "$serial_ratio >= 0.8")"

# ---- supplementary: scripts/bench-measure.sh -----------------------------------------------

measure_detail=""
if [ -x scripts/bench-measure.sh ]; then
    log "running scripts/bench-measure.sh for the hash rates inside igvmm measure"
    measure_detail="$(scripts/bench-measure.sh "$large_mib" 2>&1 || echo "scripts/bench-measure.sh failed")"
fi

# ---- report --------------------------------------------------------------------------------

elapsed=$(($(date +%s) - started))
table() {
    echo "| Row | igvmm | Reference | Ratio | Target | Result |"
    echo "|---|---|---|---|---|---|"
    local line
    for line in "${rows[@]}"; do
        echo "| ${line//|/ | } |"
    done
}

echo
table
echo

kvm_module="kvm_pvm (a software nested hypervisor)"
if [ ! -d /sys/module/kvm_pvm ]; then
    kvm_module="$(lsmod 2> /dev/null | awk '/^kvm/ { print $1 }' | tr '\n' ' ')(no kvm_pvm module loaded)"
fi
commit="$(git rev-parse --short HEAD 2> /dev/null || echo unknown)"
if [ -n "$(git status --porcelain 2> /dev/null | head -n 1)" ]; then
    commit="$commit with uncommitted changes"
fi

{
    echo "# Performance"
    echo
    echo "Written by \`scripts/bench.sh\` on $(date -u +%Y-%m-%d) (commit $commit, ${elapsed} s for the whole script)."
    echo "Do not edit by hand: run the script again."
    echo
    echo "## Machine"
    echo
    echo "- CPUs: $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "- Kernel: $(uname -r)"
    echo "- /dev/kvm: $kvm_module"
    echo "- QEMU: $(qemu-system-x86_64 --version | head -n 1)"
    echo "- TSC: $(fmt "$(calc "$tsc_hz / 1e6")" 3) MHz, from $tsc_source"
    echo
    echo "Under a nested hypervisor every VM exit, VM creation and page fault costs several times what"
    echo "it costs on bare-metal KVM, and the machine is shared, so absolute times mean little. Each row"
    echo "is therefore a ratio against a reference measured in the same run, and igvmm's runs alternate"
    echo "with the reference runs. Values are medians of $runs runs."
    echo
    echo "## Results"
    echo
    table
    echo
    echo "How to read the rows:"
    echo
    echo "1. Wall time of the whole process, from exec to exit, for a 64 KiB firmware image that prints"
    echo "   one line on COM1 and writes to port 0x501. QEMU boots the same image as \`-bios\`, igvmm the"
    echo "   IGVM file that \`igvmm pack --firmware\` makes of it. Ratio: igvmm / QEMU (lower is better)."
    echo "   Runs, igvmm: $startup_values_igvmm; QEMU: $startup_values_qemu."
    echo "2. Time from exec until \"SeaBIOS (version\" appears on the debug console (port 0x402): igvmm"
    echo "   logs it on stderr (with -v), QEMU writes it to stdout through isa-debugcon. Ratio: igvmm / QEMU."
    echo "3. ${large_mib} MiB of page data (file: $(fmt "$large_file_mib" 1) MiB) over the wall time of"
    echo "   \`igvmm run\` from exec to exit, for a guest whose first instruction writes to port 0x501."
    echo "   Nothing is subtracted. Reference: the median time of \`cat FILE > /dev/null\` plus the"
    echo "   median time of copying ${large_mib} MiB of the file into a new anonymous mapping."
    echo "4. File size over the wall time of \`igvmm measure\` (reading, parsing and hashing), against"
    echo "   \`openssl dgst -sha384\` over the same file. Ratio: igvmm rate / openssl rate."
    echo "5. Peak resident set (VmHWM) minus the resident pages of the guest-memory mappings (read from"
    echo "   /proc/PID/smaps while a guest that printed one line spins), for igvmm and for QEMU microvm"
    echo "   with the same image. Ratio: igvmm / QEMU."
    echo "6. A guest reads a 16 MiB fw_cfg file by DMA into untouched RAM, then again into the same RAM,"
    echo "   and the first 256 KiB through the data port with \`rep insb\`. It times each with the TSC;"
    echo "   cycles become seconds at the TSC frequency above. \`igvmm run\` has no option to add a"
    echo "   fw_cfg file, so bench_helper builds the VM from the vmm library (\`Vm::new\`,"
    echo "   \`machine::attach\`, the same port bus and per-element dispatch as the vCPU loop) and adds"
    echo "   the file to the fw_cfg device. Reference: a memcpy of 16 MiB into a new mapping."
    echo "7. A guest writes ${serial_kib} KiB to COM1 with \`rep outsb\` (32 KiB per instruction, no"
    echo "   line-status polling) and times it with the TSC; igvmm runs with stdout on /dev/null. The"
    echo "   reference runs the same image on a VM made with kvm-ioctls alone, whose loop counts and"
    echo "   drops each byte. Ratio: reference cycles / igvmm cycles."
    echo
    echo "## Commands"
    echo
    echo "\$WORK is the script's temporary directory; bench_helper is"
    echo "\`target/release/examples/bench_helper\` (vmm/examples/bench_helper/), whose \`time\`, \`until\`"
    echo "and \`resident\` subcommands run the command after \`--\` with stdin on /dev/null."
    echo
    echo '```'
    printf '%s\n' "${commands[@]}"
    echo '```'
    if [ -n "$measure_detail" ]; then
        echo
        echo "## Hash rates inside igvmm measure"
        echo
        echo "Output of \`scripts/bench-measure.sh $large_mib\`, which times only the replay of the plan"
        echo "(\`igvmm measure --json\`, field measure_seconds) on a file of SEV-SNP and TDX pages:"
        echo
        echo '```'
        echo "$measure_detail"
        echo '```'
    fi
    if [ -f scripts/bench/findings.md ]; then
        echo
        cat scripts/bench/findings.md
    fi
} > "$doc"
log "wrote $doc in ${elapsed} s"
