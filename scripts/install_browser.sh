#!/usr/bin/env bash
# Installs Debian's headless Chromium for the UI test; Playwright's own browser download is not used.
# Idempotent and never fatal: without a browser the UI test skips and says why.
set -u
CHROMIUM=${IMAGE_EMBEDDINGS_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install_browser: $CHROMIUM missing and apt-get unavailable as root; the UI test will skip." >&2
  exit 0
fi
echo "install_browser: installing Debian's chromium for the UI test"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } >/tmp/install_browser.log 2>&1; then
  echo "install_browser: apt-get failed (see /tmp/install_browser.log); the UI test will skip." >&2
fi
exit 0
