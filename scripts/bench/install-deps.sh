#!/usr/bin/env bash
# Installs what scripts/bench.sh needs on a Debian bookworm host: QEMU 10.x (qemu-system-x86 from
# bookworm-backports, for the microvm comparisons) and openssl, then fetches SeaBIOS's
# bios-microvm.bin into seabios/ with scripts/fetch-seabios.sh.
#
# It runs `apt-get update` once. When `apt-cache policy qemu-system-x86` offers no 10.x version,
# it adds the bookworm-backports suite to the Debian source that lists bookworm (a deb822 file in
# /etc/apt/sources.list.d/ or a line in /etc/apt/sources.list) and updates again. It needs root
# only when something is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { echo "install-deps: $*" >&2; }

export DEBIAN_FRONTEND=noninteractive

qemu_candidate() {
    apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: *//p'
}
qemu_10_available() {
    # The policy goes through a variable: with pipefail, grep -q closing the pipe early would
    # make apt-cache fail with SIGPIPE. An epoch such as "1:" precedes the version.
    local policy
    policy="$(apt-cache policy qemu-system-x86)"
    grep -Eq '^ +(\*\*\* )?([0-9]+:)?10\.' <<< "$policy"
}

# Adds bookworm-backports next to bookworm in the first Debian source that lists it.
add_backports() {
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        if grep -Eq '^Suites:.*\bbookworm\b' "$file" && grep -Eq '^URIs:.*/debian/?$' "$file"; then
            if ! grep -Eq '^Suites:.*bookworm-backports' "$file"; then
                # Only the stanza whose suites include plain "bookworm" gets the new suite.
                sed -i -E '/^Suites:/{/(^|[[:space:]])bookworm([[:space:]]|$)/s/$/ bookworm-backports/}' "$file"
                log "added bookworm-backports to $file"
            fi
            return 0
        fi
    done
    if [ -f /etc/apt/sources.list ]; then
        local line
        line="$(grep -E '^deb [^ ]+ bookworm main' /etc/apt/sources.list | head -1 || true)"
        if [ -n "$line" ]; then
            local mirror
            mirror="$(echo "$line" | awk '{print $2}')"
            echo "deb $mirror bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
            log "added bookworm-backports from $mirror"
            return 0
        fi
    fi
    log "no Debian bookworm source found to add bookworm-backports to"
    return 1
}

installed_qemu_10() {
    command -v qemu-system-x86_64 > /dev/null || return 1
    local version
    version="$(qemu-system-x86_64 --version)"
    grep -Eq 'version 10\.' <<< "$version"
}

need_qemu=0
installed_qemu_10 || need_qemu=1
need_openssl=0
command -v openssl > /dev/null || need_openssl=1
if [ "$need_qemu" -eq 1 ] || [ "$need_openssl" -eq 1 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "QEMU 10.x or openssl is missing, and installing them with apt-get needs root"
        exit 2
    fi
    apt-get update -qq
fi
if [ "$need_qemu" -eq 1 ]; then
    if ! qemu_10_available; then
        add_backports
        apt-get update -qq
    fi
    if ! qemu_10_available; then
        log "no qemu-system-x86 10.x candidate even with bookworm-backports (candidate: $(qemu_candidate))"
        exit 1
    fi
    log "installing qemu-system-x86 from bookworm-backports"
    # -t lets the backports version pull its dependencies from backports too.
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 > /dev/null
fi
if [ "$need_openssl" -eq 1 ]; then
    log "installing openssl"
    apt-get install -y -qq --no-install-recommends openssl > /dev/null
fi
log "$(qemu-system-x86_64 --version | head -1)"

scripts/fetch-seabios.sh seabios >&2
