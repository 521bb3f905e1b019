#!/usr/bin/env bash
# Regenerates the web client's screenshots in Gambar/ from a real run: a
# server, raw clients and the page in headless Chromium (needs chromium
# and chromium-driver), at desktop and phone width, light and dark.
set -euo pipefail
cd "$(dirname "$0")/.."
WSCHAT_SCREENSHOTS="$PWD/Gambar" cargo test --test browser \
    the_page_fits_a_phone_and_follows_the_colour_scheme -- --exact
ls -l Gambar/web-*.png
