#!/usr/bin/env bash
# Fetches Debian's SeaBIOS build for QEMU's microvm machine (bios-microvm.bin) into a directory.
#
# Usage: scripts/fetch-seabios.sh [DIR]     (DIR defaults to ./seabios)
#
# It downloads the `seabios` package with `apt-get download` (running `apt-get update` first
# when the package cannot be found), unpacks it with `dpkg -x` and copies
# usr/share/seabios/bios-microvm.bin to DIR. Needs apt-get and dpkg, and network access to the
# configured Debian mirror. Exits 0 at once when DIR already contains the file.
set -euo pipefail

dest="${1:-seabios}"
file="bios-microvm.bin"

if [ -f "$dest/$file" ]; then
    echo "fetch-seabios: $dest/$file already present"
    exit 0
fi
for tool in apt-get dpkg; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "fetch-seabios: $tool not found; this script needs a Debian-based system" >&2
        exit 2
    fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

download() {
    (cd "$work" && apt-get download seabios >/dev/null 2>&1)
}
if ! download; then
    echo "fetch-seabios: apt-get download failed; running apt-get update and retrying" >&2
    apt-get update >/dev/null
    if ! download; then
        echo "fetch-seabios: apt-get download seabios failed after apt-get update" >&2
        exit 1
    fi
fi

package="$(ls "$work"/seabios_*.deb)"
dpkg -x "$package" "$work/root"
if [ ! -f "$work/root/usr/share/seabios/$file" ]; then
    echo "fetch-seabios: $(basename "$package") has no usr/share/seabios/$file" >&2
    exit 1
fi
mkdir -p "$dest"
# Copy under a temporary name and rename, so that a concurrent reader never sees half a file.
cp "$work/root/usr/share/seabios/$file" "$dest/.$file.$$"
mv "$dest/.$file.$$" "$dest/$file"
echo "fetch-seabios: wrote $dest/$file from $(basename "$package")"
