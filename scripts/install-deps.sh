#!/usr/bin/env bash
# Install every system package ssm needs, from Debian 12's archive (Ubuntu works too).
#
#   compilers and build: g++ (C++20), cmake >= 3.21, ninja
#   libraries:           Kokkos 3.4 (libtrilinos-kokkos-dev), Eigen 3.4, nlohmann-json, CLI11,
#                        PCRE2 and utf8proc (the tokenizer; found with pkg-config)
#   tests and docs:      Catch2, doxygen
#
# Packages already installed are not fetched again. Runs apt-get through sudo when not root.
set -euo pipefail

packages=(g++ cmake ninja-build pkg-config libtrilinos-kokkos-dev libeigen3-dev nlohmann-json3-dev libcli11-dev
  libpcre2-dev libutf8proc-dev catch2 doxygen)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
sudo=()
if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: every system package is installed"
else
  echo "install-deps: installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Optional: HuggingFace's Python tokenizers (PyPI), the oracle of the tokenizer's differential test
# (tests/text/test_differential.cpp, which skips with a warning without it). Never fatal.
if ! python3 -c "import tokenizers" >/dev/null 2>&1; then
  if command -v python3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
    { "${sudo[@]}" apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends python3-pip; } \
      >/dev/null 2>&1 || true
  fi
  python3 -m pip install --quiet tokenizers >/dev/null 2>&1 ||
    python3 -m pip install --quiet --break-system-packages tokenizers >/dev/null 2>&1 ||
    echo "install-deps: could not install the Python package tokenizers; its differential test will skip"
fi
