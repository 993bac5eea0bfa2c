#!/usr/bin/env bash
# Measures how fast `igvmm measure` hashes page data, next to `openssl dgst -sha384` over the same
# page bytes. Generates an IGVM file with SIZE_MIB MiB of 4 KiB page data (default 256) for SEV-SNP
# and TDX with the bench_igvm example, then prints MiB of page data per second for each.
#
# SEV-SNP hashes each page once (plus a 112-byte PAGE_INFO); TDX hashes 6272 bytes of records per
# 4096-byte page (a 128-byte MEM.PAGE.ADD and sixteen 384-byte MR.EXTEND), so its page rate is at
# most 4096/6272 = 0.65 of the hash rate. The TDX line also shows the record rate.
#
# Usage: scripts/bench-measure.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib="${1:-256}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo build --quiet --release -p vmm --bin igvmm --example bench_igvm
target="${CARGO_TARGET_DIR:-target}/release"
"$target/examples/bench_igvm" "$size_mib" "$work/bench.igvm" "$work/pages.bin"

# Warm the page cache so that neither tool pays for the first read.
cat "$work/bench.igvm" "$work/pages.bin" > /dev/null

field() {
    python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

echo "page data: ${size_mib} MiB ($(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"

# Each tool runs three times and the fastest run counts, which damps noise from other load.
best_openssl=""
for _ in 1 2 3; do
    start=$(date +%s.%N)
    openssl dgst -sha384 "$work/pages.bin" > /dev/null
    end=$(date +%s.%N)
    best_openssl=$(python3 -c "t = $end - $start; b = '$best_openssl'; print(min(t, float(b)) if b else t)")
done
openssl_rate=$(python3 -c "print(f'{$size_mib / $best_openssl:.1f}')")
echo "openssl dgst -sha384:        ${openssl_rate} MiB/s"

for platform in sev-snp tdx; do
    best=""
    for _ in 1 2 3; do
        json="$("$target/igvmm" measure "$work/bench.igvm" --platform "$platform" --json 2> /dev/null)"
        rate=$(echo "$json" | field mib_per_second)
        if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $rate > $best else 1)"; then
            best=$rate
            seconds=$(echo "$json" | field measure_seconds)
            bytes=$(echo "$json" | field bytes_hashed)
        fi
    done
    python3 - "$platform" "$best" "$seconds" "$bytes" "$openssl_rate" <<'PY'
import sys
platform, rate, seconds, hashed, openssl = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
hash_rate = hashed / (1 << 20) / seconds if seconds > 0 else 0.0
line = f"igvmm measure {platform:8} {rate:8.1f} MiB/s of pages ({rate / openssl:.2f}x openssl)"
if platform == "tdx":
    line += f", {hash_rate:.1f} MiB/s of records ({hash_rate / openssl:.2f}x openssl)"
print(line)
PY
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
