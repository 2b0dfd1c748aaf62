#!/usr/bin/env bash
# Install every system package ssm needs, from Debian 12's archive (Ubuntu works too).
#
#   compilers and build: g++ (C++20), cmake >= 3.21, ninja
#   libraries:           Kokkos 3.4 (libtrilinos-kokkos-dev), Eigen 3.4, nlohmann-json, CLI11
#   tests and docs:      Catch2, doxygen
#
# Packages already installed are not fetched again. Runs apt-get through sudo when not root.
set -euo pipefail

packages=(g++ cmake ninja-build libtrilinos-kokkos-dev libeigen3-dev nlohmann-json3-dev libcli11-dev catch2 doxygen)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: everything is installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
echo "install-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
