#!/usr/bin/env bash
# build.sh OUT - everything the pure cgroup v2 guest needs, from Debian packages, into OUT (idempotent; about a
# minute the first time, instant once cached):
#   * qemu-system-x86 (apt);
#   * Debian's stock kernel (linux-image-amd64's current 6.1 image), decompressed to OUT/vmlinux (booting the
#     uncompressed image saves the decompression under TCG), and the modules the initramfs loads in OUT/ko;
#   * OUT/initrd.cpio.gz: busybox (busybox-static) and the virtio/9p/overlay modules, with initramfs-init as
#     /init: it mounts the host's / read-only over virtio-9p under a tmpfs overlay and hands over to guest-init.
# This machine's /dev/kvm is a para-virtualised KVM that cannot run a stock kernel: the guest runs under TCG.
set -euo pipefail
OUT=${1:?usage: build.sh OUT}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
log() { printf 'cgroup2/build.sh: %s\n' "$*" >&2; }

apt_updated=
apt_update() { [ -n "$apt_updated" ] || { apt-get -o DPkg::Lock::Timeout=600 update -qq; apt_updated=1; }; }
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
if ((${#need[@]})); then
  [ "$(id -u)" -eq 0 ] || { log "missing packages: ${need[*]} (run as root)"; exit 1; }
  log "installing ${need[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The kernel: the image linux-image-amd64 points at today. Once fetched it stays (OUT/.kernel names it), so a
# Debian point release does not change the guest under a cached CI machine.
# veth: the sandboxed-pod test gives each pod a veth pair (CNI ptp). From crc32c_generic on, what CRIU's
# kernel feature detection needs (the checkpoint tests run here: the host's CRIU cannot run on its own kernel):
# the socket diag families, nftables, conntrack over netlink (a network namespace's dump), tun; loaded in
# this order (each after what it depends on).
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci 9pnet 9pnet_virtio netfs fscache 9p overlay veth
  crc32c_generic libcrc32c nfnetlink nf_tables nf_defrag_ipv4 nf_defrag_ipv6 nf_conntrack nf_conntrack_netlink
  inet_diag tcp_diag udp_diag unix_diag netlink_diag af_packet_diag tun"
have_modules() { for m in $modules; do [ -s "$OUT/ko/$m.ko" ] || return 1; done; }
if [ ! -s "$OUT/vmlinux" ] || ! have_modules || [ ! -s "$OUT/.kernel" ]; then
  pick() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
  apt_update
  pkg=$(pick)
  [ -n "$pkg" ] || { log "cannot find the kernel package linux-image-amd64 depends on"; exit 1; }
  log "fetching $pkg"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get -o APT::Sandbox::User=root download "$pkg" >/dev/null)
  dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/k"
  vmlinuz=$(ls "$tmp"/k/boot/vmlinuz-*)
  # bzImage = setup code + an xz stream (Debian compresses x86 kernels with xz); --single-stream stops at the
  # stream's end and ignores the trailer
  # (and stops reading early: a pipe would kill tail with SIGPIPE).
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1)
  [ -n "$off" ] || { log "no xz stream in $vmlinuz"; exit 1; }
  xz -dc --single-stream < <(tail -c +$((off + 1)) "$vmlinuz") > "$tmp/vmlinux"
  head -c 4 "$tmp/vmlinux" | grep -q ELF || { log "decompressed kernel is not an ELF image"; exit 1; }
  rm -rf "$OUT/ko"; mkdir -p "$OUT/ko"
  for m in $modules; do
    f=$(find "$tmp/k/lib/modules" -name "$m.ko*" | head -1)
    [ -n "$f" ] || { log "module $m not in $pkg"; exit 1; }
    case $f in
      *.xz) xz -dc "$f" > "$OUT/ko/$m.ko" ;;
      *.zst) zstd -qdc "$f" > "$OUT/ko/$m.ko" ;;
      *) cp "$f" "$OUT/ko/$m.ko" ;;
    esac
  done
  mv "$tmp/vmlinux" "$OUT/vmlinux"
  echo "$pkg" > "$OUT/.kernel"
fi

# The initramfs is rebuilt when its inputs change (cheap: a few hundred KB).
stamp=$({ echo $modules; cat "$HERE/initramfs-init" /bin/busybox "$OUT"/ko/*.ko; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$OUT/.initrd" 2>/dev/null)" != "$stamp" ] || [ ! -s "$OUT/initrd.cpio.gz" ]; then
  ird=$(mktemp -d)
  mkdir -p "$ird"/{bin,lib/modules,proc,sys,dev,lower,rw,newroot}
  cp /bin/busybox "$ird/bin/busybox"; ln -sf busybox "$ird/bin/sh"
  cp "$OUT"/ko/*.ko "$ird/lib/modules/"
  echo $modules > "$ird/lib/modules/order"  # initramfs-init loads them in this order
  install -m 0755 "$HERE/initramfs-init" "$ird/init"
  (cd "$ird" && find . | /bin/busybox cpio -o -H newc -R 0:0 2>/dev/null | gzip -1 > "$OUT/initrd.cpio.gz.tmp")
  mv "$OUT/initrd.cpio.gz.tmp" "$OUT/initrd.cpio.gz"
  rm -rf "$ird"
  echo "$stamp" > "$OUT/.initrd"
fi
log "guest ready in $OUT ($(cat "$OUT/.kernel"), qemu $(qemu-system-x86_64 --version | awk 'NR==1{print $4}'))"
