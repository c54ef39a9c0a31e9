#!/usr/bin/env bash
# Build the zcnet test guest: a Debian cloud kernel plus a small busybox
# initramfs whose /init (next to this script) brings up virtio-net and runs
# iperf3 against the host.
#
# Usage: build-image.sh [OUT_DIR]      (default: <repo>/target/guest-image)
#
# Results in OUT_DIR: vmlinuz, initramfs.cpio.gz, stamp.
#
# Host packages (QEMU 10 from bookworm-backports, busybox-static, iperf3,
# nftables, ethtool) are installed with a private apt configuration kept under
# <repo>/target/apt; /etc/apt is never modified. The guest kernel is only
# downloaded and unpacked, never installed on the host.
#
# Environment:
#   ZCNET_APT_UPDATE=1    refresh the private package lists even if present
#   ZCNET_APT_MIRROR=URL  Debian mirror to use instead of the one found in
#                         /etc/apt (ZCNET_APT_SECURITY_MIRROR likewise)
set -euo pipefail

STEP="start"
log() { printf 'build-image: %s\n' "$*" >&2; }
die() {
    log "FAILED ($STEP): $*"
    exit 1
}
on_err() {
    local rc=$? line=$1 cmd=$2
    log "FAILED ($STEP): command exited with status $rc at line $line: $cmd"
    exit "$rc"
}
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
INIT_SRC="$SCRIPT_DIR/init"
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
OUT_DIR=${1:-$REPO/target/guest-image}

SUITE=bookworm
KERNEL_META=linux-image-cloud-amd64
# Wanted modules; the actual load order is derived from their depends= fields.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
    virtio_pci failover net_failover virtio_net)
# Applets /init relies on.
APPLETS=(sh mount mkdir insmod cat ls grep tr sed tail date ip ping sleep taskset
    timeout poweroff nc sha256sum mkfifo tee wc dd cut touch)
DEFAULT_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

APT_DIR=$REPO/target/apt
APT_SOURCES=$APT_DIR/sources.list
APT_LISTS=$APT_DIR/lists
APT_ARCHIVES=$APT_DIR/archives
APT_CACHE=$APT_DIR/cache
DEB_DIR=$APT_DIR/debs
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APT_SOURCES"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::lists=$APT_LISTS"
    -o "Dir::Cache::archives=$APT_ARCHIVES"
    # Keep apt's binary cache private too, so /var/cache/apt never holds a
    # cache built from our lists.
    -o "Dir::Cache=$APT_CACHE"
    -o "Dir::Cache::pkgcache=$APT_CACHE/pkgcache.bin"
    -o "Dir::Cache::srcpkgcache=$APT_CACHE/srcpkgcache.bin"
)
export DEBIAN_FRONTEND=noninteractive

[[ -f $INIT_SRC ]] || die "guest init script not found: $INIT_SRC"
mkdir -p "$OUT_DIR" "$APT_LISTS/partial" "$APT_ARCHIVES/partial" "$APT_CACHE" "$DEB_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

# One build at a time: parallel test binaries may all call this script.
exec 9>"$APT_DIR/build-image.lock"
if ! flock -n 9; then
    log "another build-image.sh is running; waiting for it"
    flock -w 1800 9 || die "timed out waiting for $APT_DIR/build-image.lock"
fi

apt_get() { apt-get "${APT_OPTS[@]}" "$@"; }
apt_cache() { apt-cache "${APT_OPTS[@]}" "$@"; }

# ---------------------------------------------------------------- mirrors

