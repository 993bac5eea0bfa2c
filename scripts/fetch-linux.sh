#!/usr/bin/env bash
# Fetches a Debian cloud kernel and builds a small initramfs for booting Linux on igvmm.
#
# Usage: scripts/fetch-linux.sh [DEST]      (DEST defaults to linux-guest/ in the repository)
#
# Leaves in DEST:
#   vmlinuz     the bzImage from Debian's newest linux-image-*-cloud-amd64 package
#   vmlinux     the ELF kernel inside that bzImage (its payload, decompressed)
#   initrd.img  a gzip-compressed newc cpio archive with busybox from busybox-static. Its /init
#               loads qemu_fw_cfg.ko from the kernel package and prints the SHA-256 of the
#               CoRIM that igvmm serves as fw_cfg file opt/igvm/corim. Then it powers off.
#   VERSION     the kernel package name and version
#
# Needs apt-get (packages are fetched with `apt-get download`, nothing is installed except zstd
# and xz-utils when missing) and dpkg-deb.
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$repo_root/linux-guest}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# apt-get download runs as the _apt user where it can; let it write here.
chmod 755 "$work"

say() { echo "fetch-linux: $*" >&2; }

need_tool() {
    local tool="$1" package="$2"
    if ! command -v "$tool" >/dev/null 2>&1; then
        say "installing $package for $tool"
        apt-get install -y --no-install-recommends "$package" >/dev/null
    fi
}

if [ "${FETCH_LINUX_SKIP_UPDATE:-0}" != 1 ]; then
    apt-get update >/dev/null
fi
need_tool zstd zstd
need_tool xz xz-utils
need_tool dpkg-deb dpkg

# The newest versioned cloud kernel, such as linux-image-6.12.117+deb12-cloud-amd64. The
# unversioned meta packages (linux-image-cloud-amd64, linux-image-6.12-cloud-amd64) are left out.
kernel_package="$(apt-cache search --names-only '^linux-image-[0-9]+\.[0-9]+\.[0-9]+.*-cloud-amd64$' \
    | awk '{print $1}' | grep -v -- '-dbg$' | grep -v -- '-unsigned$' | sort -V | tail -n 1)"
if [ -z "$kernel_package" ]; then
    say "apt-cache search found no linux-image-*-cloud-amd64 package; check the apt sources"
    exit 1
fi
say "kernel package: $kernel_package"

cd "$work"
apt-get download "$kernel_package" busybox-static >/dev/null
kernel_deb="$(ls "$work"/linux-image-*.deb)"
busybox_deb="$(ls "$work"/busybox-static_*.deb)"
mkdir -p kernel busybox
dpkg-deb -x "$kernel_deb" kernel
dpkg-deb -x "$busybox_deb" busybox
kernel_version="$(dpkg-deb -f "$kernel_deb" Version)"

vmlinuz="$(ls kernel/boot/vmlinuz-* | head -n 1)"
cp "$vmlinuz" "$dest/vmlinuz"
say "bzImage: $(basename "$vmlinuz"), $(stat -c %s "$dest/vmlinuz") bytes"

# The bzImage payload: setup_header.payload_offset (0x248) and payload_length (0x24c), counted
# from the protected-mode kernel at (setup_sects + 1) * 512, as Documentation/arch/x86/boot.rst
# describes.
read_le() { # FILE OFFSET SIZE
    od -An -t "u$3" -j "$2" -N "$3" --endian=little "$1" | tr -d ' '
}
setup_sects="$(read_le "$dest/vmlinuz" $((0x1f1)) 1)"
if [ "$setup_sects" -eq 0 ]; then
    setup_sects=4
fi
payload_offset="$(read_le "$dest/vmlinuz" $((0x248)) 4)"
payload_length="$(read_le "$dest/vmlinuz" $((0x24c)) 4)"
payload_start=$(( (setup_sects + 1) * 512 + payload_offset ))
dd if="$dest/vmlinuz" of=payload bs=64K iflag=skip_bytes,count_bytes \
    skip="$payload_start" count="$payload_length" status=none
magic="$(od -An -t x1 -N 4 payload | tr -d ' ')"
case "$magic" in
    28b52ffd) decompress=(zstd -dc) ;;
    fd377a58) decompress=(xz -dc) ;;
    1f8b*) decompress=(gzip -dc) ;;
    *) say "unknown payload compression (magic $magic)"; exit 1 ;;
esac
say "payload: ${payload_length} bytes at offset ${payload_start}, ${decompress[0]}"
# The build appends the uncompressed size after the compressed stream, which the decompressors
# report as trailing garbage; the ELF check below decides.
"${decompress[@]}" payload > "$dest/vmlinux" 2>decompress.log || true
if [ "$(od -An -t x1 -N 4 "$dest/vmlinux" | tr -d ' ')" != 7f454c46 ]; then
    say "the decompressed payload is not an ELF file:"
    cat decompress.log >&2
    exit 1
fi
say "vmlinux: $(stat -c %s "$dest/vmlinux") bytes"

# The initramfs.
root="$work/initramfs"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,lib/modules}
cp busybox/bin/busybox "$root/bin/busybox"
module="$(find kernel -name 'qemu_fw_cfg.ko*' | head -n 1)"
if [ -z "$module" ]; then
    say "the kernel package has no qemu_fw_cfg module"
    exit 1
fi
case "$module" in
    *.xz) xz -dc "$module" > "$root/lib/modules/qemu_fw_cfg.ko" ;;
    *.zst) zstd -dc "$module" > "$root/lib/modules/qemu_fw_cfg.ko" ;;
    *) cp "$module" "$root/lib/modules/qemu_fw_cfg.ko" ;;
esac

cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "initramfs: $(uname -r) up, $(grep -c ^processor /proc/cpuinfo) CPUs"
insmod /lib/modules/qemu_fw_cfg.ko || echo "initramfs: insmod qemu_fw_cfg failed"
corim=/sys/firmware/qemu_fw_cfg/by_name/opt/igvm/corim/raw
# The driver binds through the ACPI device QEMU0002; give it a moment.
tries=0
while [ ! -e "$corim" ] && [ "$tries" -lt 50 ]; do
    sleep 0.1
    tries=$((tries + 1))
done
if [ -e "$corim" ]; then
    sha256sum "$corim"
else
    echo "initramfs: $corim not found"
    ls /sys/firmware/qemu_fw_cfg/by_name 2>&1
fi
echo "initramfs: powering off"
poweroff -f
EOF
chmod 755 "$root/init"

# Pack the archive with busybox's cpio, so that the host needs no cpio.
(cd "$root" && find . | sort | "$work/busybox/bin/busybox" cpio -o -H newc 2>/dev/null) \
    | gzip -9 > "$dest/initrd.img"
say "initrd.img: $(stat -c %s "$dest/initrd.img") bytes"

echo "$kernel_package $kernel_version" > "$dest/VERSION"
say "done: $dest"
