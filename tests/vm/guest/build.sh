#!/usr/bin/env bash
# Builds the tiny guest the VM tests boot: a Debian kernel and an initramfs holding busybox,
# the few virtio modules it needs, /init and the guest app (tests/vm/guest/README.md).
#
#   tests/vm/guest/build.sh OUTDIR
#
# Writes OUTDIR/vmlinuz (Debian's bzImage), OUTDIR/vmlinux (the same kernel as an uncompressed
# ELF, booted through PVH: faster under TCG), OUTDIR/initrd.img (gzip'd newc cpio), all 0644,
# and OUTDIR/build.stamp (what they were built from). Cached: when the stamp matches the current
# inputs (kernel and busybox package versions as apt would fetch them now, the sources in this
# directory, the compiler) nothing is done. The packages are fetched with `apt-get download`
# into OUTDIR/debs (never installed on this host) and kept there for the next build.
# Concurrent runs on one OUTDIR serialize on OUTDIR/.lock; outputs are replaced atomically.
#
# Needs: apt-get/apt-cache (Debian's apt lists, `apt-get update` done), dpkg-deb, depmod (kmod),
# cpio, gzip, gcc with a static libc (libc6-dev), flock (util-linux). Not root.
set -euo pipefail
umask 022

die() { echo "guest/build.sh: $*" >&2; exit 1; }
log() { echo "guest/build.sh: $*" >&2; }

[ $# -eq 1 ] || die "usage: build.sh OUTDIR"
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

for tool in apt-get apt-cache dpkg-deb depmod cpio gzip xz readelf gcc flock sha256sum; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || [ -x "/sbin/$tool" ] \
    || die "'$tool' not found (Debian packages: apt, dpkg, kmod, cpio, gzip, xz-utils, binutils, gcc, libc6-dev, util-linux)"
done
PATH=$PATH:/usr/sbin:/sbin

exec 9>"$out/.lock"
flock 9

# The modules the guest loads (their dependencies come from modules.dep): the virtio PCI
# transport, disks and network, iso9660 for the NoCloud seed, the ACPI power button and evdev
# (so `virsh shutdown` powers the guest off), and virtio-rng (used when the domain has one).
MODULES="virtio_pci virtio_blk virtio_net isofs button evdev virtio_rng"

# --- what would be built now ---------------------------------------------------------------

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
  | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }')
[ -n "$kpkg" ] || die "cannot tell which kernel linux-image-amd64 depends on" \
  "(apt-cache depends linux-image-amd64 names no linux-image-*-amd64; apt lists missing?)"