# Print "SUITE URI KEYRING" for every enabled deb source in /etc/apt, from
# both one-line (.list) and deb822 (.sources) files. KEYRING is "-" if none.
list_system_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk '
            { sub(/#.*/, "") }
            $1 != "deb" { next }
            {
                key = "-"; i = 2
                if ($2 ~ /^\[/) {
                    # options: [ a=b c=d ] possibly split over fields
                    while (i <= NF) {
                        if ($i ~ /^\[?signed-by=/) { k = $i; sub(/^\[?signed-by=/, "", k); sub(/\]$/, "", k); key = k }
                        if ($i ~ /\]$/) { i++; break }
                        i++
                    }
                }
                uri = $i; suite = $(i + 1)
                if (uri != "" && suite != "") print suite, uri, key
            }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk '
            function flush(   n, m, a, b, i, j) {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled !~ /^[ \t]*no[ \t]*$/) {
                    n = split(uris, a, /[ \t]+/); m = split(suites, b, /[ \t]+/)
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                        if (a[i] != "" && b[j] != "") print b[j], a[i], (key == "" ? "-" : key)
                }
                types = uris = suites = key = enabled = ""; field = ""
            }
            /^#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { if (field == "uris") uris = uris " " $0; else if (field == "suites") suites = suites " " $0; next }
            {
                name = tolower($0); sub(/:.*/, "", name)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t]+$/, "", val)
                field = name
                if (name == "types") types = val
                else if (name == "uris") uris = val
                else if (name == "suites") suites = val
                else if (name == "signed-by") key = (val ~ /^\// ? val : "")
                else if (name == "enabled") enabled = val
            }
            END { flush() }' "$f"
    done
}

find_mirrors() {
    local sources suite uri key
    sources=$(list_system_sources)
    MAIN_URI="" SEC_URI="" MAIN_KEY="" SEC_KEY=""
    while read -r suite uri key; do
        case "$suite" in
        "$SUITE" | "$SUITE-updates" | "$SUITE-backports")
            [[ -n $MAIN_URI ]] || { MAIN_URI=$uri; MAIN_KEY=$key; } ;;
        "$SUITE-security" | "$SUITE/updates")
            [[ -n $SEC_URI ]] || { SEC_URI=$uri; SEC_KEY=$key; } ;;
        esac
    done <<<"$sources"
    if [[ -n ${ZCNET_APT_MIRROR:-} ]]; then MAIN_URI=$ZCNET_APT_MIRROR; fi
    if [[ -n ${ZCNET_APT_SECURITY_MIRROR:-} ]]; then SEC_URI=$ZCNET_APT_SECURITY_MIRROR; fi
    if [[ -z $MAIN_URI ]]; then
        MAIN_URI=http://deb.debian.org/debian
        log "warning: no $SUITE source found in /etc/apt; falling back to $MAIN_URI"
    fi
    if [[ -z $SEC_URI ]]; then
        if [[ $MAIN_URI == */debian ]]; then SEC_URI=${MAIN_URI}-security; else SEC_URI=http://deb.debian.org/debian-security; fi
        log "warning: no $SUITE-security source found in /etc/apt; using $SEC_URI"
    fi
    [[ -n $MAIN_KEY && $MAIN_KEY != - ]] || MAIN_KEY=$DEFAULT_KEYRING
    [[ -n $SEC_KEY && $SEC_KEY != - ]] || SEC_KEY=$MAIN_KEY
}

# Write the private sources.list; sets APT_NEED_UPDATE if it changed or if
# there are no package lists yet.
write_sources() {
    local main_opt="" sec_opt="" new
    [[ -f $MAIN_KEY ]] && main_opt="[signed-by=$MAIN_KEY] "
    [[ -f $SEC_KEY ]] && sec_opt="[signed-by=$SEC_KEY] "
    new="# Generated by guest-tests/image/build-image.sh; private to zcnet.
deb ${main_opt}$MAIN_URI $SUITE main
deb ${main_opt}$MAIN_URI $SUITE-updates main
deb ${main_opt}$MAIN_URI $SUITE-backports main
deb ${sec_opt}$SEC_URI $SUITE-security main"
    APT_NEED_UPDATE=0
    if [[ ! -f $APT_SOURCES ]] || [[ $(<"$APT_SOURCES") != "$new" ]]; then
        printf '%s\n' "$new" >"$APT_SOURCES.tmp"
        mv -f "$APT_SOURCES.tmp" "$APT_SOURCES"
        APT_NEED_UPDATE=1
    fi
    if ! compgen -G "$APT_LISTS/*_Packages*" >/dev/null; then APT_NEED_UPDATE=1; fi
    if [[ ${ZCNET_APT_UPDATE:-0} == 1 ]]; then APT_NEED_UPDATE=1; fi
}

