#!/usr/bin/env bash
# tools/gpu-prepare.sh: prepares, on a machine WITH the .NET SDK, everything tools/gpu-check.sh needs on a GPU
# machine WITHOUT it (see docs in tools/gpu-check.sh):
#   .gpu-check/tc-linux-x64.tar.xz  the CLI and the test runner, published self-contained for linux-x64 into
#                                   one folder (app/), plus the small real data the checks use (shared/:
#                                   stories260K and the TinyStories text files) when ../shared is present;
#   .gpu-check/debs/*.deb           the Vulkan loader (libvulkan1), unpacked there only if the GPU machine
#                                   lacks one;
#   .gpu-check/PREPARED             what was prepared, from which commit.
# The folder is git-ignored and stays under the 64 MiB a device session carries. Usage, from the repository
# root: tools/gpu-prepare.sh   (or tools/gpu-check.sh --prepare). Re-run it after changing any code.
set -euo pipefail

root=$(git rev-parse --show-toplevel)
cd "$root"
dest=.gpu-check
# A persistent build copy per checkout: publishing with a runtime identifier rewrites obj/ (restore assets),
# so the dev build stays untouched, and the copy's own bin/obj make the next prepare incremental.
stage="${TMPDIR:-/tmp}/tc-gpu-prepare-$(printf '%s' "$root" | md5sum | cut -c1-12)"
rm -rf "$stage/bundle"
trap 'rm -rf "$stage/bundle"' EXIT
mkdir -p "$stage/src"

echo "== copying the working tree (tracked and untracked, not ignored) to $stage/src"
# sources only: stale files removed, bin/ and obj/ kept; tar keeps modification times (incremental build)
find "$stage/src" -type f -not -path '*/bin/*' -not -path '*/obj/*' -delete
git ls-files -co --exclude-standard -z | xargs -0 tar -cf - | tar -xf - -C "$stage/src"

echo "== publishing the test runner and the CLI self-contained for linux-x64 into one folder"
app="$stage/bundle/app"
pub=(-c Release -r linux-x64 --self-contained true -nologo -v q -clp:ErrorsOnly -p:DebugType=none -p:GenerateDocumentationFile=false)
# Tests first, the CLI second: the CLI's own self-contained runtimeconfig/deps must win for its apphost.
dotnet publish "$stage/src/tests/TaylorCalibrate.Tests" "${pub[@]}" -o "$app"
dotnet publish "$stage/src/src/Cli" "${pub[@]}" -o "$app"
test -x "$app/taylor-calibrate" && test -x "$app/TaylorCalibrate.Tests" && test -f "$app/libcoreclr.so" \
    || { echo "gpu-prepare: the publish lacks the apphosts or the runtime" >&2; exit 1; }
# The test runner finds the repository by walking up to TaylorCalibrate.sln; the shipped one is found in
# the checkout the bundle is unpacked into.

if [ -d ../shared ]; then
    echo "== adding the shared data the checks use (from ../shared)"
    for f in models/stories260K/stories260K.bin models/stories260K/tok512.bin \
             data/tinystories/valid-head.txt data/tinystories/valid-far.txt; do
        if [ -f "../shared/$f" ]; then mkdir -p "$stage/bundle/shared/$(dirname "$f")"; cp "../shared/$f" "$stage/bundle/shared/$f"; fi
    done
else
    echo "== ../shared absent: the bundle has no real data (tests that need it skip; no PPL check)"
fi

echo "== compressing"
mkdir -p "$dest"
rm -f "$dest/tc-linux-x64.tar.xz"
tar -C "$stage/bundle" -cf - . | xz -T2 -6 > "$dest/tc-linux-x64.tar.xz.tmp"
mv "$dest/tc-linux-x64.tar.xz.tmp" "$dest/tc-linux-x64.tar.xz"

echo "== fetching the Vulkan loader package"
rm -rf "$dest/debs"
mkdir -p "$dest/debs"
# amd64 explicitly, so that an arm64 workstation also fetches what the x86-64 GPU machine needs.
lists=/tmp/tc-apt-amd64
aptopts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists)
mkdir -p "$lists/partial"
if ! (cd "$dest/debs" && apt-get "${aptopts[@]}" download libvulkan1 2>/dev/null); then
    apt-get "${aptopts[@]}" update -qq
    (cd "$dest/debs" && apt-get "${aptopts[@]}" download libvulkan1)
fi

size=$(du -sm "$dest" | cut -f1)
{
    echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"
    echo "date $(date -u +%FT%TZ)"
    echo "size_mib $size"
    ls -l "$dest/tc-linux-x64.tar.xz" "$dest"/debs/*.deb
} > "$dest/PREPARED"
cat "$dest/PREPARED"
if [ "$size" -ge 63 ]; then echo "gpu-prepare: $dest is $size MiB, over what a device session carries (64 MiB)" >&2; exit 1; fi
echo "prepared $dest ($size MiB); on the GPU machine run: tools/gpu-check.sh"