# both candidates in one apt-cache call (each call reads the package lists: ~0.5 s)
policy=$(apt-cache policy "$kpkg" busybox-static 2>/dev/null)
candidate() {  # the version apt would download for package $1
  local v
  v=$(awk -v p="$1:" '$0 == p { on = 1; next } /^[^ ]/ { on = 0 }
                      on && $1 == "Candidate:" { print $2 }' <<<"$policy")
  if [ -z "$v" ] || [ "$v" = "(none)" ]; then
    die "package $1 has no installation candidate (apt lists missing? run apt-get update)"
  fi
  echo "$v"
}
kver_pkg=$(candidate "$kpkg")
bver=$(candidate busybox-static)
kabi=${kpkg#linux-image-}  # e.g. 6.1.0-56-amd64, the directory under /lib/modules

stamp_text=$(
  echo "kernel $kpkg $kver_pkg"
  echo "busybox-static $bver"
  echo "modules $MODULES"
  echo "gcc $(gcc -dumpfullversion) $(gcc -dumpmachine)"
  (cd "$src" && sha256sum build.sh init udhcpc.script cloud-config.awk guest_app.c)
)
if [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] && [ -f "$out/build.stamp" ] \
   && [ "$(cat "$out/build.stamp")" = "$stamp_text" ]; then
  log "up to date in $out ($kpkg $kver_pkg, busybox $bver)"
  exit 0
fi

work=$(mktemp -d "$out/.work.XXXXXX")
dl=$(mktemp -d "${TMPDIR:-/tmp}/usher-guest-dl.XXXXXX")
trap 'rm -rf "$work" "$dl"' EXIT

# --- fetch -----------------------------------------------------------------------------------

# deb file names as apt-get download writes them: name_version_arch.deb, ':' escaped as %3a
debname() { echo "${1}_${2//:/%3a}_amd64.deb"; }
mkdir -p "$out/debs"
# apt-get download, when root, downloads as the user _apt into the current directory: it
# must be reachable and writable by _apt (else apt falls back to root with a warning). A
# fresh directory under /tmp, writable by everyone, removed on exit.
fetch() {  # $1 package, $2 version
  local deb
  deb=$(debname "$1" "$2")
  if [ ! -s "$out/debs/$deb" ]; then
    log "downloading $1 $2"
    chmod 0777 "$dl"
    (cd "$dl" && apt-get download -q=2 "$1=$2") \
      || die "apt-get download $1=$2 failed (network or apt mirror unreachable?)"
    [ -s "$dl/$deb" ] || die "apt-get download $1=$2 did not produce $deb: $(ls "$dl")"
    # keep one version of each package: drop older ones
    rm -f "$out/debs/${1}_"*.deb "$out/debs/${1}_"*.part
    mv "$dl/$deb" "$out/debs/$deb.part"  # may cross filesystems: a copy, then an atomic rename
    mv "$out/debs/$deb.part" "$out/debs/$deb"
  fi
  echo "$out/debs/$deb"
}
kdeb=$(fetch "$kpkg" "$kver_pkg")
bdeb=$(fetch busybox-static "$bver")

# --- the kernel and its modules ----------------------------------------------------------------

log "extracting $kpkg $kver_pkg"
dpkg-deb -x "$kdeb" "$work/kernel"
moddir=$work/kernel/lib/modules/$kabi
[ -f "$work/kernel/boot/vmlinuz-$kabi" ] || die "$kdeb has no boot/vmlinuz-$kabi"
[ -d "$moddir" ] || die "$kdeb has no lib/modules/$kabi"
depmod -b "$work/kernel" "$kabi" || die "depmod -b failed on $kpkg"

# The load order: each module after its dependencies (modules.dep, depth first). Names are
# matched with '-' and '_' equivalent, as modprobe does. A module that is built in
# (modules.builtin) is skipped; one that exists nowhere is an error.
order=$(awk -v want="$MODULES" -v builtin="$moddir/modules.builtin" '
  function norm(s) { sub(/^.*\//, "", s); sub(/\.ko(\.[a-z]+)?$/, "", s); gsub(/-/, "_", s); return s }
  function visit(path,   n, i, d) {
    if (path in seen) return
    seen[path] = 1
    n = split(deps[path], d, " ")
    for (i = 1; i <= n; i++) visit(d[i])
    print path
  }
  BEGIN { while ((getline line < builtin) > 0) isbuiltin[norm(line)] = 1 }
  {
    p = $1; sub(/:$/, "", p)
    deps[p] = ""
    for (i = 2; i <= NF; i++) deps[p] = deps[p] " " $i
    byname[norm(p)] = p
  }
  END {
    n = split(want, w, " ")
    for (i = 1; i <= n; i++) {
      m = w[i]; gsub(/-/, "_", m)
      if (m in byname) visit(byname[m])
      else if (!(m in isbuiltin)) { print "MISSING " m; exit 1 }
    }
  }' "$moddir/modules.dep") || die "module closure failed: $order"

# --- the initramfs -----------------------------------------------------------------------------

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,etc/usher,mnt,root,lib/usher,lib/modules/"$kabi"}
chmod 1777 "$root/tmp"
chmod 0700 "$root/etc/usher" "$root/root"

log "extracting busybox-static $bver"
dpkg-deb -x "$bdeb" "$work/busybox"
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
ln -s bin "$root/sbin"

: >"$root/lib/modules/load-order"
for path in $order; do
  mkdir -p "$root/lib/modules/$kabi/$(dirname "$path")"
  cp "$moddir/$path" "$root/lib/modules/$kabi/$path"
  echo "$kabi/$path" >>"$root/lib/modules/load-order"
done

log "compiling the guest app"
gcc -static -std=c11 -O2 -Wall -Wextra -Werror -o "$root/bin/guest-app" "$src/guest_app.c" \
  || die "compiling guest_app.c failed (static glibc: libc6-dev)"
strip "$root/bin/guest-app" 2>/dev/null || true
"$root/bin/guest-app" --selftest >/dev/null || die "guest-app --selftest failed"

install -m 0755 "$src/init" "$root/init"
install -m 0755 "$src/udhcpc.script" "$root/lib/usher/udhcpc.script"
install -m 0644 "$src/cloud-config.awk" "$root/lib/usher/cloud-config.awk"
echo "usher-guest" >"$root/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '%s\n' "$stamp_text" >"$root/etc/usher-guest-build"

log "packing the initramfs"
# Owned by root whoever builds; sorted and with fixed times so equal inputs give equal images.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort \
  | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9n >"$work/initrd.img"

install -m 0644 "$work/kernel/boot/vmlinuz-$kabi" "$work/vmlinuz"
chmod 0644 "$work/initrd.img"

# vmlinux: the same kernel uncompressed (the ELF inside the bzImage), which qemu boots through
# its PVH entry point (CONFIG_PVH): no real-mode setup and no decompression, which under TCG
# takes ~2.3 s of a ~6 s boot. Made only when the kernel has the PVH note
# (XEN_ELFNOTE_PHYS32_ENTRY, type 0x12); vmlinuz boots either way.
log "extracting vmlinux (PVH)"
rm -f "$out/vmlinux"
off=$(LC_ALL=C grep -m 1 -obUaP '\xfd7zXZ\x00' "$work/vmlinuz" | cut -d: -f1) || off=""
if [ -n "$off" ] && tail -c +"$((off + 1))" "$work/vmlinuz" >"$work/vmlinux.xz" \
   && xz -dc --single-stream "$work/vmlinux.xz" >"$work/vmlinux" \
   && notes=$(readelf -n "$work/vmlinux") && grep -q 'note type: (0x00000012)' <<<"$notes"; then
  chmod 0644 "$work/vmlinux"
  have_vmlinux=1
else
  log "no PVH vmlinux from this kernel (not xz, or no PVH note): only vmlinuz"
  have_vmlinux=0
fi

mv -f "$work/vmlinuz" "$out/vmlinuz"
[ "$have_vmlinux" = 0 ] || mv -f "$work/vmlinux" "$out/vmlinux"
mv -f "$work/initrd.img" "$out/initrd.img"
printf '%s\n' "$stamp_text" >"$work/build.stamp"
mv -f "$work/build.stamp" "$out/build.stamp"
chmod 0755 "$out"
log "built $out: vmlinuz$([ "$have_vmlinux" = 0 ] || echo ", vmlinux") ($kpkg $kver_pkg), initrd.img ($(stat -c %s "$out/initrd.img") bytes)"