APT_UPDATED=0
apt_update() {
    STEP="apt-get update"
    log "refreshing private package lists ($APT_LISTS)"
    apt_get -q update >&2 || die "apt-get update failed (mirror $MAIN_URI / $SEC_URI)"
    APT_UPDATED=1
}

# ---------------------------------------------------------------- host tools

qemu_major() {
    local v re='version ([0-9]+)\.'
    v=$(qemu-system-x86_64 --version 2>/dev/null | head -n1) || return 1
    [[ $v =~ $re ]] || return 1
    echo "${BASH_REMATCH[1]}"
}

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
pkg_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]; }

is_static() {
    local out
    out=$(LC_ALL=C ldd "$1" 2>&1 || true)
    [[ $out == *"not a dynamic executable"* || $out == *"statically linked"* ]]
}

busybox_path() {
    local p
    pkg_installed busybox-static || return 1
    p=$(dpkg -L busybox-static 2>/dev/null | awk '/\/s?bin\/busybox$/ && !n { print; n = 1 }')
    [[ -n $p ]] || return 1
    [[ -x $p ]] && is_static "$p" && echo "$p"
}

host_tools_ok() {
    local major
    major=$(qemu_major) || return 1
    ((major >= 10)) || return 1
    busybox_path >/dev/null || return 1
    command -v iperf3 >/dev/null || return 1
    command -v nft >/dev/null || return 1
    command -v ethtool >/dev/null || return 1
}

install_host_tools() {
    local utils_before utils_after major
    STEP="install host packages"
    utils_before=$(pkg_version qemu-utils)
    [[ $APT_NEED_UPDATE == 1 ]] && apt_update
    STEP="install host packages"
    log "installing qemu-system-x86 (from $SUITE-backports), busybox-static, iperf3, nftables, ethtool"
    # --no-remove: abort rather than remove anything (a plain install of
    # bookworm's QEMU 7.2 would remove qemu-utils 10). -y without
    # --allow-downgrades refuses downgrades.
    apt_get -q install -y --no-install-recommends --no-remove \
        -t "$SUITE-backports" qemu-system-x86 busybox-static iperf3 nftables ethtool >&2 ||
        die "apt-get install failed"

    major=$(qemu_major) || die "qemu-system-x86_64 missing or unreadable after install"
    ((major >= 10)) || die "qemu-system-x86_64 is version $major after install; need 10+ (bookworm-backports)"
    if [[ -n $utils_before ]]; then
        utils_after=$(pkg_version qemu-utils)
        [[ -n $utils_after ]] || die "qemu-utils $utils_before was removed by apt"
        dpkg --compare-versions "$utils_after" ge "$utils_before" ||
            die "qemu-utils was downgraded from $utils_before to $utils_after"
        log "qemu-utils still at $utils_after"
    fi
    host_tools_ok || die "host tools still incomplete after install (qemu 10+, static busybox, iperf3, nft, ethtool)"
}

# ---------------------------------------------------------------- kernel

