#!/usr/bin/env bash
# Installs the external tools the end-to-end fidelity tests (tests/fidelity.rs)
# compare against: bsdtar (libarchive-tools), getfattr/setfattr (attr),
# getfacl/setfacl (acl), setpriv (util-linux), plus coreutils (mkfifo, mknod,
# touch). Idempotent: installs nothing when every command is already present,
# and runs `apt-get update` only when something is missing.
set -euo pipefail

# command -> Debian/Ubuntu package providing it
declare -A PKG_OF=(
    [bsdtar]=libarchive-tools
    [getfattr]=attr
    [setfattr]=attr
    [getfacl]=acl
    [setfacl]=acl
    [setpriv]=util-linux
    [mkfifo]=coreutils
    [mknod]=coreutils
    [touch]=coreutils
)

missing=()
for cmd in "${!PKG_OF[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        pkg=${PKG_OF[$cmd]}
        case " ${missing[*]-} " in
            *" $pkg "*) ;;
            *) missing+=("$pkg") ;;
        esac
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-deps: all test tools present"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: missing packages ${missing[*]}, and apt-get is not available;" >&2
    echo "install them with your system's package manager" >&2
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-test-deps: need root (or sudo) to install ${missing[*]}" >&2
        exit 1
    fi
fi

echo "install-test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
