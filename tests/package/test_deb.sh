#!/usr/bin/env bash
# ctest package.deb: `cpack -G DEB` builds dbtrust_<version>_amd64.deb, and it installs into a
# fresh Debian 12 root with dpkg -i:
#   1. a tree configured for prefix /usr (TREE, kept between runs: incremental) and built as
#      Debian builds packages (-O2 -g, stripped into the package), cpack;
#   2. the archive: file name, contents, conffiles, maintainer scripts, Depends;
#   3. the man page renders without a groff warning, names the package's version and every
#      option and subcommand of `dbtrust --help`;
#   4. a throwaway overlay on the cached minbase root that `scripts/install-deps test` builds
#      ($DBTRUST_TEST_PREFIX/debian12-root, default /opt/dbtrust-test): `dpkg -i` the package,
#      which stops on the missing libraries, then `apt-get -f install` resolves the Depends from
#      the root's apt cache (offline; from the mirror only if the cache lacks something);
#      `dbtrust --version` runs inside the root, `systemd-analyze verify` accepts the installed
#      unit against that root, and `dpkg --purge` removes it all again.
#   tests/package/test_deb.sh SOURCE_DIR TREE
set -euo pipefail
src=$(cd "${1:?source dir}" && pwd)
tree=${2:?build tree for the package}
prefix=${DBTRUST_TEST_PREFIX:-/opt/dbtrust-test}
base=$prefix/debian12-root
t0=$SECONDS
step() { echo "== $* ($((SECONDS - t0))s)"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || { echo "SKIP: needs root (overlay mount, chroot)"; exit 77; }
[[ -x $base/usr/bin/dpkg ]] ||
    fail "no Debian 12 root at $base: run scripts/install-deps test (as root)"
for tool in cpack dpkg-deb dpkg-shlibdeps file systemd-analyze groff; do
    command -v "$tool" >/dev/null || fail "$tool is missing (scripts/install-deps test)"
done

step "build ($tree)"
cmake -S "$src" -B "$tree" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
    -DDBTRUST_TESTS=OFF >/dev/null
cmake --build "$tree" -j2 >/dev/null
version=$("$tree/dbtrust" --version | awk '{ print $2; exit }')
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || fail "cannot read the version from dbtrust --version"

work=$(mktemp -d /tmp/dbtrust-deb-test.XXXXXX)
root=$work/root
cleanup() {
    mountpoint -q "$root" && umount "$root"
    rm -rf "$work"
}
trap cleanup EXIT

step "cpack -G DEB"
(cd "$tree" && cpack -G DEB -B "$work/out" >"$work/cpack.log" 2>&1) ||
    { cat "$work/cpack.log" >&2; fail "cpack failed"; }
deb=$work/out/dbtrust_${version}_amd64.deb
[[ -f $deb ]] || fail "no $(basename "$deb"); cpack wrote: $(ls "$work/out")"
echo "$(basename "$deb"): $(stat -c %s "$deb") bytes"

step "archive"
dpkg-deb -c "$deb" | awk '{ print $1, $2, $6 }' >"$work/contents"
for want in "-rwxr-xr-x root/root ./usr/bin/dbtrust" \
            "-rw-r--r-- root/root ./usr/lib/systemd/system/dbtrust.service" \
            "-rw-r--r-- root/root ./etc/dbtrust/dbtrust.ini.example" \
            "-rw-r--r-- root/root ./usr/share/man/man8/dbtrust.8.gz" \
            "-rw-r--r-- root/root ./usr/share/doc/dbtrust/runbook.md" \
            "-rw-r--r-- root/root ./usr/share/doc/dbtrust/monitoring/dbtrust-alerts.yaml"; do
    grep -qxF -- "$want" "$work/contents" || fail "not in the package: $want"
done
! grep -q '\./etc/dbtrust/dbtrust\.ini$' "$work/contents" || fail "the package ships dbtrust.ini"
! grep -q '/usr/local' "$work/contents" || fail "the package installs under /usr/local"
[[ $(dpkg-deb -f "$deb" Package) == dbtrust && $(dpkg-deb -f "$deb" Version) == "$version" &&
   $(dpkg-deb -f "$deb" Architecture) == amd64 ]] || fail "control: $(dpkg-deb -f "$deb")"
depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
for lib in libc6 libssl3 libuv1 libinih1 libmicrohttpd12 libjansson4 procps; do
    [[ $depends == *"$lib"* ]] || fail "Depends lacks $lib"
done
dpkg-deb -e "$deb" "$work/control"
[[ $(cat "$work/control/conffiles") == /etc/dbtrust/dbtrust.ini.example ]] ||
    fail "conffiles: $(cat "$work/control/conffiles")"
for script in postinst prerm postrm; do
    [[ -x $work/control/$script ]] || fail "maintainer script $script missing or not executable"
done
# The unit in the package names the installed paths.
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/lib/systemd/system/dbtrust.service \
    >"$work/dbtrust.service"
grep -qx 'ExecStart=/usr/bin/dbtrust --config /etc/dbtrust/dbtrust.ini' "$work/dbtrust.service" ||
    fail "unit ExecStart: $(grep ExecStart "$work/dbtrust.service")"

step "man page"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/man/man8/dbtrust.8.gz | gzip -dc \
    >"$work/dbtrust.8"
warnings=$(groff -man -Tutf8 -ww -z "$work/dbtrust.8" 2>&1)
[[ -z $warnings ]] || fail "groff warns about dbtrust.8: $warnings"
grep -q "^\.TH DBTRUST 8 .*\"dbtrust $version\"" "$work/dbtrust.8" ||
    fail "dbtrust.8 .TH does not name dbtrust $version (docs/dbtrust.8)"
# Every option and subcommand of --help, as the page spells them (roff escapes "-" as "\-").
"$tree/dbtrust" --help >"$work/help" 2>&1 || true
sed 's/\\-/-/g; s/\\f[BIRP]//g' "$work/dbtrust.8" >"$work/man.txt"
missing=()
for word in $(grep -oE -- '--[a-z][a-z-]*|^  dbtrust [a-z]+( [a-z]+)?' "$work/help" |
              sed 's/^  dbtrust //' | sort -u); do
    grep -qF -- "$word" "$work/man.txt" || missing+=("$word")
done
((${#missing[@]} == 0)) || fail "dbtrust --help has what docs/dbtrust.8 does not: ${missing[*]}"

step "install into a fresh Debian 12 root"
mkdir -p "$work/upper" "$work/ovl" "$root"
if ! mount -t overlay overlay \
        -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovl" "$root" 2>/dev/null; then
    echo "no overlay mount here: copying the root"
    cp -a "$base/." "$root/"
fi
cp "$deb" "$root/tmp/"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }
# dpkg alone must unpack it and stop on the libraries a minbase root lacks: Depends are real.
if in_root dpkg -i "/tmp/$(basename "$deb")" >"$work/dpkg.log" 2>&1; then
    fail "dpkg -i succeeded in a root without libuv1: the Depends are not checked"
fi
grep -q "dependency problems" "$work/dpkg.log" || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
if ! in_root apt-get -qq -o Dpkg::Use-Pty=0 --no-install-recommends --no-download -f install >"$work/apt.log" 2>&1; then
    echo "the root's apt cache lacks a dependency: apt-get from the mirror"
    in_root apt-get -qq -o Dpkg::Use-Pty=0 --no-install-recommends -f install >"$work/apt.log" 2>&1 ||
        { cat "$work/apt.log" >&2; fail "apt-get -f install"; }
fi
[[ $(in_root dpkg-query -W -f='${Status} ${Version}' dbtrust) == "install ok installed $version" ]] ||
    fail "dbtrust is not installed: $(in_root dpkg-query -W -f='${Status}' dbtrust)"
got=$(in_root /usr/bin/dbtrust --version)
echo "in the root: $got"
[[ $got == "dbtrust $version "* ]] || fail "dbtrust --version in the root: $got"
[[ -f $root/etc/dbtrust/dbtrust.ini.example && ! -e $root/etc/dbtrust/dbtrust.ini ]] ||
    fail "/etc/dbtrust in the root: $(ls "$root/etc/dbtrust")"
# The example config is one dbtrust accepts as far as the bundle it names (absent here).
in_root /usr/bin/dbtrust --config /etc/dbtrust/dbtrust.ini.example >"$work/run.log" 2>&1 &&
    fail "dbtrust started without its bundle"
grep -q "bundle" "$work/run.log" || { cat "$work/run.log" >&2; fail "example config refused"; }

step "systemd-analyze verify"
# Against the root: ExecStart's binary and the unit's directives are checked as installed.
if ! systemd-analyze verify --root="$root" /usr/lib/systemd/system/dbtrust.service \
        >"$work/verify.log" 2>&1 || [[ -s $work/verify.log ]]; then
    cat "$work/verify.log" >&2
    fail "systemd-analyze verify"
fi

step "purge"
in_root dpkg --purge dbtrust >"$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail purge; }
[[ ! -e $root/usr/bin/dbtrust && ! -e $root/usr/lib/systemd/system/dbtrust.service &&
   ! -e $root/etc/dbtrust/dbtrust.ini.example ]] || fail "files left after dpkg --purge"
step "package test passed"