deb_file() { # PKG VERSION -> path of the .deb apt-get download writes
    local ver=${2//:/%3a}
    echo "$DEB_DIR/${1}_${ver}_amd64.deb"
}

candidate_version() { # PKG [VERSION] -> candidate (or checked) version
    local spec=$1
    [[ -n ${2:-} ]] && spec="$1=$2"
    apt_cache show --no-all-versions "$spec" 2>/dev/null | sed -n 's/^Version: //p' | head -n1
}

# Download PKG=VERSION into DEB_DIR unless an intact copy is already there.
# Returns 1 (without dying) if the download fails.
fetch_deb() {
    local pkg=$1 ver=$2 file want have
    file=$(deb_file "$pkg" "$ver")
    want=$(apt_cache show --no-all-versions "$pkg=$ver" 2>/dev/null | sed -n 's/^SHA256: //p' | head -n1)
    if [[ -f $file ]]; then
        have=$(sha256sum "$file" | cut -d' ' -f1)
        if [[ -z $want || $have == "$want" ]]; then
            echo "$file"
            return 0
        fi
        log "cached $(basename "$file") has a wrong checksum; downloading again"
        rm -f "$file"
    fi
    log "downloading $pkg=$ver"
    # DEB_DIR is not writable by _apt; download as root without the warning.
    (cd "$DEB_DIR" && apt_get -q -o APT::Sandbox::User=root download "$pkg=$ver" >&2) || return 1
    [[ -f $file ]] || return 1
    echo "$file"
}

# Sets KPKG, KVER, KDEB: the versioned kernel package behind the metapackage.
resolve_kernel() {
    local meta_ver meta_deb dep
    STEP="resolve guest kernel"
    meta_ver=$(candidate_version "$KERNEL_META")
    [[ -n $meta_ver ]] || return 1
    meta_deb=$(fetch_deb "$KERNEL_META" "$meta_ver") || return 1
    # Depends: linux-image-6.1.0-NN-cloud-amd64 (= 6.1.x-y)
    dep=$(dpkg-deb -f "$meta_deb" Depends | awk -F '[,|]' '{
        for (i = 1; i <= NF; i++) { d = $i; sub(/^[ \t]+/, "", d); if (d ~ /^linux-image-[0-9]/ && !n) { print d; n = 1 } }
    }') || return 1
    [[ -n $dep ]] || return 1
    KPKG=${dep%% *}
    KVER=""
    local re='\(= *([^) ]+) *\)'
    if [[ $dep =~ $re ]]; then KVER=${BASH_REMATCH[1]}; fi
    [[ -n $KVER ]] || KVER=$(candidate_version "$KPKG")
    [[ -n $KVER ]] || return 1
    # Make sure apt knows this exact version (it may be gone after a mirror update).
    [[ -n $(candidate_version "$KPKG" "$KVER") ]] || return 1
    KDEB=$(deb_file "$KPKG" "$KVER")
}

# Downloads the versioned kernel package (only needed when building).
fetch_kernel() {
    STEP="download guest kernel"
    KDEB=$(fetch_deb "$KPKG" "$KVER") || return 1
}

# ---------------------------------------------------------------- modules

# Print one field of a kernel module's .modinfo section.
modinfo_field() { # FILE FIELD
    local cat_cmd=(cat)
    case "$1" in
    *.ko.xz) cat_cmd=(xz -dc) ;;
    *.ko.zst) cat_cmd=(zstd -dcq) ;;
    *.ko.gz) cat_cmd=(gzip -dc) ;;
    esac
    "${cat_cmd[@]}" "$1" | tr '\0' '\n' | sed -n "s/^$2=//p" | head -n1
}

declare -A MOD_FILE=() MOD_DEPS=() MOD_STATE=()
MOD_ORDER=()

