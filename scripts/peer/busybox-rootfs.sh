#!/usr/bin/env bash
# busybox-rootfs.sh DIR - fill DIR (empty or absent) with a rootfs like the
# official busybox image, from Debian's static busybox ($BUSYBOX, default
# /bin/busybox). Shared by scripts/mkimage.sh (the tests' image) and
# mkimages.sh (the peer suites' images), so both run the same userland.
set -euo pipefail
umask 022
export LC_ALL=C
rootfs=${1:?usage: busybox-rootfs.sh DIR}
bb=${BUSYBOX:-/bin/busybox}
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/www,var/spool/mail,home,proc,sys,dev,run}
chmod 1777 "$rootfs/tmp"; chmod 700 "$rootfs/root"
install -m 755 "$bb" "$rootfs/bin/busybox"
# One HARD link per applet at the path busybox reports (bin/sh, usr/bin/top, ...),
# like the official image. Not symlinks: masking a symlinked /bin/ls (critest
# MaskedPaths) would mask /bin/busybox itself.
"$bb" --list-full | while read -r p; do
  [ "$p" = bin/busybox ] && continue
  mkdir -p "$rootfs/$(dirname "$p")"
  ln -f "$rootfs/bin/busybox" "$rootfs/$p"
done
# Applets the official image has, Debian's build lacks, and peer suites call.
if ! "$bb" --list | grep -qx pgrep; then
  cat > "$rootfs/usr/bin/pgrep" <<'EOS'
#!/bin/sh
# minimal pgrep stand-in: pgrep [-f] PATTERN (regexp on comm, or on cmdline with -f)
full=0; [ "$1" = -f ] && { full=1; shift; }
pat=$1; rc=1
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [ "$pid" = "$$" ] && continue
  if [ $full = 1 ]; then s=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null); else s=$(cat "$d/comm" 2>/dev/null); fi
  [ -n "$s" ] && echo "$s" | grep -q -e "$pat" && { echo "$pid"; rc=0; }
done
exit $rc
EOS
  chmod 755 "$rootfs/usr/bin/pgrep"
fi
if ! "$bb" --list | grep -qx ipcs; then
  cat > "$rootfs/usr/bin/ipcs" <<'EOS'
#!/bin/sh
# minimal ipcs stand-in: dumps the kernel's SysV IPC table (ids included)
case "$1" in -q) t=msg; h="Message Queues";; -s) t=sem; h="Semaphore Arrays";; *) t=shm; h="Shared Memory Segments";; esac
echo "------ $h --------"
cat /proc/sysvipc/$t
EOS
  chmod 755 "$rootfs/usr/bin/ipcs"
fi
# Users and groups as in the official busybox image (+ backup(34), used by
# containerd's userns tests).
cat > "$rootfs/etc/passwd" <<'EOS'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
backup:x:34:34:backup:/var/backups:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
EOS
cat > "$rootfs/etc/group" <<'EOS'
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
backup:x:34:
operator:x:37:
utmp:x:43:
users:x:100:
staff:x:50:
nogroup:x:65534:
EOS
echo 'root:*:10933:0:99999:7:::' > "$rootfs/etc/shadow"
chmod 640 "$rootfs/etc/shadow"
: > "$rootfs/etc/hosts"; : > "$rootfs/etc/resolv.conf"; echo busybox > "$rootfs/etc/hostname"
