#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for SECONDS, one after another with one
# libFuzzer job, then prints the executions per target. Exits non-zero when any target
# crashed, hung or failed to build; the crashing inputs are in fuzz/artifacts/TARGET/.
#
# Usage: scripts/fuzz.sh SECONDS [TARGET...]
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`). FUZZ_TOOLCHAIN overrides the toolchain name. CARGO_TARGET_DIR
# is honoured, as cargo-fuzz honours it.
#
# The corpora of parse_plan and mutate_valid are seeded at every run with the conformance files
# next to the repository (../shared/conformance/*.igvm), files that `igvmm pack` writes, and the
# malformed corpus of igvm-loader/tests/malformed.rs. None of them is stored in the repository;
# fuzz/corpus/ and fuzz/artifacts/ are ignored by git.

set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ || $1 -eq 0 ]]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz_dir=$repo/fuzz
toolchain=${FUZZ_TOOLCHAIN:-nightly}
all_targets=(parse_plan mutate_valid fw_cfg serial)
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

# -a keeps debug assertions and overflow checks, so an arithmetic overflow on file or guest
# input is a crash, as in a debug build. The default sanitizer (address) stays on.
build_flags=(-a -O)

echo "== building fuzz targets (cargo +$toolchain fuzz build ${build_flags[*]})"
(cd "$fuzz_dir" && cargo "+$toolchain" fuzz build "${build_flags[@]}")
# The targets run from these binaries, so all of them test the tree as it was at this build,
# even when the sources change while the script runs.
target_dir=$(cd "$fuzz_dir" && cargo "+$toolchain" metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
host_triple=$(rustc "+$toolchain" -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$host_triple/release

# Writes the seed files of the two loader targets into $1: the conformance files, guests that
# `igvmm pack` writes, and the malformed corpus of igvm-loader/tests/malformed.rs. A source
# that fails to build is reported and skipped.
write_loader_seeds() {
    local seeds=$1
    local scratch
    mkdir -p "$seeds"
    local conformance=$repo/../shared/conformance
    if compgen -G "$conformance/*.igvm" >/dev/null; then
        cp "$conformance"/*.igvm "$seeds/"
    else
        echo "note: no conformance files in $conformance" >&2
    fi

    # Guests written by igvmm itself: the demo, the demo with a CoRIM document and signature,
    # and a 64 KiB firmware image. Built with the normal (not fuzzing) profile.
    scratch=$(mktemp -d)
    if (cd "$repo" && cargo build -q -p vmm --bin igvmm) 2>"$scratch/build.log"; then
        local igvmm
        igvmm=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/igvmm
        head -c 65536 /dev/zero | tr '\0' '\220' >"$scratch/firmware.bin"
        # A CBOR tag 501 (unsigned CoRIM) around a one-entry map, and placeholder signature bytes.
        printf '\331\001\365\241\000\143abc' >"$scratch/corim.cbor"
        printf 'signature' >"$scratch/corim.sig"
        "$igvmm" pack --demo -o "$seeds/generated-demo.igvm" >/dev/null 2>&1 ||
            echo "note: igvmm pack --demo failed; continuing without it" >&2
        "$igvmm" pack --demo --corim "$scratch/corim.cbor" --corim-signature "$scratch/corim.sig" \
            --corim-platform native -o "$seeds/generated-demo-corim.igvm" >/dev/null 2>&1 ||
            echo "note: igvmm pack --demo --corim failed; continuing without it" >&2
        "$igvmm" pack --firmware "$scratch/firmware.bin" -o "$seeds/generated-firmware.igvm" \
            >/dev/null 2>&1 ||
            echo "note: igvmm pack --firmware failed; continuing without it" >&2
    else
        echo "note: igvmm does not build; no generated guests" >&2
        tail -n 3 "$scratch/build.log" >&2 || true
    fi

    # The malformed corpus, valid base files included.
    if ! (cd "$repo" && IGVMM_CORPUS_DIR=$seeds cargo test -q -p igvm-loader --test malformed \
        export_corpus -- --ignored) >"$scratch/export.log" 2>&1; then
        echo "note: exporting the malformed corpus failed; continuing without it" >&2
        tail -n 3 "$scratch/export.log" >&2 || true
    fi
    rm -rf "$scratch"
}

loader_seeds=""
for target in "${targets[@]}"; do
    if [[ $target == parse_plan || $target == mutate_valid ]]; then
        loader_seeds=$(mktemp -d)
        write_loader_seeds "$loader_seeds"
        echo "loader seeds: $(find "$loader_seeds" -name '*.igvm' | wc -l) IGVM files"
        break
    fi
done

declare -A execs result
failed=0
for target in "${targets[@]}"; do
    corpus=$fuzz_dir/corpus/$target
    mkdir -p "$corpus" "$fuzz_dir/artifacts/$target"
    if [[ $target == parse_plan || $target == mutate_valid ]]; then
        cp "$loader_seeds"/*.igvm "$corpus/"
    fi

    # With -jobs=1 libFuzzer runs one worker process and writes its output to fuzz-0.log in
    # the working directory, so each target runs in a directory of its own.
    workdir=$(mktemp -d)
    echo "== fuzzing $target for ${seconds}s"
    status=0
    (cd "$workdir" && "$bin_dir/$target" -artifact_prefix="$fuzz_dir/artifacts/$target/" \
        -max_total_time="$seconds" -jobs=1 -workers=1 -timeout=10 -print_final_stats=1 \
        "$corpus") || status=$?
    # libFuzzer prints the worker's log when the job ends; a copy stays next to the artifacts.
    log=$workdir/fuzz-0.log
    if [[ -f $log ]]; then
        cp "$log" "$fuzz_dir/artifacts/$target/last-run.log"
    fi

    # The final stats line reads "stat::number_of_executed_units: N"; a crash still prints it.
    count=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" 2>/dev/null |
        tail -n 1 || true)
    execs[$target]=${count:-unknown}
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" 2>/dev/null | tail -n 1 || true)
    if [[ $status -ne 0 || -n $crash ]]; then
        result[$target]="FAILED (exit $status${crash:+, input $crash})"
        failed=1
    else
        result[$target]=ok
    fi
    rm -rf "$workdir"
done
if [[ -n $loader_seeds ]]; then
    rm -rf "$loader_seeds"
fi

echo
echo "== fuzz summary (${seconds}s per target, -jobs=1)"
printf '%-14s %14s  %s\n' target executions result
for target in "${targets[@]}"; do
    printf '%-14s %14s  %s\n' "$target" "${execs[$target]}" "${result[$target]}"
done
exit $failed