find_module() { # NAME -> sets MOD_FILE[NAME] (or "builtin") and MOD_DEPS[NAME]
    local name=$1 alt=${1//_/-} file deps
    [[ -n ${MOD_FILE[$name]:-} ]] && return 0
    file=$(find "$KMOD_DIR/kernel" -type f \( -name "$name.ko" -o -name "$name.ko.*" \
        -o -name "$alt.ko" -o -name "$alt.ko.*" \) -print -quit)
    if [[ -z $file ]]; then
        if grep -qE "/($name|$alt)\.ko$" "$KMOD_DIR/modules.builtin" 2>/dev/null; then
            log "module $name is built into the kernel"
            MOD_FILE[$name]=builtin
            MOD_DEPS[$name]=""
            return 0
        fi
        die "kernel module $name not found under $KMOD_DIR"
    fi
    MOD_FILE[$name]=$file
    deps=$(modinfo_field "$file" depends)
    MOD_DEPS[$name]=${deps//,/ }
    local vm
    vm=$(modinfo_field "$file" vermagic)
    [[ $vm == "$KREL "* ]] || die "module $name vermagic '$vm' does not match kernel $KREL"
}

visit_module() { # depth-first: dependencies first
    local name=$1 dep
    case "${MOD_STATE[$name]:-}" in
    visited) return 0 ;;
    active) die "module dependency cycle at $name" ;;
    esac
    MOD_STATE[$name]=active
    find_module "$name"
    for dep in ${MOD_DEPS[$name]}; do visit_module "$dep"; done
    MOD_STATE[$name]=visited
    [[ ${MOD_FILE[$name]} == builtin ]] || MOD_ORDER+=("$name")
}

# ---------------------------------------------------------------- main

STEP="find apt mirror"
find_mirrors
log "apt mirror: $MAIN_URI (security: $SEC_URI)"
write_sources

STEP="check host tools"
if host_tools_ok; then
    log "host tools present: $(qemu-system-x86_64 --version | head -n1), busybox-static, iperf3, nft, ethtool"
else
    install_host_tools
fi

# Resolve the kernel; on failure refresh the lists once and try again.
if ! resolve_kernel; then
    [[ $APT_UPDATED == 1 ]] && die "cannot resolve $KERNEL_META to a versioned kernel package"
    apt_update
    resolve_kernel || die "cannot resolve $KERNEL_META to a versioned kernel package"
fi
log "guest kernel package: $KPKG $KVER"

STEP="check cache"
BB=$(busybox_path) || die "static busybox not found (busybox-static)"
IPERF3=$(command -v iperf3)
STAMP_INPUTS="build-image.sh $(sha256sum <"$SCRIPT" | cut -d' ' -f1)
init $(sha256sum <"$INIT_SRC" | cut -d' ' -f1)
kernel $KPKG=$KVER
busybox-static $(pkg_version busybox-static)
iperf3 $(pkg_version iperf3) $(pkg_version libiperf0)"
STAMP_HASH=$(printf '%s\n' "$STAMP_INPUTS" | sha256sum | cut -d' ' -f1)
if [[ -f $OUT_DIR/stamp && -s $OUT_DIR/vmlinuz && -s $OUT_DIR/initramfs.cpio.gz ]] &&
    [[ $(head -n1 "$OUT_DIR/stamp") == "$STAMP_HASH" ]]; then
    echo "guest image up to date: $OUT_DIR"
    exit 0
fi

if ! fetch_kernel; then
    [[ $APT_UPDATED == 1 ]] && die "cannot download $KPKG=$KVER"
    apt_update
    resolve_kernel || die "cannot resolve $KERNEL_META after refreshing package lists"
    fetch_kernel || die "cannot download $KPKG=$KVER"
fi

# Leftovers of builds that were killed hard (we hold the lock, so none is live).
rm -rf "$OUT_DIR"/.build.*
BUILD=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
trap 'rm -rf "$BUILD"' EXIT

STEP="unpack kernel"
log "unpacking $(basename "$KDEB")"
dpkg -x "$KDEB" "$BUILD/kernel"
KMOD_BASE=$BUILD/kernel/lib/modules
[[ -d $KMOD_BASE ]] || KMOD_BASE=$BUILD/kernel/usr/lib/modules
[[ -d $KMOD_BASE ]] || die "no lib/modules in $KPKG"
KREL=$(find "$KMOD_BASE" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n1)
[[ -n $KREL ]] || die "no kernel release directory in $KMOD_BASE"
KMOD_DIR=$KMOD_BASE/$KREL
VMLINUZ=$BUILD/kernel/boot/vmlinuz-$KREL
[[ -f $VMLINUZ ]] || die "no boot/vmlinuz-$KREL in $KPKG"
log "kernel release $KREL"

ROOT=$BUILD/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,lib/modules,lib64}

STEP="collect modules"
for m in "${MODULES[@]}"; do visit_module "$m"; done
log "module load order (from depends=): ${MOD_ORDER[*]}"
for m in "${MOD_ORDER[@]}"; do
    f=${MOD_FILE[$m]}
    case "$f" in
    *.ko.xz) xz -dc "$f" >"$ROOT/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -dcq "$f" >"$ROOT/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$ROOT/lib/modules/$m.ko" ;;
    *) cp "$f" "$ROOT/lib/modules/$m.ko" ;;
    esac
done
printf '%s\n' "${MOD_ORDER[@]}" >"$ROOT/lib/modules/load-order"

STEP="install busybox"
cp "$BB" "$ROOT/bin/busybox"
chmod 0755 "$ROOT/bin/busybox"
BB_APPLETS=$("$BB" --list-full 2>/dev/null || "$BB" --list | sed 's|^|bin/|')
for a in "${APPLETS[@]}"; do
    grep -qE "(^|/)$a\$" <<<"$BB_APPLETS" || die "busybox $BB lacks the '$a' applet needed by init"
done
while read -r a; do
    [[ -n $a && $a != */busybox && ! -e $ROOT/$a ]] || continue
    mkdir -p "$ROOT/$(dirname "$a")"
    ln -s /bin/busybox "$ROOT/$a"
done <<<"$BB_APPLETS"

STEP="install iperf3"
cp -L "$IPERF3" "$ROOT/usr/bin/iperf3"
LIBS=$(LC_ALL=C ldd "$IPERF3") || die "ldd $IPERF3 failed"
if grep -q 'not found' <<<"$LIBS"; then die "iperf3 has unresolved libraries: $LIBS"; fi
while read -r lib; do
    [[ -n $lib ]] || continue
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
done < <(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' <<<"$LIBS")
[[ -f $ROOT/lib64/ld-linux-x86-64.so.2 ]] || die "ldd did not report /lib64/ld-linux-x86-64.so.2 for iperf3"

STEP="create device nodes"
mknod -m 600 "$ROOT/dev/console" c 5 1 || die "mknod /dev/console failed (need root / CAP_MKNOD)"
mknod -m 666 "$ROOT/dev/null" c 1 3 || die "mknod /dev/null failed"

STEP="install init"
install -m 0755 "$INIT_SRC" "$ROOT/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"

STEP="pack initramfs"
if ! (cd "$ROOT" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
    "$BB" cpio -o -H newc -R 0:0 2>"$BUILD/cpio.log") | gzip -n -6 >"$BUILD/initramfs.cpio.gz"; then
    die "busybox cpio | gzip failed: $(cat "$BUILD/cpio.log" 2>/dev/null)"
fi
cp "$VMLINUZ" "$BUILD/vmlinuz"
log "initramfs $(du -h "$BUILD/initramfs.cpio.gz" | cut -f1), vmlinuz $(du -h "$BUILD/vmlinuz" | cut -f1)"

STEP="install image"
# The stamp goes last: an interrupted install leaves no stamp, so the next
# run rebuilds.
rm -f "$OUT_DIR/stamp"
mv -f "$BUILD/vmlinuz" "$OUT_DIR/vmlinuz"
mv -f "$BUILD/initramfs.cpio.gz" "$OUT_DIR/initramfs.cpio.gz"
{
    echo "$STAMP_HASH"
    echo "# inputs:"
    while IFS= read -r line; do echo "# $line"; done <<<"$STAMP_INPUTS"
    echo "# kernel-release $KREL"
    echo "# modules ${MOD_ORDER[*]}"
} >"$BUILD/stamp"
mv -f "$BUILD/stamp" "$OUT_DIR/stamp"
echo "guest image built: $OUT_DIR"
